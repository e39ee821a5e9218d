"""Predicting latency from a LUT: LAT(a) = sum over layers of the LUT latency of the chosen block."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from fbprof.lut.table import Lut
from fbprof.space import Arch, Space

__all__ = ["LayerCost", "Prediction", "predict", "rows_read", "rows_not_ok", "require_space", "LutDiffRow", "LutDiff", "diff_luts"]


@dataclass(frozen=True)
class LayerCost:
    layer: str
    key: str
    latency_us: float
    status: str  # "ok", "unstable", "invalid" or "identity"
    macs: int


@dataclass
class Prediction:
    arch: str
    total_us: float  # raw LUT sum
    layers: list[LayerCost]
    warnings: list[str] = field(default_factory=list)
    calibrated_us: float | None = None  # when the LUT carries a calibration

    @property
    def best_us(self) -> float:
        return self.calibrated_us if self.calibrated_us is not None else self.total_us

    def to_pandas(self):
        """One row per layer: layer, key, op, latency_us, share (of the raw total), status, macs. ``attrs``: arch,
        total_us, calibrated_us, warnings."""
        import pandas as pd

        df = pd.DataFrame.from_records(
            [{"layer": c.layer, "key": c.key, "op": c.key.split(":", 1)[0], "latency_us": c.latency_us,
              "share": c.latency_us / self.total_us if self.total_us else 0.0, "status": c.status, "macs": c.macs}
             for c in self.layers],
            columns=["layer", "key", "op", "latency_us", "share", "status", "macs"])
        df.attrs = {"arch": self.arch, "total_us": self.total_us, "calibrated_us": self.calibrated_us,
                    "warnings": list(self.warnings)}
        return df


def predict(arch: Arch, lut: Lut) -> Prediction:
    """Sum of the LUT medians over the architecture's layers (identity skips cost 0).

    Raises LutCoverageError listing every missing key; rows that are not ok become warnings. A grid LUT
    (header ``grid``, built for a channel space) interpolates instead: :func:`fbprof.lut.interp.predict_interpolated`.
    """
    if "grid" in lut.header:
        from fbprof.lut.interp import predict_interpolated  # noqa: PLC0415

        return predict_interpolated(arch, lut)
    ops = arch.ops()
    lut.require([s for _, s in ops], f"architecture {arch.name} ({arch.space.name} at {arch.space.resolution}, width {arch.space.width:g})")
    layers = []
    for name, spec in ops:
        if spec.is_identity:
            layers.append(LayerCost(name, spec.key, 0.0, "identity", 0))
        else:
            row = lut.rows[spec.key]
            layers.append(LayerCost(name, spec.key, row.median_us, row.status, spec.macs()))
    warnings = [f"{r.key} is {r.status}: {r.note or 'see the LUT'}" for r in lut.not_ok([s for _, s in ops])]
    total = sum(c.latency_us for c in layers)
    pred = Prediction(arch.name, total, layers, warnings)
    from fbprof.lut.calibration import calibration_of  # noqa: PLC0415 - optional feature of a LUT

    cal = calibration_of(lut)
    if cal is not None:
        pred.calibrated_us = cal.apply(total, arch)
    return pred


def rows_read(arch: Arch, lut: Lut) -> list[str]:
    """Keys of the LUT rows :func:`predict` reads for ``arch`` (sorted): its layers' rows, or for a grid LUT the
    exact rows and the grid rows each interpolated layer reads. A LUT holding only these rows predicts ``arch``
    exactly as ``lut`` does (so the rows can be measured again and the prediction redone from them)."""
    if "grid" in lut.header:
        from fbprof.lut.interp import GridLut  # noqa: PLC0415

        g = GridLut(lut)
        keys: set[str] = set()
        for _, spec in arch.ops():
            if spec.is_identity:
                continue
            keys.update([spec.key] if spec.key in lut.rows else g.sources(spec))
        return sorted(keys)
    return sorted({spec.key for _, spec in arch.ops() if not spec.is_identity})


def rows_not_ok(results: Iterable[tuple[Any, Prediction]], lut: Lut) -> list[dict[str, Any]]:
    """The LUT rows that are not ``ok`` among those the predictions ``(arch, prediction)`` used, each once
    (sorted by key) with its status, note and the architectures that use it. An interpolated layer of a grid
    LUT has no row of its own and is not listed."""
    found: dict[str, dict[str, Any]] = {}
    for arch, p in results:
        for c in p.layers:
            row = lut.rows.get(c.key)
            if c.status not in ("ok", "identity") and row is not None:
                entry = found.setdefault(c.key, {"key": c.key, "status": row.status, "note": row.note, "archs": []})
                if arch.name not in entry["archs"]:
                    entry["archs"].append(arch.name)
    return [found[k] for k in sorted(found)]


def require_space(lut: Lut, space: Space) -> None:
    """Error listing every key ``space`` needs that ``lut`` lacks."""
    lut.require(space.all_specs(), f"space {space.name} at resolution {space.resolution}, width {space.width:g}")


@dataclass(frozen=True)
class LutDiffRow:
    key: str
    a_us: float
    b_us: float

    @property
    def ratio(self) -> float:
        return self.b_us / self.a_us if self.a_us > 0 else float("inf")


@dataclass
class LutDiff:
    rows: list[LutDiffRow]  # sorted by ratio b/a, ascending
    only_a: list[str]
    only_b: list[str]

    def summary(self) -> dict[str, float | int | None]:
        """Over the common ops: how many each LUT is faster at, and the median, smallest and largest ratio B/A
        (None without common ops)."""
        import statistics

        ratios = [r.ratio for r in self.rows]
        faster_b = sum(1 for x in ratios if x < 1)
        return {"common": len(ratios), "b_faster": faster_b, "a_faster": len(ratios) - faster_b,
                "median_ratio": statistics.median(ratios) if ratios else None,
                "min_ratio": min(ratios) if ratios else None, "max_ratio": max(ratios) if ratios else None}


def diff_luts(a: Lut, b: Lut) -> LutDiff:
    common = sorted(set(a.rows) & set(b.rows))
    rows = sorted((LutDiffRow(k, a.rows[k].median_us, b.rows[k].median_us) for k in common), key=lambda r: (r.ratio, r.key))
    return LutDiff(rows, sorted(set(a.rows) - set(b.rows)), sorted(set(b.rows) - set(a.rows)))
