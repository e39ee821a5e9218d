"""End to end through the test ADB daemon: the python runner builds a real LUT (ONNX Runtime on the
"device", the shared loop), injected faults fail or recover as designed without losing or
duplicating rows, the thermal gate waits and records, settings are checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fbprof.devices.adb import from_profile, parse_settings
from fbprof.devices.profiles import load_profiles, resolve_device
from fbprof.errors import DeviceError, InputError
from fbprof.lut.table import Journal, read_lut
from fbprof.backends.cache import ArtifactCache
from fbprof.profiler.measure import MeasureRequest, measure_lut
from fbprof.space import load_space

sys.path.insert(0, str(Path(__file__).parent))
from adbd import AdbDaemon, Faults, fake_android, make_key, set_temp  # noqa: E402

RUN = " measure onnxruntime "  # a substring of every python-runner measuring command


@pytest.fixture
def phone(tmp_path):
    """(start_daemon, options): daemons share the key and the fake Android files."""
    key = tmp_path / "keys" / "adbkey"
    pub = make_key(key)
    root = tmp_path / "phone"
    env = fake_android(root)
    daemons = []

    def start(faults: Faults | None = None) -> AdbDaemon:
        d = AdbDaemon(root, [pub], env=env, faults=faults or Faults()).start()
        daemons.append(d)
        return d

    opts = {
        "runner": "python", "python": sys.executable, "adbkey": str(key),
        "remote_dir": str(root / "data local tmp" / "fbprof $(touch PWNED)"),
        "thermal_dir": str(root / "sys" / "thermal"), "cpu_dir": str(root / "sys" / "cpu"),
        "transport_timeout_s": "5", "read_timeout_s": "10", "auth_timeout_s": "1", "backoff_s": "0.01",
        "reconnect_attempts": "2", "run_margin_s": "60",
    }
    yield start, opts, root
    for d in daemons:
        d.stop()


def _specs(n: int):
    specs = [s for s in load_space("tiny").all_specs() if not s.is_identity]
    return sorted(specs, key=lambda s: s.key)[:n]


def _measure(daemon, opts, specs, out, loop, cache_dir):
    dev = from_profile(load_profiles()["android"], daemon.address, opts)
    with dev:
        req = MeasureRequest(specs=specs, out=out, device=dev, backend="onnxruntime", threads=1, loop=loop,
                             spaces=["tiny@32/w1"], cache=ArtifactCache(cache_dir))
        return measure_lut(req)


def test_cli_python_runner_builds_the_tiny_lut(phone, tmp_path, cache_dir):
    from typer.testing import CliRunner

    from fbprof.cli import app

    start, opts, root = phone
    daemon = start()
    out = tmp_path / "s8-python.csv"
    args = ["measure", "--device", f"adb:{daemon.address}", "--runner", "python", "--backend", "onnxruntime",
            "--space", "tiny", "--out", str(out), "--min-runs", "5", "--min-time", "0", "--max-time", "5",
            "--warmup", "1", "--workers", "1", "--cache-dir", str(cache_dir), "-q"]
    for k, v in opts.items():
        if k != "runner":
            args += ["--option", f"{k}={v}"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    lut = read_lut(out)
    wanted = {s.key for s in load_space("tiny").all_specs() if not s.is_identity}
    assert set(lut.rows) == wanted
    assert all(row.status in ("ok", "unstable") for row in lut.rows.values()), r.output
    assert all("output not checked" not in row.note for row in lut.rows.values())  # outputs came back, checked
    assert all("temp_c=35.0" in row.env for row in lut.rows.values())
    h = lut.header
    assert h["device"] == "android" and h["runner"] == "python" and h["runtime"].startswith("onnxruntime ")
    assert h["device_model"] == "samsung SM-G950F" and h["transport"] == f"adb tcp {daemon.address}"
    assert len(daemon.events("pull")) == len(wanted)
    assert not list(root.rglob("PWNED"))


@pytest.mark.parametrize("fault, event", [
    # the first three pushes (the loop, the runner and the backend module) go through: the fault hits the first row's push
    (Faults(drop_push_after=1, drop_push_skip=3), "dropped while pushing"),
    (Faults(drop_run=RUN), "dropped while running"),
    (Faults(stall="sync:", stall_skip=3), None),
])
def test_transport_faults_reconnect_and_finish(phone, tmp_path, cache_dir, quick_loop, fault, event):
    start, opts, _ = phone
    daemon = start(fault)
    specs = _specs(2)
    out = tmp_path / "lut.csv"
    summary = _measure(daemon, {**opts, "transport_timeout_s": "3", "read_timeout_s": "6"}, specs, out, quick_loop,
                       cache_dir)
    assert summary.measured == 2 and not summary.failed
    lut = read_lut(out)  # strict: a duplicated row would fail here
    assert sorted(lut.rows) == [s.key for s in specs]
    assert sum("reconnects=1" in r.env for r in lut.rows.values()) == 1
    if event:
        assert any(event in e for e in daemon.events("drop"))
    else:
        assert daemon.events("stall") == ["sync:"]


def test_unplugged_mid_run_keeps_rows_and_resumes(phone, tmp_path, cache_dir, quick_loop):
    start, opts, _ = phone
    specs = _specs(3)
    out = tmp_path / "lut.csv"
    daemon = start(Faults(unplug_after=(RUN, 1)))
    with pytest.raises(DeviceError) as ei:
        _measure(daemon, {**opts, "reconnect_attempts": "1"}, specs, out, quick_loop, cache_dir)
    msg = str(ei.value)
    assert f"lost the connection to adb tcp {daemon.address} while measuring {specs[1].key}" in msg
    assert "connection refused" in msg and "run the same command again" in msg
    first = read_lut(out)
    assert sorted(first.rows) == [specs[0].key]
    assert not Journal(out).exists()
    # the phone is back (another port): only the missing rows are measured
    again = start()
    summary = _measure(again, opts, specs, out, quick_loop, cache_dir)
    assert (summary.measured, summary.reused) == (2, 1)
    final = read_lut(out)
    assert sorted(final.rows) == [s.key for s in specs]
    for k in first.rows:
        assert final.rows[k].cells() == first.rows[k].cells()
    assert len(again.events("shell")) and sum(RUN in c for c in again.events("shell")) == 2


def test_a_device_that_stays_silent_fails_clearly(phone, tmp_path, cache_dir, quick_loop):
    start, opts, _ = phone
    daemon = start(Faults(stall="sync:", stall_skip=3, stall_times=None))  # the rows' pushes stall (after loop, runner, backend)
    out = tmp_path / "lut.csv"
    o = {**opts, "transport_timeout_s": "2", "read_timeout_s": "4", "reconnect_attempts": "1"}
    with pytest.raises(DeviceError, match="lost the connection to .* while pushing .*TcpTimeoutException"):
        _measure(daemon, o, _specs(2), out, quick_loop, cache_dir)
    assert not out.exists()  # no row, a new file: nothing is left behind (no header-only LUT, no journal)
    assert not Journal(out).exists()
    assert daemon.events("stall") == ["sync:", "sync:"]


def test_refused_auth_through_the_cli(phone, tmp_path):
    from typer.testing import CliRunner

    from fbprof.cli import app

    start, opts, _ = phone
    daemon = start(Faults(refuse_auth=True))
    r = CliRunner().invoke(app, ["measure", "--device", f"adb:{daemon.address}", "--profile", "s8", "--space", "tiny",
                                 "--out", str(tmp_path / "x.csv"), "--benchmark-binary", sys.executable,
                                 "--option", f"adbkey={opts['adbkey']}", "--option", "auth_timeout_s=2",
                                 "--option", "transport_timeout_s=2", "--option", "read_timeout_s=2"])
    assert r.exit_code == 4
    assert "accept the RSA prompt on the phone" in r.output
    assert not (tmp_path / "x.csv").exists()
    r = CliRunner().invoke(app, ["measure", "--device", f"adb:{daemon.address}", "--profile", "s8", "--space", "tiny",
                                 "--benchmark-binary", str(tmp_path / "no such binary")])
    assert r.exit_code == 2 and "no such binary: no such file" in r.output


def test_missing_python_on_the_device(phone):
    start, opts, _ = phone
    daemon = start()
    with from_profile(load_profiles()["android"], daemon.address, {**opts, "python": "/nonexistent/py thon"}) as dev:
        with pytest.raises(DeviceError, match="could not start on the device with '/nonexistent/py thon'") as ei:
            dev.fingerprint("onnxruntime", 1)
    assert "--option python=PATH" in str(ei.value)


def test_thermal_gate_waits_bounded_and_records(phone):
    start, opts, root = phone
    daemon = start()
    o = {**opts, "thermal_max_c": "45", "thermal_poll_s": "5", "thermal_wait_s": "12", "initial_cooldown_s": "30",
         "thermal_match": "tsens"}
    with from_profile(load_profiles()["android"], daemon.address, o) as dev:
        sleeps: list[float] = []

        def cools_down(s: float) -> None:  # the phone cools while we wait
            sleeps.append(s)
            if len(sleeps) == 2:
                set_temp(root, 0, 41000)

        dev.sleep = cools_down
        set_temp(root, 0, 80000)
        set_temp(root, 1, 99000)  # the battery zone: not matched by thermal_match
        env = dev.before_row("k3_e1:8x16x16:8:s1")
        assert sleeps == [30, 5]
        assert env == {"cooldown_s": "30", "temp_c": "41.0", "temp_zone": "tsens_tz_sensor1", "thermal_wait_s": "5"}

        sleeps.clear()
        dev.sleep = sleeps.append  # stays hot: the wait is bounded
        set_temp(root, 0, 70500)
        env = dev.before_row("k3_e3:8x16x16:8:s1")
        assert sleeps == [5, 5, 2]
        assert env == {"temp_c": "70.5", "temp_zone": "tsens_tz_sensor1", "thermal_wait_s": "12",
                       "thermal": "still above 45C"}


def test_settings_are_checked():
    s8 = load_profiles()["s8"]
    s = parse_settings(s8.settings, {}, s8.source)
    assert (s.runner, s.affinity, s8.backend, s8.threads) == ("benchmark_model", "f0", "litert", 1)
    assert resolve_device("adb:192.168.1.20:5555", "s8")[1] == "192.168.1.20:5555"
    with pytest.raises(InputError, match="unknown adb device setting 'pyton'"):
        parse_settings({}, {"pyton": "x"}, "p")
    with pytest.raises(InputError, match="affinity 'f0; reboot': expected a hex CPU mask"):
        parse_settings({}, {"affinity": "f0; reboot"}, "p")
    with pytest.raises(InputError, match="--token applies to ios"):
        parse_settings({}, {"token": "abc"}, "p")
    with pytest.raises(InputError, match="--option: device setting thermal_wait_s='soon'"):
        parse_settings({}, {"thermal_wait_s": "soon"}, "p")
    with pytest.raises(InputError, match="read_timeout_s \\(1\\) must be >= transport_timeout_s \\(5\\)"):
        parse_settings({}, {"read_timeout_s": "1", "transport_timeout_s": "5"}, "p")
    with pytest.raises(InputError, match="s8.yaml: device setting runner=\\['x'\\]: expected a string"):
        parse_settings({"runner": ["x"]}, {}, "s8.yaml")
    # a YAML .inf or a fraction where a whole number belongs: a clear error, not a traceback or a silent cut
    for bad in (float("inf"), float("nan"), 1.5):
        with pytest.raises(InputError, match=f"s8.yaml: device setting push_batch={bad!r}: expected a whole number"):
            parse_settings({"push_batch": bad}, {}, "s8.yaml")
    assert parse_settings({"push_batch": 8.0}, {}, "s8.yaml").push_batch == 8
