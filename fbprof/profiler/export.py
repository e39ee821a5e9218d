"""What the profiler exports: single ops (LUT rows), whole networks (verify) and network files
(``fbprof export``), each built with :mod:`fbprof.build` and exported through a backend
(:mod:`fbprof.backends.cache`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from fbprof.artifact import Artifact, check_output
from fbprof.backends import backend_for_format, resolve_format
from fbprof.backends.cache import ArtifactCache, ExportJob, export_jobs, export_module, export_modules, export_stream
from fbprof.errors import InputError, MeasurementError
from fbprof.space import Arch, ChannelArch, load_space
from fbprof.spec import OpSpec

__all__ = ["export_op", "export_ops", "stream_ops", "arch_key", "arch_ref", "arch_from_ref", "arch_artifact", "export_archs", "ArchExport", "export_arch_file"]


# ------------------------------------------------------------------------------------------------
# single ops: the rows of a LUT
def export_op(spec: OpSpec, fmt: str, cache: ArtifactCache, options: dict | None = None) -> Artifact:
    """The artifact of one op, from the cache or freshly exported."""
    from fbprof.build import build_calibrated_op, example_input

    options = dict(options or {})
    hit = cache.get(spec.key, fmt, options)
    if hit is not None:
        return hit
    module = build_calibrated_op(spec)
    return export_module(module, example_input(spec), spec.key, fmt, cache.folder(spec.key, fmt, options), options)


def _export_op_worker(key: str, fmt: str, root: str, options: dict) -> None:
    export_op(OpSpec.parse(key), fmt, ArtifactCache(root), options)


def _export_ops_batch_worker(args: list[tuple], fmt: str, root: str, options: dict) -> dict[str, str]:
    """Several ops converted together (see :func:`fbprof.backends.cache.export_modules`); errors by key."""
    from fbprof.build import build_calibrated_op, example_input

    cache = ArtifactCache(root)
    items = []
    for (key,) in args:
        if cache.get(key, fmt, options) is None:
            spec = OpSpec.parse(key)
            items.append((build_calibrated_op(spec), example_input(spec), key, cache.folder(key, fmt, options)))
    done = export_modules(items, fmt, options)
    return {k: v.message for k, v in done.items() if isinstance(v, MeasurementError)}


def _op_jobs(specs: list[OpSpec]) -> list[ExportJob]:
    return [ExportJob(s.key, s.key, _export_op_worker, (s.key,), _export_ops_batch_worker) for s in specs]


def export_ops(specs: list[OpSpec], fmt: str, cache: ArtifactCache, options: dict | None = None,
               **settings) -> dict[str, Artifact | MeasurementError]:
    """Export many ops, keyed by op key; ``settings`` as :func:`fbprof.backends.cache.export_jobs` takes them."""
    return export_jobs(_op_jobs(specs), fmt, cache, options, **settings)


def stream_ops(specs: list[OpSpec], fmt: str, cache: ArtifactCache, options: dict | None = None,
               **settings) -> Iterator[tuple[str, Artifact | MeasurementError]]:
    """``(key, artifact or error)`` for every spec, each as soon as it is exported, while worker processes
    export the next ones: in ``specs``' order without workers, else in the order they are ready (see
    :func:`fbprof.backends.cache.export_stream`)."""
    return export_stream(_op_jobs(specs), fmt, cache, options, **settings)


# ------------------------------------------------------------------------------------------------
# whole networks, cached like ops (verify measures them end to end)
def arch_key(arch: Arch | ChannelArch) -> str:
    """Cache identity of a whole network (its name seeds the BN calibration, so it is part of it); a
    channel-space network (:class:`~fbprof.space.ChannelArch`) adds its stem width and per-layer widths."""
    key = f"arch:{arch.name}:{arch.space.tag}:h{arch.head_channels}:{'/'.join(arch.blocks)}"
    if isinstance(arch, ChannelArch):
        key += f":s{arch.stem_channels}:c{'/'.join(map(str, arch.channels))}"
    return key


def arch_ref(arch: Arch | ChannelArch) -> dict:
    """What a spawned export worker needs to rebuild ``arch`` (plain data: picklable, no space object)."""
    d = arch.to_dict()
    d["width"] = arch.space.width
    return d


def arch_from_ref(ref: dict) -> Arch | ChannelArch:
    """The architecture :func:`arch_ref` describes, rebuilt from its space (FBNet-style or channel space)."""
    space = load_space(ref["space"], ref["resolution"], ref["width"])
    if "channels" in ref:
        return space.arch(ref["blocks"], ref["channels"], ref["stem_channels"], ref["head_channels"], name=ref["name"])
    return space.arch(ref["blocks"], ref["head_channels"], name=ref["name"])


def arch_artifact(arch: Arch | ChannelArch, fmt: str, cache: ArtifactCache, options: dict | None = None) -> Artifact:
    """The artifact of a whole network, from the cache or freshly built and exported."""
    from fbprof.build import build_arch, example_input, seed_for

    options = dict(options or {})
    key = arch_key(arch)
    hit = cache.get(key, fmt, options)
    if hit is not None:
        return hit
    net = build_arch(arch)
    s = arch.space
    example = example_input((1, s.in_channels, s.resolution, s.resolution), seed=seed_for(arch.name))
    return export_module(net, example, key, fmt, cache.folder(key, fmt, options), options)


def _export_arch_worker(ref: dict, fmt: str, root: str, options: dict) -> None:
    arch_artifact(arch_from_ref(ref), fmt, ArtifactCache(root), options)


def export_archs(archs: Sequence[Arch | ChannelArch], fmt: str, cache: ArtifactCache, options: dict | None = None,
                 **settings) -> dict[str, Artifact | MeasurementError]:
    """Export whole networks, keyed by arch name (``settings``: see :func:`fbprof.backends.cache.export_jobs`)."""
    jobs = [ExportJob(a.name, arch_key(a), _export_arch_worker, (arch_ref(a),)) for a in archs]
    return export_jobs(jobs, fmt, cache, options, **settings)


# ------------------------------------------------------------------------------------------------
# a network file for deployment (``fbprof export``), checked against torch where a local runtime exists
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


def _check_place(out: Path) -> None:
    if out.is_dir() and not (out / "Manifest.json").is_file():
        raise InputError(f"{out} is a folder that is not a model package; fbprof does not replace it",
                         hint="give a new path, e.g. model.mlpackage")


def _place(src: Path, out: Path) -> None:
    """Move a file or folder to ``out`` atomically. A file there is replaced; a folder only when it is a model
    package like the one placed (an ``.mlpackage`` with its ``Manifest.json``), never a folder of the user's."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        old = None
        _check_place(out)
        if out.exists() or out.is_symlink():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(src, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        if out.is_dir():
            raise InputError(f"{out} is a folder; give a file path for a {src.suffix} model")
        os.replace(src, out)


def export_arch_file(
    arch: Arch,
    fmt: str,
    out: str | Path | None = None,
    options: dict | None = None,
    check: bool = True,
    threads: int = 1,
) -> ArchExport:
    """Export ``arch`` to ``fmt`` (a format, backend name or alias like ``executorch``) at ``out``.

    The network is built with the same builders as the LUT's ops (BN calibrated); for formats a local
    runtime can run, the file is run once and its output compared with torch's. The model file (or
    ``.mlpackage`` folder) lands at ``out`` atomically."""
    import numpy as np

    from fbprof.build import build_arch, example_input

    fmt = resolve_format(fmt)
    be = backend_for_format(fmt)
    be.exporter()  # a missing extra fails before the network is built
    out = Path(out) if out is not None else Path(f"{arch.name}{be.suffix}")
    if out.suffix != be.suffix:
        raise InputError(f"{out}: a {fmt} model file should end in {be.suffix}")
    _check_place(out)  # before the export, not after it
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
        if not check:
            result.not_checked = "check not asked for"
        elif not be.local:
            result.not_checked = (f"no local runtime for {fmt} here"
                                  + (" (CoreML predicts on macOS/iOS only)" if fmt == "mlpackage" else ""))
        else:
            result.backend = be.name
            session = be.open(art, threads)
            try:
                got = np.asarray(session.run())
            except Exception as e:
                raise MeasurementError(f"{arch.name}: {be.name} failed to run the exported model: {type(e).__name__}: {e}") from e
            finally:
                session.close()
            result.check_problem = check_output(art.expected, got, atol=1e-3)
            if got.size == art.expected.size:
                diff = got.reshape(art.expected.shape).astype(np.float64) - art.expected
                result.max_abs_error = float(np.max(np.abs(diff)))
        _place(art.path, out)
    return result
