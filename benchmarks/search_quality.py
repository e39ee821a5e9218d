"""Does the search find accurate fast networks? (issue 11, item 4). A benchmark whose output is committed under
results/search/quality/; not a test.

On CIFAR-10 at a 32 px proxy (``../shared/data/cifar10``, ``train/`` and ``test/`` ImageFolders, or ``--data``):

1. three latency targets spread over the LUT's range (``--targets``, fractions of the way from the fastest to
   the slowest architecture of the space, both computed from the LUT);
2. per target, ``fbprof search --target-ms T`` with the defaults (``--search-limit-per-class`` for a reduced run);
3. the most likely architecture trained from scratch with two seeds, and ``--random`` (6) random architectures
   whose predicted latency is within +-5% of the searched one's, one seed each, plus a second seed of the first
   random one -- all with the same budget (``--train-per-class`` images per class of train/, ``--train-epochs``);
4. test accuracy on ``--test-images`` of test/ (default: all 10,000).

``seed_spread`` is the largest difference between the two seeds of one architecture seen in the run. ``pass``:
at every target the searched architecture's mean accuracy is above the random median by more than
``seed_spread``. Writes ``OUT/summary.json``, ``OUT/quality.png`` (accuracy against predicted latency: searched
points, random cloud, FBNet-A/B/C at the same budget unless ``--no-fbnet``), ``OUT/COMMAND.txt``, and each
search's folder, and ``OUT/trained.jsonl`` (every finished training: an interrupted run, started again with the
same command, resumes its searches from their checkpoints and trains nothing twice). A run with fewer images,
epochs or test images than the defaults is labelled ``"reduced": true`` in summary.json and in the plot's title.

    nice -n 5 .venv/bin/python benchmarks/search_quality.py --out results/search/quality
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {"train_per_class": 1000, "train_epochs": 10, "test_images": 10000, "search_limit_per_class": None}


def training_data(data_dir: str, in_channels: int, train_per_class: int, test_images: int):
    """The from-scratch training budget at 32 px: the first ``train_per_class`` images per class of ``train/``
    and a seeded subset of ``test_images`` images of ``test/`` (all of it by default)."""
    import torch

    from fbprof.search.data import load_data

    data = load_data(data_dir, 32, in_channels, limit_per_class=train_per_class)
    if test_images < len(data.y_test):
        g = torch.Generator().manual_seed(0)
        keep = torch.randperm(len(data.y_test), generator=g)[:test_images].sort().values
        data.x_test, data.y_test = data.x_test[keep], data.y_test[keep]
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lut", default="luts/local-cpu-onnxruntime.csv")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    ap.add_argument("--out", default="results/search/quality")
    ap.add_argument("--targets", default="0.15,0.35,0.55", help="fractions of the LUT's [fastest, slowest] range")
    ap.add_argument("--random", type=int, default=6, help="random architectures per target (one seed each)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="random architectures within +-this of the searched latency")
    ap.add_argument("--train-per-class", type=int, default=DEFAULTS["train_per_class"])
    ap.add_argument("--train-epochs", type=int, default=DEFAULTS["train_epochs"])
    ap.add_argument("--test-images", type=int, default=DEFAULTS["test_images"])
    ap.add_argument("--search-limit-per-class", type=int, default=DEFAULTS["search_limit_per_class"],
                    help="images per class for the search (default: all of train/)")
    ap.add_argument("--search-epochs", type=int, default=None, help="default: the search's own default")
    ap.add_argument("--search-min-epoch-steps", type=int, default=None, help="default: the search's own (SearchConfig.min_epoch_steps)")
    ap.add_argument("--no-fbnet", action="store_true", help="do not train FBNet-A/B/C for the plot")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from search_evidence import TrainedJournal, _space_range, random_archs_near, score_targets

    from fbprof.lut.predict import predict
    from fbprof.lut.table import read_lut
    from fbprof.search.dnas import SearchConfig, resolve_lut_space, run_search
    from fbprof.search.supernet import latency_table, proxy_space
    from fbprof.search.train import train_child
    from fbprof.space import load_arch

    t_all = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/search_quality.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    (out / "COMMAND.txt").write_text(command + "\n")
    reduced = (any(getattr(args, k) != v for k, v in DEFAULTS.items()) or args.search_epochs is not None
               or args.search_min_epoch_steps is not None)

    lut = read_lut(args.lut)
    space = resolve_lut_space(lut, None, None, None)
    head = space.head_channels[0]
    lat, mask, fixed, _ = latency_table(space, lut, head)
    lo, hi = _space_range(lat, mask, fixed)

    train = training_data(args.data, space.in_channels, args.train_per_class, args.test_images)
    plan = proxy_space(space, 32, train.num_classes, SearchConfig.min_feature)  # the final map the search trains
    log = print

    # finished trainings survive an interrupted run (OUT/trained.jsonl): running the same command again resumes
    journal = TrainedJournal(out / "trained.jsonl", {
        "train_per_class": args.train_per_class, "train_epochs": args.train_epochs, "test_images": len(train.y_test),
        "data": str(args.data), "space": plan.space.name, "resolution": 32, "min_feature": SearchConfig.min_feature})

    def fit(blocks, seed: int, head_channels: int | None = None) -> dict:
        h = head_channels or head
        done = journal.get(blocks, h, seed)
        if done is not None:
            log(f"    trained {' '.join(blocks)} seed {seed}: acc {done['acc']:.4f} (from {journal.path.name})")
            return done
        r = train_child(plan.space, blocks, h, train, args.train_epochs, seed=seed)
        log(f"    trained {' '.join(blocks)} seed {seed}: acc {r.accuracy:.4f} ({r.seconds:.0f} s)")
        result = {"acc": r.accuracy, "seconds": r.seconds}
        journal.put(blocks, h, seed, result)
        return result

    targets = []
    spreads = []
    for frac in [float(f) for f in args.targets.split(",")]:
        target_us = lo + frac * (hi - lo)
        log(f"target {target_us / 1000:.3f} ms ({frac:.2f} of {lo / 1000:.3f}..{hi / 1000:.3f} ms)")
        t0 = time.perf_counter()
        sdir = out / f"search-{target_us / 1000:.2f}ms"
        cfg = SearchConfig(lut=args.lut, out=str(sdir), data=args.data, target_ms=target_us / 1000,
                           limit_per_class=args.search_limit_per_class, epochs=args.search_epochs, seed=args.seed,
                           **({"min_epoch_steps": args.search_min_epoch_steps} if args.search_min_epoch_steps else {}),
                           resume=(sdir / "checkpoint.pt").exists())
        res = run_search(cfg)
        search_s = time.perf_counter() - t0
        best = res.best
        log(f"  searched {best.predicted_us / 1000:.3f} ms, supernet held-out acc {res.heldout_accuracy:.4f} ({search_s:.0f} s)")
        s_runs = [fit(best.blocks, args.seed + k) for k in range(2)]
        rand, how = random_archs_near(lat, mask, fixed, best.predicted_us, args.random, args.seed + 7, tol=args.tolerance)
        r_blocks = [[space.layers[li].candidates[i] for li, i in enumerate(r)] for r in rand]
        r_ms = [predict(space.arch(b, head, name="random"), lut).total_us / 1000 for b in r_blocks]
        r_runs = [fit(b, args.seed) for b in r_blocks]
        second = fit(r_blocks[0], args.seed + 1) if r_blocks else None
        spreads.append(abs(s_runs[0]["acc"] - s_runs[1]["acc"]))
        if second is not None:
            spreads.append(abs(second["acc"] - r_runs[0]["acc"]))
        targets.append({
            "target_ms": round(target_us / 1000, 4),
            "searched": {"ms": round(best.predicted_us / 1000, 4), "acc": [r["acc"] for r in s_runs],
                         "blocks": best.blocks, "supernet_heldout_accuracy": res.heldout_accuracy,
                         "search_wall_s": round(search_s, 1)},
            "random": {"ms": [round(m, 4) for m in r_ms], "acc": [r["acc"] for r in r_runs], "sampling": how,
                       "second_seed_of_first": second["acc"] if second else None, "blocks": r_blocks},
        })
    seed_spread = score_targets(targets, spreads)
    for t in targets:
        t["pass"] = t.pop("accuracy_pass")
    fbnet = []
    if not args.no_fbnet:
        for name in ("fbnet-a", "fbnet-b", "fbnet-c"):
            try:
                arch = load_arch(name)
            except Exception as e:  # noqa: BLE001 - the plot can do without them
                log(f"  {name}: {e}")
                continue
            try:
                ms = predict(arch, lut).total_us / 1000
            except Exception:  # noqa: BLE001 - a LUT without that head width
                ms = None
            r = fit(list(arch.blocks), args.seed, arch.head_channels)
            fbnet.append({"name": name, "ms": round(ms, 4) if ms else None, "acc": r["acc"],
                          "head_channels": arch.head_channels})
    summary = {
        "schema": 1,
        "reduced": reduced,
        "command": command,
        "lut": args.lut,
        "data": args.data,
        "proxy": "32 px, CIFAR-10 train/ for the search and training, test/ for accuracy",
        "budget": {"train_per_class": args.train_per_class, "train_images": len(train.y_train),
                   "train_epochs": args.train_epochs, "test_images": len(train.y_test),
                   "search_limit_per_class": args.search_limit_per_class, "search_epochs": args.search_epochs or "default",
                   "search_min_epoch_steps": args.search_min_epoch_steps or "default",
                   },
        "lut_range_ms": [round(lo / 1000, 4), round(hi / 1000, 4)],
        "targets": targets,
        "seed_spread": seed_spread,
        "pass": bool(targets) and all(t["pass"] for t in targets),
        "fbnet": fbnet,
        "wall_s": round(time.perf_counter() - t_all, 1),
        "platform": platform.platform(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _plot(summary, out / "quality.png")
    log(json.dumps({k: summary[k] for k in ("reduced", "seed_spread", "pass", "wall_s")}))
    return 0


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    first = True
    for t in summary["targets"]:
        ax.scatter(t["random"]["ms"], t["random"]["acc"], s=18, c="0.6", label="random (same predicted latency)" if first else None)
        ax.scatter([t["searched"]["ms"]] * len(t["searched"]["acc"]), t["searched"]["acc"], s=40, c="C3", marker="*",
                   label="searched (2 seeds)" if first else None)
        ax.axvline(t["target_ms"], c="C3", lw=0.5, ls=":")
        first = False
    for f in summary.get("fbnet", []):
        if f.get("ms"):
            ax.scatter([f["ms"]], [f["acc"]], s=30, c="C0", marker="s")
            ax.annotate(f["name"].upper(), (f["ms"], f["acc"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    b = summary["budget"]
    ax.set_xlabel(f"predicted latency (ms, {Path(summary['lut']).name})")
    ax.set_ylabel(f"CIFAR-10 test accuracy ({b['test_images']} images)")
    ax.set_title(("REDUCED RUN: " if summary["reduced"] else "")
                 + f"from scratch, {b['train_images']} train images x {b['train_epochs']} epochs", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
