"""ExecuTorch runtime running ``.pte`` programs lowered to the XNNPACK delegate.

Export: ``torch.export`` -> ``to_edge_transform_and_lower(XnnpackPartitioner)`` -> ``.pte``; NCHW.

A session sets ExecuTorch's (process-wide) XNNPACK thread pool to ``threads``, and torch's intra-op
pool too: the Python binding moves inputs and outputs through torch tensors, whose copies use that pool;
left at its default (all cores), its workers' wake-ups on a busy or pinned core quantise each run to
scheduler ticks (measured: 8.0 ms instead of 0.47 ms for k3_e1 at 16x112x112). Closing the session
gives torch's thread count back.
"""

from __future__ import annotations

SPEC = {
    "name": "executorch",
    "format": "pte",
    "suffix": ".pte",
    "aliases": ("pte",),
    "extra": "executorch",
    "runtime_module": "executorch",
    "converter_module": "executorch.version",
    "denormals": "XNNPACK default (denormals flushed to zero)",
    "description": "ExecuTorch runtime, XNNPACK partitioned .pte",
    "local": True,
}


def export(module, example, path, options: dict) -> str:
    """ExecuTorch program lowered to the XNNPACK delegate."""
    from pathlib import Path

    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from fbprof.backends.base import reuse_export_setup, silent

    with silent(), torch.no_grad(), reuse_export_setup():
        program = torch.export.export(module, (example,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        buffer = edge.to_executorch().buffer
    Path(path).write_bytes(buffer)
    return "nchw"


def xnnpack_threads(threads: int) -> int:
    """Set ExecuTorch's XNNPACK thread pool to ``threads``; returns the count now in use (-1: unknown)."""
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    count = getattr(portable_lib, "_threadpool_get_thread_count", None)
    if reset is not None and (count is None or count() != threads):
        reset(int(threads))
    return int(count()) if count is not None else -1


class ExecuTorchSession:
    def __init__(self, model_path: str, x, threads: int) -> None:
        from pathlib import Path

        import numpy as np
        import torch
        from executorch.runtime import Runtime, Verification

        self.torch = torch
        self.threads = xnnpack_threads(threads)
        self._torch_threads_before = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            program = Runtime.get().load_program(Path(model_path), verification=Verification.Minimal)
            method = program.load_method("forward")
            if method is None:
                raise ValueError(f"{Path(model_path).name} has no forward method")
        except Exception:
            torch.set_num_threads(self._torch_threads_before)
            raise
        self.program, self.method = program, method
        self.inputs = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))]

    def run(self):
        return self.method.execute(self.inputs)[0].numpy()

    def close(self) -> None:
        if self.method is not None:
            self.method = self.program = None
            self.torch.set_num_threads(self._torch_threads_before)


def open_session(model_path: str, x, threads: int) -> ExecuTorchSession:
    return ExecuTorchSession(model_path, x, threads)
