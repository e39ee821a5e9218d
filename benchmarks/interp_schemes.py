"""Interpolation schemes of a grid LUT compared on the same measurements (issue 14, item 2).

Measures the held-out ops of HELDOUT and every grid row their interpolation reads again, in one run of
sample-level pairing on the local device (``fbprof lut interp-check --remeasure --paired N``'s
measurement), then interpolates every held-out op from the same-run grid medians with each scheme of
:data:`fbprof.lut.interp.SCHEMES` and prints MAPE, median and signed mean error per scheme. With ``--out``
writes them and every op's numbers as JSON.

    python benchmarks/interp_schemes.py luts/local-cpu-litert-fbnetv2.csv luts/local-cpu-litert-fbnetv2-heldout.csv \
        --paired 2000 --seed 0 --out results/verify-local-cpu-litert-fbnetv2/interp-schemes-seed0.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("grid")
    ap.add_argument("heldout")
    ap.add_argument("--paired", type=int, default=2000, help="iterations, every op timed once in each")
    ap.add_argument("--seed", type=int, default=0, help="seed of the visiting order")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    from fbprof.backends.cache import ArtifactCache
    from fbprof.devices.local import LocalDevice
    from fbprof.fileio import atomic_write_text
    from fbprof.lut.interp import SCHEMES
    from fbprof.lut.table import read_lut
    from fbprof.verify.interp import interleaved_interp_check, same_run_check

    grid, held = read_lut(args.grid), read_lut(args.heldout)
    _, now = interleaved_interp_check(grid, list(held.rows), LocalDevice(), ArtifactCache(), paired=args.paired,
                                      seed=args.seed)
    doc = {"command": "python benchmarks/interp_schemes.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "grid": args.grid, "heldout": args.heldout, "paired": args.paired, "seed": args.seed, "schemes": {}}
    for scheme in SCHEMES:
        check = same_run_check(grid, sorted(held.rows), now, scheme)
        errs = [100 * (p - m) / m for _, m, p in check.rows]
        doc["schemes"][scheme] = {
            "n": len(errs), "mape": check.mape, "median_abs_error": statistics.median(abs(e) for e in errs),
            "mean_signed_error": statistics.fmean(errs), "max_abs_error": max(abs(e) for e in errs),
            "within_5pct": sum(abs(e) <= 5 for e in errs), "skipped": check.skipped,
            "ops": [{"key": k, "measured_us": m, "interpolated_us": p} for k, m, p in check.rows]}
        print(f"{scheme:9s} n {len(errs)}  MAPE {check.mape:5.2f}%  median |err| {doc['schemes'][scheme]['median_abs_error']:5.2f}%  "
              f"signed mean {doc['schemes'][scheme]['mean_signed_error']:+5.2f}%  max {doc['schemes'][scheme]['max_abs_error']:5.1f}%  "
              f"within 5%: {doc['schemes'][scheme]['within_5pct']}/{len(errs)}")
    if args.out:
        atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
