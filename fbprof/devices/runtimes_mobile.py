"""Local runtimes for the phone formats: LiteRT (``.tflite``) and ExecuTorch (``.pte``).

Both implement the Session protocol of :mod:`fbprof.devices.local`: a factory
``open(artifact, threads) -> Session`` whose ``run()`` feeds the artifact's own input (already in the
artifact's layout, NHWC for TFLite) and returns the output as a NumPy array.

- ``litert``: ``ai_edge_litert.interpreter.Interpreter`` with ``num_threads=threads`` and the XNNPACK
  delegate the wheel applies by default (as shipped, no extra options).
- ``executorch``: ``executorch.runtime`` (Runtime -> Program -> Method). XNNPACK's thread pool and
  torch's intra-op pool (used to copy inputs/outputs) are process-wide; both are set to ``threads``
  when a session opens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fbprof.devices.base import Artifact
from fbprof.errors import MeasurementError

__all__ = ["LiteRTSession", "ExecuTorchSession", "open_litert", "open_executorch"]


class LiteRTSession:
    def __init__(self, artifact: Artifact, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(artifact.path), num_threads=int(threads))
        self.interp.allocate_tensors()
        inputs = self.interp.get_input_details()
        outputs = self.interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise MeasurementError(f"{artifact.key}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        x = np.ascontiguousarray(artifact.input, dtype=np.float32)
        want = tuple(int(d) for d in inputs[0]["shape"])
        if tuple(x.shape) != want:
            raise MeasurementError(f"{artifact.key}: {Path(artifact.path).name} takes input {want}, artifact has {tuple(x.shape)}")
        self.interp.set_tensor(inputs[0]["index"], x)
        self.out_index = outputs[0]["index"]

    def run(self) -> np.ndarray:
        self.interp.invoke()
        return self.interp.get_tensor(self.out_index)


def executorch_threads(threads: int) -> int:
    """Set ExecuTorch's (process-wide) XNNPACK thread pool to ``threads``; returns the count now in use."""
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    count = getattr(portable_lib, "_threadpool_get_thread_count", None)
    if reset is not None and (count is None or count() != threads):
        reset(int(threads))
    return int(count()) if count is not None else -1


class ExecuTorchSession:
    def __init__(self, artifact: Artifact, threads: int) -> None:
        import torch
        from executorch.runtime import Runtime, Verification

        self.threads = executorch_threads(threads)
        # the Python binding moves inputs/outputs through torch tensors, whose copies use torch's
        # intra-op thread pool: left at its default (all cores), its workers' wake-ups on a busy or
        # pinned core quantise each run to scheduler ticks (measured: 8.0 ms instead of 0.47 ms for
        # k3_e1 at 16x112x112), so it gets the same thread count as XNNPACK.
        torch.set_num_threads(int(threads))
        runtime = Runtime.get()
        self.program = runtime.load_program(Path(artifact.path), verification=Verification.Minimal)
        method = self.program.load_method("forward")
        if method is None:
            raise MeasurementError(f"{artifact.key}: {Path(artifact.path).name} has no forward method")
        self.method = method
        self.inputs = [torch.from_numpy(np.ascontiguousarray(artifact.input, dtype=np.float32))]

    def run(self) -> np.ndarray:
        return self.method.execute(self.inputs)[0].numpy()


def open_litert(artifact: Artifact, threads: int) -> LiteRTSession:
    return LiteRTSession(artifact, threads)


def open_executorch(artifact: Artifact, threads: int) -> ExecuTorchSession:
    return ExecuTorchSession(artifact, threads)
