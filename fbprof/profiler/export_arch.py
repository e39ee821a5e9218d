"""Whole architectures to any deployment format, checked against torch where a local runtime exists.

:func:`export_arch` builds the network with the same builders as the LUT's ops
(:func:`fbprof.profiler.ops.build_arch`, BN calibrated), exports it with the format's exporter
(:func:`fbprof.profiler.export.export_module`) and, for formats a local runtime can run, runs the file
once and compares its output with torch's. The model file (or ``.mlpackage`` folder) lands at ``out``
atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fbprof.errors import InputError, MeasurementError
from fbprof.space import Arch

__all__ = ["FORMAT_ALIASES", "ArchExport", "export_arch", "resolve_format", "local_backend_for"]

#: names accepted by ``fbprof export --format`` for the registry's formats
FORMAT_ALIASES = {"executorch": "pte", "coreml": "mlpackage", "litert": "tflite", "pt": "torchscript"}


def resolve_format(name: str) -> str:
    from fbprof.profiler.export import EXPORTERS

    fmt = FORMAT_ALIASES.get(name.lower(), name.lower())
    if fmt not in EXPORTERS:
        known = sorted(set(EXPORTERS) | set(FORMAT_ALIASES))
        raise InputError(f"unknown format {name!r}; known formats: {', '.join(known)}")
    return fmt


def local_backend_for(fmt: str) -> str | None:
    """The local runtime that runs ``fmt`` on this machine, if any (none for CoreML: it predicts on macOS only)."""
    from fbprof.devices.base import BACKENDS
    from fbprof.devices.local import LOCAL_RUNTIMES

    for name, info in BACKENDS.items():
        if info.format == fmt and name in LOCAL_RUNTIMES:
            return name
    return None


@dataclass
class ArchExport:
    path: Path
    format: str
    layout: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    export_s: float
    backend: str | None = None  # local runtime used for the check
    max_abs_error: float | None = None
    check_problem: str | None = None  # why the runtime's output did not match
    not_checked: str | None = None  # why no runtime check was made
    notes: list[str] = field(default_factory=list)


def _place(src: Path, out: Path) -> None:
    """Move a file or folder to ``out`` atomically (replacing what is there)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(src, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        if out.is_dir():
            raise InputError(f"{out} is a folder; give a file path for a {src.suffix} model")
        os.replace(src, out)


def export_arch(
    arch: Arch,
    fmt: str,
    out: str | Path | None = None,
    options: dict | None = None,
    check: bool = True,
    threads: int = 1,
) -> ArchExport:
    """Export ``arch`` to ``fmt`` (a registry format or an alias like ``executorch``) at ``out``."""
    import numpy as np

    from fbprof.devices.local import LocalDevice
    from fbprof.profiler.export import exporter, export_module
    from fbprof.profiler.ops import build_arch, example_input
    from fbprof.profiler.session import check_output

    fmt = resolve_format(fmt)
    exp = exporter(fmt)
    exp.load()  # a missing extra fails before the network is built
    out = Path(out) if out is not None else Path(f"{arch.name}{exp.suffix}")
    if out.suffix != exp.suffix:
        raise InputError(f"{out}: a {fmt} model file should end in {exp.suffix}")
    sp = arch.space
    shape = (1, sp.in_channels, sp.resolution, sp.resolution)
    net = build_arch(arch)
    example = example_input(shape, seed=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        t0 = time.perf_counter()
        art = export_module(net, example, arch.name, fmt, Path(tmp) / "artifact", options)
        result = ArchExport(out, fmt, art.layout, tuple(art.input.shape), tuple(art.expected.shape),
                            time.perf_counter() - t0)
        backend = local_backend_for(fmt)
        if not check:
            result.not_checked = "check not asked for"
        elif backend is None:
            result.not_checked = (f"no local runtime for {fmt} here"
                                  + (" (CoreML predicts on macOS/iOS only)" if fmt == "mlpackage" else ""))
        else:
            result.backend = backend
            session = LocalDevice(pin=False).open_session(art, backend, threads)
            try:
                got = np.asarray(session.run())
            except Exception as e:
                raise MeasurementError(f"{arch.name}: {backend} failed to run the exported model: {type(e).__name__}: {e}") from e
            result.check_problem = check_output(art.expected, got, atol=1e-3)
            if got.size == art.expected.size:
                diff = got.reshape(art.expected.shape).astype(np.float64) - art.expected
                result.max_abs_error = float(np.max(np.abs(diff)))
        _place(art.path, out)
    return result
