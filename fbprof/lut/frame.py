"""A LUT as a pandas DataFrame and back: one row per op, every CSV column plus the key's parsed fields.

``pd.read_csv(path, comment="#")`` is not a LUT reader: it cuts any note containing ``#`` and drops the
header. :func:`lut_to_frame` starts from the strict reader instead; :func:`lut_from_frame` checks every
row as strictly as the CSV reader does. pandas is imported only when a conversion runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fbprof.errors import FileFormatError, InputError
from fbprof.loop import Stats
from fbprof.lut.table import COLUMNS, SCHEMA_VERSION, Lut, LutRow, parse_row
from fbprof.spec import OpSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["KEY_FIELDS", "FRAME_COLUMNS", "lut_to_frame", "lut_from_frame"]

#: fields parsed from the key (``k5_e6:16x112x112:24:s2`` -> op k5_e6, cin 16, h 112, w 112, cout 24, stride 2)
KEY_FIELDS = ("op", "cin", "h", "w", "cout", "stride")
FRAME_COLUMNS = COLUMNS + KEY_FIELDS
_INT = ("n", "repeats") + KEY_FIELDS[1:]
_FLOAT = ("median_us", "p10_us", "p90_us", "mean_us", "std_us", "cv", "min_us", "max_us")


def lut_to_frame(lut: Lut) -> "pd.DataFrame":
    """One row per op (sorted by key). ``attrs``: ``header`` (dict), ``path`` and ``schema`` (the LUT version)."""
    import pandas as pd

    records = []
    for row in sorted(lut.rows.values(), key=lambda r: r.key):
        s, spec = row.stats, OpSpec.parse(row.key)
        records.append({
            "key": row.key, "status": row.status, "n": s.n, "repeats": s.repeats, "median_us": s.median,
            "p10_us": s.p10, "p90_us": s.p90, "mean_us": s.mean, "std_us": s.std, "cv": s.cv, "min_us": s.min,
            "max_us": s.max, "env": row.env, "note": row.note, "op": spec.op, "cin": spec.cin, "h": spec.h,
            "w": spec.w, "cout": spec.cout, "stride": spec.stride,
        })
    df = pd.DataFrame.from_records(records, columns=list(FRAME_COLUMNS))
    for c in _INT:
        df[c] = df[c].astype("int64")
    for c in _FLOAT:
        df[c] = df[c].astype("float64")
    for c in ("key", "status", "env", "note", "op"):
        df[c] = df[c].astype(object)
    df.attrs = {"schema": SCHEMA_VERSION, "path": str(lut.path), "header": dict(lut.header)}
    return df


def _cell(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    try:  # pandas NA / numpy scalars
        import pandas as pd

        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v.item() if hasattr(v, "item") else v


def lut_from_frame(df: "pd.DataFrame", header: dict[str, str] | None = None, path: str | None = None) -> Lut:
    """A :class:`Lut` from a frame shaped like :func:`lut_to_frame`'s (key-field columns are optional and, when
    present, must agree with the key). ``header``/``path`` default to ``df.attrs``. Every problem is reported
    as a :class:`~fbprof.errors.FileFormatError` naming the frame row."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"DataFrame lacks the LUT column{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                         hint=f"columns: {', '.join(COLUMNS)} (optional: {', '.join(KEY_FIELDS)})")
    attrs = getattr(df, "attrs", {}) or {}
    header = dict(attrs.get("header", {}) if header is None else header)
    path = str(attrs.get("path", "<DataFrame>") if path is None else path)
    problems: list[str] = []
    rows: dict[str, LutRow] = {}
    for i, rec in enumerate(df.to_dict("records")):
        where = f"{path}: DataFrame row {i}"
        v = {c: _cell(rec.get(c)) for c in FRAME_COLUMNS if c in rec}
        key, status = str(v.get("key") or ""), str(v.get("status") or "")
        env, note = str(v.get("env") or ""), str(v.get("note") or "")
        try:
            stats = Stats(int(v["n"]), int(v["repeats"]), float(v["median_us"]), _opt(v["p10_us"]), _opt(v["p90_us"]),
                          float(v["mean_us"]), float(v["std_us"]), float(v["cv"]), float(v["min_us"]), float(v["max_us"]))
        except (TypeError, ValueError, KeyError) as e:
            problems.append(f"{where}: {key or '?'}: not a number where one is needed ({e})")
            continue
        row = LutRow(key, status, stats, env, note)
        before = len(problems)
        parse_row(row.cells(), where, problems, 0)  # the CSV reader's checks, on what this row would write
        if len(problems) > before:
            continue
        spec = OpSpec.parse(key)
        for f in KEY_FIELDS:
            if f in v and v[f] is not None and str(v[f]) != str(getattr(spec, f)):
                problems.append(f"{where}: {f} {v[f]!r} disagrees with the key {key} ({getattr(spec, f)!r})")
        if key in rows:
            problems.append(f"{where}: duplicate row for {key}")
            continue
        rows[key] = row
    if problems:
        raise FileFormatError(path, problems)
    return Lut(path, header, rows)


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)
