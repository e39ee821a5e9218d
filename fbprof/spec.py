"""Torch-free vocabulary shared by every part of fbprof: op specs, their keys, MACs and params.

An :class:`OpSpec` is one operator at one layer shape, e.g. the ``k5_e6`` block taking a
16x112x112 input to 24 channels with stride 2. Its key, ``k5_e6:16x112x112:24:s2``, is the
stable, human-readable identity used in LUT files; :meth:`OpSpec.parse` reads it back losslessly.

Block names are decoded here and nowhere else:

* ``kK_eE`` / ``kK_eE_gG`` -- inverted residual block, KxK depthwise conv, expansion E, 1x1 group convs
  with G groups (G > 1 adds a channel shuffle after the first 1x1 conv);
* ``skip`` -- identity when the shape is kept, else a strided 1x1 conv + BN;
* ``stem`` -- 3x3 conv + BN + ReLU; ``head`` -- 1x1 conv + BN + ReLU;
* ``pool`` -- global average pool (output flattened); ``fc`` -- fully connected layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fbprof.errors import InputError

__all__ = ["BlockKind", "OpSpec", "parse_block", "make_divisible", "FIXED_OPS"]

FIXED_OPS = ("stem", "head", "pool", "fc")
# ASCII digits only, at most 7 of them (a 5000-digit number is an error, not an int() traceback)
_IR_RE = re.compile(r"k(?P<k>[1-9][0-9]{0,2})_e(?P<e>[1-9][0-9]{0,2})(?:_g(?P<g>[1-9][0-9]{0,3}))?")
_KEY_RE = re.compile(r"(?P<op>[a-z0-9_]{1,40}):(?P<cin>[0-9]{1,7})x(?P<h>[0-9]{1,7})x(?P<w>[0-9]{1,7}):"
                     r"(?P<cout>[0-9]{1,7}):s(?P<s>[0-9]{1,4})")


@dataclass(frozen=True)
class BlockKind:
    """A decoded block name."""

    name: str
    kind: str  # "ir", "skip", "stem", "head", "pool", "fc"
    kernel: int = 1
    expansion: int = 1
    groups: int = 1


def parse_block(name: str) -> BlockKind:
    """Decode a block name (``k3_e6``, ``k5_e1_g2``, ``skip``, ``stem``...) or raise InputError."""
    if name == "skip":
        return BlockKind(name, "skip")
    if name == "stem":
        return BlockKind(name, "stem", kernel=3)
    if name in ("head", "pool", "fc"):
        return BlockKind(name, name)
    m = _IR_RE.fullmatch(name) if isinstance(name, str) else None
    if not m:
        raise InputError(
            f"unknown block {str(name)[:60]!r}: expected kK_eE, kK_eE_gG (e.g. k3_e6, k5_e1_g2), skip, stem, head, pool or fc"
        )
    k, e, g = int(m["k"]), int(m["e"]), int(m["g"] or 1)
    if k % 2 == 0:
        raise InputError(f"block {name!r}: kernel size must be odd")
    if g == 1 and m["g"] is not None:
        raise InputError(f"block {name!r}: write groups only when > 1 (k{k}_e{e})")
    return BlockKind(name, "ir", kernel=k, expansion=e, groups=g)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _conv_out(size: int, kernel: int, stride: int) -> int:
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


@dataclass(frozen=True, order=True)
class OpSpec:
    """One operator at one shape (batch 1). Input is ``cin x h x w``; output has ``cout`` channels."""

    op: str
    cin: int
    h: int
    w: int
    cout: int
    stride: int = 1

    def __post_init__(self) -> None:
        block = parse_block(self.op)
        for field in ("cin", "h", "w", "cout", "stride"):
            if getattr(self, field) < 1:
                raise InputError(f"op {self.op}: {field} must be >= 1")
        if block.kind == "ir" and block.groups > 1:
            mid = self.cin * block.expansion
            if self.cin % block.groups or self.cout % block.groups or mid % block.groups:
                raise InputError(f"op {self.op}: channels {self.cin}->{self.cout} not divisible by {block.groups} groups")
        if block.kind in ("pool", "fc") and self.stride != 1:
            raise InputError(f"op {self.op}: stride must be 1")
        if block.kind == "pool" and self.cin != self.cout:
            raise InputError("op pool: cout must equal cin")
        if block.kind == "fc" and (self.h, self.w) != (1, 1):
            raise InputError("op fc: input must be Cx1x1")

    # ---- identity -------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return f"{self.op}:{self.cin}x{self.h}x{self.w}:{self.cout}:s{self.stride}"

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.key

    @classmethod
    def parse(cls, key: str) -> "OpSpec":
        m = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
        if not m or key != key.strip():
            raise InputError(f"malformed op key {str(key)[:80]!r}: expected OP:CINxHxW:COUT:sSTRIDE, e.g. k3_e6:16x112x112:24:s2")
        return cls(m["op"], int(m["cin"]), int(m["h"]), int(m["w"]), int(m["cout"]), int(m["s"]))

    @property
    def block(self) -> BlockKind:
        return parse_block(self.op)

    @property
    def is_identity(self) -> bool:
        """A skip that keeps the shape: costs nothing and is never measured."""
        return self.op == "skip" and self.stride == 1 and self.cin == self.cout

    # ---- shapes ---------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        """NCHW input shape (``fc`` takes a flat ``1 x cin`` vector)."""
        if self.op == "fc":
            return (1, self.cin)
        return (1, self.cin, self.h, self.w)

    @property
    def out_hw(self) -> tuple[int, int]:
        b = self.block
        if b.kind in ("pool", "fc"):
            return (1, 1)
        return _conv_out(self.h, b.kernel, self.stride), _conv_out(self.w, b.kernel, self.stride)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.op in ("pool", "fc"):
            return (1, self.cout)
        oh, ow = self.out_hw
        return (1, self.cout, oh, ow)

    @property
    def mid_channels(self) -> int:
        b = self.block
        return self.cin * b.expansion if b.kind == "ir" else self.cin

    @property
    def has_residual(self) -> bool:
        return self.block.kind == "ir" and self.stride == 1 and self.cin == self.cout

    # ---- cost -----------------------------------------------------------------------------------
    def macs(self) -> int:
        """Multiply-accumulates of the convs and the FC (BN, ReLU, adds and pooling count 0)."""
        b = self.block
        oh, ow = self.out_hw
        if b.kind == "stem":
            return self.cout * self.cin * b.kernel * b.kernel * oh * ow
        if b.kind == "head":
            return self.cin * self.cout * oh * ow
        if b.kind == "skip":
            return 0 if self.is_identity else self.cin * self.cout * oh * ow
        if b.kind == "pool":
            return 0
        if b.kind == "fc":
            return self.cin * self.cout
        mid, g = self.mid_channels, b.groups
        expand = 0 if b.expansion == 1 else self.cin * mid // g * self.h * self.w
        depthwise = mid * b.kernel * b.kernel * oh * ow
        project = mid * self.cout // g * oh * ow
        return expand + depthwise + project

    def params(self) -> int:
        """Weights, BN affine parameters and the FC bias."""
        b = self.block
        if b.kind == "stem":
            return self.cout * self.cin * b.kernel * b.kernel + 2 * self.cout
        if b.kind in ("head",):
            return self.cin * self.cout + 2 * self.cout
        if b.kind == "skip":
            return 0 if self.is_identity else self.cin * self.cout + 2 * self.cout
        if b.kind == "pool":
            return 0
        if b.kind == "fc":
            return self.cin * self.cout + self.cout
        mid, g = self.mid_channels, b.groups
        expand = 0 if b.expansion == 1 else self.cin * mid // g + 2 * mid
        depthwise = mid * b.kernel * b.kernel + 2 * mid
        project = mid * self.cout // g + 2 * self.cout
        return expand + depthwise + project
