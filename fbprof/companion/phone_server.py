"""The reference companion: the iPhone app's protocol served by Python (``fbprof companion serve``).

It speaks exactly the protocol of docs/companion-protocol.md, with the same token check and limits as
the Swift app. On macOS it runs Core ML packages through coremltools' ``predict``; everywhere it runs
ONNX models with ONNX Runtime (the runtime the local device uses). Its timings come from
:func:`fbprof.loop.run_loop`, the loop every fbprof device measures with.

Standard library HTTP (``ThreadingHTTPServer``); one measurement runs at a time. Wrong tokens lock every
request out for a while (:class:`Lockout`); the token lives in memory only.
"""

from __future__ import annotations

import hmac
import importlib.util
import json
import math
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fbprof import __version__
from fbprof.companion.protocol import (API, COMPUTE_UNITS, LOCKOUT_BASE_S, LOCKOUT_FAILURES, LOCKOUT_MAX_S,
                                       LOOP_FIELDS, MIN_TOKEN_CHARS, PROTOCOL, UNAUTHORIZED_MESSAGE, Limits,
                                       ProtocolError, encode_array, parse_content_length, unpack_model, valid_name)
from fbprof.errors import InputError

__all__ = ["CompanionServer", "Lockout", "available_formats", "new_token"]

APP = "fbprof-companion"
#: compute units each format's runtime can honour here ("all" = every unit the runtime has)
_UNITS = {"mlpackage": COMPUTE_UNITS, "onnx": ("cpuOnly", "all")}
#: what each runs on: ONNX Runtime here has only its CPU provider, so "all" is the CPU
_UNITS_USED = {"mlpackage": {u: u for u in COMPUTE_UNITS}, "onnx": {"cpuOnly": "cpuOnly", "all": "cpuOnly"}}


def new_token() -> str:
    """A pairing token: 16 random URL-safe characters (96 bits from the OS's CSPRNG)."""
    return secrets.token_urlsafe(12)


def check_token(token: str) -> None:
    """A usable pairing token: at least MIN_TOKEN_CHARS printable ASCII characters without spaces."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        raise InputError(f"the pairing token must have at least {MIN_TOKEN_CHARS} characters",
                         hint="leave --token out to get a new random one")
    if not all("!" <= ch <= "~" for ch in token):
        raise InputError("the pairing token must be printable ASCII without spaces")


class Lockout:
    """Back-off for wrong tokens: after ``failures`` wrong tokens in a row, every request is refused
    (429, even with the right token) for ``base_s`` seconds, doubled at each further lock-out up to
    ``max_s``. A request with the right token, outside a lock-out, resets it. ``clock``: seconds."""

    def __init__(self, failures: int = LOCKOUT_FAILURES, base_s: float = LOCKOUT_BASE_S, max_s: float = LOCKOUT_MAX_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.base_s, self.max_s, self.clock = failures, base_s, max_s, clock
        self._wrong = 0  # wrong tokens since the last lock-out (or success)
        self._lockouts = 0  # lock-outs since the last success
        self._until = -math.inf
        self._lock = threading.Lock()

    def wait_s(self) -> float:
        """Seconds left in the current lock-out (0: requests are heard)."""
        with self._lock:
            return max(0.0, self._until - self.clock())

    def failed(self) -> None:
        with self._lock:
            self._wrong += 1
            if self._wrong >= self.failures:
                self._wrong = 0
                self._lockouts += 1
                self._until = self.clock() + min(self.max_s, self.base_s * 2 ** (self._lockouts - 1))

    def succeeded(self) -> None:
        with self._lock:
            self._wrong = self._lockouts = 0


def available_formats() -> tuple[str, ...]:
    """Formats this machine can run: Core ML packages on macOS (coremltools), ONNX with ONNX Runtime."""
    out = []
    if sys.platform == "darwin" and importlib.util.find_spec("coremltools") is not None:
        out.append("mlpackage")
    if importlib.util.find_spec("onnxruntime") is not None:
        out.append("onnx")
    return tuple(out)


def _runtime_name(fmt: str) -> str:
    """What ``info`` and each run report as the runtime of ``fmt`` here."""
    if fmt == "mlpackage":
        import coremltools

        return f"Core ML via coremltools {coremltools.__version__}"
    import onnxruntime

    return f"ONNX Runtime {onnxruntime.__version__}"


def _open_session(fmt: str, model: Path, x: np.ndarray, threads: int, units: str):
    """A runtime session through the backend that runs ``fmt`` (the same code the local device uses)."""
    from fbprof.backends import backend_for_format
    from fbprof.backends import coreml

    if fmt == "mlpackage":
        return coreml.open_session(str(model), x, threads, units)
    return backend_for_format(fmt).module.open_session(str(model), x, threads)


@dataclass
class _Model:
    name: str
    format: str
    folder: Path
    manifest: dict[str, Any]
    bytes: int
    sessions: dict[str, Any] = field(default_factory=dict)  # compute units -> loaded session

    def path(self) -> Path:
        return self.folder / self.manifest["model"]

    def input(self) -> np.ndarray:
        inp = self.manifest["input"]
        return np.fromfile(self.folder / inp["file"], dtype="<f4").reshape(inp["shape"]).astype(np.float32)


def _thermal_unknown() -> str:
    return "unknown"


class CompanionServer:
    """A companion listening on ``host:port`` (port 0 picks a free one); use as a context manager."""

    def __init__(
        self,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: Limits | None = None,
        threads: int = 1,
        thermal: Callable[[], str] | None = None,
        formats: tuple[str, ...] | None = None,
        log: Callable[[str], None] | None = None,
        store_dir: str | Path | None = None,
        lockout: Lockout | None = None,
    ) -> None:
        check_token(token)
        self.token = token  # in memory only: never logged, never written to the store
        self.limits = limits or Limits()
        self.lockout = lockout or Lockout()
        self.threads = threads
        self.thermal = thermal or _thermal_unknown
        self.formats = available_formats() if formats is None else tuple(formats)
        self.log = log
        if store_dir is not None:
            Path(store_dir).mkdir(parents=True, exist_ok=True)
        self.store = Path(tempfile.mkdtemp(prefix="fbprof-companion-", dir=store_dir))
        self.models: dict[str, _Model] = {}
        self._models_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError as e:
            shutil.rmtree(self.store, ignore_errors=True)
            raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.httpd.daemon_threads = True
        self.httpd.companion = self  # type: ignore[attr-defined]

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> "CompanionServer":
        """Serve in a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, name="fbprof-companion", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()
        shutil.rmtree(self.store, ignore_errors=True)

    def __enter__(self) -> "CompanionServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol ----------------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    def runtimes(self) -> list[dict[str, Any]]:
        return [{"format": fmt, "runtime": _runtime_name(fmt), "compute_units": list(_UNITS[fmt]),
                 "compute_units_used": dict(_UNITS_USED[fmt])} for fmt in self.formats]

    def info(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL,
            "app": APP,
            "app_version": __version__,
            "model": f"{platform.system()} {platform.machine()}",
            "system": platform.system(),
            "system_version": platform.release(),
            "thermal_state": self.thermal(),
            "runtimes": self.runtimes(),
            "limits": self.limits.to_dict(),
        }

    def list_models(self) -> dict[str, Any]:
        with self._models_lock:
            return {"models": [{"name": m.name, "format": m.format, "bytes": m.bytes}
                               for m in sorted(self.models.values(), key=lambda m: m.name)]}

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        with self._models_lock:
            if name not in self.models and len(self.models) >= self.limits.max_models:
                raise ProtocolError(409, "too_many_models",
                                    f"the companion holds {len(self.models)} models (limit {self.limits.max_models}); "
                                    "delete some first")
        tmp = self.store / f".upload-{secrets.token_hex(6)}"
        try:
            manifest = unpack_model(data, tmp, self.formats, self.limits)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._models_lock:
            if name not in self.models and len(self.models) >= self.limits.max_models:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ProtocolError(409, "too_many_models", f"the companion holds {len(self.models)} models "
                                                            f"(limit {self.limits.max_models}); delete some first")
            old = self.models.pop(name, None)
            folder = self.store / name
            if old is not None:
                shutil.rmtree(old.folder, ignore_errors=True)
            tmp.rename(folder)
            self.models[name] = _Model(name, manifest["format"], folder, manifest, len(data))
        return {"model": name, "format": manifest["format"], "bytes": len(data)}

    def delete(self, name: str) -> dict[str, Any]:
        with self._models_lock:
            m = self.models.pop(name, None)
        if m is None:
            raise ProtocolError(404, "not_found", f"no model named {name!r}")
        shutil.rmtree(m.folder, ignore_errors=True)
        return {"deleted": name}

    def _loop_config(self, req: dict[str, Any]):
        from fbprof.loop import LoopConfig

        defaults = LoopConfig()
        values: dict[str, Any] = {}
        for k in LOOP_FIELDS:
            v = req.get(k, getattr(defaults, k))
            integer = k.endswith("_runs")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)) \
                    or not math.isfinite(v) or v < 0:
                raise ProtocolError(400, "bad_request", f"{k}: expected a non-negative {'integer' if integer else 'number'}")
            values[k] = v
        lim = self.limits
        if values["max_runs"] > lim.max_runs:
            raise ProtocolError(400, "bad_request", f"max_runs {values['max_runs']} is over the limit {lim.max_runs}")
        if values["warmup_runs"] > lim.max_warmup_runs:
            raise ProtocolError(400, "bad_request",
                                f"warmup_runs {values['warmup_runs']} is over the limit {lim.max_warmup_runs}")
        if values["max_time_s"] > lim.max_time_s or values["warmup_min_s"] > lim.max_time_s:
            raise ProtocolError(400, "bad_request", f"max_time_s and warmup_min_s must be at most {lim.max_time_s}")
        if values["target_sample_s"] > values["max_time_s"]:  # also keeps repeats = ceil(target / one) finite
            raise ProtocolError(400, "bad_request", f"target_sample_s {values['target_sample_s']} is over max_time_s "
                                                    f"{values['max_time_s']}")
        try:
            return LoopConfig(**values, retries=0)
        except ValueError as e:
            raise ProtocolError(400, "bad_request", str(e)) from None

    def run(self, name: str, req: dict[str, Any]) -> dict[str, Any]:
        from fbprof.loop import run_loop

        units = req.get("compute_units", "all")
        if units not in COMPUTE_UNITS:
            raise ProtocolError(400, "bad_request", f"compute_units {units!r}: expected one of {', '.join(COMPUTE_UNITS)}")
        want_output = req.get("return_output", False)
        if not isinstance(want_output, bool):
            raise ProtocolError(400, "bad_request", "return_output: expected true or false")
        cfg = self._loop_config(req)
        with self._models_lock:
            m = self.models.get(name)
        if m is None:
            raise ProtocolError(404, "not_found", f"no model named {name!r}")
        if units not in _UNITS[m.format]:
            raise ProtocolError(400, "bad_request", f"compute_units {units!r} is not available for {m.format} here "
                                                    f"(available: {', '.join(_UNITS[m.format])})")
        with self._run_lock:
            t0 = time.perf_counter()
            try:
                session = m.sessions.get(units)
                if session is None:
                    x = m.input()
                    session = _open_session(m.format, m.path(), x, self.threads, units)
                    m.sessions[units] = session
                load_s = time.perf_counter() - t0
                output = np.asarray(session.run())
                res = run_loop(session.invoke, cfg)
            except ProtocolError:
                raise
            except Exception as e:  # noqa: BLE001 - the runtime's own failure, reported to the host
                raise ProtocolError(422, "run_failed", f"{name}: {type(e).__name__}: {str(e)[:500]}") from None
        body: dict[str, Any] = {
            "model": name,
            "compute_units": units,
            "compute_units_used": _UNITS_USED[m.format][units],
            "runtime": _runtime_name(m.format),
            "timings_us": [s * 1e6 for s in res.samples],
            "repeats": res.repeats,
            "capped": res.capped,
            "elapsed_s": res.elapsed_s,
            "load_s": load_s,
            "thermal_state": self.thermal(),
        }
        if want_output:
            body["output"] = encode_array(output)
        return body


class _HTTPServer(ThreadingHTTPServer):
    # the listen backlog: socketserver's 5 makes a burst of clients wait for SYN retransmits (1, 3, 7 ... 31 s);
    # the kernel caps it at its own maximum (net.core.somaxconn)
    request_queue_size = max(1024, socket.SOMAXCONN)
    daemon_threads = True


#: an error answered before the body was read: read and drop up to this many body bytes before closing, so
#: the client can finish sending and read the answer (closing on unread bytes resets the connection)
_DRAIN_MAX_BYTES = 64 << 20
_DRAIN_TIMEOUT_S = 10.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"{APP}/{PROTOCOL}"
    timeout = 120  # seconds a connection may sit idle or half-sent (no client holds a thread forever)

    @property
    def companion(self) -> CompanionServer:
        return self.server.companion  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        if self.companion.log is not None:  # the request line and status: never a header, so never the token
            self.companion.log(f"{self.address_string()} {format % args}")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _send(self, status: int, body: dict[str, Any], close: bool = False,
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="fbprof-companion"')
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        self._unread -= len(data)
        return data

    def _body(self, limit: int) -> bytes:
        n = self._length
        if n is None:
            raise ProtocolError(411, "length_required", "send the body with a Content-Length header")
        if n > limit:
            raise ProtocolError(413, "too_large", f"request body of {n} bytes is over the limit of {limit} bytes")
        return self._read(n)

    def _json(self) -> dict[str, Any]:
        raw = self._body(self.companion.limits.max_json_bytes)
        try:
            obj = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(400, "bad_request", "the body is not JSON") from None
        if not isinstance(obj, dict):
            raise ProtocolError(400, "bad_request", "the body must be a JSON object")
        return obj

    def _drain(self) -> None:
        """After an early answer: read and drop the unread body (bounded), so closing does not reset."""
        if not 0 < self._unread <= _DRAIN_MAX_BYTES:
            return
        try:
            self.wfile.flush()
            self.connection.settimeout(_DRAIN_TIMEOUT_S)
            while self._unread > 0 and self._read(min(self._unread, 1 << 20)):
                pass
        except OSError:
            pass

    def _dispatch(self, method: str) -> None:
        c = self.companion
        self._length: int | None = None
        self._unread = 0
        extra: dict[str, str] = {}
        framing: ProtocolError | None = None
        chunked = self.headers.get("Transfer-Encoding") is not None
        try:  # how much body follows, known before anything is answered (what to drain, whether to close)
            self._length = parse_content_length(self.headers.get_all("Content-Length") or [])
            self._unread = self._length or 0
        except ProtocolError as e:
            framing = e
        try:
            wait = c.lockout.wait_s()
            if wait > 0:
                retry = max(1, math.ceil(wait))
                extra["Retry-After"] = str(retry)
                raise ProtocolError(429, "too_many_attempts", f"too many wrong pairing tokens: this companion refuses "
                                                              f"every request for {retry} s")
            if not c.authorized(self.headers.get("Authorization")):
                c.lockout.failed()
                raise ProtocolError(401, "unauthorized", UNAUTHORIZED_MESSAGE)
            c.lockout.succeeded()
            if framing is not None:
                raise framing
            if chunked:
                raise ProtocolError(411, "length_required", "send the body with a Content-Length header")
            limit = c.limits.max_upload_bytes if method == "PUT" else c.limits.max_json_bytes
            if self._unread > limit:  # every method: a GET announcing 10 GB is refused from its head too
                raise ProtocolError(413, "too_large",
                                    f"request body of {self._unread} bytes is over the limit of {limit} bytes")
            path = urllib.parse.urlsplit(self.path).path
            if not path.startswith(API + "/"):
                raise ProtocolError(404, "not_found", f"no endpoint {method} {path} (this companion speaks {API})")
            parts = path[len(API) + 1:].split("/")
            if method in ("GET", "DELETE") and self._unread:
                self._read(self._unread)  # a body these methods ignore: read it, the connection stays in step
            if parts == ["info"] and method == "GET":
                status, body = 200, c.info()
            elif parts == ["models"] and method == "GET":
                status, body = 200, c.list_models()
            elif len(parts) in (2, 3) and parts[0] == "models":
                name = urllib.parse.unquote(parts[1])
                if not valid_name(name):
                    raise ProtocolError(400, "bad_name", f"invalid model name {name!r}: use 1 to 64 characters "
                                                         "A-Z a-z 0-9 . _ - (not starting with . _ -)")
                if len(parts) == 2 and method == "PUT":
                    data = self._body(c.limits.max_upload_bytes)
                    status, body = 201, c.upload(name, data)
                elif len(parts) == 2 and method == "DELETE":
                    status, body = 200, c.delete(name)
                elif parts[2:] == ["run"] and method == "POST":
                    req = self._json()
                    status, body = 200, c.run(name, req)
                else:
                    raise ProtocolError(405, "bad_method", f"{method} is not allowed on {path}")
            else:
                raise ProtocolError(404, "not_found", f"no endpoint {method} {path}")
            self._send(status, body)
        except ProtocolError as e:
            # a body left unread would be taken for the next request: answer, drain it (bounded) and close
            unknown_end = framing is not None or chunked
            self._send(e.status, e.body(), close=self._unread > 0 or unknown_end, headers=extra)
            self._drain()
        except Exception as e:  # noqa: BLE001 - never leave the host without an answer
            self._send(500, {"error": "internal", "message": f"{type(e).__name__}: {e}"}, close=True)
            self._drain()


def advertise(server: CompanionServer, name: str | None = None, interfaces: list[str] | None = None):
    """Announce ``server`` as ``_fbprof._tcp`` over Bonjour/mDNS (needs zeroconf); returns a closer.

    ``interfaces``: the addresses to announce on (default: every interface)."""
    import socket

    from fbprof.companion.protocol import SERVICE_TYPE
    from fbprof.errors import MissingExtraError

    try:
        from zeroconf import ServiceInfo, Zeroconf
    except ImportError:
        raise MissingExtraError("announcing the companion (mDNS)", "mdns", "zeroconf") from None
    host = server.httpd.server_address[0]
    addr = host if host not in ("0.0.0.0", "") else socket.gethostbyname(socket.gethostname())
    label = (name or f"fbprof on {platform.node() or 'host'}")[:60]
    info = ServiceInfo(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=server.port,
                       addresses=[socket.inet_aton(addr)], properties={"protocol": str(PROTOCOL)})
    zc = Zeroconf(interfaces=interfaces) if interfaces else Zeroconf()
    zc.register_service(info)

    def close() -> None:
        zc.unregister_service(info)
        zc.close()

    return close
