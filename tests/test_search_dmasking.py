"""DMaskingNAS (issue 14, parts 3): the masked supernet, effective-shape latency, `fbprof search` on a grid LUT.

A tiny channel space and a synthetic grid LUT (latency := a function of the shape, no timing), small data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from fbprof.loop import Stats  # noqa: E402
from fbprof.lut.interp import GridLut  # noqa: E402
from fbprof.lut.table import LutRow, read_lut, write_lut  # noqa: E402
from fbprof.space import ChannelArch, format_grid, format_space_tags, load_arch, load_space  # noqa: E402

SPACE = """schema: 1
name: v2search
kind: channels
resolutions: [32, 16]
num_classes: 10
stem: {channels: [8, 16], stride: 2, block: stem_hs}
candidates: [k3_e1_hs, k3_e4_hs, skip]
stages:
  - {channels: [8, 16, 24], repeats: 2, stride: 2}
  - {channels: [24, 32], repeats: 1, stride: 1}
head: {channels: [32], block: ir_pool_e6_hs}
grid: {points: 2}
"""


def f_ir(block: str, cin: float, cout: float, h: int, stride: int) -> float:
    """A latency bilinear in (cin, cout): the grid interpolates it exactly."""
    e = 4.0 if "_e4" in block else 1.0
    return (1.0 + 0.05 * cin + 0.03 * cout + 0.002 * e * cin * cout) * h * h / (16.0 * stride)


def _us(spec) -> float:
    if spec.block.kind == "ir":
        return f_ir(spec.op, spec.cin, spec.cout, spec.h, spec.stride)
    return 1.0 + spec.macs() / 1e4


def _write_space_and_lut(tmp_path, text: str = SPACE, name: str = "v2search"):
    sp_path = tmp_path / f"{name}.yaml"
    sp_path.write_text(text)
    sp = load_space(sp_path)
    rows = [LutRow(s.key, "ok", Stats(10, 1, _us(s), _us(s), _us(s), _us(s), 0.0, 0.0, _us(s), _us(s)))
            for s in sp.all_specs()]
    header = {"device": "local", "backend": "onnxruntime", "runtime": "x", "threads": "1",
              "spaces": format_space_tags(sp.tags), "units": "microseconds per inference, batch 1, float32",
              "grid": format_grid(sp.grid())}
    lut_path = tmp_path / f"{name}.csv"
    write_lut(lut_path, header, rows)
    return sp_path, lut_path


@pytest.fixture
def grid(tmp_path):
    return _write_space_and_lut(tmp_path)


@pytest.fixture(autouse=True)
def _image_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FBPROF_CACHE_DIR", str(tmp_path / "image-cache"))


def _setup(sp_path, lut_path, resolution: int = 16):
    from fbprof.search.dmasking import LatencyModel, MaskedSupernet, channel_proxy, plan_channel_search

    sp = load_space(sp_path)
    glut = GridLut(read_lut(lut_path))
    plan = plan_channel_search(sp, glut, 32)
    proxy, _ = channel_proxy(sp, resolution, 10)
    torch.manual_seed(0)
    net = MaskedSupernet(proxy, plan.candidates, 32, plan.resolutions)
    return sp, plan, LatencyModel(plan, glut), net


# ---------------------------------------------------------------------------------------------------
def test_masks_keep_the_first_c_channels(grid):
    from fbprof.search.dmasking import channel_masks, onehot

    m = channel_masks([8, 16, 24], 24)
    assert m.shape == (3, 24) and m[0, :8].sum() == 8 and m[0, 8:].sum() == 0 and m[2].sum() == 24
    sp, plan, _, net = _setup(*grid)
    masks = plan.masks()
    seen = {}
    net.choices[1][1].register_forward_hook(lambda mod, inp, out: seen.__setitem__("in", inp[0].detach()))
    net.train()
    x = torch.randn(4, 3, 16, 16)
    for wi, c in enumerate(sp.layers[0].widths):  # layer L01's width choice is what L02 sees
        idx = {"res": [0], "stem": [1], "block": [1, 1, 1], "width": [wi, 2, 1]}
        net(x, onehot(idx, masks), idx)
        feat = seen["in"]
        assert feat.shape[1] == 24  # the widest width, always
        assert float(feat[:, c:].abs().sum()) == 0.0
        assert float(feat[:, :c].abs().sum()) > 0.0


def test_one_module_per_block_at_the_widest_shape(grid):
    sp, plan, _, net = _setup(*grid)
    assert [len(ops) for ops in net.choices] == [len(c) for c in plan.candidates] == [3, 3, 3]
    # L01: 16 (widest stem) -> 24; L02: 24 -> 24; L03: 24 -> 32
    convs = [[m for m in ops[1].modules() if isinstance(m, torch.nn.Conv2d)] for ops in net.choices]
    assert [(c[0].in_channels, c[-1].out_channels) for c in convs] == [(16, 24), (24, 24), (24, 32)]


def test_gradient_reaches_theta_through_ce_and_latency(grid):
    from fbprof.search.dmasking import KEYS, sample_choices

    _, plan, model, net = _setup(*grid)
    masks = plan.masks()
    net.train()
    for hard in (False, True):
        theta = {k: torch.zeros(masks[k].shape, requires_grad=True) for k in KEYS}
        gen = torch.Generator().manual_seed(1)
        wt, index = sample_choices(theta, masks, 1.0, hard, gen)
        x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
        ce = torch.nn.functional.cross_entropy(net(x, wt, index if hard else None), y)
        ce.backward()
        for k in KEYS:  # every group moves the CE (two resolutions, two stem widths, 3 blocks, >= 2 widths)
            assert theta[k].grad is not None and float(theta[k].grad.abs().sum()) > 0, (hard, k)
        theta2 = {k: torch.zeros(masks[k].shape, requires_grad=True) for k in KEYS}
        wt2, _ = sample_choices(theta2, masks, 1.0, hard, torch.Generator().manual_seed(1))
        model(wt2).backward()
        for k in KEYS:
            assert float(theta2[k].grad.abs().sum()) > 0, (hard, k)


def test_expected_channels_propagate_to_the_next_layers_cin(tmp_path):
    """One IR block per layer, one resolution: the latency is f(E[c_in], E[c_out]) per layer (bilinear data ->
    exact), with E[c] = sum g_i c_i flowing from each layer's width weights into the next layer's cin."""
    from fbprof.search.dmasking import LatencyModel, plan_channel_search

    text = SPACE.replace("resolutions: [32, 16]", "resolutions: [32]").replace(
        "candidates: [k3_e1_hs, k3_e4_hs, skip]", "candidates: [k3_e4_hs]")
    sp_path, lut_path = _write_space_and_lut(tmp_path, text, "v2one")
    sp, lut = load_space(sp_path), read_lut(lut_path)
    plan = plan_channel_search(sp, GridLut(lut), 32)
    model = LatencyModel(plan, GridLut(lut))
    g_stem = torch.tensor([[0.25, 0.75]])
    g_w = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3], [0.4, 0.6, 0.0]], requires_grad=True)
    wt = {"res": torch.ones(1, 1), "stem": g_stem, "block": torch.ones(3, 1), "width": g_w}
    lat = model(wt)
    e_stem = 0.25 * 8 + 0.75 * 16
    gd = g_w.detach()
    e = [float((gd[0] * torch.tensor([8., 16, 24])).sum()), float((gd[1] * torch.tensor([8., 16, 24])).sum()),
         float((gd[2, :2] * torch.tensor([24., 32])).sum())]
    rows = lut.rows
    want = 0.25 * rows["stem_hs:3x32x32:8:s2"].median_us + 0.75 * rows["stem_hs:3x32x32:16:s2"].median_us
    want += f_ir("k3_e4_hs", e_stem, e[0], 16, 2) + f_ir("k3_e4_hs", e[0], e[1], 8, 1) + f_ir("k3_e4_hs", e[1], e[2], 8, 1)
    want += 0.4 * rows["ir_pool_e6_hs:24x8x8:32:s1"].median_us + 0.6 * rows["ir_pool_e6_hs:32x8x8:32:s1"].median_us
    want += rows["fc:32x1x1:10:s1"].median_us
    assert float(lat.detach()) == pytest.approx(want, rel=1e-5)
    lat.backward()
    # d lat / d g_w[0, i]: layer L01's cout and layer L02's cin both see E[c_1]
    d_e0 = (0.03 + 0.008 * e_stem) * 16 * 16 / 32 + (0.05 + 0.008 * e[1]) * 8 * 8 / 16
    assert float(g_w.grad[0, 2] - g_w.grad[0, 0]) == pytest.approx(d_e0 * (24 - 8), rel=1e-4)


def test_plan_leaves_out_what_the_lut_cannot_answer(tmp_path):
    from fbprof.errors import InputError
    from fbprof.search.dmasking import plan_channel_search

    sp_path, lut_path = _write_space_and_lut(tmp_path)
    lut = read_lut(lut_path)
    for key in [k for k in lut.rows if k.startswith(("k3_e1_hs", "stem_hs:3x16x16"))]:
        del lut.rows[key]
    plan = plan_channel_search(load_space(sp_path), GridLut(lut), 32)
    assert plan.resolutions == (32,) and all("k3_e1_hs" not in c for c in plan.candidates)
    assert any("resolution 16 left out" in n for n in plan.notes)
    assert any("candidate k3_e1_hs left out at every layer" in n for n in plan.notes)
    for key in [k for k in lut.rows if k.startswith(("k3_e4_hs", "skip"))]:
        del lut.rows[key]
    with pytest.raises(InputError, match="layer L01 .* answers none of its candidates"):
        plan_channel_search(load_space(sp_path), GridLut(lut), 32)


def test_search_end_to_end_writes_archs_that_predict_reads(grid, tmp_path):
    from fbprof.cli import app
    from fbprof.cli.jsonout import SCHEMAS, check
    from fbprof.lut.predict import predict

    sp_path, lut_path = grid
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["search", "--lut", str(lut_path), "--space", str(sp_path), "--out", str(out),
                              "--data", "digits", "--limit-per-class", "8", "--resolution", "16", "--epochs", "2",
                              "--warmup-epochs", "1", "--min-epoch-steps", "1", "--max-steps", "3", "-b", "8",
                              "--samples", "2", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert check(doc, SCHEMAS["search"]) == []
    assert all(Path(f).exists() for f in doc["files"].values())  # only files that were written are listed
    best = doc["archs"][0]
    assert best["label"] == "best" and len(best["channels"]) == 3 and best["resolution"] in (32, 16)
    arch = load_arch(out / "arch-best.yaml")
    assert isinstance(arch, ChannelArch) and list(arch.channels) == best["channels"]
    assert arch.space.resolution == best["resolution"]
    assert predict(arch, read_lut(lut_path)).total_us == pytest.approx(best["predicted_us"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"] == "dmasking" and len(summary["per_epoch"]) == 2
    assert summary["per_epoch"][1]["theta_steps"] > 0
    for cmd in (["predict", str(out / "arch-best.yaml"), "--lut", str(lut_path)], ["arch", "info", str(out / "arch-best.yaml")]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 0, r.output
    # --target-ms and soft mode run too (same loop)
    r = runner.invoke(app, ["search", "--lut", str(lut_path), "--space", str(sp_path), "--out", str(tmp_path / "t"),
                            "--data", "digits", "--limit-per-class", "8", "--resolution", "16", "--epochs", "2",
                            "--warmup-epochs", "1", "--min-epoch-steps", "1", "--max-steps", "2", "-b", "8",
                            "--samples", "0", "--mode", "soft", "--target-ms", "0.5", "-q"])
    assert r.exit_code == 0, r.output
    assert "epoch 1/2" not in r.output  # -q: results and errors only
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["target_us"] == 500.0


def test_an_interrupted_channel_search_resumes_from_its_checkpoint(grid, tmp_path):
    """One epoch, then the same search with --epochs 2 --resume: it starts at epoch 2 with the saved theta
    (the first epoch's history is kept, not redone)."""
    from fbprof.cli import app

    sp_path, lut_path = grid
    out = tmp_path / "run"
    base = ["search", "--lut", str(lut_path), "--space", str(sp_path), "--out", str(out), "--data", "digits",
            "--limit-per-class", "8", "--resolution", "16", "--warmup-epochs", "0", "--min-epoch-steps", "1",
            "--max-steps", "2", "-b", "8", "--samples", "0", "-q"]
    runner = CliRunner()
    r = runner.invoke(app, [*base, "--epochs", "1"])
    assert r.exit_code == 0, r.output
    first = json.loads((out / "summary.json").read_text())["per_epoch"]
    assert len(first) == 1
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    r = runner.invoke(app, [*base[:-1], "--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())  # the console wraps long lines
    assert "resumed from" in said and "1 of 2 epochs done" in said, r.output
    per_epoch = json.loads((out / "summary.json").read_text())["per_epoch"]
    assert len(per_epoch) == 2 and per_epoch[0] == first[0]
    theta_keys = [k for k in saved if k.startswith("theta_")]
    assert theta_keys, sorted(saved)
    r = runner.invoke(app, [*base, "--epochs", "2", "--resume"])  # nothing left to do: nothing redone
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["per_epoch"] == per_epoch


def test_latency_bounds_enclose_every_architecture_of_the_plan(grid):
    import itertools

    from fbprof.search.dmasking import KEYS, latency_bounds, onehot

    _, plan, model, _ = _setup(*grid)
    lo, hi = latency_bounds(plan, model)
    masks = plan.masks()
    sizes = [(k, int(m.sum())) for k in KEYS for m in masks[k]]
    lats = []
    for choice in itertools.product(*[range(n) for _, n in sizes]):
        idx = {k: [] for k in KEYS}
        for (k, _), i in zip(sizes, choice):
            idx[k].append(i)
        lats.append(float(model(onehot(idx, masks))))
    # exact, and not simply the narrowest network: all-skip at widths 24, 24, 24 (two identities) beats 8, 8, 24
    assert lo == pytest.approx(min(lats)) and hi == pytest.approx(max(lats))
    assert lo < hi
    narrowest = {"res": [0], "stem": [0], "block": [2, 2, 2], "width": [0, 0, 0]}  # 16 px, stem 8, all skip, 8-8-24
    assert lo < float(model(onehot(narrowest, masks))) - 0.5


def test_train_arch_trains_a_channel_architecture_at_the_proxy(grid):
    from fbprof.search.data import Dataset
    from fbprof.search.dmasking import channel_proxy
    from fbprof.search.train import train_arch

    sp_path, _ = grid
    proxy, _ = channel_proxy(load_space(sp_path, 32), 16, 10)
    arch = proxy.arch(["k3_e4_hs", "k3_e1_hs", "skip"], [16, 24, 32], 8, 32, name="child")
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2  # two classes told apart by the mean of the red channel
    x = torch.randn(40, 3, 16, 16, generator=g) * 0.3
    x[:, 0] += (y.float() * 2 - 1).view(-1, 1, 1)
    data = Dataset("toy", ["a", "b"], x[:32], y[:32], x[32:], y[32:], 16)
    r1 = train_arch(arch, data, 3, batch_size=8, seed=0)
    r2 = train_arch(arch, data, 3, batch_size=8, seed=0)
    assert r1.accuracy == r2.accuracy and r1.final_loss == r2.final_loss  # seeded: the same network, the same run
    assert r1.accuracy == 1.0  # the 8 held-out images, an easy signal
    assert r1.epochs == 3


def test_calibrated_channel_search_reads_the_grid_luts_calibration(grid, tmp_path):
    """--calibrated on a grid LUT: every searched layer's interpolated cost is weighted by its part's scale and the
    intercept added, so the latency of any one-hot choice is the calibrated prediction of that architecture (and the
    bounds are calibrated too); a LUT without a calibration, or with one the search cannot weigh layer by layer, is
    refused before any training."""
    import dataclasses
    import itertools

    from fbprof.errors import FileFormatError, InputError
    from fbprof.lut.calibration import LinearCalibration, calibration_of, rows_digest, store_calibration
    from fbprof.lut.predict import predict
    from fbprof.search.dmasking import KEYS, LatencyModel, latency_bounds, onehot
    from fbprof.search.dnas import SearchConfig, run_search

    sp_path, lut_path = grid

    def config(out, **kw):
        return SearchConfig(lut=str(lut_path), space=str(sp_path), out=str(out), data="digits", limit_per_class=8, resolution=16,
                            epochs=1, warmup_epochs=0, min_epoch_steps=1, max_steps=2, batch_size=8, samples=1, **kw)

    with pytest.raises(InputError, match="no calibration"):
        run_search(config(tmp_path / "none", calibrated=True))
    # a grid LUT's calibration is one of GRID_MODELS: verify stores no other, and a hand-made one is refused on reading
    weights = LinearCalibration("weights", 10.0, {"all": 1.1, "weight_mb": 3.0})
    with pytest.raises(InputError, match="grid LUT's calibration is one of scale, linear, stages"):
        store_calibration(str(lut_path), weights, {"fitted_on": 9})
    lut = read_lut(lut_path)
    weights.info = {"rows_digest": rows_digest(lut.rows)}
    write_lut(tmp_path / "weights.csv", {**lut.header, "calibration": weights.to_json()}, lut.rows.values())
    for calibrated in (True, False):  # without --calibrated too: before any training, not at the end
        with pytest.raises(FileFormatError, match=r"weights.csv:\d+: calibration: model 'weights' on a grid LUT"):
            run_search(dataclasses.replace(config(tmp_path / "weights", calibrated=calibrated), lut=str(tmp_path / "weights.csv")))
    assert not (tmp_path / "weights").exists()
    lut = store_calibration(str(lut_path), LinearCalibration("stages", 40.0, {"early": 0.5, "middle": 1.5, "late": 2.0}),
                            {"fitted_on": 12})
    cal = calibration_of(lut)
    sp, plan, raw_model, _ = _setup(sp_path, lut_path)
    model = LatencyModel(plan, GridLut(lut), cal)
    masks = plan.masks()
    sizes = [(k, int(m.sum())) for k in KEYS for m in masks[k]]
    lats, interp = [], 0
    for choice in itertools.product(*[range(n) for _, n in sizes]):
        idx = {k: [] for k in KEYS}
        for (k, _), i in zip(sizes, choice):
            idx[k].append(i)
        pred = predict(plan.arch(idx, name="a"), lut)
        interp += any(c.status == "interp" for c in pred.layers)
        assert float(raw_model(onehot(idx, masks))) == pytest.approx(pred.total_us, rel=1e-5)
        assert float(model(onehot(idx, masks))) == pytest.approx(pred.calibrated_us, rel=1e-5)
        lats.append(pred.calibrated_us)
    assert interp and len(set(round(v, 3) for v in lats)) > 10
    lo, hi = latency_bounds(plan, model)
    assert lo == pytest.approx(min(lats), rel=1e-5) and hi == pytest.approx(max(lats), rel=1e-5)
    res = run_search(config(tmp_path / "cal", calibrated=True))
    summary = json.loads((tmp_path / "cal" / "summary.json").read_text())
    assert summary["info"]["latency"] == cal.describe()
    best = res.archs[0]
    assert best.predicted_us == pytest.approx(predict(load_arch(best.path), lut).calibrated_us)


def test_the_space_file_next_to_the_lut_is_found_without_space(grid, tmp_path):
    """Like `fbprof predict` and `verify`, the search finds a channel space named in the LUT's header as NAME.yaml next
    to the LUT; without that file it says so and asks for --space (before any training)."""
    from fbprof.cli import app

    sp_path, lut_path = grid
    base = ["search", "--lut", str(lut_path), "--data", "digits", "--limit-per-class", "8", "--resolution", "16",
            "--epochs", "1", "--warmup-epochs", "0", "--min-epoch-steps", "1", "--max-steps", "1", "-b", "8",
            "--samples", "0", "-q"]
    runner = CliRunner()
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "found")])
    assert r.exit_code == 0, r.output
    assert load_arch(tmp_path / "found" / "arch-best.yaml").space.source == str(sp_path.resolve())
    sp_path.rename(tmp_path / "elsewhere.yaml")
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "lost")])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "v2search.yaml next to the LUT" in said and "--space" in said, r.output
    assert not (tmp_path / "lost").exists()
