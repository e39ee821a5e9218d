"""The statistics of a verify run: per-network results, the noise floor, error and rank statistics, and
the summary (raw and calibrated side by side, MACs as the FLOPs proxy, the noise ceiling)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from fbprof import __version__
from fbprof.loop import INVALID, OK
from fbprof.lut.calibration import MODELS, FitReport, LinearCalibration
from fbprof.space import Arch, ChannelArch
from fbprof.verify.plan import CALIBRATION, HELD_OUT, VerifyPlan, VerifyRequest

__all__ = ["NetworkMeasurement", "NoiseFloor", "VerifyResult", "accuracy", "rank_stats", "fit_macs", "summarize",
           "same_run_rows",
           "SUMMARY_SCHEMA", "GOALS"]

SUMMARY_SCHEMA = 1
#: accuracy goals of the issue, per backend
GOALS = {"within_10_pct": 0.99, "within_5_pct": 0.95, "kendall_tau": 0.93}


@dataclass
class NetworkMeasurement:
    """One whole network: what the LUT predicts and what was measured, round by round."""

    arch: Arch | ChannelArch
    kind: str
    split: str
    predicted_us: float
    measured_us: float | None = None
    calibrated_us: float | None = None
    rounds_us: list[float] = field(default_factory=list)
    status: str = OK
    note: str = ""
    same_run_us: float | None = None  # predicted from the LUT rows measured in this run (``same_run_rows``)

    @property
    def name(self) -> str:
        return self.arch.name

    @property
    def round_spread_pct(self) -> float | None:
        if len(self.rounds_us) < 2 or not self.measured_us:
            return None
        return 100.0 * (max(self.rounds_us) - min(self.rounds_us)) / self.measured_us


@dataclass
class NoiseFloor:
    arch: str
    replicas_us: list[float]  # each: median over rounds of one replica
    singles_us: list[float]  # every single measurement (rounds x replicas)
    replica_rounds_us: list[list[float]] = field(default_factory=list)  # [replica][round]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"arch": self.arch, "replicas": len(self.replicas_us), "single_measurements": len(self.singles_us)}
        if len(self.replicas_us) >= 2:
            med = statistics.median(self.replicas_us)
            cv = statistics.stdev(self.replicas_us) / statistics.fmean(self.replicas_us)
            d.update({
                "median_us": round(med, 3),
                "spread_pct": round(100 * (max(self.replicas_us) - min(self.replicas_us)) / med, 3),
                "max_dev_pct": round(100 * max(abs(r - med) for r in self.replicas_us) / med, 3),
                "cv_pct": round(100 * cv, 3),
                # share of a perfect predictor's errors within +-5% / +-10% if the measured value carries
                # this noise (normal with this CV): an upper bound set by the machine, not by the LUT
                "perfect_predictor_within_5_pct": round(_within_normal(0.05, cv), 4),
                "perfect_predictor_within_10_pct": round(_within_normal(0.10, cv), 4),
                "replicas_us": [round(r, 3) for r in self.replicas_us],
                "replica_rounds_us": [[round(v, 3) for v in x] for x in self.replica_rounds_us],
            })
        if len(self.singles_us) >= 2:
            med = statistics.median(self.singles_us)
            d["single_spread_pct"] = round(100 * (max(self.singles_us) - min(self.singles_us)) / med, 3)
            d["single_cv_pct"] = round(100 * statistics.stdev(self.singles_us) / statistics.fmean(self.singles_us), 3)
        return d


def _within_normal(bound: float, cv: float) -> float:
    if cv <= 0:
        return 1.0
    return math.erf(bound / (cv * math.sqrt(2)))


@dataclass
class VerifyResult:
    plan: VerifyPlan
    results: list[NetworkMeasurement]
    noise: NoiseFloor | None
    calibration: LinearCalibration | None
    calibration_source: str  # "fitted", "stored in the LUT" or "none"
    fit_report: FitReport | None
    summary: dict[str, Any]
    failed: dict[str, str]


def accuracy(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Error statistics of predictions against measurements (errors relative to the measurement)."""
    n = len(measured)
    d: dict[str, Any] = {"n": n}
    if n == 0:
        return d
    errs = [(p - m) / m for p, m in zip(predicted, measured)]
    d.update({
        "mape_pct": round(100 * statistics.fmean(abs(e) for e in errs), 3),
        "rmspe_pct": round(100 * math.sqrt(statistics.fmean(e * e for e in errs)), 3),
        "bias_pct": round(100 * statistics.fmean(errs), 3),
        "max_abs_error_pct": round(100 * max(abs(e) for e in errs), 3),
        "within_5_pct": round(sum(abs(e) <= 0.05 for e in errs) / n, 4),
        "within_10_pct": round(sum(abs(e) <= 0.10 for e in errs) / n, 4),
    })
    d.update(rank_stats(predicted, measured))
    return d


def rank_stats(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    from scipy import stats as sst

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"kendall_tau": None, "spearman_rho": None}
    tau = sst.kendalltau(x, y).statistic
    rho = sst.spearmanr(x, y).statistic
    return {"kendall_tau": round(float(tau), 4), "spearman_rho": round(float(rho), 4)}


def fit_macs(macs: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """intercept, slope of measured ~ a + b * MACs, least squares on relative error."""
    import numpy as np

    x = np.column_stack([np.ones(len(macs)), np.asarray(macs, dtype=float)])
    y = np.asarray(measured, dtype=float)
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones(len(y)), rcond=None)
    return float(coef[0]), float(coef[1])


def summarize(plan: VerifyPlan, req: VerifyRequest, results: list[NetworkMeasurement], noise: NoiseFloor | None,
             cal: LinearCalibration | None, source: str, fit_report: FitReport | None, failed: dict[str, str],
             timing: dict[str, float], mismatch: list[str], same_run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary JSON; ``same_run`` (:func:`same_run_rows`), when the LUT's rows were measured in this run too,
    gains the accuracy of the prediction from those rows."""
    good = [r for r in results if r.status != INVALID]
    held = [r for r in good if r.split == HELD_OUT]
    calib = [r for r in good if r.split == CALIBRATION]

    def acc(rs: list[NetworkMeasurement], attr: str) -> dict[str, Any]:
        return accuracy([getattr(r, attr) for r in rs], [r.measured_us for r in rs])

    macs: dict[str, Any] = {
        "all": rank_stats([r.arch.macs() for r in good], [r.measured_us for r in good]),
        "held_out": rank_stats([r.arch.macs() for r in held], [r.measured_us for r in held]),
    }
    if len(calib) >= 3:
        a, b = fit_macs([r.arch.macs() for r in calib], [r.measured_us for r in calib])
        macs["linear_fit"] = {"intercept_us": round(a, 3), "us_per_mmac": round(b * 1e6, 6)}
        macs["linear_fit_held_out"] = accuracy([a + b * r.arch.macs() for r in held], [r.measured_us for r in held])
    h = plan.lut.header
    calibrated: dict[str, Any] = {"source": source}
    if cal is not None:
        calibrated["held_out"] = acc(held, "calibrated_us")
        calibrated["model"] = cal.model
        calibrated["formula"] = cal.describe()
    summary: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA,
        "command": req.command,
        "lut": str(req.lut_path),
        "lut_header": {k: h[k] for k in ("device", "backend", "format", "runtime", "threads", "affinity", "cpu_model",
                                        "denormals", "loop", "pairing", "timed") if k in h},
        "space": f"{plan.space.name}@{plan.space.resolution}/w{plan.space.width:g}",
        "seed": req.seed,
        "rounds": req.rounds,
        **({"paired_iterations": req.paired} if req.paired else {}),
        "loop": plan.loop.describe(),
        "aggregation": ("sample-level pairing: every iteration times every arch once (its third call in a row) in a "
                        f"fresh seeded order; {req.paired} iterations cut into {req.rounds} consecutive rounds; median "
                        "over rounds of each round's median") if req.paired else
                       "median over rounds of each round's median; rounds interleave all archs in a fresh seeded order",
        "counts": {
            "archs": len(results), "random": sum(r.kind == "random" for r in results),
            "published": sum(r.kind == "published" for r in results), "given": sum(r.kind == "given" for r in results),
            "measured": len(good),
            "calibration": len(calib), "held_out": len(held), "failed": len(results) - len(good),
        },
        "raw": {"all": acc(good, "predicted_us"), "held_out": acc(held, "predicted_us")},
        "calibrated": calibrated,
        "macs": macs,
        "noise_floor": _noise_dict(noise, [r.measured_us for r in held], req.seed),
        "round_spread_pct_median": _median_or_none([r.round_spread_pct for r in good]),
        "goals": dict(GOALS),
        "prediction": "interpolated on the LUT's grid" if "grid" in h else "sum of the LUT rows",
        "notes": list(plan.notes),
        "published": _by_name(results, "published"),
        "given": _by_name(results, "given"),
        "failed": failed,
        "identity_mismatch": mismatch,
        "timing_s": timing,
        "fbprof": __version__,
    }
    if same_run is not None:
        both = [r for r in good if r.same_run_us is not None]
        summary["same_run_rows"] = {**same_run, "raw": {"all": acc(both, "same_run_us"),
                                                         "held_out": acc([r for r in both if r.split == HELD_OUT], "same_run_us")}}
    if fit_report is not None:
        summary["calibration"] = {"chosen": fit_report.chosen, "loo_rmspe_pct": {k: round(v, 3) for k, v in fit_report.loo_rmspe_pct.items()},
                                  "fitted_on": fit_report.n, "rule": fit_report.rule,
                                  "intercept_us": round(cal.intercept_us, 3) if cal else None,
                                  "scales": {k: round(v, 5) for k, v in cal.scales.items()} if cal else None,
                                  "models": {m: ("intercept + " if MODELS[m][0] else "") + f"scales per group ({MODELS[m][1]})" for m in MODELS}}
    else:
        summary["calibration"] = {"chosen": None}
    best = summary["calibrated"].get("held_out") or summary["raw"]["held_out"]
    summary["goals_met"] = {
        "within_10_pct": _ge(best.get("within_10_pct"), GOALS["within_10_pct"]),
        "within_5_pct": _ge(best.get("within_5_pct"), GOALS["within_5_pct"]),
        "kendall_tau": _ge(best.get("kendall_tau"), GOALS["kendall_tau"]),
        "judged_on": "calibrated, held-out" if summary["calibrated"].get("held_out") else "raw, held-out",
    }
    return summary


def same_run_rows(lut, rows_now: dict[str, float], rows_failed: dict[str, str], notes: dict[str, list[str]] | None = None,
                  measured: dict[str, str] | None = None) -> dict[str, Any]:
    """What the LUT rows measured beside the networks say: how many, their medians now (µs), and how far they moved
    since the LUT was measured (``now / LUT`` per row: the device's drift, and a change of method when ``measured``
    says the rows were measured otherwise than the LUT's). The prediction from these rows is judged in
    :func:`summarize`."""
    ratios = sorted(v / lut.rows[k].median_us for k, v in rows_now.items() if lut.rows[k].median_us > 0)
    d: dict[str, Any] = {
        "what": "the LUT rows the predictions read, measured again in the same rounds as the networks; "
                "'raw' predicts every network from them (same sum or interpolation as the LUT's)",
        "rows": len(rows_now), "failed": dict(sorted(rows_failed.items())),
        **({"measured": {"here": measured["rows"], "in_the_lut": measured["lut"]}} if measured else {}),
        "notes": {k: v for k, v in sorted((notes or {}).items())},
    }
    if ratios:
        q = statistics.quantiles(ratios, n=10) if len(ratios) >= 2 else [ratios[0]] * 9
        d["now_over_lut"] = {"median": round(statistics.median(ratios), 4), "p10": round(q[0], 4),
                             "p90": round(q[-1], 4), "min": round(ratios[0], 4), "max": round(ratios[-1], 4)}
    d["rows_us"] = {k: round(v, 3) for k, v in sorted(rows_now.items())}
    return d


def _by_name(results: list[NetworkMeasurement], kind: str) -> dict[str, Any]:
    return {r.name: {"predicted_us": round(r.predicted_us, 3),
                     "calibrated_us": None if r.calibrated_us is None else round(r.calibrated_us, 3),
                     **({} if r.same_run_us is None else {"same_run_us": round(r.same_run_us, 3)}),
                     "measured_us": None if r.measured_us is None else round(r.measured_us, 3),
                     "rounds_us": [round(v, 3) for v in r.rounds_us],
                     "round_spread_pct": None if r.round_spread_pct is None else round(r.round_spread_pct, 2)}
            for r in results if r.kind == kind}


def _noise_dict(noise: NoiseFloor | None, held_measured: list[float], seed: int, draws: int = 200) -> dict[str, Any] | None:
    """The noise floor, with the Kendall tau a perfect predictor would reach on the held-out archs.

    The ceiling is simulated: the held-out measured latencies stand for the true ones, each measured
    value gets the noise floor's relative noise (normal, its CV), and tau(truth, noisy) is averaged
    over ``draws`` seeded draws.
    """
    if noise is None:
        return None
    d = noise.to_dict()
    if d.get("cv_pct") is not None and len(held_measured) >= 3:
        import numpy as np
        from scipy import stats as sst

        rng = np.random.default_rng(seed)
        truth = np.asarray(held_measured, dtype=float)
        cv = d["cv_pct"] / 100
        taus = [sst.kendalltau(truth, truth * (1 + cv * rng.standard_normal(len(truth)))).statistic for _ in range(draws)]
        d["perfect_predictor_kendall_tau_held_out"] = round(float(np.mean(taus)), 4)
    return d


def _ge(v: float | None, goal: float) -> bool | None:
    return None if v is None else v >= goal


def _median_or_none(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return round(statistics.median(v), 3) if v else None
