"""Benchmark: how much of a LUT build is measuring, and how fast a no-op re-run is.

Prints, from one run on this machine:
  (a) wall time of a whole cold build (fresh artifact cache) / time spent inside measuring loops
      (goal <= 1.5: export and setup must not dominate), and the same ratio with a warm artifact cache;
  (b) wall time of a second `fbprof measure` with every row already present (goal < 3 s).

Usage: python benchmarks/lut_build.py [--backend onnxruntime] [--space fbnet] [--workers 2] [--json OUT]
Each build is a real `fbprof measure --device local` process; its summary line gives the loop time.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUMMARY = re.compile(r"measured (\d+), reused (\d+); ([\d.]+) s wall \(([\d.]+) s export, ([\d.]+) s in measuring loops\)")


def fbprof() -> list[str]:
    exe = Path(sys.executable).with_name("fbprof")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fbprof.cli"]


def build(args: argparse.Namespace, out: Path, cache: Path, *extra: str) -> dict:
    cmd = [*fbprof(), "measure", "--device", "local", "--backend", args.backend, "--space", args.space,
           "--out", str(out), "--cache-dir", str(cache), "--workers", str(args.workers), "-q", *extra]
    if args.backend == "onnxruntime":
        cmd += ["--onnx-exporter", args.onnx_exporter]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = " ".join(res.stdout.split())
    m = SUMMARY.search(text)
    if res.returncode not in (0, 1) or not m:
        sys.exit(f"fbprof measure failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return {"wall_s": wall, "measured": int(m[1]), "reused": int(m[2]), "inner_wall_s": float(m[3]),
            "export_s": float(m[4]), "loop_s": float(m[5]), "command": " ".join(cmd)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--space", default="fbnet")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--onnx-exporter", default="dynamo", help="dynamo (default) or legacy")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fbprof-bench-"))
    try:
        lut, cache = tmp / "lut.csv", tmp / "cache"
        cold = build(args, lut, cache)
        noop = build(args, lut, cache)
        warm = build(args, lut, cache, "--remeasure")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {
        "backend": args.backend, "onnx_exporter": args.onnx_exporter if args.backend == "onnxruntime" else None, "space": args.space, "ops": cold["measured"],
        "cold_wall_s": round(cold["wall_s"], 2), "cold_export_s": cold["export_s"], "cold_loop_s": cold["loop_s"],
        "cold_ratio_wall_over_loop": round(cold["wall_s"] / cold["loop_s"], 3),
        "warm_cache_wall_s": round(warm["wall_s"], 2), "warm_cache_loop_s": warm["loop_s"],
        "warm_cache_ratio_wall_over_loop": round(warm["wall_s"] / warm["loop_s"], 3),
        "noop_rerun_wall_s": round(noop["wall_s"], 2), "noop_rerun_measured": noop["measured"],
        "command": cold["command"],
    }
    print(f"LUT build, {res['ops']} ops, backend {args.backend}, space {args.space}")
    print(f"(a) cold build: {res['cold_wall_s']:.1f} s wall, {res['cold_export_s']:.1f} s export, "
          f"{res['cold_loop_s']:.1f} s in measuring loops -> wall/loop = {res['cold_ratio_wall_over_loop']:.2f} (goal <= 1.5)")
    print(f"    warm artifact cache (--remeasure): wall/loop = {res['warm_cache_ratio_wall_over_loop']:.2f}")
    print(f"(b) second run, every row present: {res['noop_rerun_wall_s']:.2f} s wall, "
          f"{res['noop_rerun_measured']} measured (goal < 3 s)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
