"""`fbprof measure --device local` end to end: LUT written, resume, kill mid-run, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from fbprof.cli import app
from fbprof.lut.table import Journal, read_lut
from fbprof.artifact import check_output
from fbprof.space import load_space

from conftest import fbprof_cmd

runner = CliRunner()
QUICK = ["--min-runs", "5", "--min-time", "0", "--warmup", "1", "--workers", "1", "-q"]


def run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_lut(tmp_path_factory, cache_dir):
    os.environ["FBPROF_CACHE_DIR"] = str(cache_dir.parent)
    out = tmp_path_factory.mktemp("lut") / "tiny.csv"
    res = run("measure", "--space", "tiny", "--out", str(out), *QUICK)
    assert res.exit_code == 0, res.output
    return out


def test_measure_writes_a_valid_complete_lut(tiny_lut):
    lut = read_lut(tiny_lut)
    specs = load_space("tiny").all_specs()
    assert sorted(lut.rows) == [s.key for s in specs]
    h = lut.header
    assert h["device"] == "local" and h["backend"] == "onnxruntime" and h["threads"] == "1"
    assert h["spaces"] == "tiny@32/w1"
    assert h["runtime"].startswith("onnxruntime ")
    assert "bn-calibrated" in h["activations"] and "denormal" in h["denormals"]
    assert h["command"].startswith("fbprof measure --device local --backend onnxruntime --space tiny --resolution 32")
    for key in ("cpu_model", "cores", "governor", "os", "fbprof", "loop"):
        assert key in h
    assert all(r.stats.n >= 5 and r.stats.median > 0 for r in lut.rows.values())
    assert not Journal(tiny_lut).exists()


def test_second_run_measures_nothing(tiny_lut):
    before = tiny_lut.read_text()
    res = run("measure", "--space", "tiny", "--out", str(tiny_lut), *QUICK)
    assert res.exit_code == 0
    assert "measured 0, reused 18" in res.output
    assert tiny_lut.read_text() == before


def test_remeasure_changes_numbers_only(tiny_lut, tmp_path):
    copy = tmp_path / "again.csv"
    copy.write_text(tiny_lut.read_text())
    res = run("measure", "--space", "tiny", "--out", str(copy), "--remeasure", *QUICK)
    assert res.exit_code == 0 and "measured 18" in res.output
    old, new = tiny_lut.read_text().splitlines(), copy.read_text().splitlines()
    assert len(old) == len(new)
    diff = [(a, b) for a, b in zip(old, new) if a.split(",")[0] != b.split(",")[0]]
    # same header (but the --out path in the command line), same keys in the same order: only numbers changed
    assert [a for a, b in diff] == [line for line in old if line.startswith("# command:")]


def test_predict_and_validate_cli(tiny_lut, tmp_path):
    arch = tmp_path / "a.yaml"
    arch.write_text("name: mine\nspace: tiny\nblocks: [k3_e1, k3_e3, skip, k5_e3]\n")
    res = run("predict", str(arch), "--lut", str(tiny_lut))
    assert res.exit_code == 0 and "mine" in res.output and "stem" in res.output
    res = run("lut", "validate", str(tiny_lut))
    assert res.exit_code == 0 and "valid, 18 rows" in res.output
    res = run("predict", "fbnet-b", "--lut", str(tiny_lut))
    assert res.exit_code == 2
    assert "does not cover architecture fbnet-b" in res.output and "stem:3x224x224:16:s2" in res.output


def test_lut_from_another_machine_is_not_mixed(tiny_lut, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text(tiny_lut.read_text().replace("# threads: 1", "# threads: 4"))
    res = run("measure", "--space", "tiny", "--out", str(other), *QUICK)
    assert res.exit_code == 2
    assert "measured differently" in res.output and "threads: '4' there, '1' now" in res.output


@pytest.mark.parametrize("args, message", [
    (["--device", "pixel9"], "unknown device 'pixel9'; known devices: "),
    (["--backend", "tensorrt"], "unknown backend 'tensorrt'; known backends: onnxruntime, torch"),
    (["--space", "nas"], "unknown space 'nas'; known spaces: fbnet, fbnetv2, tiny"),
    (["--min-runs", "0"], "Invalid value"),
])
def test_bad_names_are_errors_listing_valid_ones(tmp_path, args, message):
    res = run("measure", "--space", "tiny", "--out", str(tmp_path / "x.csv"), *args)
    assert res.exit_code != 0
    assert message in res.output


def test_torch_backend(tmp_path):
    sp = tmp_path / "one.yaml"
    sp.write_text("name: one\nresolution: 16\nnum_classes: 4\nstem: {channels: 8, stride: 2}\n"
                  "candidates: [k3_e3]\nstages:\n  - {channels: 8, repeats: 1, stride: 1}\nhead: {channels: 16}\n")
    out = tmp_path / "t.csv"
    res = run("measure", "--space", str(sp), "--backend", "torch", "--out", str(out), *QUICK)
    assert res.exit_code == 0, res.output
    lut = read_lut(out)
    assert lut.header["backend"] == "torch" and lut.header["format"] == "torchscript"
    assert len(lut) == 5 and all(r.status in ("ok", "unstable") for r in lut.rows.values())


def test_legacy_onnx_exporter(tmp_path):
    sp = tmp_path / "one.yaml"
    sp.write_text("name: one\nresolution: 16\nnum_classes: 4\nstem: {channels: 8, stride: 2}\n"
                  "candidates: [k3_e1_g2]\nstages:\n  - {channels: 8, repeats: 1, stride: 1}\nhead: {channels: 16}\n")
    out = tmp_path / "t.csv"
    res = run("measure", "--space", str(sp), "--onnx-exporter", "legacy", "--out", str(out), *QUICK)
    assert res.exit_code == 0, res.output
    lut = read_lut(out)
    assert "--onnx-exporter legacy" in lut.header["command"]
    assert len(lut) == 5 and not any("output differs" in r.note for r in lut.rows.values())


def test_output_check():
    ref = np.linspace(-3, 3, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    assert check_output(ref, ref + 1e-6) is None
    assert "max abs error" in check_output(ref, ref + 0.1)
    assert "NaN" in check_output(ref, np.full_like(ref, np.nan))
    assert "output shape" in check_output(ref, np.zeros((1, 5)))


def _rows_in(path):
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line and not line.startswith(("#", "key,")))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_without_remeasuring(tmp_path, cache_dir, sig):
    out = tmp_path / "tiny.csv"
    env = {**os.environ, "FBPROF_CACHE_DIR": str(cache_dir.parent)}
    # slow enough per op (0.4 s) that the interruption lands mid-run
    args = [*fbprof_cmd(), "measure", "--space", "tiny", "--out", str(out), "--min-runs", "5", "--min-time", "0.4",
            "--warmup", "1", "--workers", "1", "-q"]
    # Ctrl-C as a terminal delivers it: the run starts with SIGINT at its default disposition. A process started
    # in the background by a non-interactive shell (`cmd &`, as a CI runner may start the suite) inherits SIGINT
    # *ignored*, and Python then installs no KeyboardInterrupt handler: the signal would be dropped, by design.
    dfl = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", dfl, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    journal = Journal(out).path
    deadline = time.monotonic() + 120
    while _rows_in(journal) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before 3 rows were journaled:\n" + proc.communicate()[0]
    rows_at_signal = _rows_in(journal)
    proc.send_signal(sig)
    try:
        output = proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode != 0, f"signal sent with {rows_at_signal} rows journaled, the run went on:\n{output}"
    if sig == signal.SIGKILL:
        kept = _rows_in(journal)  # the journal survives a kill
        done_keys = set(Journal(out).read()[1])
    else:
        assert "interrupted: finished rows are saved" in output
        assert not journal.exists()
        done_keys = set(read_lut(out).rows)  # Ctrl-C writes the LUT with the finished rows
        kept = len(done_keys)
    assert 3 <= kept < 18
    before = {k: v for k, v in (Journal(out).read()[1].items() if journal.exists() else read_lut(out).rows.items())}
    res = subprocess.run([*args[:-1]], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"measured {18 - kept}, reused {kept}" in res.stdout.replace("\n", " ")
    lut = read_lut(out)  # strict: no duplicates
    assert len(lut) == 18
    for k in done_keys:  # finished rows were kept as they were, not measured again
        assert lut.rows[k].stats == before[k].stats
    assert not journal.exists()


def test_noisy_rows_are_measured_again_after_other_rows_not_after_an_idle_pause(tmp_path, monkeypatch):
    """A device that measures one attempt at a time (the local one): a noisy row's retry waits for
    retry_pause_s to pass while the next rows are measured; the policy is fbprof.loop's (least noisy valid
    attempt kept, up to `retries`); only the run's last noisy rows sleep, for what is left of their pause."""
    from fbprof.artifact import Artifact
    from fbprof.devices.base import Device
    from fbprof.loop import Attempt, LoopConfig, Stats
    from fbprof.profiler import measure as measure_mod
    from fbprof.profiler.measure import Listener, MeasureRequest, measure_lut
    from fbprof.space import load_space

    class Clock:
        now = 0.0
        sleeps: list = []

        def perf_counter(self):
            return self.now

        def sleep(self, s):
            self.sleeps.append(round(s, 6))
            self.now += s

    clock = Clock()
    monkeypatch.setattr(measure_mod, "time", clock)
    sp = load_space("tiny")
    specs = sp.all_specs()[:3]
    a, b, c = sorted(s.key for s in specs)
    cvs = {a: [0.3, 0.05], b: [0.02], c: [0.2, 0.15]}  # a: noisy then fine; c: noisy twice
    calls = []

    class OneAttempt(Device):
        name = "fake"
        supported_backends = ("onnxruntime",)
        defers_retries = True

        def fingerprint(self, backend, threads):
            return {"device": "fake", "runtime": "fake 1.0", "cores": "4"}

        def measure(self, *args, **kw):
            raise AssertionError("a deferring device is measured one attempt at a time")

        def measure_once(self, artifact, backend, cfg, threads):
            calls.append(artifact.key)
            clock.now += 0.3
            cv = cvs[artifact.key].pop(0)
            return Attempt(Stats(50, 1, 1e-4, 9e-5, 1.1e-4, 1e-4, cv * 1e-4, cv, 9e-5, 2e-4), False, 0.25), np.zeros(1)

    def export_ops(specs, fmt, cache, options=None, workers=1, on_done=None):
        return {s.key: Artifact(s.key, fmt, tmp_path / "m.onnx", np.zeros(1, np.float32), np.zeros(1, np.float32))
                for s in specs}

    monkeypatch.setattr(measure_mod, "export_ops", export_ops)
    retried = []

    class L(Listener):
        def on_retry(self, key, attempt, cv):
            retried.append((key, attempt, cv))

    req = MeasureRequest(specs=specs, out=tmp_path / "t.csv", device=OneAttempt(), backend="onnxruntime",
                         loop=LoopConfig(min_runs=5, retries=1, retry_pause_s=0.5), spaces=[sp.tag])
    summary = measure_lut(req, L())
    # a's retry comes after b and c (0.6 s after its attempt), c's at the end after the rest of its pause
    assert calls == [a, b, c, a, c]
    assert clock.sleeps == [0.2]
    assert retried == [(a, 1, 0.3), (c, 1, 0.2)]
    rows = read_lut(tmp_path / "t.csv").rows
    assert rows[a].status == "ok" and rows[a].stats.cv == 0.05 and "re-measured after a noisy attempt (2 attempts)" in rows[a].note
    assert rows[b].status == "ok" and rows[b].note == ""
    assert rows[c].status == "unstable" and rows[c].stats.cv == 0.15 and "cv 0.150 >= 0.1 after 2 attempts" in rows[c].note
    assert summary.measured == 3 and summary.loop_s == pytest.approx(5 * 0.25)


def test_paired_rows_are_medians_of_interleaved_single_calls_and_do_not_mix_with_loop_rows(tmp_path, cache_dir, remote_device):
    os.environ["FBPROF_CACHE_DIR"] = str(cache_dir.parent)
    out = tmp_path / "paired.csv"
    res = run("measure", "--space", "tiny", "--backend", "torch", "--paired", "7", "--out", str(out), "--workers", "1", "-q")
    assert res.exit_code == 0, res.output
    lut = read_lut(out)
    assert lut.header["pairing"] == "iterations=7;warm=2" and "--paired 7" in lut.header["command"]
    assert lut.pairing() == (7, 2) and lut.header["timed"] == "invoke"
    keys = {s.key for s in load_space("tiny").all_specs() if not s.is_identity}
    assert set(lut.rows) == keys
    for row in lut.rows.values():
        assert row.stats.n == 7 and row.stats.repeats == 1 and row.stats.min <= row.median_us <= row.stats.max
        assert "paired: 95% CI of the median" in row.note and row.status in ("ok", "unstable")
    # loop rows cannot join a paired LUT (nor the reverse): the header says how every row was measured
    res = run("measure", "--space", "tiny", "--backend", "torch", "--out", str(out), *QUICK)
    assert res.exit_code != 0 and "pairing" in res.output and "measured differently" in res.output
    # a device that cannot pair is refused before anything is measured
    from fbprof.errors import InputError
    from fbprof.profiler.measure import MeasureRequest

    with pytest.raises(InputError, match="cannot interleave single samples"):
        MeasureRequest(specs=[], out=tmp_path / "x.csv", device=remote_device, backend="torch", paired=3)
