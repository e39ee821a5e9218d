"""Building a LUT: export what is missing, measure it on a device, append rows, resume after a crash.

``measure_lut`` is the single orchestration used by every device. It reports through a
:class:`Listener` (progress bars live in the CLI, not here). Rows go to a journal
(``<out>.partial``) one at a time, flushed and fsynced; the LUT itself is rewritten atomically,
sorted, when the run ends, is interrupted or fails, so at most the rows in flight are lost (the one being
measured and, on a device that defers retries, noisy ones waiting to be measured again).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from fbprof import __version__
from fbprof.artifact import Artifact, check_output
from fbprof.backends import get_backend
from fbprof.backends.base import dist_version
from fbprof.backends.cache import ArtifactCache, exports_paused
from fbprof.devices.base import Device, DeviceResult
from fbprof.errors import InputError, MeasurementError
from fbprof.fileio import LockHeld, OutputLock, WriteError
from fbprof.loop import INVALID, STATUSES, Attempts, LoopConfig, describe_pairing, paired_measurement
from fbprof.lut.table import IDENTITY_FIELDS, TIMED, Journal, LutRow, clean_cell, read_lut, write_lut
from fbprof.profiler.export import export_ops, stream_ops
from fbprof.space import GridCell, SpaceTag, format_grid, format_space_tags
from fbprof.spec import OpSpec

#: recorded in LUT headers: how the measured ops' activations were made realistic (see profiler/ops.py)
ACTIVATIONS_NOTE = "kaiming-init;bn-calibrated(4 batches of 8, N(0,1) input);input N(0,1)"

__all__ = ["Listener", "MeasureRequest", "MeasureSummary", "measure_lut", "build_header"]


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
        "timed": TIMED,
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
        return _measure_lut(req, listener)
    finally:
        lock.release()


def _measure_lut(req: MeasureRequest, listener: Listener | None = None) -> MeasureSummary:
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
    if out.exists():
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
        for i, spec in enumerate(todo):
            t0 = time.perf_counter()
            art = next(stream)[1]
            export_s += time.perf_counter() - t0
            if isinstance(art, MeasurementError):
                failed[spec.key] = art.message
                lis.on_note(f"{spec.key}: {art.message}")
                continue
            lis.on_row_start(spec.key, i, len(todo))
            if retries is not None:  # one attempt now; a noisy row is measured again a few rows later
                retries.first(spec.key, art)
                retries.due()
                continue
            try:
                with exports_paused():  # export workers sharing the measuring core wait
                    row = _measure_one(req, spec.key, art, lis)
            except MeasurementError as e:
                fail(spec.key, e.message)
                continue
            done(row[0], row[1])
        if retries is not None:
            retries.drain()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        getattr(stream, "close", lambda: None)()  # stops the export workers
        journal.close()
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
            with exports_paused():  # export workers sharing the measuring core wait
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
