"""The LUT CSV: schema, strict reader, deterministic writer and the resume journal (torch-free).

See docs/lut-format.md. A LUT file is::

    # fbprof-lut v1
    # device: local
    # backend: onnxruntime
    # ... (one "# name: value" line per header field, in a fixed order)
    key,status,n,repeats,median_us,p10_us,p90_us,mean_us,std_us,cv,min_us,max_us,env,note
    k3_e1:16x112x112:16:s1,ok,50,3,401.52,...

Rows are sorted by key and numbers have a fixed format, so measuring again changes numbers only.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from fbprof.errors import FileFormatError, InputError, LutCoverageError
from fbprof.fileio import atomic_write_text, read_text_limited
from fbprof.loop import STATUSES, LoopConfig, Stats, parse_pairing
from fbprof.spec import OpSpec
from fbprof.space import GridCell, Space, SpaceTag, parse_grid, parse_space_tags

__all__ = ["SCHEMA_VERSION", "COLUMNS", "HEADER_ORDER", "IDENTITY_FIELDS", "LutRow", "Lut", "read_lut", "write_lut",
           "format_lut", "Journal", "clean_cell", "MAX_US", "LUT_FILE_LIMIT"]

SCHEMA_VERSION = 1
MAGIC = f"# fbprof-lut v{SCHEMA_VERSION}"
COLUMNS = ("key", "status", "n", "repeats", "median_us", "p10_us", "p90_us", "mean_us", "std_us", "cv", "min_us",
           "max_us", "env", "note")
#: header fields in the order they are written; others follow sorted by name
HEADER_ORDER = (
    "device", "backend", "format", "runtime", "threads", "affinity", "spaces", "units", "activations", "denormals",
    "loop", "pairing", "timed", "device_model", "cpu_model", "cores", "governor", "os", "python", "torch", "fbprof", "command",
)
REQUIRED_HEADER = ("device", "backend", "runtime", "threads", "spaces")
#: rows measured under different values of these cannot share a file
IDENTITY_FIELDS = ("device", "device_model", "cpu_model", "backend", "runtime", "threads", "pairing", "timed")
#: the ``timed`` field of LUTs measured by this fbprof (a backend's ``SPEC["timed"]`` may say more): the loop timed
#: the runtime's invoke alone, outputs read after timing (fbprof.backends.base.Session); LUTs without it timed an
#: output read-back in every call
TIMED = "invoke"
_US_FIELDS = ("median_us", "p10_us", "p90_us", "mean_us", "std_us", "min_us", "max_us")
#: the largest latency a row may hold (about 11.6 days): a sum of a million of them stays finite
MAX_US = 1e12
#: a LUT is read whole; real ones are well under 1 MB
LUT_FILE_LIMIT = 64 << 20
#: numbers as fbprof writes them (and as spreadsheets re-save them): no ``1_0``, ``nan``, ``0x10``
_NUMBER_RE = re.compile(r"[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_RE = re.compile(r"[+]?[0-9]{1,12}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean_cell(text: str, limit: int = 4000) -> str:
    """Text that came from a device or an exception, made fit for one CSV cell or header line: control
    characters (newlines included) become spaces, and it is cut to ``limit`` characters."""
    return _CONTROL_RE.sub(" ", str(text))[:limit]


def _fmt_us(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


@dataclass(frozen=True)
class LutRow:
    """One measured op. Latencies in microseconds per inference."""

    key: str
    status: str
    stats: Stats  # in microseconds
    env: str = ""
    note: str = ""
    line: int = field(default=0, compare=False)

    @property
    def median_us(self) -> float:
        return self.stats.median

    @property
    def spec(self) -> OpSpec:
        return OpSpec.parse(self.key)

    def cells(self) -> list[str]:
        s = self.stats
        return [self.key, self.status, str(s.n), str(s.repeats), _fmt_us(s.median), _fmt_us(s.p10), _fmt_us(s.p90),
                _fmt_us(s.mean), _fmt_us(s.std), f"{s.cv:.4f}", _fmt_us(s.min), _fmt_us(s.max), clean_cell(self.env),
                clean_cell(self.note)]


@dataclass
class Lut:
    path: str
    header: dict[str, str]
    rows: dict[str, LutRow]
    header_lines: dict[str, int] = field(default_factory=dict, compare=False)  # field -> line number

    def __len__(self) -> int:
        return len(self.rows)

    # -- header readers: each structured field has one parser, used everywhere -------------------
    def where(self, name: str) -> str:
        """``path:line`` of a header field (the file when it has no line, e.g. a LUT built in memory)."""
        line = self.header_lines.get(name)
        return f"{self.path}:{line}" if line else f"{self.path}"

    def _field_error(self, name: str, reason: str, hint: str | None = None) -> FileFormatError:
        return FileFormatError(self.path, [f"{self.where(name)}: header {name}: {reason}"], hint=hint)

    def space_tags(self) -> list[SpaceTag]:
        """The spaces the LUT was measured for (``spaces`` field), strictly parsed."""
        try:
            return parse_space_tags(self.header.get("spaces", ""), self.where("spaces"))
        except InputError as e:
            raise FileFormatError(self.path, [e.message]) from None

    def space(self) -> Space:
        """The single space named in the header, resolved (an error when it names none or several)."""
        tags = self.space_tags()
        if len(tags) != 1:
            raise InputError(f"{self.where('spaces')}: header names {len(tags)} spaces "
                             f"({', '.join(map(str, tags)) or 'none'})",
                             hint="choose one with --space (and --resolution/--width)")
        return tags[0].load(Path(self.path).parent)

    def grid(self) -> list[GridCell]:
        """The (cin, cout) grid cells a channel-space LUT was measured on (``grid`` field; none when absent),
        strictly parsed; see :mod:`fbprof.lut.interp`."""
        try:
            return parse_grid(self.header.get("grid", ""), f"{self.where('grid')}: header grid")
        except InputError as e:
            raise FileFormatError(self.path, [e.message]) from None

    def loop_config(self) -> LoopConfig:
        """The measuring loop's settings (``loop`` field; defaults where the field is absent)."""
        try:
            return LoopConfig.parse(self.header.get("loop", ""), f"{self.where('loop')}: header loop")
        except ValueError as e:
            raise FileFormatError(self.path, [str(e)]) from None

    def pairing(self) -> tuple[int, int] | None:
        """``(iterations, warm)`` when the rows were measured by sample-level pairing (``pairing`` field), else None."""
        text = self.header.get("pairing")
        if text is None:
            return None
        try:
            return parse_pairing(text, f"{self.where('pairing')}: header pairing")
        except ValueError as e:
            raise FileFormatError(self.path, [str(e)]) from None

    def threads(self) -> int:
        text = self.header.get("threads", "")
        if not text.isdigit() or not 1 <= int(text) <= 4096:
            raise self._field_error("threads", f"{text[:40]!r} is not a thread count (1..4096)")
        return int(text)

    def backend(self) -> str:
        return self.header.get("backend", "")

    def validate(self) -> "Lut":
        """Parse the structured header fields strictly too (spaces, threads, loop, pairing, grid): a malformed
        one raises :class:`FileFormatError` naming the file and line. What ``fbprof lut validate`` and
        :func:`fbprof.validate_lut` check beyond the strict reading of the rows. Returns the LUT."""
        self.space_tags(), self.threads(), self.loop_config(), self.pairing(), self.grid()
        return self

    def calibration(self):
        """The stored calibration (``calibration`` field), or None; see :mod:`fbprof.lut.calibration`."""
        from fbprof.lut.calibration import calibration_of

        return calibration_of(self)

    def missing(self, specs: Iterable[OpSpec]) -> list[str]:
        return sorted({s.key for s in specs if not s.is_identity and s.key not in self.rows})

    def require(self, specs: Iterable[OpSpec], what: str) -> None:
        missing = self.missing(specs)
        if missing:
            raise LutCoverageError(self.path, missing, what)

    def latency_us(self, spec: OpSpec) -> float:
        if spec.is_identity:
            return 0.0
        row = self.rows.get(spec.key)
        if row is None:
            raise LutCoverageError(self.path, [spec.key], "this op")
        return row.median_us

    def not_ok(self, specs: Iterable[OpSpec] | None = None) -> list[LutRow]:
        keys = self.rows.keys() if specs is None else {s.key for s in specs}
        return [self.rows[k] for k in sorted(keys) if k in self.rows and self.rows[k].status != "ok"]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.rows.values():
            out[r.status] += 1
        return out

    # -- pandas and writing (see fbprof.lut.frame) --------------------------------------------------
    def to_pandas(self):
        """One row per op: the CSV columns plus the key's op/cin/h/w/cout/stride; the header in ``df.attrs``."""
        from fbprof.lut.frame import lut_to_frame

        return lut_to_frame(self)

    @classmethod
    def from_pandas(cls, df, header: dict[str, str] | None = None, path: str | None = None) -> "Lut":
        """The inverse of :meth:`to_pandas` (header and path from ``df.attrs`` unless given); rows checked strictly."""
        from fbprof.lut.frame import lut_from_frame

        return lut_from_frame(df, header, path)

    def write(self, path: str | Path | None = None) -> Path:
        """Write this LUT (sorted, fixed formatting) atomically to ``path`` (default: its own path)."""
        target = Path(self.path if path is None else path)
        write_lut(target, self.header, self.rows.values())
        return target


# ------------------------------------------------------------------------------------------------
def format_lut(header: dict[str, str], rows: Iterable[LutRow]) -> str:
    out = io.StringIO()
    out.write(MAGIC + "\n")
    for name in _ordered(header):
        value = clean_cell(str(header[name]), 100_000).strip()
        out.write(f"# {name}: {value}\n")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for row in sorted(rows, key=lambda r: r.key):
        w.writerow(row.cells())
    return out.getvalue()


def _ordered(header: dict[str, str]) -> list[str]:
    first = [h for h in HEADER_ORDER if h in header]
    return first + sorted(h for h in header if h not in HEADER_ORDER)


def write_lut(path: str | Path, header: dict[str, str], rows: Iterable[LutRow]) -> None:
    """Write a whole LUT atomically (sorted, fixed formatting)."""
    atomic_write_text(path, format_lut(header, rows))


# ------------------------------------------------------------------------------------------------
def _num(cell: str, name: str, problems: list[str], where: str, *, integer: bool = False, optional: bool = False):
    if cell == "":
        if optional:
            return None
        problems.append(f"{where}: {name} is empty")
        return None
    if cell.lstrip().startswith("-") and (_INT_RE if integer else _NUMBER_RE).fullmatch(cell.strip().lstrip("-")):
        problems.append(f"{where}: {name} {cell[:40]!r} is negative")
        return None
    if not (_INT_RE if integer else _NUMBER_RE).fullmatch(cell):
        problems.append(f"{where}: {name} {cell[:40]!r} is not {'an integer' if integer else 'a number'}")
        return None
    v = int(cell) if integer else float(cell)
    if not integer and not (math.isfinite(v) and v <= MAX_US):
        problems.append(f"{where}: {name} {cell[:40]!r} is out of range (at most {MAX_US:g})")
        return None
    return v


def parse_row(cells: list[str], where: str, problems: list[str], line: int) -> LutRow | None:
    """Parse one CSV row; append every problem found to ``problems``."""
    before = len(problems)
    if len(cells) != len(COLUMNS):
        problems.append(f"{where}: expected {len(COLUMNS)} fields, found {len(cells)}")
        return None
    d = dict(zip(COLUMNS, cells))
    try:
        OpSpec.parse(d["key"])
    except InputError as e:
        problems.append(f"{where}: {e.message}")
    if d["status"] not in STATUSES:
        problems.append(f"{where}: status {d['status']!r} is not one of {', '.join(STATUSES)}")
    n = _num(d["n"], "n", problems, where, integer=True)
    reps = _num(d["repeats"], "repeats", problems, where, integer=True)
    vals = {k: _num(d[k], k, problems, where, optional=k in ("p10_us", "p90_us")) for k in _US_FIELDS}
    cv = _num(d["cv"], "cv", problems, where)
    if n is not None and n < 1:
        problems.append(f"{where}: n must be >= 1")
    if reps is not None and reps < 1:
        problems.append(f"{where}: repeats must be >= 1")
    if vals["median_us"] is not None and vals["median_us"] <= 0:
        problems.append(f"{where}: median_us must be > 0 (no op runs in no time)")
    if len(problems) > before:
        return None
    order = [vals["min_us"], vals["p10_us"], vals["median_us"], vals["p90_us"], vals["max_us"]]
    present = [v for v in order if v is not None]
    if any(a > b * (1 + 1e-9) + 1e-3 for a, b in zip(present, present[1:])):
        problems.append(f"{where}: latencies out of order (need min <= p10 <= median <= p90 <= max)")
        return None
    if not (vals["min_us"] - 1e-3 <= vals["mean_us"] <= vals["max_us"] + 1e-3):
        problems.append(f"{where}: mean_us outside [min_us, max_us]")
        return None
    stats = Stats(n, reps, vals["median_us"], vals["p10_us"], vals["p90_us"], vals["mean_us"], vals["std_us"], cv,
                  vals["min_us"], vals["max_us"])
    return LutRow(d["key"], d["status"], stats, d["env"], d["note"], line)


def _split_lines(text: str) -> list[str]:
    return text.split("\n")


def _unquote(line: str) -> str:
    """A header or column line as a CSV tool re-saves it (``"# device: local"``, ``"key","status",...``) back
    to what fbprof wrote: the cells joined by commas. Any other line is returned as it is."""
    if not line.startswith('"'):
        return line
    try:
        return ",".join(next(csv.reader([line.rstrip("\r")], strict=True)))
    except (csv.Error, StopIteration):
        return line


def parse_lut_text(text: str, path: str) -> Lut:
    """Strictly parse a LUT; raise FileFormatError listing every problem as ``path:line: reason``."""
    problems: list[str] = []
    if text.startswith("\ufeff"):  # a byte-order mark, as some editors save UTF-8
        text = text[1:]
    lines = _split_lines(text)
    if not text:
        raise FileFormatError(path, [f"{path}:1: empty file (not an fbprof LUT)"])
    # the header, magic to column line, as written (a CSV tool may have quoted it)
    for n in range(len(lines)):
        lines[n] = _unquote(lines[n])
        if n and not lines[n].startswith("#"):
            break
    if lines[0].strip() != MAGIC:
        if lines[0].startswith("# fbprof-lut v"):
            raise FileFormatError(path, [f"{path}:1: unsupported LUT schema {lines[0][2:80]!r} (this fbprof reads v{SCHEMA_VERSION})"])
        raise FileFormatError(path, [f"{path}:1: not an fbprof LUT (first line must be {MAGIC!r})"])
    header: dict[str, str] = {}
    header_lines: dict[str, int] = {}
    i = 1
    while i < len(lines) and lines[i].startswith("#"):
        body = lines[i][1:].strip()
        name, sep, value = body.partition(":")
        if not sep or not name.strip():
            problems.append(f"{path}:{i + 1}: header line must be '# name: value'")
        elif name.strip() in header:
            problems.append(f"{path}:{i + 1}: header field {name.strip()!r} given twice")
        else:
            header[name.strip()] = value.strip()
            header_lines[name.strip()] = i + 1
        i += 1
    for req in REQUIRED_HEADER:
        if req not in header:
            problems.append(f"{path}:{i}: header lacks the required field {req!r}")
    if i >= len(lines) or lines[i].rstrip("\r") != ",".join(COLUMNS):
        got = lines[i] if i < len(lines) else "<end of file>"
        problems.append(f"{path}:{i + 1}: expected the column line {','.join(COLUMNS)!r}, found {got[:80]!r}")
        raise FileFormatError(path, problems)
    rows: dict[str, LutRow] = {}
    body_lines = lines[i + 1:]
    ends_with_newline = text.endswith("\n")
    for j, raw in enumerate(body_lines):
        lineno = i + 2 + j
        last = j == len(body_lines) - 1
        if last and raw == "" and ends_with_newline:
            break
        where = f"{path}:{lineno}"
        if last and not ends_with_newline:
            problems.append(f"{where}: truncated row (the file ends without a newline: an interrupted write?)")
            continue
        if raw.strip() == "":
            problems.append(f"{where}: blank line")
            continue
        if raw.startswith("#"):
            problems.append(f"{where}: comment lines are only allowed in the header")
            continue
        try:
            cells = next(csv.reader([raw], strict=True))
        except csv.Error as e:
            problems.append(f"{where}: malformed CSV: {e}")
            continue
        row = parse_row(cells, where, problems, lineno)
        if row is None:
            continue
        if row.key in rows:
            problems.append(f"{where}: duplicate row for {row.key} (first at line {rows[row.key].line}); "
                            "fbprof never averages duplicates: delete one")
            continue
        rows[row.key] = row
    if problems:
        raise FileFormatError(path, problems)
    return Lut(path, header, rows, header_lines)


def read_lut(path: str | Path) -> Lut:
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError(f"{p}: no such LUT file")
    return parse_lut_text(read_text_limited(p, LUT_FILE_LIMIT, "LUT file"), str(p))


# ------------------------------------------------------------------------------------------------
class Journal:
    """Rows of a measurement in progress, appended and flushed to ``<lut>.partial`` one at a time.

    Its first lines are the LUT header of the run (so a resumed run can check it measures the same
    thing). A process killed mid-write leaves at most one incomplete last line, which is dropped.
    """

    def __init__(self, lut_path: str | Path) -> None:
        self.path = Path(str(lut_path) + ".partial")
        self._fh: io.TextIOWrapper | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> tuple[dict[str, str], dict[str, LutRow], list[str]]:
        """(header, rows, notes). Rows later in the journal replace earlier ones (a re-measure)."""
        try:
            text = read_text_limited(self.path, LUT_FILE_LIMIT, "journal")
        except InputError as e:
            raise FileFormatError(str(self.path), [e.message], hint=f"delete {self.path} to start over") from None
        notes: list[str] = []
        if not text.endswith("\n"):
            cut = text.rfind("\n") + 1
            notes.append(f"{self.path}: dropped an incomplete last row (the row in flight when it stopped)")
            text = text[:cut]
        if "\n" + ",".join(COLUMNS) + "\n" not in text:
            return {}, {}, notes + [f"{self.path}: no complete header; ignored"]
        lines = text.split("\n")
        header: dict[str, str] = {}
        rows: dict[str, LutRow] = {}
        problems: list[str] = []
        k = 1
        while k < len(lines) and lines[k].startswith("#"):
            name, _, value = lines[k][1:].strip().partition(":")
            header[name.strip()] = value.strip()
            k += 1
        for j in range(k + 1, len(lines)):
            if not lines[j]:
                continue
            try:
                cells = next(csv.reader([lines[j]], strict=True))
            except csv.Error as e:
                problems.append(f"{self.path}:{j + 1}: malformed CSV: {e}")
                continue
            row = parse_row(cells, f"{self.path}:{j + 1}", problems, j + 1)
            if row is not None:
                rows[row.key] = row
        if problems:
            raise FileFormatError(str(self.path), problems, hint=f"delete {self.path} to start over")
        return header, rows, notes

    def start(self, header: dict[str, str]) -> None:
        """Open for appending; write the header if the journal is new."""
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            # make sure we append on a fresh line (drop a partial last row)
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                with open(self.path, "r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)
        self._fh = open(self.path, "a", encoding="utf-8", newline="")
        if new:
            self._fh.write(format_lut(header, []))
            self._sync()

    def append(self, row: LutRow) -> None:
        assert self._fh is not None, "journal not started"
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row.cells())
        self._fh.write(buf.getvalue())
        self._sync()

    def _sync(self) -> None:
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
