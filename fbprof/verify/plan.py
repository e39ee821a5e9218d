"""Planning a verify run: which networks (seeded random ones, the published FBNet-A/B/C and networks given
by name or file), which split each belongs to (calibration or held-out), and the LUT's backend, threads and
loop. A grid LUT (a channel space, FBNetV2) predicts by interpolation; its random networks are drawn over
what its grid covers (:func:`sample_channel_archs`) and its calibration is one of
:data:`fbprof.lut.calibration.GRID_MODELS`."""

from __future__ import annotations

import random
import shlex
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from fbprof.backends import get_backend
from fbprof.backends.cache import ArtifactCache
from fbprof.devices.base import Device
from fbprof.errors import InputError
from fbprof.loop import LoopConfig
from fbprof.lut.predict import predict, require_space
from fbprof.lut.table import Lut, read_lut
from fbprof.space import Arch, ChannelArch, ChannelSpace, Space, load_arch

__all__ = ["VerifyConfig", "open_verify", "verify_command", "config_space", "config_loop",
           "VerifyListener", "VerifyRequest", "VerifyPlan", "sample_archs", "sample_channel_archs", "published_archs", "given_archs",
           "plan_verify", "is_grid", "timed_mismatch", "PUBLISHED", "CALIBRATION", "HELD_OUT"]

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
    #: also measure the LUT rows the networks' predictions read, interleaved with the networks, and predict again
    #: from those same-run rows (drift of the device between the LUT's build and now cancels)
    same_run_rows: bool = False

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
class VerifyConfig:
    """What a verify run measures, and how: the options of ``fbprof verify`` (and of :func:`fbprof.run_verify`),
    turned into a :class:`VerifyRequest` by :func:`open_verify`, the one place that resolves the device, the
    space, the given networks, the measuring loop and the recorded command."""

    lut: str | Path
    device: str = "local"
    backend: str | None = None
    space: str | Path | None = None  # default: the LUT header's single space
    resolution: int | None = None  # with space
    width: float | None = None  # with space
    samples: int = 100
    seed: int = 0
    rounds: int = 3
    paired: int = 0  # > 0, local device: sample-level pairing, this many iterations cut into `rounds` rounds
    noise_repeats: int = 6
    calib_fraction: float = 0.3
    calibrate: bool = True
    store: bool = True  # write a fitted calibration into the LUT header
    published: bool = True  # add FBNet-A/B/C for the fbnet space
    archs: list[str] = field(default_factory=list)  # also these networks, by name or arch file (held out)
    loop: LoopConfig | None = None  # default: the LUT's
    export_workers: int = 1
    cache_dir: str | Path | None = None
    report_dir: str | Path | None = None  # where the report goes (recorded in the command; written by the caller)
    options: dict[str, Any] = field(default_factory=dict)  # device settings (the CLI's --option KEY=VALUE)
    # (fields added later go last, so positional calls keep working)
    min_runs: int | None = None  # on top of `loop` (or the LUT's): timed samples per measurement
    min_time_s: float | None = None  # likewise: seconds of samples per measurement
    profiles: list[str | Path] = field(default_factory=list)  # extra device profile files or folders
    same_run_rows: bool = False  # also measure the LUT rows the predictions read, in the same rounds


@contextmanager
def open_verify(config: VerifyConfig) -> Iterator[VerifyRequest]:
    """The device opened and the request built for ``config`` (closed on exit)."""
    from fbprof.devices.profiles import load_profiles, open_device, resolve_device

    sp, loop = config_space(config), config_loop(config)
    prof, address = resolve_device(config.device, None, load_profiles(config.profiles))
    given = given_archs(list(config.archs), sp or read_lut(config.lut).space()) if config.archs else []
    with open_device(prof, address, dict(config.options)) as dev:
        yield VerifyRequest(lut_path=Path(config.lut), device=dev, backend=config.backend, space=sp, archs=given,
                            samples=config.samples, seed=config.seed, rounds=config.rounds, paired=config.paired,
                            loop=loop, calibrate=config.calibrate, store=config.store,
                            calib_fraction=config.calib_fraction, noise_repeats=config.noise_repeats,
                            published=config.published, cache=ArtifactCache(config.cache_dir),
                            export_workers=config.export_workers, command=verify_command(config),
                            same_run_rows=config.same_run_rows)


def config_space(config: VerifyConfig) -> Space | ChannelSpace | None:
    """The space ``config`` names (None: the LUT header's, decided by the plan)."""
    from fbprof.space import load_space

    if (config.resolution is not None or config.width is not None) and config.space is None:
        raise InputError("--resolution/--width need --space")
    return load_space(config.space, config.resolution, config.width) if config.space is not None else None


def config_loop(config: VerifyConfig) -> LoopConfig | None:
    """``config.loop`` (None: the LUT's) with ``min_runs`` / ``min_time_s`` applied on top."""
    loop = config.loop
    if config.min_runs is None and config.min_time_s is None:
        return loop
    base = loop or read_lut(config.lut).loop_config()
    try:
        return replace(base, min_runs=config.min_runs or base.min_runs,
                       min_time_s=base.min_time_s if config.min_time_s is None else config.min_time_s,
                       max_runs=max(base.max_runs, config.min_runs or 0))
    except ValueError as e:
        raise InputError(f"measuring options: {e}") from None


def verify_command(config: VerifyConfig) -> str:
    """The canonical ``fbprof verify`` command that reproduces a report (summary.json, COMMAND.txt)."""
    from fbprof.devices.profiles import is_secret_option

    c = config
    args = ["fbprof", "verify", "--lut", str(c.lut), "--device", c.device]
    if c.backend:
        args += ["--backend", c.backend]
    if c.space:
        args += ["--space", str(c.space)] + (["--resolution", str(c.resolution)] if c.resolution else []) + (
            ["--width", f"{c.width:g}"] if c.width else [])
    args += [a for x in c.archs for a in ("--arch", str(x))]
    args += ["--samples", str(c.samples), "--seed", str(c.seed), "--rounds", str(c.rounds)]
    if c.paired:
        args += ["--paired", str(c.paired)]
    if c.same_run_rows:
        args.append("--same-run-rows")
    args += ["--noise-repeats", str(c.noise_repeats), "--calib-fraction", f"{c.calib_fraction:g}",
             "--calibrate" if c.calibrate else "--no-calibrate"]
    if c.calibrate:
        args.append("--store" if c.store else "--no-store")
    if not c.published:
        args.append("--no-published")
    if c.loop is not None:  # an API caller's whole loop: its counts, as far as the CLI's flags can say them
        loop = config_loop(c)
        args += ["--min-runs", str(loop.min_runs), "--min-time", f"{loop.min_time_s:g}"]
    else:
        if c.min_runs is not None:
            args += ["--min-runs", str(c.min_runs)]
        if c.min_time_s is not None:
            args += ["--min-time", f"{c.min_time_s:g}"]
    if c.report_dir is not None:
        args += ["--out", str(c.report_dir)]
    args += [a for x in c.profiles for a in ("--profiles", str(x))]
    for k, v in c.options.items():  # a secret's value is never written
        args += ["--option", f"{k}=<secret>" if is_secret_option(k) else f"{k}={v}"]
    return shlex.join(args)


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
    calibrate: bool = True  # fit a calibration on the calibration split (on a grid LUT: GRID_MODELS only)
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


def timed_mismatch(lut: Lut, backend: str) -> str | None:
    """Why ``lut``'s rows are not timed as this fbprof times ``backend`` (its header ``timed`` against the
    backend's), or None when they are."""
    timed = get_backend(backend).timed
    if lut.header.get("timed") == timed:
        return None
    return f"timed: {lut.header.get('timed', '(none: an output read back in every call)')!r} in the LUT, {timed!r} here"


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
