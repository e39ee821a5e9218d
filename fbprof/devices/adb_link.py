"""The ADB connection under :class:`~fbprof.devices.adb.AdbDevice`: adb-shell over USB or TCP.

* RSA authentication with the user's ``~/.android/adbkey`` (the official adb's key; created as a
  2048-bit key with 0600 permissions when absent), overridable with the ``adbkey`` setting or the
  ``FBPROF_ADBKEY`` environment variable; keys listed in ``ADB_VENDOR_KEYS`` are offered too.
* Explicit timeouts on every call, always ``transport <= read <= total``.
* One transaction at a time (a lock around every call).
* A transport error (cable pulled, timeout, connection reset) closes the connection, reconnects with
  exponential back-off and repeats the call (every call fbprof makes can be repeated safely); when
  the device stays away the call fails with a :class:`~fbprof.errors.DeviceError` saying so.
* Actionable messages: unauthorized, USB busy, no device.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from fbprof.errors import DeviceError, MissingExtraError

__all__ = ["Timeouts", "AdbLink", "default_key_path", "ensure_key", "parse_address", "RC_MARK"]

T = TypeVar("T")
#: appended to every shell command: shell v1 carries no exit status, so the command prints it
RC_MARK = "__FBPROF_RC="
_RC_RE = re.compile(r"\n" + RC_MARK + r"(\d+)\s*$")


class AuthRefused(DeviceError):
    """The device did not accept our key (no retry: a person must act)."""


class _Transient(DeviceError):
    """Connecting failed in a way that may pass (device rebooting, cable re-plugged)."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``transport``: one read/write on the wire; ``read``: waiting for one reply;
    ``total``: a whole command."""

    transport: float
    read: float
    total: float

    def __post_init__(self) -> None:
        if not (0 < self.transport <= self.read <= self.total):
            raise ValueError(f"timeouts must satisfy 0 < transport <= read <= total, got {self}")


def parse_address(address: str | None) -> tuple[str, str | None, int | None]:
    """("usb", serial|None, None) or ("tcp", host, port) for an adb address."""
    if not address:
        return "usb", None, None
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and host:
        return "tcp", host.strip("[]"), int(port)
    if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", address):
        return "tcp", address, 5555
    return "usb", address, None


def default_key_path(options: dict[str, Any] | None = None) -> Path:
    opt = (options or {}).get("adbkey")
    if opt:
        return Path(str(opt)).expanduser()
    env = os.environ.get("FBPROF_ADBKEY")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".android" / "adbkey"


def require_adb_shell() -> None:
    """adb-shell (the ``adb`` extra) is importable, or a MissingExtraError: checked before anything uses it."""
    try:
        import adb_shell.adb_device  # noqa: F401
        import adb_shell.auth.keygen  # noqa: F401
        import adb_shell.auth.sign_pythonrsa  # noqa: F401
    except ImportError:
        raise MissingExtraError("the adb transport", "adb", "adb_shell") from None


def usb_inventory() -> list[str]:
    """What is on the USB bus, one ``VID:PID description`` line per device (an ADB interface is marked); an
    empty list where libusb cannot list it. Only used to explain a missing phone."""
    try:
        import usb1

        found = []
        with usb1.USBContext() as ctx:
            for d in ctx.getDeviceIterator(skip_on_error=True):
                adb = False
                try:
                    for setting in d.iterSettings():
                        if (setting.getClass(), setting.getSubClass(), setting.getProtocol()) == (0xFF, 0x42, 0x01):
                            adb = True
                except Exception:  # noqa: BLE001 - descriptive only
                    pass
                try:
                    what = " ".join(x for x in (d.getManufacturer(), d.getProduct()) if x)
                except Exception:  # noqa: BLE001 - strings need permission to open the device
                    what = ""
                found.append(f"{d.getVendorID():04x}:{d.getProductID():04x}"
                             + (f" {what}" if what else "") + (" (ADB interface)" if adb else ""))
        return found
    except Exception:  # noqa: BLE001 - no libusb, no permission: nothing to list
        return []


def _no_usb_phone(serial: str | None) -> "_Transient":
    seen = usb_inventory()
    listing = ("USB devices seen: " + "; ".join(seen[:12])) if seen else "no USB devices could be listed"
    return _Transient(
        f"no Android device found over USB (tried {'serial ' + serial if serial else 'any device'}): check the "
        "cable (a data cable, not charge-only), that USB debugging is on (Settings > Developer options), and "
        f"accept the 'Allow USB debugging?' prompt on the phone. {listing}",
        hint="`adb devices` should list it; or reach it over TCP: `adb tcpip 5555`, then --device adb:PHONE_IP:5555")


def ensure_key(path: Path) -> Path:
    """Create an adb key pair at ``path`` (2048-bit RSA, private key 0600) unless it exists."""
    require_adb_shell()
    if path.exists():
        if not Path(str(path) + ".pub").exists():
            from adb_shell.auth.keygen import write_public_keyfile

            write_public_keyfile(str(path), str(path) + ".pub")
        return path
    from adb_shell.auth.keygen import keygen

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # create the file 0600 first: keygen then writes into it and its mode stays
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        keygen(str(path))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    os.chmod(path, 0o600)
    return path


def _signers(key: Path) -> list:
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    paths = [key]
    for item in os.environ.get("ADB_VENDOR_KEYS", "").split(os.pathsep):
        if not item:
            continue
        p = Path(item).expanduser()
        paths += sorted(q for q in p.glob("*.adb_key")) if p.is_dir() else [p]
    out = []
    for p in paths:
        try:
            out.append(PythonRSASigner.FromRSAKeyPath(str(p)))
        except (OSError, ValueError) as e:
            if p == key:
                raise DeviceError(f"cannot read the adb key {p}: {e}",
                                  hint="delete it (and its .pub) to have a new one created, or pass --option adbkey=PATH") from None
    return out


def _transport_errors() -> tuple[type[BaseException], ...]:
    from adb_shell import exceptions as ex

    return (OSError, EOFError, ex.TcpTimeoutException, ex.AdbTimeoutError, ex.InvalidResponseError,
            ex.InvalidChecksumError, ex.InvalidCommandError, ex.UsbReadFailedError, ex.UsbWriteFailedError,
            ex.AdbConnectionError)


def _usb_problem(e: BaseException) -> str | None:
    """libusb's busy / access errors, by name (libusb1 need not be installed to run the tests)."""
    text = f"{type(e).__name__} {e}".lower()
    if "busy" in text:
        return "busy"
    if "erroraccess" in text or "access denied" in text or "insufficient permissions" in text:
        return "access"
    return None


class AdbLink:
    """One ADB connection with locking, timeouts, reconnect and clear errors."""

    def __init__(self, address: str | None, key: Path, *, transport_timeout_s: float = 10.0,
                 read_timeout_s: float = 30.0, auth_timeout_s: float = 30.0, attempts: int = 3,
                 backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.kind, self.host, self.port = parse_address(address)
        self.address = address
        self.key = key
        self.quick = Timeouts(transport_timeout_s, read_timeout_s, read_timeout_s)
        self.auth_timeout_s = auth_timeout_s
        self.attempts = max(0, attempts)
        self.backoff_s = max(0.0, backoff_s)
        self.sleep = sleep
        self.on_event = on_event
        self.reconnects = 0
        self._lock = threading.RLock()
        self._dev = None
        self._signers: list | None = None

    # -- description --------------------------------------------------------------------------
    @property
    def description(self) -> str:
        if self.kind == "tcp":
            return f"adb tcp {self.host}:{self.port}"
        return f"adb usb {self.host or '(first device)'}"

    def _event(self, message: str) -> None:
        if self.on_event is not None:
            self.on_event(message)

    # -- connecting ---------------------------------------------------------------------------
    def _new_device(self):
        try:
            from adb_shell.adb_device import AdbDevice, AdbDeviceUsb
            from adb_shell.transport.tcp_transport import TcpTransport
        except ImportError:
            raise MissingExtraError("the adb transport", "adb", "adb_shell") from None
        if self.kind == "tcp":

            class _Tcp(TcpTransport):
                # adb-shell reads an empty chunk on a closed socket and keeps polling until its read
                # timeout; a closed connection is an error at once.
                def bulk_read(self, numbytes, transport_timeout_s):
                    data = super().bulk_read(numbytes, transport_timeout_s)
                    if not data:
                        raise ConnectionResetError("the device closed the connection")
                    return data

            return AdbDevice(_Tcp(self.host, self.port), default_transport_timeout_s=self.quick.transport)
        from adb_shell.exceptions import InvalidTransportError, UsbDeviceNotFoundError

        try:  # the constructor looks for the phone: none on the bus raises here, not in connect()
            return AdbDeviceUsb(serial=self.host, default_transport_timeout_s=self.quick.transport)
        except UsbDeviceNotFoundError:
            raise _no_usb_phone(self.host) from None
        except InvalidTransportError:
            raise DeviceError(
                "USB needs adb-shell's USB support (the libusb1 package), which is not installed",
                hint="pip install 'adb-shell[usb]', or reach the phone over TCP: `adb tcpip 5555`, then "
                     "--device adb:PHONE_IP:5555",
            ) from None

    def _connect_once(self) -> None:
        from adb_shell import exceptions as ex

        if self._signers is None:
            require_adb_shell()
            self._signers = _signers(self.key)
        dev = self._new_device()
        prompted = []
        t = self.quick
        try:
            dev.connect(rsa_keys=self._signers, transport_timeout_s=t.transport, read_timeout_s=t.read,
                        auth_timeout_s=self.auth_timeout_s, auth_callback=lambda _d: prompted.append(True))
        except ex.UsbDeviceNotFoundError:
            raise _no_usb_phone(self.host) from None
        except ConnectionRefusedError:
            raise _Transient(f"no device at {self.host}:{self.port}: connection refused (tried TCP {self.host}:{self.port}); "
                             "is the phone on and reachable, with `adb tcpip {port}` enabled?".replace("{port}", str(self.port))) from None
        except ex.DeviceAuthError as e:
            raise AuthRefused(f"{self.description}: {e}") from None
        except Exception as e:  # noqa: BLE001 - classified below
            dev.close()
            if prompted:
                raise AuthRefused(
                    f"{self.description} did not accept this computer's RSA key ({self.key}.pub): unlock the phone and "
                    "accept the RSA prompt on the phone ('Allow USB debugging?'), then run the command again",
                    hint="tick 'Always allow from this computer' so the prompt does not come back",
                ) from None
            problem = _usb_problem(e) if self.kind == "usb" else None
            if problem == "busy":
                raise DeviceError("an adb server holds the device: `adb kill-server` or use TCP "
                                  "(`adb tcpip 5555`, then --device adb:PHONE_IP:5555)") from None
            if problem == "access":
                raise DeviceError(f"no permission to open the phone's USB device ({type(e).__name__}: {e})",
                                  hint="add a udev rule for Android devices (e.g. Debian's android-sdk-platform-tools-"
                                       "common) or reach the phone over TCP") from None
            if isinstance(e, _transport_errors()):
                raise _Transient(f"could not connect to {self.description}: {type(e).__name__}: {e}") from None
            raise DeviceError(f"could not connect to {self.description}: {type(e).__name__}: {e}") from None
        self._dev = dev

    def connect(self) -> None:
        with self._lock:
            if self._dev is None:
                self._connect_retrying("connecting")

    def _connect_retrying(self, what: str) -> None:
        last: DeviceError | None = None
        for i in range(self.attempts + 1):
            if i:
                self.sleep(self.backoff_s * 2 ** (i - 1))
            try:
                self._connect_once()
                return
            except _Transient as e:
                last = e
        assert last is not None
        raise DeviceError(last.message, hint=last.hint or f"tried {self.attempts + 1} times while {what}")

    def close(self) -> None:
        with self._lock:
            if self._dev is not None:
                try:
                    self._dev.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass
                self._dev = None

    # -- calls --------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(adb_device)`` as one transaction; on a transport error reconnect and repeat."""
        errors = _transport_errors()
        with self._lock:
            last: BaseException | None = None
            for i in range(self.attempts + 1):
                if i:
                    self.reconnects += 1
                    self._event(f"{self.description}: {type(last).__name__} while {what}; reconnecting "
                                f"({i}/{self.attempts})")
                    self.sleep(self.backoff_s * 2 ** (i - 1))
                try:
                    if self._dev is None:
                        self._connect_once()
                    return fn(self._dev)
                except AuthRefused:
                    raise
                except _Transient as e:
                    last = e
                    self.close()
                except errors as e:
                    last = e
                    self.close()
            detail = last.message if isinstance(last, DeviceError) else f"{type(last).__name__}: {last}"
            raise DeviceError(
                f"lost the connection to {self.description} while {what} ({detail}); tried {self.attempts + 1} times",
                hint="rows measured so far are saved: reconnect the phone and run the same command again to measure "
                     "the rest",
            )

    def shell(self, command: str, what: str, timeouts: Timeouts | None = None) -> tuple[str, int]:
        """Run ``command`` with /bin/sh on the device; returns (output, exit status)."""
        t = timeouts or self.quick
        # a subshell, so that `exit` in the command still reports; the newline before the mark is ours
        full = f"({command}\n); printf '\\n{RC_MARK}%s\\n' \"$?\""
        out = self.call(what, lambda d: d.shell(full, transport_timeout_s=t.transport, read_timeout_s=t.read,
                                                timeout_s=t.total, decode=True))
        m = _RC_RE.search(out)
        if m is None:
            raise DeviceError(f"{self.description}: the command for {what} ended without its exit status "
                              f"(output: {out[-300:]!r})")
        return out[: m.start()], int(m.group(1))

    def push(self, local: Path | str, remote: str, what: str, mode: int = 0o644) -> None:
        import stat as _stat

        from adb_shell.exceptions import AdbCommandFailureException, PushFailedError

        t = self.quick

        def go(d):
            try:
                d.push(str(local), remote, st_mode=_stat.S_IFREG | mode, transport_timeout_s=t.transport,
                       read_timeout_s=t.read)
            except (PushFailedError, AdbCommandFailureException) as e:
                raise DeviceError(f"{self.description} refused the push of {remote}: {e}") from None

        self.call(what, go)

    def pull(self, remote: str, local: Path | str, what: str) -> None:
        from adb_shell.exceptions import AdbCommandFailureException

        t = self.quick

        def go(d):
            try:
                d.pull(remote, str(local), transport_timeout_s=t.transport, read_timeout_s=t.read)
            except AdbCommandFailureException as e:
                raise DeviceError(f"{self.description}: cannot pull {remote}: {e}") from None

        self.call(what, go)
