"""fbprof verify: how well does a LUT predict whole networks? Measure random architectures end to end and compare.

:func:`run_verify` draws architectures from the LUT's search space (uniform over the candidates of
every layer, seeded), adds the published FBNet-A/B/C when the space is ``fbnet`` and the networks given by
name or file (``VerifyRequest.archs``). A channel space such as ``fbnetv2`` is sampled over the widths,
blocks and resolutions its grid LUT covers; such a LUT predicts by interpolation and is calibrated with the
models a DMaskingNAS search can apply (:data:`fbprof.lut.calibration.GRID_MODELS`). Verify builds each whole
network with :func:`fbprof.build.build_arch`, exports it like the LUT's ops (same format and
options, content-addressed cache) and measures it on the device with the same loop, backend and
threads as the LUT. Measuring is interleaved and repeated: every round visits every architecture
once, in a fresh seeded order, and an architecture's latency is the median of its per-round
medians, so a slow spell of a shared machine spreads over all architectures instead of landing on
one group. A *noise floor* comes from one network measured several times per round in the same
interleaved way: its replicas show how far two measurements of the same network disagree.

The architectures are split in two: a calibration split (a seeded share of the random ones) on
which a small linear correction of the LUT sum may be fitted (:mod:`fbprof.lut.calibration`), and
a held-out split (the rest, and the published ones) on which every accuracy number is reported.

With ``same_run_rows`` the LUT rows the predictions read (:func:`fbprof.lut.predict.rows_read`) are measured
too, in the same rounds as the networks, and every network is predicted again from them: that error is the
LUT method's own (ops measured alone and summed or interpolated), without the device's drift between the
LUT's build and this run, which the summary reports apart as the rows' ``now_over_lut`` ratio.

Reports (:func:`write_report`): a per-architecture CSV, a summary JSON and a PNG scatter plot.
Nothing here prints; progress goes to a :class:`VerifyListener`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from fbprof import __version__
from fbprof.artifact import Artifact
from fbprof.errors import InputError, MeasurementError
from fbprof.loop import INVALID, OK, Stats
from fbprof.lut.calibration import (GRID_MODELS, FitReport, LinearCalibration, calibration_of, select_and_fit,
                                    store_calibration)
from fbprof.lut.predict import predict, rows_read
from fbprof.lut.table import LutRow
from fbprof.profiler.export import export_archs, export_ops
from fbprof.spec import OpSpec
from fbprof.verify.measure import measure_interleaved, measure_paired_blocks, round_order
from fbprof.verify.plan import (CALIBRATION, HELD_OUT, PUBLISHED, VerifyConfig, VerifyListener, VerifyPlan, VerifyRequest,
                                config_loop, config_space, given_archs, is_grid, open_verify, plan_verify, published_archs,
                                sample_archs, timed_mismatch, verify_command)
from fbprof.verify.report import CSV_COLUMNS, REPORT_FILES, format_csv, plot_png, write_report
from fbprof.verify.stats import (GOALS, SUMMARY_SCHEMA, NetworkMeasurement, NoiseFloor, VerifyResult, accuracy,
                                 rank_stats, same_run_rows, summarize)

#: how a LUT row measured beside the networks is named among the measured artifacts (op keys hold ``:``)
ROW_PREFIX = "row "

__all__ = [
    "VerifyConfig", "open_verify", "verify_command", "config_loop", "config_space",
    "VerifyListener", "VerifyRequest", "VerifyPlan", "NetworkMeasurement", "VerifyResult", "NoiseFloor",
    "sample_archs", "published_archs", "given_archs", "plan_verify", "export_archs", "measure_interleaved", "round_order", "run_verify",
    "accuracy", "rank_stats", "write_report", "format_csv", "plot_png", "CSV_COLUMNS", "SUMMARY_SCHEMA", "REPORT_FILES",
    "GOALS", "PUBLISHED", "CALIBRATION", "HELD_OUT",
]


def run_verify(req: VerifyRequest, listener: VerifyListener | None = None, export_only: bool = False) -> VerifyResult | None:
    """Plan, export, measure, calibrate and summarise. ``export_only`` stops after the export (None)."""
    lis = listener or VerifyListener()
    t0 = time.perf_counter()
    plan = plan_verify(req)
    req.device.check_backend(plan.backend)
    lis.on_plan(plan)
    for n in plan.notes:
        lis.on_note(n)
    mismatch = _identity_mismatch(plan, req)
    for m in mismatch:
        lis.on_note(f"the LUT was measured differently: {m}")
    row_keys: list[str] = []
    reads: dict[str, list[str]] = {}  # per network, the LUT rows its prediction reads (with --same-run-rows)
    how: dict[str, str] = {}  # how those rows are measured here and were in the LUT
    if req.same_run_rows:
        taken = [a.name for a in plan.archs if a.name.startswith(ROW_PREFIX)]
        if taken:
            raise InputError(f"network {taken[0]!r}: names starting with {ROW_PREFIX!r} name the LUT rows measured with "
                             "--same-run-rows; rename the network")
        reads = {a.name: rows_read(a, plan.lut) for a in plan.archs}
        row_keys = sorted({k for ks in reads.values() for k in ks})
        how = _how_measured(req, plan)
        if how["rows"] != how["lut"]:
            lis.on_note(f"the LUT rows are measured here by {how['rows']}, the LUT's by {how['lut']}: their now/LUT "
                        "ratio mixes that change with the device's drift")
    lis.on_export_start(len(plan.archs) + len(row_keys))
    t_exp = time.perf_counter()
    exported = export_archs(plan.archs, plan.format, req.cache, req.export_options, workers=req.export_workers,
                            on_done=lis.on_export_done)
    row_arts = export_ops([OpSpec.parse(k) for k in row_keys], plan.format, req.cache, req.export_options,
                          workers=req.export_workers, on_done=lis.on_export_done) if row_keys else {}
    export_s = time.perf_counter() - t_exp
    failed = {n: a.message for n, a in exported.items() if isinstance(a, MeasurementError)}
    for n, why in failed.items():
        lis.on_note(f"{n}: {why}")
    rows_failed = {k: a.message for k, a in row_arts.items() if isinstance(a, MeasurementError)}
    for key, why in sorted(rows_failed.items()):
        lis.on_note(f"LUT row {key} (measured beside the networks): {why}")
    if export_only:
        return None
    artifacts = {n: a for n, a in exported.items() if isinstance(a, Artifact)}
    rows = {ROW_PREFIX + k: a for k, a in row_arts.items() if isinstance(a, Artifact)}
    t_meas = time.perf_counter()
    per_arch, noise_r, mfailed, notes = _measure(req, plan, artifacts | rows, lis)
    if rows and req.paired and artifacts and set(mfailed) >= set(artifacts):
        # pairing is one run over every item: a row that cannot be measured takes the networks with it
        why = next(iter(mfailed.values()))
        lis.on_note(f"measuring the networks and the LUT rows together failed ({why}); the networks are measured "
                    "again without the rows")
        rows_failed.update({n[len(ROW_PREFIX):]: why for n in rows})
        rows = {}
        per_arch, noise_r, mfailed, notes = _measure(req, plan, artifacts, lis)
    measure_s = time.perf_counter() - t_meas
    rows_now: dict[str, float] = {}
    row_notes: dict[str, list[str]] = {}
    for name in rows:  # rows are not networks: kept apart
        key, why, rounds = name[len(ROW_PREFIX):], mfailed.pop(name, None), per_arch.pop(name, [])
        said = notes.pop(name, [])
        wrong = [n for n in said if n.startswith("output")]
        if wrong:
            lis.on_note(f"LUT row {key} (measured beside the networks): {'; '.join(wrong)}")
        if why or wrong or not rounds:
            rows_failed[key] = why or "; ".join(wrong) or "not measured"
        else:
            rows_now[key] = statistics.median(rounds)
            if said:
                row_notes[key] = said
    same_run_lut = dataclasses.replace(plan.lut, rows={k: LutRow(k, OK, Stats.of([v])) for k, v in rows_now.items()}) \
        if req.same_run_rows else None
    failed.update(mfailed)

    results: list[NetworkMeasurement] = []
    for a in plan.archs:
        r = NetworkMeasurement(a, plan.kinds[a.name], plan.splits[a.name], predict(a, plan.lut).total_us)
        rounds = per_arch.get(a.name, [])
        if a.name in failed or not rounds:
            r.status, r.note = INVALID, failed.get(a.name, "not measured")
        else:
            r.rounds_us = rounds
            r.measured_us = statistics.median(rounds)
            r.note = "; ".join(notes.get(a.name, []))
            if any(n.startswith("output") for n in notes.get(a.name, [])):
                r.status = INVALID
        if same_run_lut is not None and all(k in rows_now for k in reads[a.name]):
            r.same_run_us = predict(a, same_run_lut).total_us
        results.append(r)
    good = [r for r in results if r.status != INVALID]

    # calibration: fitted on the calibration split, or the one the LUT already carries
    cal: LinearCalibration | None = None
    fit_report: FitReport | None = None
    source = "none"
    if req.calibrate:
        calib = [r for r in good if r.split == CALIBRATION]
        try:
            cal, fit_report = select_and_fit([r.arch for r in calib], [r.measured_us for r in calib], plan.lut,
                                             **({"models": GRID_MODELS} if is_grid(plan.lut) else {}))
            source = "fitted"
        except ValueError as e:
            lis.on_note(f"no calibration fitted: {e}")
    else:
        cal = calibration_of(plan.lut)
        source = "stored in the LUT" if cal is not None else "none"
    if cal is not None:
        for r in results:
            r.calibrated_us = cal.apply(r.predicted_us, r.arch)

    noise = None
    if noise_r and plan.noise_arch and all(noise_r):
        noise = NoiseFloor(plan.noise_arch, [statistics.median(x) for x in noise_r], [v for x in noise_r for v in x], noise_r)

    summary = summarize(plan, req, results, noise, cal, source, fit_report, failed,
                       {"export_s": round(export_s, 1), "measure_s": round(measure_s, 1),
                        "total_s": round(time.perf_counter() - t0, 1)}, mismatch,
                        same_run_rows(plan.lut, rows_now, rows_failed, row_notes, how) if req.same_run_rows else None)
    if cal is not None and source == "fitted" and req.store:
        info = {"fitted_on": summary["counts"]["calibration"], "seed": req.seed, "rounds": req.rounds,
                "held_out": {k: summary["calibrated"]["held_out"].get(k) for k in ("n", "mape_pct", "within_5_pct", "within_10_pct")},
                "fbprof": __version__}
        try:  # refused when the LUT's rows changed meanwhile or another run writes it: the results still stand
            store_calibration(str(req.lut_path), cal, info, fitted_rows=plan.lut.rows)
        except InputError as e:
            summary["calibration"]["stored_in"] = None
            summary["calibration"]["not_stored"] = str(e)
            lis.on_note(f"calibration ({cal.describe()}) not stored: {e}")
        else:
            summary["calibration"]["stored_in"] = str(req.lut_path)
            lis.on_note(f"calibration ({cal.describe()}) stored in {req.lut_path}")
    return VerifyResult(plan, results, noise, cal, source, fit_report, summary, failed)


def _measure(req: VerifyRequest, plan: VerifyPlan, artifacts: dict, lis: VerifyListener):
    """Every artifact measured in interleaved rounds, or by sample-level pairing with ``--paired``."""
    if req.paired:
        return measure_paired_blocks(req.device, plan.backend, plan.threads, artifacts, req.paired, req.rounds, req.seed,
                                     plan.noise_arch, req.noise_repeats, req.check_atol, lis)
    return measure_interleaved(req.device, plan.backend, plan.threads, plan.loop, artifacts, req.rounds, req.seed,
                               plan.noise_arch, req.noise_repeats, req.check_atol, lis)


def _how_measured(req: VerifyRequest, plan: VerifyPlan) -> dict[str, str]:
    """How this run measures LUT rows beside the networks, and how the LUT's rows were measured (its header)."""
    h = plan.lut.header
    lut = f"pairing ({h['pairing']})" if "pairing" in h else f"loop ({h.get('loop', 'not recorded')})"
    rows = f"pairing ({req.paired} iterations)" if req.paired else f"loop ({plan.loop.describe()})"
    if req.paired and "pairing" in h:
        lut, rows = "pairing", "pairing"  # single calls both; the iteration counts only change the spread
    return {"rows": rows, "lut": lut}


def _identity_mismatch(plan: VerifyPlan, req: VerifyRequest) -> list[str]:
    fp = req.device.fingerprint(plan.backend, plan.threads)
    out = []
    for k in ("device", "device_model", "cpu_model", "runtime"):
        if k in plan.lut.header and k in fp and plan.lut.header[k] != fp[k]:
            out.append(f"{k}: {plan.lut.header[k]!r} in the LUT, {fp[k]!r} here")
    timed = timed_mismatch(plan.lut, plan.backend)  # what one timed call runs (docs/lut-format.md)
    return out + ([timed] if timed else [])
