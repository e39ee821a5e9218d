"""Device-specific search on our own runtimes (issue 11, item 5): FBNet's iPhone-X-vs-S8 result, with the three
local LUTs as the three "devices". A benchmark whose output is committed under results/search/cross-device/; not
a test.

1. per LUT (``--luts``: ONNX Runtime, LiteRT, ExecuTorch on this CPU), ``fbprof search --target-ms T`` with T at
   the same relative place in that LUT's own [fastest, slowest] range (``--target``, a fraction) on CIFAR-10 at the
   32 px proxy (``--search-limit-per-class`` for a reduced run; ``--search-dir NAME=DIR`` reuses a finished
   search with the same settings, e.g. the quality benchmark's: its checkpoint is resumed, which checks them);
2. each searched network measured end to end on each runtime: ``fbprof verify --arch ... --samples 0
   --no-calibrate`` per runtime, the three networks (and FBNet-A/B/C) in interleaved rounds, so the ratios
   within a runtime come from one run;
3. each searched network trained from scratch (``--seeds`` seeds, the quality benchmark's budget) and tested on
   ``test/``;
4. ``fbprof lut diff`` numbers for every pair of LUTs (how differently they rank the same ops).

Goal (per runtime): its own network is the fastest of the three measured there, at equal or better accuracy
(within the largest seed-to-seed difference seen). Writes ``OUT/summary.json`` (``table_ms[searched_for][measured_on]``,
``acc``), ``OUT/cross_device.png``, ``OUT/COMMAND.txt``, the searches and the verify reports, and the finished
trainings (``OUT/trained.jsonl``, or ``--trained-journal``: the quality benchmark's, whose first target is this run's
ONNX Runtime search, shares them), so an interrupted run started again trains nothing twice.

    nice -n 5 .venv/bin/python benchmarks/cross_device.py --out results/search/cross-device
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LUTS = {"onnxruntime": "luts/local-cpu-onnxruntime.csv", "litert": "luts/local-cpu-litert.csv",
        "executorch": "luts/local-cpu-executorch.csv"}


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(items) for b in items[i + 1:]]


def lut_diff_numbers(a: str, b: str) -> dict:
    """``fbprof lut diff`` (through its library function) plus the rank correlation of the common ops."""
    from fbprof.lut.predict import diff_luts
    from fbprof.lut.table import read_lut
    from fbprof.verify.stats import rank_stats

    d = diff_luts(read_lut(a), read_lut(b))
    s = d.summary()  # what `fbprof lut diff` prints
    ranks = rank_stats([r.a_us for r in d.rows], [r.b_us for r in d.rows])
    return {"common_ops": s["common"], "median_ratio_b_over_a": round(s["median_ratio"], 4),
            "ratio_range": [round(s["min_ratio"], 4), round(s["max_ratio"], 4)],
            "ops_b_faster": s["b_faster"], "ops_a_faster": s["a_faster"],
            **{k: (round(v, 4) if v is not None else None) for k, v in ranks.items()},
            "command": f"fbprof lut diff {a} {b}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--luts", default=",".join(f"{k}={v}" for k, v in LUTS.items()), help="NAME=LUT,...")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    ap.add_argument("--out", default="results/search/cross-device")
    ap.add_argument("--target", type=float, default=0.15, help="fraction of each LUT's [fastest, slowest] range")
    ap.add_argument("--search-limit-per-class", type=int, default=None)
    ap.add_argument("--search-epochs", type=int, default=None, help="default: the search's own default (smoke runs)")
    ap.add_argument("--search-min-epoch-steps", type=int, default=None, help="default: the search's own (smoke runs)")
    ap.add_argument("--search-dir", action="append", default=[], help="NAME=DIR: reuse (resume) this search folder")
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--train-epochs", type=int, default=10)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved verify rounds per runtime")
    ap.add_argument("--noise-repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trained-journal", default=None,
                    help="finished trainings, read and appended (default OUT/trained.jsonl); the quality benchmark's "
                         "OUT/trained.jsonl shares the trainings both runs make (same budget, same networks, same seeds)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from search_evidence import TrainedJournal, _space_range
    from search_quality import training_data

    from fbprof.lut.predict import predict
    from fbprof.lut.table import read_lut
    from fbprof.search.dnas import SearchConfig, resolve_lut_space, run_search
    from fbprof.search.supernet import latency_table, proxy_space
    from fbprof.search.train import train_child
    from fbprof.space import load_arch

    t_all = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/cross_device.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    (out / "COMMAND.txt").write_text(command + "\n")
    luts = dict(item.split("=", 1) for item in args.luts.split(","))
    reuse = dict(item.split("=", 1) for item in args.search_dir)
    names = list(luts)
    log = print

    # 1. one search per LUT at the same relative target
    searched: dict[str, dict] = {}
    for name, path in luts.items():
        lut = read_lut(path)
        space = resolve_lut_space(lut, None, None, None)
        head = space.head_channels[0]
        lat, mask, fixed, _ = latency_table(space, lut, head)
        lo, hi = _space_range(lat, mask, fixed)
        target_us = lo + args.target * (hi - lo)
        sdir = Path(reuse.get(name, out / f"search-{name}"))
        log(f"{name}: target {target_us / 1000:.3f} ms ({args.target:.2f} of {lo / 1000:.3f}..{hi / 1000:.3f} ms) -> {sdir}")
        t0 = time.perf_counter()
        cfg = SearchConfig(lut=path, out=str(sdir), data=args.data, target_ms=target_us / 1000,
                           limit_per_class=args.search_limit_per_class, epochs=args.search_epochs, seed=args.seed,
                           **({"min_epoch_steps": args.search_min_epoch_steps} if args.search_min_epoch_steps else {}),
                           resume=(sdir / "checkpoint.pt").exists())
        res = run_search(cfg)
        arch = space.arch(res.best.blocks, head, name=f"for-{name}")
        arch_path = out / f"arch-for-{name}.yaml"
        arch.dump(arch_path)
        searched[name] = {"lut": path, "target_ms": round(target_us / 1000, 4),
                          "lut_range_ms": [round(lo / 1000, 4), round(hi / 1000, 4)],
                          "predicted_ms": round(res.best.predicted_us / 1000, 4), "blocks": list(res.best.blocks),
                          "skips": sum(b == "skip" for b in res.best.blocks),
                          "supernet_heldout_accuracy": res.heldout_accuracy, "search_dir": str(sdir),
                          "search_reused": name in reuse, "search_wall_s": round(time.perf_counter() - t0, 1),
                          "arch_file": str(arch_path)}
        log(f"  searched {res.best.predicted_us / 1000:.3f} ms, {searched[name]['skips']} skips")

    # predicted latency of every searched network on every LUT
    pred_ms = {s: {m: round(predict(load_arch(searched[s]["arch_file"]), read_lut(luts[m])).total_us / 1000, 4)
                   for m in names} for s in names}

    # 2. measured end to end on each runtime, the three networks interleaved
    table_ms: dict[str, dict[str, float | None]] = {s: {} for s in names}
    spread_pct: dict[str, dict[str, float | None]] = {s: {} for s in names}
    noise: dict[str, dict] = {}
    for m in names:
        vdir = out / f"measure-on-{m}"
        cmd = [str(ROOT / ".venv" / "bin" / "fbprof"), "verify", "--lut", luts[m], "--device", "local", "--samples", "0",
               "--no-calibrate", "--rounds", str(args.rounds), "--noise-repeats", str(args.noise_repeats),
               "--seed", str(args.seed), "--out", str(vdir), "--quiet"]
        for s in names:
            cmd += ["--arch", searched[s]["arch_file"]]
        log(f"measuring on {m}: {shlex.join(cmd)}")
        subprocess.run(cmd, check=True, cwd=ROOT)
        vs = json.loads((vdir / "summary.json").read_text())
        given = vs.get("given", {})
        for s in names:
            g = given.get(f"for-{s}", {})
            table_ms[s][m] = round(g["measured_us"] / 1000, 4) if g.get("measured_us") else None
            spread_pct[s][m] = g.get("round_spread_pct")
        noise[m] = vs.get("noise_floor")

    # 3. trained from scratch
    space0 = resolve_lut_space(read_lut(luts[names[0]]), None, None, None)
    data = training_data(args.data, space0.in_channels, args.train_per_class, args.test_images)
    plan = proxy_space(space0, 32, data.num_classes, SearchConfig.min_feature)  # the final map the search trains
    # finished trainings survive an interrupted run; keyed like the quality benchmark's, so the two can share one
    journal = TrainedJournal(Path(args.trained_journal) if args.trained_journal else out / "trained.jsonl", {
        "train_per_class": args.train_per_class, "train_epochs": args.train_epochs, "test_images": len(data.y_test),
        "data": str(args.data), "space": plan.space.name, "resolution": 32, "min_feature": SearchConfig.min_feature})
    acc: dict[str, list[float]] = {}
    head = space0.head_channels[0]
    for s in names:
        acc[s] = []
        for k in range(args.seeds):
            blocks, seed = searched[s]["blocks"], args.seed + k
            done = journal.get(blocks, head, seed)
            if done is None:
                r = train_child(plan.space, blocks, head, data, args.train_epochs, seed=seed)
                log(f"  trained for-{s} seed {seed}: acc {r.accuracy:.4f} ({r.seconds:.0f} s)")
                done = {"acc": r.accuracy, "seconds": r.seconds}
                journal.put(blocks, head, seed, done)
            else:
                log(f"  trained for-{s} seed {seed}: acc {done['acc']:.4f} (from {journal.path})")
            acc[s].append(done["acc"])
    seed_spread = max((max(a) - min(a) for a in acc.values() if len(a) > 1), default=None)

    # 4. how differently the LUTs rank the ops
    diffs = {f"{a} vs {b}": lut_diff_numbers(luts[a], luts[b]) for a, b in _pairs(names)}

    verdicts = {}
    for m in names:
        row = {s: table_ms[s][m] for s in names}
        measured = {s: v for s, v in row.items() if v is not None}
        fastest = min(measured, key=measured.get) if measured else None
        own_acc = statistics.fmean(acc[m])
        others_best = max(statistics.fmean(acc[s]) for s in names if s != m) if len(names) > 1 else own_acc
        acc_ok = seed_spread is not None and own_acc >= others_best - seed_spread
        verdicts[m] = {"fastest_measured": f"for-{fastest}" if fastest else None,
                       "own_is_fastest": fastest == m,
                       "own_vs_next_fastest": (round(measured[m] / min(v for s, v in measured.items() if s != m), 4)
                                               if m in measured and len(measured) > 1 else None),
                       "own_acc_mean": round(own_acc, 4), "best_other_acc_mean": round(others_best, 4),
                       "acc_ok": acc_ok, "pass": fastest == m and acc_ok}
    summary = {
        "schema": 1,
        "command": command,
        "data": args.data,
        "proxy": "32 px CIFAR-10 train/ for the searches and training, test/ for accuracy; latency at the LUTs' "
                 "own resolution (224 px), measured end to end with fbprof verify on this CPU",
        "budget": {"search_limit_per_class": args.search_limit_per_class, "search_epochs": args.search_epochs or "default",
                   "search_min_epoch_steps": args.search_min_epoch_steps or "default", "train_per_class": args.train_per_class,
                   "train_images": len(data.y_train), "train_epochs": args.train_epochs, "test_images": len(data.y_test),
                   "seeds": args.seeds, "verify_rounds": args.rounds},
        "target_fraction": args.target,
        "searched": searched,
        "predicted_ms": pred_ms,
        "table_ms": table_ms,
        "round_spread_pct": spread_pct,
        "noise_floor": noise,
        "acc": acc,
        "seed_spread": seed_spread,
        "lut_diff": diffs,
        "verdict": verdicts,
        "pass": all(v["pass"] for v in verdicts.values()),
        "wall_s": round(time.perf_counter() - t_all, 1),
        "platform": platform.platform(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _plot(summary, out / "cross_device.png")
    log(json.dumps({"table_ms": table_ms, "acc": acc, "pass": summary["pass"], "wall_s": summary["wall_s"]}))
    return 0


def _plot(summary: dict, path: Path) -> None:
    """Per runtime (group), each searched network's measured latency relative to the runtime's own network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["table_ms"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1.3]})
    w = 0.8 / len(names)
    for j, s in enumerate(names):
        xs, ys = [], []
        for i, m in enumerate(names):
            v, own = summary["table_ms"][s][m], summary["table_ms"][m][m]
            if v is not None and own:
                xs.append(i + (j - (len(names) - 1) / 2) * w)
                ys.append(v / own)
        ax.bar(xs, ys, width=w, label=f"searched for {s}", color=f"C{j}")
    ax.axhline(1.0, c="k", lw=0.6)
    ax.set_xticks(range(len(names)), [f"measured on {m}" for m in names], fontsize=8)
    ax.set_ylabel("end-to-end latency / that runtime's own network")
    ax.legend(fontsize=8)
    ax.set_title("each runtime's own network should be lowest in its group", fontsize=9)
    for j, s in enumerate(names):
        a = summary["acc"][s]
        ax2.scatter([j] * len(a), a, c=f"C{j}", s=25)
    ax2.set_xticks(range(len(names)), [f"for {s}" for s in names], fontsize=8, rotation=20)
    b = summary["budget"]
    ax2.set_ylabel(f"CIFAR-10 test acc ({b['test_images']} imgs)")
    ax2.set_title(f"from scratch, {b['train_images']} imgs x {b['train_epochs']} ep", fontsize=9)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
