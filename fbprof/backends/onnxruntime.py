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
}


def export(module, example, path, options: dict) -> str:
    """torch.onnx.export: the dynamo exporter by default; ``options["onnx_exporter"] = "legacy"`` uses the
    TorchScript-based exporter, which is about 10x faster per op here but deprecated upstream."""
    import torch

    from fbprof.backends.base import quiet
    from fbprof.errors import InputError

    which = options.get("onnx_exporter", "dynamo")
    if which not in ("dynamo", "legacy"):
        raise InputError(f"onnx_exporter {which!r}: expected dynamo or legacy")
    opset = int(options.get("opset", 18))
    with quiet(), torch.no_grad():
        if which == "legacy":
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"])
        else:
            prog = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                     input_names=["input"], output_names=["output"], verbose=False)
            prog.save(str(path))
    return "nchw"


class OnnxRuntimeSession:
    def __init__(self, model_path: str, x, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
        if threads == 1:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        self.feed = {self.sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}

    def run(self):
        return self.sess.run(None, self.feed)[0]

    def close(self) -> None:
        self.sess = None


def open_session(model_path: str, x, threads: int) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(model_path, x, threads)
