"""The backend axis: one module per runtime format, one registry row per backend.

A backend is what runs a model file (ONNX Runtime, LiteRT, ExecuTorch, Core ML, TorchScript); a device
(``fbprof.devices``) is how the machine running it is reached. Adding a backend: write its module (see
:mod:`fbprof.backends.base` for the shape) and add one row to :data:`BACKENDS` below.
"""

from __future__ import annotations

from fbprof.backends import coreml, executorch, litert, onnxruntime, pytorch
from fbprof.backends.base import Backend, Session
from fbprof.errors import InputError

__all__ = ["BACKENDS", "Backend", "Session", "get_backend", "backend_for_format", "resolve_format", "known_formats"]

#: the registry: backend name -> Backend (one row per backend module)
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend.of(onnxruntime),
        Backend.of(pytorch),
        Backend.of(litert),
        Backend.of(executorch),
        Backend.of(coreml),
    )
}


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (its registry name, not an alias)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}") from None


def backend_for_format(fmt: str) -> Backend:
    """The backend that runs export format ``fmt`` (``onnx``, ``tflite``, ...)."""
    for b in BACKENDS.values():
        if b.format == fmt:
            return b
    raise InputError(f"unknown format {fmt!r}; known formats: {', '.join(b.format for b in BACKENDS.values())}")


def known_formats() -> list[str]:
    """Every name ``fbprof export --format`` accepts: formats, backend names and aliases."""
    names: set[str] = set()
    for b in BACKENDS.values():
        names.update((b.format, b.name, *b.aliases))
    return sorted(names)


def resolve_format(name: str) -> str:
    """An export format from a format name, a backend name or an alias (``executorch`` -> ``pte``)."""
    n = name.lower()
    for b in BACKENDS.values():
        if n in (b.format, b.name, *b.aliases):
            return b.format
    raise InputError(f"unknown format {name!r}; known formats: {', '.join(known_formats())}")
