"""What ExecuTorch's timed call costs beyond the op (issue 13, item 2): ``Method.execute(inputs)`` against the
binding's ``execute()`` on inputs set once, on the same session, alternating in one process.

``Method.execute(inputs)`` (what fbprof's ExecuTorch session timed before 2026-12-02, LUT header ``timed:
invoke``) copies the input into the program's planned memory and clones every output on each call; a layer
inside a network pays neither. ``execute()`` after ``set_inputs`` once (``timed: invoke/2``) runs the method
alone. Per op, each iteration times both (third call in a row each, in a seeded random order), one thread,
pinned to the last allowed core; prints the medians, their difference and whether the timed call, first on a fresh
session, computes torch's output.

    python benchmarks/executorch_invoke.py --lut luts/local-cpu-executorch.csv --ops 12 --iters 300 \
        --out results/fidelity/executorch-invoke/ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lut", default="luts/local-cpu-executorch.csv", help="its ops are the ones timed")
    ap.add_argument("--ops", type=int, default=12, help="ops, spread evenly over the LUT's latency order")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    import numpy as np

    from fbprof.backends.cache import ArtifactCache
    from fbprof.backends.executorch import open_session
    from fbprof.fileio import atomic_write_text
    from fbprof.lut.table import read_lut
    from fbprof.profiler.export import export_op
    from fbprof.spec import OpSpec

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    lut = read_lut(args.lut)
    order = sorted(lut.rows, key=lambda k: lut.rows[k].median_us)
    step = max(1, len(order) // args.ops)
    keys = order[::step][: args.ops]
    rng = random.Random(args.seed)
    rows = []
    for key in keys:
        art = export_op(OpSpec.parse(key), "pte", ArtifactCache())
        s = open_session(str(art.path), art.input, 1)
        try:
            s.invoke()  # first, on the fresh session: what the timed call computes, against torch
            same = bool(np.allclose(s.method.get_outputs(clone_outputs=True)[0].numpy(), art.expected, atol=1e-3))
            ref = s.run()
            calls = {"execute(inputs)": lambda: s.method(s.inputs), "execute() on inputs set once": s.invoke}
            samples: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(args.iters):
                for name in rng.sample(list(calls), len(calls)):
                    f = calls[name]
                    f()
                    f()
                    t = time.perf_counter()
                    f()
                    samples[name].append((time.perf_counter() - t) * 1e6)
        finally:
            s.close()
        old, new = (statistics.median(v) for v in samples.values())
        rows.append({"key": key, "execute_inputs_us": round(old, 2), "execute_bound_us": round(new, 2),
                     "difference_us": round(old - new, 2), "invoke_matches_torch": same,
                     "output_bytes": int(ref.nbytes), "input_bytes": int(art.input.nbytes)})
        print(f"{key:32s} execute(inputs) {old:8.1f} us   execute() {new:8.1f} us   difference {old - new:6.1f} us   "
              f"in {art.input.nbytes / 1024:6.0f} KiB, out {ref.nbytes / 1024:6.0f} KiB   matches torch {same}", flush=True)
    diffs = [r["difference_us"] for r in rows]
    print(f"difference per op: median {statistics.median(diffs):.1f} us, min {min(diffs):.1f}, max {max(diffs):.1f} "
          f"({len(rows)} ops, {args.iters} iterations each)")
    if args.out:
        doc = {"command": "python benchmarks/executorch_invoke.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "lut": args.lut, "iters": args.iters, "seed": args.seed, "load_avg": os.getloadavg(), "ops": rows,
               "difference_us_median": statistics.median(diffs)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
