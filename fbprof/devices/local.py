"""This computer's CPU as a device: runs artifacts in-process with a local runtime.

Local runtimes share one factory signature, ``open(artifact, threads) -> Session`` where a session
has ``run() -> np.ndarray`` feeding the artifact's own input. The calling thread is pinned to
``threads`` cores (the last ones) while it measures, when the OS allows.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
from typing import Callable, Iterator, Protocol

import numpy as np

from fbprof.devices.base import Artifact, Device, DeviceResult, backend_info
from fbprof.errors import MeasurementError, MissingExtraError
from fbprof.profiler.loop import LoopConfig, measure

__all__ = ["LocalDevice", "LOCAL_RUNTIMES", "Session", "cpu_fingerprint", "pinned"]


class Session(Protocol):
    def run(self) -> np.ndarray: ...


class _CallSession:
    """A Session around a callable that runs the artifact's input."""

    def __init__(self, run: Callable[[], np.ndarray]) -> None:
        self.run = run


class _TorchSession:
    def __init__(self, artifact: Artifact, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        self.torch = torch
        self.model = torch.jit.load(str(artifact.path)).eval()
        self.x = torch.from_numpy(np.ascontiguousarray(artifact.input, dtype=np.float32))

    def run(self) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.x).numpy()


def _open_ort(artifact: Artifact, threads: int) -> Session:
    from fbprof.devices.adb_remote_runner import open_onnxruntime  # the same setup as on a device

    return _CallSession(open_onnxruntime(str(artifact.path), artifact.input, threads))


def _open_torch(artifact: Artifact, threads: int) -> Session:
    return _TorchSession(artifact, threads)


#: backend name -> "module:factory" with factory(artifact, threads) -> Session (imported when used)
LOCAL_RUNTIMES: dict[str, str] = {
    "onnxruntime": "fbprof.devices.local:_open_ort",
    "torch": "fbprof.devices.local:_open_torch",
    "litert": "fbprof.devices.runtimes_mobile:open_litert",
    "executorch": "fbprof.devices.runtimes_mobile:open_executorch",
}

#: how each local runtime avoids denormal slowdowns (recorded in the LUT header)
DENORMALS: dict[str, str] = {
    "onnxruntime": "session.set_denormal_as_zero=1",
    "torch": "torch.set_flush_denormal(True)",
    # checked: a 1x1 conv (64 channels, weights 1) fed 1e-39 returns 0 in both runtimes, 6.4e-38 in torch eager
    "litert": "XNNPACK default (denormals flushed to zero)",
    "executorch": "XNNPACK default (denormals flushed to zero)",
}


def _runtime_version(backend: str) -> str:
    info = backend_info(backend)
    try:
        mod = importlib.import_module(info.module)
    except ImportError:
        return "missing"
    version = getattr(mod, "__version__", None)
    if version is None:  # e.g. executorch keeps it in executorch.version / the distribution metadata
        from importlib import metadata

        try:
            version = metadata.version(info.module.split(".")[0])
        except metadata.PackageNotFoundError:
            version = "unknown"
    return f"{info.module} {version}"


def cpu_fingerprint() -> dict[str, str]:
    fp = {"os": platform.platform(), "python": platform.python_version(), "cores": str(os.cpu_count() or 1)}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                fp["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fp.setdefault("cpu_model", platform.processor() or platform.machine())
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", encoding="utf-8") as fh:
            fp["governor"] = fh.read().strip()
    except OSError:
        fp["governor"] = "unreadable"
    return fp


def _pin_cores(threads: int) -> set[int] | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return set(allowed[-threads:]) if threads <= len(allowed) else set(allowed)


@contextlib.contextmanager
def pinned(threads: int) -> Iterator[str]:
    """Pin the calling thread to ``threads`` cores while measuring; yields a description."""
    cores = _pin_cores(threads)
    if cores is None:
        yield "not pinned (unsupported on this OS)"
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cores)
    except OSError as e:
        yield f"not pinned ({e.strerror})"
        return
    try:
        yield "cores " + ",".join(map(str, sorted(cores)))
    finally:
        os.sched_setaffinity(0, before)


class LocalDevice(Device):
    name = "local"

    def __init__(self, pin: bool = True) -> None:
        self.pin = pin
        self.supported_backends = tuple(LOCAL_RUNTIMES)

    def fingerprint(self, backend: str, threads: int) -> dict[str, str]:
        cores = _pin_cores(threads) if self.pin else None
        fp = {
            "device": self.name,
            "device_model": "local CPU",
            "runtime": _runtime_version(backend),
            "affinity": ("cores " + ",".join(map(str, sorted(cores)))) if cores else "not pinned",
            "denormals": DENORMALS.get(backend, "runtime default"),
        }
        fp.update(cpu_fingerprint())
        return fp

    def open_session(self, artifact: Artifact, backend: str, threads: int) -> Session:
        self.check_backend(backend)
        target = LOCAL_RUNTIMES[backend]
        info = backend_info(backend)
        mod_name, fn = target.split(":")
        try:
            importlib.import_module(info.module)
        except ImportError:
            raise MissingExtraError(f"backend {backend}", info.extra or "all", info.module) from None
        factory: Callable[[Artifact, int], Session] = getattr(importlib.import_module(mod_name), fn)
        try:
            return factory(artifact, threads)
        except MissingExtraError:
            raise
        except Exception as e:
            raise MeasurementError(f"{artifact.key}: {backend} could not load {artifact.path.name}: {type(e).__name__}: {e}") from e

    def measure(self, artifact: Artifact, backend: str, cfg: LoopConfig, threads: int, on_retry=None) -> DeviceResult:
        ctx = pinned(threads) if self.pin else contextlib.nullcontext("not pinned")
        with ctx:
            session = self.open_session(artifact, backend, threads)
            try:
                output = np.asarray(session.run())
            except Exception as e:
                raise MeasurementError(f"{artifact.key}: {backend} failed to run: {type(e).__name__}: {e}") from e
            m = measure(session.run, cfg, on_retry=on_retry)
        return DeviceResult(m, output)


def from_profile(profile, address, options) -> LocalDevice:
    """Transport factory (see fbprof.devices.profiles)."""
    if address:
        from fbprof.errors import InputError

        raise InputError("the local device takes no address")
    return LocalDevice(pin=bool(options.get("pin", profile.settings.get("pin", True))))
