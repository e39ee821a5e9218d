"""FBNetV2's DMaskingNAS on a grid LUT: channel, block and resolution search (``fbprof search --space fbnetv2``).

:func:`run_dmasking` is the search; :func:`fbprof.search.dnas.run_search` hands over to it when the LUT is a grid
LUT (header ``grid``, built with ``fbprof measure --space fbnetv2``). It reuses the FBNet search's schedule,
losses, checkpointing and BN recalibration (:mod:`fbprof.search.dnas`); only the supernet, the architecture
parameters and the latency term differ. See docs/search.md ("FBNetV2: channels and resolution").

The supernet (:class:`MaskedSupernet`):

* every searched layer is instantiated **once per block type, at its widest shape** (input: the widest output
  of the layer before; output: the widest of the layer's widths). Its output is multiplied by the channel mask
  ``M_l = sum_i g_l,i * mask_i`` where ``mask_i`` keeps the first ``c_i`` channels and ``g_l`` are the
  Gumbel-softmax weights over the layer's width options -- one convolution whatever the number of options;
* the **block type** of a layer (where the space offers several) is chosen as in FBNet's DNAS: ``hard`` runs the
  sampled block only, ``soft`` sums every block weighted by its Gumbel-softmax weight;
* the stem's width is searched the same way (a mask on the stem's output);
* the **input resolution**: the proxy network always runs at the largest proxy size ``R``; resolution option
  ``r`` is the image resampled to ``R * r / r_max`` pixels (bilinear, antialiased) and back up to ``R``
  (nearest), and the input is ``sum_k rho_k * x_k`` with Gumbel-softmax weights ``rho``. This is a spatial mask
  on the *information* of the largest input (what a network at resolution r can see), not the paper's
  subsample-and-dilate construction: feature maps keep the largest size, so the training cost does not fall
  with the resolution, while the latency term uses every option's own shapes.

The latency term (:class:`LatencyModel`) propagates effective shapes: the expected width of layer l,
``E[c_l] = sum_i g_l,i c_l,i``, is the input width of layer l+1; each inverted-residual block's latency is
``GridLut.interpolate(block, stride, h_r, E[c_l-1], E[c_l])`` (bilinear in cin x cout, differentiable in both),
weighted by the block's weight; skips (measured exactly at every shape) are ``g_l-1^T LUT g_l``; stem and head
read their exact rows weighted by the stem's / the last layer's width weights; everything is computed per
resolution option at that option's spatial sizes and weighted by ``rho``. With hard (one-hot) weights the value is
exactly the sampled architecture's interpolated latency (with ``--calibrated``, its calibrated prediction: every
term times its part's scale, plus the intercept). theta's gradient in hard mode is that of the FBNet
search (``cfg.estimator``): by default the score function of ``cfg.theta_paths`` sampled architectures (block,
width, stem width and resolution together) on one batch with a leave-one-out baseline (:func:`fbprof.search.dnas.rloo_loss`);
with ``straight-through`` the gradient of the soft weights reaches every theta through the latency model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fbprof.build import build_op
from fbprof.errors import InputError
from fbprof.fileio import atomic_write_text
from fbprof.lut.calibration import GRID_MODELS, LinearCalibration, calibration_of, group_of
from fbprof.lut.interp import GridLut, OutsideGridError
from fbprof.lut.table import Lut, read_lut
from fbprof.search.dnas import (EVAL_CAL_IMAGES, EVAL_THETA_IMAGES, PEAK_TAU, ArchResult, SearchConfig, SearchListener, SearchResult, _Dist, _device,
                                _mean, _save_checkpoint, arch_step, epoch_batches, path_log_prob, theta_gradient, open_checkpoint, restore_checkpoint,
                                recalibrated_eval, schedule, search_latency, searched_calibration)
from fbprof.search.supernet import MEMORY_FORMAT, adapt_strides, sample_gumbel, to_device
from fbprof.space import ChannelArch, ChannelSpace, decode_channel_space, load_space
from fbprof.spec import OpSpec, parse_block

__all__ = ["KEYS", "ChannelPlan", "plan_channel_search", "channel_proxy", "channel_masks", "LatencyModel",
           "MaskedSupernet", "sample_choices", "onehot", "latency_bounds", "run_dmasking"]

#: the four groups of architecture parameters, each a (rows x options) tensor: input resolution (1 row), stem
#: width (1 row), block type per layer, output width per layer
KEYS = ("res", "stem", "block", "width")


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelPlan:
    """What a DMaskingNAS search chooses from: the space's resolutions, stem widths, and per layer the blocks
    and widths -- restricted to what the LUT can answer (``notes`` say what was left out and why)."""

    space: ChannelSpace  # the LUT space, every resolution option
    resolutions: tuple[int, ...]
    candidates: tuple[tuple[str, ...], ...]  # per searched layer
    head_channels: int
    notes: tuple[str, ...] = ()

    @property
    def options(self) -> dict[str, list[list]]:
        """The options of every group, one list per row (what ``KEYS``' indices mean)."""
        return {"res": [list(self.resolutions)], "stem": [list(self.space.stem_widths)],
                "block": [list(c) for c in self.candidates], "width": [list(layer.widths) for layer in self.space.layers]}

    def masks(self) -> dict[str, torch.Tensor]:
        """Boolean (rows x max options) masks of the real options of every group."""
        out = {}
        for k, rows in self.options.items():
            m = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.bool)
            for i, r in enumerate(rows):
                m[i, :len(r)] = True
            out[k] = m
        return out

    def arch(self, index: dict[str, list[int]], name: str) -> ChannelArch:
        """The architecture of one choice per group (``index[k][row]``), as an arch of the space at its resolution."""
        sp = load_space(self.space.source, self.resolutions[index["res"][0]])
        blocks = [c[i] for c, i in zip(self.candidates, index["block"])]
        widths = [layer.widths[i] for layer, i in zip(self.space.layers, index["width"])]
        return sp.arch(blocks, widths, self.space.stem_widths[index["stem"][0]], self.head_channels, name=name)


def _rows_present(lut: Lut, specs) -> list[str]:
    return [s.key for s in specs if not s.is_identity and s.key not in lut.rows]


def plan_channel_search(space: ChannelSpace, glut: GridLut, head_channels: int) -> ChannelPlan:
    """Keep the resolutions whose stem, head and FC rows the LUT has, and per layer the candidate blocks the grid
    answers at every kept resolution over the layer's whole (cin, cout) range (skips: an exact row for every
    non-identity shape). A layer left without a candidate is an error."""
    lut = glut.lut
    notes: list[str] = []
    keep_res = []
    for r in space.resolutions:
        positions, (fh, fw), last = space._positions(r)
        need = [OpSpec(space.stem_block, space.in_channels, r, r, c, space.stem_stride) for c in space.stem_widths]
        need += [OpSpec(space.head_block, c, fh, fw, head_channels, 1) for c in last]
        need.append(OpSpec("fc", head_channels, 1, 1, space.num_classes, 1))
        missing = _rows_present(lut, need)
        if missing:
            notes.append(f"resolution {r} left out: the LUT has no row for {', '.join(missing[:3])}"
                         + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""))
        else:
            keep_res.append(r)
    if not keep_res:
        raise InputError(f"{lut.path}: no resolution of space {space.name} is covered (stem, head and FC rows): "
                         + "; ".join(notes), hint="measure the space with `fbprof measure --space`")
    cands: list[tuple[str, ...]] = []
    left: dict[str, list[tuple[str, str]]] = {}  # block -> (layer, why) where the LUT cannot answer it
    for li, layer in enumerate(space.layers):
        ok = []
        for block in layer.candidates:
            why = None
            for r in keep_res:
                positions, _, _ = space._positions(r)
                _, h, w, cins = positions[li]
                if parse_block(block).kind == "ir":
                    try:
                        for ci, co in ((min(cins), min(layer.widths)), (max(cins), max(layer.widths)),
                                       (min(cins), max(layer.widths)), (max(cins), min(layer.widths))):
                            glut.interpolate(block, layer.stride, h, ci, co, w)
                    except OutsideGridError as e:
                        why = e.queries[0]
                else:
                    missing = _rows_present(lut, [OpSpec(block, ci, h, w, co, layer.stride)
                                                  for ci in cins for co in layer.widths])
                    if missing:
                        why = f"no row for {missing[0]}"
                if why:
                    break
            if why:
                left.setdefault(block, []).append((layer.name, why))
            else:
                ok.append(block)
        if not ok:
            raise InputError(f"{lut.path}: layer {layer.name} of space {space.name}: the LUT answers none of its "
                             f"candidates ({', '.join(layer.candidates)})", hint="measure the space's grid")
        cands.append(tuple(ok))
    for block, where in left.items():
        names = [n for n, _ in where]
        at = "every layer" if len(names) == len(space.layers) else f"layer{'s' if len(names) > 1 else ''} {', '.join(names)}"
        notes.append(f"candidate {block} left out at {at} (the LUT cannot answer it; first: {where[0][1]})")
    return ChannelPlan(space, tuple(keep_res), tuple(cands), head_channels, tuple(notes))


def channel_proxy(space: ChannelSpace, resolution: int, num_classes: int, min_feature: int = 2) -> tuple[ChannelSpace, list[str]]:
    """The space at the proxy training ``resolution`` (the size of the *largest* resolution option) with
    ``num_classes`` outputs, strides adapted as in FBNet's search (:func:`fbprof.search.supernet.adapt_strides`)."""
    if resolution < 8:
        raise InputError(f"proxy resolution {resolution} is too small (at least 8)")
    data, dropped = adapt_strides(dict(space.raw), resolution, min_feature)
    data["num_classes"] = num_classes
    proxy = decode_channel_space(data, f"{space.source} (proxy at {resolution}px)", space.source, resolution)
    return proxy, dropped


def channel_masks(widths, cmax: int) -> torch.Tensor:
    """(options x cmax) float masks: row i keeps the first ``widths[i]`` channels."""
    m = torch.zeros(len(widths), cmax)
    for i, c in enumerate(widths):
        m[i, :c] = 1.0
    return m


# --------------------------------------------------------------------------------------------------
class LatencyModel:
    """The differentiable latency (µs) of the relaxed architecture, read from a grid LUT (see the module doc)."""

    def __init__(self, plan: ChannelPlan, glut: GridLut, calibration: LinearCalibration | None = None) -> None:
        """``calibration``: the LUT's (one of :data:`fbprof.lut.calibration.GRID_MODELS`): every cost is then
        weighted by its part's scale and the intercept added, so that the latency of a one-hot choice is the
        calibrated prediction of that architecture."""
        if calibration is not None and calibration.model not in GRID_MODELS:
            raise ValueError(f"a channel search weighs calibrations {', '.join(GRID_MODELS)} only, not {calibration.model!r}")
        self.plan, self.glut = plan, glut
        lut, sp = glut.lut, plan.space
        self.stem_widths = torch.tensor(sp.stem_widths, dtype=torch.float32)
        self.widths = [torch.tensor(layer.widths, dtype=torch.float32) for layer in sp.layers]

        def scale(part: str) -> float:
            return 1.0 if calibration is None else calibration.scales[group_of(part, None, calibration.grouping, sp)]

        self.intercept_us = calibration.intercept_us if calibration is not None else 0.0
        #: the scale of each searched layer's interpolated costs (skips, stem and head are scaled in their tables)
        self.layer_scale = [scale(f"s{layer.stage}") for layer in sp.layers]
        self.per_res = []
        for r in plan.resolutions:
            positions, (fh, fw), last = sp._positions(r)

            def us(spec: OpSpec) -> float:
                return 0.0 if spec.is_identity else lut.rows[spec.key].median_us

            stem = scale("stem") * torch.tensor([us(OpSpec(sp.stem_block, sp.in_channels, r, r, c, sp.stem_stride))
                                                 for c in sp.stem_widths])
            head = scale("tail") * torch.tensor([us(OpSpec(sp.head_block, c, fh, fw, plan.head_channels, 1)) for c in last])
            fc = scale("tail") * us(OpSpec("fc", plan.head_channels, 1, 1, sp.num_classes, 1))
            layers = []
            for (layer, h, w, cins), cands, s in zip(positions, plan.candidates, self.layer_scale):
                skip = {b: s * torch.tensor([[us(OpSpec(b, ci, h, w, co, layer.stride)) for co in layer.widths] for ci in cins])
                        for b in cands if parse_block(b).kind != "ir"}
                layers.append((layer.stride, h, w, skip))
            self.per_res.append((stem, layers, head, fc))

    def __call__(self, wt: dict[str, torch.Tensor]) -> torch.Tensor:
        """``wt``: weights per group (rows x options, as the architecture parameters; padding ignored)."""
        plan = self.plan
        dev = wt["width"].device
        total = torch.zeros((), device=dev)
        for ri, (stem, layers, head, fc) in enumerate(self.per_res):
            g_in = wt["stem"][0, :len(self.stem_widths)]
            opts_in = self.stem_widths.to(dev)
            lat = (g_in * stem.to(dev)).sum()
            for li, ((stride, h, w, skip), cands) in enumerate(zip(layers, plan.candidates)):
                g = wt["width"][li, :len(self.widths[li])]
                opts = self.widths[li].to(dev)
                cin_e, cout_e = (g_in * opts_in).sum(), (g * opts).sum()  # effective (expected) widths
                for bi, block in enumerate(cands):
                    if block in skip:
                        v = g_in @ skip[block].to(dev) @ g
                    else:
                        v = self.layer_scale[li] * self.glut.interpolate(block, stride, h, cin_e, cout_e, w)
                    lat = lat + wt["block"][li, bi] * v
                g_in, opts_in = g, opts
            lat = lat + (g_in * head.to(dev)).sum() + fc
            total = total + wt["res"][0, ri] * lat
        return total + self.intercept_us


def latency_bounds(plan: ChannelPlan, model: LatencyModel) -> tuple[float, float]:
    """(fastest, slowest) latency in µs over the plan's architectures -- printed beside ``--target-ms``, kept in
    summary.json (``info.lut_range_us``), and what benchmarks spread their targets over.

    Exact: at one resolution the latency is a chain (stem width, then each layer's cost given its input and
    output width and block, then the head given the last width), so a dynamic programme over the widths finds the
    min and the max; then the min (max) over the resolutions. (The narrowest network is not always the fastest: a
    channel-changing skip costs a 1x1 convolution, an equal-width skip nothing.)"""
    sp = plan.space

    def chain(ri: int, pick) -> float:
        stem, layers, head, fc = model.per_res[ri]
        best = [float(v) for v in stem]  # best[i]: latency up to the stem, at stem width option i
        cins = list(sp.stem_widths)
        for (stride, h, w, skip), cands, layer, s in zip(layers, plan.candidates, sp.layers, model.layer_scale):
            nxt = []
            for oi, co in enumerate(layer.widths):
                vals = []
                for ii, ci in enumerate(cins):
                    for block in cands:
                        cost = (float(skip[block][ii, oi]) if block in skip
                                else s * float(model.glut.interpolate(block, stride, h, ci, co, w)))
                        vals.append(best[ii] + cost)
                nxt.append(pick(vals))
            best, cins = nxt, list(layer.widths)
        return pick(v + float(hv) for v, hv in zip(best, head)) + float(fc) + model.intercept_us

    return (min(chain(ri, min) for ri in range(len(plan.resolutions))),
            max(chain(ri, max) for ri in range(len(plan.resolutions))))


# --------------------------------------------------------------------------------------------------
def _trainable(module: nn.Module) -> nn.Module:
    """Zero the last BN scale of every residual block (each starts as an identity, as in FBNet's supernet)."""
    for m in module.modules():
        if getattr(m, "residual", False) and hasattr(m, "body"):
            bns = [x for x in m.body if isinstance(x, nn.BatchNorm2d)]
            if bns:
                nn.init.zeros_(bns[-1].weight)
    return module.train()


class MaskedSupernet(nn.Module):
    """The DMaskingNAS supernet of a channel space (see the module doc): one module per block type per layer at
    the widest shape, channel masks on every searched output, a resolution mix on the input."""

    def __init__(self, proxy: ChannelSpace, candidates, head_channels: int, resolutions=None) -> None:
        super().__init__()
        R = proxy.resolution
        res = list(resolutions or [R])
        self.res_sizes = [max(2, round(R * r / max(res))) for r in res]
        sc = max(proxy.stem_widths)
        self.stem = _trainable(build_op(OpSpec(proxy.stem_block, proxy.in_channels, R, R, sc, proxy.stem_stride)))
        self.register_buffer("stem_mask", channel_masks(proxy.stem_widths, sc))
        positions, (fh, fw), _ = proxy._positions(R)
        cin = sc
        self.choices = nn.ModuleList()
        self.n_widths = []
        for li, ((layer, h, w, _), cands) in enumerate(zip(positions, candidates)):
            cout = max(layer.widths)
            self.choices.append(nn.ModuleList(_trainable(build_op(OpSpec(b, cin, h, w, cout, layer.stride)))
                                              for b in cands))
            self.register_buffer(f"mask{li}", channel_masks(layer.widths, cout))
            self.n_widths.append(len(layer.widths))
            cin = cout
        self.head = _trainable(build_op(OpSpec(proxy.head_block, cin, fh, fw, head_channels, 1)))
        self.fc = _trainable(build_op(OpSpec("fc", head_channels, 1, 1, proxy.num_classes, 1)))

    def masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"mask{i}") for i in range(len(self.choices))]

    def resample(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Resolution option ``k`` of the input: down to its size and back up (nearest) to the largest."""
        s, R = self.res_sizes[k], x.shape[-1]
        if s >= R:
            return x
        y = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(y, size=x.shape[-2:], mode="nearest").contiguous(memory_format=MEMORY_FORMAT)

    def forward(self, x: torch.Tensor, wt: dict[str, torch.Tensor], index: dict[str, list[int]] | None = None) -> torch.Tensor:
        """``wt``: weights per group (values one-hot in hard mode); ``index`` given (hard mode): run only the
        sampled block and resolution, scaled by their weight (1 in value; the straight-through gradient)."""
        r = wt["res"][0]
        if index is not None:
            k = index["res"][0]
            x = self.resample(x, k) * r[k] if len(self.res_sizes) > 1 else x * r[k]
        else:
            x = sum(r[k] * self.resample(x, k) for k in range(len(self.res_sizes)))
        x = self.stem(x) * (wt["stem"][0, :self.stem_mask.shape[0]] @ self.stem_mask).view(1, -1, 1, 1)
        for li, (ops, mask) in enumerate(zip(self.choices, self.masks())):
            gb = wt["block"][li]
            if index is not None:
                b = index["block"][li]
                y = ops[b](x) * gb[b]
            else:
                y = sum(gb[b] * op(x) for b, op in enumerate(ops))
            x = y * (wt["width"][li, :mask.shape[0]] @ mask).view(1, -1, 1, 1)
        return self.fc(self.head(x))

    def path_modules(self, index: dict[str, list[int]]) -> list[nn.Module]:
        return [self.stem, self.head, self.fc] + [ops[i] for ops, i in zip(self.choices, index["block"])]


# --------------------------------------------------------------------------------------------------
def sample_choices(theta: dict, masks: dict, tau: float, hard: bool, gen) -> tuple[dict, dict]:
    """Gumbel-softmax weights and sampled indices of every group (:func:`fbprof.search.supernet.sample_gumbel`)."""
    wt, idx = {}, {}
    for k in KEYS:
        wt[k], idx[k] = sample_gumbel(theta[k], masks[k], tau, hard, gen)
    return wt, idx


def onehot(index: dict[str, list[int]], masks: dict, device=None) -> dict[str, torch.Tensor]:
    out = {}
    for k in KEYS:
        t = torch.zeros(masks[k].shape, device=device)
        for row, i in enumerate(index[k]):
            t[row, i] = 1.0
        out[k] = t
    return out


def _softmax(theta: dict, masks: dict, temp: float = 1.0) -> dict[str, torch.Tensor]:
    return {k: torch.softmax((theta[k] / temp).masked_fill(~masks[k], float("-inf")), dim=-1) for k in KEYS}


def _argmax(theta: dict, masks: dict) -> dict[str, list[int]]:
    return {k: torch.argmax(theta[k].detach().cpu().masked_fill(~masks[k], float("-inf")), dim=-1).tolist() for k in KEYS}


def _log_prob(theta: dict, masks: dict, index: dict) -> float:
    lp = 0.0
    for k in KEYS:
        ls = torch.log_softmax(theta[k].detach().cpu().masked_fill(~masks[k], float("-inf")), dim=-1)
        lp += float(sum(ls[row, i] for row, i in enumerate(index[k])))
    return lp


def _entropy(theta: dict, masks: dict) -> float:
    """Mean entropy (nats) over every row of every group with more than one option."""
    hs = []
    for k in KEYS:
        logp = torch.log_softmax(theta[k].detach().cpu().masked_fill(~masks[k], float("-inf")), dim=-1)
        h = -(logp.exp() * logp.masked_fill(~masks[k], 0.0)).sum(dim=-1)
        hs += [float(v) for v, m in zip(h, masks[k]) if int(m.sum()) > 1]
    return sum(hs) / len(hs) if hs else 0.0


def _probs(theta: dict, masks: dict) -> dict[str, list[list[float]]]:
    p = _softmax({k: v.detach().cpu() for k, v in theta.items()}, masks)
    return {k: [[round(float(v), 5) for v, ok in zip(row, mrow) if ok] for row, mrow in zip(p[k], masks[k])] for k in KEYS}


def _channel_space(cfg: SearchConfig, lut: Lut) -> ChannelSpace:
    name = cfg.space
    if name is None:
        tags = lut.space_tags()
        if not tags:
            raise InputError(f"{lut.path}: the header names no space; give --space")
        name = tags[0].name
    try:
        if cfg.space is None:
            name = tags[0].source(Path(lut.path).parent)  # packaged, or NAME.yaml next to the LUT (as predict finds it)
        if str(name).endswith((".yaml", ".yml", ".json")) or "/" in str(name):
            name = str(Path(name).resolve())  # architecture files then name the space file unambiguously
        sp = load_space(name, cfg.lut_resolution, cfg.width)
    except InputError as e:
        if cfg.space is not None:
            raise
        raise InputError(f"{lut.path}: the header's space {name!r}: {e.message}",
                         hint="give --space: the channel space (name or file) to search, e.g. --space fbnetv2") from None
    if not isinstance(sp, ChannelSpace):
        raise InputError(f"{lut.path} is a grid LUT (for a channel space such as fbnetv2) but space {sp.name} is not "
                         "a channel space", hint="give --space with the channel space the LUT was measured for")
    return sp


# --------------------------------------------------------------------------------------------------
def run_dmasking(cfg: SearchConfig, listener: SearchListener | None = None, lut: Lut | None = None) -> SearchResult:
    """Run (or resume) a DMaskingNAS search on a grid LUT; returns the architectures written and the history."""
    from fbprof.lut.predict import predict
    from fbprof.search.data import load_data, stratified_split
    from fbprof.search.train import lr_at

    cfg.validate()
    dist = _Dist(cfg)
    lis = listener if (listener is not None and dist.main) else SearchListener()
    out = Path(cfg.out)

    # ---- LUT, space, plan: every problem before any training ------------------------------------
    lut = lut if lut is not None else read_lut(cfg.lut)
    glut = GridLut(lut)
    space = _channel_space(cfg, lut)
    head = cfg.head_channels if cfg.head_channels is not None else space.head_channels[0]
    if head not in space.head_channels:
        raise InputError(f"--head-channels {head}: space {space.name} offers {', '.join(map(str, space.head_channels))}")
    plan = plan_channel_search(space, glut, head)
    calibration_of(lut)  # read even without --calibrated: a bad calibration line fails now, not after training
    calibration = searched_calibration(cfg, lut)
    model = LatencyModel(plan, glut, calibration)
    masks = plan.masks()
    target_us = cfg.target_ms * 1000.0 if cfg.target_ms is not None else None
    state_prev, meta_prev = open_checkpoint(cfg)

    device = _device(cfg, dist.local_rank)
    data = load_data(cfg.data, cfg.resolution, space.in_channels, cfg.test_fraction,
                     limit_per_class=cfg.limit_per_class, note=lis.on_note)
    proxy, dropped = channel_proxy(space, cfg.resolution, data.num_classes, cfg.min_feature)
    w_idx, t_idx = stratified_split(data.y_train, 0.2, cfg.seed)
    if len(w_idx) < 2 or len(t_idx) < 2:
        raise InputError(f"{data.describe()}: too few images to split 80/20 into weight and architecture sets")
    reps, w_steps, t_reps, epochs, warmup = schedule(cfg, dist, w_idx, t_idx, meta_prev)

    lo_us, hi_us = latency_bounds(plan, model)
    latency = search_latency(cfg, calibration, lo_us,
                             calibration is not None and any(v < 0 for v in calibration.scales.values()), meta_prev)

    torch.manual_seed(cfg.seed)
    net = MaskedSupernet(proxy, plan.candidates, head, plan.resolutions).to(device, memory_format=MEMORY_FORMAT)
    theta = {k: torch.zeros(masks[k].shape, device=device, requires_grad=True) for k in KEYS}
    masks_d = {k: v.to(device) for k, v in masks.items()}
    opt_w = torch.optim.SGD(net.parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)
    opt_t = torch.optim.Adam([theta[k] for k in KEYS], lr=cfg.theta_lr, weight_decay=cfg.theta_weight_decay)
    history, start = restore_checkpoint(state_prev, meta_prev, net, {f"theta_{k}": theta[k] for k in KEYS}, opt_w, opt_t)
    if start:
        lis.on_note(f"resumed from {out}: {start} of {epochs} epochs done")

    hard = cfg.mode == "hard"
    ce_fn = nn.CrossEntropyLoss()
    info = {
        "lut": str(cfg.lut), "device_name": lut.header.get("device", "?"), "backend": lut.header.get("backend", "?"),
        "lut_space": f"{space.name}@{','.join(map(str, plan.resolutions))}/w1",
        "proxy": f"{proxy.resolution}px (the largest resolution option {max(plan.resolutions)})"
                 + (f", strides of {', '.join(dropped)} set to 1" if dropped else ""),
        "data": data.describe(), "layers": len(space.layers), "mode": cfg.mode, "search": "dmasking",
        "theta_gradient": theta_gradient(cfg),
        "resolutions": list(plan.resolutions), "candidates": [list(c) for c in plan.candidates],
        "w_images": len(w_idx), "theta_images": len(t_idx), "epochs": epochs, "warmup_epochs": warmup,
        "w_steps_per_epoch": w_steps if not cfg.max_steps else min(w_steps, cfg.max_steps),
        "start_epoch": start, "world_size": dist.world, "target_us": target_us,
        "lut_range_us": [lo_us, hi_us], "data_notes": list(data.notes), "plan_notes": list(plan.notes),
        "latency": latency,
    }
    lis.on_start(info)
    for n in plan.notes:
        lis.on_note(n)

    w_params = list(net.parameters())
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        tau = cfg.tau(epoch)
        lr = cfg.w_lr
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        wb = epoch_batches(cfg, dist, w_idx, epoch, 1, reps)
        tb = epoch_batches(cfg, dist, t_idx, epoch, 2, t_reps) if epoch >= warmup else []
        lis.on_epoch_start(epoch + 1, epochs, tau, {"w": len(wb), "theta": len(tb)})

        # ---- weights (plain CE; the sampled architecture's masks, no gradient to theta) ----
        net.train()
        w_ce, w_lat = [], []
        for si, b in enumerate(wb):
            lr = lr_at(cfg.w_lr, epoch * len(wb) + si, epochs * len(wb), len(wb))
            for gr in opt_w.param_groups:
                gr["lr"] = lr
            x, y = to_device(data.x_train[b], device), data.y_train[b].to(device)
            with torch.no_grad():
                wt, index = sample_choices(theta, masks_d, tau, hard, gen)
            ce = ce_fn(net(x, wt, index if hard else None), y)
            opt_w.zero_grad(set_to_none=True)
            ce.backward()
            dist.average_grads(w_params)
            opt_w.step()
            with torch.no_grad():
                lat_now = float(model(wt))
            w_ce.append(float(ce.detach()))
            w_lat.append(lat_now)
            lis.on_step("w", si + 1, len(wb), w_ce[-1], lat_now)

        # ---- architecture parameters (the latency-aware loss) ----
        t_ce, t_loss, t_lat = [], [], []
        if tb:
            for p in w_params:
                p.requires_grad_(False)
            for si, b in enumerate(tb):
                x, y = to_device(data.x_train[b], device), data.y_train[b].to(device)
                peak_us = model(_softmax(theta, masks_d, PEAK_TAU)) if target_us is not None else None
                loss, loss_value, ce, lat_us = arch_step(
                    cfg, lambda: sample_choices(theta, masks_d, tau, hard, gen),
                    lambda wt, index: (ce_fn(net(x, wt, index if hard else None), y), model(wt)),
                    lambda index: sum(path_log_prob(theta[k], masks_d[k], index[k]) for k in KEYS),
                    peak_us, target_us)
                opt_t.zero_grad(set_to_none=True)
                loss.backward()
                dist.average_grads([theta[k] for k in KEYS])
                opt_t.step()
                t_ce.append(float(ce.detach()))
                t_loss.append(float(loss_value.detach()))
                t_lat.append(float(lat_us.detach()))
                lis.on_step("theta", si + 1, len(tb), t_ce[-1], t_lat[-1])
            for p in w_params:
                p.requires_grad_(True)

        th = {k: v.detach().cpu() for k, v in theta.items()}
        best = _argmax(th, masks)
        ev_ce, ev_acc = _evaluate(net, best, masks_d, data, w_idx[:EVAL_CAL_IMAGES], t_idx[:EVAL_THETA_IMAGES], device,
                                   cfg.batch_size)
        with torch.no_grad():
            exp_us = float(model(_softmax(th, masks)))
            ml_us = float(model(onehot(best, masks)))
        record = {
            "epoch": epoch + 1, "tau": tau, "lr_w": lr, "phase": "w" if not tb else "w+theta",
            "w_steps": len(wb), "theta_steps": len(tb), "w_ce": _mean(w_ce), "theta_ce": _mean(t_ce),
            "theta_loss": _mean(t_loss), "theta_split_ce_most_likely": ev_ce, "theta_split_accuracy_most_likely": ev_acc,
            "theta_entropy_nats": _entropy(th, masks), "sampled_latency_us": _mean(t_lat or w_lat),
            "expected_latency_us": exp_us, "most_likely_latency_us": ml_us,
            "expected_widths": [round(float((p[:len(layer.widths)] * torch.tensor(layer.widths, dtype=torch.float32)).sum()), 2)
                                for p, layer in zip(_softmax(th, masks)["width"], space.layers)],
            "seconds": time.perf_counter() - t0, "probs": _probs(th, masks),
        }
        history.append(record)
        if dist.main:
            meta = {"epoch_done": epoch + 1, "epochs": epochs, "config": cfg.identity(), "history": history,
                    "search": "dmasking", "latency": latency}
            state = {"supernet": net.state_dict(), "opt_w": opt_w.state_dict(), "opt_theta": opt_t.state_dict(),
                     **{f"theta_{k}": th[k].clone() for k in KEYS}}
            _save_checkpoint(out, state, meta)
        lis.on_epoch_end(record)
    dist.barrier()

    # ---- results ----------------------------------------------------------------------------------
    th = {k: v.detach().cpu() for k, v in theta.items()}
    best = _argmax(th, masks)
    picks: list[tuple[str, dict]] = [("best", best)]
    seen = {json.dumps(best, sort_keys=True)}
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    probs = _softmax(th, masks)
    tries = 0
    while len(picks) < cfg.samples + 1 and tries < 50 * max(1, cfg.samples):
        tries += 1
        idx = {k: torch.multinomial(probs[k], 1, generator=g).flatten().tolist() for k in KEYS}
        key = json.dumps(idx, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        picks.append((f"sample-{len(picks)}", idx))
    if len(picks) < cfg.samples + 1:
        lis.on_note(f"only {len(picks) - 1} distinct samples besides the most likely architecture "
                    "(the distribution is concentrated)")

    archs: list[ArchResult] = []
    run_name = out.name or "search"
    for label, idx in picks:
        arch = plan.arch(idx, name=f"{run_name}-{label}")
        path = out / f"arch-{label}.yaml"
        pred = predict(arch, lut)
        if dist.main:
            arch.dump(path)
        archs.append(ArchResult(label, arch.name, list(arch.blocks), str(path),
                                pred.best_us if calibration is not None else pred.total_us, arch.macs(),
                                arch.params(), _log_prob(th, masks, idx), pred.warnings, list(arch.channels),
                                arch.space.resolution))
    heldout = heldout_ce = None
    if len(data.y_test):
        heldout_ce, heldout = _evaluate(net, best, masks_d, data, w_idx[:EVAL_CAL_IMAGES], None, device,
                                            cfg.batch_size)
    wall = sum(r["seconds"] for r in history)
    result = SearchResult(out, archs, history, wall, info["lut_space"], info, heldout, [], target_us, heldout_ce)
    if dist.main:
        _write_outputs(result, cfg, plan)
    lis.on_finish(result)
    return result


def _evaluate(net: MaskedSupernet, index: dict, masks_d: dict, data, cal_idx, eval_idx, device,
              batch_size: int) -> tuple[float, float]:
    """(CE, accuracy) of the architecture ``index`` inside the supernet, BN of its path recalibrated
    (:func:`fbprof.search.dnas.recalibrated_eval`); ``eval_idx`` None: the held-out images."""
    wt = onehot(index, masks_d, device)
    x_eval, y_eval = (data.x_test, data.y_test) if eval_idx is None else (data.x_train[eval_idx], data.y_train[eval_idx])
    return recalibrated_eval(net, net.path_modules(index), lambda x: net(x, wt, index), data.x_train[cal_idx],
                             x_eval, y_eval, device, batch_size)


def _write_outputs(result: SearchResult, cfg: SearchConfig, plan: ChannelPlan) -> None:
    from dataclasses import fields

    out = result.out
    hist = {
        "schema": 1, "search": "dmasking", "space": result.lut_space, "options": plan.options,
        "layers": [{"name": layer.name, "stride": layer.stride, "widths": list(layer.widths), "candidates": list(c)}
                   for layer, c in zip(plan.space.layers, plan.candidates)],
        "epochs": result.history,
    }
    atomic_write_text(out / "theta_history.json", json.dumps(hist, indent=1) + "\n")
    summary = {
        "schema": 1,
        "search": "dmasking",
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "info": result.proxy,
        "wall_s": round(result.wall_s, 2),
        "heldout_accuracy_supernet": result.heldout_accuracy,
        "heldout_ce_supernet": result.heldout_ce,
        "per_epoch": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items() if k != "probs"}
                      for r in result.history],
        "target_us": result.target_us,
        "architectures": [
            {"label": a.label, "name": a.name, "file": Path(a.path).name, "predicted_us": round(a.predicted_us, 3),
             "macs": a.macs, "params": a.params, "log_prob": round(a.log_prob, 4), "resolution": a.resolution,
             "blocks": a.blocks, "channels": a.channels}
            for a in result.archs
        ],
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
