"""Cost of one supernet training step against one child-network training step (issue 5, item 3).

Same space, proxy resolution, batch and machine, in one run. For each of N architectures sampled by
the supernet's own Gumbel-softmax (hard mode), the script times, interleaved:

* the child network of that architecture (plain ``build_op`` modules): forward, CE, backward, SGD step;
* the supernet's weight step in hard mode (sample, run the sampled candidates, backward, SGD step);
* the supernet's architecture step in hard mode, as the search does it by default (``--estimator rloo``:
  ``--theta-paths`` sampled paths run forward without gradients on the same batch, the score-function
  surrogate with a leave-one-out baseline, Adam step), and the straight-through step (one sample, latency term,
  backward into theta through the activations, Adam step);
* the same two steps in soft mode (every candidate runs, weighted sum), on fewer steps (they are slow).

It prints the medians and the ratios supernet / child (goal: <= 2.0 for the default hard mode) and,
with ``--out``, writes them as JSON. Timings need a quiet machine: run it under the project's
exclusive lock, e.g. ``flock -x /tmp/fbprof-cpu.lock .venv/bin/python benchmarks/supernet_step.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lut", default="luts/local-cpu-onnxruntime.csv", help="LUT for the latency term (values do not change timing)")
    ap.add_argument("--space", default=None)
    ap.add_argument("--resolution", type=int, default=32)
    from fbprof.search.dnas import SearchConfig  # torch-free: the search's defaults, in one place

    ap.add_argument("--min-feature", type=int, default=SearchConfig.min_feature)
    ap.add_argument("--batch", type=int, default=SearchConfig.batch_size)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per kind (hard mode and child)")
    ap.add_argument("--soft-steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--theta-paths", type=int, default=4, help="paths per rloo architecture step (the search's default)")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    import torch
    from torch import nn

    from fbprof.lut.table import read_lut
    from fbprof.search.dnas import SearchConfig, path_log_prob, resolve_lut_space, rloo_step
    from fbprof.search.loss import fbnet_loss, relaxed_latency
    from fbprof.search.supernet import MEMORY_FORMAT, Supernet, build_child, latency_table, proxy_space, sample_gumbel

    lut = read_lut(args.lut)
    space = resolve_lut_space(lut, args.space, None, None)
    head = space.head_channels[0]
    lat, mask, fixed, _ = latency_table(space, lut, head)
    classes = 10
    plan = proxy_space(space, args.resolution, classes, args.min_feature)
    torch.manual_seed(args.seed)
    net = Supernet(plan.space, head).to(memory_format=MEMORY_FORMAT)  # as the search trains it
    theta = torch.zeros(lat.shape, requires_grad=True)
    opt_w = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt_t = torch.optim.Adam([theta], lr=0.01)
    ce_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, space.in_channels, args.resolution, args.resolution, generator=gen).contiguous(memory_format=MEMORY_FORMAT)
    y = torch.randint(0, classes, (args.batch,), generator=gen)
    tau = 5.0

    def child_step(child, opt) -> float:
        t0 = time.perf_counter()
        loss = ce_fn(child(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    def w_step(hard: bool, g) -> tuple[float, list[int]]:
        t0 = time.perf_counter()
        with torch.no_grad():
            m, index = sample_gumbel(theta, mask, tau, hard, g)
        loss = ce_fn(net(x, index=index) if hard else net(x, weights=m), y)
        opt_w.zero_grad(set_to_none=True)
        loss.backward()
        opt_w.step()
        return time.perf_counter() - t0, index

    params = list(net.parameters())

    def theta_step(hard: bool, g) -> float:
        for p in params:
            p.requires_grad_(False)
        t0 = time.perf_counter()
        m, index = sample_gumbel(theta, mask, tau, hard, g)
        logits = net(x, weights=m, index=index) if hard else net(x, weights=m)
        loss = fbnet_loss(ce_fn(logits, y), relaxed_latency(m, lat, fixed))
        opt_t.zero_grad(set_to_none=True)
        loss.backward()
        opt_t.step()
        dt = time.perf_counter() - t0
        for p in params:
            p.requires_grad_(True)
        return dt

    cfg = SearchConfig(lut=args.lut, theta_paths=args.theta_paths)

    def theta_step_rloo(g) -> float:
        t0 = time.perf_counter()
        loss = rloo_step(cfg, lambda: sample_gumbel(theta, mask, tau, True, g),
                         lambda m, index: (ce_fn(net(x, index=index), y), relaxed_latency(m, lat, fixed)),
                         lambda index: path_log_prob(theta, mask, index), None, None)[0]
        opt_t.zero_grad(set_to_none=True)
        loss.backward()
        opt_t.step()
        return time.perf_counter() - t0

    def blocks_of(index: list[int]) -> list[str]:
        return [layer.candidates[i] for layer, i in zip(plan.space.layers, index)]

    def make_child(index):
        child = build_child(plan.space, blocks_of(index), head).to(memory_format=MEMORY_FORMAT)
        return child, torch.optim.SGD(child.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    # warm-up (allocator, kernels)
    g_w = torch.Generator().manual_seed(args.seed + 1)
    for _ in range(args.warmup):
        _, idx = w_step(True, g_w)
        theta_step(True, g_w)
        theta_step_rloo(g_w)
        c, o = make_child(idx)
        child_step(c, o)

    t_child, t_hw, t_ht, t_hst = [], [], [], []
    g_hard = torch.Generator().manual_seed(args.seed + 2)
    g_theta = torch.Generator().manual_seed(args.seed + 3)
    for _ in range(args.steps):
        dt, idx = w_step(True, g_hard)  # the supernet samples the architecture ...
        t_hw.append(dt)
        c, o = make_child(idx)  # ... and its child network runs the same step (construction not timed)
        child_step(c, o)  # first call of a fresh module: untimed warm-up
        t_child.append(child_step(c, o))
        t_ht.append(theta_step_rloo(g_theta))
        t_hst.append(theta_step(True, g_theta))
    t_sw, t_st = [], []
    g_soft = torch.Generator().manual_seed(args.seed + 4)
    for _ in range(args.soft_steps + 1):
        t_sw.append(w_step(False, g_soft)[0])
        t_st.append(theta_step(False, g_soft))
    t_sw, t_st = t_sw[1:], t_st[1:]  # first soft step: warm-up

    med = {k: statistics.median(v) for k, v in
           {"child": t_child, "hard_w": t_hw, "hard_theta": t_ht, "hard_theta_straight_through": t_hst, "soft_w": t_sw,
            "soft_theta": t_st}.items()}
    ratios = {k: med[k] / med["child"] for k in ("hard_w", "hard_theta", "hard_theta_straight_through", "soft_w",
                                                  "soft_theta")}
    ratios["hard_epoch"] = (0.8 * med["hard_w"] + 0.2 * med["hard_theta"]) / med["child"]
    ratios["soft_epoch"] = (0.8 * med["soft_w"] + 0.2 * med["soft_theta"]) / med["child"]
    print(f"space {space.name}@{space.resolution} (LUT {args.lut}), proxy {args.resolution}px "
          f"(final {plan.space.final_hw[0]}x{plan.space.final_hw[1]}, strides dropped: {', '.join(plan.dropped) or 'none'}), "
          f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'step':<34}{'median ms':>10}{'ratio':>8}   n")
    rows = [("child network (SGD step)", "child", t_child), ("supernet hard, weights (SGD)", "hard_w", t_hw),
            (f"supernet hard, theta rloo x{cfg.theta_paths}", "hard_theta", t_ht),
            ("supernet hard, theta straight-thr.", "hard_theta_straight_through", t_hst), ("supernet soft, weights (SGD)", "soft_w", t_sw),
            ("supernet soft, theta (Adam)", "soft_theta", t_st)]
    for label, k, v in rows:
        r = "" if k == "child" else f"{ratios[k]:.2f}"
        print(f"{label:<34}{med[k] * 1000:>10.1f}{r:>8}   {len(v)}")
    print(f"ratio of a search step (80% weight steps + 20% theta steps) to a child step: "
          f"hard {ratios['hard_epoch']:.2f} (goal <= 2.0), soft {ratios['soft_epoch']:.2f}")
    verdict = "MET" if ratios["hard_w"] <= 2.0 and ratios["hard_theta"] <= 2.0 else "NOT MET"
    print(f"goal hard-mode supernet step <= 2.0 x child step: {verdict}")
    if args.out:
        from fbprof.fileio import atomic_write_text

        doc = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "space": f"{space.name}@{space.resolution}", "proxy_resolution": args.resolution,
               "final_feature": list(plan.space.final_hw), "batch": args.batch, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "machine": platform.platform(), "median_s": med,
               "ratios": ratios, "theta_paths": cfg.theta_paths,
               "samples": {"child": t_child, "hard_w": t_hw, "hard_theta": t_ht, "hard_theta_straight_through": t_hst, "soft_w": t_sw,
                                             "soft_theta": t_st}}
        atomic_write_text(Path(args.out), json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
