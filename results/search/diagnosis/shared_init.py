# prototype, later moved into fbprof/search/supernet.py
import torch
from torch import nn
from fbprof.build import InvertedResidual, ChannelShuffle

RELU_SHIFT = 3.0

def _shuffle_perm(c, g):
    # ChannelShuffle: new channel n = i*g + k comes from old channel k*(c//g) + i
    idx = torch.arange(c).reshape(g, c // g).t().reshape(-1)
    return idx  # new n reads old idx[n]

@torch.no_grad()
def shared_projection_init(ops, layer, gen):
    """Initialise every candidate of a shape-changing layer to the same linear function BN(P x) (strided)."""
    cin, cout = layer.cin, layer.cout
    groups = 1
    for op in ops:
        if isinstance(op, InvertedResidual):
            for m in op.body:
                if isinstance(m, ChannelShuffle): groups = max(groups, m.groups)
    P = torch.randn(cout, cin, generator=gen) / cin ** 0.5
    if groups > 1:
        # block-sparse: output group k only reads the input channels that reach mid group k through the shuffle (e1, g)
        perm = _shuffle_perm(cin, groups)
        keep = torch.zeros(cout, cin, dtype=torch.bool)
        for k in range(groups):
            keep[k * cout // groups:(k + 1) * cout // groups, perm[k * cin // groups:(k + 1) * cin // groups]] = True
        P = P * keep
    done = 0
    for op in ops:
        if isinstance(op, nn.Identity):
            continue
        body = list(op.body) if isinstance(op, InvertedResidual) else list(op)
        convs = [m for m in body if isinstance(m, nn.Conv2d)]
        bns = [m for m in body if isinstance(m, nn.BatchNorm2d)]
        shuffles = [m for m in body if isinstance(m, ChannelShuffle)]
        if len(convs) == 1:  # skip projection
            convs[0].weight.copy_(P.view(cout, cin, 1, 1)); done += 1; continue
        proj = convs[-1]; dw = convs[-2]; dw_bn = bns[-2]
        mid = dw.in_channels
        # channel map: which input channel (and sign) every mid channel carries
        if len(convs) == 3:
            exp = convs[0]
            if exp.groups != 1 or mid < 2 * cin or shuffles:
                continue
            w = torch.randn(exp.weight.shape, generator=gen) * 0.1 * (2.0 / mid) ** 0.5
            src = torch.full((mid,), -1, dtype=torch.long); sign = torch.zeros(mid)
            for c in range(cin):
                w[c].zero_(); w[c, c] = 1.0; src[c] = c; sign[c] = 1.0
                w[cin + c].zero_(); w[cin + c, c] = -1.0; src[cin + c] = c; sign[cin + c] = -1.0
            exp.weight.copy_(w)
        else:
            src = torch.arange(mid); sign = torch.ones(mid)
            if shuffles:
                src = _shuffle_perm(mid, shuffles[0].groups)
        k = dw.kernel_size[0]
        dw.weight.zero_(); dw.weight[:, 0, k // 2, k // 2] = 1.0
        dw_bn.bias.fill_(RELU_SHIFT)
        g = proj.groups
        W = torch.zeros(cout, mid // g)
        for o in range(cout):
            grp = o // (cout // g)
            for j in range(mid // g):
                n = grp * (mid // g) + j
                if src[n] >= 0:
                    W[o, j] = sign[n] * P[o, src[n]]
        proj.weight.copy_(W.view(cout, mid // g, 1, 1))
        done += 1
    return done

@torch.no_grad()
def init_supernet(net, layers, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for layer, ops in zip(layers, net.choices):
        if not (layer.cin == layer.cout and layer.stride == 1):
            shared_projection_init(ops, layer, gen)
