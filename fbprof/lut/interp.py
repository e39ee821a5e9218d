"""Latency of shapes between the measured points of a grid LUT (FBNetV2 channel spaces).

A LUT built for a channel space (``fbprof measure --space fbnetv2``) measures every interpolatable block
(the inverted residuals) at the points of a (cin, cout) grid per layer position; its header ``grid`` names
the cells (:class:`fbprof.space.GridCell`). Between the points latency is **bilinear in cin x cout** (``scheme="bilinear"``, the default), or, with
``scheme="macs"``, the block's multiply-accumulates (a polynomial in cin and cout: the expansion conv grows
with cin^2) times the bilinear interpolation of latency per MAC at the corners; a block
whose expansion lies between two measured expansions of its family (``k5_e5p4566_hs`` between ``k5_e4_hs``
and ``k5_e7_hs``) is in addition **linear in the expansion**. Skips, stems, heads and FC layers are measured
at every shape they can take and are read exactly.

:func:`bilinear` is the math, written once: it takes Python floats or 0-d torch tensors for ``x`` and ``y``
(the corner values may be floats or tensors too) and uses only arithmetic on them, so with tensors the
gradient flows to ``x`` and ``y`` -- the search's expected channel counts. This module imports no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from fbprof.errors import InputError
from fbprof.lut.table import Lut
from fbprof.space import GridCell
from fbprof.spec import OpSpec, conv_out, parse_block

__all__ = ["bilinear", "block_macs", "SCHEMES", "OutsideGridError", "GridLut", "predict_interpolated", "InterpCheck",
           "check_interpolation"]

#: how latency between grid points is interpolated (module docstring)
SCHEMES = ("bilinear", "macs")

#: widths are channel counts: a query this close to an axis end is at that end. The search's expected widths
#: (sum_i g_i c_i in float32) miss an end by ~1e-6 when g is nearly one-hot on it.
_EPS = 1e-3


class OutsideGridError(InputError):
    """A query the grid cannot answer: no cell for its spatial size/stride, widths outside the axes, or a
    block (or expansion) not measured there."""

    def __init__(self, path: str, queries: list[str], what: str = "the query") -> None:
        self.path = path
        self.queries = list(queries)
        shown = "\n".join(f"  {q}" for q in queries[:50])
        more = f"\n  ... and {len(queries) - 50} more" if len(queries) > 50 else ""
        super().__init__(
            f"{path}: {what} falls outside the measured grid ({len(queries)} op{'s' if len(queries) != 1 else ''}):\n"
            f"{shown}{more}",
            hint="measure a grid that covers it: `fbprof measure --space` with that space, resolution and widths",
        )


def _value(x: Any) -> float:
    """A plain float of a number or a 0-d tensor (detached: only for choosing the cell)."""
    return float(x.detach()) if hasattr(x, "detach") else float(x)


def _bracket(axis: Sequence[float], x: Any) -> tuple[int, int, Any]:
    """Indices (i, j) of the axis points around ``x`` and the weight ``t`` of point j (x = (1-t)a_i + t a_j).
    ``x`` may be a tensor: ``t`` is computed from it by arithmetic, so it carries the gradient."""
    xv = _value(x)
    if xv < axis[0] - _EPS or xv > axis[-1] + _EPS:
        raise ValueError(f"{xv:g} outside [{axis[0]:g}, {axis[-1]:g}]")
    if len(axis) == 1:
        return 0, 0, x * 0.0
    j = 1
    while j < len(axis) - 1 and axis[j] < xv:
        j += 1
    i = j - 1
    return i, j, (x - axis[i]) / (axis[j] - axis[i])


def bilinear(xs: Sequence[float], ys: Sequence[float], values: Sequence[Sequence[Any]], x: Any, y: Any) -> Any:
    """Bilinear interpolation of ``values[i][j]`` (the value at ``xs[i], ys[j]``; axes increasing) at (x, y).

    Works on floats and on 0-d torch tensors alike (differentiable in x, y and the values). Raises
    ValueError when x or y lies outside its axis (no extrapolation)."""
    i0, i1, tx = _bracket(xs, x)
    j0, j1, ty = _bracket(ys, y)
    return ((1 - tx) * (1 - ty) * values[i0][j0] + (1 - tx) * ty * values[i0][j1]
            + tx * (1 - ty) * values[i1][j0] + tx * ty * values[i1][j1])


def block_macs(block: str, h: int, w: int, stride: int, cin: Any, cout: Any) -> Any:
    """Multiply-accumulates of an inverted-residual block as a smooth function of (possibly fractional or
    tensor) widths: :meth:`fbprof.spec.OpSpec.macs` without its rounding of the hidden and SE widths, so
    that it is differentiable in ``cin`` and ``cout``."""
    b = parse_block(block)
    oh, ow = conv_out(h, b.kernel, stride), conv_out(w, b.kernel, stride)
    mid = cin * b.expansion
    expand = 0.0 if b.expansion == 1 else cin * mid / b.groups * h * w
    se = mid * oh * ow + 2 * mid * mid * 0.25 if b.se else 0.0
    return expand + mid * b.kernel * b.kernel * oh * ow + se + mid * cout / b.groups * oh * ow


@dataclass
class GridLut:
    """A grid LUT ready for queries: exact rows, and interpolation inside the header's grid cells
    (``scheme``: one of :data:`SCHEMES`)."""

    lut: Lut
    scheme: str = "bilinear"
    cells: list[GridCell] = field(init=False)
    _rows: dict[tuple, float] = field(init=False, repr=False)
    _exps: dict[tuple, list] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise InputError(f"interpolation scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        self.cells = self.lut.grid()
        self._rows = {}
        exps: dict[tuple, set] = {}
        for key, row in self.lut.rows.items():
            s = OpSpec.parse(key)
            self._rows[(s.op, s.cin, s.h, s.w, s.cout, s.stride)] = row.median_us
            b = s.block
            if b.kind == "ir":
                exps.setdefault((b.family, s.h, s.w, s.stride), set()).add(b.expansion)
        self._exps = {k: sorted(v) for k, v in exps.items()}

    @property
    def path(self) -> str:
        return self.lut.path

    def cell(self, h: int, w: int, stride: int, cin: float, cout: float) -> GridCell | None:
        """A cell at that size and stride whose axes cover (cin, cout) (the narrowest when several do)."""
        found = [c for c in self.cells if (c.h, c.w, c.stride) == (h, w, stride) and c.contains(_value(cin), _value(cout), _EPS)]
        return min(found, key=lambda c: (c.cin[-1] - c.cin[0]) * (c.cout[-1] - c.cout[0])) if found else None

    def _corners(self, block: str, cell: GridCell) -> list[list[float]] | None:
        try:
            return [[self._rows[(block, ci, cell.h, cell.w, co, cell.stride)] for co in cell.cout] for ci in cell.cin]
        except KeyError:
            return None

    def interpolate(self, block: str, stride: int, h: int, cin: Any, cout: Any, w: int | None = None) -> Any:
        """Latency (µs) of ``block`` at stride ``stride``, input ``h x w`` (w defaults to h) and widths
        ``cin``, ``cout`` -- ints, floats or 0-d torch tensors (then the result is a tensor differentiable in
        them): bilinear over the grid cell, and linear in the expansion between measured ones of the block's
        family. Raises :class:`OutsideGridError` when the grid does not cover the query."""
        w = h if w is None else w
        what = f"{block} at {_value(cin):.8g}->{_value(cout):.8g} channels, {h}x{w}, stride {stride}"
        b = parse_block(block)
        if b.kind != "ir":
            raise OutsideGridError(self.path, [f"{what}: only inverted residual blocks are interpolated"])
        cell = self.cell(h, w, stride, cin, cout)
        if cell is None:
            sizes = sorted({f"{c.h}x{c.w}/s{c.stride}" for c in self.cells})
            near = [c for c in self.cells if (c.h, c.w, c.stride) == (h, w, stride)]
            why = ("widths outside the grid axes (" + "; ".join(f"cin {c.cin[0]}..{c.cin[-1]}, cout {c.cout[0]}..{c.cout[-1]}"
                                                           for c in near) + ")") if near else \
                f"no grid cell at {h}x{w}/s{stride} (cells: {', '.join(sizes) or 'none'})"
            raise OutsideGridError(self.path, [f"{what}: {why}"])
        table = self._corners(block, cell)
        if table is not None:
            return self._in_cell(block, cell, table, cin, cout)
        exps = [e for e in self._exps.get((b.family, h, w, stride), [])
                if self._corners(_with_expansion(block, e), cell) is not None]
        lo = [e for e in exps if e <= b.expansion]
        hi = [e for e in exps if e >= b.expansion]
        if not lo or not hi:
            raise OutsideGridError(self.path, [
                f"{what}: {block} not measured in cell {cell}" + (
                    f", and expansion {b.expansion:g} is not between measured ones of {b.family} "
                    f"({', '.join(f'{e:g}' for e in exps)})" if exps else f" (nor any block of family {b.family})")])
        e0, e1 = max(lo), min(hi)
        b0, b1 = _with_expansion(block, e0), _with_expansion(block, e1)
        v0 = self._in_cell(b0, cell, self._corners(b0, cell), cin, cout)
        if e1 == e0:
            return v0
        v1 = self._in_cell(b1, cell, self._corners(b1, cell), cin, cout)
        u = (b.expansion - e0) / (e1 - e0)
        return (1 - u) * v0 + u * v1

    def _in_cell(self, block: str, cell: GridCell, table: list[list[float]], cin: Any, cout: Any) -> Any:
        if self.scheme == "bilinear":
            return bilinear(cell.cin, cell.cout, table, cin, cout)
        work = [[block_macs(block, cell.h, cell.w, cell.stride, ci, co) for co in cell.cout] for ci in cell.cin]
        per_mac = [[v / m for v, m in zip(vs, ms)] for vs, ms in zip(table, work)]
        return block_macs(block, cell.h, cell.w, cell.stride, cin, cout) * bilinear(cell.cin, cell.cout, per_mac, cin, cout)

    def sources(self, spec: OpSpec) -> list[str]:
        """Keys of the grid rows that interpolating ``spec`` reads (the corners of its cell, for each
        expansion consulted); OutsideGridError when the grid does not cover it."""
        read: list[tuple] = []
        rows = self._rows

        class _Recording(dict):
            def __getitem__(self, k):
                read.append(k)
                return dict.__getitem__(self, k)

        self._rows = _Recording(rows)
        try:
            self.interpolate(spec.op, spec.stride, spec.h, spec.cin, spec.cout, spec.w)
        finally:
            self._rows = rows
        return sorted({OpSpec(op, cin, h, w, cout, stride).key for op, cin, h, w, cout, stride in read if
                       (op, cin, h, w, cout, stride) in rows})

    def latency_us(self, spec: OpSpec) -> tuple[float, str]:
        """(latency, how): ``identity`` (0), ``exact`` (a row), or ``interp``; OutsideGridError otherwise."""
        if spec.is_identity:
            return 0.0, "identity"
        exact = self._rows.get((spec.op, spec.cin, spec.h, spec.w, spec.cout, spec.stride))
        if exact is not None:
            return exact, "exact"
        if spec.block.kind != "ir":
            raise OutsideGridError(self.path, [f"{spec.key}: not measured (only inverted residuals are interpolated; "
                                               "skips, stems, heads and FC are measured at every shape of the space)"])
        return float(self.interpolate(spec.op, spec.stride, spec.h, spec.cin, spec.cout, spec.w)), "interp"


def _with_expansion(block: str, e: int | float) -> str:
    """The block name of the same family with expansion ``e`` (the name grammar of :mod:`fbprof.spec`)."""
    if isinstance(e, float) and e.is_integer():
        e = int(e)
    es = str(e) if isinstance(e, int) else repr(e).replace(".", "p")
    return re.sub(r"_e[0-9p]+", "_e" + es, block, count=1)


def predict_interpolated(arch, lut: Lut):
    """:func:`fbprof.lut.predict.predict` for a grid LUT: exact rows where measured, interpolated otherwise, and
    the calibrated latency when the LUT carries a calibration (fitted by `fbprof verify`). Raises
    OutsideGridError listing every op the grid cannot answer."""
    from fbprof.lut.predict import LayerCost, Prediction

    g = GridLut(lut)
    layers, outside = [], []
    for name, spec in arch.ops():
        try:
            lat, how = g.latency_us(spec)
        except OutsideGridError as e:
            outside += [f"{name}: {q}" for q in e.queries]
            continue
        row = lut.rows.get(spec.key)
        status = how if how in ("identity", "interp") else row.status
        layers.append(LayerCost(name, spec.key, lat, status, 0 if how == "identity" else spec.macs()))
    if outside:
        raise OutsideGridError(lut.path, outside, f"architecture {arch.name} ({arch.space.name} at {arch.space.resolution})")
    warnings = [f"{r.key} is {r.status}: {r.note or 'see the LUT'}" for r in lut.not_ok([s for _, s in arch.ops()])]
    total = sum(c.latency_us for c in layers)
    pred = Prediction(arch.name, total, layers, warnings)
    from fbprof.lut.calibration import calibration_of  # noqa: PLC0415 - calibration imports this module

    cal = calibration_of(lut)
    if cal is not None:
        pred.calibrated_us = cal.apply(total, arch)
    return pred


@dataclass
class InterpCheck:
    """Interpolated against directly measured latency of held-out (off-grid) ops."""

    rows: list[tuple[str, float, float]]  # (key, measured µs, interpolated µs)
    skipped: list[tuple[str, str]]  # (key, why)

    @staticmethod
    def error(measured: float, predicted: float) -> float:
        return abs(predicted - measured) / measured if measured > 0 else float("inf")

    @property
    def mape(self) -> float:
        """Mean absolute percentage error, in percent (nan when there is nothing to compare)."""
        if not self.rows:
            return float("nan")
        return 100.0 * sum(self.error(m, p) for _, m, p in self.rows) / len(self.rows)


def check_interpolation(grid: Lut, heldout: Lut, statuses: tuple[str, ...] = ("ok", "unstable"),
                        scheme: str = "bilinear") -> InterpCheck:
    """Compare every inverted-residual row of ``heldout`` (measured directly, off the grid) with the
    interpolation ``grid`` gives for it (``scheme``). Rows with another status, or that the grid cannot
    answer, are listed as skipped."""
    g = GridLut(grid, scheme=scheme)
    rows, skipped = [], []
    for key in sorted(heldout.rows):
        row = heldout.rows[key]
        spec = OpSpec.parse(key)
        if spec.block.kind != "ir":
            skipped.append((key, "not an inverted residual"))
        elif row.status not in statuses:
            skipped.append((key, f"status {row.status}"))
        else:
            try:
                rows.append((key, row.median_us, float(g.interpolate(spec.op, spec.stride, spec.h, spec.cin, spec.cout, spec.w))))
            except OutsideGridError as e:
                skipped.append((key, e.queries[0]))
    return InterpCheck(rows, skipped)
