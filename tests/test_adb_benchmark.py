"""benchmark_model on a phone: output parsing (both formats), the command line, and the whole code
path (push, taskset, parse) through the test ADB daemon with a stand-in binary that prints
benchmark_model's output formats (a fixture: real phones run the real binary)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from fbprof.devices.adb_benchmark import benchmark_command, judge_run, parse_benchmark_output, run_stats
from fbprof.artifact import Artifact
from fbprof.devices.profiles import load_profiles
from fbprof.errors import DeviceError, InputError, MeasurementError
from fbprof.loop import LoopConfig

sys.path.insert(0, str(Path(__file__).parent))
from adbd import AdbDaemon, fake_android, make_key  # noqa: E402

NEW_FORMAT = """INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [1]
INFO: Graph: [/data/local/tmp/fbprof/models/k3_e1.tflite]
INFO: Loaded model /data/local/tmp/fbprof/models/k3_e1.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.0123
INFO: Initialized session in 1.52ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=1187 first=903 curr=411 min=396 max=903 avg=420.5 std=12 p5=399 median=412 p95=450

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=2420 first=415 curr=409 min=401 max=455 avg=412.25 std=9 p5=403 median=410 p95=431

INFO: Inference timings in us: Init: 1520, First inference: 903, Warmup (avg): 420.5, Inference (avg): 412.25
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=2.1 overall=2.4
"""

OLD_FORMAT = """STARTING!
Min num runs: [50]
Min runs duration (seconds): [1]
Num threads: [1]
Graph: [/data/local/tmp/mobilenet.tflite]
Initialized session in 0.896ms
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=215 first=12231 curr=2106 min=2065 max=12231 avg=2331.42 std=746

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=459 first=2143 curr=2101 min=2056 max=2656 avg=2177.1 std=124

Average inference timings in us: Warmup: 2331.42, Init: 896, Inference: 2177.1
"""

ALL_SAME = """Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=3 curr=7(all same)
Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 curr=6(all same)
Average inference timings in us: Warmup: 7, Init: 120, Inference: 6
"""


def test_parse_new_format_uses_the_median_and_the_timed_runs():
    run = parse_benchmark_output(NEW_FORMAT)
    assert run.format == "new"
    assert (run.count, run.avg, run.std, run.min, run.max) == (2420, 412.25, 9.0, 401.0, 455.0)
    assert (run.median, run.p5, run.p95) == (410.0, 403.0, 431.0)
    assert run.init_us == 1520.0 and run.warmup_avg_us == 420.5
    stats, notes = run_stats(run)
    assert stats.median == pytest.approx(410e-6) and stats.mean == pytest.approx(412.25e-6)
    assert stats.n == 2420 and stats.repeats == 1 and stats.p10 is None and stats.p90 is None
    assert stats.cv == pytest.approx(9 / 412.25)
    assert not any("median is the average" in n for n in notes)
    assert any("p5=403us p95=431us" in n for n in notes)


def test_parse_old_format_says_the_median_is_the_average():
    run = parse_benchmark_output(OLD_FORMAT)
    assert run.format == "old"
    assert (run.count, run.avg, run.std, run.min, run.max, run.median) == (459, 2177.1, 124.0, 2056.0, 2656.0, None)
    stats, notes = run_stats(run)
    assert stats.median == pytest.approx(2177.1e-6)
    assert "median is the average (this benchmark_model build prints no median)" in notes


def test_parse_all_same_and_the_no_stats_summary():
    run = parse_benchmark_output(ALL_SAME)
    assert (run.count, run.avg, run.std, run.min, run.max) == (50, 6.0, 0.0, 6.0, 6.0)
    older = OLD_FORMAT.replace("Inference: 2177.1", "no stats: 2177.1")
    assert parse_benchmark_output(older).count == 459


def test_parse_failures_name_what_is_missing():
    with pytest.raises(MeasurementError, match="(?s)printed no inference timings.*Failed to load"):
        parse_benchmark_output("STARTING!\nERROR: Failed to load model /x.tflite\n")
    with pytest.raises(MeasurementError, match="no count="):
        parse_benchmark_output("Average inference timings in us: Warmup: 1, Init: 2, Inference: 3\n")


def test_judge_matches_the_loop_rules():
    cfg = LoopConfig(min_runs=50, cv_threshold=0.1)
    assert judge_run(parse_benchmark_output(NEW_FORMAT), cfg) == "ok"
    assert judge_run(parse_benchmark_output(NEW_FORMAT), LoopConfig(min_runs=5000, max_runs=10000)) == "invalid"
    noisy = NEW_FORMAT.replace("avg=412.25 std=9", "avg=412.25 std=90")
    assert judge_run(parse_benchmark_output(noisy), cfg) == "unstable"


def test_command_quotes_every_argument():
    cfg = LoopConfig(warmup_runs=2, warmup_min_s=0.5, min_runs=50, min_time_s=1.0, max_time_s=20.0)
    evil = "/data/local/tmp/a b;touch X $(id)/k'3.tflite"
    cmd = benchmark_command("/data/local/tmp/benchmark_model", evil, cfg, 1, "f0", ("--use_xnnpack=true",))
    parts = shlex.split(cmd)
    assert parts == ["taskset", "f0", "/data/local/tmp/benchmark_model", f"--graph={evil}", "--num_threads=1",
                     "--num_runs=50", "--min_secs=1", "--max_secs=20", "--warmup_runs=2", "--warmup_min_secs=0.5",
                     "--use_xnnpack=true", "2>&1"]


# -- through the daemon ------------------------------------------------------------------------------
STAND_IN = r'''#!/bin/sh
# Stand-in for TFLite's benchmark_model (TEST FIXTURE ONLY): logs its arguments and CPU affinity,
# then prints benchmark_model's output in the format named by $FBPROF_FAKE_BM_FORMAT.
exec "$FBPROF_TEST_PYTHON" - "$@" <<'PYEOF'
import json, os, sys
args = sys.argv[1:]
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
with open(os.environ["FBPROF_FAKE_BM_LOG"], "a") as f:
    f.write(json.dumps({"argv": args, "cpus": sorted(os.sched_getaffinity(0))}) + "\n")
graph = opts.get("graph", "")
if not os.path.isfile(graph):
    print(f"ERROR: Could not open '{graph}'.")
    sys.exit(1)
fmt = os.environ.get("FBPROF_FAKE_BM_FORMAT", "new")
n = int(opts["num_runs"])
std = 90 if fmt == "noisy" else 9
if fmt == "capped":
    n -= 1
head = "" if fmt == "old" else "INFO: "
print(f"{head}Running benchmark for at least {opts['warmup_runs']} iterations and at least {opts['warmup_min_secs']} seconds")
print(f"{head}count=4 first=903 curr=411 min=396 max=903 avg=520.5 std=200" + ("" if fmt == "old" else " p5=396 median=411 p95=903"))
print(f"{head}Running benchmark for at least {opts['num_runs']} iterations and at least {opts['min_secs']} seconds but terminate if exceeding {opts['max_secs']} seconds.")
line = f"count={n} first=415 curr=409 min=401 max=455 avg=412.25 std={std}"
if fmt == "old":
    print(line)
    print("Average inference timings in us: Warmup: 520.5, Init: 1520, Inference: 412.25")
else:
    print(f"INFO: {line} p5=403 median=410 p95=431")
    print("INFO: Inference timings in us: Init: 1520, First inference: 903, Warmup (avg): 520.5, Inference (avg): 412.25")
PYEOF
'''

WEIRD = "dev dir; touch PWNED1 $(touch PWNED2) `touch PWNED3` 'q\" & | <>"


@pytest.fixture
def bench(tmp_path):
    """A daemon whose 'phone' has fake getprop/cpufreq/thermal files, and a stand-in benchmark_model."""
    key = tmp_path / "keys" / "adbkey"
    pub = make_key(key)
    root = tmp_path / "phone"
    env = fake_android(root)
    log = tmp_path / "bm-calls.jsonl"
    env.update(FBPROF_TEST_PYTHON=sys.executable, FBPROF_FAKE_BM_LOG=str(log))
    binary = tmp_path / "benchmark_model"
    binary.write_text(STAND_IN)
    binary.chmod(0o755)
    daemon = AdbDaemon(root, [pub], env=env).start()
    cpu = sorted(os.sched_getaffinity(0))[-1]
    opts = {
        "adbkey": str(key), "benchmark_binary": str(binary), "remote_dir": str(root / WEIRD),
        "affinity": format(1 << cpu, "x"), "thermal_dir": str(root / "sys" / "thermal"),
        "cpu_dir": str(root / "sys" / "cpu"), "transport_timeout_s": "10", "read_timeout_s": "20",
        "backoff_s": "0.01", "reconnect_attempts": "1", "initial_cooldown_s": "0", "run_margin_s": "30",
    }
    yield daemon, opts, log, root, cpu
    daemon.stop()


def _artifact(tmp_path: Path, key: str) -> Artifact:
    folder = tmp_path / "art"
    folder.mkdir(exist_ok=True)
    model = folder / "model.tflite"
    model.write_bytes(b"TFL3 stand-in model bytes")
    x = np.zeros((1, 4, 4, 8), np.float32)
    return Artifact(key, "tflite", model, x, x, "nhwc")


def _open(daemon, opts, fmt=None):
    from fbprof.devices.adb import from_profile

    if fmt:
        daemon.env["FBPROF_FAKE_BM_FORMAT"] = fmt
    return from_profile(load_profiles()["s8"], daemon.address, opts)


def test_benchmark_model_path_push_taskset_parse(bench, tmp_path):
    daemon, opts, log, root, cpu = bench
    key = "k3_e1:8x4x4:8:s1; touch PWNED4 $(touch PWNED5)"
    art = _artifact(tmp_path, key)
    cfg = LoopConfig(warmup_runs=2, warmup_min_s=0.25, min_runs=30, min_time_s=0.5, max_time_s=3.0, retries=0)
    with _open(daemon, opts, "new") as dev:
        fp = dev.fingerprint("litert", 1)
        dev.prepare([art])
        env = dev.before_row(key)
        res = dev.measure(art, "litert", cfg, 1)
    # the stand-in was pushed, then run pinned, with the loop's settings, on the pushed model
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 1
    remote_dir = root / WEIRD
    assert calls[0]["argv"] == [f"--graph={remote_dir}/models/{key}.tflite", "--num_threads=1", "--num_runs=30",
                                "--min_secs=0.5", "--max_secs=3", "--warmup_runs=2", "--warmup_min_secs=0.25"]
    assert calls[0]["cpus"] == [cpu]
    assert any(p.endswith("/benchmark_model") for p in daemon.events("push"))
    assert not [p for p in Path(root).rglob("PWNED*")] and not list(Path.cwd().glob("PWNED*"))
    # parsed into LUT statistics; no output to check
    m = res.measurement
    assert res.output is None and m.status == "ok" and m.stats.n == 30
    assert m.stats.median == pytest.approx(410e-6) and m.stats.min == pytest.approx(401e-6)
    assert fp["runtime"].startswith("tflite benchmark_model ") and fp["affinity"] == f"taskset {opts['affinity']}"
    assert fp["device_model"] == "samsung SM-G950F" and fp["cpu_model"] == "msm8998 (arm64-v8a)"
    assert fp["os"].startswith("Android 9 (SDK 28)") and fp["governor"] == "performance"
    assert env["temp_c"] == "35.0" and env["temp_zone"] == "tsens_tz_sensor1"
    # cleaned up on close
    assert not (remote_dir / "models").exists()


def test_benchmark_model_old_format_capped_and_noisy(bench, tmp_path):
    daemon, opts, log, root, cpu = bench
    art = _artifact(tmp_path, "k5_e3:8x4x4:8:s1")
    cfg = LoopConfig(warmup_runs=1, warmup_min_s=0.0, min_runs=10, min_time_s=0.0, max_time_s=2.0, retries=1,
                     retry_pause_s=0.0)
    with _open(daemon, opts, "old") as dev:
        res = dev.measure(art, "litert", cfg, 1)
        assert res.measurement.status == "ok"
        assert "median is the average (this benchmark_model build prints no median)" in res.measurement.notes
        assert res.measurement.stats.median == pytest.approx(412.25e-6)
        daemon.env["FBPROF_FAKE_BM_FORMAT"] = "capped"
        res = dev.measure(art, "litert", cfg, 1)
        assert res.measurement.status == "invalid" and "hit the cap after 9 of 10 runs" in res.measurement.notes[0]
        daemon.env["FBPROF_FAKE_BM_FORMAT"] = "noisy"
        retries = []
        res = dev.measure(art, "litert", cfg, 1, on_retry=lambda a, cv: retries.append((a, cv)))
        assert res.measurement.status == "unstable" and res.measurement.attempts == 2
        assert retries == [(1, pytest.approx(90 / 412.25))]
    # the model was pushed once for the three runs
    assert len([p for p in daemon.events("push") if p.endswith(".tflite")]) == 1


def test_a_mask_the_device_cannot_take_is_refused_early(bench):
    daemon, opts, log, root, cpu = bench
    with _open(daemon, {**opts, "affinity": "f000000000000000"}) as dev:
        with pytest.raises(DeviceError, match="taskset f000000000000000 fails on the device"):
            dev.fingerprint("litert", 1)
    assert not log.exists()  # benchmark_model never ran


def test_benchmark_model_missing_on_the_phone_says_what_to_do(bench):
    daemon, opts, log, root, cpu = bench
    opts = {k: v for k, v in opts.items() if k != "benchmark_binary"}
    opts["benchmark_model"] = str(root / "nothing here" / "benchmark_model")
    with _open(daemon, opts) as dev:
        with pytest.raises(DeviceError, match="no executable benchmark_model at .*nothing here") as ei:
            dev.fingerprint("litert", 1)
        with pytest.raises(InputError, match="cannot run backend 'onnxruntime'.*benchmark_model runner") as bi:
            dev.check_backend("onnxruntime")
    assert "--benchmark-binary PATH" in str(ei.value) and "--runner python runs it" in str(bi.value)


def test_models_are_pushed_in_batches(bench, tmp_path):
    daemon, opts, log, root, cpu = bench
    arts = []
    for i in range(5):
        folder = tmp_path / f"a{i}"
        folder.mkdir()
        (folder / "model.tflite").write_bytes(b"m%d" % i)
        x = np.zeros((1, 2, 2, 1), np.float32)
        arts.append(Artifact(f"op{i}", "tflite", folder / "model.tflite", x, x, "nhwc"))
    cfg = LoopConfig(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_time_s=0.0, max_time_s=2.0, retries=0)
    with _open(daemon, {**opts, "push_batch": "3"}, "new") as dev:
        dev.prepare(arts)
        pushes = []
        for a in arts:
            dev.measure(a, "litert", cfg, 1)
            pushes.append(len([p for p in daemon.events("push") if p.endswith(".tflite")]))
    assert pushes == [3, 3, 3, 5, 5]
