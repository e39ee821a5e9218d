"""What every device offers the profiler, and the artifacts it measures.

A *device* is how we reach a machine (this computer, a phone over ADB, an iPhone's companion app).
A *backend* is the runtime format measured there (ONNX Runtime, LiteRT, ExecuTorch, CoreML, torch).
They are separate axes; a device *profile* (``s8``, ``iphonex``) names a pair plus settings.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fbprof.errors import InputError
from fbprof.profiler.loop import LoopConfig, Measurement

__all__ = ["Artifact", "DeviceResult", "Device", "BackendInfo", "BACKENDS", "backend_info"]


@dataclass(frozen=True)
class Artifact:
    """An exported model on disk with the input it is measured on and torch's output for that input.

    ``input`` and ``expected`` are already in the artifact's own layout (``nhwc`` for channel-last
    TFLite graphs), so a device feeds ``input`` as is and compares its output with ``expected``.
    """

    key: str
    format: str
    path: Path  # the model file (or .mlpackage folder)
    input: np.ndarray
    expected: np.ndarray
    layout: str = "nchw"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def save_arrays(self, folder: Path) -> None:
        np.save(folder / "input.npy", self.input, allow_pickle=False)
        np.save(folder / "expected.npy", self.expected, allow_pickle=False)
        (folder / "meta.json").write_text(
            json.dumps({"key": self.key, "format": self.format, "model": self.path.name, "layout": self.layout, **self.meta},
                       sort_keys=True, indent=1)
        )

    @classmethod
    def load(cls, folder: Path) -> "Artifact":
        meta = json.loads((folder / "meta.json").read_text())
        return cls(
            key=meta.pop("key"),
            format=meta.pop("format"),
            path=folder / meta.pop("model"),
            input=np.load(folder / "input.npy", allow_pickle=False),
            expected=np.load(folder / "expected.npy", allow_pickle=False),
            layout=meta.pop("layout", "nchw"),
            meta=meta,
        )


@dataclass
class DeviceResult:
    """What a device reports for one artifact: the measurement (seconds) and, if it can, the output."""

    measurement: Measurement
    output: np.ndarray | None = None
    env: dict[str, str] = field(default_factory=dict)  # per-row facts, e.g. temperatures


@dataclass(frozen=True)
class BackendInfo:
    name: str
    format: str  # the export format it runs
    extra: str | None  # pip extra that provides it
    module: str  # the Python module its local runtime needs
    description: str


# One registry of backends (runtime formats). Devices decide which they can run.
BACKENDS: dict[str, BackendInfo] = {
    b.name: b
    for b in (
        BackendInfo("onnxruntime", "onnx", None, "onnxruntime", "ONNX Runtime, CPU execution provider"),
        BackendInfo("torch", "torchscript", None, "torch", "TorchScript in PyTorch (eager CPU kernels)"),
        BackendInfo("litert", "tflite", "tflite", "ai_edge_litert", "LiteRT (TFLite) interpreter, XNNPACK delegate"),
        BackendInfo("executorch", "pte", "executorch", "executorch", "ExecuTorch runtime, XNNPACK partitioned .pte"),
        BackendInfo("coreml", "mlpackage", "coreml", "coremltools", "CoreML ML Program (prediction on macOS/iOS only)"),
    )
}


def backend_info(name: str) -> BackendInfo:
    try:
        return BACKENDS[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}") from None


class Device(abc.ABC):
    """A machine that measures artifacts. Use as a context manager."""

    name: str = "device"
    #: backends this device can run
    supported_backends: tuple[str, ...] = ()

    @abc.abstractmethod
    def fingerprint(self, backend: str, threads: int) -> dict[str, str]:
        """Environment facts recorded in the LUT header (CPU, OS, runtime version, governor...)."""

    @abc.abstractmethod
    def measure(
        self,
        artifact: Artifact,
        backend: str,
        cfg: LoopConfig,
        threads: int,
        on_retry: Callable[[int, float], None] | None = None,
    ) -> DeviceResult:
        """Measure one artifact with the shared loop (or the device's native runner)."""

    def prepare(self, artifacts: list[Artifact]) -> None:
        """Called once, before the rows, with the artifacts about to be measured (in order), e.g. to
        push them to a phone in batches."""

    def before_row(self, key: str) -> dict[str, str]:
        """Called before each row (thermal gate, reconnect...). Returns facts to record."""
        return {}

    def close(self) -> None:
        pass

    def check_backend(self, backend: str) -> None:
        backend_info(backend)
        if backend not in self.supported_backends:
            raise InputError(
                f"device {self.name} cannot run backend {backend!r}; it runs: {', '.join(self.supported_backends)}"
            )

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
