"""The interpolation check of a grid LUT with drift cancelled: each held-out (off-grid) op and the grid rows its
interpolation reads are measured again, interleaved in the same rounds (as verify measures networks), and the
interpolation of the same-run corner medians is compared with the same-run held-out median.

``fbprof lut interp-check GRID HELDOUT`` compares rows measured at different times; on a machine whose speed
drifts between runs (this shared VM: two measurements of the same 20 ops minutes apart differed by a median
of 3-36%), that comparison measures the drift as much as the interpolation. ``--remeasure`` uses this module.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Sequence

from fbprof.artifact import Artifact
from fbprof.backends import get_backend
from fbprof.backends.cache import ArtifactCache
from fbprof.devices.base import Device
from fbprof.errors import InputError, MeasurementError
from fbprof.loop import Stats
from fbprof.lut.interp import GridLut, InterpCheck, OutsideGridError
from fbprof.lut.table import Lut, LutRow
from fbprof.profiler.export import export_ops
from fbprof.spec import OpSpec
from fbprof.verify.measure import measure_interleaved, paired_samples
from fbprof.verify.plan import VerifyListener

__all__ = ["interleaved_interp_check", "same_run_check"]


def interleaved_interp_check(grid: Lut, heldout_keys: list[str], device: Device, cache: ArtifactCache, rounds: int = 3,
                             seed: int = 0, options: dict | None = None, export_workers: int = 1,
                             listener: VerifyListener | None = None, paired: int = 0,
                             scheme: str = "bilinear", also: Sequence[Lut] = ()) -> tuple[InterpCheck, dict[str, list[float]]]:
    """(check, samples in µs of every op measured: round medians, or with ``paired`` > 0 that many per-call
    samples of sample-level pairing, every op timed once per iteration). Held-out ops the grid cannot answer,
    or that are not inverted residuals, are skipped (listed in the check); ops that fail to export or measure
    too. ``also``: further grid LUTs (same backend) whose corner rows for the same held-out ops are measured in
    the same run, so that :func:`same_run_check` can compare grids on the same samples."""
    device.check_paired(paired, "use --rounds")
    g = GridLut(grid, scheme=scheme)
    reads: dict[str, list[str]] = {}
    skipped: list[tuple[str, str]] = []
    for key in sorted(set(heldout_keys)):
        spec = OpSpec.parse(key)
        if spec.block.kind != "ir":
            skipped.append((key, "not an inverted residual"))
            continue
        try:
            reads[key] = g.sources(spec)
        except OutsideGridError as e:
            skipped.append((key, e.queries[0]))
    if not reads:
        raise InputError(f"no held-out op that the grid of {grid.path} can answer")
    keys = set(reads) | {k for ks in reads.values() for k in ks}
    for other in also:
        if other.header.get("backend", "") != grid.header.get("backend", ""):
            raise InputError(f"{other.path}: backend {other.header.get('backend', '')!r}, but {grid.path} is "
                             f"{grid.header.get('backend', '')!r}: grids compared in one run must share a backend")
        g2 = GridLut(other, scheme=scheme)
        for key in reads:
            try:
                keys.update(g2.sources(OpSpec.parse(key)))
            except OutsideGridError:
                pass  # same_run_check lists it as skipped for that grid
    keys = sorted(keys)
    backend = grid.header.get("backend", "")
    fmt = grid.header.get("format") or get_backend(backend).format
    exported = export_ops([OpSpec.parse(k) for k in keys], fmt, cache, options, workers=export_workers)
    artifacts = {k: a for k, a in exported.items() if isinstance(a, Artifact)}
    failed = {k: a.message for k, a in exported.items() if isinstance(a, MeasurementError)}
    if paired:
        per_op, mfailed, _ = paired_samples(device, backend, grid.threads(), artifacts, paired, seed, listener=listener)
    else:
        per_op, _, mfailed, _ = measure_interleaved(device, backend, grid.threads(), grid.loop_config(), artifacts,
                                                    rounds, seed, listener=listener)
    failed.update(mfailed)
    now = {k: v for k, v in per_op.items() if v and k not in failed}
    check = same_run_check(grid, list(reads), now, scheme, failed)
    return InterpCheck(check.rows, skipped + check.skipped), now


def same_run_check(grid: Lut, heldout_keys: list[str], now: dict[str, list[float]], scheme: str = "bilinear",
                   failed: dict[str, str] | None = None) -> InterpCheck:
    """The interpolation check of ``heldout_keys`` from one run's samples (µs) of them and of the grid rows
    their interpolation reads (``now``, e.g. :func:`interleaved_interp_check`'s second result): the grid's
    medians replaced by the same-run medians, interpolated with ``scheme``, against the same-run median of
    each held-out op."""
    g = GridLut(grid, scheme=scheme)
    same_run = dataclasses.replace(grid, rows={k: LutRow(k, "ok", Stats.of(v)) for k, v in now.items()})
    g_now = GridLut(same_run, scheme=scheme)
    rows, skipped = [], []
    for key in heldout_keys:
        try:
            corners = g.sources(OpSpec.parse(key))
        except OutsideGridError as e:
            skipped.append((key, e.queries[0]))
            continue
        missing = [k for k in [key, *corners] if k not in now]
        if missing:
            skipped.append((key, f"not measured: {', '.join(missing)} ({(failed or {}).get(missing[0], 'failed')})"))
            continue
        spec = OpSpec.parse(key)
        predicted = float(g_now.interpolate(spec.op, spec.stride, spec.h, spec.cin, spec.cout, spec.w))
        rows.append((key, statistics.median(now[key]), predicted))
    return InterpCheck(rows, skipped)
