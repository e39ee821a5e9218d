"""TorchScript in PyTorch (eager CPU kernels): traced and frozen ``.pt`` files run by ``torch.jit``.

A session sets torch's process-wide intra-op thread count and denormal flushing while it is open and
gives both back when it closes.
"""

from __future__ import annotations

SPEC = {
    "name": "torch",
    "format": "torchscript",
    "suffix": ".pt",
    "aliases": ("pt", "torchscript", "pytorch"),
    "extra": None,
    "runtime_module": "torch",
    "converter_module": "torch",
    "denormals": "torch.set_flush_denormal(True)",
    "description": "TorchScript in PyTorch (eager CPU kernels)",
    "local": True,
}


def export(module, example, path, options: dict) -> str:
    import torch

    from fbprof.backends.base import quiet

    with quiet(), torch.no_grad():
        traced = torch.jit.trace(module, example)
        traced = torch.jit.freeze(traced.eval())
        torch.jit.save(traced, str(path))
    return "nchw"


class TorchScriptSession:
    def __init__(self, model_path: str, x, threads: int) -> None:
        import numpy as np
        import torch

        self.torch = torch
        self.model = None
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        torch.set_flush_denormal(True)  # torch has no getter: close() sets it back to torch's default, off
        try:
            self.model = torch.jit.load(str(model_path)).eval()
        except Exception:
            self._give_back()
            raise
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def invoke(self) -> None:
        with self.torch.inference_mode():
            self.model(self.x)

    def run(self):
        with self.torch.inference_mode():
            return self.model(self.x).numpy()

    def close(self) -> None:
        if self.model is not None:
            self.model = None
            self._give_back()

    def _give_back(self) -> None:
        self.torch.set_num_threads(self._threads_before)
        self.torch.set_flush_denormal(False)


def open_session(model_path: str, x, threads: int) -> TorchScriptSession:
    return TorchScriptSession(model_path, x, threads)
