"""Interpolation schemes (and grids) of a grid LUT compared on the same measurements (issue 14, item 2).

Measures the held-out ops of HELDOUT (one or more LUTs) and every grid row their interpolation reads again, in one run of
sample-level pairing on the local device (``fbprof lut interp-check --remeasure --paired N``'s
measurement), then interpolates every held-out op from the same-run grid medians with each scheme of
:data:`fbprof.lut.interp.SCHEMES` and prints MAPE, median and signed mean error per scheme. ``--also GRID``
(repeatable) adds another grid LUT of the same space and backend (a coarser or finer grid): its corner rows
are measured in the same run and every (grid, scheme) pair is scored twice: on the held-out ops that grid has
no row for (``own``: what interpolating it costs) and on those that no grid has a row for (``common``: every
grid on the same ops). Held-out ops some grid cannot answer are left out and listed. With ``--out`` writes the numbers and every
op's as JSON.

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
    ap.add_argument("heldout", nargs="+", help="held-out LUT(s): their ops are the ones scored")
    ap.add_argument("--paired", type=int, default=2000, help="iterations, every op timed once in each")
    ap.add_argument("--seed", type=int, default=0, help="seed of the visiting order")
    ap.add_argument("--also", action="append", default=[], metavar="GRID",
                    help="another grid LUT scored on the same held-out ops and samples (repeatable)")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    from fbprof.backends.cache import ArtifactCache
    from fbprof.devices.local import LocalDevice, cpu_fingerprint
    from fbprof.errors import InputError
    from fbprof.fileio import atomic_write_text
    from fbprof.lut.interp import SCHEMES, GridLut, OutsideGridError
    from fbprof.lut.table import read_lut
    from fbprof.spec import OpSpec
    from fbprof.verify.interp import interleaved_interp_check, same_run_check

    grids = {path: read_lut(path) for path in [args.grid, *args.also]}
    for path, g in grids.items():
        if "grid" not in g.header:
            raise InputError(f"{path}: not a grid LUT (no grid header): measure one with `fbprof measure --space` "
                             "of a channel space")
    held = sorted({k for path in args.heldout for k in read_lut(path).rows})
    readers = [GridLut(g) for g in grids.values()]
    keys, excluded = [], {}
    for key in held:
        try:
            for g in readers:
                g.sources(OpSpec.parse(key))
        except OutsideGridError as e:
            excluded[key] = e.queries[0]
            continue
        keys.append(key)
    _, now = interleaved_interp_check(grids[args.grid], keys, LocalDevice(), ArtifactCache(), paired=args.paired,
                                      seed=args.seed, also=[g for p, g in grids.items() if p != args.grid])
    doc = {"command": "python benchmarks/interp_schemes.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "grid": args.grid, "also": args.also, "heldout": args.heldout, "paired": args.paired, "seed": args.seed,
           "excluded": excluded, "machine": cpu_fingerprint(), "results": []}
    print(f"{len(keys)} held-out ops, {args.paired} paired iterations, seed {args.seed}, on {doc['machine']['cpu_model']}")
    # "own": the held-out ops this grid has no row for (what interpolating it costs); "common": those no grid has
    # a row for (every grid scored on the same ops)
    common = [k for k in keys if not any(k in g.rows for g in grids.values())]
    for path, grid in grids.items():
        sets = {"own": [k for k in keys if k not in grid.rows]}
        if len(grids) > 1:
            sets["common"] = common
        for label, ops in sets.items():
            for scheme in SCHEMES:
                check = same_run_check(grid, ops, now, scheme)
                errs = [100 * (p - m) / m for _, m, p in check.rows]
                if not errs:
                    print(f"{path}  {label}: no op to score ({len(check.skipped)} skipped)")
                    continue
                res = {"grid": path, "grid_rows": len(grid.rows), "ops": label, "scheme": scheme, "n": len(errs),
                       "mape": check.mape, "median_abs_error": statistics.median(abs(e) for e in errs),
                       "mean_signed_error": statistics.fmean(errs), "max_abs_error": max(abs(e) for e in errs),
                       "within_5pct": sum(abs(e) <= 5 for e in errs), "skipped": check.skipped,
                       "rows": [{"key": k, "measured_us": m, "interpolated_us": p} for k, m, p in check.rows]}
                doc["results"].append(res)
                print(f"{path} ({len(grid.rows)} rows)  {label:6s} {scheme:9s} n {len(errs):2d}  MAPE {check.mape:5.2f}%  "
                      f"median |err| {res['median_abs_error']:5.2f}%  signed mean {res['mean_signed_error']:+5.2f}%  "
                      f"max {res['max_abs_error']:5.1f}%  within 5%: {res['within_5pct']}/{len(errs)}")
    for key, why in excluded.items():
        print(f"excluded {key}: {why}")
    if args.out:
        atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from fbprof.errors import FbprofError

    try:
        sys.exit(main())
    except FbprofError as e:  # a bad file or argument: its message, as the CLI prints it, not a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
