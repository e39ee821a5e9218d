"""Benchmark: how much of a LUT build is measuring, and how fast a no-op re-run is.

Prints, from one run on this machine:
  (a) wall time of a whole cold build (fresh artifact cache) / time spent inside measuring loops
      (goal <= 1.5: export and setup must not dominate), the CPU time it took (the command and its export
      workers: how busy it kept the cores), and the same ratio with a warm artifact cache;
  (b) wall time of a second `fbprof measure` with every row already present (goal < 3 s);
  (c) how much the cold build's medians (measured while exports ran on the other cores) differ from the
      warm build's (measured with no export running): a check that overlapping does not add noise;
  (d) with --throughput N: export throughput (ops/s, one process, one torch thread, N ops of the space
      after a warm-up export) of this tree and, with --baseline-src DIR (an older checkout's folder that
      holds fbprof/), of that one, side by side.

Usage: python benchmarks/lut_build.py [--backend onnxruntime] [--space fbnet] [--workers 2] [--json OUT]
                                      [--throughput 16 [--baseline-src DIR]] [--skip-build]
Each build is a real `fbprof measure --device local` process; its summary line gives the loop time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
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

SUMMARY = re.compile(r"measured (\d+), reused (\d+); ([\d.]+) s wall \(([\d.]+) s export, ([\d.]+) s in measuring loops\)")


def fbprof() -> list[str]:
    exe = Path(sys.executable).with_name("fbprof")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fbprof.cli"]


def build(args: argparse.Namespace, out: Path, cache: Path, *extra: str) -> dict:
    cmd = [*fbprof(), "measure", "--device", "local", "--backend", args.backend, "--space", args.space,
           "--out", str(out), "--cache-dir", str(cache), "--workers", str(args.workers), "-q", *extra]
    if args.backend == "onnxruntime":
        cmd += ["--onnx-exporter", args.onnx_exporter]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN) if resource else None
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = None
    if resource:  # the command and its export workers (reaped before it exits)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    text = " ".join(res.stdout.split())
    m = SUMMARY.search(text)
    if res.returncode not in (0, 1) or not m:
        sys.exit(f"fbprof measure failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return {"wall_s": wall, "measured": int(m[1]), "reused": int(m[2]), "inner_wall_s": float(m[3]),
            "export_s": float(m[4]), "loop_s": float(m[5]), "cpu_s": cpu, "command": " ".join(cmd)}


THROUGHPUT = r"""
import json, shutil, sys, tempfile, time
import torch
from fbprof.backends import get_backend
from fbprof.backends.cache import ArtifactCache
from fbprof.profiler.export import export_op, export_ops
from fbprof.space import load_space
torch.set_num_threads(1)
backend, space, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fmt = get_backend(backend).format
specs = load_space(space, None, None).all_specs()
rest = specs[1:]
sample = rest[:: max(1, len(rest) // n)][:n]
root = tempfile.mkdtemp(prefix="fbprof-throughput-")
try:
    cache = ArtifactCache(root)
    export_op(specs[0], fmt, cache)  # warm-up: imports and first-call set-up are not counted
    t = time.perf_counter()
    out = export_ops(sample, fmt, cache, workers=1)
    dt = time.perf_counter() - t
finally:
    shutil.rmtree(root, ignore_errors=True)
bad = sorted(k for k, v in out.items() if not hasattr(v, "path"))
print(json.dumps({"ops": len(sample), "export_s": round(dt, 2), "ops_per_s": round(len(sample) / dt, 3), "failed": bad}))
"""


def throughput(args: argparse.Namespace, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run([sys.executable, "-c", THROUGHPUT, args.backend, args.space, str(args.throughput)],
                         capture_output=True, text=True, env=env, cwd=str(src))
    if res.returncode != 0:
        sys.exit(f"throughput run in {src} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def median_drift(cold_lut: Path, warm_lut: Path) -> dict:
    """Per op, cold median / warm median (cold: measured while exports ran; warm: no export running)."""
    from fbprof.lut.table import read_lut

    cold, warm = read_lut(cold_lut).rows, read_lut(warm_lut).rows
    ratios = [cold[k].median_us / warm[k].median_us for k in cold if k in warm and warm[k].median_us > 0]
    if not ratios:
        return {}
    dev = sorted(abs(r - 1) for r in ratios)
    return {"ops": len(ratios), "geomean_cold_over_warm": round(math.exp(statistics.fmean(math.log(r) for r in ratios)), 4),
            "median_abs_diff": round(dev[len(dev) // 2], 4), "p90_abs_diff": round(dev[int(0.9 * (len(dev) - 1))], 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--space", default="fbnet")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--onnx-exporter", default="dynamo", help="dynamo (default) or legacy")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--throughput", type=int, default=0, metavar="N", help="also measure export ops/s on N ops")
    p.add_argument("--baseline-src", type=Path, help="folder holding an older fbprof/ to compare export ops/s with")
    p.add_argument("--skip-build", action="store_true", help="only the export throughput")
    args = p.parse_args()
    load = {"loadavg_before": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None}
    res: dict = {"backend": args.backend}
    if not args.skip_build:
        res.update(builds(args))
    if args.throughput:
        here = Path(__file__).resolve().parents[1]
        res["export_throughput"] = {"after": throughput(args, here)}
        if args.baseline_src:
            res["export_throughput"]["before"] = throughput(args, args.baseline_src.resolve())
        t = res["export_throughput"]
        before = t.get("before", {}).get("ops_per_s")
        after = t["after"]["ops_per_s"]
        print(f"(d) export throughput, {args.backend}, {t['after']['ops']} ops, 1 process: "
              f"before {before if before is not None else '-'} ops/s | after {after} ops/s"
              + (f" | x{after / before:.2f}" if before else ""))
    load["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    res["load"] = load
    print(f"load (1/5/15 min): before {load['loadavg_before']}, after {load['loadavg_after']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


def builds(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="fbprof-bench-"))
    try:
        lut, cache = tmp / "lut.csv", tmp / "cache"
        cold = build(args, lut, cache)
        shutil.copy(lut, tmp / "cold.csv")
        noop = build(args, lut, cache)
        warm = build(args, lut, cache, "--remeasure")
        drift = median_drift(tmp / "cold.csv", lut)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {
        "backend": args.backend, "onnx_exporter": args.onnx_exporter if args.backend == "onnxruntime" else None, "space": args.space, "ops": cold["measured"],
        "cold_wall_s": round(cold["wall_s"], 2), "cold_export_s": cold["export_s"], "cold_loop_s": cold["loop_s"],
        "cold_ratio_wall_over_loop": round(cold["wall_s"] / cold["loop_s"], 3),
        "cold_cpu_s": round(cold["cpu_s"], 1) if cold["cpu_s"] is not None else None, "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "warm_cache_wall_s": round(warm["wall_s"], 2), "warm_cache_loop_s": warm["loop_s"],
        "warm_cache_ratio_wall_over_loop": round(warm["wall_s"] / warm["loop_s"], 3),
        "noop_rerun_wall_s": round(noop["wall_s"], 2), "noop_rerun_measured": noop["measured"],
        "cold_vs_warm_medians": drift, "workers": args.workers,
        "command": cold["command"],
    }
    print(f"LUT build, {res['ops']} ops, backend {args.backend}, space {args.space}")
    print(f"(a) cold build: {res['cold_wall_s']:.1f} s wall, {res['cold_export_s']:.1f} s export, "
          f"{res['cold_loop_s']:.1f} s in measuring loops -> wall/loop = {res['cold_ratio_wall_over_loop']:.2f} (goal <= 1.5)")
    if res["cold_cpu_s"] is not None:
        print(f"    CPU time of the cold build (command and export workers): {res['cold_cpu_s']:.1f} s of "
              f"{res['cores']} cores x {res['cold_wall_s']:.1f} s wall = {res['cold_cpu_s'] / (res['cores'] * res['cold_wall_s']):.0%} busy")
    print(f"    warm artifact cache (--remeasure): wall/loop = {res['warm_cache_ratio_wall_over_loop']:.2f}")
    print(f"(b) second run, every row present: {res['noop_rerun_wall_s']:.2f} s wall, "
          f"{res['noop_rerun_measured']} measured (goal < 3 s)")
    if drift:
        print(f"(c) cold medians (exports running) / warm medians (none): geometric mean {drift['geomean_cold_over_warm']:.3f}, "
              f"|ratio - 1| median {drift['median_abs_diff']:.3f}, p90 {drift['p90_abs_diff']:.3f} over {drift['ops']} ops")
    return res


if __name__ == "__main__":
    main()
