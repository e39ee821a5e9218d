"""The content-addressed artifact cache and the one export path (one module or many, in worker processes).

:func:`export_module` runs a backend's exporter on a torch module into a cache folder atomically and
records torch's output for the example input beside the model file. The cache key hashes (key, format,
converter version, torch version, builder version, options), so a cached artifact is reused only when
it would be rebuilt identically. :func:`export_jobs` exports what the cache lacks, in spawned workers
when asked; what each job builds is the caller's (ops and whole networks: :mod:`fbprof.profiler.export`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fbprof.artifact import Artifact, to_layout
from fbprof.backends import backend_for_format
from fbprof.errors import MeasurementError, MissingExtraError

__all__ = ["ArtifactCache", "default_cache_dir", "export_module", "ExportJob", "export_jobs"]


# ------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    env = os.environ.get("FBPROF_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fbprof" / "artifacts"


class ArtifactCache:
    """Artifacts stored under ``root/<sha256>/`` (model file, input.npy, expected.npy, meta.json)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def digest(self, key: str, fmt: str, options: dict) -> str:
        import torch

        from fbprof.build import BUILDER_VERSION

        ident = {
            "key": key, "format": fmt, "converter": backend_for_format(fmt).converter_version(), "torch": torch.__version__,
            "builder": BUILDER_VERSION, "options": options,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    def folder(self, key: str, fmt: str, options: dict) -> Path:
        return self.root / self.digest(key, fmt, options)

    def get(self, key: str, fmt: str, options: dict) -> Artifact | None:
        folder = self.folder(key, fmt, options)
        if (folder / "meta.json").exists():
            try:
                return Artifact.load(folder)
            except (OSError, ValueError, KeyError):
                shutil.rmtree(folder, ignore_errors=True)
        return None


def export_module(module, example, key: str, fmt: str, folder: Path, options: dict | None = None) -> Artifact:
    """Export ``module`` (eval mode) on ``example`` into ``folder`` atomically; returns the artifact."""
    import torch

    options = dict(options or {})
    exp = backend_for_format(fmt)
    fn = exp.exporter()
    with torch.no_grad():
        expected = module(example).detach().numpy()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model_path = tmp / f"model{exp.suffix}"
        try:
            layout = fn(module, example, model_path, options)
        except MissingExtraError:
            raise
        except Exception as e:  # converter failures carry the op key
            raise MeasurementError(f"exporting {key} to {fmt} failed: {type(e).__name__}: {str(e)[:500]}") from e
        art = Artifact(key, fmt, model_path, to_layout(example.numpy(), layout), to_layout(expected, layout), layout,
                       {"options": options})
        art.save_arrays(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same artifact first: keep theirs
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Artifact.load(folder)


def _die_with_parent(parent: int) -> None:
    """End this worker when the process that started it dies, even by SIGKILL (no cleanup runs there).

    Linux: the kernel sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``). Elsewhere a daemon thread
    watches the parent pid. Either way a parent already gone ends the worker at once."""
    import signal
    import sys
    import threading

    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        def watch() -> None:
            import time

            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="fbprof-parent-watch", daemon=True).start()


def _worker_init(parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent(parent)
    import torch

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        except OSError:
            pass


@dataclass(frozen=True)
class ExportJob:
    """One artifact to export: ``target(*args, fmt, cache_root, options)`` (a module-level function, so it
    can run in a spawned worker) leaves it in the cache under ``cache_key``; ``name`` is what it is reported as."""

    name: str
    cache_key: str
    target: Callable[..., None]
    args: tuple = ()


def export_jobs(
    jobs: list[ExportJob],
    fmt: str,
    cache: ArtifactCache,
    options: dict | None = None,
    workers: int = 1,
    on_done: Callable[[str], None] | None = None,
) -> dict[str, Artifact | MeasurementError]:
    """Export what the cache lacks (in ``workers`` spawned processes when > 1); failures are returned, not raised."""
    options = dict(options or {})
    out: dict[str, Artifact | MeasurementError] = {}
    todo = []
    for job in jobs:
        hit = cache.get(job.cache_key, fmt, options)
        if hit is not None:
            out[job.name] = hit
            if on_done:
                on_done(job.name)
        else:
            todo.append(job)
    if not todo:
        return out
    backend_for_format(fmt).exporter()  # a missing extra is an error for the whole run

    def settle(job: ExportJob, run: Callable[[], object]) -> None:
        try:
            run()
            out[job.name] = cache.get(job.cache_key, fmt, options) or MeasurementError(f"{job.name}: export left no artifact")
        except MeasurementError as e:
            out[job.name] = e
        except MissingExtraError:
            raise
        except Exception as e:  # noqa: BLE001 - a converter crashed or a worker died
            out[job.name] = MeasurementError(f"exporting {job.name} to {fmt} failed: {type(e).__name__}: {e}")
        if on_done:
            on_done(job.name)

    root = str(cache.root)
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(os.getpid(),)) as pool:
            futs = {pool.submit(job.target, *job.args, fmt, root, options): job for job in todo}
            for fut in as_completed(futs):
                settle(futs[fut], fut.result)
    else:
        for job in todo:
            settle(job, lambda job=job: job.target(*job.args, fmt, root, options))
    return out
