"""The FBNet supernet, built from the same space data and block builders as the profiler.

Two resolutions are in play:

* the **LUT space** -- the space at the LUT's resolution and width. Latencies are read from it:
  ``LUT(l, i)`` is the LUT row of ``space.layers[l].spec(candidate_i)`` (an identity skip costs 0).
* the **proxy space** -- the same space data resolved at the proxy training resolution (e.g. 32 px
  digits). Its layers correspond one to one with the LUT space's (same stages, repeats, channels and
  candidates); only the spatial sizes differ, and strides may be adapted (rule below). Every
  candidate is ``build_op(proxy_layer.spec(candidate))`` -- the very modules the profiler measures.

**Stride adaptation rule.** Strides are listed in network order: the stem's, then the first
layer's of every stage. With the proxy resolution R, the final feature map is R reduced by every
stride (``ceil(size / stride)`` per strided conv). While it is smaller than ``min_feature``
(2 here; the search's default is 4, ``SearchConfig.min_feature``), the *latest* remaining stride > 1 is set to 1 (the stem's last of all). Latest first
keeps the early, high-resolution layers as cheap as in the real network and spends the spatial
extent where channels are many. At R = 32 the FBNet space (strides 2, 2, 2, 2, 2 for stem and
stages 2, 3, 4, 6) drops the stride of stage 6 and ends at 2x2 (with ``min_feature`` 4 it also drops
stage 4's and ends at 4x4: 1.4-1.6x the wall time per CIFAR-10 epoch, measured); at R >= 64 nothing changes,
and at R equal to the LUT's the proxy network has exactly the LUT's shapes. The adapted strides only
shape the proxy network; latencies always come from the LUT space.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import torch
from torch import nn

from fbprof.errors import InputError
from fbprof.lut.calibration import LinearCalibration
from fbprof.lut.table import Lut
from fbprof.build import ChannelShuffle, InvertedResidual, build_op
from fbprof.space import ChannelArch, Space, decode_space

__all__ = [
    "ProxyPlan", "proxy_space", "adapt_strides", "trainable", "latency_table",
    "Supernet", "ChildNet", "build_child", "sample_gumbel", "shared_function_init", "shape_changing",
    "MEMORY_FORMAT", "to_device",
]

#: training runs in channels-last memory format: PyTorch's CPU depthwise-conv backward is 2-4x faster in it
#: (measured: 5x5 depthwise, 96 channels at 16x16, batch 32: 115 ms NCHW, 29 ms channels-last)
MEMORY_FORMAT = torch.channels_last
#: bias of the depthwise BatchNorm in the shared-function initialisation: ReLU(N(0, 1) + 3) is linear for 99.9%
RELU_SHIFT = 3.0


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """A batch of images on ``device`` in the training memory format."""
    return x.to(device).contiguous(memory_format=MEMORY_FORMAT)


@dataclass(frozen=True)
class ProxyPlan:
    space: Space
    dropped: tuple[str, ...]  # e.g. ("stage 6", "stage 4"): strides set to 1 by the adaptation rule


def _out(size: int, stride: int) -> int:
    return -(-size // stride)


def adapt_strides(data: dict, resolution: int, min_feature: int = 2) -> tuple[dict, list[str]]:
    """A copy of the space data whose strides leave a final feature map of at least ``min_feature``."""
    d = json.loads(json.dumps(data))  # plain dicts/lists, a deep copy
    stem = d.setdefault("stem", {})
    stages = d.get("stages") or []
    slots: list[tuple[str, dict]] = [("stem", stem)] + [(f"stage {i}", st) for i, st in enumerate(stages, 1)]

    def stride(s: dict, is_stem: bool) -> int:
        return int(s.get("stride", 2 if is_stem else 1))

    def final() -> int:
        size = resolution
        for name, s in slots:
            size = _out(size, stride(s, name == "stem"))
        return size

    dropped: list[str] = []
    while final() < min_feature:
        strided = [(name, s) for name, s in slots if stride(s, name == "stem") > 1]
        if not strided:
            break
        name, s = strided[-1]
        s["stride"] = 1
        dropped.append(name)
    return d, dropped


def proxy_space(lut_space: Space, resolution: int, num_classes: int, min_feature: int = 2) -> ProxyPlan:
    """The LUT space re-resolved at the proxy ``resolution`` with ``num_classes`` outputs."""
    if resolution < 8:
        raise InputError(f"proxy resolution {resolution} is too small (at least 8)")
    data, dropped = adapt_strides(copy.deepcopy(dict(lut_space.raw)), resolution, min_feature)
    data["num_classes"] = num_classes
    data["resolution"] = resolution
    proxy = decode_space(data, f"{lut_space.source} (proxy at {resolution}px)", lut_space.source, resolution,
                         lut_space.width)
    if len(proxy.layers) != len(lut_space.layers) or any(
        a.candidates != b.candidates or a.cout != b.cout for a, b in zip(proxy.layers, lut_space.layers)
    ):  # pragma: no cover - same data, only strides/resolution differ
        raise InputError("the proxy space does not match the LUT space layer for layer")
    return ProxyPlan(proxy, tuple(dropped))


# --------------------------------------------------------------------------------------------------
def trainable(module: nn.Module) -> nn.Module:
    """Prepare a ``build_op`` module for training: zero the scale of the last BatchNorm of every residual block (each starts as an identity, as in Goyal et
    al. 2017: 22 layers trained from scratch for a few epochs diverge without it) and set train mode."""
    for m in module.modules():
        if isinstance(m, InvertedResidual) and m.residual:
            last_bn = [x for x in m.body if isinstance(x, nn.BatchNorm2d)][-1]
            nn.init.zeros_(last_bn.weight)
    return module.train()


def latency_table(lut_space: Space, lut: Lut, head_channels: int,
                  calibration: LinearCalibration | None = None) -> tuple[torch.Tensor, torch.Tensor, float, list[list[str]]]:
    """(lat, mask, fixed_us, keys): ``lat[l, i]`` = LUT(l, i) in µs (identity 0, padding 0), ``mask`` marks real
    candidates, ``fixed_us`` the stem + head + pool + FC, ``keys`` the LUT key per candidate ("identity" for 0).
    With ``calibration`` (the LUT's, :func:`fbprof.lut.calibration.calibration_of`) every cost is the op's share
    of the calibrated latency (:meth:`LinearCalibration.op_us`) and ``fixed_us`` includes the intercept, so that
    ``fixed_us + sum of the chosen lat`` is the calibrated prediction of that architecture."""

    def cost(part: str, spec) -> float:
        raw = lut.latency_us(spec)
        return raw if calibration is None or spec.is_identity else calibration.op_us(part, spec, lut_space, raw)

    n = max(len(layer.candidates) for layer in lut_space.layers)
    lat = torch.zeros(len(lut_space.layers), n, dtype=torch.float64)
    mask = torch.zeros(len(lut_space.layers), n, dtype=torch.bool)
    keys: list[list[str]] = []
    for li, layer in enumerate(lut_space.layers):
        row = []
        for ci, cand in enumerate(layer.candidates):
            spec = layer.spec(cand)
            lat[li, ci] = cost(f"s{layer.stage}", spec)
            mask[li, ci] = True
            row.append("identity" if spec.is_identity else spec.key)
        keys.append(row)
    fixed = cost("stem", lut_space.stem) + sum(cost("tail", s) for _, s in lut_space.tail_specs(head_channels))
    if calibration is not None:
        fixed += calibration.intercept_us
    return lat.float(), mask, float(fixed), keys


def sample_gumbel(theta: torch.Tensor, mask: torch.Tensor, tau: float, hard: bool,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[int]]:
    """Gumbel-softmax weights ``m`` (layers x candidates) and the sampled index per layer.

    ``m = softmax((theta + g) / tau)`` with ``g ~ Gumbel(0, 1)``. ``hard``: the forward value is the
    one-hot of ``argmax(theta + g)`` (a sample of softmax(theta), whatever tau) and the gradient is
    the soft one (straight-through).
    """
    u = torch.rand(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    logits = ((theta + g) / tau).masked_fill(~mask, float("-inf"))
    soft = torch.softmax(logits, dim=-1)
    index = torch.argmax(logits, dim=-1)
    if hard:
        one_hot = torch.zeros_like(soft).scatter_(-1, index.unsqueeze(-1), 1.0)
        m = one_hot - soft.detach() + soft
    else:
        m = soft
    return m, index.tolist()


def shape_changing(layer) -> bool:
    """A layer whose candidates have no identity path (stride or channel change: the first layer of a stage)."""
    return any(not (layer.spec(c).has_residual or layer.spec(c).is_identity) for c in layer.candidates)


def _shuffle_source(c: int, g: int) -> torch.Tensor:
    """``src[n]``: the input channel that :class:`ChannelShuffle` (g groups, c channels) puts at channel n."""
    return torch.arange(c).reshape(g, c // g).t().reshape(-1)


@torch.no_grad()
def shared_function_init(ops: nn.ModuleList, layer, generator: torch.Generator) -> int:
    """Initialise every candidate of a shape-changing layer to compute the same function, ``BN(P x)`` (strided).

    Why: in a layer with a residual, every candidate starts as the identity (zero last-BN scale), so the
    layers after it see the same features whichever candidate a step samples. A layer that changes shape
    has no identity path: with independent random weights its 9 candidates are 9 unrelated random
    projections, and the FBNet space has 6 such layers, so the shared layers after them would see 9^6
    unrelated encodings of the input. Measured (digits, 32 px, hard mode, uniform sampling): CE stays at
    chance (>= 2.3) after 150 steps at any learning rate from 0.005 to 0.05, while with those 6 layers
    fixed it reaches 0.26 in 75 steps. Here every candidate starts as the same random projection P:

    * skip (1x1 conv + BN): conv = P;
    * inverted residual with expansion (groups 1, at least 2x): the expansion carries +x and -x into the
      first 2*cin channels (the rest small random), the depthwise kernel is a centred delta (the stride
      picks the same pixels as the 1x1 skip), the depthwise BN's bias is +3 so its ReLU passes
      everything, and the projection reads P(x+ - x-) = P x;
    * without expansion (e1, also with groups and a channel shuffle): depthwise delta, BN bias +3, the
      projection reads P through the shuffle; with groups, P is block-sparse so that every candidate can
      represent it.

    Candidates of any other structure keep their own initialisation. Returns how many were set.
    """
    cin, cout = layer.cin, layer.cout
    groups = 1
    for op in ops:
        for m in op.modules():
            if isinstance(m, ChannelShuffle):
                groups = max(groups, m.groups)
    if cin % groups or cout % groups:
        groups = 1
    P = torch.randn(cout, cin, generator=generator) / cin ** 0.5
    if groups > 1:  # output group k reads only the input channels the shuffle puts into mid group k
        src = _shuffle_source(cin, groups)
        keep = torch.zeros(cout, cin, dtype=torch.bool)
        for k in range(groups):
            keep[k * cout // groups:(k + 1) * cout // groups, src[k * cin // groups:(k + 1) * cin // groups]] = True
        P = P * keep
    done = 0
    for op in ops:
        body = list(op.body) if isinstance(op, InvertedResidual) else list(op) if isinstance(op, nn.Sequential) else []
        convs = [m for m in body if isinstance(m, nn.Conv2d)]
        bns = [m for m in body if isinstance(m, nn.BatchNorm2d)]
        shuffles = [m for m in body if isinstance(m, ChannelShuffle)]
        if not convs:
            continue  # identity
        if len(convs) == 1:  # the skip's 1x1 projection
            if convs[0].groups == 1 and convs[0].weight.shape[1] == cin:
                convs[0].weight.copy_(P.view(cout, cin, 1, 1))
                done += 1
            continue
        if not isinstance(op, InvertedResidual) or op.residual or len(bns) != len(convs):
            continue
        proj, dw, dw_bn = convs[-1], convs[-2], bns[-2]
        mid = dw.in_channels
        if len(convs) == 3:
            exp = convs[0]
            if exp.groups != 1 or shuffles or mid < 2 * cin:
                continue
            w = torch.randn(exp.weight.shape, generator=generator) * 0.1 * (2.0 / mid) ** 0.5
            w[:2 * cin].zero_()
            ar = torch.arange(cin)
            w[ar, ar, 0, 0] = 1.0
            w[cin + ar, ar, 0, 0] = -1.0
            exp.weight.copy_(w)
            src = torch.full((mid,), -1, dtype=torch.long)
            src[:cin], src[cin:2 * cin] = ar, ar
            sign = torch.zeros(mid)
            sign[:cin], sign[cin:2 * cin] = 1.0, -1.0
        elif len(convs) == 2 and mid == cin:
            src = _shuffle_source(mid, shuffles[0].groups) if shuffles else torch.arange(mid)
            sign = torch.ones(mid)
        else:
            continue
        g = proj.groups
        if g > 1 and g != groups:
            continue
        k = dw.kernel_size[0]
        dw.weight.zero_()
        dw.weight[:, 0, k // 2, k // 2] = 1.0
        dw_bn.bias.fill_(RELU_SHIFT)
        full = sign[None, :] * P[:, src.clamp_min(0)] * (src >= 0)[None, :]  # cout x mid
        per = mid // g
        W = torch.stack([full[o, (o // (cout // g)) * per:(o // (cout // g) + 1) * per] for o in range(cout)])
        proj.weight.copy_(W.view(cout, per, 1, 1))
        done += 1
    return done


class Supernet(nn.Module):
    """Stem, one ModuleList of candidate blocks per searched layer, head, pool, FC.

    Residual candidates start as the identity (:func:`trainable`), the candidates of every shape-changing
    layer as one shared function (:func:`shared_function_init`; ``shared_init=False`` keeps the profiler's
    independent initialisation, for comparison)."""

    def __init__(self, proxy: Space, head_channels: int, shared_init: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.stem = trainable(build_op(proxy.stem))
        self.choices = nn.ModuleList(
            nn.ModuleList(trainable(build_op(layer.spec(c))) for c in layer.candidates) for layer in proxy.layers
        )
        head, pool, fc = (s for _, s in proxy.tail_specs(head_channels))
        self.head = trainable(build_op(head))
        self.pool = build_op(pool)
        self.fc = trainable(build_op(fc))
        self.shared_init = 0
        if shared_init:
            gen = torch.Generator().manual_seed(seed)
            for layer, ops in zip(proxy.layers, self.choices):
                if shape_changing(layer):
                    self.shared_init += shared_function_init(ops, layer, gen)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None, index: list[int] | None = None) -> torch.Tensor:
        """``index`` given: run only the chosen candidate per layer (hard mode), scaled by ``weights[l, i]``
        when weights are given (their value is 1; the product carries the straight-through gradient).
        ``index`` None: the weighted sum of every candidate (soft mode; ``weights`` required)."""
        x = self.stem(x)
        for li, ops in enumerate(self.choices):
            if index is not None:
                i = index[li]
                y = ops[i](x)
                x = y * weights[li, i] if weights is not None else y
            else:
                assert weights is not None, "soft mode needs weights"
                x = sum(weights[li, i] * op(x) for i, op in enumerate(ops))
        return self.fc(self.pool(self.head(x)))


class ChildNet(nn.Sequential):
    """One architecture of the proxy space as a plain network (for training from scratch and the step benchmark)."""


def build_child(proxy: Space, blocks: list[str] | tuple[str, ...], head_channels: int) -> ChildNet:
    mods: list[nn.Module] = [trainable(build_op(proxy.stem))]
    mods += [trainable(build_op(layer.spec(b))) for layer, b in zip(proxy.layers, blocks)]
    mods += [trainable(build_op(s)) for _, s in proxy.tail_specs(head_channels)]
    return ChildNet(*mods)


def build_arch_child(arch: ChannelArch) -> ChildNet:
    """An architecture of a channel space (every op of :meth:`ChannelArch.ops`) as a trainable network."""
    return ChildNet(*[trainable(build_op(spec)) for _, spec in arch.ops()])


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def log_prob(theta: torch.Tensor, mask: torch.Tensor, index: list[int]) -> float:
    """log P(arch) under softmax(theta)."""
    lp = torch.log_softmax(theta.masked_fill(~mask, float("-inf")), dim=-1)
    return float(sum(lp[li, i] for li, i in enumerate(index)))


def expected_latency(theta: torch.Tensor, mask: torch.Tensor, lat: torch.Tensor, fixed_us: float) -> float:
    p = torch.softmax(theta.masked_fill(~mask, float("-inf")), dim=-1)
    return float(fixed_us + (p * lat).sum())

