"""Device profiles as data: a profile names a transport (how we reach the machine), a backend (the
runtime format measured there) and their settings. Packaged profiles live in ``fbprof/data/profiles``;
users add their own with ``--profiles DIR_OR_FILE``.

A device argument is a profile name (``local``, ``s8``, ``iphonex``) or ``TRANSPORT:ADDRESS``
(``adb:SERIAL``, ``adb:HOST:PORT``, ``ios:HOST:PORT``), which uses the transport's generic profile
(``android``, ``ios``) unless ``--profile`` names another.
"""

from __future__ import annotations

import importlib
import math
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fbprof.backends import get_backend
from fbprof.devices.base import Device
from fbprof.errors import FileFormatError, InputError
from fbprof.space import read_data_file

__all__ = ["coerce_setting", "is_secret_option", "SECRET_WORDS", "DeviceProfile", "TRANSPORTS", "ADDRESS_PREFIXES", "load_profiles", "resolve_device", "open_device"]

#: transport -> "module:function" with function(profile, address, options) -> Device
TRANSPORTS: dict[str, str] = {
    "local": "fbprof.devices.local:from_profile",
    "adb": "fbprof.devices.adb:from_profile",
    "companion": "fbprof.devices.companion_client:from_profile",
}
#: address prefix in --device -> (transport, generic profile)
ADDRESS_PREFIXES: dict[str, tuple[str, str]] = {"adb": ("adb", "android"), "ios": ("companion", "ios")}
_FIELDS = {"name", "transport", "backend", "threads", "description", "settings"}


#: device setting keys whose values are secrets: never echoed, never written to a file
SECRET_WORDS = ("token", "secret", "password", "passwd", "credential")


def is_secret_option(key: str) -> bool:
    """Whether the device setting ``key`` holds a secret (its value is never echoed or written)."""
    k = key.lower()
    return any(w in k for w in SECRET_WORDS)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    transport: str
    backend: str
    threads: int = 1
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def coerce_setting(name: str, value: Any, typ: str, where: str, positive: bool = False) -> Any:
    """Check and convert one device setting (from a profile or a ``--option`` string) to the type named by
    ``typ`` (a dataclass field's annotation: bool, int, float, str, tuple[str, ...], optionally ``| None``).
    Numbers must be >= 0 (> 0 when ``positive``); strings are bounded. Errors name ``where`` and the setting."""
    optional = "None" in typ
    try:
        if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "off", "")):
            if not optional:
                raise ValueError("a value is required")
            return None
        if typ.startswith("tuple"):
            if isinstance(value, str):
                return tuple(shlex.split(value))
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError("expected a list of strings")
        if typ == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if typ == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
                raise ValueError("expected a whole number")
            v = int(value)
            if v < (1 if positive else 0) or v > 10**9:
                raise ValueError("out of range")
            return v
        if typ.startswith("float"):
            if isinstance(value, bool):
                raise ValueError("expected float")
            v = float(value)
            if not math.isfinite(v) or v < 0 or (positive and v == 0) or v > 1e6:
                raise ValueError("out of range")
            return v
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError("expected a string")
        v = str(value)
        if len(v) > 4096 or "\0" in v or "\n" in v:
            raise ValueError("too long or contains a NUL/newline")
        return v
    except (TypeError, ValueError) as e:
        msg = str(e) if str(e).startswith(("expected", "out of", "a value", "too long")) else f"expected {typ}"
        raise InputError(f"{where}: device setting {name}={value!r}: {msg}") from None


def _decode(data: Any, path: str) -> DeviceProfile:
    problems: list[str] = []
    lines = getattr(data, "lines", {})
    if not isinstance(data, dict):
        raise FileFormatError(path, [f"{path}:1: a device profile must be a mapping"])
    for k in data:
        if k not in _FIELDS:
            problems.append(f"{path}:{lines.get(k, 1)}: unknown field {k!r} (allowed: {', '.join(sorted(_FIELDS))})")
    for k in ("name", "transport", "backend"):
        if not isinstance(data.get(k), str):
            problems.append(f"{path}:{lines.get(k, 1)}: {k}: required string")
    if data.get("transport") not in TRANSPORTS and isinstance(data.get("transport"), str):
        problems.append(f"{path}:{lines.get('transport', 1)}: transport {data['transport']!r} unknown "
                        f"(known: {', '.join(TRANSPORTS)})")
    if isinstance(data.get("backend"), str):
        try:
            get_backend(data["backend"])
        except InputError as e:
            problems.append(f"{path}:{lines.get('backend', 1)}: {e.message}")
    threads = data.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        problems.append(f"{path}:{lines.get('threads', 1)}: threads: expected a positive integer")
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        problems.append(f"{path}:{lines.get('settings', 1)}: settings: expected a mapping")
    if problems:
        raise FileFormatError(path, problems)
    return DeviceProfile(data["name"], data["transport"], data["backend"], threads, str(data.get("description", "")),
                         dict(settings), path)


def load_profiles(extra: list[str | Path] | tuple = ()) -> dict[str, DeviceProfile]:
    """Packaged profiles, then user profiles (files or folders of .yaml/.json) overriding by name."""
    out: dict[str, DeviceProfile] = {}
    root = resources.files("fbprof") / "data" / "profiles"
    for res in sorted(root.iterdir(), key=lambda r: r.name):
        if res.name.endswith((".yaml", ".yml", ".json")):
            p = _decode(read_data_file(Path(res.name), res.read_text(encoding="utf-8")), f"<fbprof>/profiles/{res.name}")
            out[p.name] = p
    for item in extra:
        item = Path(item)
        files = sorted(item.glob("*.y*ml")) + sorted(item.glob("*.json")) if item.is_dir() else [item]
        for f in files:
            p = _decode(read_data_file(f), str(f))
            out[p.name] = p
    return out


def resolve_device(device: str, profile: str | None = None, profiles: dict[str, DeviceProfile] | None = None
                   ) -> tuple[DeviceProfile, str | None]:
    """(profile, address) for a --device argument."""
    profiles = profiles if profiles is not None else load_profiles()
    prefix, sep, address = device.partition(":")
    if sep and prefix in ADDRESS_PREFIXES:
        transport, generic = ADDRESS_PREFIXES[prefix]
        name = profile or generic
        if name not in profiles:
            raise InputError(f"unknown device profile {name!r}; known profiles: {', '.join(sorted(profiles))}")
        prof = profiles[name]
        if prof.transport != transport:
            raise InputError(f"profile {name!r} uses transport {prof.transport}, but {device!r} is a {transport} address")
        if not address:
            raise InputError(f"--device {device!r}: give an address after '{prefix}:'")
        return prof, address
    if device in profiles:
        if profile is not None and profile != device:
            raise InputError(f"--profile {profile!r} only applies to an address like adb:SERIAL or ios:HOST:PORT")
        return profiles[device], None
    known = ", ".join(sorted(profiles))
    raise InputError(f"unknown device {device!r}; known devices: {known}, or adb:SERIAL, adb:HOST:PORT, ios:HOST:PORT")


def open_device(profile: DeviceProfile, address: str | None = None, options: dict[str, Any] | None = None) -> Device:
    """Build the device for a profile (and address) through its transport's factory."""
    mod_name, fn = TRANSPORTS[profile.transport].split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise InputError(f"transport {profile.transport!r} is not available in this fbprof ({e.name})") from None
    return getattr(mod, fn)(profile, address, dict(options or {}))
