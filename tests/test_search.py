"""fbprof search: a tiny DNAS end to end on a LUT measured here, the loss, the data loaders, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------------
# fixtures: a real (quickly measured) LUT of the tiny space, and a synthetic ImageFolder
def _measure_tiny_lut(path: Path) -> Path:
    """Measure every op of the tiny space with fbprof's loop on torch modules and write it with write_lut."""
    from fbprof.lut.table import LutRow, write_lut
    from fbprof.loop import LoopConfig, measure
    from fbprof.build import build_calibrated_op, example_input
    from fbprof.space import load_space

    cfg = LoopConfig(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_time_s=0.0, max_time_s=5.0, retries=0,
                     retry_pause_s=0.0, target_sample_s=0.0)
    space = load_space("tiny")
    rows = []
    with torch.no_grad():
        for spec in space.all_specs():
            mod, x = build_calibrated_op(spec), example_input(spec)
            m = measure(lambda: mod(x), cfg)
            rows.append(LutRow(spec.key, m.status, m.stats.scaled(1e6), "", "; ".join(m.notes)))
    header = {"device": "local", "backend": "torch", "runtime": f"torch {torch.__version__}", "threads": "1",
              "spaces": "tiny@32/w1", "units": "microseconds per inference, batch 1, float32"}
    write_lut(path, header, rows)
    return path


@pytest.fixture(autouse=True)
def _image_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FBPROF_CACHE_DIR", str(tmp_path / "image-cache"))


@pytest.fixture(scope="module")
def tiny_lut(tmp_path_factory) -> Path:
    return _measure_tiny_lut(tmp_path_factory.mktemp("lut") / "tiny.csv")


def _make_image_folder(root: Path, classes: int = 3, per_class: int = 40, size: int = 16) -> Path:
    """Three visually distinct classes (horizontal bars, vertical bars, a centred blob) with noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = [
        (yy // 2 % 2) * 200.0,
        (xx // 2 % 2) * 200.0,
        ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2) * 220.0,
    ]
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(patterns[c] + rng.normal(0, 40, (size, size)), 0, 255).astype("uint8")
            Image.fromarray(np.stack([img] * 3, axis=-1)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return _make_image_folder(tmp_path_factory.mktemp("data") / "shapes")


def _config(lut: Path, data: Path, out: Path, **kw):
    from fbprof.search.dnas import SearchConfig

    base = dict(lut=str(lut), out=str(out), data=str(data), resolution=16, epochs=5, warmup_epochs=1,
                batch_size=16, samples=3, seed=0, min_epoch_steps=1)
    base.update(kw)
    return SearchConfig(**base)


class _Recorder:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.steps: list[tuple[str, int, int]] = []
        self.started = False

    def on_start(self, info):
        self.started = True

    def on_note(self, message):
        self.notes.append(message)

    def on_epoch_start(self, epoch, epochs, tau, steps): ...

    def on_step(self, phase, step, steps, ce, latency_us):
        self.steps.append((phase, step, steps))

    def on_epoch_end(self, record): ...

    def on_finish(self, result): ...


# ---------------------------------------------------------------------------------------------------
def test_tiny_search_end_to_end_cli(tiny_lut, image_folder, tmp_path):
    """`fbprof search` on the tiny space: the loss goes down and every output is well-formed and readable."""
    from typer.testing import CliRunner

    from fbprof.cli import app
    from fbprof.lut.predict import predict
    from fbprof.lut.table import read_lut
    from fbprof.space import load_arch

    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["search", "--lut", str(tiny_lut), "--data", str(image_folder), "--out", str(out),
                              "--resolution", "16", "--epochs", "6", "--warmup-epochs", "1", "--batch-size", "16",
                              "--samples", "3", "--min-epoch-steps", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "predicted" in res.output and "arch-best.yaml" in res.output and "most likely:" in res.output

    hist = json.loads((out / "theta_history.json").read_text())
    epochs = hist["epochs"]
    assert [r["epoch"] for r in epochs] == list(range(1, 7))
    assert epochs[-1]["w_ce"] < epochs[0]["w_ce"]  # the supernet learns
    assert epochs[0]["theta_ce"] is None and epochs[1]["theta_ce"] is not None  # warm-up: w only
    assert epochs[-1]["theta_ce"] < epochs[1]["theta_ce"]
    taus = [r["tau"] for r in epochs]
    assert taus[0] == pytest.approx(5.0) and taus[1] == pytest.approx(5.0 * math.exp(-0.045))
    for r in epochs:
        assert len(r["probs"]) == 4
        for p in r["probs"]:
            assert len(p) == 4 and sum(p) == pytest.approx(1.0, abs=1e-4)
    assert epochs[-1]["probs"] != epochs[0]["probs"]  # theta moved

    summary = json.loads((out / "summary.json").read_text())

    # --json: the same result as one document of the search schema (resumed from the finished run: no new epochs)
    from fbprof.cli.jsonout import SCHEMAS, check

    again = runner.invoke(app, ["search", "--lut", str(tiny_lut), "--data", str(image_folder), "--out", str(out),
                                "--resolution", "16", "--epochs", "6", "--warmup-epochs", "1", "--batch-size", "16",
                                "--samples", "3", "--min-epoch-steps", "1", "--resume", "--json"])
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["schema"] == "fbprof.search/1" and check(doc, SCHEMAS["search"]) == []
    assert doc["archs"][0]["label"] == "best" and doc["files"]["summary"].endswith("summary.json")
    assert doc["files"]["plot"].endswith("theta.png") and Path(doc["files"]["plot"]).exists()

    labels = [a["label"] for a in summary["architectures"]]
    assert labels[0] == "best" and len(labels) >= 2 and len(set(labels)) == len(labels)
    lut = read_lut(tiny_lut)
    for a in summary["architectures"]:
        arch = load_arch(out / a["file"])  # the same loader `arch info`, `predict`, `export`, `verify` use
        assert list(arch.blocks) == a["blocks"] and arch.space.name == "tiny" and arch.space.resolution == 32
        assert predict(arch, lut).total_us == pytest.approx(a["predicted_us"], rel=1e-6)
        assert arch.macs() == a["macs"]
    best = summary["architectures"][0]
    probs = epochs[-1]["probs"]
    layers = hist["layers"]
    assert best["blocks"] == [layer["candidates"][max(range(4), key=lambda i: p[i])] for layer, p in zip(layers, probs)]

    png = (out / "theta.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # checkpoint: tensors and JSON only, readable with weights_only=True
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert json.loads(state["meta_json"])["epoch_done"] == 6
    assert state["theta"].shape == (4, 4)

    info = runner.invoke(app, ["arch", "info", str(out / "arch-best.yaml")])
    assert info.exit_code == 0, info.output
    pred = runner.invoke(app, ["predict", str(out / "arch-best.yaml"), "--lut", str(tiny_lut)])
    assert pred.exit_code == 0, pred.output


def test_resume_continues_and_guards(tiny_lut, image_folder, tmp_path):
    from fbprof.errors import InputError
    from fbprof.search.dnas import run_search

    out = tmp_path / "r"
    first = run_search(_config(tiny_lut, image_folder, out, epochs=2, max_steps=2))
    assert len(first.history) == 2
    with pytest.raises(InputError, match="already holds a search checkpoint"):
        run_search(_config(tiny_lut, image_folder, out, epochs=3, max_steps=2))
    with pytest.raises(InputError, match="tau0"):
        run_search(_config(tiny_lut, image_folder, out, epochs=3, max_steps=2, tau0=3.0, resume=True))
    rec = _Recorder()
    again = run_search(_config(tiny_lut, image_folder, out, epochs=3, max_steps=2, resume=True), rec)
    assert [r["epoch"] for r in again.history] == [1, 2, 3]
    assert again.history[:2] == first.history
    assert any("resumed" in n for n in rec.notes)
    assert len(rec.steps) == 4  # only epoch 3 ran: 2 w steps + 2 theta steps


def test_checkpoint_from_before_the_estimator_resumes_as_straight_through(tiny_lut, image_folder, tmp_path):
    """A checkpoint written before --estimator existed (no such key in its settings) was made with the
    straight-through estimator: resuming it with the new default is refused, with straight-through it continues."""
    from fbprof.errors import InputError
    from fbprof.search.dnas import run_search

    out = tmp_path / "old"
    run_search(_config(tiny_lut, image_folder, out, epochs=1, max_steps=2, estimator="straight-through"))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    meta = json.loads(state["meta_json"])
    for key in ("estimator", "theta_paths"):  # what an older fbprof wrote
        del meta["config"][key]
    state["meta_json"] = json.dumps(meta)
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(InputError, match="estimator: 'straight-through' there, 'rloo' now"):
        run_search(_config(tiny_lut, image_folder, out, epochs=2, max_steps=2, resume=True))
    again = run_search(_config(tiny_lut, image_folder, out, epochs=2, max_steps=2, resume=True,
                               estimator="straight-through"))
    assert [r["epoch"] for r in again.history] == [1, 2]


def test_hard_mode_runs_only_the_sampled_candidate(tiny_lut):
    """One child network's worth of candidates per step in hard mode; all of them in soft mode."""
    from fbprof.lut.table import read_lut
    from fbprof.search.supernet import Supernet, latency_table, proxy_space, sample_gumbel
    from fbprof.space import load_space

    space = load_space("tiny")
    plan = proxy_space(space, 16, 3)
    net = Supernet(plan.space, 64)
    lat, mask, fixed, _ = latency_table(space, read_lut(tiny_lut), 64)
    calls: list[tuple[int, int]] = []
    for li, ops in enumerate(net.choices):
        for ci, op in enumerate(ops):
            op.register_forward_hook(lambda m, i, o, li=li, ci=ci: calls.append((li, ci)))
    theta = torch.zeros(lat.shape, requires_grad=True)
    x = torch.randn(4, 3, 16, 16)
    m, index = sample_gumbel(theta, mask, 5.0, True, torch.Generator().manual_seed(1))
    assert torch.allclose(m.detach().sum(-1), torch.ones(4)) and set(m.detach().flatten().tolist()) <= {0.0, 1.0}
    y = net(x, weights=m, index=index)
    assert calls == [(li, i) for li, i in enumerate(index)]
    (y.sum() + (m * lat).sum()).backward()
    assert theta.grad is not None and bool((theta.grad != 0).all())  # straight-through: every theta gets a gradient
    calls.clear()
    m, _ = sample_gumbel(theta, mask, 5.0, False, torch.Generator().manual_seed(1))
    net(x, weights=m)
    assert len(calls) == sum(len(ops) for ops in net.choices)


def test_latency_table_reads_the_lut_at_each_layers_shape(tiny_lut):
    from fbprof.lut.table import read_lut
    from fbprof.search.supernet import latency_table
    from fbprof.space import load_space

    space = load_space("tiny")
    lut = read_lut(tiny_lut)
    lat, mask, fixed, keys = latency_table(space, lut, 64)
    for li, layer in enumerate(space.layers):
        for ci, cand in enumerate(layer.candidates):
            spec = layer.spec(cand)
            want = 0.0 if spec.is_identity else lut.rows[spec.key].median_us
            assert float(lat[li, ci]) == pytest.approx(want, rel=1e-5)
            assert keys[li][ci] == ("identity" if spec.is_identity else spec.key)
    assert float(lat[0, 3]) == 0.0 and keys[0][3] == "identity"  # L01 keeps its shape: skip is free
    assert float(lat[1, 3]) > 0.0  # L02 changes shape: skip is a strided 1x1 conv
    tail = sum(lut.rows[s.key].median_us for _, s in space.tail_specs(64))
    assert fixed == pytest.approx(lut.rows[space.stem.key].median_us + tail, rel=1e-5)


def test_loss_is_log_then_power_not_the_known_bug():
    from fbprof.search.loss import buggy_fbnet_loss, fbnet_loss, target_loss

    ce, lat = torch.tensor(2.0), torch.tensor(5000.0)
    want = 2.0 * 0.2 * math.log(5000.0) ** 0.6
    assert float(fbnet_loss(ce, lat)) == pytest.approx(want, rel=1e-6)
    assert float(buggy_fbnet_loss(ce, lat)) == pytest.approx(2.0 * 0.2 * 0.6 * math.log(5000.0), rel=1e-6)
    assert abs(float(fbnet_loss(ce, lat)) - float(buggy_fbnet_loss(ce, lat))) > 0.3
    # higher latency, higher loss; the target penalty is 0 at the target and grows on both sides
    assert float(fbnet_loss(ce, torch.tensor(9000.0))) > float(fbnet_loss(ce, lat))
    assert float(target_loss(ce, torch.tensor(3000.0), 3000.0)) == pytest.approx(2.0)
    lo, hi = float(target_loss(ce, torch.tensor(2500.0), 3000.0)), float(target_loss(ce, torch.tensor(3600.0), 3000.0))
    assert lo > 2.0 and hi > 2.0


def test_stride_adaptation_rule():
    from fbprof.search.supernet import proxy_space
    from fbprof.space import load_space

    fb = load_space("fbnet")
    p32 = proxy_space(fb, 32, 10)
    assert p32.dropped == ("stage 6",) and p32.space.final_hw == (2, 2)
    p32b = proxy_space(fb, 32, 10, min_feature=4)
    assert p32b.dropped == ("stage 6", "stage 4") and p32b.space.final_hw == (4, 4)
    p224 = proxy_space(fb, 224, 10)
    assert p224.dropped == () and [l.stride for l in p224.space.layers] == [l.stride for l in fb.layers]
    p8 = proxy_space(fb, 8, 10)
    assert p8.dropped == ("stage 6", "stage 4", "stage 3") and p8.space.final_hw == (2, 2)
    assert [l.candidates for l in p32.space.layers] == [l.candidates for l in fb.layers]
    assert p32.space.num_classes == 10


def test_lut_missing_keys_is_an_error_before_training(tiny_lut, tmp_path):
    from fbprof.errors import LutCoverageError
    from fbprof.lut.table import read_lut, write_lut
    from fbprof.search.dnas import run_search

    lut = read_lut(tiny_lut)
    gone = sorted(lut.rows)[:2]
    rows = [r for k, r in lut.rows.items() if k not in gone]
    short = tmp_path / "short.csv"
    write_lut(short, lut.header, rows)
    # the data path does not exist: the LUT check must come first
    with pytest.raises(LutCoverageError) as err:
        run_search(_config(short, tmp_path / "no-such-data", tmp_path / "o"))
    for k in gone:
        assert k in str(err.value)
    assert not (tmp_path / "o").exists()


def test_unstable_rows_are_named_in_warnings(tiny_lut, image_folder, tmp_path):
    import dataclasses

    from fbprof.lut.table import read_lut, write_lut
    from fbprof.search.dnas import run_search

    lut = read_lut(tiny_lut)
    bad = sorted(k for k in lut.rows if k.startswith("k3_e"))[:4]
    key = bad[0]
    rows = [dataclasses.replace(r, status="unstable" if k in bad else "ok", note="cv 0.4 >= 0.1" if k in bad else "")
            for k, r in lut.rows.items()]
    noisy = tmp_path / "noisy.csv"
    write_lut(noisy, lut.header, rows)
    rec = _Recorder()
    res = run_search(_config(noisy, image_folder, tmp_path / "o", epochs=1, warmup_epochs=0, max_steps=1), rec)
    # one summary line, not a scroll of warnings; every row in the result (and summary.json)
    warned = [n for n in rec.notes if "warning" in n]
    assert len(warned) == 1 and key in warned[0] and "unstable" in warned[0] and "more" in warned[0]
    for k in bad:
        assert [w for w in res.warnings if k in w]


def test_target_mode_moves_latency_towards_the_target(tiny_lut, image_folder, tmp_path):
    from fbprof.search.dnas import run_search

    res = run_search(_config(tiny_lut, image_folder, tmp_path / "t", epochs=4, warmup_epochs=0, max_steps=4,
                             target_ms=1e-6, theta_lr=0.2))
    first, last = res.history[0], res.history[-1]
    assert last["expected_latency_us"] < first["expected_latency_us"]


# ---------------------------------------------------------------------------------------------------
# data
def test_digits_are_upsampled_and_normalised():
    from fbprof.search.data import load_data

    d = load_data("digits", 16, 3)
    assert d.x_train.shape[1:] == (3, 16, 16) and d.num_classes == 10
    assert len(d.y_train) + len(d.y_test) == 1797
    assert abs(float(d.x_train.mean())) < 1e-3
    assert set(d.y_test.tolist()) == set(range(10))


def test_image_folder_errors(tmp_path):
    from fbprof.errors import InputError
    from fbprof.search.data import load_image_folder

    with pytest.raises(InputError, match="no such data directory"):
        load_image_folder(tmp_path / "nope", 16)
    one = _make_image_folder(tmp_path / "one", classes=1, per_class=3)
    with pytest.raises(InputError, match="at least 2 class sub-folders, found 1 \\(class_0\\)"):
        load_image_folder(one, 16)
    bad = _make_image_folder(tmp_path / "bad", classes=2, per_class=3)
    broken = bad / "class_1" / "broken.png"
    broken.write_bytes(b"this is not a png")
    with pytest.raises(InputError) as err:
        load_image_folder(bad, 16)
    assert str(broken) in str(err.value) and "cannot read image" in str(err.value)
    empty = _make_image_folder(tmp_path / "empty", classes=2, per_class=3)
    (empty / "class_2").mkdir()
    (empty / "class_2" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="class_2: class folder has no images"):
        load_image_folder(empty, 16)


def test_image_folder_loads(image_folder):
    from fbprof.search.data import load_image_folder

    d = load_image_folder(image_folder, 12)
    assert d.classes == ["class_0", "class_1", "class_2"]
    assert d.x_train.shape[1:] == (3, 12, 12)
    assert len(d.y_train) + len(d.y_test) == 120 and set(d.y_test.tolist()) == {0, 1, 2}


def test_cli_reports_bad_input_cleanly(tiny_lut, tmp_path):
    from typer.testing import CliRunner

    from fbprof.cli import app

    res = CliRunner().invoke(app, ["search", "--lut", str(tiny_lut), "--mode", "fuzzy", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--mode must be one of hard, soft" in res.output
    res = CliRunner().invoke(app, ["search", "--lut", str(tiny_lut), "--estimator", "guess", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--estimator must be one of rloo, straight-through" in res.output
    assert "Traceback" not in res.output


# ---------------------------------------------------------------------------------------------------
# the architecture gradient of hard mode: score function with a leave-one-out baseline (issue 11)
def _cfg_plain():
    from fbprof.search.dnas import SearchConfig

    return SearchConfig(lut="unused.csv", alpha=1.0, beta=1.0)


def test_rloo_gradient_is_the_leave_one_out_score_function():
    from fbprof.search.dnas import path_log_prob, rloo_loss

    cfg = _cfg_plain()
    theta = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]], requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    paths = [[0, 1], [2, 1], [1, 0]]
    ces = torch.tensor([1.0, 2.0, 4.0])
    lats = torch.full((3,), math.e)  # log(LAT) = 1: L = CE * alpha * 1**beta = CE
    logps = torch.stack([path_log_prob(theta, mask, p) for p in paths])
    surrogate, value = rloo_loss(cfg, ces, lats, logps, None, None)
    surrogate.backward()
    # by hand: advantages L_k - mean(others) = 1-3, 2-2.5, 4-1.5; grad = mean_k adv_k * grad log p(path_k)
    want = torch.zeros(2, 3)
    p = torch.softmax(theta.detach(), dim=-1)
    for adv, path in zip([-2.0, -0.5, 2.5], paths):
        for layer, i in enumerate(path):
            want[layer] += adv * (torch.nn.functional.one_hot(torch.tensor(i), 3).float() - p[layer]) / 3
    assert torch.allclose(theta.grad, want, atol=1e-6)
    assert float(value) == pytest.approx(7 / 3)


def test_rloo_ignores_a_loss_every_path_shares_and_lowers_the_worse_paths():
    from fbprof.search.dnas import path_log_prob, rloo_loss

    cfg = _cfg_plain()
    mask = torch.ones(1, 3, dtype=torch.bool)
    theta = torch.zeros(1, 3, requires_grad=True)
    logps = torch.stack([path_log_prob(theta, mask, [i]) for i in (0, 1, 2)])
    rloo_loss(cfg, torch.full((3,), 5.0), torch.full((3,), math.e), logps, None, None)[0].backward()
    assert torch.allclose(theta.grad, torch.zeros(1, 3))  # a hard batch raises every path's CE alike: no signal
    theta.grad = None
    logps = torch.stack([path_log_prob(theta, mask, [i]) for i in (0, 1, 2)])
    rloo_loss(cfg, torch.tensor([1.0, 2.0, 3.0]), torch.full((3,), math.e), logps, None, None)[0].backward()
    g = theta.grad[0]
    assert g[0] < 0 < g[2]  # descent raises the best path's logit and lowers the worst's


def test_rloo_is_an_unbiased_estimate_of_the_expected_loss_gradient():
    """Averaged over many steps, the estimate matches the exact gradient of E[L] = sum_i p_i L_i (what the
    straight-through estimate does not do in hard mode: it sees only the sampled candidate's output scale)."""
    from fbprof.search.dnas import path_log_prob, rloo_loss
    from fbprof.search.supernet import sample_gumbel

    cfg = _cfg_plain()
    losses = torch.tensor([1.0, 2.0, 0.5, 3.0])
    theta0 = torch.tensor([[0.2, -0.3, 0.0, 0.4]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    th = theta0.clone().requires_grad_(True)
    (torch.softmax(th, -1)[0] * losses).sum().backward()
    exact = th.grad[0]
    gen = torch.Generator().manual_seed(0)
    total, n = torch.zeros(4), 3000
    for _ in range(n):
        theta = theta0.clone().requires_grad_(True)
        idx = [sample_gumbel(theta0, mask, 1.0, True, gen)[1] for _ in range(4)]
        logps = torch.stack([path_log_prob(theta, mask, i) for i in idx])
        ces = torch.stack([losses[i[0]] for i in idx])
        rloo_loss(cfg, ces, torch.full((4,), math.e), logps, None, None)[0].backward()
        total += theta.grad[0]
    est = total / n
    assert torch.nn.functional.cosine_similarity(est, exact, dim=0) > 0.99
    assert float((est - exact).norm() / exact.norm()) < 0.1


def test_straight_through_estimator_is_still_available(tiny_lut, image_folder, tmp_path):
    from fbprof.search.dnas import run_search

    res = run_search(_config(tiny_lut, image_folder, tmp_path / "st", epochs=2, warmup_epochs=1, max_steps=2,
                             estimator="straight-through"))
    assert res.proxy["theta_gradient"].startswith("straight-through")
    assert res.history[-1]["theta_steps"] == 2


def test_default_schedule_counts_weight_steps():
    """Without --epochs: at least 640 weight steps and 10 epochs of at least 64 steps, half of them weights only
    (batch 128; digits: 10 epochs of 8 passes, 72 steps with the partial batches; CIFAR-10: 10 of one pass, 313)."""
    from fbprof.search.dnas import SearchConfig, _Dist, schedule

    cfg = SearchConfig(lut="unused.csv")
    dist = _Dist(cfg)
    digits = schedule(cfg, dist, torch.arange(1151), torch.arange(287))
    cifar = schedule(cfg, dist, torch.arange(40000), torch.arange(10000))
    assert digits == (8, 72, 8, 10, 5)  # passes, w steps per epoch (8 passes of 8 full batches + 1 of 127), theta passes, epochs, warm-up
    assert cifar == (1, 313, 1, 10, 5)  # 312 full batches + 1 of 64


def test_calibrated_search_reads_costs_from_the_luts_stored_calibration(tiny_lut, image_folder, tmp_path):
    """--calibrated: every candidate's cost is its share of the LUT's calibrated prediction (group scale x raw,
    plus the weight_mb term), the intercept joins the fixed part, and the architectures' predicted latency is
    the calibrated one; a LUT without a (current) calibration is refused before any training."""
    import shutil

    from fbprof.errors import InputError
    from fbprof.lut.calibration import LinearCalibration, calibration_of, store_calibration
    from fbprof.lut.predict import predict
    from fbprof.search.dnas import resolve_lut_space, run_search
    from fbprof.search.supernet import latency_table
    from fbprof.space import load_arch

    path = tmp_path / "cal.csv"
    shutil.copy(tiny_lut, path)
    with pytest.raises(InputError, match="no calibration"):
        run_search(_config(path, image_folder, tmp_path / "none", calibrated=True))
    lut = store_calibration(str(path), LinearCalibration("weights", 100.0, {"all": 0.5, "weight_mb": 10.0}), {"fitted_on": 3})
    sp = resolve_lut_space(lut, None, None, None)
    head = sp.head_channels[0]
    raw, mask, raw_fixed, _ = latency_table(sp, lut, head)
    cal, _, cal_fixed, _ = latency_table(sp, lut, head, calibration_of(lut))
    for li, layer in enumerate(sp.layers):
        for ci, cand in enumerate(layer.candidates):
            spec = layer.spec(cand)
            mb = 0.0 if spec.is_identity else 4 * spec.params() / 1e6
            assert float(cal[li, ci]) == pytest.approx(0.5 * float(raw[li, ci]) + 10.0 * mb, rel=1e-5)
    blocks = [layer.candidates[0] for layer in sp.layers]
    arch = sp.arch(blocks, head)
    pred = predict(arch, lut)
    chosen = sum(float(cal[li, 0]) for li in range(len(sp.layers)))
    assert cal_fixed + chosen == pytest.approx(pred.calibrated_us, rel=1e-5)
    fixed_specs = [sp.stem, *(s for _, s in sp.tail_specs(head))]
    assert cal_fixed == pytest.approx(100.0 + 0.5 * raw_fixed + 10.0 * sum(4 * s.params() / 1e6 for s in fixed_specs),
                                      rel=1e-6)

    res = run_search(_config(path, image_folder, tmp_path / "run", calibrated=True, epochs=2, max_steps=2))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["search"]["latency"].startswith("weights: 100.0 us")
    best = load_arch(tmp_path / "run" / "arch-best.yaml")
    assert res.best.predicted_us == pytest.approx(predict(best, lut).calibrated_us)
    # a refit calibration does not silently change a run half done
    store_calibration(str(path), LinearCalibration("scale", 0.0, {"all": 0.8}), {"fitted_on": 3})
    with pytest.raises(InputError, match="calibration changed"):
        run_search(_config(path, image_folder, tmp_path / "run", calibrated=True, epochs=3, max_steps=2, resume=True))
    # a calibration whose cheapest architecture is not a latency is refused before any training
    store_calibration(str(path), LinearCalibration("linear", -1e9, {"all": 1.0}), {"fitted_on": 3})
    with pytest.raises(InputError, match="cheapest architecture"):
        run_search(_config(path, image_folder, tmp_path / "neg", calibrated=True))


def test_a_resumed_search_keeps_its_planned_epochs_unless_epochs_is_given():
    """Resuming without --epochs keeps the checkpoint's number of epochs (and its warm-up), so a change of the
    default schedule does not re-plan a run half done; --epochs still grows it."""
    from fbprof.search.dnas import SearchConfig, _Dist, schedule

    cfg = SearchConfig(lut="unused.csv")
    dist = _Dist(cfg)
    w, t = torch.arange(40000), torch.arange(10000)
    assert schedule(cfg, dist, w, t, {"epochs": 5})[3:] == (5, 2)
    assert schedule(SearchConfig(lut="unused.csv", epochs=12), dist, w, t, {"epochs": 5})[3:] == (12, 6)
    assert schedule(cfg, dist, w, t, None)[3:] == (10, 5)


def test_search_config_is_checked_in_one_place_for_the_api_too(tmp_path):
    from fbprof.errors import InputError
    from fbprof.search.dnas import SearchConfig

    SearchConfig(lut="x.csv", beta=0.0, target_weight=0.0, tau_decay=0.0).validate()  # zeros that are choices
    for bad in ({"w_lr": float("inf")}, {"theta_lr": float("nan")}, {"alpha": 0.0}, {"width": -1.0},
                {"target_ms": 0.0}, {"beta": -0.5}):
        with pytest.raises(InputError, match="expected a finite number"):
            SearchConfig(lut="x.csv", **bad).validate()
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(InputError, match="is a file"):
        SearchConfig(lut="x.csv", out=str(f)).validate()
