"""PyTorch builders for every block kind, and whole architectures from the same builders.

``build_op(spec)`` returns the module an :class:`~fbprof.spec.OpSpec` stands for; ``build_arch(arch)``
chains them into a network. Weights are initialised deterministically from the op key, and
:func:`calibrate` gives BatchNorm realistic running statistics (one forward pass of 8 N(0, 1)
inputs in training mode) so that folded-BN exports carry realistic activations instead of
shrinking towards denormal floats (REFERENCE section 5).
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from fbprof.space import Arch
from fbprof.spec import BUILDER_VERSION, OpSpec  # noqa: F401 - BUILDER_VERSION: bump it there when this module changes what a key builds

__all__ = ["build_op", "build_arch", "calibrate", "ChannelShuffle", "seed_for", "BUILDER_VERSION"]


def seed_for(key: str) -> int:
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


class ChannelShuffle(nn.Module):
    """Channel shuffle written as reshape/transpose/reshape with static shapes (exports everywhere)."""

    def __init__(self, groups: int, channels: int, h: int, w: int) -> None:
        super().__init__()
        self.groups, self.channels, self.h, self.w = groups, channels, h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, c = self.groups, self.channels
        x = x.reshape(-1, g, c // g, self.h, self.w)  # -1: the batch (calibration runs batch 8)
        x = x.transpose(1, 2)
        return x.reshape(-1, c, self.h, self.w)


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return layers


class _ResidualBody(nn.Module):
    """``body(x)``, plus ``x`` when the block keeps its shape (``residual``)."""

    body: nn.Sequential
    residual: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class InvertedResidual(_ResidualBody):
    """1x1 (group) conv expand + BN + ReLU [+ shuffle] -> KxK depthwise + BN + ReLU -> 1x1 (group) conv + BN."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        b = spec.block
        mid = spec.mid_channels
        layers: list[nn.Module] = []
        if b.expansion != 1:
            layers += _conv_bn(spec.cin, mid, 1, 1, groups=b.groups)
        if b.groups > 1:
            layers.append(ChannelShuffle(b.groups, mid, spec.h, spec.w))
        layers += _conv_bn(mid, mid, b.kernel, spec.stride, groups=mid)
        layers += _conv_bn(mid, spec.cout, 1, 1, groups=b.groups, relu=False)
        self.body = nn.Sequential(*layers)
        self.residual = spec.has_residual


def _act(hswish: bool) -> nn.Module:
    return nn.Hardswish() if hswish else nn.ReLU(inplace=False)


def _conv_bn_act(cin: int, cout: int, k: int, stride: int, groups: int, hswish: bool) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), _act(hswish)]


class SqueezeExcite(nn.Module):
    """Global average pool -> 1x1 conv (bias) -> act -> 1x1 conv (bias) -> sigmoid or h-sigmoid gate -> scale."""

    def __init__(self, channels: int, mid: int, hswish: bool, hsigmoid: bool) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(channels, mid, 1), _act(hswish), nn.Conv2d(mid, channels, 1),
                                  nn.Hardsigmoid() if hsigmoid else nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(torch.mean(x, dim=(2, 3), keepdim=True))


class FBNetV2Block(_ResidualBody):
    """The FBNetV2 inverted residual (blocks with a fractional expansion, ``_se``/``_sehsig`` or ``_hs``):
    [1x1 (group) conv + BN + act [+ shuffle]] -> KxK depthwise + BN + act -> [SE] -> 1x1 (group) conv + BN,
    residual when the shape is kept. The expansion conv exists when the hidden width differs from cin."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        b = spec.block
        mid = spec.mid_channels
        layers: list[nn.Module] = []
        if mid != spec.cin:
            layers += _conv_bn_act(spec.cin, mid, 1, 1, b.groups, b.hswish)
        if b.groups > 1:
            layers.append(ChannelShuffle(b.groups, mid, spec.h, spec.w))
        layers += _conv_bn_act(mid, mid, b.kernel, spec.stride, mid, b.hswish)
        if b.se:
            layers.append(SqueezeExcite(mid, spec.se_channels, b.hswish, b.se == "sehsig"))
        layers += _conv_bn(mid, spec.cout, 1, 1, groups=b.groups, relu=False)
        self.body = nn.Sequential(*layers)
        self.residual = spec.has_residual


class IRPool(nn.Module):
    """The FBNetV2 head ``ir_pool``: 1x1 conv + BN + act -> global average pool -> 1x1 conv (no BN, no bias)
    + act, flattened."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        b, mid = spec.block, spec.mid_channels
        self.expand = nn.Sequential(*_conv_bn_act(spec.cin, mid, 1, 1, 1, b.hswish)) if mid != spec.cin else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, spec.cout, 1, bias=False), _act(b.hswish))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.mean(self.expand(x), dim=(2, 3), keepdim=True)
        return torch.flatten(self.project(y), 1)


def _is_v2(spec: OpSpec) -> bool:
    b = spec.block
    return bool(b.se or b.hswish or not isinstance(b.expansion, int))


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.mean(x, dim=(2, 3), keepdim=True), 1)


def _init(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            with torch.no_grad():
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)
                if m.bias is not None:  # only FBNetV2's SE convs have one
                    m.bias.zero_()
        elif isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.normal_(0.0, 0.01, generator=gen)
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_op(spec: OpSpec, init: bool = True) -> nn.Module:
    """The torch module of one op (eval mode, BN not yet calibrated)."""
    b = spec.block
    if b.kind == "ir":
        m: nn.Module = FBNetV2Block(spec) if _is_v2(spec) else InvertedResidual(spec)
    elif b.kind == "irpool":
        m = IRPool(spec)
    elif b.kind == "stem" and b.hswish:
        m = nn.Sequential(*_conv_bn_act(spec.cin, spec.cout, b.kernel, spec.stride, 1, True))
    elif b.kind == "skip":
        m = nn.Identity() if spec.is_identity else nn.Sequential(*_conv_bn(spec.cin, spec.cout, 1, spec.stride, relu=False))
    elif b.kind in ("stem", "head"):
        m = nn.Sequential(*_conv_bn(spec.cin, spec.cout, b.kernel, spec.stride))
    elif b.kind == "pool":
        m = GlobalAvgPool()
    elif b.kind == "fc":
        m = nn.Linear(spec.cin, spec.cout)
    else:  # pragma: no cover - parse_block rejects anything else
        raise AssertionError(b.kind)
    if init:
        _init(m, seed_for(spec.key))
    return m.eval()


@torch.no_grad()
def calibrate(module: nn.Module, input_shape: tuple[int, ...], seed: int = 0, batches: int = 1, batch: int = 8) -> nn.Module:
    """Set BN running statistics from forward passes of N(0, 1) input; returns the module in eval mode.

    The statistics only give the exported weights realistic magnitudes (kernels and their cost do not depend
    on values). One batch of 8 estimates each channel's mean and variance from 8 x H x W values (>= 392 at 224); 4
    batches (until 2026-12-02) cost 7.5-8.2 s of a cold FBNet build's 109 ops instead of 1.9-2.3 s."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return module.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    module.train()
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *input_shape[1:])
    for _ in range(batches):
        module(torch.randn(shape, generator=gen))
    return module.eval()


def example_input(spec_or_shape: OpSpec | tuple[int, ...], seed: int | None = None) -> torch.Tensor:
    shape = spec_or_shape.input_shape if isinstance(spec_or_shape, OpSpec) else spec_or_shape
    s = seed if seed is not None else (seed_for(spec_or_shape.key) if isinstance(spec_or_shape, OpSpec) else 0)
    return torch.randn(shape, generator=torch.Generator().manual_seed(s + 1))


def build_calibrated_op(spec: OpSpec) -> nn.Module:
    return calibrate(build_op(spec), spec.input_shape, seed=seed_for(spec.key))


class ArchNet(nn.Module):
    """A whole architecture: stem, searched blocks (identity skips kept), head, pool, FC."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.layer_names = [name for name, _ in arch.ops()]
        self.layers = nn.ModuleList(build_op(spec) for _, spec in arch.ops())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def build_arch(arch: Arch, calibrated: bool = True) -> ArchNet:
    net = ArchNet(arch)
    if calibrated:
        calibrate(net, (1, arch.space.in_channels, arch.space.resolution, arch.space.resolution), seed=seed_for(arch.name))
    return net.eval()
