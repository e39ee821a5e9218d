"""FBNet's differentiable architecture search (DNAS) driven by a device LUT.

:func:`run_search` is the whole search; the CLI (``fbprof search``) only builds a
:class:`SearchConfig` and shows a :class:`SearchListener`'s events. See docs/search.md.

Schedule (FBNet, Wu et al. 2019): the held-in training images are split 80/20 (stratified, by the
seed); every epoch first trains the supernet weights w on the 80% (SGD + momentum, cosine learning
rate, plain cross-entropy: the latency factor is a per-step constant for w), then the architecture
parameters theta on the 20% (Adam, the latency-aware loss). The first ``warmup_epochs`` train w only.
The Gumbel-softmax temperature is ``tau0 * exp(-tau_decay * epoch)``.

Modes: ``hard`` (default) samples one candidate per layer and runs only that one (a weight step costs about
one child network); ``soft`` runs every candidate and sums their outputs weighted by the Gumbel-softmax weights
(the paper's formulation). In hard mode theta's gradient is by default the score function of ``--theta-paths``
paths run on one batch with a leave-one-out baseline (:func:`rloo_loss`; ``estimator="rloo"``), else the
straight-through Gumbel-softmax gradient (``estimator="straight-through"``; docs/search.md says why it is not
the default).

Files in ``out``: ``checkpoint.pt`` (tensors and state dicts only, plus the run's metadata as a JSON
string; read back with ``torch.load(weights_only=True)``) and ``checkpoint.json`` (the same metadata,
readable) after every epoch; at the end ``arch-best.yaml`` (the most likely architecture) and
``arch-sample-K.yaml`` (K distinct samples of the final distribution), ``theta_history.json``,
``theta.png`` and ``summary.json``.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fbprof.errors import InputError
from fbprof.fileio import atomic_write_bytes, atomic_write_text
from fbprof.lut.table import Lut, read_lut
from fbprof.space import Space, load_space

__all__ = [
    "SearchConfig", "SearchListener", "SearchResult", "ArchResult", "run_search", "resolve_lut_space", "lut_spaces",
    "CHECKPOINT", "CHECKPOINT_META", "searched_calibration", "search_latency", "open_checkpoint", "restore_checkpoint", "schedule", "epoch_batches", "arch_loss", "recalibrated_eval",
    "sample_loss", "arch_step", "rloo_loss", "rloo_step", "path_log_prob", "theta_gradient", "ESTIMATORS", "load_checkpoint",
]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"
MODES = ("hard", "soft")
#: how a hard-mode search estimates the architecture gradient (docs/search.md, "Architecture gradient")
ESTIMATORS = ("rloo", "straight-through")
#: fields that may change between a run and its --resume
#: target mode: temperature of the near-one-hot softmax(theta / PEAK_TAU) whose latency stands for the most
#: likely architecture's in the second penalty term
PEAK_TAU = 0.1
#: settings added after checkpoints were first written, with the value every older checkpoint was made with
LEGACY_SETTINGS = {"estimator": "straight-through", "theta_paths": 4, "calibrated": False}
RESUMABLE_CHANGES = {"epochs", "out", "resume", "device", "samples", "max_steps", "auto_w_steps"}
#: default length of a search (``--epochs`` not given): at least this many weight steps in all ...
AUTO_W_STEPS = 640
#: ... and at least this many epochs (CIFAR-10: 10 passes of 312 steps of 128, 5 of them warm-up; the digits:
#: 10 epochs of 64 steps). Measured on CIFAR-10 (held-out accuracy of the most likely path): 5 epochs of batch 32
#: 0.464, 10 of batch 128 0.475, the same with a 4x4 final map (``min_feature``) 0.506 (docs/search.md, "Schedule")
MIN_EPOCHS = 10
#: an epoch has at least this many weight steps (small datasets are cycled): a per-epoch schedule of tau,
#: warm-up and checkpoints then means the same on 1,000 images as on 50,000
MIN_EPOCH_W_STEPS = 64
#: per-epoch evaluation of the most likely path: BN statistics from this many weight-split images, accuracy and
#: CE on at most this many architecture-split images
EVAL_CAL_IMAGES = 512
EVAL_THETA_IMAGES = 2000


@dataclass
class SearchConfig:
    lut: str
    out: str = "search-out"
    space: str | None = None  # default: the (first) space recorded in the LUT header
    lut_resolution: int | None = None  # default: the resolution recorded in the LUT header for that space
    width: float | None = None  # default: likewise
    head_channels: int | None = None  # default: the space's first head width
    data: str = "digits"
    limit_per_class: int | None = None  # use only the first N training images of every class (quick runs)
    resolution: int = 32  # proxy training resolution
    min_feature: int = 4  # stride adaptation: smallest final feature map of the proxy network (2: cheaper, less accurate)
    test_fraction: float = 0.2
    epochs: int | None = None  # default: enough epochs for AUTO_W_STEPS weight steps, at least MIN_EPOCHS
    warmup_epochs: int | None = None  # default: half the epochs (at least 1)
    batch_size: int = 128
    w_lr: float = 0.05
    w_momentum: float = 0.9
    w_weight_decay: float = 1e-4
    theta_lr: float = 0.05
    theta_weight_decay: float = 5e-4
    tau0: float = 5.0
    tau_decay: float = 0.045
    alpha: float = 0.2
    beta: float = 0.6
    target_ms: float | None = None
    target_weight: float = 2.0
    mode: str = "hard"
    estimator: str = "rloo"  # hard mode: rloo (score function, leave-one-out baseline) or straight-through
    theta_paths: int = 4  # rloo: paths sampled per architecture step, all on the same batch
    samples: int = 5
    seed: int = 0
    device: str = "cpu"
    max_steps: int | None = None  # cap on steps per phase per epoch (quick runs, tests)
    min_epoch_steps: int = MIN_EPOCH_W_STEPS  # small datasets are cycled until an epoch has this many w steps
    auto_w_steps: int = AUTO_W_STEPS  # --epochs not given: about this many weight steps in all
    resume: bool = False
    shared_init: bool = True  # shape-changing layers' candidates start as one function (see supernet.py)
    calibrated: bool = False  # latency term and predictions from the LUT's stored calibration (docs/search.md)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.estimator not in ESTIMATORS:
            raise InputError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.theta_paths < 2:
            raise InputError(f"--theta-paths must be >= 2 (the leave-one-out baseline needs two), got {self.theta_paths}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InputError(f"--device must be cpu or cuda, got {self.device!r}")
        for name in ("epochs", "batch_size", "resolution", "min_feature", "limit_per_class", "min_epoch_steps",
                     "auto_w_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs:
            raise InputError(f"warm-up epochs must be >= 0, got {self.warmup_epochs}")
        if self.batch_size < 2:
            raise InputError("batch size must be >= 2 (BatchNorm in training mode)")
        if self.samples < 0:
            raise InputError(f"samples must be >= 0, got {self.samples}")
        # numbers: finite, and > 0 where a zero means nothing (a zero beta, target weight or tau decay is a choice:
        # accuracy only, no target penalty, a constant temperature)
        for flag, name, zero_ok in (("--lr", "w_lr", False), ("--theta-lr", "theta_lr", False), ("--tau0", "tau0", False),
                                    ("--alpha", "alpha", False), ("--target-ms", "target_ms", False),
                                    ("--width", "width", False), ("--beta", "beta", True),
                                    ("--target-weight", "target_weight", True), ("--tau-decay", "tau_decay", True)):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
                raise InputError(f"{flag} {v!r}: expected a finite number {'>= 0' if zero_ok else '> 0'}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError("max steps must be >= 1")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out}: is a file; the search writes a folder there", hint="pick another --out")

    def tau(self, epoch: int) -> float:
        return self.tau0 * math.exp(-self.tau_decay * epoch)

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE_CHANGES}


class SearchListener:
    """Progress events of :func:`run_search` (every method optional)."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_note(self, message: str) -> None: ...
    def on_epoch_start(self, epoch: int, epochs: int, tau: float, steps: dict[str, int]) -> None: ...
    def on_step(self, phase: str, step: int, steps: int, ce: float, latency_us: float) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...
    def on_finish(self, result: "SearchResult") -> None: ...


@dataclass
class ArchResult:
    label: str  # "best" or "sample-K"
    name: str
    blocks: list[str]
    path: str
    predicted_us: float
    macs: int
    params: int
    log_prob: float
    warnings: list[str] = field(default_factory=list)
    channels: list[int] | None = None  # channel spaces (FBNetV2): the output width per searched layer
    resolution: int | None = None  # channel spaces: the searched input resolution


@dataclass
class SearchResult:
    out: Path
    archs: list[ArchResult]
    history: list[dict[str, Any]]
    wall_s: float  # seconds of search (all epochs, resumed ones included)
    lut_space: str
    proxy: dict[str, Any]
    heldout_accuracy: float | None
    warnings: list[str]
    target_us: float | None
    heldout_ce: float | None = None

    @property
    def best(self) -> ArchResult:
        return self.archs[0]


# --------------------------------------------------------------------------------------------------
def lut_spaces(lut: Lut) -> list[tuple[str, int, float]]:
    """(name, resolution, width) of every space in the LUT header's ``spaces`` (strictly parsed)."""
    return [(t.name, t.resolution, t.width) for t in lut.space_tags()]


def resolve_lut_space(lut: Lut, space: str | None, resolution: int | None, width: float | None) -> Space:
    """The space at the LUT's resolution/width: explicit values first, then the LUT header's record."""
    entries = lut_spaces(lut)
    if space is None:
        if not entries:
            raise InputError(f"{lut.path}: the header names no space; give --space (and --lut-resolution)")
        space = entries[0][0]
    probe = load_space(space)  # resolves a name or a file at its own defaults, to learn its name
    match = [e for e in entries if e[0] in (probe.name, space)]
    if resolution is None and match:
        resolution = match[0][1]
    if width is None and match:
        width = match[0][2]
    if str(space).endswith((".yaml", ".yml", ".json")) or "/" in str(space):
        space = str(Path(space).resolve())  # architecture files then name the space file unambiguously
    return load_space(space, resolution, width)


def _device(cfg: SearchConfig, local_rank: int):
    import torch

    if cfg.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available to this torch build")
        return torch.device(f"cuda:{local_rank}" if cfg.device == "cuda" else cfg.device)
    return torch.device("cpu")


class _Dist:
    """Data parallel over torchrun's processes: same samples on every rank, gradients averaged."""

    def __init__(self, cfg: SearchConfig) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average_grads(self, params) -> None:
        if not self.enabled:
            return
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        i = 0
        for g in grads:
            g.copy_(flat[i:i + g.numel()].view_as(g))
            i += g.numel()

    def shard(self, idx):
        if not self.enabled:
            return idx
        n = len(idx) // self.world
        return idx[self.rank * n:(self.rank + 1) * n]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def _save_checkpoint(out: Path, state: dict, meta: dict) -> None:
    import torch

    buf = io.BytesIO()
    torch.save({**state, "meta_json": json.dumps(meta)}, buf)
    atomic_write_bytes(out / CHECKPOINT, buf.getvalue())
    atomic_write_text(out / CHECKPOINT_META, json.dumps(meta, indent=1) + "\n")


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state, metadata) of a search checkpoint (tensors only: ``torch.load(weights_only=True)``)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(state.pop("meta_json"))
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same user problem
        raise InputError(f"{path}: cannot read the checkpoint: {e}", hint="delete it to start the search over") from None
    return state, meta


def _probs(theta, mask) -> list[list[float]]:
    import torch

    p = torch.softmax(theta.detach().cpu().masked_fill(~mask, float("-inf")), dim=-1)
    return [[round(float(v), 6) for v, ok in zip(row, mrow) if ok] for row, mrow in zip(p, mask)]


# --------------------------------------------------------------------------------------------------
def searched_calibration(cfg: SearchConfig, lut: Lut):
    """The LUT's stored calibration when ``cfg.calibrated`` (None otherwise); a LUT without a current one is
    refused before any training. Shared by the FBNet and the DMaskingNAS search."""
    if not cfg.calibrated:
        return None
    from fbprof.lut.calibration import calibration_of

    calibration = calibration_of(lut)
    if calibration is None:
        raise InputError(f"{cfg.lut}: --calibrated: the LUT has no calibration, or its rows changed since it was "
                         "fitted", hint="fit one with `fbprof verify --lut FILE` (it stores the calibration in the LUT)")
    return calibration


def search_latency(cfg: SearchConfig, calibration, lo_us: float, negative: bool, meta_prev: dict | None) -> str:
    """What the latency term reads (``info.latency``, kept in the checkpoint): the calibration's description or raw
    LUT sums. Refuses a calibration whose cheapest architecture (``lo_us``) is not positive or that gives negative
    costs, and a resume of a checkpoint searched with another latency."""
    latency = calibration.describe() if calibration is not None else "raw LUT sums"
    if calibration is not None and (lo_us <= 1.0 or negative):
        raise InputError(f"{cfg.lut}: --calibrated: the stored calibration ({latency}) gives a cheapest architecture of "
                         f"{lo_us:.1f} us or negative per-op costs: not a latency the loss can take the log of",
                         hint="search without --calibrated, or re-fit the calibration with `fbprof verify`")
    if meta_prev is not None and meta_prev.get("latency", "raw LUT sums") != latency:
        raise InputError(f"{Path(cfg.out) / CHECKPOINT} was searched with latency {meta_prev.get('latency', 'raw LUT sums')!r}, "
                         f"now {latency!r} (the LUT's calibration changed)",
                         hint="resume with the LUT it was made with, or use another --out")
    return latency


def run_search(cfg: SearchConfig, listener: SearchListener | None = None) -> SearchResult:
    """Run (or resume) a search; returns the architectures written and the history."""
    import torch
    from torch import nn

    from fbprof.lut.predict import predict, require_space
    from fbprof.search.data import load_data, stratified_split
    from fbprof.search.loss import relaxed_latency
    from fbprof.search.supernet import (MEMORY_FORMAT, Supernet, expected_latency, latency_table, log_prob,
                                        proxy_space, sample_gumbel, to_device)
    from fbprof.search.train import lr_at

    cfg.validate()
    dist = _Dist(cfg)
    lis = listener if (listener is not None and dist.main) else SearchListener()
    out = Path(cfg.out)

    # ---- LUT and space: every problem before any training -------------------------------------
    lut = read_lut(cfg.lut)
    if "grid" in lut.header:  # a grid LUT is built for a channel space (FBNetV2): the DMaskingNAS search
        from fbprof.search.dmasking import run_dmasking

        return run_dmasking(cfg, listener, lut)
    lut_space = resolve_lut_space(lut, cfg.space, cfg.lut_resolution, cfg.width)
    require_space(lut, lut_space)
    head = cfg.head_channels if cfg.head_channels is not None else lut_space.head_channels[0]
    lut_space.tail_specs(head)  # validates
    warnings = [f"LUT row {r.key} is {r.status}" + (f": {r.note}" if r.note else "")
                for r in lut.not_ok(lut_space.all_specs())]
    calibration = searched_calibration(cfg, lut)
    lat, mask, fixed_us, _keys = latency_table(lut_space, lut, head, calibration)
    target_us = cfg.target_ms * 1000.0 if cfg.target_ms is not None else None

    ckpt = out / CHECKPOINT
    state_prev, meta_prev = open_checkpoint(cfg)

    device = _device(cfg, dist.local_rank)
    data = load_data(cfg.data, cfg.resolution, lut_space.in_channels, cfg.test_fraction,
                     limit_per_class=cfg.limit_per_class, note=lis.on_note)
    plan = proxy_space(lut_space, cfg.resolution, data.num_classes, cfg.min_feature)
    proxy = plan.space
    w_idx, t_idx = stratified_split(data.y_train, 0.2, cfg.seed)
    if len(w_idx) < 2 or len(t_idx) < 2:
        raise InputError(f"{data.describe()}: too few images to split 80/20 into weight and architecture sets")

    # ---- schedule: epochs of at least MIN_EPOCH_W_STEPS weight steps; by default AUTO_W_STEPS in all ----
    reps, w_steps, t_reps, epochs, warmup = schedule(cfg, dist, w_idx, t_idx, meta_prev)
    lo_us = fixed_us + float(lat.masked_fill(~mask, float("inf")).min(dim=1).values.sum())
    hi_us = fixed_us + float(lat.masked_fill(~mask, float("-inf")).max(dim=1).values.sum())
    latency = search_latency(cfg, calibration, lo_us, bool((lat.masked_fill(~mask, 0.0) < 0).any()), meta_prev)

    torch.manual_seed(cfg.seed)
    net = Supernet(proxy, head, shared_init=cfg.shared_init, seed=cfg.seed).to(device, memory_format=MEMORY_FORMAT)
    theta = torch.zeros(lat.shape, device=device, requires_grad=True)
    lat_d, mask_d = lat.to(device), mask.to(device)
    opt_w = torch.optim.SGD(net.parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)
    opt_t = torch.optim.Adam([theta], lr=cfg.theta_lr, weight_decay=cfg.theta_weight_decay)
    history, start = restore_checkpoint(state_prev, meta_prev, net, {"theta": theta}, opt_w, opt_t)
    if start:
        lis.on_note(f"resumed from {ckpt}: {start} of {epochs} epochs done")

    hard = cfg.mode == "hard"
    rloo = hard and cfg.estimator == "rloo"
    ce_fn = nn.CrossEntropyLoss()
    info = {
        "lut": str(cfg.lut), "device_name": lut.header.get("device", "?"), "backend": lut.header.get("backend", "?"),
        "lut_space": f"{lut_space.name}@{lut_space.resolution}/w{lut_space.width:g}",
        "proxy": f"{proxy.resolution}px, final {proxy.final_hw[0]}x{proxy.final_hw[1]}"
                 + (f", strides of {', '.join(plan.dropped)} set to 1" if plan.dropped else ""),
        "data": data.describe(), "layers": len(lut_space.layers), "mode": cfg.mode,
        "theta_gradient": theta_gradient(cfg),
        "w_images": len(w_idx), "theta_images": len(t_idx), "epochs": epochs, "warmup_epochs": warmup,
        "w_steps_per_epoch": w_steps if not cfg.max_steps else min(w_steps, cfg.max_steps),
        "start_epoch": start, "world_size": dist.world, "target_us": target_us, "fixed_us": fixed_us,
        "lut_range_us": [lo_us, hi_us], "data_notes": list(data.notes), "shared_init_candidates": net.shared_init,
        "latency": latency,
    }
    lis.on_start(info)
    if warnings:  # one line, not a scroll: every row is listed in summary.json's "warnings"
        shown = "; ".join(warnings[:2]) + (f"; ... ({len(warnings) - 2} more)" if len(warnings) > 2 else "")
        lis.on_note(f"warning: {len(warnings)} LUT row(s) of this space are not ok ({shown}); "
                    f"all are listed in summary.json under \"warnings\"")

    def phase_batches(idx, epoch: int, salt: int, passes: int) -> list:
        return epoch_batches(cfg, dist, idx, epoch, salt, passes)

    w_params = list(net.parameters())
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        tau = cfg.tau(epoch)
        lr = cfg.w_lr
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        wb = phase_batches(w_idx, epoch, 1, reps)
        tb = phase_batches(t_idx, epoch, 2, t_reps) if epoch >= warmup else []
        lis.on_epoch_start(epoch + 1, epochs, tau, {"w": len(wb), "theta": len(tb)})

        # ---- weights ----
        net.train()
        w_ce, w_lat = [], []
        for si, b in enumerate(wb):
            lr = lr_at(cfg.w_lr, epoch * len(wb) + si, epochs * len(wb), len(wb))
            for gr in opt_w.param_groups:
                gr["lr"] = lr
            x, y = to_device(data.x_train[b], device), data.y_train[b].to(device)
            with torch.no_grad():
                m, index = sample_gumbel(theta, mask_d, tau, hard, gen)
            logits = net(x, index=index) if hard else net(x, weights=m)
            ce = ce_fn(logits, y)
            opt_w.zero_grad(set_to_none=True)
            ce.backward()
            dist.average_grads(w_params)
            opt_w.step()
            lat_now = float(relaxed_latency(m, lat_d, fixed_us))
            w_ce.append(float(ce.detach()))
            w_lat.append(lat_now)
            lis.on_step("w", si + 1, len(wb), w_ce[-1], lat_now)

        # ---- architecture parameters ----
        t_ce, t_loss, t_lat = [], [], []
        if tb:
            for p in w_params:
                p.requires_grad_(False)
            for si, b in enumerate(tb):
                x, y = to_device(data.x_train[b], device), data.y_train[b].to(device)
                peak_us = None
                if target_us is not None:
                    peak = torch.softmax((theta / PEAK_TAU).masked_fill(~mask_d, float("-inf")), dim=-1)
                    peak_us = relaxed_latency(peak, lat_d, fixed_us)
                loss, loss_value, ce, lat_us = arch_step(
                    cfg, lambda: sample_gumbel(theta, mask_d, tau, hard, gen),
                    # rloo runs the sampled path as is; straight-through scales it by m (value 1) for the gradient
                    lambda m, index: (ce_fn(net(x, weights=None if rloo else m, index=index if hard else None), y),
                                      relaxed_latency(m, lat_d, fixed_us)),
                    lambda index: path_log_prob(theta, mask_d, index), peak_us, target_us)
                opt_t.zero_grad(set_to_none=True)
                loss.backward()
                dist.average_grads([theta])
                opt_t.step()
                t_ce.append(float(ce.detach()))
                t_loss.append(float(loss_value.detach()))
                t_lat.append(float(lat_us.detach()))
                lis.on_step("theta", si + 1, len(tb), t_ce[-1], t_lat[-1])
            for p in w_params:
                p.requires_grad_(True)

        th = theta.detach().cpu()
        best_index = torch.argmax(th.masked_fill(~mask, float("-inf")), dim=-1).tolist()
        # the most likely path, BN recalibrated, on (part of) the architecture split: never the held-out images
        ev_ce, ev_acc = evaluate_path(net, best_index, data.x_train[w_idx[:EVAL_CAL_IMAGES]],
                                      data.x_train[t_idx[:EVAL_THETA_IMAGES]], data.y_train[t_idx[:EVAL_THETA_IMAGES]],
                                      device, cfg.batch_size)
        record = {
            "epoch": epoch + 1,
            "tau": tau,
            "lr_w": lr,
            "phase": "w" if not tb else "w+theta",
            "w_steps": len(wb),
            "theta_steps": len(tb),
            "w_ce": _mean(w_ce),
            "theta_ce": _mean(t_ce),
            "theta_loss": _mean(t_loss),
            "theta_split_ce_most_likely": ev_ce,
            "theta_split_accuracy_most_likely": ev_acc,
            "theta_entropy_nats": theta_entropy(th, mask),
            "sampled_latency_us": _mean(t_lat or w_lat),
            "expected_latency_us": expected_latency(th, mask, lat, fixed_us),
            "most_likely_latency_us": float(fixed_us + sum(float(lat[li, i]) for li, i in enumerate(best_index))),
            "seconds": time.perf_counter() - t0,
            "probs": _probs(th, mask),
        }
        history.append(record)
        if dist.main:
            meta = {"epoch_done": epoch + 1, "epochs": epochs, "config": cfg.identity(), "history": history,
                    "latency": latency}
            state = {"supernet": net.state_dict(), "theta": th.clone(), "opt_w": opt_w.state_dict(),
                     "opt_theta": opt_t.state_dict()}
            _save_checkpoint(out, state, meta)
        lis.on_epoch_end(record)
    dist.barrier()

    # ---- results ----------------------------------------------------------------------------------
    th = theta.detach().cpu()
    masked = th.masked_fill(~mask, float("-inf"))
    best_index = torch.argmax(masked, dim=-1).tolist()
    picks: list[tuple[str, list[int]]] = [("best", best_index)]
    seen = {tuple(best_index)}
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    probs = torch.softmax(masked, dim=-1)
    tries = 0
    while len(picks) < cfg.samples + 1 and tries < 50 * max(1, cfg.samples):
        tries += 1
        idx = torch.multinomial(probs, 1, generator=g).flatten().tolist()
        if tuple(idx) in seen:
            continue
        seen.add(tuple(idx))
        picks.append((f"sample-{len(picks)}", idx))
    if len(picks) < cfg.samples + 1:
        lis.on_note(f"only {len(picks) - 1} distinct samples besides the most likely architecture "
                    "(the distribution is concentrated)")

    heldout = None
    archs: list[ArchResult] = []
    run_name = out.name or "search"
    for label, idx in picks:
        blocks = [layer.candidates[i] for layer, i in zip(lut_space.layers, idx)]
        arch = lut_space.arch(blocks, head, name=f"{run_name}-{label}")
        path = out / f"arch-{label}.yaml"
        pred = predict(arch, lut)
        if dist.main:
            arch.dump(path)
        archs.append(ArchResult(label, arch.name, blocks, str(path), pred.best_us if cfg.calibrated else pred.total_us,
                                arch.macs(), arch.params(),
                                log_prob(th, mask, idx), pred.warnings))
    heldout_ce = None
    if len(data.y_test):
        heldout_ce, heldout = evaluate_path(net, best_index, data.x_train[w_idx[:EVAL_CAL_IMAGES]], data.x_test,
                                            data.y_test, device, cfg.batch_size)
    wall = sum(r["seconds"] for r in history)
    result = SearchResult(out, archs, history, wall, info["lut_space"], info, heldout, warnings, target_us, heldout_ce)
    if dist.main:
        _write_outputs(result, cfg, lut_space, lat, mask, fixed_us)
    lis.on_finish(result)
    return result


def evaluate_path(net, index: list[int], x_cal, x_eval, y_eval, device, batch_size: int = 32) -> tuple[float, float]:
    """(CE, accuracy) of one path of the supernet on ``x_eval``, after re-estimating the BatchNorm statistics of
    that path (and only that path) on ``x_cal``: the running statistics a supernet keeps are shared by every
    sampled path, so they do not describe any one of them. Leaves the supernet in training mode."""
    path_modules = [net.stem, net.head, net.fc] + [ops[i] for ops, i in zip(net.choices, index)]
    return recalibrated_eval(net, path_modules, lambda x: net(x, index=index), x_cal, x_eval, y_eval, device,
                             batch_size)


def recalibrated_eval(net, path_modules, forward, x_cal, x_eval, y_eval, device,
                      batch_size: int = 32) -> tuple[float, float]:
    """(CE, accuracy) of ``forward`` (one path of a supernet ``net``) on ``x_eval`` after re-estimating the
    BatchNorm statistics of ``path_modules`` on ``x_cal`` (cumulative average). Used by the FBNet DNAS
    (:func:`evaluate_path`) and the DMaskingNAS search (:mod:`fbprof.search.dmasking`)."""
    import torch
    from torch import nn

    from fbprof.search.supernet import to_device

    bns = [m for mod in path_modules for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        net.train()
        bs = max(2, batch_size)
        for i in range(0, len(x_cal), bs):
            if len(x_cal) - i >= 2:
                forward(to_device(x_cal[i:i + bs], device))
        for m, mom in zip(bns, saved):
            m.momentum = mom
        net.eval()
        ce_sum, correct = 0.0, 0
        for i in range(0, len(y_eval), 256):
            out = forward(to_device(x_eval[i:i + 256], device)).float().cpu()
            y = y_eval[i:i + 256]
            ce_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(dim=1) == y).sum())
    net.train()
    n = max(1, len(y_eval))
    return ce_sum / n, correct / n


# --------------------------------------------------------------------------------------------------
# pieces shared with the DMaskingNAS search (fbprof/search/dmasking.py)
def open_checkpoint(cfg: SearchConfig) -> tuple[dict | None, dict | None]:
    """(state, meta) of ``cfg.out``'s checkpoint when resuming (None, None for a new run); refuses to overwrite
    one, and to resume a run made with other settings."""
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not cfg.resume:
        raise InputError(f"{out} already holds a search checkpoint ({ckpt})",
                         hint="add --resume to continue it, or choose another --out (or delete the folder)")
    if not (cfg.resume and ckpt.exists()):
        return None, None
    state_prev, meta_prev = load_checkpoint(ckpt)
    # a checkpoint from before a setting existed was made with that setting's old behaviour
    old = {**LEGACY_SETTINGS, **meta_prev.get("config", {})}
    diffs = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in cfg.identity().items() if old.get(k) != v]
    if diffs:
        raise InputError(f"{ckpt} was made by a different search; cannot resume with these settings:\n  "
                         + "\n  ".join(diffs), hint="use the same options (only --epochs may grow) or another --out")
    return state_prev, meta_prev


def schedule(cfg: SearchConfig, dist, w_idx, t_idx, resumed: dict | None = None) -> tuple[int, int, int, int, int]:
    """(passes over the weight split per epoch, weight steps per epoch as run, passes over the architecture split
    per epoch, epochs, warm-up epochs): epochs of at least ``min_epoch_steps`` full batches of weight steps, theta
    about 1/4 of them in whole passes; by default at least ``auto_w_steps`` full weight batches in all and at least
    MIN_EPOCHS epochs. A pass also runs its last, partial batch (:func:`fbprof.search.train.batches`), which the
    steps per epoch returned include (the digits at batch 128: 8 passes of 9 batches, 72 steps). ``resumed``: the
    checkpoint's metadata of a resumed run, whose number of epochs stands unless ``--epochs`` is given (so that
    a change of the defaults does not re-plan a run half done)."""
    n_w, n_t = len(dist.shard(w_idx)), len(dist.shard(t_idx))
    per_pass = max(1, n_w // cfg.batch_size)  # full batches
    reps = max(1, math.ceil(cfg.min_epoch_steps / per_pass))  # passes over the weight split per epoch
    full = per_pass * reps
    t_reps = max(1, round(full / 4 / max(1, n_t // cfg.batch_size)))  # theta: ~1/4 of w's steps
    epochs = cfg.epochs if cfg.epochs is not None else max(MIN_EPOCHS, math.ceil(cfg.auto_w_steps / full))
    if resumed is not None and cfg.epochs is None and resumed.get("epochs"):
        epochs = int(resumed["epochs"])
    warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else max(1, epochs // 2)
    run = (n_w // cfg.batch_size + (1 if n_w % cfg.batch_size >= 2 else 0)) * reps
    return reps, run, t_reps, epochs, warmup


def epoch_batches(cfg: SearchConfig, dist, idx, epoch: int, salt: int, passes: int) -> list:
    """The index batches of one phase of one epoch (``passes`` shuffles of ``idx``, capped at ``max_steps``)."""
    import torch

    from fbprof.search.train import batches

    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 101 + salt)
    bs = []
    for _ in range(passes):
        sel = idx[torch.randperm(len(idx), generator=g)]
        sel = dist.shard(sel)
        bs += [sel[b] for b in batches(len(sel), cfg.batch_size, g)]
    return bs[: cfg.max_steps] if cfg.max_steps else bs


def restore_checkpoint(state, meta, net, thetas: dict, opt_w, opt_t) -> tuple[list[dict[str, Any]], int]:
    """Load a checkpoint (``open_checkpoint``'s state and meta; both None: nothing to resume) into the
    supernet, the architecture parameters (``thetas``: the state's key -> tensor) and both optimisers;
    returns (history so far, epochs done)."""
    import torch

    if state is None or meta is None:
        return [], 0
    net.load_state_dict(state["supernet"])
    with torch.no_grad():
        for name, t in thetas.items():
            t.copy_(state[name].to(t.device))
    opt_w.load_state_dict(state["opt_w"])
    opt_t.load_state_dict(state["opt_theta"])
    return list(meta.get("history", [])), int(meta["epoch_done"])


def arch_loss(cfg: SearchConfig, ce, lat_us, peak_us, target_us: float | None):
    """The architecture step's loss: :func:`sample_loss` (FBNet's ``CE * alpha * log(LAT)^beta``, or with a target
    ``CE + lambda * log(LAT/T)^2``) plus, with a target, ``lambda * log(LAT_peak/T)^2`` (``peak_us``: the latency
    at softmax(theta / PEAK_TAU))."""
    import torch

    loss = sample_loss(cfg, ce, lat_us, target_us)
    if target_us is not None:
        loss = loss + cfg.target_weight * torch.log(peak_us / target_us) ** 2
    return loss


def sample_loss(cfg: SearchConfig, ce, lat_us, target_us: float | None):
    """The per-architecture part of the architecture loss: FBNet's ``CE * alpha * log(LAT)^beta``, or
    ``CE + lambda * log(LAT/T)^2`` with a target (elementwise over sampled paths)."""
    from fbprof.search.loss import fbnet_loss, target_loss

    if target_us is not None:
        return target_loss(ce, lat_us, target_us, cfg.target_weight)
    return fbnet_loss(ce, lat_us, cfg.alpha, cfg.beta)


def path_log_prob(theta, mask, index: list[int]):
    """``log p(path)`` under softmax(theta) per layer, differentiable in theta."""
    import torch

    logp = torch.log_softmax(theta.masked_fill(~mask, float("-inf")), dim=-1)
    return logp[torch.arange(len(index), device=theta.device), torch.tensor(index, device=theta.device)].sum()


def rloo_loss(cfg: SearchConfig, ces, lats, logps, peak_us, target_us: float | None):
    """(surrogate, value) of an architecture step from K paths sampled from softmax(theta) and run on the same
    batch: ``ces``, ``lats`` (K, no gradient), ``logps`` (K, differentiable ``log p(path)``). The surrogate's
    gradient is the score-function estimate of the gradient of ``E[L(path)]`` with a leave-one-out baseline
    (``L_k - mean of the other paths' L``): unbiased, every candidate compared through the loss itself (CE and
    latency alike, in the loss's own proportions), and the batch's difficulty cancels. With a target the peak
    term is added as is (a differentiable function of theta). ``value``: the mean sampled loss (reported)."""
    import torch

    losses = sample_loss(cfg, ces, lats, target_us).detach()
    k = losses.numel()
    adv = losses - (losses.sum() - losses) / (k - 1)
    surrogate = (adv * logps).sum() / k
    value = losses.mean()
    if target_us is not None:
        peak = cfg.target_weight * torch.log(peak_us / target_us) ** 2
        surrogate, value = surrogate + peak, value + peak.detach()
    return surrogate, value


def rloo_step(cfg: SearchConfig, sample, evaluate, log_prob, peak_us, target_us: float | None):
    """One rloo architecture step's (surrogate, value, mean CE, mean latency): ``cfg.theta_paths`` times
    ``sample()`` -> (one-hot weights, index) and ``evaluate(weights, index)`` -> (CE, latency) without gradients,
    ``log_prob(index)`` with; then :func:`rloo_loss`. Shared by both searches (and the step benchmark)."""
    import torch

    ces, lats, logps = [], [], []
    for _ in range(cfg.theta_paths):
        with torch.no_grad():
            weights, index = sample()
            ce, lat = evaluate(weights, index)
        ces.append(ce)
        lats.append(lat)
        logps.append(log_prob(index))
    ces_t, lats_t = torch.stack(ces), torch.stack(lats)
    loss, value = rloo_loss(cfg, ces_t, lats_t, torch.stack(logps), peak_us, target_us)
    return loss, value, ces_t.mean(), lats_t.mean()


def arch_step(cfg: SearchConfig, sample, evaluate, log_prob, peak_us, target_us: float | None):
    """One architecture step's (loss to back-propagate, value, CE, latency), the same for both searches: with the
    rloo estimator :func:`rloo_step` (``sample()`` then draws hard paths); otherwise one ``sample()`` ->
    (weights, index) evaluated with gradients (straight-through in hard mode, pathwise in soft mode) and
    :func:`arch_loss`."""
    if cfg.mode == "hard" and cfg.estimator == "rloo":
        return rloo_step(cfg, sample, evaluate, log_prob, peak_us, target_us)
    weights, index = sample()
    ce, lat_us = evaluate(weights, index)
    loss = arch_loss(cfg, ce, lat_us, peak_us, target_us)
    return loss, loss, ce, lat_us


def theta_gradient(cfg: SearchConfig) -> str:
    """How theta's gradient is estimated, in words (reported at the start and in summary.json)."""
    if cfg.mode != "hard":
        return "soft Gumbel-softmax weights (every candidate runs; pathwise gradient)"
    if cfg.estimator == "rloo":
        return f"score function, {cfg.theta_paths} paths per step on one batch, leave-one-out baseline"
    return "straight-through Gumbel-softmax (one path per step)"


def theta_entropy(theta, mask) -> float:
    """Mean over layers of the entropy (nats) of softmax(theta_l); ln(9) = 2.197 for 9 uniform candidates."""
    import torch

    logp = torch.log_softmax(theta.masked_fill(~mask, float("-inf")), dim=-1)
    p = logp.exp()
    return float((-(p * logp.masked_fill(~mask, 0.0)).sum(dim=-1)).mean())


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _write_outputs(result: SearchResult, cfg: SearchConfig, lut_space: Space, lat, mask, fixed_us: float) -> None:
    from fbprof.search.plot import plot_theta_history

    out = result.out
    layers = [{"name": layer.name, "shape": f"{layer.cin}x{layer.h}x{layer.w}->{layer.cout} s{layer.stride}",
               "candidates": list(layer.candidates),
               "latency_us": [round(float(lat[li, ci]), 3) for ci in range(len(layer.candidates))]}
              for li, layer in enumerate(lut_space.layers)]
    hist = {
        "schema": 1,
        "space": result.lut_space,
        "fixed_latency_us": round(fixed_us, 3),
        "layers": layers,
        "epochs": [{k: v for k, v in r.items()} for r in result.history],
    }
    atomic_write_text(out / "theta_history.json", json.dumps(hist, indent=1) + "\n")
    plot_theta_history(hist, out / "theta.png")
    summary = {
        "schema": 1,
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "search": result.proxy,
        "wall_s": round(result.wall_s, 2),
        "epochs": result.proxy.get("epochs"),
        "warmup_epochs": result.proxy.get("warmup_epochs"),
        "lut_range_us": [round(v, 3) for v in result.proxy.get("lut_range_us", [])],
        # the most likely architecture with the supernet's weights, BN statistics of its path re-estimated on
        # weight-split images, on the held-out images (never used for w or theta)
        "heldout_accuracy_supernet": result.heldout_accuracy,
        "heldout_ce_supernet": result.heldout_ce,
        "per_epoch": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items() if k != "probs"}
                      for r in result.history],
        "target_us": result.target_us,
        "warnings": result.warnings,
        "architectures": [
            {"label": a.label, "name": a.name, "file": Path(a.path).name, "predicted_us": round(a.predicted_us, 3),
             "macs": a.macs, "params": a.params, "log_prob": round(a.log_prob, 4), "blocks": a.blocks}
            for a in result.archs
        ],
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
