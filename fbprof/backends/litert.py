"""LiteRT (TFLite) interpreter with the XNNPACK delegate the wheel applies by default, running ``.tflite``
files converted by litert-torch with channel-last (NHWC) input and output.

Standard library only at import time: this file is pushed to devices that run Python (the ADB python
runner imports it there as ``fbprof_backend_litert``; an older device install with ``tflite_runtime``
works too), so a phone and this computer open LiteRT the same way.

Export: ``litert_torch.convert`` on the module wrapped by ``litert_torch.to_channel_last_io``, so the
graph takes and returns NHWC tensors (4-D ones) and plain blocks carry no TRANSPOSE ops; the
artifact's layout is ``"nhwc"``. :func:`export_batch` converts several ops at once and splits the
flatbuffer per op (:func:`split_model`). :func:`tflite_ops` lists a file's builtin ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

SPEC = {
    "name": "litert",
    "format": "tflite",
    "suffix": ".tflite",
    "aliases": ("tflite",),
    "extra": "tflite",
    "runtime_module": "ai_edge_litert",
    "converter_module": "litert_torch",
    # checked: a 1x1 conv (64 channels, weights 1) fed 1e-39 returns 0 in LiteRT, 6.4e-38 in torch eager
    "denormals": "XNNPACK default (denormals flushed to zero)",
    "description": "LiteRT (TFLite) interpreter, XNNPACK delegate",
    "local": True,
    "batch": 8,  # ops per conversion (export_batch)
    "fold_bn": True,  # the runtime folds them too: same ops run (tests/test_export.py), half the conversion time
}


def export(module, example, path, options: dict) -> str:
    """TFLite through litert-torch with channel-last input/output (layout ``nhwc`` for 4-D tensors)."""
    import litert_torch
    import torch

    from fbprof.backends.base import reuse_export_setup, silent, temporary_env

    with torch.no_grad():
        out = module(example)
    args = [0] if example.ndim == 4 else []
    outputs = [0] if out.ndim == 4 else []
    wrapped = litert_torch.to_channel_last_io(module, args=args, outputs=outputs).eval()
    sample = example.permute(0, 2, 3, 1).contiguous() if example.ndim == 4 else example
    with temporary_env(LITERT_TORCH_SHOW_PROGRESS="n"), silent(), reuse_export_setup():
        model = litert_torch.convert(wrapped, (sample,))
        model.export(str(path))
    return "nhwc"


def export_batch(modules, examples, paths, options: dict) -> list[str]:
    """Convert several independent single-input ops with one litert-torch conversion, then split the model.

    Each op is wrapped channel-last as :func:`export` wraps it, the wrapped ops are converted together as
    one module with N inputs and N outputs (the converter's per-call costs are paid once per batch: 8
    fbnet ops convert ~1.5x faster than one at a time, docs/formats.md), and :func:`split_model` cuts op ``i`` out of the flatbuffer: its
    operators, tensors, weight buffers and operator codes, with a ``serving_default`` signature named as a
    single conversion names it (``args_0`` -> ``output_0``). The kernels, shapes and weights are those a
    single conversion gives (tests/test_export.py compares the two); every split file is still checked
    against torch by the caller. A model that does not split cleanly raises, and the caller converts one
    op at a time."""
    from pathlib import Path

    import litert_torch
    import torch

    from fbprof.backends.base import batch_module, reuse_export_setup, silent, temporary_env

    if len(modules) == 1:
        return [export(modules[0], examples[0], paths[0], options)]
    wrapped, samples = [], []
    with torch.no_grad():
        for module, example in zip(modules, examples):
            out = module(example)
            wrapped.append(litert_torch.to_channel_last_io(module, args=[0] if example.ndim == 4 else [],
                                                           outputs=[0] if out.ndim == 4 else []).eval())
            samples.append(example.permute(0, 2, 3, 1).contiguous() if example.ndim == 4 else example)
    with temporary_env(LITERT_TORCH_SHOW_PROGRESS="n"), silent(), reuse_export_setup():
        data = bytes(litert_torch.convert(batch_module(wrapped), tuple(samples)).model_content())
    for i, path in enumerate(paths):
        Path(path).write_bytes(split_model(data, i))
    return ["nhwc"] * len(modules)


def split_model(data: bytes, i: int) -> bytes:
    """Op ``i`` of a batch conversion (see :func:`export_batch`) as a ``.tflite`` model of its own.

    Keeps the operators that read (transitively) input ``args_i``, the tensors they use, the buffers of
    those tensors and of the model's metadata, and the operator codes they run, renumbered in their
    original order; weight buffers are written 16-byte aligned, as the converter writes them. Raises
    ``ValueError`` when op ``i`` reads a tensor that another op of the batch computes or its output is
    not computed from its input."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    if len(model.subgraphs) != 1 or len(model.signatureDefs or []) != 1:
        raise ValueError("a batch model has one subgraph and one signature")
    sub, sig = model.subgraphs[0], model.signatureDefs[0]
    ins = {t.name.decode(): t.tensorIndex for t in sig.inputs}
    outs = {t.name.decode(): t.tensorIndex for t in sig.outputs}
    if f"args_{i}" not in ins or f"output_{i}" not in outs:
        raise ValueError(f"the batch model has no args_{i} -> output_{i}")
    first, last = ins[f"args_{i}"], outs[f"output_{i}"]
    mine = {first}  # tensors computed from args_i
    ops, others = [], []
    for op in sub.operators:
        reads = [int(t) for t in (op.inputs if op.inputs is not None else []) if t >= 0]
        (ops if any(t in mine for t in reads) else others).append(op)
        if ops and ops[-1] is op:
            mine.update(int(t) for t in op.outputs)
    if last not in mine:
        raise ValueError(f"output_{i} is not computed from args_{i}")
    used = sorted({int(t) for op in ops for t in list(op.inputs if op.inputs is not None else []) + list(op.outputs)
                   if t >= 0} | {first, last})
    # constants (no producer) may be shared: the converter stores equal small constants, such as a
    # TRANSPOSE's permutation, once; each op's file gets its own copy. Computed tensors may not.
    foreign = (set(ins.values()) - {first}) | {int(t) for op in others for t in op.outputs}
    if foreign & set(used):
        raise ValueError(f"op {i} reads a tensor computed by another op of the batch")
    if any(b.offset or b.size for b in model.buffers):
        raise ValueError("the batch model keeps buffers outside the flatbuffer, which the split does not carry")
    tensor_at = {old: new for new, old in enumerate(used)}
    buffers = [0] + sorted({sub.tensors[t].buffer for t in used if sub.tensors[t].buffer > 0} |
                           {m.buffer for m in (model.metadata or [])})
    buffer_at = {old: new for new, old in enumerate(buffers)}
    codes = sorted({op.opcodeIndex for op in ops})
    code_at = {old: new for new, old in enumerate(codes)}

    tensors = []
    for t in used:
        tensor = sub.tensors[t]
        tensor.buffer = buffer_at.get(tensor.buffer, 0)
        if t == first:
            tensor.name = b"serving_default_args_0"
        elif t == last:
            tensor.name = b"serving_default_output_0_output"
        tensors.append(tensor)
    for op in ops:
        op.inputs = [tensor_at[int(t)] if t >= 0 else -1 for t in (op.inputs if op.inputs is not None else [])]
        op.outputs = [tensor_at[int(t)] for t in op.outputs]
        op.opcodeIndex = code_at[op.opcodeIndex]
        if op.intermediates is not None and len(op.intermediates):
            raise ValueError(f"op {i} has intermediate tensors, which the split does not carry")
    sub.tensors, sub.operators = tensors, ops
    sub.inputs, sub.outputs = [tensor_at[first]], [tensor_at[last]]
    sig.inputs = [_tensor_map(schema, b"args_0", tensor_at[first])]
    sig.outputs = [_tensor_map(schema, b"output_0", tensor_at[last])]
    model.operatorCodes = [model.operatorCodes[c] for c in codes]
    model.buffers = [_AlignedBuffer(schema, model.buffers[b].data) for b in buffers]
    for m in model.metadata or []:
        m.buffer = buffer_at[m.buffer]
    if model.metadataBuffer is not None and len(model.metadataBuffer):
        raise ValueError("the batch model has a metadata buffer list, which the split does not carry")
    builder = flatbuffers.Builder(max(1024, len(data)))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tensor_map(schema, name: bytes, index: int):
    t = schema.TensorMapT()
    t.name, t.tensorIndex = name, index
    return t


class _AlignedBuffer:
    """A model buffer packed with its bytes 16-byte aligned (the schema's ``force_align: 16``, which the
    generated Python writer ignores)."""

    def __init__(self, schema, data) -> None:
        self.schema, self.data = schema, data

    def Pack(self, builder):  # noqa: N802 - the flatbuffers object API's name
        s = self.schema
        vec = None
        if self.data is not None and len(self.data):
            raw = bytes(bytearray(self.data))
            builder.StartVector(1, len(raw), 16)
            builder.head -= len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            vec = builder.EndVector()
        s.BufferStart(builder)
        if vec is not None:
            s.BufferAddData(builder, vec)
        return s.BufferEnd(builder)


class LiteRTSession:
    def __init__(self, model_path: str, x, threads: int) -> None:
        import numpy as np

        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # an older device install
            from tflite_runtime.interpreter import Interpreter
        self.interp = Interpreter(model_path=str(model_path), num_threads=int(threads))
        self.interp.allocate_tensors()
        inputs = self.interp.get_input_details()
        outputs = self.interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"expected one input and one output, got {len(inputs)} and {len(outputs)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        want = tuple(int(d) for d in inputs[0]["shape"])
        if tuple(x.shape) != want:
            raise ValueError(f"the model takes input {want}, the artifact has {tuple(x.shape)}")
        self.interp.set_tensor(inputs[0]["index"], x)
        self.out_index = outputs[0]["index"]

    def invoke(self) -> None:
        self.interp.invoke()

    def run(self):
        self.interp.invoke()
        return self.interp.get_tensor(self.out_index)

    def close(self) -> None:
        self.interp = None


def open_session(model_path: str, x, threads: int) -> LiteRTSession:
    return LiteRTSession(model_path, x, threads)


@contextlib.contextmanager
def session_scope(threads: int) -> Iterator[None]:
    """Held around a run of sessions (:meth:`Backend.session_scope`): the runtime's one log line per process
    ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", written to stderr when the first interpreter
    applies its delegate, beside the progress bars) is spent here on the null device, by a one-op model
    built in memory and dropped at once. Nothing else changes: every session still applies its own delegate.
    Where that model cannot be built or loaded (an older runtime, another schema), the line shows as before."""
    _spend_delegate_log(threads)
    yield


def _spend_delegate_log(threads: int) -> None:
    """Apply the XNNPACK delegate once (``allocate_tensors``) to a one-op model, stderr on the null device; the
    interpreter is gone when this returns."""
    from fbprof.backends.base import native_stderr_to_null

    try:
        from ai_edge_litert.interpreter import Interpreter

        data = _one_add_model()
        with native_stderr_to_null():
            Interpreter(model_content=data, num_threads=int(threads)).allocate_tensors()
    except Exception:  # noqa: BLE001 - only a log line is at stake
        pass


def _one_add_model() -> bytes:
    """A ``.tflite`` model of one ADD (``y = x + x``, one float), built with the runtime's own schema."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    def tensor(name: bytes):
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], schema.TensorType.FLOAT32, 0, name
        return t

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [tensor(b"x"), tensor(b"y")], [0], [1], [op]
    model = schema.ModelT()
    model.version, model.subgraphs, model.buffers, model.operatorCodes = 3, [graph], [schema.BufferT()], [code]
    builder = flatbuffers.Builder(256)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def runtime_ops(path) -> list[str]:
    """What the interpreter runs (for comparing two exports of one op): :func:`tflite_ops`."""
    return tflite_ops(path)


def tflite_ops(path) -> list[str]:
    """Builtin op names of every operator in a .tflite file, in graph order (all subgraphs).

    Reads the flatbuffer with the schema reader generated by the TFLite project and shipped in
    ``ai_edge_litert`` (``schema_py_generated``); custom ops are listed as ``CUSTOM:<code>``.
    """
    from pathlib import Path

    from ai_edge_litert import schema_py_generated as schema

    from fbprof.errors import InputError

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
    data = Path(path).read_bytes()
    if not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise InputError(f"{path}: not a TFLite flatbuffer (identifier TFL3 missing)")
    model = schema.Model.GetRootAs(data, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # newer files use the wide field
        if code == schema.BuiltinOperator.CUSTOM:
            codes.append("CUSTOM:" + (oc.CustomCode() or b"?").decode(errors="replace"))
        else:
            codes.append(names.get(code, f"BUILTIN_{code}"))
    ops: list[str] = []
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for j in range(sub.OperatorsLength()):
            ops.append(codes[sub.Operators(j).OpcodeIndex()])
    return ops
