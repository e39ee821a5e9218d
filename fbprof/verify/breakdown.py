"""Per-layer, in-context costs of whole networks: where a LUT's sum and the network part ways.

For an architecture with ops ``o_1 … o_n`` (stem, searched layers, head, pool, FC), prefix ``P_k`` is the
network's first ``k`` ops, with the same weights and BatchNorm statistics as the whole network (BN is
calibrated on the whole network, then the prefix takes its first ``k`` modules). Every prefix is a valid
network: it takes the image and returns the feature map of op ``k``. Prefixes are exported like the LUT's
ops and measured on the device interleaved (every round visits every prefix of every architecture once,
in a fresh seeded order; a prefix's latency is the median of its round medians). Op ``k``'s in-context
cost is ``T(P_k) - T(P_{k-1})`` (``T(P_0) = 0``: the first op carries the per-inference overhead of the
runtime), set beside its isolated LUT row.

What a difference includes, honestly: the op's own kernels as they run inside the graph (layouts,
fusions, caches as the network leaves them) and the change in reading out the network's output from
``P_{k-1}``'s tensor to ``P_k``'s. The in-context costs add up to ``T(P_n)``, the whole network, by
construction; the information is in the per-layer ratios in-context / isolated.

Nothing here prints; progress goes to a :class:`~fbprof.verify.plan.VerifyListener`.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from fbprof.artifact import Artifact
from fbprof.backends import get_backend
from fbprof.backends.cache import ArtifactCache, ExportJob, export_jobs, export_module
from fbprof.devices.base import Device
from fbprof.errors import InputError, MeasurementError
from fbprof.fileio import atomic_write_bytes, atomic_write_text
from fbprof.loop import LoopConfig
from fbprof.lut.table import Lut, read_lut
from fbprof.profiler.export import arch_from_ref, arch_key, arch_ref, export_ops
from fbprof.lut.predict import predict
from fbprof.space import Arch, ChannelArch
from fbprof.verify.measure import measure_interleaved, paired_samples
from fbprof.verify.plan import (VerifyConfig, VerifyListener, config_loop, config_space, given_archs, timed_mismatch,
                                verify_command)
from fbprof.verify.report import csv_text, num

__all__ = ["BreakdownRequest", "InContextCost", "Breakdown", "run_breakdown", "prefix_artifact", "write_breakdown",
           "open_breakdown", "breakdown_command", "write_breakdown_report", "BREAKDOWN_COLUMNS", "BREAKDOWN_FILES"]

BREAKDOWN_COLUMNS = ("arch", "index", "layer", "key", "isolated_us", "isolated_now_us", "in_context_us", "ratio",
                     "prefix_us", "prefix_spread_pct")
BREAKDOWN_FILES = {"csv": "breakdown.csv", "plot": "breakdown.png"}


@dataclass
class BreakdownRequest:
    lut_path: Path
    device: Device
    archs: list[Arch | ChannelArch]
    rounds: int = 5
    seed: int = 0
    #: > 0: sample-level pairing on a device that offers it (:meth:`~fbprof.devices.base.Device.measure_paired`):
    #: this many iterations, each timing every prefix and op once; a layer's in-context cost is the median of
    #: its per-iteration differences T(P_k) - T(P_k-1), so the machine's slow drift cancels
    paired: int = 0
    loop: LoopConfig | None = None  # default: the LUT header's loop
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    export_workers: int = 1
    export_options: dict = field(default_factory=dict)
    check_atol: float = 1e-3
    command: str = ""  # the canonical `fbprof verify --breakdown` command (written beside the report)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise InputError("--rounds must be >= 1")
        if self.paired:  # a device object is only asked when pairing is wanted
            self.device.check_paired(self.paired, "use --rounds")
        if not self.archs:
            raise InputError("--breakdown needs at least one architecture")
        _distinct_names(self.archs)


def breakdown_command(config: VerifyConfig, names: Sequence[str], worst: int = 0) -> str:
    """The canonical ``fbprof verify --breakdown`` command for ``config`` (verify's device, LUT and space options,
    then the breakdown's networks, seed, rounds or pairing, loop and output folder)."""
    import shlex

    args = shlex.split(verify_command(replace(config, samples=0, archs=[], min_runs=None, min_time_s=None,
                                              report_dir=None)))
    args = args[: args.index("--samples")] + [a for x in names for a in ("--breakdown", str(x))]
    if worst:
        args += ["--breakdown-worst", str(worst)]
    args += ["--seed", str(config.seed)] + (["--paired", str(config.paired)] if config.paired else ["--rounds", str(config.rounds)])
    if config.min_runs is not None:
        args += ["--min-runs", str(config.min_runs)]
    if config.min_time_s is not None:
        args += ["--min-time", f"{config.min_time_s:g}"]
    if config.report_dir is not None:
        args += ["--out", str(config.report_dir)]
    return shlex.join(args)


@contextmanager
def open_breakdown(config: VerifyConfig, names: Sequence[str], worst: int = 0) -> Iterator[BreakdownRequest]:
    """The device opened and the breakdown request built for ``config`` (closed on exit): the networks ``names``
    (names or files) and, with ``worst``, the N held-out random networks the raw LUT sum missed most in
    ``config.report_dir``/verify.csv (an earlier verify run). Measured with the LUT's backend."""
    from fbprof.devices.profiles import load_profiles, open_device, resolve_device
    from fbprof.space import ChannelSpace

    table = read_lut(config.lut)
    if config.backend is not None and table.backend() and config.backend != table.backend():
        raise InputError(f"--breakdown measures with the LUT's backend ({table.backend()}), not --backend {config.backend}",
                         hint="leave --backend out, or break down against a LUT of that backend")
    sp, loop = config_space(config), config_loop(config)
    prof, address = resolve_device(config.device, None, load_profiles(config.profiles))
    space = sp or table.space()
    archs = given_archs(list(names), space)  # FBNet-style ones rebuilt in the LUT's space; channel ones as given
    if worst and isinstance(space, ChannelSpace):
        raise InputError("--breakdown-worst is not supported for channel spaces yet (it rebuilds FBNet-style "
                         "networks from verify.csv); give the networks with --breakdown")
    if worst:
        if config.report_dir is None:
            raise InputError("--breakdown-worst reads verify.csv in the report folder: give one (--out)")
        archs += worst_from_report(Path(config.report_dir) / "verify.csv", space, worst)
    _distinct_names(archs)  # before a (remote) device is opened
    with open_device(prof, address, dict(config.options)) as dev:
        yield BreakdownRequest(Path(config.lut), dev, archs, rounds=config.rounds, seed=config.seed, loop=loop,
                               cache=ArtifactCache(config.cache_dir), export_workers=config.export_workers,
                               paired=config.paired, command=breakdown_command(config, names, worst))


def _distinct_names(archs) -> None:
    seen: set[str] = set()
    for a in archs:  # prefixes, rows and the report are keyed by the network's name
        if a.name in seen:
            raise InputError(f"two networks to break down are named {a.name!r}: give each a distinct name "
                             "(the `name:` of its arch file)")
        seen.add(a.name)


@dataclass
class InContextCost:
    index: int  # 1-based position in the network
    layer: str  # stem, L01.., head, pool, fc
    key: str  # the op's LUT key
    isolated_us: float  # the LUT row (0 for an identity skip)
    isolated_now_us: float | None  # the same op alone, measured in this run's rounds (0 for an identity skip)
    in_context_us: float | None  # T(P_k) - T(P_k-1)
    prefix_us: float | None  # T(P_k)
    prefix_spread_pct: float | None  # spread of P_k's round medians (paired: its interquartile range)

    @property
    def ratio(self) -> float | None:
        """In context over isolated, both measured in this run (the LUT row when the op was not re-measured)."""
        base = self.isolated_now_us if self.isolated_now_us is not None else self.isolated_us
        if self.in_context_us is None or base <= 0:
            return None
        return self.in_context_us / base


@dataclass
class Breakdown:
    arch: Arch | ChannelArch
    layers: list[InContextCost]
    failed: dict[str, str]

    @property
    def end_to_end_us(self) -> float | None:
        return self.layers[-1].prefix_us if self.layers else None

    @property
    def isolated_sum_us(self) -> float:
        return sum(c.isolated_us for c in self.layers)

    @property
    def isolated_now_sum_us(self) -> float | None:
        vals = [c.isolated_now_us for c in self.layers]
        return None if any(v is None for v in vals) else sum(vals)

    @property
    def in_context_sum_us(self) -> float | None:
        vals = [c.in_context_us for c in self.layers]
        return None if any(v is None for v in vals) else sum(vals)


# ------------------------------------------------------------------------------------------------
def prefix_artifact(arch: Arch | ChannelArch, k: int, fmt: str, cache: ArtifactCache, options: dict | None = None) -> Artifact:
    """The first ``k`` ops of ``arch`` as one network (weights and BN of the whole network), from the cache or
    freshly exported."""
    import torch
    from torch import nn

    from fbprof.build import build_arch, example_input, seed_for

    n = len(arch.ops())
    if not 1 <= k <= n:
        raise InputError(f"{arch.name}: prefix {k} out of range 1..{n}")
    options = dict(options or {})
    key = f"prefix{k}:{arch_key(arch)}"
    hit = cache.get(key, fmt, options)
    if hit is not None:
        return hit
    net = build_arch(arch)
    prefix = nn.Sequential(*list(net.layers)[:k]).eval()
    s = arch.space
    example = example_input((1, s.in_channels, s.resolution, s.resolution), seed=seed_for(arch.name))
    with torch.no_grad():
        return export_module(prefix, example, key, fmt, cache.folder(key, fmt, options), options)


def _prefix_worker(ref: dict, k: int, fmt: str, root: str, options: dict) -> None:
    prefix_artifact(arch_from_ref(ref), k, fmt, ArtifactCache(root), options)


def _name(arch: Arch | ChannelArch, k: int) -> str:
    return f"{arch.name}/{k:02d}"


def run_breakdown(req: BreakdownRequest, listener: VerifyListener | None = None) -> list[Breakdown]:
    """Export every prefix of every architecture, measure them interleaved, and difference them."""
    lis = listener or VerifyListener()
    lut: Lut = read_lut(req.lut_path)
    backend = lut.backend()
    req.device.check_backend(backend)
    fmt = lut.header.get("format") or get_backend(backend).format
    threads = lut.threads()
    loop = req.loop or lut.loop_config()
    timed = timed_mismatch(lut, backend)
    if timed:
        lis.on_note(f"the LUT was measured differently: {timed} (the isolated ops of this run are timed as here)")
    # each layer's LUT cost: its row, or for a grid LUT (channel space) the interpolated value; raises on
    # an op the LUT cannot answer before anything is exported
    lut_us = [[c.latency_us for c in predict(a, lut).layers] for a in req.archs]
    jobs = [ExportJob(_name(a, k), f"prefix{k}:{arch_key(a)}", _prefix_worker, (arch_ref(a), k))
            for a in req.archs for k in range(1, len(a.ops()) + 1)]
    specs = sorted({s for a in req.archs for _, s in a.ops() if not s.is_identity}, key=lambda s: s.key)
    lis.on_export_start(len(jobs) + len(specs))
    exported = export_jobs(jobs, fmt, req.cache, req.export_options, workers=req.export_workers,
                           on_done=lis.on_export_done)
    # the isolated ops, measured again in the same rounds: ratios from one run, not from the LUT's day
    exported |= {f"op:{k}": v for k, v in export_ops(specs, fmt, req.cache, req.export_options,
                                                     workers=req.export_workers, on_done=lis.on_export_done).items()}
    failed = {n: a.message for n, a in exported.items() if isinstance(a, MeasurementError)}
    for n, why in failed.items():
        lis.on_note(f"{n}: {why}")
    artifacts = {n: a for n, a in exported.items() if isinstance(a, Artifact)}
    if req.paired:
        per, mfailed, notes = paired_samples(req.device, backend, threads, artifacts, req.paired, req.seed,
                                             req.check_atol, lis)
    else:
        per, _, mfailed, notes = measure_interleaved(req.device, backend, threads, loop, artifacts, req.rounds, req.seed,
                                                     None, 0, req.check_atol, lis)
    failed.update(mfailed)
    for n, ns in notes.items():
        if any(x.startswith("output") for x in ns):
            failed[n] = "; ".join(ns)
    out = []
    for a, row_us in zip(req.archs, lut_us):
        costs: list[InContextCost] = []
        prev: float | None = 0.0
        for k, (layer, spec) in enumerate(a.ops(), start=1):
            name = _name(a, k)
            rounds = per.get(name) or []
            t = statistics.median(rounds) if rounds and name not in failed else None
            if req.paired and t and len(rounds) > 1:
                q = statistics.quantiles(rounds, n=4)
                spread = 100 * (q[2] - q[0]) / t
            else:
                spread = (100 * (max(rounds) - min(rounds)) / t) if t and len(rounds) > 1 else None
            if t is None or prev is None:
                diff = None
            elif req.paired and k > 1:  # paired: the median of the per-iteration differences
                diff = statistics.median(x - y for x, y in zip(rounds, per[_name(a, k - 1)]))
            else:
                diff = t - prev
            alone = per.get(f"op:{spec.key}") or []
            now = 0.0 if spec.is_identity else (statistics.median(alone) if alone and f"op:{spec.key}" not in failed else None)
            costs.append(InContextCost(k, layer, spec.key, row_us[k - 1], now, diff, t, spread))
            prev = t
        out.append(Breakdown(a, costs, {n: w for n, w in failed.items() if n.startswith(a.name + "/")}))
    return out


# ------------------------------------------------------------------------------------------------
def format_breakdown_csv(breakdowns: Sequence[Breakdown]) -> str:
    return csv_text(BREAKDOWN_COLUMNS, (
        [b.arch.name, c.index, c.layer, c.key, num(c.isolated_us), num(c.isolated_now_us), num(c.in_context_us),
         num(c.ratio, 4), num(c.prefix_us), num(c.prefix_spread_pct, 2)]
        for b in breakdowns for c in b.layers))


def breakdown_summary(breakdowns: Sequence[Breakdown]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for b in breakdowns:
        e2e, iso, now = b.end_to_end_us, b.isolated_sum_us, b.isolated_now_sum_us
        out[b.arch.name] = {
            "end_to_end_us": None if e2e is None else round(e2e, 3),
            "isolated_sum_us": round(iso, 3),
            "isolated_sum_error_pct": None if not e2e else round(100 * (iso - e2e) / e2e, 3),
            "isolated_now_sum_us": None if now is None else round(now, 3),
            "isolated_now_sum_error_pct": None if not e2e or now is None else round(100 * (now - e2e) / e2e, 3),
            "in_context_sum_us": None if b.in_context_sum_us is None else round(b.in_context_sum_us, 3),
            "largest_gaps_us": [
                {"layer": c.layer, "key": c.key, "isolated_us": round(c.isolated_us, 3),
                 "isolated_now_us": round(c.isolated_now_us, 3), "in_context_us": round(c.in_context_us, 3),
                 "gap_us": round(c.in_context_us - c.isolated_now_us, 3)}
                for c in sorted((c for c in b.layers if c.in_context_us is not None and c.isolated_now_us is not None),
                                key=lambda c: -abs(c.in_context_us - c.isolated_now_us))[:5]
            ],
            "failed": b.failed,
        }
    return out


def plot_breakdown(breakdowns: Sequence[Breakdown], title: str = "") -> bytes:
    """Per layer: isolated LUT row beside the in-context cost, one panel per architecture."""
    from matplotlib.figure import Figure

    n = len(breakdowns)
    fig = Figure(figsize=(13, 3.6 * n + 0.6), dpi=100)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, b in zip(axes, breakdowns):
        xs = list(range(len(b.layers)))
        iso = [c.isolated_us / 1000 for c in b.layers]
        now = [(c.isolated_now_us or 0.0) / 1000 for c in b.layers]
        ctx = [(c.in_context_us or 0.0) / 1000 for c in b.layers]
        ax.bar([x - 0.27 for x in xs], iso, width=0.27, color="tab:blue", label="isolated (LUT row)")
        ax.bar(xs, now, width=0.27, color="tab:cyan", label="isolated (this run)")
        ax.bar([x + 0.27 for x in xs], ctx, width=0.27, color="tab:orange", label="in context (prefix difference)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{c.layer}\n{c.key.split(':')[0]}" for c in b.layers], fontsize=6)
        e2e, now = b.end_to_end_us, b.isolated_now_sum_us
        err = "" if not e2e else f", LUT sum {100 * (b.isolated_sum_us - e2e) / e2e:+.1f}% vs end to end"
        if e2e and now is not None:
            err += f", this run's isolated sum {100 * (now - e2e) / e2e:+.1f}%"
        ax.set_title(f"{b.arch.name}: end to end {(e2e or 0) / 1000:.3f} ms, isolated sum "
                     f"{b.isolated_sum_us / 1000:.3f} ms{err}", fontsize=9)
        ax.set_ylabel("ms")
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_breakdown(breakdowns: Sequence[Breakdown], out_dir: str | Path, title: str = "",
                    extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """breakdown.csv, breakdown.json (summary) and breakdown.png into ``out_dir`` (atomically)."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in BREAKDOWN_FILES.items()} | {"summary": out / "breakdown.json"}
    atomic_write_text(paths["csv"], format_breakdown_csv(breakdowns))
    atomic_write_text(paths["summary"], json.dumps({**(extra or {}), "archs": breakdown_summary(breakdowns)}, indent=1) + "\n")
    atomic_write_bytes(paths["plot"], plot_breakdown(breakdowns, title))
    return paths


def write_breakdown_report(breakdowns: Sequence[Breakdown], req: BreakdownRequest, out_dir: str | Path) -> dict[str, Path]:
    """:func:`write_breakdown` with the request's command, LUT, seed and rounds (or pairing) in breakdown.json,
    the plot titled with the LUT's device and backend, and ``BREAKDOWN_COMMAND.txt``."""
    h = read_lut(req.lut_path).header
    paths = write_breakdown(breakdowns, out_dir, title=f"{h.get('device', '?')} / {h.get('backend', '?')}: {req.lut_path}",
                            extra={"command": req.command, "lut": str(req.lut_path), "seed": req.seed,
                                   **({"paired_iterations": req.paired} if req.paired else {"rounds": req.rounds})})
    if req.command:
        atomic_write_text(Path(out_dir) / "BREAKDOWN_COMMAND.txt", req.command + "\n")
    return paths


def worst_from_report(report_csv: str | Path, space, n: int) -> list[Arch]:
    """The ``n`` held-out random networks of a verify report (``verify.csv``) whose raw LUT sum missed most,
    rebuilt in ``space`` (the LUT's)."""
    p = Path(report_csv)
    try:
        rows = list(csv.DictReader(io.StringIO(p.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{p}: cannot read the verify report: {e}") from None
    picked = []
    for i, r in enumerate(rows, start=2):
        try:
            if r["kind"] == "random" and r["split"] == "held-out" and r["error_pct"]:
                picked.append((abs(float(r["error_pct"])), r["arch"], r["blocks"].split(), int(r["head_channels"]), i))
        except (KeyError, ValueError, AttributeError):
            raise InputError(f"{p}:{i}: not a verify.csv row (arch, kind, split, error_pct, blocks, head_channels)") from None
    picked.sort(key=lambda t: -t[0])
    return [space.arch(blocks, head, name=name) for _, name, blocks, head, _ in picked[:n]]
