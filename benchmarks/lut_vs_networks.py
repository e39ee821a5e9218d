"""Two LUTs of one space scored against the same whole-network measurements (a `fbprof verify` verify.csv).

Isolates the LUT: both predict the very networks verify measured, in the same run, so a difference between
them is the LUT's, not the day's. For each LUT: raw bias and MAPE on the held-out networks, one scale fitted
on the report's calibration split (relative least squares, as verify's `scale` model), the held-out shares
within +-5 % / +-10 % after it, and Kendall's tau of the raw sums.

Usage: python benchmarks/lut_vs_networks.py VERIFY_CSV LUT_A LUT_B [--space fbnet] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def score(rows: list[dict], lut, space) -> dict:
    import numpy as np

    from fbprof.verify.stats import rank_stats

    m = np.array([float(r["measured_us"]) for r in rows])
    held = np.array([r["split"] != "calibration" for r in rows])
    p = []
    for r in rows:
        a = space.arch(r["blocks"].split(), int(r["head_channels"]), name=r["arch"])
        p.append(sum(0.0 if s.is_identity else lut.rows[s.key].median_us for _, s in a.ops()))
    p = np.array(p)
    cal = ~held
    k = float(np.sum(p[cal] / m[cal]) / np.sum((p[cal] / m[cal]) ** 2))
    raw = (p - m) / m * 100
    scaled = (k * p - m) / m * 100
    return {
        "n_held_out": int(held.sum()),
        "raw_bias_pct": round(float(np.median(raw[held])), 2),
        "raw_mape_pct": round(float(np.mean(np.abs(raw[held]))), 2),
        "scale": round(k, 4),
        "scaled_mape_pct": round(float(np.mean(np.abs(scaled[held]))), 2),
        "scaled_within_5_pct": round(float(np.mean(np.abs(scaled[held]) <= 5) * 100), 1),
        "scaled_within_10_pct": round(float(np.mean(np.abs(scaled[held]) <= 10) * 100), 1),
        "kendall_tau": rank_stats(list(p[held]), list(m[held]))["kendall_tau"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("verify_csv")
    ap.add_argument("lut_a")
    ap.add_argument("lut_b")
    ap.add_argument("--space", default="fbnet")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from fbprof.lut.table import read_lut
    from fbprof.space import load_space

    try:
        rows = [r for r in csv.DictReader(open(args.verify_csv)) if r.get("measured_us") and r.get("status") == "ok"]
    except OSError as e:
        ap.error(f"{args.verify_csv}: {e.strerror}")
    if not rows:
        ap.error(f"{args.verify_csv}: no measured networks")
    sp = load_space(args.space)
    result = {"verify_csv": args.verify_csv, "command": "python " + " ".join(sys.argv),
              args.lut_a: score(rows, read_lut(args.lut_a), sp), args.lut_b: score(rows, read_lut(args.lut_b), sp)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
