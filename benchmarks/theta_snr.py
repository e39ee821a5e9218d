"""Why theta barely moves (issue 11): the signal-to-noise ratio of the architecture gradient, from a search's
checkpoint. A diagnostic whose output is quoted in results/search/ISSUE11.md; not a test.

For K batches of the architecture split, with the checkpoint's supernet weights and theta at its last tau:
the gradient of theta from the CE part of FBNet's loss ``CE * alpha * log(LAT)^beta`` (the latency factor
detached), from the latency part (CE detached), and the score-function (REINFORCE) estimate of the CE part
with a mean baseline, per (layer, candidate) entry. Reported per part: the median over entries of
|mean| / std of one step (``median_per_step_snr``: below ~0.1, one step is mostly noise), the same for the
mean of K steps, and the mean |mean| (how strong the part is; ``ratio_latency_to_ce_mean_abs`` compares them).

    python benchmarks/theta_snr.py RUN_DIR [K] [hard|soft]
"""
import json, sys, math
from pathlib import Path
import torch
from fbprof.lut.table import read_lut
from fbprof.search.dnas import SearchConfig, resolve_lut_space, load_checkpoint
from fbprof.search.data import load_data, stratified_split
from fbprof.search.loss import relaxed_latency, fbnet_loss
from fbprof.search.supernet import Supernet, latency_table, proxy_space, sample_gumbel, to_device, MEMORY_FORMAT

run = Path(sys.argv[1]); K = int(sys.argv[2]) if len(sys.argv) > 2 else 64
hard = not (len(sys.argv) > 3 and sys.argv[3] == "soft")
state, meta = load_checkpoint(run / "checkpoint.pt")
c = meta["config"]
cfg = SearchConfig(**{k: v for k, v in c.items() if k in SearchConfig.__dataclass_fields__})
torch.manual_seed(0); torch.set_num_threads(2)
lut = read_lut(cfg.lut)
sp = resolve_lut_space(lut, cfg.space, cfg.lut_resolution, cfg.width)
head = sp.head_channels[0]
lat, mask, fixed_us, _ = latency_table(sp, lut, head)
data = load_data(cfg.data, cfg.resolution, sp.in_channels, cfg.test_fraction, limit_per_class=cfg.limit_per_class)
plan = proxy_space(sp, cfg.resolution, data.num_classes, cfg.min_feature)
w_idx, t_idx = stratified_split(data.y_train, 0.2, cfg.seed)
net = Supernet(plan.space, head, shared_init=cfg.shared_init, seed=cfg.seed).to(memory_format=MEMORY_FORMAT)
net.load_state_dict(state["supernet"]); net.train()
for p in net.parameters(): p.requires_grad_(False)
theta0 = state["theta"].clone()
tau = meta["history"][-1]["tau"]
g = torch.Generator().manual_seed(1)
perm = t_idx[torch.randperm(len(t_idx), generator=g)]
ce_fn = torch.nn.CrossEntropyLoss()
G_ce, G_lat, G_rf, ces = [], [], [], []
logp_all = []
for k in range(K):
    b = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
    x, y = to_device(data.x_train[b], "cpu"), data.y_train[b]
    theta = theta0.clone().requires_grad_(True)
    m, index = sample_gumbel(theta, mask, tau, hard, g)
    ce = ce_fn(net(x, weights=m, index=index) if hard else net(x, weights=m), y)
    lat_us = relaxed_latency(m, lat, fixed_us)
    fac = cfg.alpha * torch.log(lat_us.clamp_min(1.001)) ** cfg.beta
    gc, = torch.autograd.grad(ce * fac.detach(), theta, retain_graph=True)
    gl, = torch.autograd.grad(ce.detach() * fac, theta)
    th = theta0.clone().requires_grad_(True)
    lp = torch.log_softmax(th.masked_fill(~mask, float("-inf")), -1)
    sel = lp[torch.arange(len(index)), torch.tensor(index)].sum()
    gs, = torch.autograd.grad(sel, th)
    G_ce.append(gc); G_lat.append(gl); G_rf.append(gs); ces.append(float(ce.detach()) * float(fac.detach()))
base = sum(ces) / K
G_rf = [(cv - base) * gs for cv, gs in zip(ces, G_rf)]
def snr(G):
    s = torch.stack(G); mu = s.mean(0); sd = s.std(0) + 1e-12
    r = (mu.abs() / (sd / math.sqrt(K)))[mask]
    per_step = (mu.abs() / sd)[mask]
    return {"median_snr_over_K": round(float(r.median()), 3), "median_per_step_snr": round(float(per_step.median()), 4),
            "mean_abs_mean": float(mu[mask].abs().mean()), "mean_std": float(sd[mask].mean())}
out = {"run": str(run), "mode": "hard" if hard else "soft", "K": K, "tau": tau, "epoch_done": meta["epoch_done"],
       "ce_part": snr(G_ce), "latency_part": snr(G_lat), "reinforce_ce": snr(G_rf),
       "ratio_latency_to_ce_mean_abs": float(torch.stack(G_lat).mean(0)[mask].abs().mean() / torch.stack(G_ce).mean(0)[mask].abs().mean())}
print(json.dumps(out, indent=1))
