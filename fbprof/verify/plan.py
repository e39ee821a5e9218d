"""Planning a verify run: which networks (seeded random ones, the published FBNet-A/B/C and networks given
by name or file), which split each belongs to (calibration or held-out), and the LUT's backend, threads and
loop. A grid LUT (a channel space, FBNetV2) predicts by interpolation; its random networks are drawn over
what its grid covers (:func:`sample_channel_archs`) and no calibration is fitted on it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from fbprof.backends import get_backend
from fbprof.backends.cache import ArtifactCache
from fbprof.devices.base import Device
from fbprof.errors import InputError
from fbprof.loop import LoopConfig
from fbprof.lut.predict import predict, require_space
from fbprof.lut.table import Lut, read_lut
from fbprof.space import Arch, ChannelArch, ChannelSpace, Space, load_arch

__all__ = ["VerifyListener", "VerifyRequest", "VerifyPlan", "sample_archs", "sample_channel_archs", "published_archs", "given_archs",
           "plan_verify", "is_grid", "PUBLISHED", "CALIBRATION", "HELD_OUT"]

PUBLISHED = ("fbnet-a", "fbnet-b", "fbnet-c")
CALIBRATION, HELD_OUT = "calibration", "held-out"


class VerifyListener:
    """Progress events of :func:`run_verify`. Every method is optional."""

    def on_plan(self, plan: "VerifyPlan") -> None: ...
    def on_export_start(self, count: int) -> None: ...
    def on_export_done(self, name: str) -> None: ...
    def on_measure_start(self, total: int) -> None: ...
    def on_measure_done(self, name: str, round_index: int, median_us: float) -> None: ...
    def on_note(self, message: str) -> None: ...


@dataclass
class VerifyRequest:
    lut_path: Path
    device: Device
    backend: str | None = None  # must match the LUT's backend when given
    space: Space | ChannelSpace | None = None  # default: the LUT header's single space
    archs: list[Arch | ChannelArch] = field(default_factory=list)  # given networks (kind "given", held out)
    samples: int = 100
    seed: int = 0
    rounds: int = 3
    #: > 0: sample-level pairing on a device that offers it, this many iterations cut into ``rounds`` blocks
    #: (:func:`fbprof.verify.measure.measure_paired_blocks`) instead of ``rounds`` loops per network
    paired: int = 0
    loop: LoopConfig | None = None  # default: the LUT header's loop
    calibrate: bool = True  # fit a calibration on the calibration split
    store: bool = True  # write the fitted calibration into the LUT header
    calib_fraction: float = 0.3
    noise_repeats: int = 6
    published: bool = True
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    export_workers: int = 1
    export_options: dict = field(default_factory=dict)
    check_atol: float = 1e-3
    command: str = ""

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise InputError("--samples must be >= 0")
        if self.rounds < 1:
            raise InputError("--rounds must be >= 1")
        if self.noise_repeats < 0:
            raise InputError("--noise-repeats must be >= 0")
        if self.paired:  # a device object is only asked when pairing is wanted
            self.device.check_paired(self.paired, "use --rounds")
        if self.paired and self.paired < self.rounds:
            raise InputError(f"--paired {self.paired} must be at least --rounds {self.rounds} (iterations are cut into rounds)")
        if not 0.0 < self.calib_fraction < 1.0:
            raise InputError(f"calibration fraction must be between 0 and 1, got {self.calib_fraction}")


@dataclass
class VerifyPlan:
    lut: Lut
    space: Space | ChannelSpace
    backend: str
    format: str
    threads: int
    loop: LoopConfig
    archs: list[Arch | ChannelArch]
    kinds: dict[str, str]  # name -> random | published | given
    splits: dict[str, str]  # name -> calibration | held-out
    noise_arch: str | None
    calibrate: bool = True  # False for a grid LUT: no calibration is fitted or applied
    notes: list[str] = field(default_factory=list)  # told to the listener by run_verify


def sample_archs(space: Space, n: int, seed: int, prefix: str = "rand") -> list[Arch]:
    """``n`` distinct architectures, every layer's block drawn uniformly from its candidates (seeded)."""
    rng = random.Random(seed)
    out: list[Arch] = []
    seen: set[tuple[str, ...]] = set()
    tries = 0
    while len(out) < n:
        blocks = tuple(rng.choice(layer.candidates) for layer in space.layers)
        tries += 1
        if blocks in seen:
            if tries > 100 * (n + 10):
                raise InputError(f"space {space.name} has fewer than {n} distinct architectures")
            continue
        seen.add(blocks)
        out.append(space.arch(blocks, name=f"{prefix}-{len(out):03d}"))
    return out


def sample_channel_archs(space: ChannelSpace, n: int, seed: int, lut: Lut, prefix: str = "rand") -> list[ChannelArch]:
    """``n`` distinct architectures of a channel space whose every op the grid LUT answers: each layer's
    block and width, the stem and head widths and the resolution drawn uniformly (seeded); a draw with an
    op outside the grid (a candidate, size or width the LUT did not measure) or an invalid shape is drawn
    again, so the networks are uniform over what the LUT covers."""
    import dataclasses

    rng = random.Random(seed)
    out: list[ChannelArch] = []
    seen: set[tuple] = set()
    tries, misses, why = 0, 0, ""
    while len(out) < n:
        tries += 1
        if tries > 200 * (n + 10) or misses > 2000:  # a grid that covers little of the space: say so soon
            raise InputError(f"only {len(out)} of {n} random {space.name} networks found whose ops the grid of "
                             f"{lut.path} covers (last miss: {why})",
                             hint="measure a larger grid, or give the networks with --arch and --samples 0")
        r = rng.choice(space.resolutions)
        choice = (r, rng.choice(space.stem_widths), rng.choice(space.head_channels),
                  tuple(rng.choice(layer.candidates) for layer in space.layers),
                  tuple(rng.choice(layer.widths) for layer in space.layers))
        if choice in seen:
            continue
        seen.add(choice)
        r, stem, head, blocks, widths = choice
        sub = space if len(space.resolutions) == 1 else dataclasses.replace(space, resolutions=(r,))
        try:
            arch = sub.arch(blocks, widths, stem, head, name=f"{prefix}-{len(out):03d}")
            predict(arch, lut)
        except InputError as e:
            why, misses = e.message, misses + 1
            continue
        misses = 0
        out.append(arch)
    return out


def published_archs(space: Space) -> list[Arch]:
    """FBNet-A/B/C at the space's resolution and width, when ``space`` is the FBNet space."""
    if space.name != "fbnet":
        return []
    out = []
    for name in PUBLISHED:
        a = load_arch(name, space.resolution, space.width)
        if a.space.layers == space.layers and a.space.stem == space.stem:
            out.append(space.arch(a.blocks, a.head_channels, name=a.name))
    return out


def is_grid(lut: Lut) -> bool:
    """A grid LUT (header ``grid``: a channel space, predictions interpolated; :mod:`fbprof.lut.interp`)."""
    return "grid" in lut.header


def given_archs(names, space: Space | ChannelSpace) -> list[Arch | ChannelArch]:
    """Architectures by name or file. An FBNet-style one is loaded at ``space``'s resolution and width and
    rebuilt in ``space`` (the LUT's); a channel-space one (:class:`ChannelArch`) keeps its own space and
    resolution: its ops need only lie inside the LUT's grid (checked by the prediction)."""
    out: list[Arch | ChannelArch] = []
    for n in names:
        if isinstance(space, ChannelSpace):
            out.append(load_arch(n))
            continue
        a = load_arch(n, space.resolution, space.width)
        out.append(a if isinstance(a, ChannelArch) else space.arch(a.blocks, a.head_channels, name=a.name))
    return out


def plan_verify(req: VerifyRequest) -> VerifyPlan:
    lut = read_lut(req.lut_path)
    backend = lut.header["backend"]
    if req.backend is not None and req.backend != backend:
        raise InputError(f"{req.lut_path} was measured with backend {backend!r}, not {req.backend!r}",
                         hint="verify a LUT with the backend it was measured with (leave out --backend)")
    info = get_backend(backend)
    fmt = lut.header.get("format") or info.format
    threads = lut.threads()
    space = req.space or lut.space()
    require_space(lut, space)
    loop = req.loop or lut.loop_config()
    grid = is_grid(lut)
    notes: list[str] = []
    if isinstance(space, ChannelSpace):
        archs: list = sample_channel_archs(space, req.samples, req.seed, lut)
    else:
        archs = sample_archs(space, req.samples, req.seed)
    pub = published_archs(space) if req.published else []
    given = list(req.archs)
    all_archs = archs + pub + given
    seen: set[str] = set()
    for a in all_archs:
        if a.name in seen:
            raise InputError(f"two networks are named {a.name!r}: give each --arch a distinct name "
                             "(the random ones are rand-000, ...)")
        seen.add(a.name)
    for a in given:
        predict(a, lut)  # an op the LUT (or its grid) cannot answer fails now, before any export
    kinds = {a.name: "random" for a in archs} | {a.name: "published" for a in pub} | {a.name: "given" for a in given}
    calibrate = req.calibrate
    if grid:
        calibrate = False
        notes.append("grid LUT: predictions are interpolated; no calibration is fitted or applied yet "
                     "(every network is held out, raw predictions only)")
    # calibration split: a seeded share of the random archs; everything else is held out
    order = [a.name for a in archs]
    random.Random(f"split-{req.seed}").shuffle(order)
    k = round(req.calib_fraction * len(order)) if calibrate else 0
    calib = set(order[:k])
    splits = {a.name: CALIBRATION if a.name in calib else HELD_OUT for a in all_archs}
    noise = None
    if req.noise_repeats and all_archs:
        noise = "fbnet-c" if "fbnet-c" in kinds else all_archs[0].name
    return VerifyPlan(lut, space, backend, fmt, threads, loop, all_archs, kinds, splits, noise, calibrate, notes)
