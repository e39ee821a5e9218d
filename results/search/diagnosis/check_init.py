import torch
from torch import nn
from fbprof.lut.table import read_lut
from fbprof.search.dnas import resolve_lut_space
from fbprof.search.supernet import Supernet, proxy_space, shape_changing
lut = read_lut("luts/local-cpu-onnxruntime.csv")
space = resolve_lut_space(lut, None, None, None)
plan = proxy_space(space, 32, 10)
net = Supernet(plan.space, space.head_channels[0]).train()
print("shared-init candidates", net.shared_init)
x = torch.randn(64, 3, 32, 32)
with torch.no_grad():
    h = net.stem(x)
    for layer, ops in zip(plan.space.layers, net.choices):
        if shape_changing(layer):
            outs = [op(h) for op in ops]
            ref = outs[-1]
            print(layer.name, " ".join(f"{c}:{float(torch.corrcoef(torch.stack([o.flatten(), ref.flatten()]))[0,1]):.3f}" for c, o in zip(layer.candidates, outs)))
        h = ops[-1](h)
