"""How well does a LUT predict whole networks? Measure random architectures end to end and compare.

:func:`run_verify` draws architectures from the LUT's search space (uniform over the candidates of
every layer, seeded), adds the published FBNet-A/B/C when the space is ``fbnet``, builds each whole
network with :func:`fbprof.profiler.ops.build_arch`, exports it like the LUT's ops (same format and
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

import csv
import io
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from fbprof import __version__
from fbprof.devices.base import Artifact, Device, backend_info
from fbprof.errors import InputError, MeasurementError
from fbprof.fileio import atomic_write_bytes, atomic_write_text
from fbprof.lut.calibration import FitReport, LinearCalibration, MODELS, calibration_of, select_and_fit, store_calibration
from fbprof.lut.predict import predict, require_space
from fbprof.lut.table import Lut, read_lut
from fbprof.profiler.export import ArtifactCache, ExportJob, export_jobs, export_module
from fbprof.profiler.loop import INVALID, OK, LoopConfig
from fbprof.space import Arch, Space, load_arch, load_space

__all__ = [
    "VerifyListener", "VerifyRequest", "VerifyPlan", "ArchResult", "VerifyResult", "NoiseFloor",
    "sample_archs", "published_archs", "plan_verify", "export_archs", "measure_interleaved", "run_verify",
    "accuracy", "loop_from_header", "space_from_header", "write_report", "CSV_COLUMNS", "SUMMARY_SCHEMA",
    "REPORT_FILES", "arch_key",
]

SUMMARY_SCHEMA = 1
CSV_COLUMNS = ("arch", "kind", "split", "predicted_us", "calibrated_us", "measured_us", "error_pct",
               "calibrated_error_pct", "round_spread_pct", "rounds", "macs", "head_channels", "blocks", "status", "note")
REPORT_FILES = {"csv": "verify.csv", "summary": "summary.json", "plot": "verify.png"}
PUBLISHED = ("fbnet-a", "fbnet-b", "fbnet-c")
CALIBRATION, HELD_OUT = "calibration", "held-out"
#: accuracy goals of the issue, per backend
GOALS = {"within_10_pct": 0.99, "within_5_pct": 0.95, "kendall_tau": 0.93}


class VerifyListener:
    """Progress events of :func:`run_verify`. Every method is optional."""

    def on_plan(self, plan: "VerifyPlan") -> None: ...
    def on_export_start(self, count: int) -> None: ...
    def on_export_done(self, name: str) -> None: ...
    def on_measure_start(self, total: int) -> None: ...
    def on_measure_done(self, name: str, round_index: int, median_us: float) -> None: ...
    def on_note(self, message: str) -> None: ...


@dataclass
class VerifyRequest:
    lut_path: Path
    device: Device
    backend: str | None = None  # must match the LUT's backend when given
    space: Space | None = None  # default: the LUT header's single space
    samples: int = 100
    seed: int = 0
    rounds: int = 3
    loop: LoopConfig | None = None  # default: the LUT header's loop
    calibrate: bool = True  # fit a calibration on the calibration split
    store: bool = True  # write the fitted calibration into the LUT header
    calib_fraction: float = 0.3
    noise_repeats: int = 6
    published: bool = True
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    export_workers: int = 1
    export_options: dict = field(default_factory=dict)
    check_atol: float = 1e-3
    command: str = ""

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise InputError("--samples must be >= 0")
        if self.rounds < 1:
            raise InputError("--rounds must be >= 1")
        if self.noise_repeats < 0:
            raise InputError("--noise-repeats must be >= 0")
        if not 0.0 < self.calib_fraction < 1.0:
            raise InputError(f"calibration fraction must be between 0 and 1, got {self.calib_fraction}")


@dataclass
class VerifyPlan:
    lut: Lut
    space: Space
    backend: str
    format: str
    threads: int
    loop: LoopConfig
    archs: list[Arch]
    kinds: dict[str, str]  # name -> random | published
    splits: dict[str, str]  # name -> calibration | held-out
    noise_arch: str | None


@dataclass
class ArchResult:
    arch: Arch
    kind: str
    split: str
    predicted_us: float
    measured_us: float | None = None
    calibrated_us: float | None = None
    rounds_us: list[float] = field(default_factory=list)
    status: str = OK
    note: str = ""

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
    results: list[ArchResult]
    noise: NoiseFloor | None
    calibration: LinearCalibration | None
    calibration_source: str  # "fitted", "stored in the LUT" or "none"
    fit_report: FitReport | None
    summary: dict[str, Any]
    failed: dict[str, str]


# ------------------------------------------------------------------------------------------------
# planning
def loop_from_header(lut: Lut) -> LoopConfig:
    """The LoopConfig recorded in a LUT header's ``loop`` field (defaults where absent)."""
    text = lut.header.get("loop", "")
    kinds = {f.name: f.type for f in fields(LoopConfig)}
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = part.partition("=")
        if not sep or name not in kinds:
            continue
        try:
            values[name] = int(value) if kinds[name] in (int, "int") else float(value)
        except ValueError:
            raise InputError(f"{lut.path}: header loop: {part!r} is not a number") from None
    return LoopConfig(**values)


def space_from_header(lut: Lut) -> Space:
    """The single space named in a LUT header (``spaces: fbnet@224/w1``)."""
    spaces = [s.strip() for s in lut.header.get("spaces", "").split(",") if s.strip() and s.strip() != "-"]
    if len(spaces) != 1:
        raise InputError(f"{lut.path}: header names {len(spaces)} spaces ({', '.join(spaces) or 'none'})",
                         hint="choose one with --space (and --resolution/--width)")
    name, _, rest = spaces[0].partition("@")
    res_s, _, w_s = rest.partition("/w")
    try:
        res, width = int(res_s), float(w_s)
    except ValueError:
        raise InputError(f"{lut.path}: header spaces: cannot read {spaces[0]!r} (expected NAME@RESOLUTION/wWIDTH)") from None
    return load_space(name, res, width)


def sample_archs(space: Space, n: int, seed: int, prefix: str = "rand") -> list[Arch]:
    """``n`` distinct architectures, every layer's block drawn uniformly from its candidates (seeded)."""
    rng = random.Random(seed)
    out: list[Arch] = []
    seen: set[tuple[str, ...]] = set()
    tries = 0
    while len(out) < n:
        blocks = tuple(rng.choice(layer.candidates) for layer in space.layers)
        tries += 1
        if blocks in seen:
            if tries > 100 * (n + 10):
                raise InputError(f"space {space.name} has fewer than {n} distinct architectures")
            continue
        seen.add(blocks)
        out.append(space.arch(blocks, name=f"{prefix}-{len(out):03d}"))
    return out


def published_archs(space: Space) -> list[Arch]:
    """FBNet-A/B/C at the space's resolution and width, when ``space`` is the FBNet space."""
    if space.name != "fbnet":
        return []
    out = []
    for name in PUBLISHED:
        a = load_arch(name, space.resolution, space.width)
        if a.space.layers == space.layers and a.space.stem == space.stem:
            out.append(space.arch(a.blocks, a.head_channels, name=a.name))
    return out


def plan_verify(req: VerifyRequest) -> VerifyPlan:
    lut = read_lut(req.lut_path)
    backend = lut.header["backend"]
    if req.backend is not None and req.backend != backend:
        raise InputError(f"{req.lut_path} was measured with backend {backend!r}, not {req.backend!r}",
                         hint="verify a LUT with the backend it was measured with (leave out --backend)")
    info = backend_info(backend)
    fmt = lut.header.get("format") or info.format
    try:
        threads = int(lut.header["threads"])
    except ValueError:
        raise InputError(f"{req.lut_path}: header threads {lut.header['threads']!r} is not an integer") from None
    space = req.space or space_from_header(lut)
    require_space(lut, space)
    loop = req.loop or loop_from_header(lut)
    archs = sample_archs(space, req.samples, req.seed)
    pub = published_archs(space) if req.published else []
    kinds = {a.name: "random" for a in archs} | {a.name: "published" for a in pub}
    # calibration split: a seeded share of the random archs; everything else is held out
    order = [a.name for a in archs]
    random.Random(f"split-{req.seed}").shuffle(order)
    k = round(req.calib_fraction * len(order)) if req.calibrate else 0
    calib = set(order[:k])
    splits = {a.name: CALIBRATION if a.name in calib else HELD_OUT for a in archs + pub}
    all_archs = archs + pub
    noise = None
    if req.noise_repeats and all_archs:
        noise = "fbnet-c" if "fbnet-c" in kinds else all_archs[0].name
    return VerifyPlan(lut, space, backend, fmt, threads, loop, all_archs, kinds, splits, noise)


# ------------------------------------------------------------------------------------------------
# export
def arch_key(arch: Arch) -> str:
    """Cache identity of a whole network (its name seeds the BN calibration, so it is part of it)."""
    s = arch.space
    return f"arch:{arch.name}:{s.name}@{s.resolution}/w{s.width:g}:h{arch.head_channels}:{'/'.join(arch.blocks)}"


def export_arch(arch: Arch, fmt: str, cache: ArtifactCache, options: dict | None = None) -> Artifact:
    """The artifact of a whole network, from the cache or freshly built and exported."""
    from fbprof.profiler.ops import build_arch, example_input, seed_for

    options = dict(options or {})
    key = arch_key(arch)
    hit = cache.get(key, fmt, options)
    if hit is not None:
        return hit
    net = build_arch(arch)
    s = arch.space
    example = example_input((1, s.in_channels, s.resolution, s.resolution), seed=seed_for(arch.name))
    return export_module(net, example, key, fmt, cache.folder(key, fmt, options), options)


def _export_worker(space_source: str, resolution: int, width: float, blocks: list[str], head: int, name: str,
                   fmt: str, root: str, options: dict) -> None:
    space = load_space(space_source, resolution, width)
    export_arch(space.arch(blocks, head, name=name), fmt, ArtifactCache(root), options)


def export_archs(
    archs: Sequence[Arch],
    fmt: str,
    cache: ArtifactCache,
    options: dict | None = None,
    workers: int = 1,
    on_done: Callable[[str], None] | None = None,
) -> dict[str, Artifact | MeasurementError]:
    """Export whole networks, keyed by arch name (see fbprof.profiler.export.export_jobs)."""
    jobs = [ExportJob(a.name, arch_key(a), _export_worker,
                      (a.space.source, a.space.resolution, a.space.width, list(a.blocks), a.head_channels, a.name))
            for a in archs]
    return export_jobs(jobs, fmt, cache, options, workers, on_done)


# ------------------------------------------------------------------------------------------------
# measuring
def round_order(names: Sequence[str], noise: str | None, replicas: int, rng: random.Random) -> list[tuple[str, int]]:
    """One round's visiting order: the archs shuffled, the noise network's replicas spread evenly.

    Items are (name, replica): replica -1 is an arch's own measurement, 0.. the noise replicas.
    """
    seq: list[tuple[str, int]] = [(n, -1) for n in names]
    rng.shuffle(seq)
    if noise is None or replicas <= 0:
        return seq
    out: list[tuple[str, int]] = []
    slots: dict[int, list[int]] = {}
    for j in range(replicas):
        slots.setdefault(min(len(seq), int((j + 0.5) * len(seq) / replicas)), []).append(j)
    for i in range(len(seq) + 1):
        out += [(noise, j) for j in slots.get(i, [])]
        if i < len(seq):
            out.append(seq[i])
    return out


def measure_interleaved(
    device: Device,
    backend: str,
    threads: int,
    loop: LoopConfig,
    artifacts: dict[str, Artifact],
    rounds: int,
    seed: int,
    noise: str | None = None,
    noise_repeats: int = 0,
    check_atol: float = 1e-3,
    listener: VerifyListener | None = None,
) -> tuple[dict[str, list[float]], list[list[float]], dict[str, str], dict[str, list[str]]]:
    """Measure every artifact once per round (seeded fresh order each round), ``rounds`` times.

    Returns (per-arch round medians in us, noise replicas' round medians in us [replica][round],
    failures name -> reason, notes name -> [status notes]). The first measurement of an artifact
    checks its output against torch's.
    """
    from fbprof.profiler.session import check_output

    lis = listener or VerifyListener()
    rng = random.Random(f"order-{seed}")
    per_arch: dict[str, list[float]] = {n: [] for n in artifacts}
    noise_r: list[list[float]] = [[] for _ in range(noise_repeats if noise in artifacts else 0)]
    failed: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    checked: set[str] = set()
    total = rounds * (len(artifacts) + len(noise_r))
    lis.on_measure_start(total)
    for r in range(rounds):
        order = round_order(sorted(artifacts), noise if noise_r else None, len(noise_r), rng)
        for name, replica in order:
            if name in failed:
                continue
            art = artifacts[name]
            device.before_row(name)
            try:
                res = device.measure(art, backend, loop, threads)
            except MeasurementError as e:
                failed[name] = e.message
                lis.on_note(e.message)
                continue
            if name not in checked:
                checked.add(name)
                problem = check_output(art.expected, res.output, check_atol)
                if problem:
                    notes.setdefault(name, []).append(problem)
            m = res.measurement
            if m.status != OK:
                who = "" if replica < 0 else f" (noise replica {replica + 1})"
                notes.setdefault(name, []).append(f"round {r + 1}{who}: {m.status}: {'; '.join(m.notes)}")
            us = m.stats.median * 1e6
            if replica < 0:
                per_arch[name].append(us)
            else:
                noise_r[replica].append(us)
            lis.on_measure_done(name, r, us)
    return per_arch, noise_r, failed, notes


# ------------------------------------------------------------------------------------------------
# statistics
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


def _fit_macs(macs: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """intercept, slope of measured ~ a + b * MACs, least squares on relative error."""
    import numpy as np

    x = np.column_stack([np.ones(len(macs)), np.asarray(macs, dtype=float)])
    y = np.asarray(measured, dtype=float)
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones(len(y)), rcond=None)
    return float(coef[0]), float(coef[1])


# ------------------------------------------------------------------------------------------------
def run_verify(req: VerifyRequest, listener: VerifyListener | None = None, export_only: bool = False) -> VerifyResult | None:
    """Plan, export, measure, calibrate and summarise. ``export_only`` stops after the export (None)."""
    lis = listener or VerifyListener()
    t0 = time.perf_counter()
    plan = plan_verify(req)
    req.device.check_backend(plan.backend)
    lis.on_plan(plan)
    mismatch = _identity_mismatch(plan, req)
    for m in mismatch:
        lis.on_note(f"the LUT was measured differently: {m}")
    lis.on_export_start(len(plan.archs))
    t_exp = time.perf_counter()
    exported = export_archs(plan.archs, plan.format, req.cache, req.export_options, req.export_workers, lis.on_export_done)
    export_s = time.perf_counter() - t_exp
    failed = {n: a.message for n, a in exported.items() if isinstance(a, MeasurementError)}
    for n, why in failed.items():
        lis.on_note(f"{n}: {why}")
    if export_only:
        return None
    artifacts = {n: a for n, a in exported.items() if isinstance(a, Artifact)}
    t_meas = time.perf_counter()
    per_arch, noise_r, mfailed, notes = measure_interleaved(
        req.device, plan.backend, plan.threads, plan.loop, artifacts, req.rounds, req.seed,
        plan.noise_arch, req.noise_repeats, req.check_atol, lis)
    measure_s = time.perf_counter() - t_meas
    failed.update(mfailed)

    results: list[ArchResult] = []
    for a in plan.archs:
        r = ArchResult(a, plan.kinds[a.name], plan.splits[a.name], predict(a, plan.lut).total_us)
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
    if req.calibrate:
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

    summary = _summary(plan, req, results, noise, cal, source, fit_report, failed,
                       {"export_s": round(export_s, 1), "measure_s": round(measure_s, 1),
                        "total_s": round(time.perf_counter() - t0, 1)}, mismatch)
    if cal is not None and source == "fitted" and req.store:
        info = {"fitted_on": summary["counts"]["calibration"], "seed": req.seed, "rounds": req.rounds,
                "held_out": {k: summary["calibrated"]["held_out"].get(k) for k in ("n", "mape_pct", "within_5_pct", "within_10_pct")},
                "fbprof": __version__}
        store_calibration(str(req.lut_path), cal, info)
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


def _summary(plan: VerifyPlan, req: VerifyRequest, results: list[ArchResult], noise: NoiseFloor | None,
             cal: LinearCalibration | None, source: str, fit_report: FitReport | None, failed: dict[str, str],
             timing: dict[str, float], mismatch: list[str]) -> dict[str, Any]:
    good = [r for r in results if r.status != INVALID]
    held = [r for r in good if r.split == HELD_OUT]
    calib = [r for r in good if r.split == CALIBRATION]

    def acc(rs: list[ArchResult], attr: str) -> dict[str, Any]:
        return accuracy([getattr(r, attr) for r in rs], [r.measured_us for r in rs])

    macs: dict[str, Any] = {
        "all": rank_stats([r.arch.macs() for r in good], [r.measured_us for r in good]),
        "held_out": rank_stats([r.arch.macs() for r in held], [r.measured_us for r in held]),
    }
    if len(calib) >= 3:
        a, b = _fit_macs([r.arch.macs() for r in calib], [r.measured_us for r in calib])
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
                                        "denormals", "loop") if k in h},
        "space": f"{plan.space.name}@{plan.space.resolution}/w{plan.space.width:g}",
        "seed": req.seed,
        "rounds": req.rounds,
        "loop": plan.loop.describe(),
        "aggregation": "median over rounds of each round's median; rounds interleave all archs in a fresh seeded order",
        "counts": {
            "archs": len(results), "random": sum(r.kind == "random" for r in results),
            "published": sum(r.kind == "published" for r in results), "measured": len(good),
            "calibration": len(calib), "held_out": len(held), "failed": len(results) - len(good),
        },
        "raw": {"all": acc(good, "predicted_us"), "held_out": acc(held, "predicted_us")},
        "calibrated": calibrated,
        "macs": macs,
        "noise_floor": _noise_dict(noise, [r.measured_us for r in held], req.seed),
        "round_spread_pct_median": _median_or_none([r.round_spread_pct for r in good]),
        "goals": dict(GOALS),
        "published": {r.name: {"predicted_us": round(r.predicted_us, 3),
                               "calibrated_us": None if r.calibrated_us is None else round(r.calibrated_us, 3),
                               "measured_us": None if r.measured_us is None else round(r.measured_us, 3)}
                      for r in results if r.kind == "published"},
        "failed": failed,
        "identity_mismatch": mismatch,
        "timing_s": timing,
        "fbprof": __version__,
    }
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


# ------------------------------------------------------------------------------------------------
# reports
def _f(v: float | None, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def format_csv(results: Sequence[ArchResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        err = None if r.measured_us is None else 100 * (r.predicted_us - r.measured_us) / r.measured_us
        cerr = None if r.measured_us is None or r.calibrated_us is None else 100 * (r.calibrated_us - r.measured_us) / r.measured_us
        w.writerow([r.name, r.kind, r.split, _f(r.predicted_us), _f(r.calibrated_us), _f(r.measured_us), _f(err, 3),
                    _f(cerr, 3), _f(r.round_spread_pct, 3), " ".join(f"{x:.3f}" for x in r.rounds_us), r.arch.macs(),
                    r.arch.head_channels, " ".join(r.arch.blocks), r.status, r.note])
    return buf.getvalue()


def write_report(result: VerifyResult, out_dir: str | Path) -> dict[str, Path]:
    """Write verify.csv, summary.json and verify.png into ``out_dir`` (atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in REPORT_FILES.items()}
    atomic_write_text(paths["csv"], format_csv(result.results))
    atomic_write_text(paths["summary"], json.dumps(result.summary, indent=1, sort_keys=False) + "\n")
    atomic_write_bytes(paths["plot"], plot_png(result))
    return paths


def plot_png(result: VerifyResult) -> bytes:
    """Predicted vs measured (raw, calibrated) with a +-10% band, and MACs vs measured beside it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    good = [r for r in result.results if r.measured_us is not None and r.status != INVALID]
    s = result.summary
    fig = Figure(figsize=(13, 5.8), dpi=110)
    ax, bx = fig.subplots(1, 2)
    meas = [r.measured_us / 1000 for r in good]
    every = meas + [r.predicted_us / 1000 for r in good] + [r.calibrated_us / 1000 for r in good if r.calibrated_us is not None]
    lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
    pad = 0.08 * (hi - lo or hi or 1.0)
    xs = [max(0.0, lo - pad), hi + pad]
    ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="tab:green", alpha=0.12, label="±10%")
    ax.plot(xs, [x * 0.95 for x in xs], color="tab:green", lw=0.6, ls="--", label="±5%")
    ax.plot(xs, [x * 1.05 for x in xs], color="tab:green", lw=0.6, ls="--")
    ax.plot(xs, xs, color="black", lw=0.8)
    raw = s["raw"]["held_out"]
    ax.scatter(meas, [r.predicted_us / 1000 for r in good], s=14, color="tab:blue", alpha=0.7,
               label=f"raw LUT sum (held-out MAPE {raw.get('mape_pct', float('nan')):.1f}%, τ {raw.get('kendall_tau') or float('nan'):.3f})")
    held_c = [r for r in good if r.calibrated_us is not None and r.split == HELD_OUT]
    if held_c:
        c = s["calibrated"]["held_out"]
        ax.scatter([r.measured_us / 1000 for r in held_c], [r.calibrated_us / 1000 for r in held_c], s=14, marker="^",
                   color="tab:orange", alpha=0.8,
                   label=f"calibrated, held-out (MAPE {c.get('mape_pct', float('nan')):.1f}%, "
                         f"{100 * c.get('within_5_pct', 0):.0f}% within ±5%)")
    for r in good:
        if r.kind == "published":
            ax.annotate(r.name, (r.measured_us / 1000, r.predicted_us / 1000), fontsize=7, xytext=(3, -8),
                        textcoords="offset points")
    ax.set_xlim(xs)
    ax.set_ylim(xs)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    lh = s["lut_header"]
    ax.set_title(f"LUT prediction vs measurement: {lh.get('device', '?')} / {lh.get('backend', '?')}, "
                 f"{s['counts']['measured']} networks", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    tau_m = s["macs"]["all"].get("kendall_tau")
    bx.scatter([r.arch.macs() / 1e6 for r in good], meas, s=14, color="tab:purple", alpha=0.7,
               label=f"MACs (τ {tau_m if tau_m is not None else float('nan'):.3f} to measured)")
    for r in good:
        if r.kind == "published":
            bx.annotate(r.name, (r.arch.macs() / 1e6, r.measured_us / 1000), fontsize=7, xytext=(3, -8),
                        textcoords="offset points")
    bx.set_xlabel("MACs (millions)")
    bx.set_ylabel("measured latency (ms)")
    bx.set_title("FLOPs proxy: MACs vs measured latency", fontsize=10)
    bx.legend(fontsize=7, loc="upper left")
    bx.grid(alpha=0.3)
    nf = s.get("noise_floor") or {}
    if nf.get("spread_pct") is not None:
        fig.text(0.01, 0.01, f"noise floor ({nf['arch']}, {nf['replicas']} interleaved replicas of {s['rounds']} rounds): "
                 f"spread {nf['spread_pct']:.1f}%, CV {nf['cv_pct']:.1f}%", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
