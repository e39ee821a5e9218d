"""Predicting latency from a LUT: LAT(a) = sum over layers of the LUT latency of the chosen block."""

from __future__ import annotations

from dataclasses import dataclass, field

from fbprof.lut.table import Lut
from fbprof.space import Arch, Space

__all__ = ["LayerCost", "Prediction", "predict", "require_space", "LutDiffRow", "LutDiff", "diff_luts"]


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


def diff_luts(a: Lut, b: Lut) -> LutDiff:
    common = sorted(set(a.rows) & set(b.rows))
    rows = sorted((LutDiffRow(k, a.rows[k].median_us, b.rows[k].median_us) for k in common), key=lambda r: (r.ratio, r.key))
    return LutDiff(rows, sorted(set(a.rows) - set(b.rows)), sorted(set(b.rows) - set(a.rows)))
