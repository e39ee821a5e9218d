"""The test ADB daemon checked with two independent clients (adb-shell and Debian's official adb),
fbprof's key handling, and the link's error messages."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fbprof.devices.adb_link import AdbLink, ensure_key, parse_address
from fbprof.errors import DeviceError

sys.path.insert(0, str(Path(__file__).parent))
from adbd import AdbDaemon, Faults, free_port, make_key  # noqa: E402


@pytest.fixture
def keyed(tmp_path):
    key = tmp_path / "home" / ".android" / "adbkey"
    pub = make_key(key)
    daemon = AdbDaemon(tmp_path / "phone", [pub]).start()
    yield daemon, key
    daemon.stop()


def test_key_is_created_2048_bit_0600(tmp_path):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = tmp_path / "new" / ".android" / "adbkey"
    ensure_key(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_pem_private_key(key.read_bytes(), None).key_size == 2048
    pub = Path(str(key) + ".pub").read_text()
    before = key.read_bytes()
    ensure_key(key)  # an existing key is kept
    assert key.read_bytes() == before and Path(str(key) + ".pub").read_text() == pub


def test_addresses():
    assert parse_address(None) == ("usb", None, None)
    assert parse_address("R58M123ABC") == ("usb", "R58M123ABC", None)
    assert parse_address("192.168.1.20:5555") == ("tcp", "192.168.1.20", 5555)
    assert parse_address("192.168.1.20") == ("tcp", "192.168.1.20", 5555)
    assert parse_address("phone.local:40001") == ("tcp", "phone.local", 40001)


def test_adb_shell_client(keyed, tmp_path):
    daemon, key = keyed
    link = AdbLink(daemon.address, key, transport_timeout_s=5, read_timeout_s=10, attempts=0)
    try:
        out, rc = link.shell("echo hello; echo err >&2; exit 3", "a test")
        assert (out, rc) == ("hello\nerr\n", 3)
        data = os.urandom(300_000)  # several sync DATA chunks
        src = tmp_path / "blob"
        src.write_bytes(data)
        remote = str(daemon.root / "a dir" / "blob $(x)")
        link.push(src, remote, "pushing")
        assert Path(remote).read_bytes() == data
        link.pull(remote, tmp_path / "back", "pulling")
        assert (tmp_path / "back").read_bytes() == data
        names = link.call("listing", lambda d: [e.filename.decode() for e in d.list(str(daemon.root / "a dir"))])
        assert "blob $(x)" in names
        with pytest.raises(DeviceError, match="refused the push"):
            link.push(src, "/etc/fbprof-outside", "pushing outside")
    finally:
        link.close()
    assert daemon.events("auth") == ["ok"]


def test_wrong_key_is_refused_with_the_rsa_prompt_message(keyed, tmp_path):
    daemon, _ = keyed
    other = tmp_path / "other" / "adbkey"
    make_key(other)
    link = AdbLink(daemon.address, other, transport_timeout_s=2, read_timeout_s=2, auth_timeout_s=2, attempts=2)
    with pytest.raises(DeviceError, match="accept the RSA prompt on the phone") as ei:
        link.connect()
    assert str(other) + ".pub" in str(ei.value)
    assert daemon.events("auth") == ["bad signature", "public key offered, refused"]  # no retry loop


def test_refuse_auth_fault(keyed):
    daemon, key = keyed
    daemon.faults = Faults(refuse_auth=True)
    link = AdbLink(daemon.address, key, transport_timeout_s=2, read_timeout_s=2, auth_timeout_s=2, attempts=0)
    with pytest.raises(DeviceError, match="accept the RSA prompt on the phone"):
        link.connect()


def test_no_device_says_what_was_tried():
    port = free_port()
    link = AdbLink(f"127.0.0.1:{port}", Path("/nonexistent"), attempts=1, backoff_s=0.0)
    link._signers = []
    with pytest.raises(DeviceError, match=f"no device at 127.0.0.1:{port}: connection refused \\(tried TCP"):
        link.connect()


class _FakeUsb:
    def __init__(self, exc):
        self.exc = exc

    def connect(self, **kw):
        raise self.exc

    def close(self):
        pass


def test_usb_messages(monkeypatch):
    from adb_shell.exceptions import UsbDeviceNotFoundError

    class USBErrorBusy(Exception):  # what libusb1 raises when another process claimed the interface
        pass

    link = AdbLink("R58M123ABC", Path("/nonexistent"), attempts=0)
    link._signers = []
    monkeypatch.setattr(link, "_new_device", lambda: _FakeUsb(USBErrorBusy("LIBUSB_ERROR_BUSY [-6]")))
    with pytest.raises(DeviceError, match="an adb server holds the device: `adb kill-server` or use TCP"):
        link.connect()
    monkeypatch.setattr(link, "_new_device", lambda: _FakeUsb(UsbDeviceNotFoundError("none")))
    with pytest.raises(DeviceError, match="no Android device found over USB \\(tried serial R58M123ABC\\)"):
        link.connect()
    # without libusb1 the real constructor says how to get USB support or use TCP
    usb = AdbLink(None, Path("/nonexistent"), attempts=0)
    usb._signers = []
    try:
        import usb1  # noqa: F401
    except ImportError:
        with pytest.raises(DeviceError, match="adb-shell\\[usb\\]"):
            usb.connect()


# -- Debian's official adb ------------------------------------------------------------------------
ADB = shutil.which("adb")
needs_adb = pytest.mark.skipif(ADB is None, reason="Debian's `adb` client is not installed (apt-get install adb)")


@pytest.fixture
def adb_client(tmp_path):
    """Run the official adb with its own server port and HOME (its key), killing the server after."""
    home = tmp_path / "adbhome"
    env = {**os.environ, "HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(free_port())}
    env.pop("ADB_VENDOR_KEYS", None)

    def adb(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([ADB, *args], env=env, capture_output=True, text=True, timeout=60)

    yield adb, home
    adb("kill-server")


@needs_adb
def test_official_adb_client(adb_client, tmp_path):
    adb, home = adb_client
    pub = make_key(home / ".android" / "adbkey")
    with AdbDaemon(tmp_path / "phone", [pub]) as daemon:
        r = adb("connect", daemon.address)
        assert f"connected to {daemon.address}" in r.stdout, r.stdout + r.stderr  # exit status is 0 either way
        assert "\tdevice" in adb("devices").stdout
        r = adb("-s", daemon.address, "shell", "echo hello from; pwd")
        assert r.stdout.splitlines() == ["hello from", str(daemon.root)]
        data = os.urandom(200_000)
        (tmp_path / "up").write_bytes(data)
        remote = str(daemon.root / "x y" / "up")
        r = adb("-s", daemon.address, "push", str(tmp_path / "up"), remote)
        assert r.returncode == 0, r.stderr
        assert Path(remote).read_bytes() == data
        r = adb("-s", daemon.address, "pull", remote, str(tmp_path / "down"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "down").read_bytes() == data


@needs_adb
def test_official_adb_with_an_unknown_key_is_unauthorized(adb_client, tmp_path):
    adb, home = adb_client
    make_key(home / ".android" / "adbkey")
    stranger = make_key(tmp_path / "someone-else" / "adbkey")
    with AdbDaemon(tmp_path / "phone", [stranger]) as daemon:
        r = adb("connect", daemon.address)
        assert r.returncode == 0 and "failed to authenticate" in r.stdout  # adb connect exits 0 on failure
        assert "unauthorized" in adb("devices").stdout
        r = adb("-s", daemon.address, "shell", "echo nope")
        assert r.returncode != 0 and "unauthorized" in r.stderr
        assert "ok" not in daemon.events("auth")
