"""Peak memory and step time of the DMaskingNAS supernet against a DARTS-style one (issue 14, item 4).

The claim (FBNetV2, Wan et al. 2020): a channel-masked supernet costs about the same with 4 or 32 width
options per layer, while a supernet that instantiates every width option as its own block grows with the count.

Both supernets search the widths of the same layers (a synthetic channel space: stem, then ``--layers``
``--block`` layers at ``--max-width`` channels, each offering K widths evenly spaced up to the maximum), in soft
mode (every option contributes), same batch and input, one weight+theta step = forward, CE, backward into the
weights and theta, SGD step:

* ``masked``: :class:`fbprof.search.dmasking.MaskedSupernet` -- one block per layer at the widest width, output
  times ``sum_i g_i mask_i``;
* ``darts``: every width option is its own block (input: the widest width of the layer before), outputs
  zero-padded to the widest and summed with weights ``g_i``.

Every (kind, K) runs in a fresh subprocess (so ``ru_maxrss`` is that configuration's own peak); the
configurations are interleaved over ``--repeats`` rounds. Reported per configuration (medians over rounds):

* ``peak_rss_mb``: the process's peak resident memory (``resource.getrusage(...).ru_maxrss``);
* ``step_rss_mb``: that peak minus the resident memory just before the first step (model built): what the
  steps themselves add (activations, gradients, optimizer state, allocator slack);
* ``saved_activations_mb``: bytes autograd saves for backward in one step (``saved_tensors_hooks``, unique
  storages) -- deterministic;
* ``step_ms``: median wall time of a step.

Usage: ``nice -n 10 python benchmarks/dmasking_memory.py --out results/benchmarks/dmasking_memory.json``
(writes the ``.md`` beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("masked", "darts")


def _space(k: int, args):
    from fbprof.space import decode_channel_space

    step = args.max_width // k
    widths = [step * (i + 1) for i in range(k)]
    data = {
        "schema": 1, "name": f"bench-k{k}", "kind": "channels", "resolutions": [args.resolution], "num_classes": 10,
        "stem": {"channels": [args.stem], "stride": 2, "block": "stem_hs"},
        "candidates": [args.block],
        "stages": [{"channels": widths, "repeats": args.layers, "stride": 1}],
        "head": {"channels": [args.head], "block": "ir_pool_e6_hs"}, "grid": {"points": 2},
    }
    return decode_channel_space(data, "<bench>", "<bench>", args.resolution)


def _child(kind: str, k: int, args) -> dict:
    """One configuration, in this (fresh) process."""
    import resource

    import torch
    from torch import nn

    from fbprof.build import build_op
    from fbprof.search.dmasking import MaskedSupernet
    from fbprof.search.supernet import MEMORY_FORMAT
    from fbprof.spec import OpSpec

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sp = _space(k, args)
    n_layers = len(sp.layers)

    class DartsSupernet(nn.Module):
        """Every width option of every layer as its own block; outputs zero-padded to the widest, weighted sum."""

        def __init__(self) -> None:
            super().__init__()
            R = sp.resolution
            sc = max(sp.stem_widths)
            self.stem = build_op(OpSpec(sp.stem_block, 3, R, R, sc, 2)).train()
            positions, (fh, fw), _ = sp._positions(R)
            cin = sc
            self.layers = nn.ModuleList()
            for layer, h, w, _ in positions:
                self.layers.append(nn.ModuleList(build_op(OpSpec(args.block, cin, h, w, c, layer.stride)).train()
                                                 for c in layer.widths))
                cin = max(layer.widths)
            self.head = build_op(OpSpec(sp.head_block, cin, fh, fw, args.head, 1)).train()
            self.fc = build_op(OpSpec("fc", args.head, 1, 1, 10, 1)).train()

        def forward(self, x, wt):
            x = self.stem(x)
            for li, ops in enumerate(self.layers):
                cmax = max(sp.layers[li].widths)
                x = sum(wt["width"][li, i] * nn.functional.pad(op(x), (0, 0, 0, 0, 0, cmax - c))
                        for i, (op, c) in enumerate(zip(ops, sp.layers[li].widths)))
            return self.fc(self.head(x))

    if kind == "masked":
        net = MaskedSupernet(sp, [c.candidates for c in sp.layers], args.head, sp.resolutions)
    else:
        net = DartsSupernet()
    net = net.to(memory_format=MEMORY_FORMAT).train()
    theta = {"res": torch.zeros(1, 1, requires_grad=True), "stem": torch.zeros(1, 1, requires_grad=True),
             "block": torch.zeros(n_layers, 1, requires_grad=True), "width": torch.zeros(n_layers, k, requires_grad=True)}
    opt_w = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    opt_t = torch.optim.Adam(list(theta.values()), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=gen).contiguous(memory_format=MEMORY_FORMAT)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    params = sum(p.numel() for p in net.parameters())

    def weights():
        g = -torch.log(-torch.log(torch.rand(n_layers, k, generator=gen).clamp(1e-10, 1 - 1e-7)))
        return {"res": torch.softmax(theta["res"], -1), "stem": torch.softmax(theta["stem"], -1),
                "block": torch.softmax(theta["block"], -1), "width": torch.softmax(theta["width"] + g, -1)}

    saved = {"bytes": 0, "ptrs": set()}

    def pack(t):
        try:
            ptr = t.untyped_storage().data_ptr()
        except Exception:  # noqa: BLE001
            ptr = id(t)
        if ptr not in saved["ptrs"]:
            saved["ptrs"].add(ptr)
            saved["bytes"] += t.untyped_storage().nbytes()
        return t

    def step(measure_saved: bool = False) -> float:
        t0 = time.perf_counter()
        wt = weights()
        if measure_saved:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = net(x, wt) if kind == "darts" else net(x, wt, None)
        else:
            out = net(x, wt) if kind == "darts" else net(x, wt, None)
        loss = nn.functional.cross_entropy(out, y)
        opt_w.zero_grad(set_to_none=True)
        opt_t.zero_grad(set_to_none=True)
        loss.backward()
        opt_w.step()
        opt_t.step()
        return time.perf_counter() - t0

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    before = rss_mb()
    step(measure_saved=True)
    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return {"kind": kind, "options": k, "params": params, "rss_before_steps_mb": round(before, 1),
            "peak_rss_mb": round(peak, 1), "step_rss_mb": round(peak - before, 1),
            "saved_activations_mb": round(saved["bytes"] / 2**20, 2), "step_ms": round(1000 * statistics.median(times), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--options", default="4,8,16,32", help="width options per layer (comma separated)")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--max-width", type=int, default=128)
    ap.add_argument("--block", default="k3_e4_hs")
    ap.add_argument("--stem", type=int, default=16)
    ap.add_argument("--head", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=16, help="input size (the stem halves it)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="rounds over every configuration (interleaved)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write JSON here (and a .md beside it)")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args)))
        return 0

    opts = [int(v) for v in args.options.split(",")]
    for k in opts:
        if args.max_width % k:
            ap.error(f"--max-width {args.max_width} is not a multiple of {k} options")
    passthrough = [f"--{n}={getattr(args, n.replace('-', '_'))}" for n in
                   ("layers", "max-width", "block", "stem", "head", "resolution", "batch", "steps", "warmup", "threads")]
    runs: dict[tuple[str, int], list[dict]] = {}
    t0 = time.time()
    for rnd in range(args.repeats):
        for k in opts:
            for kind in KINDS:
                p = subprocess.run([sys.executable, __file__, *passthrough, "--child", kind, str(k)],
                                   capture_output=True, text=True, check=False)
                if p.returncode != 0:
                    print(p.stderr, file=sys.stderr)
                    return 1
                r = json.loads(p.stdout.strip().splitlines()[-1])
                runs.setdefault((kind, k), []).append(r)
                print(f"round {rnd + 1}/{args.repeats} {kind:6s} K={k:2d}: peak {r['peak_rss_mb']:.0f} MB, "
                      f"step +{r['step_rss_mb']:.0f} MB, saved {r['saved_activations_mb']:.1f} MB, "
                      f"{r['step_ms']:.1f} ms", file=sys.stderr)
    rows = []
    for (kind, k), rs in runs.items():
        med = {f: statistics.median(r[f] for r in rs) for f in ("peak_rss_mb", "step_rss_mb", "saved_activations_mb", "step_ms")}
        rows.append({"kind": kind, "options": k, "params": rs[0]["params"], **med, "runs": rs})
    rows.sort(key=lambda r: (KINDS.index(r["kind"]), r["options"]))

    def ratio(kind: str, field: str) -> float:
        by = {r["options"]: r[field] for r in rows if r["kind"] == kind}
        return round(by[max(opts)] / by[min(opts)], 3) if by[min(opts)] else float("nan")

    fields = ("peak_rss_mb", "step_rss_mb", "saved_activations_mb", "step_ms")
    ratios = {kind: {f: ratio(kind, f) for f in fields} for kind in KINDS}
    doc = {
        "schema": 1,
        "benchmark": "dmasking_memory",
        "command": "python benchmarks/dmasking_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "wall_s": round(time.time() - t0, 1),
        "rows": rows,
        f"ratio_{max(opts)}_over_{min(opts)}": ratios,
    }
    print(json.dumps({k: v for k, v in doc.items() if k != "rows"}, indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        out.with_suffix(".md").write_text(_markdown(doc, rows, ratios, opts))
    return 0


def _markdown(doc, rows, ratios, opts) -> str:
    s = doc["settings"]
    lines = [
        "# DMaskingNAS supernet: memory and step time against a DARTS-style supernet",
        "",
        f"`{doc['command']}` ({doc['wall_s']} s; {doc['machine']['platform']}, {doc['machine']['cpus']} CPUs, "
        f"shared with other engineers' runs, `nice -n 10`).",
        "",
        f"Synthetic channel space: stem_hs {s['stem']} ch, {s['layers']} x `{s['block']}` layers with K widths evenly "
        f"spaced up to {s['max_width']} channels, ir_pool head {s['head']}; input {s['resolution']} px, batch "
        f"{s['batch']}, {s['threads']} thread; soft mode (every option contributes); a step = forward, CE, backward "
        f"into weights and theta, SGD + Adam. Medians over {s['repeats']} interleaved rounds, each configuration "
        f"in a fresh process ({s['steps']} timed steps after {s['warmup']} warm-up).",
        "",
        "| supernet | K | params | peak RSS MB | step RSS MB | saved activations MB | step ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['options']} | {r['params']:,} | {r['peak_rss_mb']:.0f} | {r['step_rss_mb']:.0f} | "
                     f"{r['saved_activations_mb']:.1f} | {r['step_ms']:.1f} |")
    lines += ["", f"Ratios K={max(opts)} / K={min(opts)} (goal for masked: <= 1.2 for memory and step time):", "",
              "| supernet | peak RSS | step RSS | saved activations | step time |", "|---|---|---|---|---|"]
    for kind in KINDS:
        r = ratios[kind]
        lines.append(f"| {kind} | {r['peak_rss_mb']} | {r['step_rss_mb']} | {r['saved_activations_mb']} | {r['step_ms']} |")
    lines += ["", "peak RSS: `ru_maxrss` of the configuration's own process (includes the Python + torch import, about "
              "the same for all); step RSS: peak minus the resident memory just before the first step; saved "
              "activations: bytes autograd keeps for backward in one step (unique storages, deterministic). Step "
              "times on a shared machine vary from round to round (every run is in the JSON, `rows[].runs`): read "
              "a masked ratio below 1 as 'no growth', not as a speed-up.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
