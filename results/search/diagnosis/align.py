import torch
from torch import nn
from fbprof.build import InvertedResidual

REF = lambda layer: list(layer.candidates).index("skip") if "skip" in layer.candidates else 0
def _last_conv(mod):
    body = mod.body if isinstance(mod, InvertedResidual) else mod
    mods = list(body)
    # [..., conv, bn]
    assert isinstance(mods[-1], nn.BatchNorm2d) and isinstance(mods[-2], nn.Conv2d)
    return nn.Sequential(*mods[:-2]), mods[-2]

@torch.no_grad()
def align(net, layers, x, ridge=1e-1, verbose=False):
    net.train()
    x = net.stem(x)
    for layer, ops in zip(layers, net.choices):
        shape_changing = not (layer.cin == layer.cout and layer.stride == 1)
        ref = REF(layer)
        if shape_changing:
            pre_r, conv_r = _last_conv(ops[ref])
            z = conv_r(pre_r(x))  # N, cout, h, w
            Z = z.permute(1, 0, 2, 3).reshape(z.shape[1], -1)
            for i, op in enumerate(ops):
                if i == ref: continue
                pre, conv = _last_conv(op)
                h = pre(x)
                H = h.permute(1, 0, 2, 3).reshape(h.shape[1], -1)
                g = conv.groups; mid = H.shape[0]; co = Z.shape[0]
                W = torch.zeros_like(conv.weight)
                for k in range(g):
                    Hk = H[k*mid//g:(k+1)*mid//g]; Zk = Z[k*co//g:(k+1)*co//g]
                    A = Hk @ Hk.T
                    A += ridge * A.diagonal().mean() * torch.eye(A.shape[0])
                    Wk = torch.linalg.solve(A, Hk @ Zk.T).T
                    W[k*co//g:(k+1)*co//g] = Wk.reshape(W[k*co//g:(k+1)*co//g].shape)
                conv.weight.copy_(W)
                zi = conv(h); Zi = zi.permute(1,0,2,3).reshape(zi.shape[1], -1)
                r2 = 1 - ((Zi-Z)**2).sum()/((Z - Z.mean(1, keepdim=True))**2).sum()
                if verbose: print(layer.cin, layer.cout, layer.candidates[i], f'R2 {float(r2):.3f}')
        x = ops[ref](x)
