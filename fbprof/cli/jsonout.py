"""``--json``: one versioned JSON document per command on stdout (docs/json-output.md).

Every document is an object with ``schema`` (``fbprof.<command>/<version>``, e.g. ``fbprof.predict/1``) and
``fbprof`` (the version that wrote it); :data:`SCHEMAS` holds a JSON Schema for each, checked by the
tests with :func:`check`. A version changes only when a field is removed or changes meaning; new fields
may appear in any version. Errors under ``--json`` are a ``fbprof.error/1`` document on stdout (exit
codes are those of the plain command). Standard library only: ``fbprof --help`` imports this module.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fbprof import __version__

__all__ = ["JSON_FLAG", "SCHEMAS", "document", "emit", "error_document", "check", "finite", "lut_id"]

#: key in click's ``ctx.meta`` (shared by every context of one command line): ``--json`` was given
JSON_FLAG = "fbprof.json"
VERSION = 1


def _t(*types: str) -> dict:
    return {"type": list(types) if len(types) > 1 else types[0]}


S, I, N, B = _t("string"), _t("integer"), _t("number"), _t("boolean")
NN, SN = _t("number", "null"), _t("string", "null")


def _arr(items: dict) -> dict:
    return {"type": "array", "items": items}


def _obj(props: dict, extra: dict | bool = False) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": extra}


def _doc(name: str, props: dict) -> dict:
    return _obj({"schema": {"const": f"fbprof.{name}/{VERSION}"}, "fbprof": S, **props}, extra=True)


_LUT_ID = _obj({"path": S, "device": S, "backend": S, "runtime": S})
_COUNTS = {"type": "object", "additionalProperties": I}
_ROW = _obj({"key": S, "status": {"enum": ["ok", "unstable", "invalid"]}, "n": I, "repeats": I, "median_us": N,
             "p10_us": NN, "p90_us": NN, "mean_us": N, "std_us": N, "cv": N, "min_us": N, "max_us": N, "env": S,
             "note": S})
_LAYER = _obj({"layer": S, "key": S, "op": S, "latency_us": N, "share": N,
               "status": {"enum": ["ok", "unstable", "invalid", "identity", "interp"]}, "macs": I})

SCHEMAS: dict[str, dict] = {
    "error": _doc("error", {"error": _obj({"type": S, "message": S, "hint": SN, "exit_code": I, "problems": _arr(S),
                                            "missing": _arr(S)})}),
    "predict": _doc("predict", {
        "lut": _LUT_ID,
        "archs": _arr(_obj({"name": S, "space": S, "resolution": I, "width": N, "total_us": N, "calibrated_us": NN,
                            "macs": I, "params": I, "layers": _arr(_LAYER)})),
        "not_ok": _arr(_obj({"key": S, "status": S, "note": S, "archs": _arr(S)})),
    }),
    "arch-info": _doc("arch-info", {
        "arch": _obj({"name": S, "space": S, "resolution": I, "width": N, "head_channels": I, "blocks": _arr(S)}),
        "layers": _arr(_obj({"layer": S, "key": S, "block": S, "input": _arr(I), "output": _arr(I), "stride": I,
                             "macs": I, "params": I})),
        "macs": I, "params": I,
    }),
    "arch-list": _doc("arch-list", {
        "archs": _arr(S),
        "spaces": _arr(_obj({"name": S, "layers": I, "resolution": I, "width": N, "ops": I})),
    }),
    "lut-show": _doc("lut-show", {"path": S, "header": {"type": "object", "additionalProperties": S},
                                  "counts": _COUNTS, "rows": _arr(_ROW)}),
    "lut-diff": _doc("lut-diff", {
        "a": _LUT_ID, "b": _LUT_ID,
        "rows": _arr(_obj({"key": S, "a_us": N, "b_us": N, "ratio": NN})),
        "only_a": _arr(S), "only_b": _arr(S),
        "summary": _obj({"common": I, "b_faster": I, "a_faster": I, "median_ratio": NN, "min_ratio": NN,
                         "max_ratio": NN}),
    }),
    "lut-validate": _doc("lut-validate", {
        "valid": B,
        "files": _arr(_obj({"path": S, "valid": B, "rows": I, "counts": _COUNTS, "problems": _arr(S)})),
    }),
    "devices": _doc("devices", {
        "devices": _arr(_obj({"name": S, "transport": S, "backend": S, "threads": I, "description": S})),
    }),
    "measure": _doc("measure", {
        "path": S, "valid": B, "counts": _COUNTS, "measured": I, "reused": I,
        "failed": {"type": "object", "additionalProperties": S},
        "not_ok": _arr(_obj({"key": S, "status": S, "cv": N, "note": S})), "retried": I,
        "wall_s": N, "export_s": N, "loop_s": N, "interrupted": B,
    }),
    "search": _doc("search", {
        "out": S, "lut": S, "lut_space": S,
        "archs": _arr(_obj({"label": S, "name": S, "blocks": _arr(S), "channels": _t("array", "null"),
                            "resolution": _t("integer", "null"), "path": S, "predicted_us": N, "macs": I,
                            "params": I, "log_prob": N, "warnings": _arr(S)})),
        "target_us": NN, "heldout_accuracy_supernet": NN, "heldout_ce_supernet": NN, "wall_s": N,
        "files": {"type": "object", "additionalProperties": S},
    }),
    "verify": _doc("verify", {"summary": {"type": "object"}, "files": {"type": "object", "additionalProperties": S},
                              "failed": {"type": "object", "additionalProperties": S}}),
    "verify-breakdown": _doc("verify-breakdown", {"summary": {"type": "object"},
                                                  "files": {"type": "object", "additionalProperties": S},
                                                  "failed": {"type": "object", "additionalProperties": S}}),
}


def finite(x: float | None) -> float | None:
    """JSON has no infinity or NaN: those become null."""
    return None if x is None or not math.isfinite(x) else x


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return finite(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def document(name: str, **fields: Any) -> dict:
    """The document ``name`` (a key of :data:`SCHEMAS`); NaN and infinities become null."""
    if name not in SCHEMAS:
        raise KeyError(name)
    return {"schema": f"fbprof.{name}/{VERSION}", "fbprof": __version__, **_clean(fields)}


def emit(name: str, **fields: Any) -> None:
    """Print one document on stdout (through click, so CliRunner sees it)."""
    import click

    click.echo(json.dumps(document(name, **fields), indent=1, ensure_ascii=False, allow_nan=False))


def lut_id(lut: Any) -> dict[str, str]:
    """How a document names a LUT: its path and the header's device, backend and runtime."""
    h = lut.header
    return {"path": str(lut.path), "device": h.get("device", ""), "backend": h.get("backend", ""),
            "runtime": h.get("runtime", "")}


def error_document(kind: str, message: str, exit_code: int, hint: str | None = None,
                   problems: list[str] | None = None, missing: list[str] | None = None) -> dict:
    return document("error", error={"type": kind, "message": message, "hint": hint, "exit_code": int(exit_code),
                                    "problems": list(problems or []), "missing": list(missing or [])})


# ------------------------------------------------------------------------------------------------
_PY = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "null": type(None),
       "object": dict, "array": list}


def check(value: Any, schema: dict, where: str = "$") -> list[str]:
    """Problems of ``value`` against ``schema`` (the subset of JSON Schema used above); empty when it matches."""
    out: list[str] = []
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, _PY[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        if not ok:
            return out + [f"{where}: {type(value).__name__} is not {'/'.join(types)}"]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                out.append(f"{where}: lacks {k!r}")
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                out += check(v, props[k], f"{where}.{k}")
            elif extra is False:
                out.append(f"{where}: unexpected {k!r}")
            elif isinstance(extra, dict):
                out += check(v, extra, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += check(v, schema["items"], f"{where}[{i}]")
    return out
