"""PNG of the per-layer architecture distributions over the epochs (matplotlib, Agg backend)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from fbprof.fileio import atomic_write_bytes

__all__ = ["plot_theta_history"]


def plot_theta_history(history: dict[str, Any], path: str | Path) -> None:
    """One small stacked-area chart per searched layer: P(candidate) against the epoch."""
    import matplotlib  # a Figure draws with Agg itself: no process-wide backend is chosen
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    layers = history["layers"]
    epochs = history["epochs"]
    xs = [r["epoch"] for r in epochs]
    names = sorted({c for layer in layers for c in layer["candidates"]})
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    colours = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    cols = min(6, max(1, len(layers)))
    rows = math.ceil(len(layers) / cols)
    fig = Figure(figsize=(2.4 * cols, 1.9 * rows + 0.8), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for li, layer in enumerate(layers):
        ax = axes[li // cols][li % cols]
        series = [[r["probs"][li][ci] for r in epochs] for ci in range(len(layer["candidates"]))]
        if len(xs) == 1:  # a single epoch: draw it as a bar so something is visible
            bottom = 0.0
            for cand, s in zip(layer["candidates"], series):
                ax.bar([xs[0]], [s[0]], bottom=bottom, color=colours[cand], width=0.6)
                bottom += s[0]
        else:
            ax.stackplot(xs, series, colors=[colours[c] for c in layer["candidates"]], linewidth=0)
        ax.set_title(f"{layer['name']} {layer['shape']}", fontsize=6)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    for k in range(len(layers), rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles = [Patch(color=colours[n], label=n) for n in names]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 9), fontsize=7, frameon=False)
    fig.suptitle(f"P(candidate) per layer over epochs -- {history.get('space', '')}", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
