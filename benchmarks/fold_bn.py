"""BN folded before converting (issue 16): conversion time, what the runtime runs, and measured latency, one run.

For each backend whose SPEC says ``fold_bn``, a seeded random sample of a space's ops with a BN are exported
twice by the backend's own ``export``: the module as built (conv + BN) and
:func:`fbprof.backends.base.fold_batchnorm` of it, alternating which goes first. Per op it records both conversion times, whether the runtime runs the
same ops (``runtime_ops``: ONNX Runtime's optimized graph, the TFLite builtin ops, the ExecuTorch plan), both
outputs against torch's (unfolded) output, and the two artifacts' latencies: a pair of sessions, timed in
alternation (the third call in a row of one, then of the other, in a seeded random order), one thread, pinned
to the last allowed core, opened afresh ``--sessions`` times (a session's buffer placement alone moved a
stem's median by 10% here). Prints per-backend export speed-up and the folded/plain latency ratio (geometric
mean, min, max over ops). Each conversion here is a single op's (a LUT build converts 8 at a time, where
the per-call costs that folding does not touch weigh less: benchmarks/lut_build.py --throughput).

    python benchmarks/fold_bn.py --ops 12 --iters 400 --json results/benchmarks/fold_bn.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="onnxruntime,litert,executorch")
    ap.add_argument("--space", default="fbnet")
    ap.add_argument("--ops", type=int, default=12, help="ops, a seeded random sample of the space's (non-identity) ops")
    ap.add_argument("--iters", type=int, default=200, help="timed calls per artifact and op")
    ap.add_argument("--sessions", type=int, default=4, help="pairs of sessions opened per op, iters shared among them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args(argv)

    import importlib

    import numpy as np
    import torch

    from fbprof.artifact import check_output, to_layout
    from fbprof.backends import get_backend
    from fbprof.backends.base import fold_batchnorm
    from fbprof.build import build_calibrated_op, example_input
    from fbprof.fileio import atomic_write_text
    from fbprof.space import load_space

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    specs = [s for s in load_space(args.space, None, None).all_specs()  # ops that have a BN
             if not s.is_identity and s.block.kind not in ("pool", "fc")]
    rng = random.Random(args.seed)
    sample = sorted(rng.sample(specs, min(args.ops, len(specs))), key=lambda s: s.key)
    load = [os.getloadavg()]
    out: dict = {"command": "python benchmarks/fold_bn.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "space": args.space, "iters": args.iters, "sessions": args.sessions, "seed": args.seed, "backends": {}}
    for name in args.backends.split(","):
        be = get_backend(name)
        mod = importlib.import_module(be.module.__name__)
        rows = []
        with tempfile.TemporaryDirectory(prefix="fbprof-fold-") as tmp:
            warm = build_calibrated_op(sample[0])  # imports and the converter's first-call set-up, not counted
            for k, m in enumerate((warm, fold_batchnorm(warm))):
                mod.export(m, example_input(sample[0]), Path(tmp) / f"warm{k}{be.suffix}", {})
            for i, spec in enumerate(sample):
                module, x = build_calibrated_op(spec), example_input(spec)
                with torch.no_grad():
                    want = module(x).numpy()
                paths = {v: Path(tmp) / f"{i}-{v}{be.suffix}" for v in ("plain", "folded")}
                export_s, layout = {}, "nchw"
                for v in (("plain", "folded") if i % 2 == 0 else ("folded", "plain")):
                    t = time.perf_counter()
                    layout = mod.export(module if v == "plain" else fold_batchnorm(module), x, paths[v], {})
                    export_s[v] = time.perf_counter() - t
                same_ops = mod.runtime_ops(paths["plain"]) == mod.runtime_ops(paths["folded"])
                xin = to_layout(x.numpy(), layout)
                samples: dict[str, list[float]] = {v: [] for v in paths}
                errors: dict[str, str | None] = {}
                for _ in range(args.sessions):  # fresh sessions: where their buffers land moves a median by ~10%
                    sessions = {v: mod.open_session(str(p), xin, 1) for v, p in paths.items()}
                    try:
                        for v, s in sessions.items():
                            errors[v] = errors.get(v) or check_output(to_layout(want, layout), np.asarray(s.run()))
                        for _ in range(args.iters // args.sessions):
                            for v in rng.sample(list(sessions), 2):
                                f = sessions[v].invoke
                                f()
                                f()
                                t = time.perf_counter()
                                f()
                                samples[v].append((time.perf_counter() - t) * 1e6)
                    finally:
                        for s in sessions.values():
                            s.close()
                med = {v: statistics.median(samples[v]) for v in samples}
                row = {"key": spec.key, "export_plain_s": round(export_s["plain"], 3),
                       "export_folded_s": round(export_s["folded"], 3), "same_runtime_ops": same_ops,
                       "plain_us": round(med["plain"], 2), "folded_us": round(med["folded"], 2),
                       "folded_over_plain": round(med["folded"] / med["plain"], 4),
                       "output_check": {v: e or "ok" for v, e in errors.items()}}
                rows.append(row)
                print(f"{name:11s} {spec.key:30s} export {export_s['plain']:5.2f} -> {export_s['folded']:5.2f} s   "
                      f"same ops {same_ops}   {med['plain']:8.1f} -> {med['folded']:8.1f} us "
                      f"({row['folded_over_plain']:.3f})   checks {row['output_check']}", flush=True)
        ratios = [r["folded_over_plain"] for r in rows]
        ep, ef = sum(r["export_plain_s"] for r in rows), sum(r["export_folded_s"] for r in rows)
        summary = {"ops": len(rows), "export_plain_s": round(ep, 2), "export_folded_s": round(ef, 2),
                   "export_speedup": round(ep / ef, 3),
                   "export_ops_per_s": {"plain": round(len(rows) / ep, 3), "folded": round(len(rows) / ef, 3)},
                   "latency_folded_over_plain": {"geomean": round(math.exp(statistics.fmean(math.log(r) for r in ratios)), 4),
                                                 "min": min(ratios), "max": max(ratios),
                                                 "median_abs_dev_from_1": round(statistics.median(abs(r - 1) for r in ratios), 4)},
                   "all_same_runtime_ops": all(r["same_runtime_ops"] for r in rows),
                   "all_outputs_ok": all(e == "ok" for r in rows for e in r["output_check"].values())}
        out["backends"][name] = {"summary": summary, "rows": rows}
        load.append(os.getloadavg())
        lat = summary["latency_folded_over_plain"]
        print(f"{name}: export {ep:.1f} s -> {ef:.1f} s (x{summary['export_speedup']:.2f}, "
              f"{summary['export_ops_per_s']['plain']:.3f} -> {summary['export_ops_per_s']['folded']:.3f} ops/s); "
              f"latency folded/plain geomean {lat['geomean']:.3f} (min {lat['min']:.3f}, max {lat['max']:.3f}); "
              f"same runtime ops {summary['all_same_runtime_ops']}; outputs ok {summary['all_outputs_ok']}", flush=True)
    out["load_avg"] = load
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
