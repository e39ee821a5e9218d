"""The content-addressed artifact cache and the one export path (one module or many, in worker processes).

:func:`export_module` runs a backend's exporter on a torch module into a cache folder atomically and
records torch's output for the example input beside the model file. The cache key hashes (key, format,
converter version, torch version, builder version, BN folding, options), so a cached artifact is reused
only when it would be rebuilt identically. A backend whose SPEC says ``fold_bn`` converts the module with
its BNs folded into the convs (:func:`fbprof.backends.base.fold_batchnorm`); torch's output recorded beside
the model, which the export is checked against, is still the original module's. :func:`export_jobs`
exports what the cache lacks, in spawned workers when asked; what each job builds is the caller's (ops and
whole networks: :mod:`fbprof.profiler.export`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fbprof.artifact import Artifact, to_layout
from fbprof.backends import backend_for_format
from fbprof.backends.base import dist_version, fold_batchnorm
from fbprof.errors import MeasurementError, MissingExtraError
from fbprof.fileio import cache_dir
from fbprof.spec import BUILDER_VERSION

__all__ = ["ArtifactCache", "default_cache_dir", "export_module", "export_modules", "ExportJob", "export_jobs",
           "export_stream", "measuring_alone", "worker_placements"]


# ------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """The artifact cache: :func:`fbprof.fileio.cache_dir` ``("artifacts")``."""
    return cache_dir("artifacts")


class ArtifactCache:
    """Artifacts stored under ``root/<sha256>/`` (model file, input.npy, expected.npy, meta.json)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def digest(self, key: str, fmt: str, options: dict) -> str:
        # torch's version from its package metadata (as in LUT headers): a lookup of cached artifacts never
        # imports torch (seconds), so a warm-cache run that only measures does without it
        be = backend_for_format(fmt)
        ident = {
            "key": key, "format": fmt, "converter": be.converter_version(), "torch": dist_version("torch"),
            "builder": BUILDER_VERSION, "options": options,
        }
        if be.fold_bn:  # only then: other backends' cached artifacts keep their keys
            ident["prep"] = "fold-bn"
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


def _stage(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _settle(module, example, key: str, fmt: str, tmp: Path, folder: Path, model_path: Path, layout: str,
            options: dict) -> Artifact:
    """Record torch's output beside the exported model in ``tmp``, then move ``tmp`` to ``folder`` atomically."""
    import torch

    with torch.no_grad():
        expected = module(example).detach().numpy()
    art = Artifact(key, fmt, model_path, to_layout(example.numpy(), layout), to_layout(expected, layout), layout,
                   {"options": options})
    art.save_arrays(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same artifact first: keep theirs
        if not (folder / "meta.json").exists():
            raise
    return Artifact.load(folder)


def export_module(module, example, key: str, fmt: str, folder: Path, options: dict | None = None) -> Artifact:
    """Export ``module`` (eval mode) on ``example`` into ``folder`` atomically; returns the artifact."""
    options = dict(options or {})
    exp = backend_for_format(fmt)
    fn = exp.exporter()
    tmp = _stage(folder)
    try:
        model_path = tmp / f"model{exp.suffix}"
        try:
            layout = fn(fold_batchnorm(module) if exp.fold_bn else module, example, model_path, options)
        except MissingExtraError:
            raise
        except Exception as e:  # converter failures carry the op key
            raise MeasurementError(f"exporting {key} to {fmt} failed: {type(e).__name__}: {str(e)[:500]}") from e
        return _settle(module, example, key, fmt, tmp, folder, model_path, layout, options)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def export_modules(items: list[tuple], fmt: str, options: dict | None = None) -> dict[str, Artifact | MeasurementError]:
    """Export several ``(module, example, key, folder)`` at once, keyed by key; failures are returned.

    A backend with ``export_batch(modules, examples, paths, options) -> layouts`` converts them together
    (one conversion, split into one model file per module); otherwise, or when the batch conversion
    fails, each is exported alone (:func:`export_module`), so one bad op costs only its own row."""
    options = dict(options or {})
    exp = backend_for_format(fmt)
    exp.exporter()
    batch_fn = getattr(exp.module, "export_batch", None)
    out: dict[str, Artifact | MeasurementError] = {}
    if batch_fn is not None and len(items) > 1:
        stages = [_stage(folder) for _, _, _, folder in items]
        try:
            paths = [tmp / f"model{exp.suffix}" for tmp in stages]
            layouts = batch_fn([fold_batchnorm(m) if exp.fold_bn else m for m, *_ in items], [x for _, x, *_ in items],
                               paths, options)
            for (module, example, key, folder), tmp, path, layout in zip(items, stages, paths, layouts):
                out[key] = _settle(module, example, key, fmt, tmp, folder, path, layout, options)
        except MissingExtraError:
            raise
        except Exception:  # noqa: BLE001 - fall back to one conversion per module below
            pass
        finally:
            for tmp in stages:
                shutil.rmtree(tmp, ignore_errors=True)
    for module, example, key, folder in items:
        if key not in out:
            try:
                out[key] = export_module(module, example, key, fmt, folder, options)
            except MeasurementError as e:
                out[key] = e
    return out


#: set to 1 to see what export workers print (hidden by default; see _worker_init)
WORKER_OUTPUT_ENV = "FBPROF_WORKER_OUTPUT"


def _worker_init(slot=None, placements=(), shared_pids=None, parent: int | None = None) -> None:
    """Spawned export worker: one torch thread, killed with its parent (Linux); its cores from
    ``placements`` (``(cores or None, shared)`` per worker, taken in start order), set before torch is
    imported. A ``shared`` worker may use the measuring cores: it records its pid in ``shared_pids``, and
    :func:`measuring_alone` moves it off them while a measurement runs. Its standard output and error go to
    the null device first thing: converters and the libraries they load print to them on import and per
    conversion (torchao's optional kernels, torch's deprecation notes, a cold LiteRT or ExecuTorch build's
    worker printed ~6 such lines beside the progress bars), and what a conversion has to say comes back as
    its result or its exception. ``FBPROF_WORKER_OUTPUT=1`` keeps them (a worker that dies in native code
    says why only there)."""
    if os.environ.get(WORKER_OUTPUT_ENV) != "1":
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
    if parent is not None:
        _die_with_parent(parent)  # a busy worker never outlives us
    cores, shared, i = None, False, -1
    if slot is not None and placements:
        with slot.get_lock():
            i = slot.value
            slot.value += 1
        cores, shared = placements[i % len(placements)]
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cores or range(os.cpu_count() or 1))
        except OSError:
            pass
    if shared and shared_pids is not None and 0 <= i < len(shared_pids):  # after its own affinity: moves win
        shared_pids[i] = os.getpid()
    import torch

    torch.set_num_threads(1)
    gc.set_threshold(10_000, *gc.get_threshold()[1:])  # see _run_unit_in_worker
    import atexit

    atexit.register(_exit_now)  # registered last, so it runs first when the worker exits


def _exit_now() -> None:
    """An export worker's exit skips the interpreter's teardown (with torch and a converter loaded: several
    seconds under load, which the LUT build waited for in ``pool.shutdown``). By then everything it made is
    in the cache (written atomically) and its results are with the parent; only its std streams are left."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


#: this process's export workers that may use the measuring cores: (pids, cores while measuring, cores otherwise)
#: per running stream (see measuring_alone)
_SHARED_WORKERS: list = []


def _threads(pid: int) -> list[int]:
    """Every thread of process ``pid`` (Linux: /proc/PID/task); elsewhere the pid alone. An affinity set on a
    pid holds for that one thread only, and converters run thread pools of their own (jax, MLIR)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def _set_affinity(pid: int, cores: tuple[int, ...]) -> bool:
    """``cores`` for every thread of ``pid`` (listed twice: a thread started meanwhile is caught); False once
    the process is gone."""
    done: set[int] = set()
    for _ in range(2):
        for tid in _threads(pid):
            if tid not in done:
                try:
                    os.sched_setaffinity(tid, cores)
                    done.add(tid)
                except OSError:  # that thread ended
                    pass
    return bool(done)


@contextlib.contextmanager
def measuring_alone() -> Iterator[None]:
    """For the duration of one measurement, move the export workers that may use the measuring cores onto the
    other cores (``sched_setaffinity`` on each of their threads; back to every core after): the measuring
    cores run only the measurement, and the conversions go on beside the other workers. Until 2026-12-02
    they were stopped (SIGSTOP) instead: then a worker held its batch while measurement went on, and at the
    end of a build one core sat idle while the other measured the last batches (a timeline of a cold LiteRT
    build: the last ~15 s of ~75 s at 50% busy)."""
    moves = [(int(p), away, home) for arr, away, home in _SHARED_WORKERS for p in arr[:] if p]
    moved = []
    try:
        for pid, away, home in moves:
            if _set_affinity(pid, away):
                moved.append((pid, home))
        yield
    finally:
        for pid, home in moved:
            _set_affinity(pid, home)


def worker_placements(workers: int, avoid_cores: set[int] | None) -> list[tuple[tuple[int, ...] | None, bool]]:
    """Where ``workers`` export processes run while this process measures on ``avoid_cores``: on the other
    cores (at most one per core); the rest (``shared``) on every core while the caller waits for an
    artifact, moved off ``avoid_cores`` while it measures (:func:`measuring_alone`). Without cores to avoid
    (or none left over), anywhere."""
    if not avoid_cores or not hasattr(os, "sched_getaffinity"):
        return [(None, False)] * workers
    allowed = set(os.sched_getaffinity(0))
    free = tuple(sorted(allowed - set(avoid_cores)))
    if not free or not allowed & set(avoid_cores):
        return [(None, False)] * workers
    normal = min(workers, len(free))
    return [(free, False)] * normal + [(tuple(sorted(allowed)), True)] * (workers - normal)


@dataclass(frozen=True)
class ExportJob:
    """One artifact to export: ``target(*args, fmt, cache_root, options)`` (a module-level function, so it
    can run in a spawned worker) leaves it in the cache under ``cache_key``; ``name`` is what it is reported as.

    ``batch_target(list_of_args, fmt, cache_root, options) -> {name: error}``, when given, exports several
    jobs of the same kind at once (see :func:`export_modules`)."""

    name: str
    cache_key: str
    target: Callable[..., None]
    args: tuple = ()
    batch_target: Callable[..., dict] | None = None


#: batch sizes of a run's first conversions (then the backend's batch repeats): small first, so measuring
#: starts early; the last conversions shrink the same way (a big last batch would leave one core idle while it
#: converts, and the other while its ops are measured)
RAMP = (2, 4)


def _units(todo: list[ExportJob], batch: int) -> list[list[ExportJob]]:
    units: list[list[ExportJob]] = []
    i = 0
    while i < len(todo):
        job = todo[i]
        size = 1
        if job.batch_target is not None and batch > 1:
            size = min(batch, RAMP[len(units)]) if len(units) < len(RAMP) else batch
        unit = [job]
        while len(unit) < size and i + len(unit) < len(todo) and todo[i + len(unit)].batch_target is job.batch_target:
            unit.append(todo[i + len(unit)])
        units.append(unit)
        i += len(unit)
    if len(units) > len(RAMP) + 1 and batch > sum(RAMP):  # ramp down: the last two conversions' jobs, ..., 4, 2
        tail = units[-2] + units[-1]
        if len(units[-2]) == batch and units[-1][0].batch_target is units[-2][0].batch_target:
            rest = len(tail) - sum(RAMP)  # at least batch + 1 - 6: never a lone conversion
            parts = -(-rest // batch)
            sizes = [rest // parts + (k < rest % parts) for k in range(parts)] + list(reversed(RAMP))
            del units[-2:]
            at = 0
            for size in sizes:
                units.append(tail[at:at + size])
                at += size
    return units


def _run_unit(unit: list[ExportJob], fmt: str, root: str, options: dict) -> dict[str, str]:
    if len(unit) == 1 or unit[0].batch_target is None:
        for job in unit:
            job.target(*job.args, fmt, root, options)
        return {}
    return unit[0].batch_target([job.args for job in unit], fmt, root, options)


def _run_unit_in_worker(unit: list[ExportJob], fmt: str, root: str, options: dict) -> dict[str, str]:
    """:func:`_run_unit` in an export worker, whose heap is collected and frozen first (``gc.freeze``: torch,
    the converter and their caches, everything alive between two conversions, leave the collector's
    generations) and whose youngest generation is collected every 10,000 allocations instead of 700
    (``_worker_init``). A conversion builds and drops hundreds of thousands of graph objects: with the
    collector's defaults it spent 2.2-2.7 s per 32 FBNet ops collecting (LiteRT; ExecuTorch 2.6 s), re-walking
    the ~470,000 objects torch and the converter leave alive each time; this way 0.8 s (1.1 s), the first
    freeze included (0.3 s; later ones ~0.01 s); peak memory the same (~0.85 GB). Only objects alive after a
    full collection are frozen; one of them that dies in a reference cycle later is freed when the heap is
    unfrozen and collected whole, about every 16th conversion (~0.3 s each time)."""
    if gc.get_stats()[2]["collections"] % 16 == 15:  # now and then (full collections: ~1 per unit), everything
        gc.unfreeze()  # is looked at again, so a frozen object that has since died in a cycle is freed
    gc.collect()
    gc.freeze()
    return _run_unit(unit, fmt, root, options)


def export_stream(
    jobs: list[ExportJob],
    fmt: str,
    cache: ArtifactCache,
    options: dict | None = None,
    workers: int = 1,
    on_done: Callable[[str], None] | None = None,
    batch: int | None = None,
    avoid_cores: set[int] | None = None,
) -> Iterator[tuple[str, Artifact | MeasurementError]]:
    """``(name, artifact or error)`` for every job, as soon as each is ready: in the jobs' order when everything
    is exported in this process; with workers, the cached ones first, then each batch as its conversion
    finishes (so measuring never waits on one batch while another is done).

    What the cache lacks is exported in batches of up to ``batch`` jobs (default: the backend's
    ``SPEC["batch"]``) by ``workers`` spawned processes that live for the whole stream and work ahead
    while the caller uses what is ready (placed by :func:`worker_placements`: those that may use
    ``avoid_cores`` leave them while the caller measures inside :func:`measuring_alone`).
    With one worker or one batch, everything is exported in this process before the first is yielded.
    Failures are yielded, not raised."""
    options = dict(options or {})
    hits: dict[str, Artifact] = {}
    todo: list[ExportJob] = []
    for job in jobs:
        hit = cache.get(job.cache_key, fmt, options)
        if hit is not None:
            hits[job.name] = hit
        else:
            todo.append(job)
    be = backend_for_format(fmt) if todo else None
    if be is not None:
        be.require_exporter()  # a missing extra is an error for the whole run (workers import the converter)
    units = _units(todo, be.batch if batch is None and be is not None else (batch or 1))
    root = str(cache.root)
    results: dict[str, Artifact | MeasurementError] = {}

    def settle(unit: list[ExportJob], run: Callable[[], dict]) -> None:
        try:
            errors = run() or {}
        except MissingExtraError:
            raise
        except MeasurementError as e:
            errors = {job.name: e for job in unit}
        except Exception as e:  # noqa: BLE001 - a converter crashed or a worker died
            why = f"{type(e).__name__}: {e}"
            if isinstance(e, BrokenProcessPool) and os.environ.get(WORKER_OUTPUT_ENV) != "1":
                why += f" (an export worker died; run again with {WORKER_OUTPUT_ENV}=1 to see what it printed)"
            errors = {job.name: f"exporting {job.name} to {fmt} failed: {why}" for job in unit}
        for job in unit:
            err = errors.get(job.name)
            if err is not None:
                results[job.name] = err if isinstance(err, MeasurementError) else MeasurementError(str(err))
            else:
                results[job.name] = cache.get(job.cache_key, fmt, options) or MeasurementError(
                    f"{job.name}: export left no artifact")

    pool = None
    futures: list = []
    if workers > 1 and len(units) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        places = worker_placements(min(workers, len(units)), avoid_cores)
        shared = ctx.Array("i", len(places))
        pool = ProcessPoolExecutor(max_workers=len(places), mp_context=ctx, initializer=_worker_init,
                                   initargs=(ctx.Value("i", 0), places, shared, os.getpid()))
        away = tuple(sorted({c for cores, is_shared in places if cores and not is_shared for c in cores}))
        home = tuple(sorted({c for cores, is_shared in places if cores and is_shared for c in cores}))
        entry = (shared, away, home)
        _SHARED_WORKERS.append(entry)  # registered only once the pool exists; removed below, however this ends
        try:
            futures = [pool.submit(_run_unit_in_worker, unit, fmt, root, options) for unit in units]
        except BaseException:
            _SHARED_WORKERS.remove(entry)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    else:  # in this process: everything first, as nothing could overlap with the caller's measuring
        for unit in units:
            settle(unit, lambda unit=unit: _run_unit(unit, fmt, root, options))
    def ready() -> Iterator[ExportJob]:
        """The jobs in the order they can be used: in the jobs' order, or, with workers, what the cache holds
        first, then each conversion's jobs as it finishes (the earliest-submitted of those already done
        first), so the caller never waits on one batch while another is ready."""
        if pool is None:
            yield from jobs
            return
        yield from (job for job in jobs if job.name in hits)
        pending = set(range(len(units)))
        while pending:
            done = [k for k in pending if futures[k].done()]
            if not done:
                wait([futures[k] for k in pending], return_when=FIRST_COMPLETED)
                continue
            k = min(done)
            pending.discard(k)
            settle(units[k], futures[k].result)
            yield from units[k]

    try:
        for job in ready():
            art: Artifact | MeasurementError = hits[job.name] if job.name in hits else results.pop(job.name)
            if on_done:
                on_done(job.name)
            yield job.name, art
    finally:
        if pool is not None:
            _SHARED_WORKERS.remove(entry)
            pool.shutdown(wait=True, cancel_futures=True)


def export_jobs(jobs: list[ExportJob], fmt: str, cache: ArtifactCache, options: dict | None = None,
                **settings) -> dict[str, Artifact | MeasurementError]:
    """Export what the cache lacks, keyed by job name; failures are returned, not raised. ``settings``
    (``workers``, ``on_done``, ``batch``, ``avoid_cores``) as :func:`export_stream` takes them."""
    return dict(export_stream(jobs, fmt, cache, options, **settings))
