"""This computer's CPU as a device: runs artifacts in-process with a backend's local session
(:meth:`fbprof.backends.Backend.open`). The calling thread is pinned to ``threads`` cores (the last
ones) while it measures, when the OS allows.
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Callable, Iterator

from fbprof.artifact import Artifact
from fbprof.backends import BACKENDS, Session, get_backend
from fbprof.devices.base import Device, DeviceResult
from fbprof.errors import InputError, MeasurementError
from fbprof.loop import Attempt, LoopConfig, loop_attempt, measure, run_paired

__all__ = ["LocalDevice", "cpu_fingerprint", "pinned"]


def cpu_fingerprint() -> dict[str, str]:
    fp = {"os": platform.platform(), "python": platform.python_version(), "cores": str(os.cpu_count() or 1)}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
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
    streams_artifacts = True

    def __init__(self, pin: bool = True) -> None:
        self.pin = pin
        self.supported_backends = tuple(name for name, b in BACKENDS.items() if b.local)

    def fingerprint(self, backend: str, threads: int) -> dict[str, str]:
        cores = _pin_cores(threads) if self.pin else None
        fp = {
            "device": self.name,
            "device_model": "local CPU",
            "runtime": get_backend(backend).runtime_version(),
            "affinity": ("cores " + ",".join(map(str, sorted(cores)))) if cores else "not pinned",
            "denormals": get_backend(backend).denormals,
        }
        fp.update(cpu_fingerprint())
        return fp

    def measuring_cores(self, threads: int) -> set[int] | None:
        return _pin_cores(threads) if self.pin else None

    @contextlib.contextmanager
    def session_scope(self, backend: str, threads: int) -> Iterator[None]:
        """The backend's set-up for a run of sessions (:meth:`Backend.session_scope`), made on the measuring cores
        as a session's own would be (threads a runtime starts inherit the cores of the thread that starts them)."""
        self.check_backend(backend)
        scope = get_backend(backend).session_scope(threads)
        with pinned(threads) if self.pin else contextlib.nullcontext():
            scope.__enter__()
        try:
            yield
        finally:
            scope.__exit__(None, None, None)

    def open_session(self, artifact: Artifact, backend: str, threads: int) -> Session:
        self.check_backend(backend)
        return get_backend(backend).open(artifact, threads)

    @contextlib.contextmanager
    def _session(self, artifact: Artifact, backend: str, threads: int) -> Iterator[tuple[Session, object]]:
        """A pinned session on ``artifact`` and its output for the artifact's input (run once)."""
        import numpy as np

        ctx = pinned(threads) if self.pin else contextlib.nullcontext("not pinned")
        with ctx:
            session = self.open_session(artifact, backend, threads)
            try:
                try:
                    output = np.asarray(session.run())
                except Exception as e:
                    raise MeasurementError(f"{artifact.key}: {backend} failed to run: {type(e).__name__}: {e}") from e
                yield session, output
            finally:
                session.close()

    def measure(self, artifact: Artifact, backend: str, cfg: LoopConfig, threads: int, on_retry=None) -> DeviceResult:
        with self._session(artifact, backend, threads) as (session, output):
            m = measure(session.invoke, cfg, on_retry=on_retry)
        return DeviceResult(m, output)

    defers_retries = True
    pairs_samples = True

    def measure_paired(self, artifacts: dict[str, Artifact], backend: str, threads: int, iterations: int,
                       seed: int = 0, on_iteration: Callable[[int], None] | None = None,
                       ) -> tuple[dict[str, list[float]], dict[str, object]]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(pinned(threads) if self.pin else contextlib.nullcontext())
            sessions, outputs = {}, {}
            for name, art in artifacts.items():
                session, output = stack.enter_context(self._session(art, backend, threads))
                sessions[name], outputs[name] = session, output
            timed = run_paired({n: s.invoke for n, s in sessions.items()}, iterations, seed, on_iteration=on_iteration)
            return timed, outputs

    def measure_once(self, artifact: Artifact, backend: str, cfg: LoopConfig, threads: int) -> tuple[Attempt, object]:
        with self._session(artifact, backend, threads) as (session, output):
            return loop_attempt(session.invoke, cfg), output


def from_profile(profile, address, options) -> LocalDevice:
    """Transport factory (see fbprof.devices.profiles)."""
    from fbprof.devices.profiles import coerce_setting

    if address:
        raise InputError("the local device takes no address")
    unknown = sorted(set(options) - {"pin"})
    if unknown:
        raise InputError(f"unknown local device setting{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; known: pin")
    pin = options.get("pin", profile.settings.get("pin", True))
    return LocalDevice(pin=coerce_setting("pin", pin, "bool", "--option"))
