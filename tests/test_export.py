"""Every deployment format: each block kind exports, and runs like torch where a runtime exists here.

ONNX (onnxruntime), TorchScript (torch), TFLite (LiteRT) and ExecuTorch are run and compared with
torch's output; CoreML packages are converted and read back (prediction needs macOS).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from fbprof.spec import OpSpec

# one representative shape per block kind (tiny-space sizes, small channels)
KEYS = [
    "stem:3x32x32:8:s2",
    "k3_e1:16x8x8:16:s1",  # no expansion conv, residual
    "k5_e3:8x16x16:16:s2",  # expansion, stride 2
    "k3_e6:16x8x8:16:s1",  # expansion, residual
    "k5_e1_g2:16x8x8:16:s1",  # group convs + channel shuffle
    "skip:8x16x16:16:s2",  # shape-changing skip: 1x1 conv
    "head:24x4x4:64:s1",
    "pool:64x4x4:64:s1",
    "fc:64x1x1:10:s1",
]
#: blocks whose TFLite graph must carry no TRANSPOSE (the shuffle of g2 blocks is a transpose by
#: definition; an isolated pool keeps one boundary transpose, see docs/formats.md)
PLAIN = {"stem", "k3_e1", "k5_e3", "k3_e6", "skip", "head", "fc"}
RUNNABLE = {"onnx": "onnxruntime", "torchscript": "torch", "tflite": "litert", "pte": "executorch"}


@pytest.fixture(scope="session")
def cache(cache_dir):
    from fbprof.backends.cache import ArtifactCache

    return ArtifactCache(cache_dir)


def _torch_output(spec: OpSpec) -> np.ndarray:
    import torch

    from fbprof.build import build_calibrated_op, example_input

    with torch.no_grad():
        return build_calibrated_op(spec)(example_input(spec)).numpy()


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("fmt", sorted(RUNNABLE))
def test_exported_op_computes_what_torch_computes(fmt, key, cache):
    from fbprof.devices.local import LocalDevice
    from fbprof.profiler.export import export_op

    spec = OpSpec.parse(key)
    art = export_op(spec, fmt, cache)
    ref = _torch_output(spec)
    x = np.asarray(art.input)
    if fmt == "tflite" and len(spec.input_shape) == 4:
        assert art.layout == "nhwc"
        assert x.shape == (1, spec.h, spec.w, spec.cin)  # channel-last input, no boundary transpose
    else:
        assert x.shape == spec.input_shape
    if art.layout == "nhwc" and ref.ndim == 4:
        ref = ref.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(art.expected, ref, rtol=1e-5, atol=1e-6)

    session = LocalDevice(pin=False).open_session(art, RUNNABLE[fmt], 1)
    assert session.invoke() is None  # what the loop times: no output read back
    got = np.asarray(session.run())
    assert got.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale)
    if fmt == "onnx":  # invoke wrote into the output bound once (I/O binding)
        np.testing.assert_allclose(session.out.numpy(), ref, rtol=1e-4, atol=1e-4 * scale)
    session.close()  # sessions give back process-wide settings (threads, ExecuTorch's pool) when closed

    if fmt == "tflite":
        from fbprof.backends.litert import tflite_ops

        ops = tflite_ops(art.path)
        assert ops, "empty TFLite graph"
        if spec.op in PLAIN:
            assert "TRANSPOSE" not in ops, f"{key}: {ops}"


def test_tflite_ops_reads_the_graph_and_rejects_other_files(cache, tmp_path):
    from fbprof.errors import InputError
    from fbprof.profiler.export import export_op
    from fbprof.backends.litert import tflite_ops

    ops = tflite_ops(export_op(OpSpec.parse("k3_e6:16x8x8:16:s1"), "tflite", cache).path)
    assert ops.count("CONV_2D") == 2 and ops.count("DEPTHWISE_CONV_2D") == 1 and "ADD" in ops
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a TFLite flatbuffer"):
        tflite_ops(bad)


@pytest.mark.parametrize("key", KEYS)
def test_coreml_package_is_produced(key, cache):
    import coremltools as ct

    from fbprof.profiler.export import export_op

    spec = OpSpec.parse(key)
    art = export_op(spec, "mlpackage", cache)
    assert art.path.is_dir() and art.path.suffix == ".mlpackage"
    assert (art.path / "Manifest.json").exists()
    model = ct.models.MLModel(str(art.path), skip_model_load=True)
    desc = model.get_spec()
    assert desc.WhichOneof("Type") == "mlProgram"
    inp = desc.description.input[0]
    assert inp.name == "input"
    assert tuple(inp.type.multiArrayType.shape) == spec.input_shape
    assert desc.description.output[0].name == "output"


@pytest.mark.skipif(sys.platform != "darwin", reason="CoreML prediction runs on macOS/iOS only")
def test_coreml_prediction_matches_torch(cache):  # pragma: no cover - macOS only
    import coremltools as ct

    from fbprof.profiler.export import export_op

    spec = OpSpec.parse("k3_e6:16x8x8:16:s1")
    art = export_op(spec, "mlpackage", cache)
    got = ct.models.MLModel(str(art.path)).predict({"input": art.input})["output"]
    np.testing.assert_allclose(got, art.expected, rtol=1e-3, atol=1e-3)


def test_coreml_rejects_bad_options(cache):
    from fbprof.errors import MeasurementError
    from fbprof.profiler.export import export_op

    with pytest.raises(MeasurementError, match="CoreML precision 'int3'"):
        export_op(OpSpec.parse("fc:64x1x1:10:s1"), "mlpackage", cache, {"precision": "int3"})


# ---- missing extras ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,extra", [("tflite", "tflite"), ("pte", "executorch"), ("mlpackage", "coreml")])
def test_missing_converter_names_the_pip_command(fmt, extra, monkeypatch, tmp_path):
    from fbprof import backends
    from fbprof.backends.cache import ArtifactCache
    from fbprof.errors import MissingExtraError
    from fbprof.profiler import export

    name = backends.backend_for_format(fmt).name
    monkeypatch.setitem(backends.BACKENDS, name,
                        dataclasses.replace(backends.BACKENDS[name], converter_module="fbprof_no_such_converter"))
    with pytest.raises(MissingExtraError) as err:
        export.export_op(OpSpec.parse("fc:64x1x1:10:s1"), fmt, ArtifactCache(tmp_path))
    assert f"pip install 'fbprof[{extra}]'" in str(err.value)
    assert "fbprof_no_such_converter" in str(err.value)
    specs = [OpSpec.parse(k) for k in ("fc:64x1x1:10:s1", "skip:16x8x8:24:s2")]
    with pytest.raises(MissingExtraError, match="fbprof_no_such_converter"):  # before any worker starts
        next(iter(export.stream_ops(specs, fmt, ArtifactCache(tmp_path), workers=2)))


@pytest.mark.parametrize("backend,extra", [("litert", "tflite"), ("executorch", "executorch")])
def test_missing_runtime_names_the_pip_command(backend, extra, monkeypatch, tmp_path):
    from fbprof import backends
    from fbprof.artifact import Artifact
    from fbprof.devices.local import LocalDevice
    from fbprof.errors import MissingExtraError

    monkeypatch.setitem(backends.BACKENDS, backend,
                        dataclasses.replace(backends.BACKENDS[backend], runtime_module="fbprof_no_such_runtime"))
    art = Artifact("fc:64x1x1:10:s1", backends.BACKENDS[backend].format, tmp_path / "m", np.zeros((1, 64), np.float32),
                        np.zeros((1, 10), np.float32))
    with pytest.raises(MissingExtraError, match=rf"pip install 'fbprof\[{extra}\]'"):
        LocalDevice(pin=False).open_session(art, backend, 1)


def test_a_missing_extra_error_crosses_a_process_boundary_whole():
    """An export worker that cannot import its converter raises MissingExtraError; the process that started
    it must get that error back (pickle), not a broken pool."""
    import pickle

    from fbprof.errors import MissingExtraError

    err = MissingExtraError("exporting to tflite", "tflite", "litert_torch")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is MissingExtraError and str(back) == str(err) and back.hint == err.hint
    assert back.exit_code == 3


def test_cli_export_missing_extra_exits_3(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from fbprof import backends
    from fbprof.cli import app

    monkeypatch.setitem(backends.BACKENDS, "coreml",
                        dataclasses.replace(backends.BACKENDS["coreml"], converter_module="fbprof_no_such_converter"))
    r = CliRunner().invoke(app, ["export", "fbnet-b", "--format", "coreml", "-o", str(tmp_path / "m.mlpackage")])
    assert r.exit_code == 3
    assert "pip install 'fbprof[coreml]'" in r.output
    assert not (tmp_path / "m.mlpackage").exists()


# ---- conversion in parallel worker processes ---------------------------------------------------
@pytest.mark.parametrize("fmt", ["onnx", "tflite", "pte"])
def test_export_ops_converts_in_spawned_workers(fmt, tmp_path):
    from fbprof.artifact import Artifact
    from fbprof.backends.cache import ArtifactCache
    from fbprof.profiler.export import export_ops

    cache = ArtifactCache(tmp_path)
    specs = [OpSpec.parse(k) for k in ("k3_e1:8x16x16:8:s1", "skip:16x8x8:24:s2", "stem:3x32x32:8:s2")]
    done: list[str] = []
    out = export_ops(specs, fmt, cache, workers=2, on_done=done.append)
    assert sorted(done) == sorted(s.key for s in specs)
    for s in specs:
        assert isinstance(out[s.key], Artifact), out[s.key]
        assert out[s.key].path.exists() and out[s.key].format == fmt
    # a second run finds every artifact in the cache (same content hash)
    again = export_ops(specs, fmt, cache, workers=2)
    assert {k: a.path for k, a in again.items()} == {k: a.path for k, a in out.items()}


# ---- batched ONNX conversion ------------------------------------------------------------------
BATCH_KEYS = ["k3_e1:16x8x8:16:s1", "k5_e1_g2:16x8x8:16:s1", "pool:64x4x4:64:s1", "fc:64x1x1:10:s1"]


def _graph_signature(path):
    """What a graph computes, names aside: nodes (type, domain, attributes, arity) in order, initializers
    (shape, dtype, values) by their name, graph inputs/outputs (name, type), opsets, IR version, producer."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    g = m.graph

    def attr(a):
        if a.type == onnx.AttributeProto.TENSOR:
            return a.name, numpy_helper.to_array(a.t).tolist()
        return a.name, onnx.helper.get_attribute_value(a)

    nodes = [(n.op_type, n.domain, [attr(a) for a in n.attribute], len(n.input), len(n.output)) for n in g.node]
    inits = sorted((numpy_helper.to_array(t).shape, str(numpy_helper.to_array(t).dtype),
                    numpy_helper.to_array(t).tobytes()) for t in g.initializer)
    named = sorted(t.name for t in g.initializer if not t.name.startswith("val_"))  # module parameters keep their names
    io = [(v.name, str(v.type)) for v in (*g.input, *g.output)]
    return nodes, inits, named, io, [(o.domain, o.version) for o in m.opset_import], m.ir_version, m.producer_name


def _batch_and_single(backend, keys, suffix: str, layout: str, tmp_path):
    """Convert ``keys`` with the backend's ``export_batch`` and each alone with ``export``:
    ``(spec, batch file, single file)`` per op."""
    from fbprof.build import build_calibrated_op, example_input

    specs = [OpSpec.parse(k) for k in keys]
    paths = [tmp_path / f"batch{i}{suffix}" for i in range(len(specs))]
    layouts = backend.export_batch([build_calibrated_op(s) for s in specs], [example_input(s) for s in specs], paths, {})
    assert layouts == [layout] * len(specs)
    out = []
    for spec, path in zip(specs, paths):
        single = tmp_path / f"{spec.op}{suffix}"
        backend.export(build_calibrated_op(spec), example_input(spec), single, {})
        out.append((spec, path, single))
    return out


def test_a_batch_export_splits_into_the_graphs_of_single_exports(tmp_path):
    import onnx

    from fbprof.backends import onnxruntime as ort_backend
    from fbprof.build import example_input

    for spec, path, single in _batch_and_single(ort_backend, BATCH_KEYS, ".onnx", "nchw", tmp_path):
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        assert _graph_signature(path) == _graph_signature(single), spec.key
        # and it runs like torch in ONNX Runtime
        sess = ort_backend.open_session(str(path), example_input(spec).numpy(), 1)
        np.testing.assert_allclose(sess.run(), _torch_output(spec), rtol=1e-4, atol=1e-4)


def test_reusing_the_torchlib_registry_gives_the_same_file(tmp_path):
    import torch

    from fbprof.backends import onnxruntime as ort_backend
    from fbprof.backends.base import quiet
    from fbprof.build import build_calibrated_op, example_input

    spec = OpSpec.parse("k5_e1_g2:16x8x8:16:s1")
    module, x = build_calibrated_op(spec), example_input(spec)
    ort_backend.export(module, x, tmp_path / "first.onnx", {})
    ort_backend.export(module, x, tmp_path / "reused.onnx", {})  # the registry of the first export
    with quiet(), torch.no_grad():  # torch.onnx as is: a fresh registry
        torch.onnx.export(module, (x,), dynamo=True, opset_version=18, input_names=["input"],
                          output_names=["output"], verbose=False).save(str(tmp_path / "plain.onnx"))
    plain = (tmp_path / "plain.onnx").read_bytes()
    assert (tmp_path / "first.onnx").read_bytes() == plain
    assert (tmp_path / "reused.onnx").read_bytes() == plain
    assert ort_backend._REGISTRIES  # the reuse happened


@pytest.mark.parametrize("name", ["fbnet-b", "fbnetv2-f1"])
def test_folding_bn_keeps_what_a_network_computes_and_leaves_no_bn(name):
    import torch

    from fbprof.backends.base import fold_batchnorm
    from fbprof.build import build_arch
    from fbprof.space import load_arch

    arch = load_arch(name)
    net = build_arch(arch)
    before = [(n, type(m)) for n, m in net.named_modules()]
    folded = fold_batchnorm(net)
    assert any(t is torch.nn.BatchNorm2d for _, t in before)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert [(n, type(m)) for n, m in net.named_modules()] == before  # the original is untouched
    x = torch.randn(1, 3, arch.space.resolution, arch.space.resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = net(x), folded(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    net.train()
    assert fold_batchnorm(net) is net  # a training-mode module is never folded (its BN uses batch statistics)


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "pte"])
def test_a_runtime_runs_the_same_ops_with_bn_folded_before_converting(fmt, tmp_path):
    import importlib

    from fbprof.backends import backend_for_format
    from fbprof.backends.base import fold_batchnorm
    from fbprof.build import build_calibrated_op, example_input

    be = backend_for_format(fmt)
    assert be.fold_bn
    mod = importlib.import_module(f"fbprof.backends.{be.name}")
    for key in ("k5_e1_g2:16x8x8:16:s1", "k3_e4_sehsig_hs:16x8x8:24:s2"):
        spec = OpSpec.parse(key)
        module, x = build_calibrated_op(spec), example_input(spec)
        plain, folded = tmp_path / f"plain{be.suffix}", tmp_path / f"folded{be.suffix}"
        mod.export(module, x, plain, {})
        mod.export(fold_batchnorm(module), x, folded, {})
        assert mod.runtime_ops(folded) == mod.runtime_ops(plain), key


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "pte"])
def test_folded_ops_convert_in_one_batch_without_falling_back(fmt, tmp_path, monkeypatch):
    import importlib

    from fbprof.artifact import Artifact
    from fbprof.backends import backend_for_format
    from fbprof.backends.cache import ArtifactCache
    from fbprof.profiler.export import export_ops

    mod = importlib.import_module(backend_for_format(fmt).module.__name__)

    def single(*_a, **_k):
        raise AssertionError("fell back to one conversion per op")

    monkeypatch.setattr(mod, "export", single)
    # (an FBNetV2 SE block leaves a dim-order copy outside ExecuTorch's delegates, folded or not, and is
    # lowered alone: not in this batch)
    specs = [OpSpec.parse(k) for k in ("k3_e6:16x8x8:16:s1", "k5_e1_g2:16x8x8:16:s1")]
    out = export_ops(specs, fmt, ArtifactCache(tmp_path), workers=1)  # one batch of 2, in this process
    assert all(isinstance(out[s.key], Artifact) for s in specs), out


def test_a_folding_backend_converts_a_bn_free_module_but_checks_against_the_original(tmp_path, monkeypatch):
    import torch

    from fbprof.backends import litert
    from fbprof.backends.cache import ArtifactCache
    from fbprof.build import build_calibrated_op, example_input
    from fbprof.profiler.export import export_op

    seen = []
    real = litert.export

    def spy(module, example, path, options):
        seen.append(module)
        return real(module, example, path, options)

    monkeypatch.setattr(litert, "export", spy)
    spec = OpSpec.parse("k3_e6:16x8x8:16:s1")
    art = export_op(spec, "tflite", ArtifactCache(tmp_path))
    assert len(seen) == 1 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in seen[0].modules())
    with torch.no_grad():
        want = build_calibrated_op(spec)(example_input(spec)).numpy()
    np.testing.assert_array_equal(np.asarray(art.expected), want.transpose(0, 2, 3, 1))  # torch's, unfolded
    from fbprof.backends import BACKENDS

    key = ArtifactCache(tmp_path).digest(spec.key, "tflite", {})
    monkeypatch.setitem(BACKENDS, "litert", dataclasses.replace(BACKENDS["litert"], fold_bn=False))
    assert ArtifactCache(tmp_path).digest(spec.key, "tflite", {}) != key  # artifacts converted unfolded are not reused


@pytest.mark.parametrize("backend", ["litert", "executorch"])
def test_reusing_torch_export_setup_gives_the_same_file(backend, tmp_path, monkeypatch):
    import contextlib
    import importlib

    from fbprof.backends import base
    from fbprof.build import build_calibrated_op, example_input

    mod = importlib.import_module(f"fbprof.backends.{backend}")
    suffix = mod.SPEC["suffix"]
    spec = OpSpec.parse("k5_e1_g2:16x8x8:16:s1")
    module, x = build_calibrated_op(spec), example_input(spec)
    with monkeypatch.context() as m:  # torch as is: every fixed cost paid again
        m.setattr(base, "reuse_export_setup", contextlib.nullcontext)
        mod.export(module, x, tmp_path / f"plain{suffix}", {})
    mod.export(module, x, tmp_path / f"first{suffix}", {})
    mod.export(module, x, tmp_path / f"reused{suffix}", {})  # the CIA op set of the first export
    plain = (tmp_path / f"plain{suffix}").read_bytes()
    assert (tmp_path / f"first{suffix}").read_bytes() == plain
    assert (tmp_path / f"reused{suffix}").read_bytes() == plain
    assert base._CIA_OPS  # the reuse happened


def test_reused_export_setup_follows_new_ops_and_is_undone_after_the_block():
    import collections.abc

    import torch
    from torch import _ops
    from torch._export import utils
    from torch.export import decomp_utils, exported_program

    from fbprof.backends.base import _MemoCallable, reuse_export_setup

    orig = utils._collect_all_valid_cia_ops
    with reuse_export_setup():
        assert exported_program._collect_all_valid_cia_ops is not orig
        before = exported_program._collect_all_valid_cia_ops()
        assert before == orig()
        lib = torch.library.Library("fbprof_cia_test", "DEF")  # a new CIA op: the set is collected again
        try:
            lib.define("twice(Tensor x) -> Tensor")
            lib.impl("twice", lambda t: t + t, "CompositeImplicitAutograd")
            after = decomp_utils._collect_all_valid_cia_ops()
            assert torch.ops.fbprof_cia_test.twice.default in after - before
            assert after == orig()
        finally:
            lib._destroy()
        # the memoised Callable: same aliases, isinstance as collections.abc.Callable
        assert _ops.Callable is _MemoCallable
        p, t = _ops._P, _ops._T
        assert _MemoCallable[p, t] is _MemoCallable[p, t] and _MemoCallable[p, t] == collections.abc.Callable[p, t]
        assert _MemoCallable[[int], str] == collections.abc.Callable[[int], str]
        assert isinstance(len, _MemoCallable) and not isinstance(3, _MemoCallable)
        assert issubclass(type(len), _MemoCallable) and not issubclass(int, _MemoCallable)
    assert exported_program._collect_all_valid_cia_ops is orig and decomp_utils._collect_all_valid_cia_ops is orig
    assert _ops.Callable is collections.abc.Callable


def test_an_executorch_batch_writes_the_programs_of_single_exports(tmp_path):
    """One lowering for several ops, one .pte per op: byte for byte what a single export writes, and it
    runs like torch in ExecuTorch."""
    from fbprof.backends import executorch as et_backend
    from fbprof.build import example_input

    for spec, path, single in _batch_and_single(et_backend, (*BATCH_KEYS, "k5_e3:8x16x16:16:s2"), ".pte", "nchw",
                                                tmp_path):
        assert path.read_bytes() == single.read_bytes(), spec.key
        sess = et_backend.open_session(str(path), example_input(spec).numpy(), 1)
        try:
            np.testing.assert_allclose(sess.run(), _torch_output(spec), rtol=1e-4, atol=1e-4)
        finally:
            sess.close()


def _tflite_signature(path):
    """What a .tflite computes, names aside: per operator its builtin op, options and the (shape, type,
    constant bytes) of every tensor it reads and writes, in graph order; the signature's input/output arity."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    (sub,) = model.subgraphs

    def plain(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if hasattr(v, "__dict__"):
            return {k: plain(x) for k, x in sorted(vars(v).items())}
        return v

    def tensor(t):
        if t < 0:
            return None
        x = sub.tensors[t]
        data = model.buffers[x.buffer].data
        return (tuple(x.shape), x.type, None if data is None else bytes(bytearray(data)))

    ops = []
    for op in sub.operators:
        code = model.operatorCodes[op.opcodeIndex]
        ops.append((max(code.builtinCode, code.deprecatedBuiltinCode), op.builtinOptionsType, plain(op.builtinOptions),
                    [tensor(t) for t in op.inputs], [tensor(t) for t in op.outputs]))
    (sig,) = model.signatureDefs
    return ops, [t.name for t in sig.inputs], [t.name for t in sig.outputs], len(sub.inputs), len(sub.outputs)


def test_a_litert_batch_splits_into_the_models_of_single_conversions(tmp_path):
    """One conversion for several ops, one .tflite per op: the operators, options, shapes and weights a
    single conversion gives (channel shuffles included: their equal TRANSPOSE permutations are one shared
    constant in the batch), 16-byte aligned weights, and it runs like torch in LiteRT."""
    from ai_edge_litert import schema_py_generated as schema

    from fbprof.backends import litert as lt_backend
    from fbprof.build import example_input

    keys = (*BATCH_KEYS, "k3_e1_g2:16x8x8:16:s1", "stem:3x32x32:8:s2")
    for spec, path, single in _batch_and_single(lt_backend, keys, ".tflite", "nhwc", tmp_path):
        assert _tflite_signature(path) == _tflite_signature(single), spec.key
        data = path.read_bytes()
        model = schema.Model.GetRootAs(data, 0)
        for b in range(model.BuffersLength()):
            buf = model.Buffers(b)
            if buf.DataLength():
                assert (buf._tab.Vector(buf._tab.Offset(4))) % 16 == 0, (spec.key, b)
        x = example_input(spec)
        x = (x.permute(0, 2, 3, 1).contiguous() if x.ndim == 4 else x).numpy()
        want = _torch_output(spec)
        want = want.transpose(0, 2, 3, 1) if want.ndim == 4 else want
        sess = lt_backend.open_session(str(path), x, 1)
        try:
            np.testing.assert_allclose(sess.run(), want, rtol=1e-4, atol=1e-4)
        finally:
            sess.close()


def test_a_litert_split_refuses_an_op_that_reads_another_ops_tensor(tmp_path):
    """A batch model where op 1 reads op 0's output is not two independent ops: no file is cut from it
    (the caller then converts one op at a time)."""
    import litert_torch
    import torch

    from fbprof.backends import litert as lt_backend

    class Chained(torch.nn.Module):
        def forward(self, a, b):
            y = torch.relu(a)
            return y, y + b

    data = bytes(litert_torch.convert(Chained().eval(), (torch.ones(1, 4), torch.zeros(1, 4))).model_content())
    for i in (0, 1):  # op 0's output feeds op 1: neither is an op of its own
        with pytest.raises(ValueError, match="reads a tensor computed by another op"):
            lt_backend.split_model(data, i)


def test_a_failing_executorch_batch_falls_back_to_one_export_per_op(tmp_path, monkeypatch):
    from fbprof.artifact import Artifact
    from fbprof.backends import executorch as et_backend
    from fbprof.backends.cache import ArtifactCache
    from fbprof.profiler.export import export_ops

    def cut(edge, i, name):  # as if the lowered batch kept an op outside its delegate
        raise ValueError("lowered batch keeps call_function aten.add outside a delegate")

    monkeypatch.setattr(et_backend, "_op_program", cut)
    specs = [OpSpec.parse(k) for k in BATCH_KEYS[:2]]
    out = export_ops(specs, "pte", ArtifactCache(tmp_path), batch=2)
    assert all(isinstance(out[s.key], Artifact) for s in specs), out


def test_a_failing_batch_conversion_falls_back_to_one_export_per_op(tmp_path, monkeypatch):
    from fbprof.artifact import Artifact
    from fbprof.backends import onnxruntime as ort_backend
    from fbprof.backends.cache import ArtifactCache
    from fbprof.profiler.export import export_ops

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("batch conversion broke")

    monkeypatch.setattr(ort_backend, "export_batch", broken)
    specs = [OpSpec.parse(k) for k in BATCH_KEYS[:3]]
    out = export_ops(specs, "onnx", ArtifactCache(tmp_path), batch=3)
    assert calls, "the batch path was not tried"
    assert all(isinstance(out[s.key], Artifact) for s in specs), out


def test_export_stream_yields_in_order_and_reports_failures(tmp_path):
    from fbprof.artifact import Artifact
    from fbprof.backends.cache import ArtifactCache
    from fbprof.errors import MeasurementError
    from fbprof.profiler.export import stream_ops

    specs = [OpSpec.parse(k) for k in ("skip:16x8x8:24:s2", "fc:64x1x1:10:s1", "stem:3x32x32:8:s2")]
    done: list[str] = []
    got = list(stream_ops(specs, "torchscript", ArtifactCache(tmp_path), {"no": "such option"}, on_done=done.append))
    assert [k for k, _ in got] == [s.key for s in specs] == done
    assert all(isinstance(a, Artifact) for _, a in got)
    bad = list(stream_ops(specs[:2], "onnx", ArtifactCache(tmp_path), {"onnx_exporter": "nonsense"}))
    assert [k for k, _ in bad] == [s.key for s in specs[:2]]
    assert all(isinstance(a, MeasurementError) and "nonsense" in a.message for _, a in bad)


def test_conversions_ramp_up_and_down_and_keep_the_jobs_order():
    from fbprof.backends.cache import RAMP, ExportJob, _units

    def job(i: int, batched: bool = True) -> ExportJob:
        return ExportJob(str(i), str(i), print, (), max if batched else None)

    for n in range(1, 120):
        for batch in (8, 16):
            units = _units([job(i) for i in range(n)], batch)
            sizes = [len(u) for u in units]
            assert [j.name for u in units for j in u] == [str(i) for i in range(n)]
            assert max(sizes) <= batch
            assert sizes[:2] == list(RAMP)[: len(sizes[:2])] or n < sum(RAMP)
            if len(sizes) > 3:  # ramped down, never a lone conversion
                assert sizes[-2:] == list(reversed(RAMP)) and min(sizes) >= 2, (n, batch, sizes)
    assert [len(u) for u in _units([job(i) for i in range(109)], 8)] == [2, 4] + [8] * 11 + [5, 4, 4, 2]
    assert [len(u) for u in _units([job(i) for i in range(30)], 16)] == [2, 4, 9, 9, 4, 2]
    assert [len(u) for u in _units([job(i, batched=False) for i in range(5)], 8)] == [1] * 5


def test_an_export_worker_collects_and_freezes_its_heap_before_each_conversion():
    """A worker (its own process: this one's collector is left alone) starts a conversion with a frozen heap
    and a youngest generation collected every 10,000 allocations; a cycle made before it is collected, and one
    frozen while alive is collected some conversions after it died. It prints nothing."""
    import subprocess

    code = ("import gc, os, sys, weakref\n"
            "from fbprof.backends.cache import ExportJob, _run_unit_in_worker, _worker_init\n"
            "report = os.dup(1)\n"
            "_worker_init()\n"
            "print('chatter'); print('chatter', file=sys.stderr); sys.stdout.flush(); sys.stderr.flush()\n"
            "os.write(2, b'native chatter')\n"
            "class Node: pass\n"
            "a, b = Node(), Node(); a.b, b.a = b, a; gone = weakref.ref(a); del a, b\n"
            "seen = []\n"
            "job = ExportJob('x', 'x', lambda *args: seen.append((gc.get_freeze_count(), gc.get_threshold()[0], gone())))\n"
            "_run_unit_in_worker([job], 'onnx', '.', {})\n"
            "frozen, threshold, cycle = seen[0]\n"
            "c, d = Node(), Node(); c.d, d.c = d, c; later = weakref.ref(c)\n"
            "_run_unit_in_worker([job], 'onnx', '.', {})\n"  # frozen while alive
            "del c, d\n"
            "for _ in range(20):\n"
            "    _run_unit_in_worker([job], 'onnx', '.', {})\n"
            "os.write(report, f'{frozen > 10000} {threshold} {cycle is None} {later() is None}'.encode())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    # (a worker always exits 0: _exit_now); a cycle frozen alive that died since is freed within 16 conversions;
    # what the worker prints (here, or a converter) reaches neither stream
    assert out.stdout.split() == ["True", "10000", "True", "True"] and out.stderr == "", (out.stdout, out.stderr)


def test_export_worker_output_is_shown_on_request():
    import os
    import subprocess

    code = "from fbprof.backends.cache import _worker_init\n_worker_init()\nimport os\nos.write(2, b'native chatter')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "FBPROF_WORKER_OUTPUT": "1"})
    assert "native chatter" in out.stderr


def test_exporting_in_this_process_leaves_its_garbage_collector_alone(tmp_path):
    import gc

    from fbprof.backends.cache import ArtifactCache, ExportJob, export_jobs

    before = gc.get_threshold()
    seen = []
    jobs = [ExportJob(f"j{i}", f"k{i}", lambda *args: seen.append((gc.get_freeze_count(), gc.get_threshold())))
            for i in range(3)]
    out = export_jobs(jobs, "onnx", ArtifactCache(tmp_path), workers=1)
    assert len(seen) == 3 and all(s == (0, before) for s in seen)
    assert all("left no artifact" in str(e) for e in out.values())  # the jobs ran here and made nothing


def test_export_workers_stay_off_the_measuring_cores(monkeypatch):
    import os

    from fbprof.backends.cache import worker_placements

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert worker_placements(2, {1}) == [((0,), False), ((0, 1), True)]  # the second moved off 1 while measuring
    assert worker_placements(1, {1}) == [((0,), False)]
    assert worker_placements(2, None) == [(None, False), (None, False)]
    assert worker_placements(2, {0, 1}) == [(None, False), (None, False)]  # no other core: anywhere


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="needs sched_setaffinity")
def test_workers_that_may_use_the_measuring_cores_leave_them_while_measuring():
    import os
    import subprocess

    from fbprof.backends import cache as cache_mod

    cores = sorted(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                              "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
                              "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        threads = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")] if os.path.isdir("/proc") else [child.pid]
        away, home = tuple(cores[:1]), tuple(cores)
        cache_mod._SHARED_WORKERS.append(([child.pid, 0], away, home))
        with cache_mod.measuring_alone():  # every thread off the measuring cores, still running
            assert all(os.sched_getaffinity(t) == set(away) for t in threads)
        assert all(os.sched_getaffinity(t) == set(home) for t in threads)
        child.kill()
        child.wait()
        with cache_mod.measuring_alone():  # a worker that exited is skipped
            pass
    finally:
        cache_mod._SHARED_WORKERS.clear()
        child.kill()
        child.wait()


# ---- LUTs through the shared loop --------------------------------------------------------------
def test_native_stderr_to_null_hides_what_c_code_writes_and_restores_it(capfd):
    import os

    from fbprof.backends.base import native_stderr_to_null

    os.write(2, b"before ")
    with native_stderr_to_null():
        os.write(2, b"hidden ")
    os.write(2, b"after")
    assert capfd.readouterr().err == "before after"


@pytest.fixture
def et_pool(monkeypatch):
    """ExecuTorch's XNNPACK pool watched: ``watch()`` sets it to 2 threads and returns (the list of resizes from
    then on as (before, after) pairs, the unwatched size query); the size it had is restored afterwards."""
    from fbprof.backends import executorch as mod

    if mod.xnnpack_threads() < 0:
        pytest.skip("this ExecuTorch build cannot report its thread pool")
    if mod._POOL.open:
        pytest.skip(f"{mod._POOL.open} ExecuTorch session(s) of other tests still open")
    real = mod.xnnpack_threads
    before = real()

    def watch():
        resizes = []

        def spy(threads=None):
            was = real()
            now = real(threads)
            if now != was:
                resizes.append((was, now))
            return now

        monkeypatch.setattr(mod, "xnnpack_threads", spy)
        real(2)
        return resizes, real

    yield watch
    real(before)


def test_an_executorch_lut_build_sets_the_thread_pool_once_not_per_op(cache, quick_loop, tmp_path, et_pool, capfd):
    """The XNNPACK pool is process-wide and the runtime logs every resize to stderr: a LUT build holds it at the
    run's size (set once, given back once), instead of each op's session resizing it on open and on close."""
    from fbprof.backends import executorch as mod
    from fbprof.devices.local import LocalDevice
    from fbprof.profiler.measure import MeasureRequest, measure_lut

    resizes, real = et_pool()
    specs = [OpSpec.parse(k) for k in ("k3_e1:16x8x8:16:s1", "k3_e3:16x8x8:16:s1", "fc:64x1x1:10:s1")]
    summary = measure_lut(MeasureRequest(specs=specs, out=tmp_path / "et.csv", device=LocalDevice(pin=False),
                                         backend="executorch", loop=quick_loop, cache=cache, threads=1))
    assert not summary.failed and summary.measured == 3
    assert resizes == [(2, 1), (1, 2)]  # per op, it was 6
    assert real() == 2 and mod._POOL.open == 0
    assert "Resetting threadpool" not in capfd.readouterr().err  # the runtime's log of those two


@pytest.mark.parametrize("paired", [False, True])
def test_verify_measurements_set_the_executorch_thread_pool_once(paired, cache, quick_loop, et_pool, capfd):
    """verify's rounds and its sample-level pairing hold the device's session scope as a LUT build does: the
    XNNPACK pool is resized once each way for the whole run, and the runtime's resize log stays off stderr."""
    from fbprof.backends import executorch as mod
    from fbprof.devices.local import LocalDevice
    from fbprof.profiler.export import export_op
    from fbprof.verify.measure import measure_interleaved, paired_samples

    arts = {k: export_op(OpSpec.parse(k), "pte", cache) for k in ("k3_e1:16x8x8:16:s1", "fc:64x1x1:10:s1")}
    resizes, real = et_pool()
    capfd.readouterr()
    device = LocalDevice(pin=False)
    if paired:
        per, failed, notes = paired_samples(device, "executorch", 1, arts, 6, 0)
        assert all(len(per[k]) == 6 for k in arts)
    else:
        per, _, failed, notes = measure_interleaved(device, "executorch", 1, quick_loop, arts, 3, 0)
        assert all(len(per[k]) == 3 for k in arts)
    assert not failed and not [n for ns in notes.values() for n in ns if not n.startswith("round")]  # outputs ok
    # rounds: it was once each way per session (2 x 6); pairing opens every session at once, so it resized
    # once each way before too, but with the runtime's log of both on stderr (checked below)
    assert resizes == [(2, 1), (1, 2)]
    assert real() == 2 and mod._POOL.open == 0
    assert "Resetting threadpool" not in capfd.readouterr().err


@pytest.mark.parametrize("backend", ["litert", "executorch"])
def test_measure_lut_with_mobile_runtime(backend, cache, quick_loop, tmp_path):
    from fbprof.devices.local import LocalDevice
    from fbprof.lut.table import read_lut
    from fbprof.profiler.measure import MeasureRequest, measure_lut

    specs = [OpSpec.parse(k) for k in ("k3_e1:16x8x8:16:s1", "fc:64x1x1:10:s1")]
    out = tmp_path / f"{backend}.csv"
    summary = measure_lut(MeasureRequest(specs=specs, out=out, device=LocalDevice(pin=False), backend=backend,
                                         loop=quick_loop, cache=cache))
    assert not summary.failed and summary.counts.get("invalid", 0) == 0
    lut = read_lut(out)
    assert set(lut.rows) == {s.key for s in specs}
    assert lut.header["backend"] == backend
    assert lut.header["format"] == {"litert": "tflite", "executorch": "pte"}[backend]
    assert "unknown" not in lut.header["runtime"] and "XNNPACK" in lut.header["denormals"]
    # ExecuTorch's timed call changed (inputs set once, no output clone): its rows say so and do not mix with older ones
    assert lut.header["timed"] == {"litert": "invoke", "executorch": "invoke/2"}[backend]
    for row in lut.rows.values():
        assert "output not checked" not in row.note and row.median_us > 0


def test_measuring_an_executorch_program_does_not_import_its_compiler(cache, tmp_path):
    """Opening a session loads the runtime binding only: ``executorch.exir`` (the compiler, ~5 s to import)
    stays out of a process that only measures, and the program computes torch's output."""
    import os
    import subprocess
    from pathlib import Path

    from fbprof.profiler.export import export_op

    art = export_op(OpSpec.parse("k3_e1:16x8x8:16:s1"), "pte", cache)
    np.save(tmp_path / "x.npy", art.input)
    np.save(tmp_path / "want.npy", art.expected)
    code = ("import sys, numpy as np\n"
            "from fbprof.backends.executorch import open_session\n"
            "s = open_session(sys.argv[1], np.load(sys.argv[2]), 1)\n"
            "s.invoke()\n"
            "np.testing.assert_allclose(s.run(), np.load(sys.argv[3]), atol=1e-3)\n"
            "s.close()\n"
            "print(sorted(m for m in sys.modules if m.startswith('executorch.exir')))\n")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code, str(art.path), str(tmp_path / "x.npy"), str(tmp_path / "want.npy")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_litert_session_scope_spends_the_runtimes_delegate_log_line(cache, tmp_path):
    """LiteRT logs "Created TensorFlow Lite XNNPACK delegate" once per process, at the first session: inside the
    scope a LUT build or verify holds (entered before their progress bars), no session prints it, and the
    sessions still compute torch's output. Checked in fresh processes, with a control run without the scope."""
    import os
    import subprocess
    from pathlib import Path

    from fbprof.profiler.export import export_op

    art = export_op(OpSpec.parse("k3_e1:16x8x8:16:s1"), "tflite", cache)
    np.save(tmp_path / "x.npy", art.input)
    np.save(tmp_path / "want.npy", art.expected)
    code = ("import contextlib, sys, numpy as np\n"
            "from fbprof.backends import get_backend\n"
            "from fbprof.backends.litert import open_session\n"
            "scope = get_backend('litert').session_scope(1) if sys.argv[4] == 'scope' else contextlib.nullcontext()\n"
            "with scope:\n"
            "    for _ in range(2):\n"
            "        s = open_session(sys.argv[1], np.load(sys.argv[2]), 1)\n"
            "        s.invoke()\n"
            "        np.testing.assert_allclose(s.run(), np.load(sys.argv[3]), atol=1e-3)\n"
            "        s.close()\n"
            "print('ok')\n")
    root = Path(__file__).resolve().parents[1]
    err = {}
    for mode in ("plain", "scope"):
        res = subprocess.run([sys.executable, "-c", code, str(art.path), str(tmp_path / "x.npy"), str(tmp_path / "want.npy"),
                              mode], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
        assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
        err[mode] = res.stderr
    assert "XNNPACK delegate" in err["plain"]  # the control: this runtime does log it
    assert "XNNPACK delegate" not in err["scope"]


def test_executorch_invoke_runs_on_inputs_set_once(cache):
    """The timed call (``invoke``) executes the method on the inputs set when the session opened, without copying
    them in or cloning outputs; what it computes is what ``run`` (inputs passed, output cloned) returns."""
    from fbprof.backends.executorch import open_session
    from fbprof.profiler.export import export_op

    art = export_op(OpSpec.parse("k3_e3:8x8x8:16:s1"), "pte", cache)
    s = open_session(art.path, art.input, 1)
    try:  # invoke first, on a fresh session: only the inputs set when it opened can make this output
        for _ in range(3):
            s.invoke()
        out = s.method.get_outputs(clone_outputs=True)[0].numpy()
        assert out.shape == art.expected.shape and float(np.abs(out).max()) > 0
        np.testing.assert_allclose(out, art.expected, atol=1e-3)
        np.testing.assert_array_equal(s.run(), out)
    finally:
        s.close()


# ---- whole architectures -----------------------------------------------------------------------
def test_cli_export_fbnet_b_tflite_runs_in_litert(tmp_path):
    from ai_edge_litert.interpreter import Interpreter
    from typer.testing import CliRunner

    from fbprof.cli import app
    from fbprof.backends.litert import tflite_ops

    out = tmp_path / "fbnet-b.tflite"
    r = CliRunner().invoke(app, ["export", "fbnet-b", "--format", "tflite", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "checked with litert" in r.output
    it = Interpreter(model_path=str(out), num_threads=1)
    it.allocate_tensors()
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    assert tuple(inp["shape"]) == (1, 224, 224, 3)
    it.set_tensor(inp["index"], np.random.default_rng(0).standard_normal((1, 224, 224, 3), dtype=np.float32))
    it.invoke()
    y = it.get_tensor(outp["index"])
    assert y.shape == (1, 1000) and np.all(np.isfinite(y)) and float(np.abs(y).max()) > 0
    ops = tflite_ops(out)
    assert "TRANSPOSE" not in ops and ops.count("DEPTHWISE_CONV_2D") == 21


TINY_ARCH = "schema: 1\nname: tiny-a\nspace: tiny\nblocks: [k3_e1, k3_e3, k5_e3, skip]\n"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "executorch", "coreml"])
def test_export_arch_every_format(fmt, tmp_path):
    from fbprof.backends import backend_for_format
    from fbprof.backends import resolve_format
    from fbprof.profiler.export import export_arch_file
    from fbprof.space import load_arch

    (tmp_path / "a.yaml").write_text(TINY_ARCH)
    arch = load_arch(tmp_path / "a.yaml")
    out = tmp_path / f"tiny-a{backend_for_format(resolve_format(fmt)).suffix}"
    r = export_arch_file(arch, fmt, out)
    assert out.exists() and r.path == out
    assert r.input_shape == (1, 3, 32, 32) and r.output_shape == (1, 10)
    if fmt == "coreml":
        assert r.backend is None and "macOS" in r.not_checked
    else:
        assert r.backend is not None and r.check_problem is None and r.max_abs_error < 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_cli_export_rejects_unknown_format_and_wrong_suffix(tmp_path):
    from typer.testing import CliRunner

    from fbprof.cli import app

    r = CliRunner().invoke(app, ["export", "fbnet-b", "--format", "caffe"])
    assert r.exit_code == 2 and "unknown format 'caffe'" in r.output and "tflite" in r.output
    r = CliRunner().invoke(app, ["export", "fbnet-b", "--format", "tflite", "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "should end in .tflite" in r.output


def test_cache_lookup_does_not_import_torch_and_keeps_its_keys(tmp_path):
    """A warm-cache run only measures: looking artifacts up must not import torch (seconds). The digest
    hashes torch's version, BUILDER_VERSION and, for a backend that folds BN before converting, ``prep``."""
    import hashlib
    import json
    import os
    import subprocess
    from pathlib import Path

    import torch

    from fbprof.backends import backend_for_format
    from fbprof.build import BUILDER_VERSION

    code = ("import sys\n"
            "from fbprof.backends.cache import ArtifactCache\n"
            "c = ArtifactCache(sys.argv[1])\n"
            "assert c.get('skip:16x8x8:16:s1', 'onnx', {}) is None\n"
            "assert 'torch' not in sys.modules, 'a cache lookup imported torch'\n"
            "print(c.digest('skip:16x8x8:16:s1', 'onnx', {'opset': 18}))\n")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert res.returncode == 0, res.stderr
    ident = {"key": "skip:16x8x8:16:s1", "format": "onnx", "converter": backend_for_format("onnx").converter_version(),
             "torch": torch.__version__, "builder": BUILDER_VERSION, "options": {"opset": 18}, "prep": "fold-bn"}
    assert res.stdout.strip() == hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def test_an_exported_package_replaces_an_earlier_package_but_never_a_users_folder(tmp_path):
    from pathlib import Path

    from fbprof.errors import InputError
    from fbprof.profiler.export import _place

    def package(name: str, text: str) -> Path:
        d = tmp_path / name
        (d / "Data").mkdir(parents=True)
        (d / "Manifest.json").write_text(text)
        return d

    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's")
    with pytest.raises(InputError, match="is a folder that is not a model package"):
        _place(package("new1", "1"), mine)
    assert (mine / "keep.txt").read_text() == "the user's"
    out = tmp_path / "m.mlpackage"
    _place(package("new2", "2"), out)
    _place(package("new3", "3"), out)  # an earlier export of the same path: replaced
    assert (out / "Manifest.json").read_text() == "3" and not list(tmp_path.glob(".m.mlpackage.old-*"))


@pytest.mark.parametrize("fmt", ["pte", "torchscript"])
def test_a_session_gives_back_the_process_wide_thread_settings(fmt, cache, tmp_path):
    """torch's thread count and ExecuTorch's XNNPACK pool are process-wide: a session sets them and gives them
    back when it closes, and when opening it fails."""
    import torch

    from fbprof.backends import backend_for_format
    from fbprof.profiler.export import export_op

    be = backend_for_format(fmt)
    mod = be.module
    pool = None
    if fmt == "pte":
        pool = mod.xnnpack_threads()
        if pool < 0:
            pytest.skip("this ExecuTorch build cannot report its thread pool")
        if mod._POOL.open:  # a session another test left open holds the pool: the last one to close gives it back
            pytest.skip(f"{mod._POOL.open} ExecuTorch session(s) of other tests still open")
        mod.xnnpack_threads(2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        art = export_op(OpSpec.parse("k3_e1:8x4x4:8:s1"), fmt, cache)
        sess = mod.open_session(str(art.path), np.asarray(art.input), 1)
        assert torch.get_num_threads() == 1
        sess.run()
        sess.close()
        assert torch.get_num_threads() == 2 and (pool is None or mod.xnnpack_threads() == 2)
        bad = tmp_path / f"broken{art.path.suffix}"
        bad.write_bytes(b"not a model")
        with pytest.raises(Exception):
            mod.open_session(str(bad), np.asarray(art.input), 1)
        assert torch.get_num_threads() == 2 and (pool is None or mod.xnnpack_threads() == 2)
    finally:
        torch.set_num_threads(before)
        if pool is not None:
            mod.xnnpack_threads(pool)
