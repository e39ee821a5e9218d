"""TFLite's ``benchmark_model`` on the phone: its command line and its output, in both formats.

``benchmark_model`` prints aggregate statistics only, one ``count=...`` line per phase (warm-up,
then the timed runs), microseconds per inference::

    count=459 first=2143 curr=2101 min=2056 max=2656 avg=2177.1 std=124                  (older builds)
    INFO: count=1000 first=52162 curr=49785 min=49088 max=686105 avg=63743.2 std=60716 p5=49620 median=51891 p95=68628
    count=50 curr=2000(all same)                                                          (every sample equal)

followed by a summary, ``Average inference timings in us: Warmup: W, Init: I, Inference: X`` (older)
or ``Inference timings in us: Init: I, First inference: F, Warmup (avg): W, Inference (avg): X``.

Mapping to LUT statistics, honestly: ``n`` = count, ``mean`` = avg, ``std`` = std (benchmark_model's
population std), ``min``/``max`` as printed, ``median`` = the median field when the build prints it,
else the average (the row's note says so); p10/p90 stay empty (not printed; p5/p95 go into the note).
Each sample is one inference (``repeats`` = 1). There is no output to check.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from fbprof.errors import MeasurementError
from fbprof.loop import LoopConfig, Stats, judge

__all__ = ["BenchmarkRun", "parse_benchmark_output", "benchmark_command", "run_stats", "judge_run"]

_NUM = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_COUNT_RE = re.compile(r"^(?:[A-Z]+: )?count=(\d+)(?P<rest>.*)$")
_FIELD_RE = re.compile(r"(\w+)=(" + _NUM + r")")
_SAME_RE = re.compile(r"curr=(" + _NUM + r")\(all same\)")
_NEW_SUMMARY = re.compile(r"Inference timings in us: Init: (" + _NUM + r"), First inference: (" + _NUM +
                          r"), Warmup \(avg\): (" + _NUM + r"), Inference \(avg\): (" + _NUM + r")")
_OLD_SUMMARY = re.compile(r"Average inference timings in us: Warmup: (" + _NUM + r"), Init: (" + _NUM +
                          r"), (?:Inference|no stats): (" + _NUM + r")")


@dataclass(frozen=True)
class BenchmarkRun:
    """One benchmark_model run, in microseconds."""

    format: str  # "new" (Inference timings ...) or "old" (Average inference timings ...)
    count: int
    avg: float
    std: float
    min: float
    max: float
    first: float | None = None
    median: float | None = None
    p5: float | None = None
    p95: float | None = None
    init_us: float | None = None
    warmup_avg_us: float | None = None


def _count_lines(text: str) -> list[dict[str, float]]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        m = _COUNT_RE.match(line)
        if not m:
            continue
        fields = {"count": float(m.group(1))}
        rest = m.group("rest")
        same = _SAME_RE.search(rest)
        if same:
            v = float(same.group(1))
            fields.update(curr=v, first=v, min=v, max=v, avg=v, std=0.0)
            rest = rest[same.end():]
        for k, v in _FIELD_RE.findall(rest):
            fields[k] = float(v)
        out.append(fields)
    return out


def parse_benchmark_output(text: str) -> BenchmarkRun:
    """The timed-run statistics of benchmark_model's output (either format)."""
    new = _NEW_SUMMARY.search(text)
    old = _OLD_SUMMARY.search(text)
    if not new and not old:
        tail = "\n".join(line for line in text.strip().splitlines()[-8:])
        raise MeasurementError(f"benchmark_model printed no inference timings; its last lines:\n{tail}")
    end = (new or old).start()
    counts = [c for c in _count_lines(text[:end]) if c["count"] > 0]
    if not counts:
        raise MeasurementError("benchmark_model printed no count=... statistics before its summary")
    c = counts[-1]  # the timed runs (the one before is the warm-up)
    missing = [k for k in ("avg", "min", "max", "std") if k not in c]
    if missing:
        raise MeasurementError(f"benchmark_model's statistics line lacks {', '.join(missing)}: {c}")
    if new:
        init, _first, warm, inf = (float(g) for g in new.groups())
        fmt = "new"
    else:
        warm, init, inf = (float(g) for g in old.groups())  # type: ignore[union-attr]
        fmt = "old"
    return BenchmarkRun(fmt, int(c["count"]), c["avg"], c["std"], c["min"], c["max"], c.get("first"), c.get("median"),
                        c.get("p5"), c.get("p95"), init, warm)


def run_stats(run: BenchmarkRun) -> tuple[Stats, list[str]]:
    """LUT statistics (seconds) of a run, and notes about what they mean."""
    us = 1e-6
    notes = ["benchmark_model: 1 inference per sample"]
    if run.median is not None:
        median = run.median
    else:
        median = run.avg
        notes.append("median is the average (this benchmark_model build prints no median)")
    if run.p5 is not None and run.p95 is not None:
        notes.append(f"p5={run.p5:g}us p95={run.p95:g}us")
    cv = run.std / run.avg if run.avg > 0 else 0.0
    stats = Stats(run.count, 1, median * us, None, None, run.avg * us, run.std * us, cv, run.min * us, run.max * us)
    return stats, notes


def judge_run(run: BenchmarkRun, cfg: LoopConfig) -> str:
    """The shared loop's verdict: too few runs before the time cap is invalid, noisy is unstable."""
    return judge(run_stats(run)[0], run.count < cfg.min_runs, cfg)


def benchmark_command(binary: str, model: str, cfg: LoopConfig, threads: int, affinity: str | None,
                      extra_args: tuple[str, ...] = ()) -> str:
    """The shell command (every part quoted) that measures ``model`` as the loop config asks."""
    args = [
        binary,
        f"--graph={model}",
        f"--num_threads={int(threads)}",
        f"--num_runs={int(cfg.min_runs)}",
        f"--min_secs={cfg.min_time_s:g}",
        f"--max_secs={cfg.max_time_s:g}",
        f"--warmup_runs={int(cfg.warmup_runs)}",
        f"--warmup_min_secs={cfg.warmup_min_s:g}",
        *extra_args,
    ]
    if affinity:
        args = ["taskset", affinity, *args]
    return " ".join(shlex.quote(a) for a in args) + " 2>&1"
