"""PNG figures of LUTs and predictions: where a person would rather look than read.

* :func:`diff_png` -- per-op speed ratio of two LUTs, ops grouped by stage (input size) and block kind, log
  scale (like FBNet's iPhone X vs Samsung S8 figure);
* :func:`heatmap_png` -- searched layer x candidate block, latency in µs;
* :func:`predictions_png` -- stacked per-layer bars, one bar per architecture.

Each returns PNG bytes of a fixed size (:data:`SIZES`, pixels); the caller writes them (atomically).
matplotlib's ``Figure`` draws with Agg itself: no pyplot, no process-wide backend is set.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from fbprof.lut.predict import LutDiff, Prediction
from fbprof.lut.table import Lut
from fbprof.space import Space
from fbprof.errors import InputError
from fbprof.spec import OpSpec, parse_block

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["SIZES", "diff_png", "heatmap_png", "predictions_png"]

DPI = 100
#: (width, height) in pixels of each figure
SIZES = {"diff": (1600, 650), "heatmap": (1000, 800), "predict": (1000, 650)}
_FIXED_ORDER = {"stem": 0, "head": 2, "pool": 3, "fc": 4}


def _figure(kind: str) -> "Figure":
    from matplotlib.figure import Figure

    w, h = SIZES[kind]
    return Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")


def _png(fig: "Figure") -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _block_order(op: str) -> tuple:
    """Inverted-residual blocks by kernel, groups, expansion; then skip and the fixed ops."""
    try:
        b = parse_block(op)
    except InputError:
        return (2, op)
    if b.kind != "ir":
        return (1, op)
    return (0, b.kernel, b.groups, b.expansion, op)


def _colors(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if len(names) > 10 else colormaps["tab10"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


# ------------------------------------------------------------------------------------------------
def diff_png(diff: LutDiff, a_label: str, b_label: str) -> bytes:
    """Bars of B/A per common op (log scale; below 1: B is faster), grouped by stage then block kind."""
    from matplotlib.patches import Patch

    fig = _figure("diff")
    ax = fig.add_subplot()
    specs = {r.key: OpSpec.parse(r.key) for r in diff.rows}

    def stage(s: OpSpec) -> tuple:
        fixed = _FIXED_ORDER.get(s.op)
        if fixed is not None and fixed >= 2:
            return (2, 0, "head/pool/fc")
        return (1 if fixed is None else 0, -s.h, f"{s.h}x{s.w}" if fixed is None else "stem")

    rows = sorted(diff.rows, key=lambda r: (stage(specs[r.key]), _block_order(specs[r.key].op), r.key))
    ops = sorted({specs[r.key].op for r in rows}, key=_block_order)
    color = _colors(ops)
    ratios = [r.ratio if math.isfinite(r.ratio) and r.ratio > 0 else float("nan") for r in rows]
    ax.bar(range(len(rows)), ratios, color=[color[specs[r.key].op] for r in rows], width=0.85)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(0.25, 0.5, 1.0, 2.0, 4.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.axhline(1.0, color="black", linewidth=0.8)
    # stage separators and labels
    groups: list[tuple[str, int, int]] = []
    for i, r in enumerate(rows):
        label = stage(specs[r.key])[2]
        if groups and groups[-1][0] == label:
            groups[-1] = (label, groups[-1][1], i)
        else:
            groups.append((label, i, i))
    for label, lo, hi in groups:
        if lo:
            ax.axvline(lo - 0.5, color="grey", linewidth=0.6, linestyle=":")
        ax.text((lo + hi) / 2, 1.0, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(rows)} common ops, grouped by input size (stage), then block")
    ax.set_ylabel(f"latency ratio  {b_label} / {a_label}  (log)")
    finite = sorted(x for x in ratios if not math.isnan(x))
    med = finite[len(finite) // 2] if finite else float("nan")
    faster_b = sum(x < 1 for x in finite)
    ax.set_title(f"{b_label} vs {a_label}: below 1, {b_label} is faster ({faster_b} of {len(finite)} ops); "
                 f"median ratio {med:.2f}", fontsize=11, pad=16)
    ax.legend(handles=[Patch(color=color[o], label=o) for o in ops], ncols=min(len(ops), 10), fontsize=8,
              loc="upper center", bbox_to_anchor=(0.5, -0.06), frameon=False)
    ax.grid(axis="y", which="both", alpha=0.3)
    return _png(fig)


# ------------------------------------------------------------------------------------------------
def heatmap_png(lut: Lut, space: Space, title: str = "") -> bytes:
    """Searched layer (rows) x candidate block (columns), the LUT median in µs; blank: not a candidate,
    ``id``: an identity skip (0 µs), ``?``: missing from the LUT."""
    import numpy as np
    from matplotlib.colors import LogNorm

    blocks = sorted({b for layer in space.layers for b in layer.candidates}, key=_block_order)
    grid = np.full((len(space.layers), len(blocks)), np.nan)
    marks: dict[tuple[int, int], str] = {}
    for i, layer in enumerate(space.layers):
        for j, b in enumerate(blocks):
            if b not in layer.candidates:
                continue
            spec = layer.spec(b)
            if spec.is_identity:
                marks[i, j] = "id"
            elif spec.key in lut.rows:
                grid[i, j] = lut.rows[spec.key].median_us
                status = lut.rows[spec.key].status
                marks[i, j] = f"{grid[i, j]:.0f}" + ("*" if status != "ok" else "")
            else:
                marks[i, j] = "?"
    fig = _figure("heatmap")
    ax = fig.add_subplot()
    values = grid[np.isfinite(grid)]
    norm = LogNorm(vmin=max(values.min(), 1e-3), vmax=values.max()) if values.size else None
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", norm=norm, aspect="auto")
    fig.colorbar(im, ax=ax, label="median latency, µs (log)")
    threshold = math.sqrt(values.min() * values.max()) if values.size else 0
    fs = 7 if len(blocks) > 8 else 8
    for (i, j), text in marks.items():
        v = grid[i, j]
        ax.text(j, i, text, ha="center", va="center", fontsize=fs,
                color="white" if (np.isfinite(v) and v < threshold) else "black")
    ax.set_xticks(range(len(blocks)), blocks, rotation=45, ha="right")
    ax.set_yticks(range(len(space.layers)),
                  [f"{layer.name} {layer.cin}x{layer.h}x{layer.w}->{layer.cout} s{layer.stride}" for layer in space.layers],
                  fontsize=8)
    ax.set_xlabel("candidate block")
    ax.set_title(title or f"{lut.path}: {space.name}@{space.resolution}, µs per layer and block (* not ok, id: identity)",
                 fontsize=10)
    return _png(fig)


# ------------------------------------------------------------------------------------------------
def predictions_png(predictions: list[tuple[Prediction, Space]], title: str = "") -> bytes:
    """One stacked bar per architecture: each layer's LUT latency, coloured by stage (stem, stage 1..n, tail)."""
    from matplotlib.patches import Patch

    fig = _figure("predict")
    ax = fig.add_subplot()
    groups: list[str] = []
    for pred, space in predictions:
        stage_of = {layer.name: f"stage {layer.stage}" for layer in space.layers}
        for c in pred.layers:
            g = stage_of.get(c.layer, "stem" if c.layer == "stem" else "head+pool+fc")
            if g not in groups:
                groups.append(g)
    order = sorted(groups, key=lambda g: (g != "stem", g == "head+pool+fc", g))
    color = _colors(order)
    for x, (pred, space) in enumerate(predictions):
        stage_of = {layer.name: f"stage {layer.stage}" for layer in space.layers}
        bottom = 0.0
        for c in pred.layers:
            if c.latency_us <= 0:
                continue
            g = stage_of.get(c.layer, "stem" if c.layer == "stem" else "head+pool+fc")
            ms = c.latency_us / 1000
            ax.bar(x, ms, bottom=bottom, color=color[g], edgecolor="white", linewidth=0.6, width=0.6)
            bottom += ms
        label = f"{pred.total_us / 1000:.2f} ms"
        if pred.calibrated_us is not None:
            label += f"\n(calibrated {pred.calibrated_us / 1000:.2f})"
        ax.text(x, bottom, label, ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(predictions)), [p.arch for p, _ in predictions])
    ax.set_ylabel("predicted latency, ms (LUT sum; one segment per layer)")
    top = max((p.total_us for p, _ in predictions), default=1.0) / 1000
    ax.set_ylim(0, top * 1.18)
    ax.legend(handles=[Patch(color=color[g], label=g) for g in order], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or "predicted latency per layer", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
