"""The companion protocol's shared pieces (see docs/companion-protocol.md): names, packing, limits.

Standard library and numpy only. The host client (:mod:`fbprof.devices.companion_client`) and the reference
companion (:mod:`fbprof.companion.phone_server`) both use these functions, and the Swift app in
``devices/ios/`` implements the same rules; ``tests/fixtures/companion/`` holds the wire format.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import posixpath
import re
import stat
import zipfile
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PROTOCOL", "API", "SERVICE_TYPE", "DEFAULT_PORT", "THERMAL_STATES", "COMPUTE_UNITS", "LOOP_FIELDS",
    "Limits", "ProtocolError", "model_name", "valid_name", "pack_model", "unpack_model", "encode_array",
    "decode_array", "UNAUTHORIZED_MESSAGE", "MIN_TOKEN_CHARS", "LOCKOUT_FAILURES", "LOCKOUT_BASE_S", "LOCKOUT_MAX_S",
    "parse_content_length",
]

PROTOCOL = 1
API = f"/v{PROTOCOL}"
SERVICE_TYPE = "_fbprof._tcp.local."
DEFAULT_PORT = 8765
#: ProcessInfo.ThermalState on iOS, coolest first; "unknown" where the OS has no such API
THERMAL_STATES = ("nominal", "fair", "serious", "critical")
COMPUTE_UNITS = ("cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all")
#: the run request's loop fields: the same names and meaning as fbprof.loop.LoopConfig
LOOP_FIELDS = ("warmup_runs", "warmup_min_s", "min_runs", "min_time_s", "max_runs", "max_time_s", "target_sample_s")
UNAUTHORIZED_MESSAGE = "missing or wrong pairing token: send the header 'Authorization: Bearer <token>'"
#: a pairing token has at least this many characters (16 of 32 or more symbols: 80 bits or more)
MIN_TOKEN_CHARS = 16
#: wrong-token lock-out: after LOCKOUT_FAILURES wrong tokens in a row every request gets 429 (even with the right
#: token) for LOCKOUT_BASE_S seconds, doubled at each further lock-out up to LOCKOUT_MAX_S; a right token resets it
LOCKOUT_FAILURES = 10
LOCKOUT_BASE_S = 1.0
LOCKOUT_MAX_S = 300.0
MANIFEST = "manifest.json"
_LENGTH_RE = re.compile(r"[0-9]{1,18}")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_RANK = 8


class ProtocolError(Exception):
    """A request the companion refuses: HTTP ``status``, machine-readable ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


@dataclass(frozen=True)
class Limits:
    """What one companion accepts; reported in its info response."""

    max_upload_bytes: int = 64 << 20  # a zipped model (request body)
    max_unpacked_bytes: int = 256 << 20  # the archive's files, uncompressed
    max_files: int = 1024  # entries in one archive
    max_models: int = 16  # models stored at once
    max_runs: int = 10_000  # max_runs of one run request
    max_warmup_runs: int = 1_000
    max_time_s: float = 120.0  # max_time_s of one run request
    max_input_elements: int = 1 << 24
    max_json_bytes: int = 64 << 10  # a JSON request body

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Limits":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def parse_content_length(values: list[str]) -> int | None:
    """The body length from every ``Content-Length`` header of a request: None when there is none.

    Only ASCII digits count (no sign, no spaces inside, no other digits); several headers must agree.
    Anything else is a framing error (``400 bad_request``): the end of the body cannot be known."""
    if not values:
        return None
    given = {v.strip() for v in values}
    if len(given) != 1 or not _LENGTH_RE.fullmatch(next(iter(given))):
        shown = ", ".join(repr(v) for v in values)[:100]
        raise ProtocolError(400, "bad_request", f"Content-Length {shown} is not a number of bytes")
    return int(next(iter(given)))


def valid_name(name: str) -> bool:
    """A model name: 1-64 characters of ``A-Z a-z 0-9 . _ -``, not starting with ``.``, ``_`` or ``-``."""
    return isinstance(name, str) and bool(_NAME_RE.fullmatch(name)) and ".." not in name


def model_name(key: str) -> str:
    """A valid model name for an op key: the key with other characters as ``_`` plus a short hash."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", key).strip("_-")[:50] or "model"
    return f"{stem}-{digest}"


# --------------------------------------------------------------------------------------------------
def pack_model(model: Path, fmt: str, array: np.ndarray) -> bytes:
    """Zip a model (a file, or a folder such as an .mlpackage) with its input and a manifest."""
    model = Path(model)
    x = np.ascontiguousarray(array, dtype="<f4")
    manifest = {
        "protocol": PROTOCOL, "format": fmt, "model": model.name,
        "input": {"file": "input.bin", "dtype": "float32", "shape": list(x.shape)},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
        zf.writestr("input.bin", x.tobytes())
        if model.is_dir():
            for f in sorted(model.rglob("*")):
                if f.is_file():
                    zf.write(f, posixpath.join(model.name, f.relative_to(model).as_posix()))
        else:
            zf.write(model, model.name)
    return buf.getvalue()


def _normal(name: str) -> str:
    """A member's path without empty and ``.`` parts: ``a//./b/`` and ``a/b`` are one path."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _safe_member(name: str) -> bool:
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return False
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return bool(parts) and all(p != ".." for p in parts)


def unpack_model(data: bytes, dest: Path, formats: tuple[str, ...], limits: Limits) -> dict[str, Any]:
    """Check and extract an uploaded archive into ``dest`` (which must not exist); returns the manifest.

    Refuses (``ProtocolError``) archives that are not zips, hold too many or too large files, links,
    or names that are absolute or climb out with ``..`` (zip slip), before writing anything.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ProtocolError(400, "bad_archive", "the upload is not a zip archive") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise ProtocolError(413, "too_large", f"archive has {len(infos)} entries (limit {limits.max_files})")
        total = 0
        files: set[str] = set()
        folders: set[str] = set()
        for info in infos:
            if not _safe_member(info.filename):
                raise ProtocolError(400, "unsafe_archive", f"unsafe path in archive: {info.filename!r}")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ProtocolError(400, "unsafe_archive", f"link in archive: {info.filename!r}")
            path = _normal(info.filename)
            if info.is_dir():
                folders.add(path)
            elif path in files:
                raise ProtocolError(400, "bad_archive", f"duplicate entry in archive: {info.filename!r}")
            else:
                files.add(path)
            parts = path.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            total += info.file_size
        clash = sorted(files & folders)
        if clash:
            raise ProtocolError(400, "bad_archive", f"entry {clash[0]!r} is both a file and a folder in the archive")
        if total > limits.max_unpacked_bytes:
            raise ProtocolError(413, "too_large",
                                f"archive unpacks to {total} bytes (limit {limits.max_unpacked_bytes})")
        names = {i.filename for i in infos}  # as written: the manifest names its files so
        if MANIFEST not in names:
            raise ProtocolError(400, "bad_archive", f"archive has no {MANIFEST}")
        try:
            raw = zf.read(MANIFEST)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise ProtocolError(400, "bad_archive", f"cannot extract {MANIFEST!r}: {e}") from None
        try:
            manifest = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(400, "bad_archive", f"{MANIFEST} is not JSON") from None
        _check_manifest(manifest, names, formats, limits)
        dest.mkdir(parents=True)
        root = dest.resolve()
        written = 0
        for info in infos:
            target = (dest / info.filename).resolve()
            if root not in target.parents:  # belt and braces after _safe_member
                raise ProtocolError(400, "unsafe_archive", f"unsafe path in archive: {info.filename!r}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > limits.max_unpacked_bytes:  # sizes in the directory can lie
                            raise ProtocolError(413, "too_large",
                                                f"archive unpacks to more than {limits.max_unpacked_bytes} bytes")
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                # a damaged entry, sizes or CRC that lie, an unknown compression: the upload's fault
                raise ProtocolError(400, "bad_archive", f"cannot extract {info.filename!r}: {e}") from None
    size = (dest / manifest["input"]["file"]).stat().st_size
    if size != 4 * math.prod(manifest["input"]["shape"]):
        raise ProtocolError(400, "bad_archive", f"input.bin has {size} bytes, the shape needs "
                                                f"{4 * math.prod(manifest['input']['shape'])}")
    return manifest


def _check_manifest(m: Any, names: set[str], formats: tuple[str, ...], limits: Limits) -> None:
    def bad(msg: str) -> ProtocolError:
        return ProtocolError(400, "bad_archive", f"{MANIFEST}: {msg}")

    if not isinstance(m, dict):
        raise bad("expected an object")
    if m.get("protocol") != PROTOCOL:
        raise bad(f"protocol {m.get('protocol')!r} is not {PROTOCOL}")
    fmt = m.get("format")
    if fmt not in formats:
        raise ProtocolError(415, "unsupported_format",
                            f"format {fmt!r} cannot run on this companion (it runs: {', '.join(formats) or 'nothing'})")
    model = m.get("model")
    if not isinstance(model, str) or "/" in model or not _safe_member(model):
        raise bad("model: expected a file or folder name at the archive's top level")
    if model not in names and not any(n.startswith(model + "/") for n in names):
        raise bad(f"model {model!r} is not in the archive")
    inp = m.get("input")
    if not isinstance(inp, dict) or inp.get("dtype") != "float32" or inp.get("file") not in names:
        raise bad("input: expected {file, dtype: float32, shape} naming a file in the archive")
    shape = inp.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= _MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise bad(f"input.shape: expected 1 to {_MAX_RANK} positive integers")
    if math.prod(shape) > limits.max_input_elements:
        raise ProtocolError(413, "too_large", f"input has {math.prod(shape)} elements (limit {limits.max_input_elements})")


# --------------------------------------------------------------------------------------------------
def encode_array(a: np.ndarray) -> dict[str, Any]:
    """An output tensor on the wire: shape, dtype float32 and the little-endian bytes in base64."""
    x = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(x.shape), "dtype": "float32", "data": base64.b64encode(x.tobytes()).decode("ascii")}


def decode_array(d: Any) -> np.ndarray:
    if not isinstance(d, dict) or d.get("dtype") != "float32" or not isinstance(d.get("data"), str):
        raise ValueError("output: expected {shape, dtype: float32, data: base64}")
    shape = d.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError("output.shape: expected non-negative integers")
    raw = base64.b64decode(d["data"], validate=True)
    if len(raw) != 4 * math.prod(shape):
        raise ValueError(f"output: {len(raw)} bytes for shape {shape}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
