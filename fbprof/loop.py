"""The one measuring loop, and the statistics of its samples.

Standard library only: this file is also copied to devices that run Python (the ADB python runner),
so every device measures with exactly the same loop.

Protocol (after TFLite's benchmark_model, Google Benchmark and pyperf):

1. warm-up: at least ``warmup_runs`` calls and at least ``warmup_min_s`` seconds;
2. calibration: sub-millisecond work is repeated inside one timed sample so that a sample lasts
   about ``target_sample_s`` (the per-inference time is the sample's time divided by the repeats);
3. samples until both ``min_runs`` samples and ``min_time_s`` seconds are reached, capped by
   ``max_runs`` samples and ``max_time_s`` seconds; a row that hits the time cap before ``min_runs``
   samples is *invalid*;
4. a row whose coefficient of variation is >= ``cv_threshold`` is measured again after
   ``retry_pause_s`` (up to ``retries`` times) and marked *unstable* if it stays noisy. The pause is
   a minimum: the profiler measures the next rows during it where the device allows (:class:`Attempts`).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

OK, UNSTABLE, INVALID = "ok", "unstable", "invalid"
STATUSES = (OK, UNSTABLE, INVALID)
MIN_SAMPLES_FOR_PERCENTILES = 10


@dataclass(frozen=True)
class LoopConfig:
    warmup_runs: int = 3
    warmup_min_s: float = 0.05
    min_runs: int = 50
    min_time_s: float = 0.25
    max_runs: int = 10_000
    max_time_s: float = 10.0
    target_sample_s: float = 0.005
    cv_threshold: float = 0.10
    retries: int = 1
    retry_pause_s: float = 0.5

    def __post_init__(self) -> None:
        if self.min_runs < 1 or self.max_runs < self.min_runs:
            raise ValueError("need 1 <= min_runs <= max_runs")
        if self.min_time_s < 0 or self.max_time_s <= 0 or self.max_time_s < self.min_time_s:
            raise ValueError("need 0 <= min_time_s <= max_time_s and max_time_s > 0")
        if self.warmup_runs < 0 or self.retries < 0 or self.target_sample_s < 0:
            raise ValueError("warmup_runs, retries and target_sample_s must be >= 0")

    def describe(self) -> str:
        """The LUT header's ``loop`` field (the one writer; :meth:`parse` is the one reader)."""
        return ";".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    @classmethod
    def parse(cls, text: str, where: str = "loop") -> "LoopConfig":
        """Read :meth:`describe`'s text strictly: every part must be ``name=number`` with a known name;
        fields left out keep their defaults. Raises ValueError naming ``where`` and the bad part."""
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict = {}
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in kinds:
                raise ValueError(f"{where}: {part!r} is not NAME=VALUE with a known loop setting "
                                 f"({', '.join(kinds)})")
            if name in values:
                raise ValueError(f"{where}: {name} given twice")
            try:
                v = int(value) if kinds[name] in (int, "int") else float(value)
            except ValueError:
                raise ValueError(f"{where}: {part!r} is not a number") from None
            if not math.isfinite(v):
                raise ValueError(f"{where}: {part!r} is not finite")
            values[name] = v
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class LoopResult:
    """Per-inference times in seconds, and how they were taken."""

    samples: list[float]
    repeats: int
    capped: bool  # the time or run cap ended sampling before min_runs
    elapsed_s: float  # wall time spent inside this loop (warm-up included)


@dataclass(frozen=True)
class Stats:
    n: int
    repeats: int
    median: float
    p10: float | None
    p90: float | None
    mean: float
    std: float
    cv: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: list[float], repeats: int = 1) -> "Stats":
        if not samples:
            raise ValueError("no samples")
        xs = sorted(samples)
        n = len(xs)
        mean = statistics.fmean(xs)
        std = statistics.stdev(xs) if n > 1 else 0.0
        p10 = p90 = None
        if n >= MIN_SAMPLES_FOR_PERCENTILES:
            q = statistics.quantiles(xs, n=10, method="inclusive")
            p10, p90 = q[0], q[-1]
        return cls(n, repeats, statistics.median(xs), p10, p90, mean, std, std / mean if mean > 0 else 0.0, xs[0], xs[-1])

    def scaled(self, factor: float) -> "Stats":
        """The same statistics in another unit (``cv`` and counts unchanged)."""

        def s(v: float | None) -> float | None:
            return None if v is None else v * factor

        return Stats(self.n, self.repeats, self.median * factor, s(self.p10), s(self.p90), self.mean * factor,
                     self.std * factor, self.cv, self.min * factor, self.max * factor)


@dataclass
class Measurement:
    """The outcome of measuring one op: statistics of the kept attempt, status and history."""

    stats: Stats
    status: str
    attempts: int
    loop_s: float  # total wall time inside measuring loops, all attempts
    notes: list[str] = field(default_factory=list)


def run_loop(
    fn: Callable[[], object],
    cfg: LoopConfig,
    clock: Callable[[], float] = time.perf_counter,
) -> LoopResult:
    """Warm up, calibrate repeats, then take samples of ``fn``'s per-call time."""
    start = clock()
    done = 0
    while done < cfg.warmup_runs or clock() - start < cfg.warmup_min_s:
        t0 = clock()
        fn()
        done += 1
        if clock() - t0 > cfg.max_time_s:  # a single call longer than the cap: stop warming
            break
    # calibrate: how many calls make one sample last target_sample_s
    t0 = clock()
    fn()
    one = max(clock() - t0, 1e-9)
    repeats = max(1, min(10_000, math.ceil(cfg.target_sample_s / one))) if cfg.target_sample_s > 0 else 1
    samples: list[float] = []
    s_start = clock()
    capped = False
    while True:
        elapsed = clock() - s_start
        if len(samples) >= cfg.min_runs and elapsed >= cfg.min_time_s:
            break
        if len(samples) >= cfg.max_runs or elapsed >= cfg.max_time_s:
            capped = len(samples) < cfg.min_runs
            break
        t0 = clock()
        for _ in range(repeats):
            fn()
        samples.append((clock() - t0) / repeats)
    return LoopResult(samples, repeats, capped, clock() - start)


def run_paired(
    fns: dict[str, Callable[[], object]],
    iterations: int,
    seed: int = 0,
    warm: int = 2,
    clock: Callable[[], float] = time.perf_counter,
    on_iteration: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Sample-level interleaving: in each of ``iterations`` iterations, every function once, in a seeded
    fresh order, each timed on its ``warm + 1``-th consecutive call (the first ``warm`` calls untimed, so
    its caches are as hot as in :func:`run_loop`). Returns per-call seconds, one per iteration, by name.

    ``on_iteration(i)`` is called after iteration ``i``. Samples of one iteration lie milliseconds apart, so
    a machine whose speed drifts over seconds (a shared VM's fast and slow modes) shifts them together:
    compare them iteration by iteration."""
    if iterations < 1 or warm < 0:
        raise ValueError("need iterations >= 1 and warm >= 0")
    rng = random.Random(f"paired-{seed}")
    names = sorted(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for it in range(iterations):
        rng.shuffle(names)
        for n in names:
            fn = fns[n]
            for _ in range(warm):
                fn()
            t0 = clock()
            fn()
            out[n].append(clock() - t0)
        if on_iteration is not None:
            on_iteration(it)
    return out


def describe_pairing(iterations: int, warm: int = 2) -> str:
    """The LUT header's ``pairing`` field for rows measured by :func:`run_paired` (the one writer;
    :func:`parse_pairing` is the one reader)."""
    return f"iterations={int(iterations)};warm={int(warm)}"


def parse_pairing(text: str, where: str = "pairing") -> tuple[int, int]:
    """``(iterations, warm)`` from :func:`describe_pairing`'s text; ValueError naming ``where`` otherwise."""
    parts = dict(p.partition("=")[::2] for p in text.split(";") if p)
    try:
        if sorted(parts) != ["iterations", "warm"]:
            raise ValueError
        it, warm = int(parts["iterations"]), int(parts["warm"])
    except ValueError:
        raise ValueError(f"{where}: expected iterations=N;warm=W, got {text!r}") from None
    if it < 1 or warm < 0:
        raise ValueError(f"{where}: need iterations >= 1 and warm >= 0, got {text!r}")
    return it, warm


def median_ci(samples: list[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median (order statistics n/2 -+ z*sqrt(n)/2)."""
    xs = sorted(samples)
    n = len(xs)
    k = max(0, math.floor((n - z * math.sqrt(n)) / 2))
    return xs[min(k, n - 1)], xs[max(0, n - 1 - k)]


def paired_measurement(samples: list[float], cfg: LoopConfig, elapsed_s: float) -> Measurement:
    """One op's row from its :func:`run_paired` samples: the median of single calls, *unstable* when the
    median's 95% confidence interval is wider than +-``cfg.cv_threshold / 2`` (the samples themselves
    spread with the machine's drift, which their median does not follow), *invalid* under 3 samples."""
    st = Stats.of(samples, 1)
    if len(samples) < 3:
        return Measurement(st, INVALID, 1, elapsed_s, [f"only {len(samples)} paired samples"])
    lo, hi = median_ci(samples)
    half = (hi - lo) / 2 / st.median if st.median > 0 else math.inf
    status = OK if half < cfg.cv_threshold / 2 else UNSTABLE
    return Measurement(st, status, 1, elapsed_s, [f"paired: 95% CI of the median +-{100 * half:.1f}%"])


def judge(stats: Stats, capped: bool, cfg: LoopConfig) -> str:
    if capped:
        return INVALID
    if stats.cv >= cfg.cv_threshold:
        return UNSTABLE
    return OK


@dataclass
class Attempt:
    """One measurement attempt, however it was taken (this loop, a phone's runner, a companion app)."""

    stats: Stats
    capped: bool  # the time cap ended sampling before cfg.min_runs samples
    elapsed_s: float
    notes: list[str] = field(default_factory=list)  # facts about this attempt (e.g. what the median means)
    unit: str = "samples"


class Attempts:
    """The one validity policy for every device, one attempt at a time: judge each attempt, keep the least
    noisy valid one, and say whether the row should be measured again (noisy, ``cfg.retries`` not used up).

    :func:`measure_attempts` runs it with a pause before each retry; a caller with other rows to measure
    (:func:`fbprof.profiler.measure.measure_lut` on the local device) measures those in the pause instead."""

    def __init__(self, cfg: LoopConfig) -> None:
        self.cfg = cfg
        self.count = 0
        self.loop_s = 0.0
        self.best: tuple[Attempt, str] | None = None

    def add(self, a: Attempt) -> str:
        """Record one attempt; returns its status."""
        self.count += 1
        self.loop_s += a.elapsed_s
        status = judge(a.stats, a.capped, self.cfg)
        if self.best is None or (status != INVALID and (self.best[1] == INVALID or a.stats.cv < self.best[0].stats.cv)):
            self.best = (a, status)
        return status

    @property
    def wants_retry(self) -> bool:
        return self.best is not None and self.best[1] == UNSTABLE and self.count <= self.cfg.retries

    def result(self) -> Measurement:
        assert self.best is not None, "no attempt recorded"
        a, status = self.best
        cfg = self.cfg
        notes: list[str] = []
        if status == INVALID:
            notes.append(f"hit the cap after {a.stats.n} of {cfg.min_runs} {a.unit}")
        elif status == UNSTABLE:
            notes.append(f"cv {a.stats.cv:.3f} >= {cfg.cv_threshold} after {self.count} attempts")
        elif self.count > 1:
            notes.append(f"re-measured after a noisy attempt ({self.count} attempts)")
        return Measurement(a.stats, status, self.count, self.loop_s, notes + a.notes)


def measure_attempts(
    attempt: Callable[[], Attempt],
    cfg: LoopConfig,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, float], None] | None = None,
) -> Measurement:
    """:class:`Attempts`' policy over ``attempt``: a noisy row is measured again after ``cfg.retry_pause_s``
    (up to ``cfg.retries`` times); the least noisy valid attempt is kept."""
    log = Attempts(cfg)
    while True:
        a = attempt()
        log.add(a)
        if not log.wants_retry:
            break
        if on_retry is not None:
            on_retry(log.count, a.stats.cv)
        sleep(cfg.retry_pause_s)
    return log.result()


def loop_attempt(fn: Callable[[], object], cfg: LoopConfig, clock: Callable[[], float] = time.perf_counter) -> Attempt:
    """One attempt of the loop on ``fn``."""
    res = run_loop(fn, cfg, clock)
    return Attempt(Stats.of(res.samples, res.repeats), res.capped, res.elapsed_s)


def measure(
    fn: Callable[[], object],
    cfg: LoopConfig,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, float], None] | None = None,
) -> Measurement:
    """Run the loop on ``fn`` under :func:`measure_attempts`' policy."""

    return measure_attempts(lambda: loop_attempt(fn, cfg, clock), cfg, sleep, on_retry)
