"""fbprof verify: how well does a LUT predict whole networks? Measure random architectures end to end and compare.

:func:`run_verify` draws architectures from the LUT's search space (uniform over the candidates of
every layer, seeded), adds the published FBNet-A/B/C when the space is ``fbnet`` and the networks given by
name or file (``VerifyRequest.archs``). A channel space such as ``fbnetv2`` is sampled over the widths,
blocks and resolutions its grid LUT covers; such a LUT predicts by interpolation and gets no calibration, builds each whole
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

Reports (:func:`write_report`): a per-architecture CSV, a summary JSON and a PNG scatter plot.
Nothing here prints; progress goes to a :class:`VerifyListener`.
"""

from __future__ import annotations

import statistics
import time

from fbprof import __version__
from fbprof.artifact import Artifact
from fbprof.errors import InputError, MeasurementError
from fbprof.loop import INVALID
from fbprof.lut.calibration import FitReport, LinearCalibration, calibration_of, select_and_fit, store_calibration
from fbprof.lut.predict import predict
from fbprof.profiler.export import export_archs
from fbprof.verify.measure import measure_interleaved, measure_paired_blocks, round_order
from fbprof.verify.plan import (CALIBRATION, HELD_OUT, PUBLISHED, VerifyConfig, VerifyListener, VerifyPlan, VerifyRequest,
                                config_loop, config_space, given_archs, is_grid, open_verify, plan_verify, published_archs,
                                sample_archs, verify_command)
from fbprof.verify.report import CSV_COLUMNS, REPORT_FILES, format_csv, plot_png, write_report
from fbprof.verify.stats import (GOALS, SUMMARY_SCHEMA, NetworkMeasurement, NoiseFloor, VerifyResult, accuracy,
                                 rank_stats, summarize)

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
    lis.on_export_start(len(plan.archs))
    t_exp = time.perf_counter()
    exported = export_archs(plan.archs, plan.format, req.cache, req.export_options, workers=req.export_workers,
                            on_done=lis.on_export_done)
    export_s = time.perf_counter() - t_exp
    failed = {n: a.message for n, a in exported.items() if isinstance(a, MeasurementError)}
    for n, why in failed.items():
        lis.on_note(f"{n}: {why}")
    if export_only:
        return None
    artifacts = {n: a for n, a in exported.items() if isinstance(a, Artifact)}
    t_meas = time.perf_counter()
    if req.paired:
        per_arch, noise_r, mfailed, notes = measure_paired_blocks(
            req.device, plan.backend, plan.threads, artifacts, req.paired, req.rounds, req.seed,
            plan.noise_arch, req.noise_repeats, req.check_atol, lis)
    else:
        per_arch, noise_r, mfailed, notes = measure_interleaved(
            req.device, plan.backend, plan.threads, plan.loop, artifacts, req.rounds, req.seed,
            plan.noise_arch, req.noise_repeats, req.check_atol, lis)
    measure_s = time.perf_counter() - t_meas
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
        results.append(r)
    good = [r for r in results if r.status != INVALID]

    # calibration: fitted on the calibration split, or the one the LUT already carries
    cal: LinearCalibration | None = None
    fit_report: FitReport | None = None
    source = "none"
    if not plan.calibrate:
        source = "none (grid LUT)" if is_grid(plan.lut) else "none"
    elif req.calibrate:
        calib = [r for r in good if r.split == CALIBRATION]
        try:
            cal, fit_report = select_and_fit([r.arch for r in calib], [r.measured_us for r in calib], plan.lut)
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
                        "total_s": round(time.perf_counter() - t0, 1)}, mismatch)
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


def _identity_mismatch(plan: VerifyPlan, req: VerifyRequest) -> list[str]:
    fp = req.device.fingerprint(plan.backend, plan.threads)
    out = []
    for k in ("device", "device_model", "cpu_model", "runtime"):
        if k in plan.lut.header and k in fp and plan.lut.header[k] != fp[k]:
            out.append(f"{k}: {plan.lut.header[k]!r} in the LUT, {fp[k]!r} here")
    return out
