"""ONNX Runtime (CPU execution provider) running ``.onnx`` files exported by torch.onnx.

Standard library only at import time: this file is pushed to devices that run Python (the ADB python
runner imports it there as ``fbprof_backend_onnxruntime``), so a phone and this computer open ONNX Runtime
with exactly the same settings: 1 inter-op thread, sequential execution, all graph optimisations,
denormals as zero, no spinning when single-threaded.
"""

from __future__ import annotations

SPEC = {
    "name": "onnxruntime",
    "format": "onnx",
    "suffix": ".onnx",
    "aliases": ("ort",),
    "extra": None,
    "runtime_module": "onnxruntime",
    "converter_module": "onnxscript",
    "denormals": "session.set_denormal_as_zero=1",
    "description": "ONNX Runtime, CPU execution provider",
    "local": True,
    "batch": 8,  # ops per dynamo export (export_batch)
    "fold_bn": True,  # the runtime folds them too: same ops run (tests/test_export.py), half the conversion time
}


def _exporter(options: dict) -> tuple[str, int]:
    from fbprof.errors import InputError

    which = options.get("onnx_exporter", "dynamo")
    if which not in ("dynamo", "legacy"):
        raise InputError(f"onnx_exporter {which!r}: expected dynamo or legacy")
    return which, int(options.get("opset", 18))


#: torchlib registries built in this process, by opset (see _reuse_torchlib_registry)
_REGISTRIES: dict = {}


class _reuse_torchlib_registry:
    """Within the block, torch.onnx's dynamo exporter reuses one torchlib registry per opset instead of
    rebuilding it on every call (about 1.2 s of a 1.9 s single-op export here: it parses the source of
    ~500 onnxscript functions). The registry is only read by an export without a custom translation
    table, so the files are byte-identical (tests/test_export.py checks it). A no-op where torch's
    internals differ."""

    def __enter__(self):
        self.cls = self.orig = None
        try:
            from torch.onnx._internal.exporter import _registration
        except ImportError:
            return self
        cls = getattr(_registration, "ONNXRegistry", None)
        orig = cls.__dict__.get("from_torchlib") if cls is not None else None
        if not isinstance(orig, classmethod):
            return self

        def from_torchlib(klass, *args, **kwargs):
            key = (klass, args, tuple(sorted(kwargs.items())))
            if key not in _REGISTRIES:
                _REGISTRIES[key] = orig.__func__(klass, *args, **kwargs)
            return _REGISTRIES[key]

        self.cls, self.orig = cls, orig
        cls.from_torchlib = classmethod(from_torchlib)
        return self

    def __exit__(self, *exc) -> None:
        if self.cls is not None:
            self.cls.from_torchlib = self.orig


def export(module, example, path, options: dict) -> str:
    """torch.onnx.export: the dynamo exporter by default; ``options["onnx_exporter"] = "legacy"`` uses the
    TorchScript-based exporter, which is about 10x faster per op here but deprecated upstream."""
    import torch

    from fbprof.backends.base import quiet

    which, opset = _exporter(options)
    with quiet(), torch.no_grad():
        if which == "legacy":
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"])
        else:
            with _reuse_torchlib_registry():
                prog = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                         input_names=["input"], output_names=["output"], verbose=False)
            prog.save(str(path))
    return "nchw"


def export_batch(modules, examples, paths, options: dict) -> list[str]:
    """Export several independent single-input ops with one dynamo export, then split the graph.

    The ops are traced together as one module with N inputs and N outputs (``input_i`` -> ``output_i``);
    each op's file keeps the nodes that compute ``output_i`` (they depend on ``input_i`` only), the
    initializers those nodes read (their ``m{i}.`` prefix dropped) and the model's opset, IR version and
    producer. The result is the graph a direct :func:`export` of that op gives (same nodes, attributes and
    initializer values; node and intermediate value names may differ: tests/test_export.py compares them).
    The legacy exporter has no batch path: each op is exported alone.
    """
    import torch

    from fbprof.backends.base import batch_module, quiet

    which, opset = _exporter(options)
    if which == "legacy" or len(modules) == 1:
        return [export(m, x, p, options) for m, x, p in zip(modules, examples, paths)]

    n = len(modules)
    batch = batch_module(modules)
    with quiet(), torch.no_grad(), _reuse_torchlib_registry():
        prog = torch.onnx.export(batch, tuple(examples), dynamo=True, opset_version=opset, verbose=False,
                                 input_names=[f"input_{i}" for i in range(n)],
                                 output_names=[f"output_{i}" for i in range(n)])
        proto = prog.model_proto
    for i, path in enumerate(paths):
        with open(path, "wb") as fh:
            fh.write(split_graph(proto, i).SerializeToString())
    return ["nchw"] * n


def split_graph(model, i: int):
    """Op ``i`` of a batch export (see :func:`export_batch`) as a model of its own (``input`` -> ``output``)."""
    import onnx

    g = model.graph
    made_by = {o: k for k, node in enumerate(g.node) for o in node.output if o}
    want, keep, seen = [f"output_{i}"], set(), set()
    while want:
        name = want.pop()
        if name in seen:
            continue
        seen.add(name)
        k = made_by.get(name)
        if k is not None and k not in keep:
            keep.add(k)
            want.extend(x for x in g.node[k].input if x)
    nodes = [g.node[k] for k in sorted(keep)]
    used = {x for node in nodes for x in (*node.input, *node.output)}
    prefix = f"m{i}."
    rename = {f"input_{i}": "input", f"output_{i}": "output"}
    rename.update({t.name: t.name[len(prefix):] for t in g.initializer if t.name.startswith(prefix) and t.name in used})
    if f"input_{i}" not in used:
        raise ValueError(f"op {i} of the batch does not read its own input")
    if set(rename.values()) & (used - set(rename)):
        raise ValueError(f"op {i}: renaming its initializers would clash with other names")

    def fix(name: str) -> str:
        return rename.get(name, name)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    del og.node[:], og.input[:], og.output[:], og.initializer[:], og.value_info[:]
    for node in nodes:
        n = og.node.add()
        n.CopyFrom(node)
        n.input[:] = [fix(x) for x in node.input]
        n.output[:] = [fix(x) for x in node.output]
    for src, dst in ((g.input, og.input), (g.output, og.output), (g.value_info, og.value_info)):
        for v in src:
            if v.name in used:
                dst.add().CopyFrom(v)
                dst[-1].name = fix(v.name)
    for t in g.initializer:
        if t.name in used:
            og.initializer.add().CopyFrom(t)
            og.initializer[-1].name = fix(t.name)
    return out


def _session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if threads == 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def runtime_ops(path) -> list[tuple[str, int]]:
    """What a session runs: node types (with counts) of the graph after ONNX Runtime's optimisations, with
    the session settings a measurement uses (for comparing two exports of one op)."""
    import collections
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="fbprof-ort-") as tmp:
        so = _session_options(1)
        so.log_severity_level = 3  # its warning that the optimized file is machine-specific
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath).graph
    return sorted(collections.Counter(n.op_type for n in graph.node).items())


class OnnxRuntimeSession:
    def __init__(self, model_path: str, x, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort

        so = _session_options(threads)
        self.sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        self.feed = {self.sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
        # invoke: input and output bound once (I/O binding), so a timed call neither converts the input nor
        # allocates and copies the output
        out = self.sess.run(None, self.feed)[0]
        self.binding = self.sess.io_binding()
        name, arr = next(iter(self.feed.items()))
        self.binding.bind_cpu_input(name, arr)
        self.out = ort.OrtValue.ortvalue_from_numpy(np.empty_like(out))
        self.binding.bind_ortvalue_output(self.sess.get_outputs()[0].name, self.out)

    def invoke(self) -> None:
        self.sess.run_with_iobinding(self.binding)

    def run(self):
        return self.sess.run(None, self.feed)[0]

    def close(self) -> None:
        self.sess = None


def open_session(model_path: str, x, threads: int) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(model_path, x, threads)
