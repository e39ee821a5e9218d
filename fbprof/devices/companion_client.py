"""An iPhone (or any companion) as a device: the host side of the companion protocol.

iOS has no shell: the fbprof companion app on the phone (devices/ios/) receives models over HTTP,
runs them with Core ML and returns the per-run timings. ``fbprof companion serve`` speaks the same
protocol from Python. See docs/companion-protocol.md.

Per row the device checks the companion's thermal state (and waits while it is too hot), uploads the
zipped artifact with its input, asks for a run with the loop's settings, turns the returned timings
into :class:`~fbprof.loop.Stats` judged by the same rules as every device (minimum count,
CV threshold, re-measure after a pause, then *unstable*), checks the returned output against torch's,
and deletes the model. Network failures are retried with back-off; when the companion stays away
the run stops with a :class:`~fbprof.errors.DeviceError`, finished rows kept for the resume.
"""

from __future__ import annotations

import json as _json
import math
import os
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

import httpx

from fbprof.companion.protocol import (API, COMPUTE_UNITS, DEFAULT_PORT, PROTOCOL, SERVICE_TYPE,
                                       THERMAL_STATES, Limits, decode_array, model_name, pack_model)
from fbprof.artifact import Artifact
from fbprof.backends import BACKENDS, get_backend
from fbprof.devices.base import Device, DeviceResult
from fbprof.devices.profiles import coerce_setting
from fbprof.errors import DeviceError, InputError, MeasurementError, MissingExtraError
from fbprof.loop import Attempt, LoopConfig, Stats, measure_attempts

__all__ = ["CompanionSettings", "CompanionClient", "CompanionDevice", "CompanionError", "from_profile", "discover",
           "parse_address", "TOKEN_ENV"]

TOKEN_ENV = "FBPROF_COMPANION_TOKEN"
ADDRESS_ENV = "FBPROF_COMPANION_ADDRESS"


@dataclass(frozen=True)
class CompanionSettings:
    """Profile ``settings`` and ``--option KEY=VALUE`` for the companion transport."""

    compute_units: str = "all"  # cpuOnly, cpuAndGPU, cpuAndNeuralEngine, all
    timeout_s: float = 10.0  # connect/read timeout of short requests
    upload_timeout_s: float = 120.0
    run_timeout_s: float = 0.0  # 0: derived from the loop's caps
    retries: int = 3  # extra attempts after a network failure
    backoff_s: float = 0.5  # first pause between attempts, doubled each time
    thermal_max: str = "fair"  # hottest state at which a row may start
    thermal_wait_s: float = 600.0  # give up (stop the run) after waiting this long for the phone to cool
    thermal_poll_s: float = 15.0
    check_output: bool = True  # ask for the output and compare it with torch's
    discover_s: float = 3.0  # Bonjour/mDNS browse time when no address is given

    @classmethod
    def from_sources(cls, *sources: dict[str, Any]) -> "CompanionSettings":
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for src in sources:
            for k, v in src.items():
                if k not in types:
                    raise InputError(f"unknown companion setting {k!r}; known: {', '.join(sorted(types))}, "
                                     "address, token")
                values[k] = _coerce(k, v, types[k])
        s = cls(**values)
        if s.compute_units not in COMPUTE_UNITS:
            raise InputError(f"compute_units {s.compute_units!r}: expected one of {', '.join(COMPUTE_UNITS)}")
        if s.thermal_max not in THERMAL_STATES:
            raise InputError(f"thermal_max {s.thermal_max!r}: expected one of {', '.join(THERMAL_STATES)}")
        if s.retries < 0 or min(s.timeout_s, s.upload_timeout_s) <= 0 or min(s.backoff_s, s.thermal_wait_s,
                                                                             s.thermal_poll_s, s.run_timeout_s) < 0:
            raise InputError("companion settings: timeouts must be > 0; retries, pauses and waits >= 0")
        return s


def _coerce(key: str, value: Any, typ: str) -> Any:
    return coerce_setting(key, value, typ, "companion")


def parse_address(address: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); the app's port 8765 by default."""
    a = address.strip()
    if a.startswith("["):
        host, sep, rest = a[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise InputError(f"companion address {address!r}: expected [IPV6]:PORT")
    elif a.count(":") == 1:
        host, port_s = a.split(":")
    else:
        host, port_s = a, ""
    if not host:
        raise InputError(f"companion address {address!r}: no host")
    if not port_s:
        return host, DEFAULT_PORT
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise InputError(f"companion address {address!r}: port must be 1-65535")
    return host, int(port_s)


class CompanionError(DeviceError):
    """The companion answered with an error (``status``, ``code`` as in the protocol)."""

    def __init__(self, message: str, status: int, code: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


class CompanionClient:
    """HTTP+JSON requests to one companion: the token on every request, timeouts, retries with back-off."""

    def __init__(self, address: str, token: str, settings: CompanionSettings,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        host, port = parse_address(address)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.settings = settings
        self.sleep = sleep
        self.http = httpx.Client(base_url=f"http://{self.address}{API}",
                                 headers={"Authorization": f"Bearer {token}", "User-Agent": "fbprof"},
                                 timeout=settings.timeout_s, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, what: str, json: Any = None, content: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None,
                retries: int | None = None) -> dict[str, Any]:
        tries = (self.settings.retries if retries is None else retries) + 1
        pause = self.settings.backoff_s
        problem = ""
        for attempt in range(tries):
            if attempt:
                self.sleep(pause)
                pause *= 2
            try:
                r = self.http.request(method, path, json=json, content=content, headers=headers,
                                      timeout=timeout or self.settings.timeout_s)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if json is not None or content:
                    self._explain_reset(method, path, what, json, content)
                continue
            if r.status_code in (502, 503, 504):
                problem = f"HTTP {r.status_code}"
                continue
            return self._decode(r, what)
        raise DeviceError(
            f"the companion at {self.address} did not answer ({what}: {problem}) after {tries} attempt"
            f"{'s' if tries != 1 else ''}",
            hint="is the app open on the phone and on the same network? finished rows are saved: "
                 "run the same command again to resume",
        )

    def _explain_reset(self, method: str, path: str, what: str, json_body: Any, content: bytes | None) -> None:
        """A request with a body failed on the network. A companion that refuses a request from its head
        (401, 429, 413) answers and closes with the body unread, and the client may then see only a reset
        and lose the answer. Ask ``GET /info`` (no body) once: it raises the refusal the companion gave
        (a wrong token, a lock-out) or, when the body is over the companion's limit, that 413."""
        try:
            r = self.http.request("GET", "/info", timeout=self.settings.timeout_s)
        except httpx.TransportError:
            return  # the companion is gone: retry as for any network failure
        if r.status_code in (401, 429):
            self._decode(r, what)  # raises the refusal that the lost answer carried
        if r.status_code != 200:
            return
        try:
            info = r.json()
        except ValueError:
            return
        limits = info.get("limits") if isinstance(info, dict) else None
        limit = (limits or {}).get("max_upload_bytes" if method == "PUT" else "max_json_bytes") \
            if isinstance(limits, dict) else None
        if not isinstance(limit, int) or isinstance(limit, bool):
            return
        size = len(content) if content else len(_json.dumps(json_body).encode())
        if size > limit:
            raise CompanionError(f"the companion at {self.address} refused {what} (413 too_large: request body of "
                                 f"{size} bytes is over the limit of {limit} bytes)", 413, "too_large")

    def _decode(self, r: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DeviceError(f"{self.address} is not an fbprof companion ({what}: HTTP {r.status_code}, "
                              "not a JSON object)")
        if r.status_code >= 400:
            code = str(body.get("error", "error"))
            message = str(body.get("message", ""))
            if r.status_code == 401:
                raise CompanionError(
                    f"the companion at {self.address} refused the pairing token (401: {message})", 401, code,
                    hint=f"pass the token the app shows with --token, or set {TOKEN_ENV}")
            if r.status_code == 429:
                wait = r.headers.get("Retry-After", "?")
                raise CompanionError(
                    f"the companion at {self.address} is locked after too many wrong pairing tokens (429 {code}: "
                    f"{message}; Retry-After {wait} s)", 429, code,
                    hint="someone tried wrong tokens (perhaps a wrong --token): wait, check the token the app shows, "
                         "and run the same command again")
            raise CompanionError(f"the companion at {self.address} refused {what} ({r.status_code} {code}: {message})",
                                 r.status_code, code)
        return body

    # the protocol's endpoints
    def info(self) -> dict[str, Any]:
        return self.request("GET", "/info", what="info")

    def models(self) -> dict[str, Any]:
        return self.request("GET", "/models", what="list models")

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        return self.request("PUT", f"/models/{name}", what=f"upload of {name}", content=data,
                            headers={"Content-Type": "application/zip"}, timeout=self.settings.upload_timeout_s)

    def run(self, name: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.request("POST", f"/models/{name}/run", what=f"run of {name}", json=body, timeout=timeout)

    def delete(self, name: str, retries: int | None = None) -> dict[str, Any]:
        return self.request("DELETE", f"/models/{name}", what=f"delete of {name}", retries=retries)


def _check_info(info: dict[str, Any], address: str) -> None:
    if info.get("protocol") != PROTOCOL:
        raise DeviceError(f"the companion at {address} speaks protocol {info.get('protocol')!r}, fbprof speaks "
                          f"{PROTOCOL}", hint="update the app or fbprof so both speak the same version")
    if not isinstance(info.get("runtimes"), list) or not all(isinstance(r, dict) for r in info["runtimes"]):
        raise DeviceError(f"the companion at {address} sent an info response without a runtimes list")


def _run_timings(body: dict[str, Any], key: str) -> tuple[list[float], int, bool, float]:
    t = body.get("timings_us")
    ok = isinstance(t, list) and t and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and math.isfinite(v) and v >= 0 for v in t)
    repeats = body.get("repeats", 1)
    if not ok or not isinstance(repeats, int) or repeats < 1:
        raise MeasurementError(f"{key}: the companion returned no usable timings")
    elapsed = body.get("elapsed_s", 0.0)
    return [v * 1e-6 for v in t], repeats, bool(body.get("capped", False)), float(elapsed or 0.0)


class CompanionDevice(Device):
    """A phone running the fbprof companion app (or ``fbprof companion serve``)."""

    def __init__(self, name: str, address: str, token: str, settings: CompanionSettings | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name
        self.settings = settings or CompanionSettings()
        self.sleep = sleep
        self.client = CompanionClient(address, token, self.settings, sleep)
        self.address = self.client.address
        self._uploaded: set[str] = set()
        try:
            self.info = self.client.info()
            _check_info(self.info, self.address)
        except BaseException:
            self.client.close()
            raise
        self.limits = Limits.from_dict(self.info.get("limits") or {})
        self.runtimes = {str(r.get("format")): r for r in self.info["runtimes"]}
        # in the companion's order of preference (its first runtime first)
        self.supported_backends = tuple(b.name for fmt in self.runtimes for b in BACKENDS.values() if b.format == fmt)

    # -- Device ----------------------------------------------------------------------------------
    def units_used(self, backend: str) -> str:
        """What the compute units asked for really run on, as the companion reports it (``compute_units_used``
        in info; an iPhone X runs ``all`` on CPU and GPU: it has no Neural Engine for Core ML)."""
        rt = self.runtimes.get(get_backend(backend).format, {})
        used = rt.get("compute_units_used")
        units = self.settings.compute_units
        return str(used.get(units, units)) if isinstance(used, dict) else units

    def fingerprint(self, backend: str, threads: int) -> dict[str, str]:
        rt = self.runtimes.get(get_backend(backend).format, {})
        model = str(self.info.get("model", "unknown"))
        units, used = self.settings.compute_units, self.units_used(backend)
        return {
            "device": self.name,
            "device_model": model,
            "cpu_model": model,
            # compute units are part of the runtime (what was asked and, where it differs, what ran):
            # rows measured with other units cannot share a LUT
            "runtime": f"{rt.get('runtime', 'unknown')}, compute units {units}"
                       + (f" (runs as {used})" if used != units else ""),
            "os": f"{self.info.get('system', '?')} {self.info.get('system_version', '?')}",
            "compute_units": units,
            "compute_units_used": used,
            "affinity": "chosen by the companion's runtime",
            "denormals": "companion runtime default",
            "companion": f"{self.info.get('app', '?')} {self.info.get('app_version', '?')} (protocol {PROTOCOL})",
        }

    def check_backend(self, backend: str) -> None:
        super().check_backend(backend)
        units = self.runtimes[get_backend(backend).format].get("compute_units") or []
        if self.settings.compute_units not in units:
            raise InputError(f"compute units {self.settings.compute_units!r} are not available for {backend} on "
                             f"{self.name} at {self.address} (available: {', '.join(map(str, units)) or 'none'})",
                             hint="pick others with --option compute_units=...")

    def before_row(self, key: str) -> dict[str, str]:
        """Thermal gate: wait (polling) while the phone is hotter than ``thermal_max``."""
        limit = THERMAL_STATES.index(self.settings.thermal_max)
        waited = 0.0
        state = str(self.client.info().get("thermal_state", "unknown"))
        while state in THERMAL_STATES and THERMAL_STATES.index(state) > limit:
            if waited >= self.settings.thermal_wait_s:
                raise DeviceError(
                    f"{self.name} at {self.address} stayed {state} for {waited:.0f} s before {key}",
                    hint="let the phone cool down (out of the sun, off the charger) and run the same command "
                         "again: finished rows are kept")
            self.sleep(self.settings.thermal_poll_s)
            waited += self.settings.thermal_poll_s
            state = str(self.client.info().get("thermal_state", "unknown"))
        env = {"thermal": state}
        if waited:
            env["thermal_wait_s"] = f"{waited:.0f}"
        return env

    def run_request(self, cfg: LoopConfig, want_output: bool) -> dict[str, Any]:
        """The run request's body: the loop's settings within the companion's limits."""
        lim = self.limits
        max_time = min(cfg.max_time_s, lim.max_time_s)
        max_runs = min(cfg.max_runs, lim.max_runs)
        body: dict[str, Any] = {
            "compute_units": self.settings.compute_units,
            "warmup_runs": min(cfg.warmup_runs, lim.max_warmup_runs),
            "warmup_min_s": min(cfg.warmup_min_s, max_time),
            "min_runs": min(cfg.min_runs, max_runs),
            "min_time_s": min(cfg.min_time_s, max_time),
            "max_runs": max_runs,
            "max_time_s": max_time,
            "target_sample_s": cfg.target_sample_s,
            "return_output": want_output,
        }
        return body

    def measure(self, artifact: Artifact, backend: str, cfg: LoopConfig, threads: int,
                on_retry: Callable[[int, float], None] | None = None) -> DeviceResult:
        self.check_backend(backend)
        fmt = get_backend(backend).format
        if artifact.format != fmt:
            raise MeasurementError(f"{artifact.key}: artifact is {artifact.format}, backend {backend} runs {fmt}")
        name = model_name(artifact.key)
        data = pack_model(artifact.path, artifact.format, artifact.input)
        if len(data) > self.limits.max_upload_bytes:
            raise MeasurementError(f"{artifact.key}: the zipped model has {len(data)} bytes, over the companion's "
                                   f"limit of {self.limits.max_upload_bytes}")
        self._upload(name, data, artifact.key)
        try:
            result = self._measure_uploaded(name, data, artifact.key, cfg, on_retry)
        except BaseException:
            self._forget(name)
            raise
        self.client.delete(name)
        self._uploaded.discard(name)
        return result

    def _upload(self, name: str, data: bytes, key: str) -> None:
        try:
            self.client.upload(name, data)
        except CompanionError as e:
            if e.status in (400, 413, 415):  # this model cannot go there; others may
                raise MeasurementError(f"{key}: {e.message}") from None
            raise
        self._uploaded.add(name)

    def _run(self, name: str, data: bytes, key: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            return self.client.run(name, body, timeout)
        except CompanionError as e:
            if e.status == 404:  # the companion restarted and lost the model: upload it again, once
                self._upload(name, data, key)
                return self.client.run(name, body, timeout)
            if e.status == 422:
                raise MeasurementError(f"{key}: the companion could not run it: {e.message}") from None
            raise

    def _measure_uploaded(self, name: str, data: bytes, key: str, cfg: LoopConfig,
                          on_retry: Callable[[int, float], None] | None) -> DeviceResult:
        """The shared loop's rules over the companion's runs (fbprof.loop.measure_attempts)."""
        state: dict[str, Any] = {"output": None, "thermal_after": "unknown", "attempts": 0, "used": None}

        def attempt() -> Attempt:
            body = self.run_request(cfg, want_output=self.settings.check_output and state["attempts"] == 0)
            timeout = self.settings.run_timeout_s or (
                self.settings.timeout_s + 60.0 + body["warmup_min_s"] + 2 * body["max_time_s"])
            res = self._run(name, data, key, body, timeout)
            state["attempts"] += 1
            samples, repeats, capped, elapsed = _run_timings(res, key)
            state["thermal_after"] = str(res.get("thermal_state", "unknown"))
            if "compute_units_used" in res:  # what this run ran on (older companions do not say)
                state["used"] = str(res["compute_units_used"])
            if "output" in res:
                try:
                    state["output"] = decode_array(res["output"])
                except ValueError as e:
                    raise MeasurementError(f"{key}: the companion's output is malformed: {e}") from None
            stats = Stats.of(samples, repeats)
            return Attempt(stats, capped or stats.n < cfg.min_runs, elapsed)

        m = measure_attempts(attempt, cfg, self.sleep, on_retry)
        output, thermal_after = state["output"], state["thermal_after"]
        env = {"compute_units": self.settings.compute_units, "thermal_after": thermal_after}
        if state["used"] is not None:
            env["compute_units_used"] = state["used"]
        return DeviceResult(m, output, env)

    def _forget(self, name: str) -> None:
        """Best effort, no retries: delete a model after a failure (the companion may be gone)."""
        try:
            self.client.delete(name, retries=0)
        except DeviceError:
            pass
        self._uploaded.discard(name)

    def close(self) -> None:
        for name in sorted(self._uploaded):
            self._forget(name)
        self.client.close()


# --------------------------------------------------------------------------------------------------
def discover(timeout_s: float = 3.0, interfaces: list[str] | None = None) -> list[tuple[str, str]]:
    """Companions announcing ``_fbprof._tcp`` on the local network: [(service name, "host:port")].

    ``interfaces``: addresses to listen on (default: every interface)."""
    try:
        from zeroconf import ServiceBrowser, ServiceListener, Zeroconf
    except ImportError:
        raise MissingExtraError("finding the companion by Bonjour/mDNS", "mdns", "zeroconf") from None

    found: dict[str, str] = {}

    class _Listener(ServiceListener):
        def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            info = zc.get_service_info(type_, name, timeout=1500)
            if info is not None and info.port:
                addrs = info.parsed_addresses()
                if addrs:
                    host = addrs[0]
                    found[name] = f"[{host}]:{info.port}" if ":" in host else f"{host}:{info.port}"

        def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            self.add_service(zc, type_, name)

        def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            found.pop(name, None)

    zc = Zeroconf(interfaces=interfaces) if interfaces else Zeroconf()
    try:
        ServiceBrowser(zc, SERVICE_TYPE, _Listener())
        time.sleep(timeout_s)  # a browse window: answers arrive as they come
        return sorted(found.items())
    finally:
        zc.close()


def _find_address(profile_name: str, settings: CompanionSettings) -> str:
    try:
        found = discover(settings.discover_s)
    except MissingExtraError as e:
        raise InputError(f"device {profile_name}: give the companion's address (--device ios:HOST:PORT --profile "
                         f"{profile_name}, --option address=HOST:PORT or {ADDRESS_ENV}); finding it by Bonjour "
                         f"needs zeroconf ({e.hint})") from None
    if not found:
        raise DeviceError(f"no fbprof companion announced itself on the local network within {settings.discover_s:g} s",
                          hint="open the app on the phone, or give its address: --device ios:HOST:PORT")
    if len(found) > 1:
        listed = ", ".join(f"{n.removesuffix('.' + SERVICE_TYPE)} at {a}" for n, a in found)
        raise InputError(f"several companions found ({listed}); pick one with --device ios:HOST:PORT")
    return found[0][1]


def from_profile(profile, address: str | None, options: dict[str, Any]) -> CompanionDevice:
    """Transport factory (see fbprof.devices.profiles): token from --token or $FBPROF_COMPANION_TOKEN."""
    opts = dict(options)
    token = opts.pop("token", None) or os.environ.get(TOKEN_ENV)
    addr = address or opts.pop("address", None) or profile.settings.get("address") or os.environ.get(ADDRESS_ENV)
    opts.pop("address", None)
    base = {k: v for k, v in profile.settings.items() if k != "address"}
    settings = CompanionSettings.from_sources(base, opts)
    if not token:
        raise InputError(f"device {profile.name}: the companion needs its pairing token: pass --token TOKEN (the app "
                         f"shows it) or set {TOKEN_ENV}")
    if not addr or addr in ("auto", "mdns"):
        addr = _find_address(profile.name, settings)
    return CompanionDevice(profile.name, str(addr), str(token), settings)
