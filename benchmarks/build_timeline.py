"""Where a cold LUT build's time goes: CPU time of the measuring process and of each export worker, per window.

Runs one cold `fbprof measure` of a space on the local device (fresh artifact cache in a temporary folder)
through the library (`open_measure` + `measure_lut`, 2 export workers as the CLI's default), samples every
0.25 s the CPU time (utime + stime from /proc) of this process and of every child, and records when each row
was measured. Prints, per 5 s window, the CPU seconds of the measuring process and of each worker, how busy
the cores were (all of them together) and how many rows were measured; then the first row's time, the wall
and the time inside measuring loops. A window under 100% busy is idle core time: the part of a cold build
that faster scheduling could still win (above ~95%, only cheaper conversions can).

Linux only (/proc). The JSON (`--json`) keeps every sample and row time.

    python benchmarks/build_timeline.py --backend litert --json results/benchmarks/build_timeline-litert.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WINDOW_S = 5.0


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            kids += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return kids


def table(doc: dict) -> list[str]:
    """Per window: CPU seconds of the measuring process and of each worker, cores busy, rows measured."""
    names = sorted({k for s in doc["samples"] for k in s["cpu"] if k != "main"}, key=int)
    last: dict[str, float] = {}
    acc: dict[int, dict[str, float]] = {}
    for s in doc["samples"]:
        w = int(s["t"] // WINDOW_S)
        for k, v in s["cpu"].items():
            if k in last:
                acc.setdefault(w, {}).setdefault(k, 0.0)
                acc[w][k] += v - last[k]
            last[k] = v
    rows: dict[int, int] = {}
    for t, _ in doc["rows"]:
        rows[int(t // WINDOW_S)] = rows.get(int(t // WINDOW_S), 0) + 1
    out = []
    for w in sorted(acc):
        a = acc[w]
        busy = sum(a.values()) / (doc["cores"] * WINDOW_S)
        workers = " ".join(f"{a.get(k, 0.0):4.1f}" for k in names)
        out.append(f"{w * WINDOW_S:5.0f} s  measuring {a.get('main', 0.0):4.1f}  workers {workers}  busy {busy:4.0%}  "
                   f"rows {rows.get(w, 0)}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="litert")
    ap.add_argument("--space", default="fbnet")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from fbprof.fileio import atomic_write_text
    from fbprof.profiler.measure import Listener, MeasureConfig, measure_lut, open_measure

    me = os.getpid()
    samples: list[dict] = []
    rows: list[tuple[float, str]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not stop.is_set():
            cpu = {"main": _cpu_s(me)}
            for kid in _children(me):
                c = _cpu_s(kid)
                if c is not None:
                    cpu[str(kid)] = c
            samples.append({"t": round(time.perf_counter() - t0, 3), "cpu": cpu})
            stop.wait(0.25)

    class Rows(Listener):
        def on_row_done(self, row) -> None:
            rows.append((round(time.perf_counter() - t0, 3), row.key))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="fbprof-timeline-") as tmp:
        cfg = MeasureConfig(out=Path(tmp) / "lut.csv", device="local", backend=args.backend, space=args.space,
                            export_workers=args.workers, cache_dir=Path(tmp) / "cache")
        with open_measure(cfg) as req:
            summary = measure_lut(req, Rows())
    stop.set()
    sampler.join()
    doc = {"command": "python benchmarks/build_timeline.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "backend": args.backend, "space": args.space, "workers": args.workers,
           "cores": len(os.sched_getaffinity(0)), "wall_s": round(summary.wall_s, 2), "loop_s": round(summary.loop_s, 2),
           "export_wait_s": round(summary.export_s, 2), "load_avg": os.getloadavg(), "samples": samples, "rows": rows}
    for line in table(doc):
        print(line)
    print(f"first row at {min(t for t, _ in rows):.1f} s; wall {doc['wall_s']:.1f} s, {doc['loop_s']:.1f} s in measuring "
          f"loops (wall/loop {doc['wall_s'] / doc['loop_s']:.2f}), {doc['export_wait_s']:.1f} s waiting for artifacts")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
