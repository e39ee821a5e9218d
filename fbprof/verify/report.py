"""Reports of a verify run: a per-network CSV, the summary JSON and a PNG (predicted vs measured with
a +-10% band, MACs vs measured beside it), written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from fbprof.fileio import atomic_write_bytes, atomic_write_text
from fbprof.loop import INVALID
from fbprof.verify.plan import HELD_OUT
from fbprof.verify.stats import NetworkMeasurement, VerifyResult

__all__ = ["CSV_COLUMNS", "REPORT_FILES", "format_csv", "write_report", "plot_png"]

CSV_COLUMNS = ("arch", "kind", "split", "predicted_us", "calibrated_us", "measured_us", "error_pct",
               "calibrated_error_pct", "round_spread_pct", "rounds", "macs", "head_channels", "blocks", "channels", "status", "note",
               "same_run_us")
REPORT_FILES = {"csv": "verify.csv", "summary": "summary.json", "plot": "verify.png"}


def _tau(v: float | None) -> str:
    """Kendall's tau for a legend: ``-`` when it is undefined (fewer than 2 networks)."""
    return "-" if v is None or v != v else f"{v:.3f}"


def num(v: float | None, digits: int = 3) -> str:
    """A CSV cell: fixed digits, empty for None."""
    return "" if v is None else f"{v:.{digits}f}"


def csv_text(columns: Sequence[str], rows) -> str:
    """A CSV file's text: the column line, then ``rows`` (lists of cells)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def format_csv(results: Sequence[NetworkMeasurement]) -> str:
    return csv_text(CSV_COLUMNS, _csv_rows(results))


def _csv_rows(results: Sequence[NetworkMeasurement]):
    for r in results:
        err = None if r.measured_us is None else 100 * (r.predicted_us - r.measured_us) / r.measured_us
        cerr = None if r.measured_us is None or r.calibrated_us is None else 100 * (r.calibrated_us - r.measured_us) / r.measured_us
        yield [r.name, r.kind, r.split, num(r.predicted_us), num(r.calibrated_us), num(r.measured_us), num(err, 3),
               num(cerr, 3), num(r.round_spread_pct, 3), " ".join(f"{x:.3f}" for x in r.rounds_us), r.arch.macs(),
               r.arch.head_channels, " ".join(r.arch.blocks), " ".join(map(str, getattr(r.arch, "channels", ()))),
               r.status, r.note, num(r.same_run_us)]


def write_report(result: VerifyResult, out_dir: str | Path) -> dict[str, Path]:
    """Write verify.csv, summary.json and verify.png into ``out_dir`` (atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in REPORT_FILES.items()}
    atomic_write_text(paths["csv"], format_csv(result.results))
    atomic_write_text(paths["summary"], json.dumps(result.summary, indent=1, sort_keys=False) + "\n")
    atomic_write_bytes(paths["plot"], plot_png(result))
    return paths


def plot_png(result: VerifyResult) -> bytes:
    """Predicted vs measured (raw, calibrated) with a +-10% band, and MACs vs measured beside it."""
    from matplotlib.figure import Figure  # a Figure draws with Agg itself: no process-wide backend is set

    good = [r for r in result.results if r.measured_us is not None and r.status != INVALID]
    s = result.summary
    fig = Figure(figsize=(13, 5.8), dpi=110)
    ax, bx = fig.subplots(1, 2)
    meas = [r.measured_us / 1000 for r in good]
    every = meas + [r.predicted_us / 1000 for r in good] + [r.calibrated_us / 1000 for r in good if r.calibrated_us is not None] \
        + [r.same_run_us / 1000 for r in good if r.same_run_us is not None]
    lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
    pad = 0.08 * (hi - lo or hi or 1.0)
    xs = [max(0.0, lo - pad), hi + pad]
    ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="tab:green", alpha=0.12, label="±10%")
    ax.plot(xs, [x * 0.95 for x in xs], color="tab:green", lw=0.6, ls="--", label="±5%")
    ax.plot(xs, [x * 1.05 for x in xs], color="tab:green", lw=0.6, ls="--")
    ax.plot(xs, xs, color="black", lw=0.8)
    raw = s["raw"]["held_out"]
    ax.scatter(meas, [r.predicted_us / 1000 for r in good], s=14, color="tab:blue", alpha=0.7,
               label=f"{'interpolated LUT' if s.get('prediction', '').startswith('interpolated') else 'raw LUT sum'} (held-out MAPE {raw.get('mape_pct', float('nan')):.1f}%, τ {_tau(raw.get('kendall_tau'))})")
    now = [r for r in good if r.same_run_us is not None]
    if now and s.get("same_run_rows"):
        sr = s["same_run_rows"]["raw"]["all"]
        ax.scatter([r.measured_us / 1000 for r in now], [r.same_run_us / 1000 for r in now], s=16, marker="x",
                   color="tab:gray", alpha=0.8,
                   label=f"LUT rows measured in this run (MAPE {sr.get('mape_pct', float('nan')):.1f}%, "
                         f"bias {sr.get('bias_pct', float('nan')):+.1f}%)")
    held_c = [r for r in good if r.calibrated_us is not None and r.split == HELD_OUT]
    if held_c:
        c = s["calibrated"]["held_out"]
        ax.scatter([r.measured_us / 1000 for r in held_c], [r.calibrated_us / 1000 for r in held_c], s=14, marker="^",
                   color="tab:orange", alpha=0.8,
                   label=f"calibrated, held-out (MAPE {c.get('mape_pct', float('nan')):.1f}%, "
                         f"{100 * c.get('within_5_pct', 0):.0f}% within ±5%)")
    for r in good:
        if r.kind in ("published", "given"):
            ax.annotate(r.name, (r.measured_us / 1000, r.predicted_us / 1000), fontsize=7, xytext=(3, -8),
                        textcoords="offset points")
    ax.set_xlim(xs)
    ax.set_ylim(xs)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    lh = s["lut_header"]
    ax.set_title(f"LUT prediction vs measurement: {lh.get('device', '?')} / {lh.get('backend', '?')}, "
                 f"{s['counts']['measured']} networks", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    tau_m = s["macs"]["all"].get("kendall_tau")
    bx.scatter([r.arch.macs() / 1e6 for r in good], meas, s=14, color="tab:purple", alpha=0.7,
               label=f"MACs (τ {_tau(tau_m)} to measured)")
    for r in good:
        if r.kind in ("published", "given"):
            bx.annotate(r.name, (r.arch.macs() / 1e6, r.measured_us / 1000), fontsize=7, xytext=(3, -8),
                        textcoords="offset points")
    bx.set_xlabel("MACs (millions)")
    bx.set_ylabel("measured latency (ms)")
    bx.set_title("FLOPs proxy: MACs vs measured latency", fontsize=10)
    bx.legend(fontsize=7, loc="upper left")
    bx.grid(alpha=0.3)
    nf = s.get("noise_floor") or {}
    if nf.get("spread_pct") is not None:
        fig.text(0.01, 0.01, f"noise floor ({nf['arch']}, {nf['replicas']} interleaved replicas of {s['rounds']} rounds): "
                 f"spread {nf['spread_pct']:.1f}%, CV {nf['cv_pct']:.1f}%", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
