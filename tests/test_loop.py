"""The measuring loop with a fake clock: deterministic behaviour, no timing thresholds."""

import pytest

from fbprof.loop import INVALID, OK, UNSTABLE, LoopConfig, Stats, measure, run_loop


class FakeClock:
    def __init__(self, durations):
        self.t = 0.0
        self.durations = durations  # function: call index -> seconds
        self.calls = 0

    def __call__(self):
        return self.t

    def work(self):
        self.t += self.durations(self.calls)
        self.calls += 1


def test_min_count_and_min_time_both_met():
    clk = FakeClock(lambda i: 0.002)
    cfg = LoopConfig(warmup_runs=2, warmup_min_s=0.0, min_runs=10, min_time_s=0.1, target_sample_s=0.0)
    res = run_loop(clk.work, cfg, clock=clk)
    assert not res.capped
    assert len(res.samples) == 50  # 0.1 s / 2 ms: time, not count, was the binding limit
    assert all(s == pytest.approx(0.002) for s in res.samples)


def test_sub_millisecond_work_is_repeated_inside_a_sample():
    clk = FakeClock(lambda i: 0.0001)
    cfg = LoopConfig(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_time_s=0.0, target_sample_s=0.001)
    res = run_loop(clk.work, cfg, clock=clk)
    assert res.repeats == 10
    assert res.samples[0] == pytest.approx(0.0001)


def test_cap_before_min_runs_is_invalid():
    clk = FakeClock(lambda i: 0.5)
    cfg = LoopConfig(warmup_runs=0, warmup_min_s=0.0, min_runs=10, min_time_s=0.0, max_time_s=2.0, retries=0)
    m = measure(clk.work, cfg, clock=clk, sleep=lambda s: None)
    assert m.status == INVALID
    assert m.stats.n < 10
    assert "hit the cap" in m.notes[0]


def test_noisy_row_is_remeasured_then_marked_unstable():
    clk = FakeClock(lambda i: 0.001 if i % 2 else 0.003)
    cfg = LoopConfig(warmup_runs=0, warmup_min_s=0.0, min_runs=20, min_time_s=0.0, target_sample_s=0.0, retries=1)
    retries = []
    m = measure(clk.work, cfg, clock=clk, sleep=lambda s: None, on_retry=lambda a, cv: retries.append(a))
    assert retries == [1]
    assert m.attempts == 2 and m.status == UNSTABLE
    assert "after 2 attempts" in m.notes[0]


def test_noisy_then_quiet_keeps_quiet_attempt():
    state = {"quiet": False}
    clk = FakeClock(lambda i: 0.001 if state["quiet"] else (0.001 if i % 2 else 0.004))
    cfg = LoopConfig(warmup_runs=0, warmup_min_s=0.0, min_runs=20, min_time_s=0.0, target_sample_s=0.0, retries=2)
    m = measure(clk.work, cfg, clock=clk, sleep=lambda s: state.update(quiet=True))
    assert m.status == OK and m.attempts == 2 and m.stats.cv == pytest.approx(0.0)


def test_stats_percentiles_need_enough_samples():
    s = Stats.of([1.0, 2.0, 3.0])
    assert s.p10 is None and s.median == 2.0
    s = Stats.of([float(i) for i in range(1, 101)])
    assert s.p10 == pytest.approx(10.9) and s.p90 == pytest.approx(90.1)
    assert s.min == 1 and s.max == 100 and s.n == 100


def test_bad_config():
    with pytest.raises(ValueError):
        LoopConfig(min_runs=0)


def test_paired_sampling_times_each_function_once_per_iteration_after_warm_calls():
    from fbprof.loop import run_paired

    clock = {"t": 0.0}
    calls: list[str] = []

    def fn(name, cost):
        def call():
            calls.append(name)
            clock["t"] += cost
        return call

    fns = {"a": fn("a", 0.001), "b": fn("b", 0.003), "c": fn("c", 0.002)}
    seen = []
    out = run_paired(fns, 5, seed=1, warm=2, clock=lambda: clock["t"], on_iteration=seen.append)
    assert seen == [0, 1, 2, 3, 4]
    assert {k: len(v) for k, v in out.items()} == {"a": 5, "b": 5, "c": 5}
    assert out["b"] == pytest.approx([0.003] * 5) and out["a"] == pytest.approx([0.001] * 5)
    # each function runs warm + 1 times in a row, every function once per iteration, in a seeded order
    runs = [calls[i] for i in range(0, len(calls), 3)]
    assert all(calls[i:i + 3] == [calls[i]] * 3 for i in range(0, len(calls), 3))
    orders = [tuple(runs[i:i + 3]) for i in range(0, 15, 3)]
    assert all(sorted(o) == ["a", "b", "c"] for o in orders) and len(set(orders)) > 1
    calls.clear()
    run_paired(fns, 5, seed=1, warm=2, clock=lambda: clock["t"])
    assert [calls[i] for i in range(0, len(calls), 3)] == runs  # same seed, same order
    with pytest.raises(ValueError):
        run_paired(fns, 0)


def test_paired_rows_judge_the_medians_confidence_interval_not_the_spread():
    from fbprof.loop import describe_pairing, median_ci, paired_measurement, parse_pairing

    cfg = LoopConfig()
    # two modes of the machine (1.0 and 1.5): a wide spread, yet the median is pinned by 60 samples
    xs = [0.001] * 40 + [0.0015] * 20
    m = paired_measurement(xs, cfg, 1.0)
    assert m.stats.cv > cfg.cv_threshold and m.status == OK and m.stats.median == pytest.approx(0.001)
    assert "95% CI of the median +-0.0%" in m.notes[0]
    # few samples spread evenly: the interval is wide
    m = paired_measurement([0.001, 0.0013, 0.0016, 0.0019, 0.0022], cfg, 1.0)
    assert m.status == UNSTABLE
    assert paired_measurement([0.001, 0.002], cfg, 1.0).status == INVALID
    lo, hi = median_ci(list(range(100)))
    assert 38 <= lo <= 41 and 58 <= hi <= 61
    assert parse_pairing(describe_pairing(60)) == (60, 2)
    for bad in ("iterations=0;warm=2", "iterations=5", "x=1;warm=2", "iterations=a;warm=2"):
        with pytest.raises(ValueError, match="pairing"):
            parse_pairing(bad)
