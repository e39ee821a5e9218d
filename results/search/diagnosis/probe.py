import time, torch, sys, argparse
from torch import nn
from fbprof.lut.table import read_lut
from fbprof.search.dnas import resolve_lut_space
from fbprof.search.supernet import Supernet, latency_table, proxy_space, sample_gumbel
from fbprof.search.data import load_data
ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float, default=0.05); ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--bs", type=int, default=32); ap.add_argument("--cl", type=int, default=1)
ap.add_argument("--threads", type=int, default=1); ap.add_argument("--wd", type=float, default=1e-4)
ap.add_argument("--nesterov", type=int, default=0); ap.add_argument("--clip", type=float, default=0)
ap.add_argument("--fcstd", type=float, default=0.01); ap.add_argument("--warm", type=int, default=0)
ap.add_argument("--data", default="digits"); ap.add_argument("--fix", default="none"); ap.add_argument("--align", type=int, default=0); ap.add_argument("--unlock", type=int, default=0); ap.add_argument("--ref", default="skip"); ap.add_argument("--shared", type=int, default=0); ap.add_argument("--accum", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(a.threads)
lut = read_lut("luts/local-cpu-onnxruntime.csv")
space = resolve_lut_space(lut, None, None, None)
head = space.head_channels[0]
lat, mask, fixed, _ = latency_table(space, lut, head)
data = load_data(a.data, 32, 3, limit_per_class=500)
plan = proxy_space(space, 32, 10)
torch.manual_seed(0)
net = Supernet(plan.space, head)
nn.init.normal_(net.fc.weight, 0, a.fcstd)
mf = torch.channels_last if a.cl else torch.contiguous_format
net = net.to(memory_format=mf)
if a.shared:
    sys.path.insert(0, "/tmp/w11"); from shared_init import init_supernet; init_supernet(net, plan.space.layers)
if a.align:
    sys.path.insert(0, "/tmp/w11"); import align as AL; from align import align
    AL.REF = lambda layer: list(layer.candidates).index(a.ref) if a.ref in layer.candidates else 0
    align(net, plan.space.layers, data.x_train[:a.align].contiguous(memory_format=mf))

theta = torch.zeros(lat.shape)
opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.wd, nesterov=bool(a.nesterov))
g = torch.Generator().manual_seed(0)
ce_fn = nn.CrossEntropyLoss()
t0 = time.time(); ces=[]
import math
for s in range(a.steps):
    lr = a.lr * min(1, (s+1)/a.warm if a.warm else 1) * 0.5*(1+math.cos(math.pi*s/a.steps))
    for gr in opt.param_groups: gr["lr"] = lr
    b = torch.randint(0, len(data.y_train), (a.bs,), generator=g)
    _, idx = sample_gumbel(theta, mask, 5.0, True, g)
    if a.accum > 1:
        if s % a.accum == 0:
            perms = [torch.randperm(9, generator=g).tolist() for _ in idx]
        idx = [p[s % a.accum] for p in perms]
    if a.fix == "all": idx = [2]*len(idx)
    if a.fix.startswith("only"):
        keep = [int(v) for v in a.fix[4:].split(",")]
        idx = [i if li in keep else (2 if not (l.cin==l.cout and l.stride==1) else 8) for li, (l, i) in enumerate(zip(plan.space.layers, idx))]
    if a.fix == "nonres" or s < a.unlock: idx = [2 if not (l.cin==l.cout and l.stride==1) else i for l, i in zip(plan.space.layers, idx)]
    loss = ce_fn(net(data.x_train[b].contiguous(memory_format=mf), index=idx), data.y_train[b])
    (loss / a.accum).backward()
    if a.clip: nn.utils.clip_grad_norm_(net.parameters(), a.clip)
    if (s + 1) % a.accum == 0:
        opt.step(); opt.zero_grad(set_to_none=True)
    ces.append(loss.item())
    if (s+1) % 25 == 0: print(s+1, f"{sum(ces[-25:])/25:.3f}", f"{(time.time()-t0)/(s+1)*1000:.0f} ms/step", flush=True)
# eval 3 random paths with BN recal
for k in range(2):
    _, idx = sample_gumbel(theta, mask, 5.0, True, g)
    if a.fix == "all": idx = [2]*len(idx)
    if a.fix == "nonres": idx = [2 if not (l.cin==l.cout and l.stride==1) else i for l, i in zip(plan.space.layers, idx)]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns: m.reset_running_stats(); m.momentum=None
    net.train()
    with torch.no_grad():
        for i in range(0, 512, 64): net(data.x_train[i:i+64].contiguous(memory_format=mf), index=idx)
    net.eval()
    with torch.no_grad():
        acc = (net(data.x_test.contiguous(memory_format=mf), index=idx).argmax(1) == data.y_test).float().mean()
    print("path", k, "acc", float(acc))
