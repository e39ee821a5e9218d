"""Calibration of LUT predictions against whole-network measurements (filled in by `fbprof verify`).

A LUT may carry a calibration in its header; :func:`calibration_of` returns it or None.
"""

from __future__ import annotations

from typing import Protocol

from fbprof.lut.table import Lut
from fbprof.space import Arch

__all__ = ["Calibration", "calibration_of"]


class Calibration(Protocol):
    def apply(self, raw_us: float, arch: Arch) -> float: ...


def calibration_of(lut: Lut) -> Calibration | None:
    return None
