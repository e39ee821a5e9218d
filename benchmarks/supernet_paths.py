"""Did theta learn which paths are accurate? (issue 11). Evaluates paths of a finished search's supernet on the
held-out images: the most likely architecture, architectures sampled from the final theta, and uniformly
random architectures -- all with the same supernet weights and each path's BatchNorm statistics re-estimated
on weight-split images first (as the search evaluates its most likely path). Prints and writes, per path, its
held-out accuracy and CE and its predicted latency (LUT). A diagnostic whose output is committed beside the
search it reads; not a test.

    python benchmarks/supernet_paths.py RUN_DIR [--theta-samples 8] [--random 8] [--test-images 10000] [--out F]

Compares like with like only roughly: random paths have another latency than the searched ones; the file lists
both so that a reader can match them (``--match``: keep only random paths within +-25% of the most likely
path's latency, drawing until ``--random`` are found or 20,000 draws).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a search's --out folder (reads checkpoint.pt)")
    ap.add_argument("--theta-samples", type=int, default=8)
    ap.add_argument("--random", type=int, default=8)
    ap.add_argument("--match", action="store_true", help="random paths within +-25%% of the most likely latency")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from fbprof.fileio import atomic_write_text
    from fbprof.lut.table import read_lut
    from fbprof.search.data import load_data, stratified_split
    from fbprof.search.dnas import EVAL_CAL_IMAGES, SearchConfig, evaluate_path, load_checkpoint, resolve_lut_space
    from fbprof.search.supernet import MEMORY_FORMAT, Supernet, latency_table, proxy_space

    run = Path(args.run)
    state, meta = load_checkpoint(run / "checkpoint.pt")
    c = meta["config"]
    cfg = SearchConfig(**{k: v for k, v in c.items() if k in SearchConfig.__dataclass_fields__})
    lut = read_lut(cfg.lut)
    sp = resolve_lut_space(lut, cfg.space, cfg.lut_resolution, cfg.width)
    head = cfg.head_channels if cfg.head_channels is not None else sp.head_channels[0]
    lat, mask, fixed_us, _ = latency_table(sp, lut, head)
    data = load_data(cfg.data, cfg.resolution, sp.in_channels, cfg.test_fraction, limit_per_class=cfg.limit_per_class)
    plan = proxy_space(sp, cfg.resolution, data.num_classes, cfg.min_feature)
    w_idx, _ = stratified_split(data.y_train, 0.2, cfg.seed)
    net = Supernet(plan.space, head, shared_init=cfg.shared_init, seed=cfg.seed).to(memory_format=MEMORY_FORMAT)
    net.load_state_dict(state["supernet"])
    theta = state["theta"]
    g = torch.Generator().manual_seed(args.seed)
    sel = torch.randperm(len(data.y_test), generator=g)[: args.test_images]
    x_test, y_test = data.x_test[sel], data.y_test[sel]

    def latency_ms(idx: list[int]) -> float:
        return (fixed_us + sum(float(lat[li, i]) for li, i in enumerate(idx))) / 1000

    masked = theta.masked_fill(~mask, float("-inf"))
    best = torch.argmax(masked, dim=-1).tolist()
    paths: list[tuple[str, list[int]]] = [("most_likely", best)]
    probs = torch.softmax(masked, dim=-1)
    for k in range(args.theta_samples):
        paths.append((f"theta_sample_{k}", torch.multinomial(probs, 1, generator=g).flatten().tolist()))
    uniform = mask.float() / mask.float().sum(dim=-1, keepdim=True)
    found, draws = 0, 0
    while found < args.random and draws < 20000:
        draws += 1
        idx = torch.multinomial(uniform, 1, generator=g).flatten().tolist()
        if args.match and abs(latency_ms(idx) / latency_ms(best) - 1) > 0.25:
            continue
        paths.append((f"random_{found}", idx))
        found += 1

    rows = []
    for label, idx in paths:
        ce, acc = evaluate_path(net, idx, data.x_train[w_idx[:EVAL_CAL_IMAGES]], x_test, y_test, "cpu", cfg.batch_size)
        blocks = [layer.candidates[i] for layer, i in zip(sp.layers, idx)]
        rows.append({"path": label, "heldout_accuracy": round(acc, 4), "heldout_ce": round(ce, 4),
                     "predicted_ms": round(latency_ms(idx), 4), "skips": blocks.count("skip"), "blocks": blocks})
        print(f"{label:<16} acc {acc:.4f}  CE {ce:.3f}  {latency_ms(idx):7.3f} ms  {blocks.count('skip'):2d} skips",
              flush=True)

    def summary(prefix: str) -> dict:
        accs = [r["heldout_accuracy"] for r in rows if r["path"].startswith(prefix)]
        ms = [r["predicted_ms"] for r in rows if r["path"].startswith(prefix)]
        return {"n": len(accs), "acc_median": statistics.median(accs) if accs else None,
                "acc_min": min(accs, default=None), "acc_max": max(accs, default=None),
                "ms_median": statistics.median(ms) if ms else None}

    doc = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "run": str(run), "search_config": c, "test_images": len(y_test), "matched_random": args.match,
           "random_draws": draws, "most_likely": rows[0], "theta_samples": summary("theta_sample"),
           "random": summary("random"), "paths": rows}
    print(json.dumps({k: doc[k] for k in ("theta_samples", "random")}))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
