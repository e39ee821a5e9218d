"""End to end: `fbprof measure --device ios:HOST:PORT --token T` against the reference companion builds
the tiny space's LUT; a companion that dies mid-run stops the run with a DeviceError, keeps the
finished rows, and the next run resumes without losing or duplicating rows."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fbprof.cli import app
from fbprof.companion.phone_server import CompanionServer
from fbprof.devices.profiles import load_profiles, open_device, resolve_device
from fbprof.errors import DeviceError, MeasurementError
from fbprof.lut.table import Journal, read_lut
from fbprof.backends.cache import ArtifactCache
from fbprof.profiler.export import export_ops
from fbprof.loop import INVALID, LoopConfig
from fbprof.profiler.measure import Listener, MeasureRequest, measure_lut
from fbprof.space import load_space

TOKEN = "e2e-token-4567890"
LOOP = LoopConfig(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_time_s=0.0, max_time_s=5.0, retries=0,
                  retry_pause_s=0.0, target_sample_s=0.0005)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One artifact cache for this module's tests even when pytest-xdist runs them in two workers:
    the first worker exports (under a file lock), the other waits and finds everything cached."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "companion-artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def tiny(cache):
    """The tiny space with its ONNX artifacts exported once (the slow part)."""
    sp = load_space("tiny")
    specs = [s for s in sp.all_specs() if not s.is_identity]
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = export_ops(specs, "onnx", ArtifactCache(cache), workers=2)
    assert not [k for k, v in done.items() if isinstance(v, MeasurementError)]
    return sp, sorted(s.key for s in specs)


def test_measure_cli_builds_the_lut_through_the_companion(tiny, cache, tmp_path):
    sp, keys = tiny
    out = tmp_path / "iphone.csv"
    with CompanionServer(TOKEN, "127.0.0.1", 0, store_dir=tmp_path / "store").start() as srv:
        args = ["measure", "--device", f"ios:{srv.address}", "--token", TOKEN, "--space", "tiny", "--out", str(out),
                "--min-runs", "5", "--min-time", "0", "--warmup", "1", "--cache-dir", str(cache), "--quiet"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        assert "ios cannot run coreml; measuring with onnxruntime" in r.output
        assert "VALID" in r.output
        info = CliRunner().invoke(app, ["companion", "info", "--device", f"ios:{srv.address}", "--token", TOKEN])
        assert info.exit_code == 0 and json.loads(info.output)["runtimes"][0]["format"] == "onnx"
        wrong = CliRunner().invoke(app, ["measure", "--device", f"ios:{srv.address}", "--token", "wrong-token",
                                         "--space", "tiny", "--out", str(tmp_path / "no.csv")])
        assert wrong.exit_code == 4
        assert "refused the pairing token (401: missing or wrong pairing token" in wrong.output
        forced = CliRunner().invoke(app, ["measure", "--device", f"ios:{srv.address}", "--token", TOKEN,
                                          "--backend", "coreml", "--space", "tiny", "--out", str(tmp_path / "c.csv")])
        assert forced.exit_code == 2 and "cannot run backend 'coreml'; it runs: onnxruntime" in forced.output
        # the token given as --option (not --token) is accepted too, and kept out of the header's command
        opt = CliRunner().invoke(app, ["measure", "--device", f"ios:{srv.address}", "--option", f"token={TOKEN}",
                                       "--space", "tiny", "--out", str(tmp_path / "opt.csv"), "--min-runs", "5",
                                       "--min-time", "0", "--warmup", "1", "--cache-dir", str(cache), "--quiet"])
        assert opt.exit_code == 0, opt.output
        assert not srv.models  # every uploaded model was deleted
    # the pairing token is a secret: no file that measuring wrote (LUTs, journals, the companion's store,
    # the artifact cache) holds it
    for folder in (tmp_path, cache):
        holders = [p for p in folder.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
        assert not holders, holders
    lut = read_lut(out)
    assert sorted(lut.rows) == keys
    h = lut.header
    assert (h["device"], h["backend"], h["format"], h["compute_units"]) == ("ios", "onnxruntime", "onnx", "all")
    assert h["runtime"].startswith("ONNX Runtime ") and h["companion"].startswith("fbprof-companion ")
    assert h["compute_units_used"] == "cpuOnly"  # what ran: ONNX Runtime's CPU provider
    for row in lut.rows.values():
        assert row.status != INVALID, (row.key, row.note)  # outputs matched torch's, enough samples
        assert row.stats.n >= 5 and row.stats.median > 0
        assert "thermal=unknown" in row.env and "output not checked" not in row.note
        assert "compute_units_used=cpuOnly" in row.env


class _KillAfter(Listener):
    def __init__(self, proc: subprocess.Popen, rows: int) -> None:
        self.proc, self.rows, self.done = proc, rows, 0

    def on_row_done(self, row) -> None:
        self.done += 1
        if self.done == self.rows:
            self.proc.kill()
            self.proc.wait()


def _serve(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-c", "from fbprof.cli import main; main()", "companion", "serve", "--host", "127.0.0.1",
           "--port", "0", "--token", TOKEN, "--store", str(tmp_path / "store")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = proc.stdout.readline()
    m = re.match(r"fbprof companion listening on (127\.0\.0\.1:\d+) \(protocol v1; runs onnx\)$", first.strip())
    assert m, first
    assert proc.stdout.readline().strip() == f"token: {TOKEN}"
    assert proc.stdout.readline().strip() == f"measure with: fbprof measure --device ios:{m.group(1)} --token {TOKEN}"
    return proc, m.group(1)


def _request(tiny, out: Path, address: str, cache_dir: Path) -> tuple[MeasureRequest, object]:
    sp, _ = tiny
    prof, addr = resolve_device(f"ios:{address}", None, load_profiles())
    dev = open_device(prof, addr, {"token": TOKEN, "retries": "2", "backoff_s": "0.01"})
    return MeasureRequest(specs=sp.all_specs(), out=out, device=dev, backend="onnxruntime", loop=LOOP,
                          spaces=["tiny@32/w1"], cache=ArtifactCache(cache_dir)), dev


def test_companion_dying_mid_run_keeps_rows_and_resumes(tiny, cache, tmp_path):
    _, keys = tiny
    out = tmp_path / "lut.csv"
    proc, address = _serve(tmp_path)
    try:
        req, dev = _request(tiny, out, address, cache)
        with dev, pytest.raises(DeviceError) as e:
            measure_lut(req, _KillAfter(proc, 3))
    finally:
        proc.kill()
        proc.wait()
    assert re.search(rf"the companion at {re.escape(address)} did not answer \(info: \w+.*after 3 attempts", str(e.value))
    assert "run the same command again to resume" in str(e.value)
    first = read_lut(out)
    assert len(first.rows) == 3 and not Journal(out).exists()

    proc, address2 = _serve(tmp_path)  # the app restarted (another port)
    try:
        req, dev = _request(tiny, out, address2, cache)
        with dev:
            summary = measure_lut(req)
    finally:
        proc.kill()
        proc.wait()
    assert (summary.reused, summary.measured, summary.failed) == (3, len(keys) - 3, {})
    final = read_lut(out)
    assert sorted(final.rows) == keys
    for k, row in first.rows.items():  # kept as measured before the crash, not measured twice
        assert final.rows[k] == row
    text = out.read_text().splitlines()
    assert len([ln for ln in text if ln and not ln.startswith(("#", "key,"))]) == len(keys)
