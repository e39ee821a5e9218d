"""Benchmark: cold LUT builds of this tree and an older one, alternating, in one run.

One cold build is noisy on a shared VM (the same tree's builds differ by 10-25% from one to the next), so a
change's effect is read from pairs: this tree and a baseline (a folder holding an older ``fbprof/``, e.g.
``git archive <commit> fbprof | tar -x -C DIR``), each pair in alternating order, each build a real
``fbprof measure --device local`` with a fresh artifact cache. Per build: wall time, time inside measuring
loops (from its summary line), wall/loop (issue 16's goal <= 1.5), and the CPU time of the command and its
export workers; per pair, this tree's wall and CPU over the baseline's.

The loops run each op until its samples settle (``LoopConfig``: at least 50 runs and 0.25 s, more while the
coefficient of variation is above 10%), so the time in loops is shorter on a quieter box, and wall/loop moves
with it; the paired wall and CPU ratios do not depend on that.

Usage: python benchmarks/cold_ab.py --baseline-src DIR [--backend litert] [--pairs 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

SUMMARY = re.compile(r"(\d+) failed; measured (\d+), reused (\d+); ([\d.]+) s wall \(([\d.]+) s export, ([\d.]+) s in measuring loops\)")


def cold_build(src: Path, backend: str, space: str, workers: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="fbprof-cold-ab-"))
    try:
        cmd = [sys.executable, "-m", "fbprof.cli", "measure", "--device", "local", "--backend", backend, "--space",
               space, "--out", str(tmp / "lut.csv"), "--cache-dir", str(tmp / "cache"), "--workers", str(workers), "-q"]
        env = dict(os.environ, PYTHONPATH=str(src))
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN) if resource else None
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        wall = time.perf_counter() - t0
        cpu = None
        if resource:
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = SUMMARY.search(" ".join(res.stdout.split()))
    # a build whose exports failed would look fast: every op must be measured
    if res.returncode not in (0, 1) or not m or int(m[1]) or not float(m[6]):
        raise RuntimeError(f"fbprof measure ({src}) failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    loop = float(m[6])
    return {"wall_s": round(wall, 2), "loop_s": loop, "export_wait_s": float(m[5]), "cpu_s": cpu,
            "wall_over_loop": round(wall / loop, 3), "measured": int(m[2]),
            "load": os.getloadavg() if hasattr(os, "getloadavg") else None}


def geomean(xs: list[float]) -> float:
    return round(math.exp(sum(math.log(x) for x in xs) / len(xs)), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-src", type=Path, required=True, help="folder holding an older fbprof/")
    p.add_argument("--backend", default="litert")
    p.add_argument("--space", default="fbnet")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    here = Path(__file__).resolve().parents[1]
    if args.pairs < 1:
        sys.exit("--pairs: at least 1")
    if not (args.baseline_src / "fbprof").is_dir():
        sys.exit(f"{args.baseline_src}: no fbprof/ folder in it")
    trees = {"baseline": args.baseline_src.resolve(), "this": here}
    pairs: list[dict] = []
    for k in range(args.pairs):
        order = ["baseline", "this"] if k % 2 == 0 else ["this", "baseline"]
        pair = {}
        for name in order:
            try:
                pair[name] = cold_build(trees[name], args.backend, args.space, args.workers)
            except RuntimeError as e:
                if args.json and pairs:  # keep the pairs already done
                    args.json.write_text(json.dumps({"incomplete": True, "pairs": pairs}, indent=1) + "\n")
                sys.exit(str(e))
            print(f"pair {k + 1} {name:8s} " + " ".join(f"{key}={v}" for key, v in pair[name].items() if key != "load"),
                  flush=True)
        if pair["this"]["measured"] != pair["baseline"]["measured"]:
            sys.exit(f"pair {k + 1}: the trees measured {pair['this']['measured']} and {pair['baseline']['measured']} ops")
        pair["order"] = order
        pair["wall_this_over_baseline"] = round(pair["this"]["wall_s"] / pair["baseline"]["wall_s"], 3)
        if pair["this"]["cpu_s"] and pair["baseline"]["cpu_s"]:
            pair["cpu_this_over_baseline"] = round(pair["this"]["cpu_s"] / pair["baseline"]["cpu_s"], 3)
        pairs.append(pair)
    res = {"backend": args.backend, "space": args.space, "workers": args.workers,
           "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "pairs": pairs,
           "wall_this_over_baseline_geomean": geomean([q["wall_this_over_baseline"] for q in pairs]),
           "wall_over_loop": {name: [q[name]["wall_over_loop"] for q in pairs] for name in trees}}
    if all("cpu_this_over_baseline" in q for q in pairs):
        res["cpu_this_over_baseline_geomean"] = geomean([q["cpu_this_over_baseline"] for q in pairs])
    print(f"{args.backend}, {len(pairs)} pairs: wall this/baseline {[q['wall_this_over_baseline'] for q in pairs]} "
          f"(geomean {res['wall_this_over_baseline_geomean']}), CPU {[q.get('cpu_this_over_baseline') for q in pairs]}; "
          f"wall/loop baseline {res['wall_over_loop']['baseline']}, this {res['wall_over_loop']['this']} (goal <= 1.5)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
