"""Why an isolated op's LUT time differs from its cost inside a network (issue 13, item 2).

Sample-level pairing: this VM's speed swings between a fast and a slow mode (1.3-1.5x, lasting about
0.5-3 s; a plain numpy matmul shows it too), which is longer than one sample and shorter than a
verify run, so two loops measured a second apart can land in different modes. Here every sample of
every construction is taken inside the same iteration, a few milliseconds apart, and each iteration's
sum of ops is divided by the same iteration's whole-network time: the ratio cancels the mode.

Per iteration (random op order), for ARCH on the local CPU, one thread, pinned where the OS allows, each call
the session's ``invoke`` (no output read back, as fbprof's loop times it):

* ``net``: the whole network, third consecutive invoke (hot, as verify's loop runs it);
* ``hot``: each isolated op, third consecutive invoke (as the LUT's loop runs it);
* ``evict``: each op after reading ``--evict-mb`` MiB (L2 and L1 cleared of its weights, code and state)
  and re-writing its input (the input is hot in a network: the previous layer just wrote it);
* ``replicas``: each op's file opened K times (K: enough copies for ``--replica-mb`` MiB of model), invoked
  in rotation: its weights come from outside the private cache, its code stays hot; input re-written.

and, with ``--host``, a fixed numpy matmul timed in 40 blocks (the VM's fast/slow modes).

Prints and writes (``--out DIR``): ``probe.json`` with the paired ratio (sum of ops / network) quartiles per
construction, per-op medians, and the weight bytes of each op; ``COMMAND.txt``.

Usage: python benchmarks/incontext_probe.py --backend litert --arch fbnet-b --iters 150 --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _refresher(backend: str, session):
    """A callable that re-writes the session's input (a network's input was just written by its previous layer)."""
    if backend == "litert":
        d = session.interp.get_input_details()[0]
        x = session.interp.get_tensor(d["index"])
        return lambda: session.interp.set_tensor(d["index"], x)
    if backend == "onnxruntime":
        x = next(iter(session.feed.values()))
        return lambda: x.sum()
    if backend == "executorch":
        x = session.inputs[0]
        return lambda: x.sum()
    raise ValueError(f"no input refresher for {backend}")


def host_modes(blocks: int = 40) -> dict:
    """Median time of a fixed 256x256 matmul in consecutive blocks of 100 calls: the VM's own drift."""
    import numpy as np

    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    meds = []
    for _ in range(blocks):
        xs = []
        for _ in range(100):
            t0 = time.perf_counter()
            a @ a
            xs.append(time.perf_counter() - t0)
        meds.append(statistics.median(xs) * 1e6)
    return {"block_medians_us": [round(m, 1) for m in meds], "max_over_min": max(meds) / min(meds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="litert", choices=["litert", "onnxruntime", "executorch"])
    ap.add_argument("--arch", default="fbnet-b")
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--evict-mb", type=int, default=16)
    ap.add_argument("--replica-mb", type=float, default=8.0)
    ap.add_argument("--max-replicas", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--host", action="store_true", help="also time a fixed matmul in blocks (the VM's speed modes)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.iters < 8:
        ap.error("--iters must be at least 8 (quartiles of the paired ratios)")

    from fbprof.backends import get_backend
    from fbprof.backends.cache import ArtifactCache
    from fbprof.profiler.export import arch_artifact, export_ops
    from fbprof.space import load_arch

    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[-1]})
    be = get_backend(args.backend)
    arch = load_arch(args.arch)
    cache = ArtifactCache(args.cache_dir)
    ops = [(layer, s) for layer, s in arch.ops() if not s.is_identity]
    specs = sorted({s for _, s in ops}, key=lambda s: s.key)
    arts = export_ops(specs, be.format, cache, workers=1)
    bad = {k: a.message for k, a in arts.items() if not hasattr(a, "path")}
    if bad:
        print(f"export failed: {bad}", file=sys.stderr)
        return 1
    net = be.open(arch_artifact(arch, be.format, cache), 1)
    mult = {s.key: sum(1 for _, t in ops if t.key == s.key) for s in specs}
    single = {s.key: be.open(arts[s.key], 1) for s in specs}
    reps = {}
    for s in specs:
        k = max(2, min(args.max_replicas, math.ceil(args.replica_mb * 2**20 / os.path.getsize(arts[s.key].path))))
        reps[s.key] = [be.open(arts[s.key], 1) for _ in range(k)]
    refresh = {k: _refresher(args.backend, s) for k, s in single.items()}
    rep_refresh = {k: [_refresher(args.backend, s) for s in rs] for k, rs in reps.items()}
    ptr = dict.fromkeys(reps, 0)
    buf = bytearray(args.evict_mb * 2**20)
    kinds = ("hot", "evict", "replicas")
    per = {c: {k: [] for k in single} for c in kinds}
    sums = {c: [] for c in kinds}
    net_t: list[float] = []
    pc = time.perf_counter
    rng = random.Random(args.seed)
    for it in range(args.iters):
        net.invoke(), net.invoke()
        t0 = pc()
        net.invoke()
        net_t.append(pc() - t0)
        keys = list(single)
        rng.shuffle(keys)
        tot = dict.fromkeys(kinds, 0.0)
        for k in keys:
            for c in kinds:
                if c == "hot":
                    s = single[k]
                    s.invoke(), s.invoke()
                elif c == "evict":
                    s = single[k]
                    buf.count(b"\x01")  # reads the buffer: clean lines, no write-back charged to the op
                    refresh[k]()
                else:
                    rs = reps[k]
                    for _ in range(len(rs)):  # one turn of the rotation, then the timed one
                        ptr[k] = (ptr[k] + 1) % len(rs)
                        rs[ptr[k]].invoke()
                    ptr[k] = (ptr[k] + 1) % len(rs)
                    s = rs[ptr[k]]
                    rep_refresh[k][ptr[k]]()
                t0 = pc()
                s.invoke()
                x = pc() - t0
                per[c][k].append(x)
                tot[c] += mult[k] * x
        for c in kinds:
            sums[c].append(tot[c])
        if (it + 1) % max(1, args.iters // 10) == 0:
            print(f"{it + 1}/{args.iters}", file=sys.stderr, flush=True)

    def quart(xs):
        return [round(v, 4) for v in statistics.quantiles(xs, n=4)]

    result = {
        "backend": args.backend, "arch": args.arch, "iters": args.iters, "evict_mb": args.evict_mb,
        "replica_mb": args.replica_mb,
        "net_median_us": statistics.median(net_t) * 1e6,
        "net_quartiles_us": [round(v * 1e6, 1) for v in statistics.quantiles(net_t, n=4)],
        "paired_ratio_sum_over_net": {c: quart([a / b for a, b in zip(sums[c], net_t)]) for c in kinds},
        "per_op": {k: {"count": mult[k], "weight_bytes": 4 * next(s for s in specs if s.key == k).params(),
                       "replicas": len(reps[k]), **{f"{c}_us": round(statistics.median(per[c][k]) * 1e6, 2) for c in kinds}}
                   for k in single},
    }
    if args.host:
        result["host_modes"] = host_modes()
    text = json.dumps(result, indent=1)
    print(json.dumps({"net_median_us": round(result["net_median_us"], 1),
                      "paired_ratio_sum_over_net": result["paired_ratio_sum_over_net"],
                      **({"host_max_over_min": round(result["host_modes"]["max_over_min"], 3)} if args.host else {})}))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(text + "\n")
        (out / "COMMAND.txt").write_text("python " + " ".join(sys.argv) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
