"""A test ADB daemon (tests only, not part of fbprof): the device side of the ADB protocol over TCP.

It listens on 127.0.0.1 (port 0: the OS picks a free port) and speaks the wire protocol that a phone's
``adbd`` speaks: CNXN, AUTH (the host signs a random token; the signature is checked against the
authorized public keys, unknown keys are refused the way an unanswered RSA prompt refuses them),
OPEN/OKAY/WRTE/CLSE streams, ``shell:`` (v1 raw: output only, no exit status) and ``sync:`` with
STAT/SEND/RECV/LIST/QUIT (v1). Shell commands run on *this* machine with ``/bin/sh`` in the daemon's
scratch folder; sync paths may point anywhere inside that folder (absolute or relative to it).

Faults can be injected to test the client's recovery: drop the connection in the middle of a push
or right after a command starts (a cable pulled out), refuse authentication, stall (stop answering
without closing), or "unplug" for good after a number of commands.

Any ADB client can be pointed at it: adb-shell (``AdbDeviceTcp``) or the official ``adb``
(``adb connect 127.0.0.1:PORT``).
"""

from __future__ import annotations

import base64
import os
import queue
import signal
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

VERSION = 0x01000000
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
SYNC_DATA_MAX = 64 * 1024


def _wire(cmd: bytes) -> int:
    return struct.unpack("<I", cmd)[0]


CNXN, AUTH, OPEN, OKAY, CLSE, WRTE = (_wire(c) for c in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE"))
_NAMES = {v: k for k, v in {"CNXN": CNXN, "AUTH": AUTH, "OPEN": OPEN, "OKAY": OKAY, "CLSE": CLSE, "WRTE": WRTE}.items()}


def public_key_numbers(pub: str) -> tuple[int, int]:
    """(n, e) of a public key in Android's format (base64 of the RSAPublicKey struct, then a comment)."""
    raw = base64.b64decode(pub.strip().split()[0])
    words, _n0inv = struct.unpack_from("<II", raw, 0)
    size = words * 4
    modulus = raw[8:8 + size]
    (e,) = struct.unpack_from("<I", raw, 8 + 2 * size)
    return int.from_bytes(modulus, "little"), e


def verify_token(pub: str, token: bytes, signature: bytes) -> bool:
    """True if ``signature`` is the PKCS#1 v1.5 SHA-1 signature of the (pre-hashed) ``token``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    try:
        n, e = public_key_numbers(pub)
        key = rsa.RSAPublicNumbers(e, n).public_key()
        key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        return True
    except (InvalidSignature, ValueError, struct.error):
        return False


@dataclass
class Faults:
    """Faults to inject. ``*_skip``: matching occasions let through first; ``*_times``: how often the
    fault then fires (None: every time)."""

    refuse_auth: bool = False
    drop_push_after: int | None = None  # drop the connection after this many bytes of a pushed file
    drop_push_skip: int = 0
    drop_push_times: int | None = 1
    drop_run: str | None = None  # drop the connection right after a shell command containing this starts
    drop_run_skip: int = 0
    drop_run_times: int | None = 1
    stall: str | None = None  # stop answering when a service containing this is opened ("sync:", "shell:...")
    stall_skip: int = 0
    stall_times: int | None = 1
    unplug_after: tuple[str, int] | None = None  # (substring, n): after n matching commands the device is gone

    def fire(self, name: str) -> bool:
        skip = getattr(self, f"{name}_skip")
        if skip > 0:
            setattr(self, f"{name}_skip", skip - 1)
            return False
        left = getattr(self, f"{name}_times")
        if left is None:
            return True
        if left <= 0:
            return False
        setattr(self, f"{name}_times", left - 1)
        return True


class _Dropped(Exception):
    pass


@dataclass
class AdbDaemon:
    """The daemon. ``authorized_keys``: public keys (Android format) allowed to connect."""

    root: Path
    authorized_keys: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    banner: str = "device::ro.product.name=fbprof_test;ro.product.model=adbd_test;ro.product.device=fbprof_test;"

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._gone = threading.Event()
        self._run_count = 0
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "AdbDaemon":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        self.port = s.getsockname()[1]
        self._sock = s
        self._thread = threading.Thread(target=self._accept, name="adbd-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Unplug: stop listening and drop every connection."""
        self._gone.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.drop("unplugged")
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "AdbDaemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def events(self, kind: str) -> list[str]:
        with self._lock:
            return [v for k, v in self.log if k == kind]

    def record(self, kind: str, value: str) -> None:
        with self._lock:
            self.log.append((kind, value))

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._gone.is_set():
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            if self._gone.is_set():
                sock.close()
                return
            conn = _Conn(self, sock)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=conn.serve, name="adbd-conn", daemon=True).start()

    def _forget(self, conn: "_Conn") -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)

    # -- paths ------------------------------------------------------------------------------
    def local_path(self, device_path: str) -> Path | None:
        """The file behind a device path, or None when it lies outside the scratch folder."""
        p = Path(device_path)
        p = (self.root / p) if not p.is_absolute() else p
        p = Path(os.path.normpath(p))
        if p == self.root or self.root in p.parents:
            return p
        return None


class _Stream:
    def __init__(self, conn: "_Conn", local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id  # ours
        self.remote_id = remote_id  # the host's
        self.okay = threading.Event()
        self.okay.set()
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    def write(self, data: bytes) -> None:
        step = max(1, min(self.conn.maxdata, MAX_PAYLOAD))
        for i in range(0, len(data), step):
            if not self.okay.wait(timeout=60) or self.closed.is_set() or self.conn.dead.is_set():
                raise _Dropped("no OKAY from the host")
            self.okay.clear()
            self.conn.send(WRTE, self.local_id, self.remote_id, data[i:i + step])

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.conn.send(CLSE, self.local_id, self.remote_id)
        self.conn.streams.pop(self.local_id, None)

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.inbox.get(timeout=120)
            if chunk is None:
                raise _Dropped("stream closed by the host")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def kill(self) -> None:
        self.closed.set()
        self.inbox.put(None)
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


class _Conn:
    def __init__(self, daemon: AdbDaemon, sock: socket.socket) -> None:
        self.d = daemon
        self.sock = sock
        self.wlock = threading.Lock()
        self.dead = threading.Event()
        self.stalled = False
        self.authed = False
        self.token = b""
        self.maxdata = 4096
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1

    # -- wire -------------------------------------------------------------------------------
    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        if self.dead.is_set() or self.stalled:
            return
        head = struct.pack("<6I", cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF)
        try:
            with self.wlock:
                self.sock.sendall(head + data)
        except OSError:
            self.drop("send failed")

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise _Dropped("host closed the connection")
            buf += chunk
        return buf

    def drop(self, why: str) -> None:
        if self.dead.is_set():
            return
        self.dead.set()
        self.d.record("drop", why)
        for s in list(self.streams.values()):
            s.kill()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def serve(self) -> None:
        try:
            while not self.dead.is_set():
                cmd, a0, a1, length, check, magic = struct.unpack("<6I", self._recv_exact(24))
                if magic != cmd ^ 0xFFFFFFFF or length > 1024 * 1024:
                    raise _Dropped("bad packet header")
                data = self._recv_exact(length) if length else b""
                if check and check != (sum(data) & 0xFFFFFFFF):
                    raise _Dropped("bad checksum")
                if self.stalled:
                    continue  # a stalled device reads but never answers
                self.handle(cmd, a0, a1, data)
        except (_Dropped, OSError) as e:
            self.drop(str(e))
        finally:
            self.d._forget(self)

    # -- protocol ---------------------------------------------------------------------------
    def handle(self, cmd: int, a0: int, a1: int, data: bytes) -> None:
        if cmd == CNXN:
            self.maxdata = max(256, min(a1, MAX_PAYLOAD))
            self.authed = False
            self.token = os.urandom(20)
            self.send(AUTH, AUTH_TOKEN, 0, self.token)
        elif cmd == AUTH:
            self.handle_auth(a0, data)
        elif not self.authed:
            return  # everything else needs a connection first
        elif cmd == OPEN:
            self.handle_open(a0, data.rstrip(b"\0").decode("utf-8", "replace"))
        elif cmd == OKAY:
            s = self.streams.get(a1)
            if s is not None:
                s.okay.set()
        elif cmd == WRTE:
            s = self.streams.get(a1)
            if s is not None:
                s.inbox.put(data)
                self.send(OKAY, s.local_id, s.remote_id)
        elif cmd == CLSE:
            s = self.streams.pop(a1, None)
            if s is not None:  # the host closed the stream: stop its work and confirm
                s.kill()
                self.send(CLSE, s.local_id, s.remote_id)

    def handle_auth(self, kind: int, data: bytes) -> None:
        f = self.d.faults
        if kind == AUTH_SIGNATURE:
            ok = not f.refuse_auth and any(verify_token(k, self.token, data) for k in self.d.authorized_keys)
            if ok:
                self.d.record("auth", "ok")
                self.authed = True
                self.send(CNXN, VERSION, MAX_PAYLOAD, self.d.banner.encode() + b"\0")
            else:
                self.d.record("auth", "bad signature")
                self.token = os.urandom(20)
                self.send(AUTH, AUTH_TOKEN, 0, self.token)
        elif kind == AUTH_RSAPUBLICKEY:
            # A phone shows the "Allow USB debugging?" prompt here. This one never accepts a key it
            # does not already know: the host waits for an answer that does not come.
            self.d.record("auth", "public key offered, refused")

    def handle_open(self, remote_id: int, service: str) -> None:
        f = self.d.faults
        if f.stall and f.stall in service and f.fire("stall"):
            self.d.record("stall", service)
            self.stalled = True
            return
        local_id = self.next_id
        self.next_id += 1
        s = _Stream(self, local_id, remote_id)
        if service.startswith("shell:") and len(service) > len("shell:"):
            self.streams[local_id] = s
            self.send(OKAY, local_id, remote_id)
            threading.Thread(target=self.run_shell, args=(s, service[len("shell:"):]), daemon=True).start()
        elif service == "sync:":
            self.streams[local_id] = s
            self.send(OKAY, local_id, remote_id)
            threading.Thread(target=self.run_sync, args=(s,), daemon=True).start()
        else:
            self.d.record("refused", service)
            self.send(CLSE, 0, remote_id)

    # -- shell: -----------------------------------------------------------------------------
    def run_shell(self, s: _Stream, command: str) -> None:
        d, f = self.d, self.d.faults
        d.record("shell", command)
        env = {**os.environ, **d.env}
        try:
            s.proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=d.root, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            if f.drop_run and f.drop_run in command and f.fire("drop_run"):
                self.drop(f"dropped while running {command[:60]!r}")
                return
            if f.unplug_after and f.unplug_after[0] in command:
                with d._lock:
                    d._run_count += 1
                    n = d._run_count
                if n > f.unplug_after[1]:
                    threading.Thread(target=d.stop, daemon=True).start()
                    return
            assert s.proc.stdout is not None
            fd = s.proc.stdout.fileno()
            while True:
                chunk = os.read(fd, SYNC_DATA_MAX)
                if not chunk:
                    break
                s.write(chunk)
            s.proc.wait()
            s.close()
        except (_Dropped, OSError):
            s.kill()
        finally:
            if s.proc is not None and s.proc.stdout is not None:
                s.proc.stdout.close()

    # -- sync: ------------------------------------------------------------------------------
    def run_sync(self, s: _Stream) -> None:
        try:
            while True:
                ident, length = struct.unpack("<4sI", s.read_exact(8))
                if ident == b"QUIT":
                    s.close()
                    return
                if length > 4096:
                    raise _Dropped("path too long")
                arg = s.read_exact(length).decode("utf-8", "replace")
                if ident == b"STAT":
                    s.write(self.sync_stat(arg))
                elif ident == b"LIST":
                    s.write(self.sync_list(arg))
                elif ident == b"RECV":
                    self.sync_recv(s, arg)
                elif ident == b"SEND":
                    self.sync_send(s, arg)
                else:
                    s.write(self.fail(f"unknown sync request {ident!r}"))
                    s.close()
                    return
        except (_Dropped, queue.Empty, OSError):
            s.kill()

    @staticmethod
    def fail(message: str) -> bytes:
        m = message.encode()
        return struct.pack("<4sI", b"FAIL", len(m)) + m

    def sync_stat(self, path: str) -> bytes:
        p = self.d.local_path(path)
        try:
            st = os.lstat(p) if p is not None else None
        except OSError:
            st = None
        if st is None:
            return struct.pack("<4s3I", b"STAT", 0, 0, 0)
        return struct.pack("<4s3I", b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))

    def sync_list(self, path: str) -> bytes:
        p = self.d.local_path(path)
        out = b""
        if p is not None and p.is_dir():
            for entry in sorted(os.listdir(p)):
                try:
                    st = os.lstat(p / entry)
                except OSError:
                    continue
                name = entry.encode()
                out += struct.pack("<4s4I", b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(name)) + name
        return out + struct.pack("<4s4I", b"DONE", 0, 0, 0, 0)

    def sync_recv(self, s: _Stream, path: str) -> None:
        p = self.d.local_path(path)
        if p is None or not p.is_file():
            s.write(self.fail(f"remote object '{path}' does not exist"))
            return
        self.d.record("pull", path)
        with open(p, "rb") as fh:
            while True:
                chunk = fh.read(SYNC_DATA_MAX)
                if not chunk:
                    break
                s.write(struct.pack("<4sI", b"DATA", len(chunk)) + chunk)
        s.write(struct.pack("<4sI", b"DONE", 0))

    def sync_send(self, s: _Stream, spec: str) -> None:
        f = self.d.faults
        path, _, mode_s = spec.rpartition(",")
        if not path:
            path, mode_s = spec, "33188"
        p = self.d.local_path(path)
        received = 0
        parts: list[bytes] = []
        while True:
            ident, n = struct.unpack("<4sI", s.read_exact(8))
            if ident == b"DONE":
                break
            if ident != b"DATA" or n > SYNC_DATA_MAX:
                raise _Dropped(f"bad push packet {ident!r}")
            parts.append(s.read_exact(n))
            received += n
            if (f.drop_push_after is not None and received - n < f.drop_push_after <= received
                    and f.fire("drop_push")):
                self.drop(f"dropped while pushing {path}")
                raise _Dropped("fault: drop mid-push")
        if p is None:
            s.write(self.fail(f"couldn't create file: {path}: permission denied (outside the test device)"))
            return
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.adbd-tmp")
            tmp.write_bytes(b"".join(parts))
            os.chmod(tmp, int(mode_s) & 0o777 if mode_s.isdigit() else 0o644)
            os.replace(tmp, p)
        except OSError as e:
            s.write(self.fail(f"couldn't create file: {e.strerror}"))
            return
        self.d.record("push", path)
        s.write(struct.pack("<4sI", b"OKAY", 0))


# -- helpers for the tests -------------------------------------------------------------------------
def make_key(path: Path) -> str:
    """An adb key pair at ``path`` (created the way fbprof creates it); returns the public key text."""
    from fbprof.devices.adb_link import ensure_key

    ensure_key(Path(path))
    return Path(str(path) + ".pub").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAKE_GETPROP = """#!/bin/sh
# stand-in for Android's getprop (test fixture): the properties of a Galaxy S8
case "$1" in
  ro.product.manufacturer) echo samsung ;;
  ro.product.model) echo SM-G950F ;;
  ro.board.platform) echo msm8998 ;;
  ro.product.cpu.abi) echo arm64-v8a ;;
  ro.build.version.release) echo 9 ;;
  ro.build.version.sdk) echo 28 ;;
  *) echo ;;
esac
"""


def fake_android(root: Path, governor: str = "performance", temps: dict[str, int] | None = None) -> dict[str, str]:
    """Android-like files for the daemon's shell: getprop on PATH, cpufreq and thermal folders.
    Returns the daemon env and the device settings that point at them."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    gp = bin_dir / "getprop"
    gp.write_text(FAKE_GETPROP)
    gp.chmod(0o755)
    for i in range(2):
        f = root / "sys" / "cpu" / f"cpu{i}" / "cpufreq"
        f.mkdir(parents=True, exist_ok=True)
        (f / "scaling_governor").write_text(governor + "\n")
        (f / "scaling_cur_freq").write_text("1900800\n")
        (f / "cpuinfo_max_freq").write_text("2457600\n")
    for i, (kind, milli) in enumerate((temps or {"tsens_tz_sensor1": 35000, "battery": 30000}).items()):
        z = root / "sys" / "thermal" / f"thermal_zone{i}"
        z.mkdir(parents=True, exist_ok=True)
        (z / "type").write_text(kind + "\n")
        (z / "temp").write_text(f"{milli}\n")
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def set_temp(root: Path, zone: int, milli: int) -> None:
    (root / "sys" / "thermal" / f"thermal_zone{zone}" / "temp").write_text(f"{milli}\n")
