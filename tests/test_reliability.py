"""Issue 12: nothing lost, nothing deleted, no secret written, no traceback.

Each test names the item of the issue it covers. Measuring runs here use a fake device and fake
artifacts (no export, no runtime): what is checked is what fbprof writes, reads and refuses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fbprof.artifact import Artifact
from fbprof.devices.base import Device, DeviceResult
from fbprof.errors import FbprofError, FileFormatError, InputError, MissingExtraError
from fbprof.fileio import LockHeld, OutputLock
from fbprof.loop import LoopConfig, Measurement, Stats
from fbprof.lut.table import Journal, format_lut, parse_lut_text, read_lut
from fbprof.profiler import measure as measure_mod
from fbprof.profiler.measure import MeasureRequest, measure_lut
from fbprof.space import SpaceTag, load_arch, load_space, read_data_file

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli(*args: str):
    from fbprof.cli import app

    return runner.invoke(app, list(args))


def no_traceback(r) -> None:
    text = r.output + (r.stderr if r.stderr_bytes is not None else "")
    assert "Traceback" not in text, text
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)


# -- a fake device and fake artifacts ---------------------------------------------------------------
class FakeDevice(Device):
    name = "fake"
    supported_backends = ("onnxruntime",)

    def __init__(self, env: dict | None = None, fingerprint: dict | None = None) -> None:
        self.env = env or {}
        self.fp = fingerprint or {}

    def fingerprint(self, backend, threads):
        return {"device": "fake", "runtime": "fake 1.0", "cores": "4", **self.fp}

    def measure(self, artifact, backend, cfg, threads, on_retry=None):
        st = Stats(5, 1, 1e-4, 9e-5, 1.1e-4, 1e-4, 1e-6, 0.01, 9e-5, 1.2e-4)
        return DeviceResult(Measurement(st, "ok", 1, 0.01), None, dict(self.env))


@pytest.fixture
def fake_exports(monkeypatch, tmp_path):
    def export_ops(specs, fmt, cache, options=None, workers=1, on_done=None):
        out = {}
        for s in specs:
            p = tmp_path / "models" / f"{len(out)}.onnx"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(b"x")
            out[s.key] = Artifact(s.key, fmt, p, np.zeros(1, np.float32), np.zeros(1, np.float32))
        return out

    monkeypatch.setattr(measure_mod, "export_ops", export_ops)


def _request(out: Path, dev: Device, **kw) -> MeasureRequest:
    sp = load_space("tiny")
    return MeasureRequest(specs=sp.all_specs()[:3], out=out, device=dev, backend="onnxruntime",
                          loop=LoopConfig(min_runs=5), spaces=[sp.tag], **kw)


# -- item 1: one writer per LUT -----------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys
    from fbprof.fileio import OutputLock
    lock = OutputLock(sys.argv[1], "fbprof measure --resolution 64").acquire()
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes stdin (or kills this process)
    lock.release()
""")


def _holder(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=env)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_item1_a_second_measure_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "u.csv"
    holder = _holder(out)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        r = subprocess.run([sys.executable, "-c", "from fbprof.cli import main; main()", "measure", "--space", "tiny", "--resolution", "48",
                            "--out", str(out), "--min-runs", "5", "-q"], capture_output=True, text=True, env=env,
                           timeout=300)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"is being measured by another run: pid {holder.pid} on " in r.stderr
    assert "--resolution 64" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not Journal(out).exists()  # the refused run wrote nothing
    assert not Path(str(out) + ".lock").exists()  # the holder removed its lock file


def test_item1_lock_of_a_killed_run_does_not_block_and_is_removed(tmp_path, fake_exports):
    out = tmp_path / "u.csv"
    holder = _holder(out)
    with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
        OutputLock(out).acquire()
    holder.kill()
    holder.wait(timeout=60)
    assert Path(str(out) + ".lock").exists()  # left behind by SIGKILL, but no longer held
    summary = measure_lut(_request(out, FakeDevice()))
    assert summary.measured == 3 and len(read_lut(out)) == 3
    assert not Path(str(out) + ".lock").exists()


def test_item1_measure_lut_refuses_while_locked_in_process(tmp_path, fake_exports):
    out = tmp_path / "u.csv"
    with OutputLock(out, "first run"):
        with pytest.raises(InputError, match="being measured by another run: pid .*first run"):
            measure_lut(_request(out, FakeDevice()))
    assert not out.exists()


def test_a_run_that_fails_before_its_first_row_leaves_no_new_file(tmp_path, monkeypatch, fake_exports):
    def missing(*a, **k):
        raise MissingExtraError("onnxruntime", "ort", "onnxruntime")

    out = tmp_path / "new.csv"
    with monkeypatch.context() as mp:
        mp.setattr(measure_mod, "export_ops", missing)
        with pytest.raises(MissingExtraError):
            measure_lut(_request(out, FakeDevice()))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no header-only LUT, no journal, no lock
    summary = measure_lut(_request(out, FakeDevice()))  # and the next run starts clean
    assert summary.measured == 3 and len(read_lut(out)) == 3
    before = out.read_text()
    with monkeypatch.context() as mp:  # an existing LUT is kept as it was
        mp.setattr(measure_mod, "export_ops", missing)
        with pytest.raises(MissingExtraError):
            measure_lut(_request(out, FakeDevice(), remeasure=True))
    assert out.read_text() == before


# -- item 3: no secret in any file ---------------------------------------------------------------
def test_item3_option_token_is_not_written(tmp_path, monkeypatch):
    seen = {}

    def fake_measure_lut(req, listener=None):
        seen["command"] = req.command
        raise InputError("stop here")

    monkeypatch.setattr("fbprof.profiler.measure.measure_lut", fake_measure_lut)
    r = cli("measure", "--space", "tiny", "--out", str(tmp_path / "x.csv"), "--option", "pin=false",
            "--option", "token=s3cr3t-TOKEN", "--option", "api_secret=hunter2")
    assert "unknown local device setting" in r.output  # the local device takes no token: refused, not ignored


def test_item3_measure_header_command_has_no_token(tmp_path, monkeypatch):
    import fbprof.devices.profiles as profiles

    seen = {}
    monkeypatch.setattr(profiles, "open_device", lambda prof, addr, opts: FakeDevice())

    def fake_measure_lut(req, listener=None):
        seen["command"] = req.command
        raise InputError("stop here")

    monkeypatch.setattr("fbprof.profiler.measure.measure_lut", fake_measure_lut)
    r = cli("measure", "--space", "tiny", "--out", str(tmp_path / "x.csv"), "--option", "token=s3cr3t-TOKEN")
    assert "stop here" in r.output, r.output
    assert "s3cr3t" not in seen["command"] and "--option 'token=<secret>'" in seen["command"]
    r = cli("measure", "--space", "tiny", "--out", str(tmp_path / "x.csv"), "--token", "tok-SECRET-1",
            "--option", "api_password=pw-SECRET-2", "--option", "pin=false")
    assert "stop here" in r.output, r.output
    assert "SECRET" not in seen["command"] and "--option pin=false" in seen["command"]
    assert "'api_password=<secret>'" in seen["command"]


# -- item 4: what a device reports is data ------------------------------------------------------------
def test_item4_device_text_with_newlines_still_gives_a_readable_lut(tmp_path, fake_exports):
    out = tmp_path / "c.csv"
    dev = FakeDevice(env={"thermal": "nominal\nX", "bad;key": "a=b;c", "zone\r": "\x00\u2028"},
                     fingerprint={"device_model": "iPhone\nX", "weird key:": "v\n# spaces: evil"})
    measure_lut(_request(out, dev))
    lut = read_lut(out)  # strict: would list problems for a broken cell
    assert len(lut) == 3
    row = next(iter(lut.rows.values()))
    assert row.env.startswith("bad_key=a_b_c;thermal=nominal X;")
    assert lut.header["device_model"] == "iPhone X" and lut.header["weird_key_"] == "v # spaces: evil"
    assert lut.space_tags() == [load_space("tiny").tag]
    # the same command resumes (reads its own file)
    again = measure_lut(_request(out, dev))
    assert again.measured == 0 and again.reused == 3


def test_item9_threads_above_the_cores_warns(tmp_path, fake_exports):
    notes = []

    class L(measure_mod.Listener):
        def on_note(self, message):
            notes.append(message)

    measure_lut(_request(tmp_path / "t.csv", FakeDevice(), threads=999), L())
    assert any("--threads 999 is more than the device's 4 cores" in n for n in notes)


# -- item 5: YAML bombs --------------------------------------------------------------------------------
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.timeout(20)
def test_item5_alias_bomb_is_refused_at_once(tmp_path):
    assert len(BOMB) < 700
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)
    with pytest.raises(FileFormatError, match="aliases .* are not allowed"):
        load_space(str(f))
    arch = tmp_path / "arch.yaml"
    arch.write_text("space: tiny\nblocks: &b [k3_e1]\nother: *b\n")
    with pytest.raises(FileFormatError, match="aliases"):
        load_arch(str(arch))


def test_item5_data_files_are_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\nname: big\n")
    with pytest.raises(InputError, match="larger than"):
        load_space(str(big))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FileFormatError, match="nested too deeply"):
        read_data_file(deep)
    with pytest.raises(InputError, match="not a regular file"):
        load_space("/dev/zero")


# -- item 6: a LUT header names a space, never a file -----------------------------------------------------
def _lut_text(spaces: str = "tiny@32/w1", rows: str = "", threads: str = "1") -> str:
    return (f"# fbprof-lut v1\n# device: local\n# backend: onnxruntime\n# runtime: x\n# threads: {threads}\n"
            f"# spaces: {spaces}\nkey,status,n,repeats,median_us,p10_us,p90_us,mean_us,std_us,cv,min_us,max_us,env,note\n"
            + rows)


ROW = "k3_e1:8x16x16:8:s1,ok,5,1,10.000,9.000,11.000,10.000,1.000,0.1000,9.000,12.000,,\n"


@pytest.mark.timeout(60)
def test_item6_header_space_cannot_name_a_file(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text(_lut_text("/dev/zero@64/w0.5", ROW))
    r = cli("lut", "validate", str(f))
    assert r.exit_code == 2 and "not a path" in r.output, r.output
    lut = read_lut(f)
    with pytest.raises(FileFormatError, match="not a path"):
        lut.space()
    with pytest.raises(InputError, match="not a space name"):
        SpaceTag("/dev/zero", 64, 0.5).load(tmp_path)
    r = cli("search", "--lut", str(f), "--out", str(tmp_path / "s"), "--epochs", "1")
    assert r.exit_code == 2 and "not a path" in r.output, r.output
    no_traceback(r)


def test_item6_header_space_resolves_next_to_the_lut(tmp_path):
    (tmp_path / "mine.yaml").write_text("name: mine\nresolution: 32\nstem: {channels: 8, stride: 2}\n"
                                        "candidates: [k3_e1, skip]\nstages:\n  - {channels: 8, repeats: 1, stride: 1}\n")
    f = tmp_path / "l.csv"
    f.write_text(_lut_text("mine@32/w1", ROW))
    assert read_lut(f).space().name == "mine"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "l.csv").write_text(f.read_text())
    with pytest.raises(InputError, match="no mine.yaml next to the LUT"):
        read_lut(other / "l.csv").space()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: /dev/zero\nstages: [{channels: 8}]\ncandidates: [k3_e1]\n")
    with pytest.raises(FileFormatError, match="is not a space name"):
        load_space(str(bad))


# -- items 8 and 9: the LUT reader ---------------------------------------------------------------------
@pytest.mark.parametrize("cell, why", [
    ("1.7e308", "out of range"), ("1e13", "out of range"), ("1_0", "not a number"), ("nan", "not a number"),
    ("0x10", "not a number"), ("-1", "negative"),
])
def test_item8_9_latency_cells_are_checked(cell, why):
    row = f"k3_e1:8x16x16:8:s1,ok,5,1,10.000,9.000,11.000,10.000,1.000,0.1000,9.000,{cell},,\n"
    with pytest.raises(FileFormatError, match=why):
        parse_lut_text(_lut_text(rows=row), "x.csv")


def test_item9_zero_latency_is_refused():
    row = "k3_e1:8x16x16:8:s1,ok,5,1,0.000,0.000,0.000,0.000,0.000,0.0000,0.000,0.000,,\n"
    with pytest.raises(FileFormatError, match="median_us must be > 0"):
        parse_lut_text(_lut_text(rows=row), "x.csv")


def test_item8_a_5000_digit_key_is_a_message():
    row = f"k3_e1:{'9' * 5000}x16x16:8:s1,ok,5,1,10.000,9.000,11.000,10.000,1.000,0.1000,9.000,12.000,,\n"
    with pytest.raises(FileFormatError, match="malformed op key"):
        parse_lut_text(_lut_text(rows=row), "x.csv")


def test_item9_bom_and_quoted_resaves_are_read(tmp_path):
    import csv
    import io

    text = _lut_text("tiny@32/w1, fbnet@224/w1", ROW)
    expect = parse_lut_text(text, "x.csv")
    assert parse_lut_text("\ufeff" + text, "x.csv").rows == expect.rows
    for quoting in (csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC):
        buf = io.StringIO()
        w = csv.writer(buf, quoting=quoting, lineterminator="\n")
        for cells in csv.reader(io.StringIO(text)):
            w.writerow(cells)
        f = tmp_path / f"q{quoting}.csv"
        f.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode())
        lut = read_lut(f)
        assert lut.rows == expect.rows and lut.header == expect.header
        assert len(lut.space_tags()) == 2


def test_item8_binary_journal_is_a_message(tmp_path):
    out = tmp_path / "l.csv"
    Journal(out).path.write_bytes(b"\xff\xfe\x00binary" * 10 + b"\n")
    with pytest.raises(FileFormatError, match="not UTF-8"):
        Journal(out).read()


def test_item8_read_only_output_is_a_message(tmp_path, fake_exports):
    if os.geteuid() == 0:
        # root writes anywhere: fake the kernel's answer instead
        import fbprof.fileio as fileio

        def refuse(path, data):
            raise PermissionError(13, "Permission denied", str(path))

        mp = pytest.MonkeyPatch()
        mp.setattr(fileio, "_atomic_write", refuse)
        try:
            from fbprof.lut.table import write_lut

            with pytest.raises(FbprofError, match="cannot write .*: Permission denied"):
                write_lut(tmp_path / "x.csv", {}, [])
        finally:
            mp.undo()
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(FbprofError, match="cannot write"):
            measure_lut(_request(ro / "l.csv", FakeDevice()))
    finally:
        ro.chmod(0o700)


def test_item8_full_disk_is_a_message(tmp_path, monkeypatch):
    import errno

    import fbprof.fileio as fileio
    from fbprof.lut.table import write_lut

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "_atomic_write", full)
    with pytest.raises(FbprofError, match="No space left on device\nhint: free some space"):
        write_lut(tmp_path / "x.csv", {}, [])


# -- item 8: spaces and architectures ------------------------------------------------------------------
@pytest.mark.parametrize("width", ["nan", "inf", "1e308", "-1", "0"])
def test_item8_arch_info_width_is_a_message(width):
    r = cli("arch", "info", "fbnet-b", "--width", width)
    assert r.exit_code == 2 and "width multiplier must be a number in (0, 100]" in r.output, r.output
    no_traceback(r)


def test_item8_arch_file_with_a_string_resolution(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text('space: tiny\nresolution: "64"\nblocks: [k3_e1, k3_e1, k3_e1, k3_e1]\n')
    r = cli("arch", "info", str(f))
    assert r.exit_code == 2 and "resolution: expected an integer, got '64'" in r.output, r.output
    no_traceback(r)


def test_item8_huge_resolution_is_a_message():
    r = cli("arch", "info", "fbnet-b", "--resolution", "10000000")
    assert r.exit_code == 2 and "too large" in r.output, r.output


def test_item8_search_out_is_a_file(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text(_lut_text(rows=ROW))
    out = tmp_path / "file"
    out.write_text("mine")
    r = cli("search", "--lut", str(f), "--out", str(out))
    assert r.exit_code == 2 and "is a file" in r.output, r.output
    assert out.read_text() == "mine"


# -- item 0 and 8: adb without a phone / without adb-shell -------------------------------------------------
def test_item0_no_usb_phone_is_a_message(monkeypatch):
    import adb_shell.adb_device
    from adb_shell.exceptions import UsbDeviceNotFoundError

    import fbprof.devices.adb_link as adb_link

    def no_phone(*a, **kw):  # what AdbDeviceUsb's constructor raises with no phone on the bus
        raise UsbDeviceNotFoundError("No adb devices found")

    monkeypatch.setattr(adb_shell.adb_device, "AdbDeviceUsb", no_phone)
    monkeypatch.setattr(adb_link, "usb_inventory", lambda: ["1d6b:0002 Linux Foundation 2.0 root hub"])
    monkeypatch.setattr(adb_link, "ensure_key", lambda p: p)
    monkeypatch.setattr("fbprof.devices.adb.ensure_key", lambda p: p)
    monkeypatch.setattr(adb_link, "_signers", lambda key: [])
    for device in ("s8", "android"):
        r = cli("measure", "--device", device, "--space", "tiny", "-q", "--option", "reconnect_attempts=0")
        assert r.exit_code == 4, r.output
        for words in ("no Android device found over USB", "check the cable", "USB debugging",
                      "Allow USB debugging?", "adb:PHONE_IP:5555", "USB devices seen: 1d6b:0002 Linux Foundation"):
            assert words in r.output, r.output
        no_traceback(r)


def test_item8_missing_adb_shell_is_a_missing_extra(monkeypatch, tmp_path):
    from fbprof.devices.adb import from_profile
    from fbprof.devices.profiles import load_profiles

    for mod in ("adb_shell", "adb_shell.adb_device", "adb_shell.auth.keygen", "adb_shell.auth.sign_pythonrsa",
                "adb_shell.auth"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    with pytest.raises(MissingExtraError, match="fbprof\\[adb\\]"):
        from_profile(load_profiles()["android"], "127.0.0.1:5555", {"adbkey": str(tmp_path / "new" / "adbkey")})
    assert not (tmp_path / "new").exists()


# -- item 9: options ------------------------------------------------------------------------------------
def test_item9_lut_show_negative_limit_is_refused(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text(_lut_text(rows=ROW))
    r = cli("lut", "show", str(f), "--limit", "-1")
    assert r.exit_code == 2 and "--limit" in r.output and "greater than or equal to 0" in r.output, r.output


def test_item9_onnx_exporter_and_unknown_options_are_checked_first(tmp_path, monkeypatch):
    def never(*a, **kw):
        raise AssertionError("exported before the options were checked")

    monkeypatch.setattr(measure_mod, "export_ops", never)
    r = cli("measure", "--space", "tiny", "--out", str(tmp_path / "x.csv"), "--onnx-exporter", "bogus")
    assert r.exit_code == 2 and "--onnx-exporter 'bogus': expected dynamo or legacy" in r.output, r.output
    r = cli("measure", "--space", "tiny", "--out", str(tmp_path / "x.csv"), "--option", "pinn=1")
    assert r.exit_code == 2 and "unknown local device setting 'pinn'; known: pin" in r.output, r.output
    r = cli("measure", "--space", "tiny", "--out", str(tmp_path / "x.csv"), "--option", "pin=maybe")
    assert r.exit_code == 2 and "pin" in r.output, r.output
    r = cli("measure", "--space", "tiny", "--threads", "5000")
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "x.csv").exists()


def test_item9_model_name_with_a_trailing_newline_is_not_valid():
    from fbprof.companion.protocol import valid_name

    assert valid_name("k3_e1-abc")
    assert not valid_name("k3_e1-abc\n") and not valid_name("a\nb") and not valid_name(None)


# -- item 9: export workers die with their parent ------------------------------------------------------
PARENT = textwrap.dedent("""
    import multiprocessing as mp, os, time
    from concurrent.futures import ProcessPoolExecutor
    from fbprof.backends.cache import _worker_init
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(None, (), None, os.getpid())) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 3600).result()  # a job that does not end: the test kills this process meanwhile
""")


@pytest.mark.timeout(180)
def test_item9_export_workers_die_with_a_killed_parent():
    import select

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                              text=True, env=env)
    worker = int(parent.stdout.readline())
    pidfd = os.pidfd_open(worker)
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=60)
        ready, _, _ = select.select([pidfd], [], [], 120)  # readable when the worker has exited
        assert ready, f"export worker {worker} outlived its SIGKILLed parent"
    finally:
        os.close(pidfd)
        parent.stdin.close()
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- item 2: adb cleanup deletes only what fbprof created ------------------------------------------------
@pytest.mark.parametrize("existing", [True, False])
def test_item2_adb_cleanup_removes_only_what_it_created(tmp_path, existing):
    sys.path.insert(0, str(Path(__file__).parent))
    from adbd import AdbDaemon, fake_android, make_key

    from fbprof.devices.adb import from_profile
    from fbprof.devices.profiles import load_profiles

    key = tmp_path / "keys" / "adbkey"
    pub = make_key(key)
    root = tmp_path / "phone"
    env = fake_android(root)
    remote = root / "data" / "local" / "tmp"  # a user's own folder, as remote_dir
    if existing:
        for sub in ("models", "out"):
            (remote / sub).mkdir(parents=True)
            (remote / sub / "mine.txt").write_text("the user's")
        (remote / "notes.txt").write_text("the user's")
        (remote / "fbprof_loop.py").write_text("# left by an earlier run, or the user's own")  # overwritten, not removed
        (remote / "models" / "k3_e1:8x4x4:8:s1.onnx").write_text("the user's")
    opts = {"runner": "python", "python": sys.executable, "adbkey": str(key), "remote_dir": str(remote),
            "thermal_dir": str(root / "sys" / "thermal"), "cpu_dir": str(root / "sys" / "cpu"),
            "transport_timeout_s": "5", "read_timeout_s": "10", "auth_timeout_s": "1", "reconnect_attempts": "0"}
    with AdbDaemon(root, [pub], env=env).start() as daemon:
        dev = from_profile(load_profiles()["android"], daemon.address, opts)
        with dev:
            dev.fingerprint("onnxruntime", 1)  # sets up: folders, runner files (a run that measures nothing)
            dev.fingerprint("litert", 1)  # a second backend: the folders are this run's by now, none is missing
            model = tmp_path / "m.onnx"
            model.write_bytes(b"model")
            dev._push_one(Artifact("k3_e1:8x4x4:8:s1", "onnx", model, np.zeros(1, np.float32),
                                   np.zeros(1, np.float32)))
            assert (remote / "models" / "k3_e1:8x4x4:8:s1.onnx").exists()
            (remote / "out" / "k3_e1:8x4x4:8:s1.output.npy").write_bytes(b"as the runner writes it")
            # a batch whose existence check is longer than one shell command holds: checked in several
            many = [Artifact(f"k5_e6:{'9' * 60}x{i}:8:s1", "onnx", model, np.zeros(1, np.float32),
                             np.zeros(1, np.float32)) for i in range(30)]
            late = remote / "models" / f"k5_e6:{'9' * 60}x28:8:s1.onnx"  # checked in a later shell command
            if existing:
                late.write_text("the user's")
            dev._push_batch(many)
            assert len(list((remote / "models").glob("k5_e6:*"))) == 60  # model and input of each
    if existing:
        left = sorted(str(p.relative_to(remote)) for p in remote.rglob("*"))
        assert left == ["fbprof_loop.py", "models", "models/k3_e1:8x4x4:8:s1.onnx", f"models/k5_e6:{'9' * 60}x28:8:s1.onnx",
                        "models/mine.txt", "notes.txt", "out", "out/mine.txt"]
    else:
        assert not remote.exists() and (root / "data" / "local").is_dir()  # its parents (made by mkdir -p) are not its to remove
