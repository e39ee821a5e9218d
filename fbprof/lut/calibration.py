"""Calibration of LUT predictions against whole-network measurements (fitted by `fbprof verify`).

The raw LUT sum treats every op as if it ran alone. Inside a whole network some ops run faster (warm
caches at high resolution) and some slower (cold weights late in the network, the pool+FC), and the
runtime adds a per-inference overhead. A calibration is a small linear correction of the LUT sum,
fitted on measured whole networks:

    calibrated = intercept_us + sum over groups g of scale_g * (LUT sum of the arch's ops in group g)

Groups are named parts of the network: ``stem``, ``s1`` .. ``sN`` (the searched layers of stage N)
and ``tail`` (head conv, pool, FC). Models (see :data:`MODELS`):

* ``scale``: one group ``all``, no intercept;
* ``linear``: one group ``all`` plus an intercept;
* ``stages``: an intercept and three groups that split the network by stage position (``early``,
  ``middle``, ``late``; the tail belongs to ``late``);
* ``resolution``: the same with groups cut by the ops' input resolution (see :func:`group_of`);
* ``weights``: an intercept, a scale of the whole sum, and a cost per MB of the arch's weights
  (``weight_mb``: 4 bytes per parameter, summed over its ops). An op measured alone re-reads its weights from
  the core's private cache; inside a network the other layers have evicted them (results/fidelity/: the
  LiteRT in-context excess of FBNet-B's layers grows with their weight bytes). The term is a sum over ops, so
  it is a per-op correction: ``weight_mb`` is the one group that is not a LUT latency.

A LUT carries its calibration as one header line, ``# calibration: {json}`` (docs/lut-format.md,
section Calibration), tied to the exact rows it was fitted on by a digest: if the rows change,
:func:`calibration_of` ignores the stale calibration.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from fbprof.errors import FileFormatError, InputError
from fbprof.fileio import LockHeld, OutputLock
from fbprof.lut.interp import GridLut
from fbprof.lut.table import Lut, LutRow, read_lut, write_lut
from fbprof.space import Arch

__all__ = [
    "Calibration",
    "LinearCalibration",
    "FitReport",
    "MODELS",
    "GRID_MODELS",
    "HEADER_FIELD",
    "CALIBRATION_SCHEMA",
    "calibration_of",
    "parse_calibration",
    "rows_digest",
    "arch_parts",
    "group_of",
    "group_sums",
    "fit",
    "select_and_fit",
    "store_calibration",
]

HEADER_FIELD = "calibration"
CALIBRATION_SCHEMA = 1
#: model name -> (uses an intercept, grouping name)
MODELS: dict[str, tuple[bool, str]] = {
    "scale": (False, "all"),
    "linear": (True, "all"),
    "stages": (True, "thirds"),
    "resolution": (True, "resolution"),
    "weights": (True, "weights"),
}


#: the models fitted on a grid LUT (a channel space, FBNetV2): those whose groups a DMaskingNAS search can weigh
#: layer by layer (``resolution`` cuts by a final feature map that the searched resolution moves; ``weights`` counts
#: the parameters of whole-channel ops)
GRID_MODELS = ("scale", "linear", "stages")


class Calibration(Protocol):
    def apply(self, raw_us: float, arch: Arch) -> float: ...


# ------------------------------------------------------------------------------------------------
def rows_digest(rows: dict[str, LutRow]) -> str:
    """Digest of the rows a calibration depends on (keys and medians as written in the file)."""
    h = hashlib.sha256()
    for key in sorted(rows):
        h.update(f"{key}={rows[key].median_us:.3f}\n".encode())
    return h.hexdigest()[:16]


def arch_parts(arch: Arch) -> list[tuple[str, str, Any]]:
    """(part, layer name, op spec) for every op of ``arch``: part is stem, s1..sN or tail."""
    stage_of = {layer.name: layer.stage for layer in arch.space.layers}
    out = []
    for name, spec in arch.ops():
        if name == "stem":
            part = "stem"
        elif name in stage_of:
            part = f"s{stage_of[name]}"
        else:
            part = "tail"
        out.append((part, name, spec))
    return out


def group_of(part: str, spec: Any, grouping: str, space: Any) -> str:
    """The group of one op (its part is stem, s1..sN or tail) under a grouping.

    ``all``: every op. ``thirds``: by stage position (early: the stem and the first ceil(N/3) stages;
    late: the last ceil(N/3) stages and the tail; middle: the rest). ``resolution``: by the op's input
    size relative to the final feature map F (early: input >= 8F, late: input <= F, which includes the
    tail; middle: the rest).
    """
    if grouping == "all":
        return "all"
    if grouping == "thirds":
        if part == "stem":
            return "early"
        if part == "tail":
            return "late"
        n = max((layer.stage for layer in space.layers), default=1)
        stage = int(part[1:])
        third = max(1, math.ceil(n / 3))
        if stage <= third:
            return "early"
        if stage > n - third:
            return "late"
        return "middle"
    if grouping == "weights":
        return "all"
    if grouping == "resolution":
        final = space.final_hw[0]
        if part == "tail" or spec.h <= final:
            return "late"
        if spec.h >= 8 * final:
            return "early"
        return "middle"
    raise ValueError(f"unknown grouping {grouping!r}")


def group_names(grouping: str) -> list[str]:
    if grouping == "all":
        return ["all"]
    if grouping == "weights":
        return ["all", "weight_mb"]
    return ["early", "middle", "late"]


def group_sums(arch: Arch, lut: Lut, grouping: str) -> dict[str, float]:
    """LUT latency (us) of the arch's ops summed per group (identity skips cost 0; on a grid LUT an op off the
    grid costs its interpolation); the ``weights`` grouping adds ``weight_mb``, the MB of float32 weights of
    those ops."""
    if "grid" in lut.header:
        grid = GridLut(lut)

        def latency(spec: Any) -> float:
            return grid.latency_us(spec)[0]
    else:
        latency = lut.latency_us
    sums = {g: 0.0 for g in group_names(grouping)}
    for part, _, spec in arch_parts(arch):
        sums[group_of(part, spec, grouping, arch.space)] += latency(spec)
        if grouping == "weights":
            sums["weight_mb"] += 4 * spec.params() / 1e6
    return sums


# ------------------------------------------------------------------------------------------------
@dataclass
class LinearCalibration:
    """calibrated = intercept_us + sum_g scales[g] * group_sum_g (see the module docstring)."""

    model: str
    intercept_us: float
    scales: dict[str, float]
    lut: Lut | None = field(default=None, repr=False, compare=False)
    info: dict[str, Any] = field(default_factory=dict, compare=False)  # fit facts stored with it

    @property
    def grouping(self) -> str:
        return MODELS[self.model][1]

    def apply_sums(self, sums: dict[str, float]) -> float:
        return self.intercept_us + sum(self.scales[g] * sums.get(g, 0.0) for g in self.scales)

    def apply(self, raw_us: float, arch: Arch) -> float:
        if self.grouping == "all":
            return self.intercept_us + self.scales["all"] * raw_us
        if self.lut is None:
            raise ValueError("a grouped calibration needs its LUT to split the sum")
        return self.apply_sums(group_sums(arch, self.lut, self.grouping))

    def op_us(self, part: str, spec: Any, space: Any, raw_us: float) -> float:
        """One op's share of the calibrated latency (without the intercept): its group's scale times its LUT
        latency ``raw_us``, plus the ``weight_mb`` term for its weights. Summed over an architecture's ops (part
        as in :func:`arch_parts`) and added to ``intercept_us`` it is :meth:`apply`; per op it lets a search's
        latency term read calibrated costs."""
        us = self.scales[group_of(part, spec, self.grouping, space)] * raw_us
        if "weight_mb" in self.scales:
            us += self.scales["weight_mb"] * 4 * spec.params() / 1e6
        return us

    def to_json(self) -> str:
        d = {"schema": CALIBRATION_SCHEMA, "model": self.model, "intercept_us": round(self.intercept_us, 3),
             "scales": {g: round(v, 6) for g, v in self.scales.items()}}
        d.update(self.info)
        return json.dumps(d, sort_keys=False, separators=(", ", ": "))

    def describe(self) -> str:
        terms = " + ".join(f"{v:.4f} x {'raw' if g == 'all' else g}" if g != "weight_mb" else f"{v:.1f} us/MB x weight_mb"
                           for g, v in self.scales.items())
        if MODELS[self.model][0]:
            return f"{self.model}: {self.intercept_us:.1f} us + {terms}"
        return f"{self.model}: {terms}"


def parse_calibration(value: str, where: str) -> LinearCalibration:
    """Decode a ``calibration`` header value; FileFormatError names ``where`` (path:line) and the reason."""
    path = where.rsplit(":", 1)[0]

    def bad(reason: str) -> FileFormatError:
        return FileFormatError(path, [f"{where}: calibration: {reason}"],
                               hint="run `fbprof verify --calibrate` again, or delete the calibration line")

    try:
        d = json.loads(value)
    except json.JSONDecodeError as e:
        raise bad(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(d, dict):
        raise bad("expected a JSON object")
    if d.get("schema") != CALIBRATION_SCHEMA:
        raise bad(f"unsupported schema {d.get('schema')!r} (this fbprof reads schema {CALIBRATION_SCHEMA})")
    model = d.get("model")
    if model not in MODELS:
        raise bad(f"unknown model {model!r} (known: {', '.join(MODELS)})")
    icpt = d.get("intercept_us", 0.0)
    if isinstance(icpt, bool) or not isinstance(icpt, (int, float)) or not math.isfinite(icpt):
        raise bad(f"intercept_us must be a finite number, got {icpt!r}")
    if not MODELS[model][0] and icpt != 0:
        raise bad(f"model {model} has no intercept, got intercept_us {icpt!r}")
    scales = d.get("scales")
    want = group_names(MODELS[model][1])
    if not isinstance(scales, dict) or sorted(scales) != sorted(want):
        raise bad(f"scales must be an object with exactly the groups {', '.join(want)}, got {scales!r}")
    for g, v in scales.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"scale of {g} must be a finite number, got {v!r}")
    info = {k: v for k, v in d.items() if k not in ("schema", "model", "intercept_us", "scales")}
    return LinearCalibration(model, float(icpt), {g: float(scales[g]) for g in want}, info=info)


def calibration_of(lut: Lut) -> LinearCalibration | None:
    """The LUT's calibration, or None when it has none or when its rows changed since it was fitted.

    A malformed calibration line, or on a grid LUT a model outside :data:`GRID_MODELS`, is an error naming the
    file and line.
    """
    value = lut.header.get(HEADER_FIELD)
    if value is None:
        return None
    cal = parse_calibration(value, lut.where(HEADER_FIELD))
    if "grid" in lut.header and cal.model not in GRID_MODELS:
        raise FileFormatError(lut.path, [f"{lut.where(HEADER_FIELD)}: calibration: model {cal.model!r} on a grid LUT, "
                                         f"whose calibration is one of {', '.join(GRID_MODELS)}"],
                              hint="run `fbprof verify --calibrate` again (on a grid LUT it fits only those), "
                                   "or delete the calibration line")
    if cal.info.get("rows_digest") != rows_digest(lut.rows):
        return None  # fitted on other numbers: stale (documented in docs/lut-format.md)
    cal.lut = lut
    return cal


# ------------------------------------------------------------------------------------------------
@dataclass
class FitReport:
    """Leave-one-out errors of every candidate model on the calibration split, and the choice."""

    chosen: str
    loo_rmspe_pct: dict[str, float]
    n: int
    rule: str


def _design(sums: Sequence[dict[str, float]], model: str) -> list[list[float]]:
    icpt, grouping = MODELS[model]
    gs = group_names(grouping)
    return [([1.0] if icpt else []) + [s[g] for g in gs] for s in sums]


def fit(sums: Sequence[dict[str, float]], measured: Sequence[float], model: str) -> LinearCalibration:
    """Least squares on relative error: minimise sum(((pred - measured) / measured) ** 2).

    ``sums`` are per-arch group sums for the model's grouping (see :func:`group_sums`).
    """
    import numpy as np

    if len(sums) != len(measured) or not sums:
        raise ValueError("need one measurement per arch, at least one arch")
    icpt, grouping = MODELS[model]
    x = np.asarray(_design(sums, model), dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    if x.shape[0] < x.shape[1]:
        raise ValueError(f"model {model} has {x.shape[1]} parameters, only {x.shape[0]} archs to fit")
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    coef = [float(c) for c in coef]
    intercept = coef.pop(0) if icpt else 0.0
    return LinearCalibration(model, intercept, dict(zip(group_names(grouping), coef)))


def _loo_rmspe(sums: Sequence[dict[str, float]], measured: Sequence[float], model: str) -> float:
    errs = []
    for i in range(len(measured)):
        rest = [s for j, s in enumerate(sums) if j != i]
        meas = [m for j, m in enumerate(measured) if j != i]
        cal = fit(rest, meas, model)
        errs.append((cal.apply_sums(sums[i]) - measured[i]) / measured[i])
    return 100.0 * math.sqrt(sum(e * e for e in errs) / len(errs))


def _nparams(model: str) -> int:
    return int(MODELS[model][0]) + len(group_names(MODELS[model][1]))


def select_and_fit(
    archs: Sequence[Arch],
    measured: Sequence[float],
    lut: Lut,
    models: Sequence[str] = ("scale", "linear", "stages", "resolution", "weights"),
    tolerance: float = 0.05,
) -> tuple[LinearCalibration, FitReport]:
    """Fit each model, compare their leave-one-out RMSPE on these archs, keep the simplest good one.

    Rule: the model with the lowest leave-one-out RMSPE, unless a model with fewer parameters is within
    ``tolerance`` (relative) of it (then the one with fewest parameters among those). A model needs at
    least 3 archs per parameter, and is left out when its fit is not physical: a negative scale (a network
    predicted faster as its ops get slower) or a non-positive latency for one of these archs (a few noisy
    networks can produce either).
    """
    scores: dict[str, float] = {}
    for m in models:
        if len(archs) < 3 * _nparams(m):
            continue
        sums = [group_sums(a, lut, MODELS[m][1]) for a in archs]
        whole = fit(sums, measured, m)
        if any(v < 0 for v in whole.scales.values()) or any(whole.apply_sums(x) <= 0 for x in sums):
            continue
        scores[m] = _loo_rmspe(sums, measured, m)
    if not scores and len(archs) < 3:
        raise ValueError(f"need at least 3 calibration archs to fit a calibration, got {len(archs)}")
    if not scores:
        raise ValueError(f"no calibration model fits these {len(archs)} calibration archs (a fit with a negative "
                         "scale or a non-positive prediction is refused)")
    best = min(scores, key=lambda m: (scores[m], _nparams(m)))
    simpler = [m for m in scores if _nparams(m) < _nparams(best) and scores[m] <= scores[best] * (1 + tolerance)]
    chosen = min(simpler, key=lambda m: (_nparams(m), scores[m])) if simpler else best
    cal = fit([group_sums(a, lut, MODELS[chosen][1]) for a in archs], measured, chosen)
    cal.lut = lut
    rule = f"lowest leave-one-out RMSPE; a model with fewer parameters within {tolerance:.0%} of the best wins"
    return cal, FitReport(chosen, scores, len(archs), rule)


def store_calibration(lut_path: str, cal: LinearCalibration, info: dict[str, Any],
                      fitted_rows: dict[str, LutRow] | None = None) -> Lut:
    """Write ``cal`` into the LUT's header (rows unchanged, atomically, holding the LUT's output lock so a
    measuring run cannot write it at the same time); returns the re-read LUT.

    ``fitted_rows``: the rows the calibration was fitted on. If the file's rows are no longer those (a
    ``measure`` extended it meanwhile), nothing is written: the digest stamped in the header must name the
    rows the fit saw. Raises :class:`InputError` then, or when another run holds the lock."""
    try:
        with OutputLock(lut_path, "fbprof verify (storing a calibration)"):
            lut = read_lut(lut_path)
            if "grid" in lut.header and cal.model not in GRID_MODELS:
                raise InputError(f"{lut_path}: a grid LUT's calibration is one of {', '.join(GRID_MODELS)}, "
                                 f"not {cal.model!r}; not stored")
            digest = rows_digest(lut.rows)
            if fitted_rows is not None and digest != rows_digest(fitted_rows):
                raise InputError(f"{lut_path}: its rows changed while the calibration was being fitted; not stored",
                                 hint="run verify again on the LUT as it is now")
            stored = LinearCalibration(cal.model, cal.intercept_us, dict(cal.scales), info={**info, "rows_digest": digest})
            header = dict(lut.header)
            header[HEADER_FIELD] = stored.to_json()
            write_lut(lut_path, header, lut.rows.values())
    except LockHeld as e:
        raise InputError(f"{lut_path} is being written by another run ({e.holder}); calibration not stored",
                         hint="run verify again when that run has ended") from None
    return read_lut(lut_path)
