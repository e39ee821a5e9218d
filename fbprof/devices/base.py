"""What every device offers the profiler, and the artifacts it measures.

A *device* is how we reach a machine (this computer, a phone over ADB, an iPhone's companion app).
A *backend* is the runtime format measured there (ONNX Runtime, LiteRT, ExecuTorch, CoreML, torch).
They are separate axes; a device *profile* (``s8``, ``iphonex``) names a pair plus settings.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

from fbprof.artifact import Artifact
from fbprof.backends import get_backend
from fbprof.errors import InputError
from fbprof.loop import Attempt, LoopConfig, Measurement

__all__ = ["DeviceResult", "Device"]


@dataclass
class DeviceResult:
    """What a device reports for one artifact: the measurement (seconds) and, if it can, the output."""

    measurement: Measurement
    output: Any = None  # a NumPy array, when the device returns outputs
    env: dict[str, str] = field(default_factory=dict)  # per-row facts, e.g. temperatures


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

    def session_scope(self, backend: str, threads: int) -> contextlib.AbstractContextManager:
        """Held around a whole run of measurements (default: nothing; the local device: the backend's
        ``session_scope``)."""
        return contextlib.nullcontext()

    #: the device measures one attempt at a time (:meth:`measure_once`): the profiler then measures the next
    #: rows during a noisy row's pause before its retry instead of waiting idle (same policy, fbprof.loop.Attempts)
    defers_retries: bool = False

    def measure_once(self, artifact: Artifact, backend: str, cfg: LoopConfig, threads: int) -> tuple[Attempt, Any]:
        """One attempt of the loop on ``artifact`` (no retry) and the output, when :attr:`defers_retries`."""
        raise NotImplementedError

    #: the device can time many artifacts sample by sample, interleaved (:meth:`measure_paired`)
    pairs_samples: bool = False

    def check_paired(self, iterations: int, instead: str) -> None:
        """InputError unless ``iterations`` is 0 (no pairing) or this device can pair samples; ``instead`` says
        what to use otherwise (e.g. ``"use --rounds"``)."""
        if iterations < 0:
            raise InputError("--paired must be >= 0")
        if iterations and not self.pairs_samples:
            raise InputError(f"--paired: device {self.name} cannot interleave single samples (the local device can); "
                             f"{instead}")

    def measure_paired(self, artifacts: dict[str, Artifact], backend: str, threads: int, iterations: int,
                       seed: int = 0, on_iteration: Callable[[int], None] | None = None) -> tuple[dict[str, list[float]], dict[str, Any]]:
        """Per-call seconds of every artifact, one sample per iteration, all artifacts in every iteration
        (:func:`fbprof.loop.run_paired`), and each artifact's output, when :attr:`pairs_samples`."""
        raise NotImplementedError

    #: the device measures artifacts as they are exported (no :meth:`prepare` with all of them first)
    streams_artifacts: bool = False

    def measuring_cores(self, threads: int) -> set[int] | None:
        """Cores of this computer that measuring keeps busy (exports stay off them), None if none."""
        return None

    def prepare(self, artifacts: list[Artifact]) -> None:
        """Called once, before the rows, with the artifacts about to be measured (in order), e.g. to
        push them to a phone in batches."""

    def before_row(self, key: str) -> dict[str, str]:
        """Called before each row (thermal gate, reconnect...). Returns facts to record."""
        return {}

    def close(self) -> None:
        pass

    def check_backend(self, backend: str) -> None:
        get_backend(backend)
        if backend not in self.supported_backends:
            raise InputError(
                f"device {self.name} cannot run backend {backend!r}; it runs: {', '.join(self.supported_backends)}"
            )

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
