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

FBNetV2 additions (the name grammar is lossless: one name per block, :func:`parse_block` rejects the rest):

* ``kK_eE[pF][_gG][_se|_sehsig][_hs]`` -- the inverted residual above, extended:

  - ``eEpF``: fractional expansion ``E.F`` (``e5p4566`` is 5.4566); ``F`` has no trailing zero and ``E``
    no leading zero, so ``e6p0`` / ``e06`` are rejected and every expansion has one spelling. With an
    integer expansion the hidden width is ``cin*E`` (as always); with a fractional one it is
    ``round_channels(cin*E)`` (nearest multiple of 8, at least 95% of the value, at least 8) -- the
    rounding of the published FBNetV2 models (``width_divisor: 8``). The 1x1 expansion conv is present
    exactly when the hidden width differs from ``cin``.
  - ``_se``: squeeze-excite after the depthwise conv with a sigmoid gate; ``_sehsig``: the same with an
    h-sigmoid gate. SE width ``round_channels(int(hidden/4))``; its two 1x1 convs carry biases.
  - ``_hs``: h-swish instead of ReLU everywhere in the block (expand, depthwise, inside the SE).

* ``stem_hs`` -- the stem with h-swish;
* ``ir_pool_eE[pF][_hs]`` -- the FBNetV2 head: 1x1 conv to the hidden width ``cin*E`` + BN + act, global
  average pool, 1x1 conv (no BN, no bias) to ``cout`` + act; output flattened like ``pool``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fbprof.errors import InputError

__all__ = ["BlockKind", "OpSpec", "parse_block", "make_divisible", "round_channels", "conv_out", "FIXED_OPS", "BUILDER_VERSION"]

#: what an op key builds (fbprof/build.py): bump when build.py changes it, so cached artifacts are rebuilt.
#: Kept here, torch-free, so the artifact cache hashes it without importing torch.
BUILDER_VERSION = "2"  # 2: BN statistics from one calibration batch (build.calibrate), 2026-12-02

FIXED_OPS = ("stem", "head", "pool", "fc")
# ASCII digits only, a bounded number of them (a 5000-digit number is an error, not an int() traceback)
_EXP = r"e(?P<e>0|[1-9][0-9]{0,2})(?:p(?P<f>[0-9]{0,6}[1-9]))?"
_IR_RE = re.compile(r"k(?P<k>[1-9][0-9]{0,2})_" + _EXP + r"(?:_g(?P<g>[1-9][0-9]{0,3}))?(?:_(?P<se>se|sehsig))?(?P<hs>_hs)?")
_IRPOOL_RE = re.compile(r"ir_pool_" + _EXP + r"(?P<hs>_hs)?")
_KEY_RE = re.compile(r"(?P<op>[a-z0-9_]{1,40}):(?P<cin>[0-9]{1,7})x(?P<h>[0-9]{1,7})x(?P<w>[0-9]{1,7}):"
                     r"(?P<cout>[0-9]{1,7}):s(?P<s>[0-9]{1,4})")


@dataclass(frozen=True)
class BlockKind:
    """A decoded block name."""

    name: str
    kind: str  # "ir", "skip", "stem", "head", "pool", "fc"
    kernel: int = 1
    expansion: int | float = 1  # an int unless the name has a fraction (``e5p4566``)
    groups: int = 1
    se: str = ""  # "", "se" (sigmoid gate) or "sehsig" (h-sigmoid gate)
    hswish: bool = False  # h-swish instead of ReLU

    @property
    def family(self) -> str:
        """The name without its expansion (``k5_e5p4566_sehsig_hs`` -> ``k5_sehsig_hs``): blocks that differ
        only in expansion."""
        if self.kind not in ("ir", "irpool"):
            return self.name
        return re.sub(r"_e[0-9p]+", "", self.name)

    def hidden(self, cin: int) -> int:
        """Hidden (expanded) width at input width ``cin``."""
        if isinstance(self.expansion, int):
            return cin * self.expansion
        return round_channels(cin * self.expansion)


def _expansion(m: re.Match, name: str) -> int | float:
    if m["f"] is None:
        if m["e"] == "0":
            raise InputError(f"block {name!r}: expansion must be > 0")
        return int(m["e"])
    return float(f"{m['e']}.{m['f']}")


def parse_block(name: str) -> BlockKind:
    """Decode a block name (``k3_e6``, ``k5_e1_g2``, ``skip``, ``stem``...) or raise InputError."""
    if name == "skip":
        return BlockKind(name, "skip")
    if name == "stem":
        return BlockKind(name, "stem", kernel=3)
    if name == "stem_hs":
        return BlockKind(name, "stem", kernel=3, hswish=True)
    if name in ("head", "pool", "fc"):
        return BlockKind(name, name)
    if not isinstance(name, str):
        raise InputError(f"unknown block {str(name)[:60]!r}: a block name is a string")
    m = _IRPOOL_RE.fullmatch(name)
    if m:
        return BlockKind(name, "irpool", expansion=_expansion(m, name), hswish=bool(m["hs"]))
    m = _IR_RE.fullmatch(name)
    if not m:
        raise InputError(
            f"unknown block {name[:60]!r}: expected kK_eE[pF][_gG][_se|_sehsig][_hs] (e.g. k3_e6, k5_e1_g2, "
            "k5_e5p4566_sehsig_hs), skip, stem, stem_hs, head, ir_pool_eE[_hs], pool or fc"
        )
    k, e, g = int(m["k"]), _expansion(m, name), int(m["g"] or 1)
    if k % 2 == 0:
        raise InputError(f"block {name!r}: kernel size must be odd")
    if g == 1 and m["g"] is not None:
        raise InputError(f"block {name!r}: write groups only when > 1 (k{k}_e{m['e']})")
    return BlockKind(name, "ir", kernel=k, expansion=e, groups=g, se=m["se"] or "", hswish=bool(m["hs"]))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def round_channels(value: float, divisor: int = 8) -> int:
    """FBNetV2's channel rounding (``width_divisor``): the nearest multiple of ``divisor`` (halves up),
    raised by ``divisor`` when that drops below 95% of ``value``, and at least ``divisor``."""
    out = int(value)
    if value % divisor != 0:
        out = int((math.floor(value / divisor + 0.5) or 1) * divisor)
        if out < 0.95 * value:
            out += divisor
    return max(out, divisor)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a convolution padded by kernel // 2 (every conv of the blocks here)."""
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
            mid = block.hidden(self.cin)
            if self.cin % block.groups or self.cout % block.groups or mid % block.groups:
                raise InputError(f"op {self.op}: channels {self.cin}->{self.cout} not divisible by {block.groups} groups")
        if block.kind in ("pool", "fc", "irpool") and self.stride != 1:
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
        if b.kind in ("pool", "fc", "irpool"):
            return (1, 1)
        return conv_out(self.h, b.kernel, self.stride), conv_out(self.w, b.kernel, self.stride)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.op in ("pool", "fc") or self.block.kind == "irpool":
            return (1, self.cout)
        oh, ow = self.out_hw
        return (1, self.cout, oh, ow)

    @property
    def mid_channels(self) -> int:
        b = self.block
        return b.hidden(self.cin) if b.kind in ("ir", "irpool") else self.cin

    @property
    def se_channels(self) -> int:
        """Width of the squeeze-excite bottleneck (0 without SE)."""
        b = self.block
        return round_channels(int(self.mid_channels * 0.25)) if b.kind == "ir" and b.se else 0

    @property
    def has_residual(self) -> bool:
        return self.block.kind == "ir" and self.stride == 1 and self.cin == self.cout

    # ---- cost -----------------------------------------------------------------------------------
    def macs(self) -> int:
        """Multiply-accumulates of the convs and the FC (BN, ReLU, adds and pooling count 0; the global
        average pools inside FBNetV2 blocks -- the SE squeeze, the ``ir_pool`` head -- count one per input
        element, as the published FBNetV2 numbers do)."""
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
        expand = 0 if mid == self.cin else self.cin * mid // g * self.h * self.w
        if b.kind == "irpool":  # expand, pool (one per element, as FBNetV2 counts it), 1x1 conv on the pooled vector
            return expand + mid * self.h * self.w + mid * self.cout
        depthwise = mid * b.kernel * b.kernel * oh * ow
        # SE: the squeeze (one per element, as FBNetV2 counts it) and the two 1x1 convs on the pooled vector
        se = mid * oh * ow + 2 * mid * self.se_channels if self.se_channels else 0
        project = mid * self.cout // g * oh * ow
        return expand + depthwise + se + project

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
        expand = 0 if mid == self.cin else self.cin * mid // g + 2 * mid
        if b.kind == "irpool":
            return expand + mid * self.cout  # the last conv has neither BN nor bias
        depthwise = mid * b.kernel * b.kernel + 2 * mid
        r = self.se_channels
        se = (mid * r + r + r * mid + mid) if r else 0
        project = mid * self.cout // g + 2 * self.cout
        return expand + depthwise + se + project
