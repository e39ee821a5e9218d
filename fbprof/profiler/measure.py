"""Building a LUT: export what is missing, measure it on a device, append rows, resume after a crash.

``measure_lut`` is the single orchestration used by every device. It reports through a
:class:`Listener` (progress bars live in the CLI, not here). Rows go to a journal
(``<out>.partial``) one at a time, flushed and fsynced; the LUT itself is rewritten atomically,
sorted, when the run ends, is interrupted or fails, so at most the rows in flight are lost (the one being
measured and, on a device that defers retries, noisy ones waiting to be measured again). A new LUT that got
no row because the run failed is not written at all (no header-only file is left behind).
"""

from __future__ import annotations

import re
import shlex
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fbprof import __version__
from fbprof.artifact import Artifact, check_output
from fbprof.backends import get_backend
from fbprof.backends.base import dist_version
from fbprof.backends.cache import ArtifactCache, measuring_alone
from fbprof.devices.base import Device, DeviceResult
from fbprof.errors import InputError, MeasurementError
from fbprof.fileio import LockHeld, OutputLock, WriteError
from fbprof.loop import INVALID, STATUSES, Attempts, LoopConfig, describe_pairing, paired_measurement
from fbprof.lut.table import IDENTITY_FIELDS, Journal, LutRow, clean_cell, read_lut, write_lut
from fbprof.profiler.export import export_ops, stream_ops
from fbprof.space import GridCell, SpaceTag, format_grid, format_space_tags
from fbprof.spec import OpSpec

#: recorded in LUT headers: how the measured ops' activations were made realistic (see profiler/ops.py)
ACTIVATIONS_NOTE = "kaiming-init;bn-calibrated(1 batch of 8, N(0,1) input);input N(0,1)"

__all__ = ["Listener", "MeasureConfig", "MeasureRequest", "MeasureSummary", "measure_lut", "open_measure", "build_header"]

#: ONNX exporters ``MeasureConfig.onnx_exporter`` takes (dynamo is the default; legacy is an option only)
ONNX_EXPORTERS = ("dynamo", "legacy")


class Listener:
    """Receives progress events from :func:`measure_lut`. Every method is optional."""

    def on_start(self, total: int, todo: int, reused: int) -> None: ...
    def on_export_start(self, count: int) -> None: ...
    def on_export_done(self, key: str) -> None: ...
    def on_row_start(self, key: str, index: int, count: int) -> None: ...
    def on_iteration(self, index: int, count: int) -> None: ...
    def on_retry(self, key: str, attempt: int, cv: float) -> None: ...
    def on_row_done(self, row: LutRow) -> None: ...
    def on_note(self, message: str) -> None: ...
    def on_finish(self, summary: "MeasureSummary") -> None: ...


@dataclass
class MeasureRequest:
    specs: list[OpSpec]
    out: Path
    device: Device
    backend: str
    threads: int = 1
    loop: LoopConfig = field(default_factory=LoopConfig)
    spaces: list[SpaceTag] = field(default_factory=list)  # the spaces the ops come from (header "spaces")
    grid: list[GridCell] = field(default_factory=list)  # channel spaces: the interpolation grid (header "grid")
    remeasure: bool = False
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    export_workers: int = 1
    export_options: dict = field(default_factory=dict)
    command: str = ""
    check_atol: float = 1e-3  # relative to max(1, max |expected|)
    #: > 0: rows by sample-level pairing on a device that offers it (fbprof.loop.run_paired): this many
    #: iterations, each timing every op once; a row is the median of its single-call samples (header "pairing")
    paired: int = 0

    def __post_init__(self) -> None:
        if self.paired:  # a device object is only asked when pairing is wanted
            self.device.check_paired(self.paired, "leave --paired out")


@dataclass
class MeasureConfig:
    """What a measuring run measures, and how: the options of ``fbprof measure`` (and of
    :func:`fbprof.run_measure`), turned into a :class:`MeasureRequest` by :func:`open_measure`, the one place
    that resolves the device, the space, the backend, the output path and the recorded command."""

    out: str | Path | None = None  # LUT CSV to create or extend (default: <device>-<backend>.csv)
    device: str = "local"  # profile name (local, s8, iphonex) or adb:SERIAL, adb:HOST:PORT, ios:HOST:PORT
    backend: str | None = None  # default: the device profile's (or, if the device cannot run it, what it runs)
    space: str | Path = "fbnet"
    resolution: int | None = None
    width: float | None = None
    keys: list[str] | None = None  # measure only these op keys of the space (default: every op)
    threads: int | None = None  # default: the profile's
    loop: LoopConfig = field(default_factory=LoopConfig)
    remeasure: bool = False
    paired: int = 0  # > 0, local device: rows by sample-level pairing, this many iterations
    export_workers: int = 1
    cache_dir: str | Path | None = None  # default: $FBPROF_CACHE_DIR/artifacts or ~/.cache/fbprof/artifacts
    profile: str | None = None  # profile of an adb:/ios: address
    options: dict[str, Any] = field(default_factory=dict)  # device settings (the CLI's --option KEY=VALUE, --runner, ...)
    # (fields added later go last, so positional calls keep working)
    heldout: int = 0  # channel spaces: N random off-grid ops instead of the grid (for `lut interp-check`)
    onnx_exporter: str = "dynamo"  # or "legacy" (TorchScript-based; an option only)
    profiles: list[str | Path] = field(default_factory=list)  # extra device profile files or folders


#: device settings that are also options of ``fbprof measure`` of their own (recorded as such in the command)
_OWN_FLAGS = {"runner": "--runner", "benchmark_binary": "--benchmark-binary"}


@contextmanager
def open_measure(config: MeasureConfig, on_note: Callable[[str], None] | None = None) -> Iterator[MeasureRequest]:
    """The device opened and the request built for ``config`` (closed on exit). ``on_note`` hears what changes
    what the LUT holds (a backend the device cannot run replaced by one it runs)."""
    from fbprof.devices.profiles import is_secret_option, load_profiles, open_device, resolve_device
    from fbprof.space import load_space

    if config.onnx_exporter not in ONNX_EXPORTERS:
        raise InputError(f"--onnx-exporter {config.onnx_exporter!r}: expected {' or '.join(ONNX_EXPORTERS)}")
    prof, address = resolve_device(config.device, config.profile, load_profiles(config.profiles))
    sp = load_space(config.space, config.resolution, config.width)
    channels = getattr(sp, "kind", "") == "channels"  # FBNetV2-style: several resolutions, a grid
    if config.heldout:
        if not channels:
            raise InputError(f"--heldout: space {sp.name} has no grid (only channel spaces, like fbnetv2, do)")
        specs = sp.heldout_specs(config.heldout)
        if not specs:
            raise InputError(f"--heldout: space {sp.name} has no off-grid ops (every width option is a grid point)")
    else:
        specs = sp.all_specs()
    if config.keys is not None:
        have = {s.key: s for s in specs}
        unknown = [k for k in config.keys if k not in have]
        if unknown:
            raise InputError(f"MeasureConfig.keys: {', '.join(unknown)} not in space {sp.name} "
                             f"at {sp.resolution}, width {sp.width:g}")
        specs = [have[k] for k in config.keys]
    threads = config.threads or prof.threads
    with open_device(prof, address, dict(config.options)) as dev:
        backend = config.backend or prof.backend
        if config.backend is None and dev.supported_backends and backend not in dev.supported_backends:
            # the device cannot run its profile's backend (a companion on Linux runs ONNX, not Core ML)
            backend = dev.supported_backends[0]
            if on_note is not None:
                on_note(f"{dev.name} cannot run {prof.backend}; measuring with {backend} (--backend picks another)")
        out = Path(config.out) if config.out is not None else \
            Path(f"{config.device.replace(':', '_').replace('/', '_')}-{backend}.csv")
        yield MeasureRequest(
            specs=specs, out=out, device=dev, backend=backend, threads=threads, loop=config.loop,
            spaces=list(sp.tags) if channels else [sp.tag], grid=sp.grid() if channels and not config.heldout else [],
            remeasure=config.remeasure, cache=ArtifactCache(config.cache_dir), export_workers=config.export_workers,
            paired=config.paired,
            export_options={"onnx_exporter": config.onnx_exporter} if config.onnx_exporter != "dynamo" else {},
            command=_command(config, sp, channels, backend, threads, out, is_secret_option),
        )


def _command(config: MeasureConfig, sp: Any, channels: bool, backend: str, threads: int, out: Path,
             is_secret: Callable[[str], bool]) -> str:
    """The canonical command that reproduces the LUT (its header's ``command``); no secret's value is in it."""
    loop = config.loop
    cmd = ["fbprof", "measure", "--device", config.device, "--backend", backend, "--space", str(config.space)]
    if not channels or config.resolution is not None:
        cmd += ["--resolution", str(sp.resolution)]
    if not channels:
        cmd += ["--width", f"{sp.width:g}"]
    cmd += ["--threads", str(threads), "--out", str(out), "--min-runs", str(loop.min_runs),
            "--min-time", f"{loop.min_time_s:g}", "--max-time", f"{loop.max_time_s:g}", "--warmup", str(loop.warmup_runs)]
    if config.paired:
        cmd += ["--paired", str(config.paired)]
    if config.heldout:
        cmd += ["--heldout", str(config.heldout)]
    if config.profile:
        cmd += ["--profile", config.profile]
    if config.onnx_exporter != "dynamo":
        cmd += ["--onnx-exporter", config.onnx_exporter]
    for k, v in config.options.items():
        if k in _OWN_FLAGS:
            cmd += [_OWN_FLAGS[k], str(v)]
        elif k == "token" or is_secret(k):  # a secret's value is never written (LUT header, lock file)
            cmd += ["--option", f"{k}=<secret>"]
        else:
            cmd += ["--option", f"{k}={shlex.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"]
    return shlex.join(cmd)


@dataclass
class MeasureSummary:
    path: Path
    counts: dict[str, int]
    measured: int
    reused: int
    failed: dict[str, str]
    wall_s: float
    loop_s: float
    export_s: float
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


def build_header(req: MeasureRequest) -> dict[str, str]:
    h = {
        "backend": req.backend,
        "format": get_backend(req.backend).format,
        "threads": str(req.threads),
        "spaces": format_space_tags(req.spaces),
        "units": "microseconds per inference, batch 1, float32",
        "activations": ACTIVATIONS_NOTE,
        "loop": req.loop.describe(),
        **({"pairing": describe_pairing(req.paired)} if req.paired else {}),
        "timed": get_backend(req.backend).timed,
        "torch": dist_version("torch"),
        "fbprof": __version__,
    }
    if req.grid:
        h["grid"] = format_grid(req.grid)
    if req.command:
        h["command"] = req.command
    # the device reports its fingerprint: data, one line each
    h.update({re.sub(r"[^A-Za-z0-9_.-]", "_", str(k))[:80]: clean_cell(str(v), 2000)
              for k, v in req.device.fingerprint(req.backend, req.threads).items()})
    return h


def _check_identity(old: dict[str, str], new: dict[str, str], where: str) -> None:
    diffs = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in IDENTITY_FIELDS if old.get(k) != new.get(k)]
    if diffs:
        raise InputError(
            f"{where} was measured differently, its rows cannot be mixed with this run's:\n  " + "\n  ".join(diffs),
            hint="write to another --out, or delete the file to start over",
        )


def _row_from(key: str, result, expected, atol: float, env: dict[str, str]) -> LutRow:
    m = result.measurement
    status, notes = m.status, list(m.notes)
    problem = check_output(expected, result.output, atol)
    if problem:
        status = INVALID
        notes.insert(0, problem)
    elif result.output is None:
        notes.append("output not checked (runner returns no output)")
    env_all = {**env, **result.env}
    return LutRow(key, status, m.stats.scaled(1e6), format_env(env_all), clean_cell("; ".join(map(str, notes))))


def format_env(env: dict) -> str:
    """The ``env`` cell: ``k=v;k=v`` sorted. A device reports these, so each name and value is data: control
    characters, ``;`` and ``=`` inside them become ``_`` and each is cut to 200 characters."""
    def part(x: object) -> str:
        return clean_cell(str(x), 200).replace(";", "_").replace("=", "_")

    return ";".join(f"{part(k)}={part(v)}" for k, v in sorted(env.items(), key=lambda kv: str(kv[0])))


def measure_lut(req: MeasureRequest, listener: Listener | None = None) -> MeasureSummary:
    """Measure what ``req.out`` lacks. One run at a time per LUT: a second run on the same file is refused
    (an InputError naming the run that holds ``<out>.lock``), so no rows are ever lost between two writers."""
    try:
        lock = OutputLock(req.out, req.command or "fbprof measure").acquire()
    except LockHeld as e:
        raise InputError(f"{req.out} is being measured by another run: {e.holder}",
                         hint="wait until it ends (then run this again: it resumes), or write to another --out") from None
    except OSError as e:
        raise WriteError(str(req.out) + ".lock", e) from None
    try:
        # the device's scope for a run of sessions (Device.session_scope) is held from before the listener
        # starts its progress display until after it ends, and left however the run ends
        with ExitStack() as held:
            return _measure_lut(req, listener, lambda: held.enter_context(req.device.session_scope(req.backend, req.threads)))
    finally:
        lock.release()


def _measure_lut(req: MeasureRequest, listener: Listener | None, hold: Callable[[], object]) -> MeasureSummary:
    lis = listener or Listener()
    t_start = time.perf_counter()
    req.device.check_backend(req.backend)
    header = build_header(req)
    out = Path(req.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, LutRow] = {}
    notes: list[str] = []
    cores = header.get("cores", "")
    if cores.isdigit() and req.threads > int(cores) > 0:
        notes.append(f"warning: --threads {req.threads} is more than the device's {cores} cores: "
                     "its rows would measure contention, not the ops")
    existed = out.exists()
    if existed:
        existing = read_lut(out)
        _check_identity(existing.header, header, str(out))
        rows.update(existing.rows)
        header["spaces"] = format_space_tags([*existing.space_tags(), *req.spaces])
        if req.grid or "grid" in existing.header:
            header["grid"] = format_grid([*existing.grid(), *req.grid])
    journal = Journal(out)
    if journal.exists():
        jh, jrows, jnotes = journal.read()
        if jh:
            _check_identity(jh, header, str(journal.path))
        rows.update(jrows)
        notes += jnotes
        if jrows:
            notes.append(f"resumed: {len(jrows)} rows recovered from {journal.path.name}")
    wanted = {s.key: s for s in req.specs if not s.is_identity}
    if req.remeasure:
        todo = sorted(wanted.values(), key=lambda s: s.key)
    else:
        todo = [s for k, s in sorted(wanted.items()) if k not in rows]
    reused = len(wanted) - len(todo)
    if todo:
        hold()
    lis.on_start(len(wanted), len(todo), reused)
    for n in notes:
        lis.on_note(n)

    failed: dict[str, str] = {}
    measured = 0
    loop_s = 0.0
    export_s = 0.0
    interrupted = False
    stream = iter(())

    def done(row: LutRow, row_loop_s: float) -> None:
        nonlocal measured, loop_s
        loop_s += row_loop_s
        rows[row.key] = row
        journal.append(row)
        measured += 1
        lis.on_row_done(row)

    def fail(key: str, message: str) -> None:
        failed[key] = message
        lis.on_note(message)

    retries = _Retries(req, lis, done, fail) if req.device.defers_retries else None
    journal.start(header)
    finished = False
    try:
        t0 = time.perf_counter()
        lis.on_export_start(len(todo))
        fmt = get_backend(req.backend).format
        if req.paired:
            export_s = _measure_paired(req, todo, fmt, lis, done, fail)
            todo = []  # measured
            stream = iter(())
        elif req.device.streams_artifacts:  # measure each op as soon as it is exported, while workers export on
            stream = stream_ops(todo, fmt, req.cache, req.export_options, workers=req.export_workers,
                                on_done=lis.on_export_done, avoid_cores=req.device.measuring_cores(req.threads))
        else:
            artifacts = export_ops(todo, fmt, req.cache, req.export_options,
                                   workers=req.export_workers, on_done=lis.on_export_done)
            req.device.prepare([artifacts[s.key] for s in todo if isinstance(artifacts[s.key], Artifact)])
            stream = iter([(s.key, artifacts[s.key]) for s in todo])
        if not req.paired:
            export_s = time.perf_counter() - t0  # then: time spent waiting for the next export
        for i in range(len(todo)):  # in the order the artifacts are ready (export_stream)
            t0 = time.perf_counter()
            key, art = next(stream)
            export_s += time.perf_counter() - t0
            if isinstance(art, MeasurementError):
                failed[key] = art.message
                lis.on_note(f"{key}: {art.message}")
                continue
            lis.on_row_start(key, i, len(todo))
            if retries is not None:  # one attempt now; a noisy row is measured again a few rows later
                retries.first(key, art)
                retries.due()
                continue
            try:
                with measuring_alone():  # export workers that may use the measuring core leave it
                    row = _measure_one(req, key, art, lis)
            except MeasurementError as e:
                fail(key, e.message)
                continue
            done(row[0], row[1])
        if retries is not None:
            retries.drain()
        finished = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        getattr(stream, "close", lambda: None)()  # stops the export workers
        journal.close()
        # a new LUT that got no row because the run failed is not written: no header-only file is left behind
        if existed or rows or (finished and not failed):
            write_lut(out, header, rows.values())
        journal.remove()
        counts = {s: 0 for s in STATUSES}
        for k in wanted:
            if k in rows:
                counts[rows[k].status] += 1
        summary = MeasureSummary(out, counts, measured, reused, failed, time.perf_counter() - t_start, loop_s, export_s,
                                 interrupted, notes)
        lis.on_finish(summary)
    return summary


@dataclass
class _Noisy:
    key: str
    art: Artifact
    env: dict[str, str]
    log: Attempts
    output: object
    since: float  # when its last attempt ended


class _Retries:
    """The loop's validity policy (:class:`fbprof.loop.Attempts`) for a device that measures one attempt at a
    time: a noisy row is measured again once ``retry_pause_s`` has passed since its attempt, after the rows
    measured meanwhile (rather than after an idle pause), up to ``retries`` times; the least noisy valid
    attempt is kept, as :func:`fbprof.loop.measure_attempts` does. A row is journaled once it is final."""

    def __init__(self, req: MeasureRequest, lis: Listener, done, fail) -> None:
        self.req, self.lis, self.done, self.fail = req, lis, done, fail
        self.clock, self.sleep = time.perf_counter, time.sleep
        self.waiting: list[_Noisy] = []

    def _attempt(self, n: _Noisy) -> None:
        req = self.req
        try:
            with measuring_alone():  # export workers that may use the measuring core leave it
                a, output = req.device.measure_once(n.art, req.backend, req.loop, req.threads)
        except MeasurementError as e:
            self.fail(n.key, e.message)
            return
        if n.output is None:
            n.output = output
        n.log.add(a)
        if n.log.wants_retry:
            self.lis.on_retry(n.key, n.log.count, a.stats.cv)
            n.since = self.clock()
            self.waiting.append(n)
            return
        m = n.log.result()
        self.done(_row_from(n.key, DeviceResult(m, n.output), n.art.expected, req.check_atol, n.env), m.loop_s)

    def first(self, key: str, art: Artifact) -> None:
        self._attempt(_Noisy(key, art, self.req.device.before_row(key), Attempts(self.req.loop), None, 0.0))

    def due(self) -> None:
        """Measure again the noisy rows whose pause is over."""
        now = self.clock()
        ready = [n for n in self.waiting if now - n.since >= self.req.loop.retry_pause_s]
        self.waiting = [n for n in self.waiting if n not in ready]
        for n in ready:
            self._attempt(n)

    def drain(self) -> None:
        """The run's last rows: measure the noisy ones again, each after the rest of its pause."""
        while self.waiting:
            left = self.req.loop.retry_pause_s - (self.clock() - min(n.since for n in self.waiting))
            if left > 0:
                self.sleep(left)
            self.due()


def _measure_paired(req: MeasureRequest, todo: list[OpSpec], fmt: str, lis: Listener, done, fail) -> float:
    """Export every op, then time them all by sample-level pairing (:meth:`Device.measure_paired`); returns
    the export time. Rows are final at the end of the pairing (an interrupted pairing keeps no row)."""
    t0 = time.perf_counter()
    artifacts = export_ops(todo, fmt, req.cache, req.export_options, workers=req.export_workers,
                           on_done=lis.on_export_done)
    export_s = time.perf_counter() - t0
    good: dict[str, Artifact] = {}
    for spec in todo:
        art = artifacts[spec.key]
        if isinstance(art, MeasurementError):
            fail(spec.key, art.message)
        else:
            good[spec.key] = art
    if not good:
        return export_s
    env = req.device.before_row("paired")
    t0 = time.perf_counter()
    secs, outputs = req.device.measure_paired(good, req.backend, req.threads, req.paired, 0,
                                              on_iteration=lambda i: lis.on_iteration(i, req.paired))
    share = (time.perf_counter() - t0) / len(good)  # loop time, split evenly over the rows
    for key, art in good.items():
        m = paired_measurement(secs[key], req.loop, share)
        done(_row_from(key, DeviceResult(m, outputs[key]), art.expected, req.check_atol, env), share)
    return export_s


def _measure_one(req: MeasureRequest, key: str, art: Artifact, lis: Listener) -> tuple[LutRow, float]:
    env = req.device.before_row(key)
    result = req.device.measure(art, req.backend, req.loop, req.threads,
                                on_retry=lambda attempt, cv: lis.on_retry(key, attempt, cv))
    return _row_from(key, result, art.expected, req.check_atol, env), result.measurement.loop_s
