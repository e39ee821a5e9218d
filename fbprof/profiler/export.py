"""Exporters (one per deployment format) and the content-addressed artifact cache.

Every exporter has the same signature: ``export(module, example, path, options) -> layout`` where
``layout`` is ``"nchw"`` or ``"nhwc"`` (the layout the exported graph takes and returns). The cache
key hashes (op key, format, exporter version, torch version, builder version, options), so a cached
artifact is reused only when it would be rebuilt identically.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import io
from importlib import metadata
import json
import logging
import os
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from fbprof.devices.base import Artifact
from fbprof.errors import InputError, MeasurementError, MissingExtraError
from fbprof.spec import OpSpec

__all__ = ["Exporter", "EXPORTERS", "exporter", "ArtifactCache", "export_module", "export_op", "export_ops",
           "default_cache_dir", "BUILDER_VERSION", "ExportJob", "export_jobs"]

#: bump when ops.py changes what a key builds, so cached artifacts are rebuilt
BUILDER_VERSION = "1"


@functools.lru_cache(maxsize=None)
def _dist_version(top_module: str) -> str:
    """Installed version of the distribution that provides ``top_module`` (memoised per process)."""
    for dist in (top_module, top_module.replace("_", "-")):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    dists = metadata.packages_distributions().get(top_module)
    if dists:
        try:
            return metadata.version(dists[0])
        except metadata.PackageNotFoundError:
            pass
    return "missing"


@dataclass(frozen=True)
class Exporter:
    format: str
    suffix: str
    extra: str | None  # pip extra that provides the converter
    module: str  # converter module that must be importable
    target: str  # "module:function" implementing export(module, example, path, options) -> layout
    description: str

    def version(self) -> str:
        """The converter's installed version, read from package metadata (importing converters is slow and
        noisy). ``missing`` when it is not installed."""
        return _dist_version(self.module.split(".")[0])

    def load(self) -> Callable:
        try:
            importlib.import_module(self.module)
        except ImportError:
            raise MissingExtraError(f"exporting to {self.format}", self.extra or "all", self.module) from None
        mod_name, fn = self.target.split(":")
        return getattr(importlib.import_module(mod_name), fn)


EXPORTERS: dict[str, Exporter] = {
    e.format: e
    for e in (
        Exporter("onnx", ".onnx", None, "onnxscript", "fbprof.profiler.export:export_onnx",
                 "ONNX through torch.onnx.export (dynamo exporter), opset 18"),
        Exporter("torchscript", ".pt", None, "torch", "fbprof.profiler.export:export_torchscript",
                 "TorchScript (traced, frozen)"),
        Exporter("tflite", ".tflite", "tflite", "litert_torch", "fbprof.profiler.export_mobile:export_tflite",
                 "TFLite through litert-torch, channel-last (NHWC) input and output"),
        Exporter("pte", ".pte", "executorch", "executorch.version", "fbprof.profiler.export_mobile:export_pte",
                 "ExecuTorch program, XNNPACK partitioner"),
        Exporter("mlpackage", ".mlpackage", "coreml", "coremltools", "fbprof.profiler.export_mobile:export_coreml",
                 "CoreML ML Program package (fp32 compute unless precision=fp16)"),
    )
}


def exporter(fmt: str) -> Exporter:
    try:
        return EXPORTERS[fmt]
    except KeyError:
        raise InputError(f"unknown format {fmt!r}; known formats: {', '.join(EXPORTERS)}") from None


@contextlib.contextmanager
def quiet() -> Iterable[None]:
    """Silence converters' chatter (warnings, logging, stdout) around one export."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript", "absl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_onnx(module, example, path: Path, options: dict) -> str:
    """torch.onnx.export: the dynamo exporter by default; ``options["onnx_exporter"] = "legacy"`` uses the
    TorchScript-based exporter, which is about 10x faster per op here but deprecated upstream."""
    import torch

    which = options.get("onnx_exporter", "dynamo")
    if which not in ("dynamo", "legacy"):
        raise InputError(f"onnx_exporter {which!r}: expected dynamo or legacy")
    opset = int(options.get("opset", 18))
    with quiet(), torch.no_grad():
        if which == "legacy":
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"])
        else:
            prog = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                     input_names=["input"], output_names=["output"], verbose=False)
            prog.save(str(path))
    return "nchw"


def export_torchscript(module, example, path: Path, options: dict) -> str:
    import torch

    with quiet(), torch.no_grad():
        traced = torch.jit.trace(module, example)
        traced = torch.jit.freeze(traced.eval())
        torch.jit.save(traced, str(path))
    return "nchw"


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

        ident = {
            "key": key, "format": fmt, "converter": exporter(fmt).version(), "torch": torch.__version__,
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


def _to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    if layout == "nhwc" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    return a


def export_module(module, example, key: str, fmt: str, folder: Path, options: dict | None = None) -> Artifact:
    """Export ``module`` (eval mode) on ``example`` into ``folder`` atomically; returns the artifact."""
    import torch

    options = dict(options or {})
    exp = exporter(fmt)
    fn = exp.load()
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
        art = Artifact(key, fmt, model_path, _to_layout(example.numpy(), layout), _to_layout(expected, layout), layout,
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


def export_op(spec: OpSpec, fmt: str, cache: ArtifactCache, options: dict | None = None) -> Artifact:
    """The artifact of one op, from the cache or freshly exported."""
    from fbprof.profiler.ops import build_calibrated_op, example_input

    options = dict(options or {})
    hit = cache.get(spec.key, fmt, options)
    if hit is not None:
        return hit
    module = build_calibrated_op(spec)
    return export_module(module, example_input(spec), spec.key, fmt, cache.folder(spec.key, fmt, options), options)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        except OSError:
            pass


def _export_one(key: str, fmt: str, root: str, options: dict) -> None:
    export_op(OpSpec.parse(key), fmt, ArtifactCache(root), options)


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
    exporter(fmt).load()  # a missing extra is an error for the whole run

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

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            futs = {pool.submit(job.target, *job.args, fmt, root, options): job for job in todo}
            for fut in as_completed(futs):
                settle(futs[fut], fut.result)
    else:
        for job in todo:
            settle(job, lambda job=job: job.target(*job.args, fmt, root, options))
    return out


def export_ops(
    specs: list[OpSpec],
    fmt: str,
    cache: ArtifactCache,
    options: dict | None = None,
    workers: int = 1,
    on_done: Callable[[str], None] | None = None,
) -> dict[str, Artifact | MeasurementError]:
    """Export many ops, keyed by op key (see :func:`export_jobs`)."""
    jobs = [ExportJob(s.key, s.key, _export_one, (s.key,)) for s in specs]
    return export_jobs(jobs, fmt, cache, options, workers, on_done)
