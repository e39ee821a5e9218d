"""`fbprof verify --arch` on a grid LUT: FBNetV2 channel-space networks (ChannelArch) measured end to end
against their interpolated predictions, and `--breakdown` of one.

A tiny channel space at one small resolution and a synthetic grid LUT (torch backend: its export is fast;
the rows are made up, only the networks are measured). No timing thresholds."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from fbprof.cli import app
from fbprof.errors import InputError
from fbprof.loop import Stats
from fbprof.lut.interp import OutsideGridError, predict_interpolated
from fbprof.lut.table import LutRow, read_lut, write_lut
from fbprof.profiler.export import arch_from_ref, arch_key, arch_ref
from fbprof.space import ChannelArch, format_grid, format_space_tags, load_arch, load_space
from fbprof.verify import VerifyRequest, plan_verify
from fbprof.verify.breakdown import BREAKDOWN_COLUMNS

runner = CliRunner()
QUICK = ["--min-runs", "3", "--min-time", "0", "--workers", "1", "-q"]

SPACE = """schema: 1
name: v2verify
kind: channels
resolutions: [16]
num_classes: 10
stem: {channels: [8, 16], stride: 2, block: stem_hs}
candidates: [k3_e1_hs, k3_e4_hs, skip]
stages:
  - {channels: [8, 16, 24], repeats: 2, stride: 2}
head: {channels: [32], block: ir_pool_e6_hs}
grid: {points: 2}
"""


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _us(spec) -> float:
    return 5.0 + spec.macs() / 1e4


@pytest.fixture
def grid(tmp_path):
    sp_path = tmp_path / "v2verify.yaml"
    sp_path.write_text(SPACE)
    sp = load_space(sp_path)
    rows = [LutRow(s.key, "ok", Stats(5, 1, _us(s), _us(s), _us(s), _us(s), 0.0, 0.0, _us(s), _us(s)))
            for s in sp.all_specs()]
    header = {"device": "local", "backend": "torch", "format": "torchscript", "runtime": "torch x", "threads": "1",
              "spaces": format_space_tags(sp.tags), "grid": format_grid(sp.grid()),
              "loop": "warmup_runs=1;warmup_min_s=0.0;min_runs=3;min_time_s=0.0"}
    lut_path = tmp_path / "grid.csv"
    write_lut(lut_path, header, rows)
    archs = {
        # layer 1: 16 -> 16 channels, between the grid's axis points (8, 24): interpolated
        "c-one": "stem_channels: 16\nblocks: [k3_e4_hs, k3_e1_hs]\nchannels: [16, 24]\n",
        "c-two": "stem_channels: 8\nblocks: [k3_e1_hs, skip]\nchannels: [24, 24]\n",
    }
    files = {}
    for name, body in archs.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(f"name: {name}\nspace: v2verify.yaml\nresolution: 16\nhead_channels: 32\n{body}")
    return lut_path, files


def test_verify_measures_channel_archs_against_interpolated_predictions(grid, tmp_path):
    lut_path, files = grid
    before = lut_path.read_text()
    out = tmp_path / "report"
    res = run("verify", "--lut", lut_path, "--device", "local", "--arch", files["c-one"], "--arch", files["c-two"],
              "--rounds", 2, "--noise-repeats", 1, "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    assert "interpolated, held-out" in res.output and "c-one: predicted" in res.output
    lut = read_lut(lut_path)
    rows = {r["arch"]: r for r in csv.DictReader((out / "verify.csv").open())}
    assert set(rows) == {"c-one", "c-two"}
    for name, path in files.items():
        a = load_arch(path)
        assert isinstance(a, ChannelArch)
        r = rows[name]
        assert r["kind"] == "given" and r["split"] == "held-out" and r["status"] == "ok"
        assert float(r["predicted_us"]) == pytest.approx(predict_interpolated(a, lut).total_us, abs=1e-3)
        assert float(r["measured_us"]) > 0 and len(r["rounds"].split()) == 2
        assert r["calibrated_us"] == "" and r["channels"] == " ".join(map(str, a.channels))
    assert any(c.status == "interp" for c in predict_interpolated(load_arch(files["c-one"]), lut).layers)
    s = json.loads((out / "summary.json").read_text())
    assert s["counts"]["given"] == 2 and s["counts"]["held_out"] == 2 and s["counts"]["calibration"] == 0
    assert s["prediction"].startswith("interpolated") and s["calibrated"]["source"] == "none"  # no random archs
    assert set(s["given"]) == {"c-one", "c-two"}
    assert "--arch" in s["command"] and "--samples 0" in s["command"]
    assert (out / "verify.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lut_path.read_text() == before  # nothing fitted, nothing stored


def test_verify_fits_and_stores_a_calibration_of_a_grid_lut(grid, tmp_path, monkeypatch):
    """On a grid LUT verify fits a calibration on its calibration split (only the models a DMaskingNAS search
    can apply) and --store writes it into the LUT; predictions of any arch of the space then carry the
    calibrated latency, over interpolated layers too."""
    from fbprof.lut.calibration import GRID_MODELS, calibration_of, group_sums

    import fbprof.verify as verify_mod

    asked, real = [], verify_mod.select_and_fit

    def spy(*args, **kw):  # which models verify lets compete on a grid LUT (7 archs alone would rule out 3 of 5)
        asked.append(kw.get("models"))
        return real(*args, **kw)

    monkeypatch.setattr(verify_mod, "select_and_fit", spy)
    lut_path, files = grid
    out = tmp_path / "report"
    res = run("verify", "--lut", lut_path, "--samples", 10, "--calib-fraction", 0.7, "--rounds", 1, "--noise-repeats", 0,
              "--calibrate", "--store", "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    assert asked == [GRID_MODELS]
    s = json.loads((out / "summary.json").read_text())
    assert s["counts"]["calibration"] == 7 and s["calibrated"]["source"] == "fitted"
    lut = read_lut(lut_path)
    cal = calibration_of(lut)
    assert cal is not None and cal.model in GRID_MODELS and set(s["calibration"]["loo_rmspe_pct"]) <= set(GRID_MODELS)
    a = load_arch(files["c-one"])
    pred = predict_interpolated(a, lut)
    assert any(c.status == "interp" for c in pred.layers)
    assert group_sums(a, lut, "all")["all"] == pytest.approx(pred.total_us)  # the fit saw the interpolated sums
    assert pred.calibrated_us == pytest.approx(cal.apply(pred.total_us, a)) and pred.calibrated_us != pred.total_us
    res = run("predict", files["c-one"], "--lut", lut_path)
    assert res.exit_code == 0 and "calibrat" in res.output, res.output
    # --no-calibrate: the stored calibration is reported on every network (no split, nothing fitted or stored)
    before = lut_path.read_text()
    res = run("verify", "--lut", lut_path, "--arch", files["c-one"], "--samples", 0, "--rounds", 1, "--noise-repeats", 0,
              "--no-calibrate", "--out", tmp_path / "again", *QUICK)
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert s["calibrated"]["source"] == "stored in the LUT" and lut_path.read_text() == before
    row = next(csv.DictReader((tmp_path / "again" / "verify.csv").open()))
    assert float(row["calibrated_us"]) == pytest.approx(pred.calibrated_us, abs=1e-3)


def test_rows_read_are_all_a_grid_prediction_needs(grid):
    """A LUT holding only rows_read(arch) predicts arch exactly as the whole grid does (exact rows and the
    corners every interpolated layer reads), and without any one of them it cannot."""
    import dataclasses

    from fbprof.lut.predict import rows_read

    lut_path, files = grid
    lut = read_lut(lut_path)
    for path in files.values():
        a = load_arch(path)
        keys = rows_read(a, lut)
        assert keys and set(keys) <= set(lut.rows) and len(keys) < len(lut.rows)
        only = dataclasses.replace(lut, rows={k: lut.rows[k] for k in keys})
        assert predict_interpolated(a, only).total_us == pytest.approx(predict_interpolated(a, lut).total_us)
        for k in keys:
            with pytest.raises(InputError):
                predict_interpolated(a, dataclasses.replace(lut, rows={j: lut.rows[j] for j in keys if j != k}))


def test_verify_same_run_rows_interpolates_from_this_runs_grid_rows(grid, tmp_path):
    import dataclasses

    from fbprof.lut.predict import rows_read

    lut_path, files = grid
    out = tmp_path / "report"
    res = run("verify", "--lut", lut_path, "--arch", files["c-one"], "--arch", files["c-two"], "--rounds", 1,
              "--noise-repeats", 0, "--same-run-rows", "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    lut = read_lut(lut_path)
    sr = json.loads((out / "summary.json").read_text())["same_run_rows"]
    archs = {n: load_arch(p) for n, p in files.items()}
    assert set(sr["rows_us"]) == {k for a in archs.values() for k in rows_read(a, lut)}
    now = dataclasses.replace(lut, rows={k: LutRow(k, "ok", Stats.of([v])) for k, v in sr["rows_us"].items()})
    for r in csv.DictReader((out / "verify.csv").open()):
        assert float(r["same_run_us"]) == pytest.approx(predict_interpolated(archs[r["arch"]], now).total_us, abs=0.01)


def test_plan_samples_channel_archs_the_grid_covers_and_refuses_uncovered_ones(grid, tmp_path):
    lut_path, files = grid
    lut = read_lut(lut_path)
    sp = lut.space()
    plan = plan_verify(VerifyRequest(lut_path, device=None, samples=6, seed=3))
    randoms = [a for a in plan.archs if plan.kinds[a.name] == "random"]
    assert len(randoms) == 6 and all(isinstance(a, ChannelArch) for a in randoms)
    assert len({(a.blocks, a.channels, a.stem_channels) for a in randoms}) == 6  # distinct
    assert plan.calibrate and sorted(plan.splits.values()).count("calibration") == 2  # 30% of 6, as on any LUT
    for a in randoms:
        predict_interpolated(a, lut)  # every op inside the grid
    again = plan_verify(VerifyRequest(lut_path, device=None, samples=6, seed=3))
    assert [(a.blocks, a.channels) for a in again.archs] == [(a.blocks, a.channels) for a in randoms]  # seeded
    with pytest.raises(InputError, match="random v2verify networks found"):  # more than the tiny space holds
        plan_verify(VerifyRequest(lut_path, device=None, samples=500))

    import fbprof.verify.plan as plan_mod

    def outside(arch, lut):  # a grid that answers no draw of the space (a wider space than it was built for)
        raise InputError(f"{arch.name}: outside the grid")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_mod, "predict", outside)
        with pytest.raises(InputError, match="only 0 of 2 random v2verify networks .*outside the grid"):
            plan_mod.sample_channel_archs(sp, 2, 0, lut)  # a bounded number of draws, then a clear error
    wide = load_arch(files["c-one"], resolution=32)  # the grid was measured at 16 only
    with pytest.raises(OutsideGridError):
        plan_verify(VerifyRequest(lut_path, device=None, samples=0, archs=[wide]))
    twice = [load_arch(files["c-one"]), load_arch(files["c-one"])]
    with pytest.raises(InputError, match="two networks are named"):
        plan_verify(VerifyRequest(lut_path, device=None, samples=0, archs=twice))
    plan = plan_verify(VerifyRequest(lut_path, device=None, samples=0, archs=[load_arch(files["c-two"])]))
    assert set(plan.splits.values()) == {"held-out"} and plan.kinds == {"c-two": "given"} and plan.space.name == sp.name
    res = runner.invoke(app, ["verify", "--lut", str(lut_path), "--samples", "500", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--arch" in res.output  # the message's hint


def test_channel_arch_cache_key_and_worker_ref_keep_the_widths(grid):
    _, files = grid
    a = load_arch(files["c-one"])
    b = a.space.arch(a.blocks, (24, 24), a.stem_channels, a.head_channels, name=a.name)
    assert arch_key(a) != arch_key(b) and "c16/24" in arch_key(a)
    assert arch_from_ref(arch_ref(a)) == a


def test_breakdown_of_a_channel_arch(grid, tmp_path):
    lut_path, files = grid
    out = tmp_path / "bd"
    res = run("verify", "--lut", lut_path, "--breakdown", files["c-one"], "--rounds", 1, "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    a = load_arch(files["c-one"])
    pred = predict_interpolated(a, read_lut(lut_path))
    rows = list(csv.DictReader((out / "breakdown.csv").open()))
    assert tuple(rows[0]) == BREAKDOWN_COLUMNS
    assert [r["key"] for r in rows] == [s.key for _, s in a.ops()]
    for r, c in zip(rows, pred.layers):
        assert float(r["isolated_us"]) == pytest.approx(c.latency_us, abs=1e-3)  # interpolated where off the grid
        assert float(r["prefix_us"]) > 0
    res = runner.invoke(app, ["verify", "--lut", str(lut_path), "--breakdown", str(files["c-one"]),
                              "--breakdown-worst", "1", "--out", str(out)])
    assert res.exit_code == 2 and "not supported for channel spaces" in res.output


def test_the_python_api_verifies_given_channel_archs(grid, tmp_path):
    """``fbprof.VerifyConfig(archs=[...])`` is ``fbprof verify --arch``: the same given, held-out networks."""
    from fbprof.api import VerifyConfig, run_verify
    from fbprof.loop import LoopConfig

    lut_path, files = grid
    res = run_verify(VerifyConfig(lut=lut_path, archs=[str(files["c-one"])], samples=0, rounds=2, noise_repeats=1,
                                  loop=LoopConfig(warmup_runs=1, warmup_min_s=0.0, min_runs=3, min_time_s=0.0),
                                  cache_dir=tmp_path / "cache", report_dir=tmp_path / "report"))
    assert [r.name for r in res.results] == ["c-one"]
    assert res.summary["counts"]["given"] == 1 and set(res.summary["given"]) == {"c-one"}
    assert (tmp_path / "report" / "verify.csv").exists()


def test_interp_check_remeasures_heldout_ops_and_their_corners_interleaved(grid, tmp_path):
    """`lut interp-check --remeasure`: the held-out ops and the grid rows their interpolation reads are measured
    again in the same interleaved rounds, so the made-up latencies of both files play no part."""
    from fbprof.lut.interp import GridLut
    from fbprof.verify.interp import interleaved_interp_check

    lut_path, _ = grid
    lut = read_lut(lut_path)
    sp = lut.space()
    held = sp.heldout_specs(2, seed=1)
    g = GridLut(lut)
    for s in held:  # an off-grid op reads the 4 corners of its cell (one expansion measured per block)
        corners = g.sources(s)
        assert len(corners) == 4 and s.key not in corners and all(k in lut.rows for k in corners)
    rows = [LutRow(s.key, "ok", Stats(5, 1, 1e6, 1e6, 1e6, 1e6, 0.0, 0.0, 1e6, 1e6)) for s in held]
    held_path = tmp_path / "heldout.csv"
    write_lut(held_path, dict(lut.header), rows)
    res = run("lut", "interp-check", lut_path, held_path, "--remeasure", "--rounds", 2, "--cache-dir", tmp_path / "c", "-q")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "interleaved rounds" in text and "MAPE" in text and "1000000.0" not in text

    from fbprof.backends.cache import ArtifactCache
    from fbprof.devices.local import LocalDevice

    check, measured = interleaved_interp_check(lut, [s.key for s in held], LocalDevice(), ArtifactCache(tmp_path / "c"),
                                               rounds=2)
    assert [k for k, _, _ in check.rows] == sorted(s.key for s in held)
    assert all(len(v) == 2 for v in measured.values())  # one median per round
    assert set(measured) == {s.key for s in held} | {k for s in held for k in g.sources(s)}
    for key, m, p in check.rows:
        assert m == pytest.approx(sorted(measured[key])[0] / 2 + sorted(measured[key])[1] / 2)
        assert 0 < p < 1e6


def test_interp_check_paired_times_every_op_once_per_iteration(grid, tmp_path, remote_device):
    """`lut interp-check --remeasure --paired N`: N per-call samples of every op (held-out and corners), the
    medians compared; --paired without --remeasure, or on a device that cannot pair samples, is an error."""
    from fbprof.backends.cache import ArtifactCache
    from fbprof.devices.local import LocalDevice
    from fbprof.errors import InputError
    from fbprof.lut.interp import GridLut
    from fbprof.verify.interp import interleaved_interp_check

    lut_path, _ = grid
    lut = read_lut(lut_path)
    held = lut.space().heldout_specs(2, seed=1)
    check, measured = interleaved_interp_check(lut, [s.key for s in held], LocalDevice(), ArtifactCache(tmp_path / "c"),
                                               paired=7)
    g = GridLut(lut)
    assert set(measured) == {s.key for s in held} | {k for s in held for k in g.sources(s)}
    assert all(len(v) == 7 for v in measured.values())  # one sample per iteration
    for key, m, _ in check.rows:
        assert m == pytest.approx(sorted(measured[key])[3])
    with pytest.raises(InputError, match="--paired"):
        interleaved_interp_check(lut, [s.key for s in held], remote_device, ArtifactCache(tmp_path / "c"), paired=3)
    rows = [LutRow(s.key, "ok", Stats(5, 1, 1e6, 1e6, 1e6, 1e6, 0.0, 0.0, 1e6, 1e6)) for s in held]
    held_path = tmp_path / "heldout.csv"
    write_lut(held_path, dict(lut.header), rows)
    res = run("lut", "interp-check", lut_path, held_path, "--paired", 5)
    assert res.exit_code != 0 and "--remeasure" in res.output and "Traceback" not in res.output
    res = run("lut", "interp-check", lut_path, held_path, "--remeasure", "--paired", 5, "--cache-dir", tmp_path / "c", "-q")
    assert res.exit_code == 0, res.output
    assert "5 paired iterations" in " ".join(res.output.split()) and "MAPE" in res.output
    res = run("lut", "interp-check", lut_path, held_path, "--interp", "cubic")
    assert res.exit_code != 0 and "--interp must be one of bilinear, macs" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    from fbprof.verify.interp import same_run_check

    for scheme in ("bilinear", "macs"):  # the same samples, read with either scheme (benchmarks/interp_schemes.py)
        again = same_run_check(lut, sorted(s.key for s in held), measured, scheme)
        assert [k for k, _, _ in again.rows] == sorted(s.key for s in held) and all(p > 0 for _, _, p in again.rows)


def test_interp_check_measures_the_corners_of_further_grids_in_the_same_run(grid, tmp_path):
    """``interleaved_interp_check(also=[...])`` (benchmarks/interp_schemes.py --also): the corner rows another grid
    of the space reads for the same held-out ops are measured in the same run, so both grids are scored on the same
    samples; a grid of another backend is refused."""
    import dataclasses

    from fbprof.backends.cache import ArtifactCache
    from fbprof.devices.local import LocalDevice
    from fbprof.lut.interp import GridLut
    from fbprof.spec import OpSpec
    from fbprof.verify.interp import interleaved_interp_check, same_run_check

    lut_path, _ = grid
    coarse = read_lut(lut_path)
    fine_sp = dataclasses.replace(coarse.space(), grid_points=3)
    rows = [LutRow(s.key, "ok", Stats(5, 1, _us(s), _us(s), _us(s), _us(s), 0.0, 0.0, _us(s), _us(s)))
            for s in fine_sp.all_specs()]
    write_lut(tmp_path / "fine.csv", {**coarse.header, "grid": format_grid(fine_sp.grid())}, rows)
    fine = read_lut(tmp_path / "fine.csv")
    assert len(fine.rows) > len(coarse.rows)
    held = [s.key for s in coarse.space().heldout_specs(3, seed=1)]
    check, measured = interleaved_interp_check(coarse, held, LocalDevice(), ArtifactCache(tmp_path / "c"), paired=3,
                                               also=[fine])
    reads = [{k for h in held for k in GridLut(g).sources(OpSpec.parse(h))} for g in (coarse, fine)]
    assert reads[1] - reads[0] and set(measured) == set(held) | reads[0] | reads[1]
    assert [k for k, _, _ in check.rows] == sorted(held)
    again = same_run_check(fine, held, measured)
    assert [k for k, _, _ in again.rows] == held and not again.skipped
    for key, m, p in again.rows:
        assert m == pytest.approx(sorted(measured[key])[1]) and p > 0
    write_lut(tmp_path / "ort.csv", {**fine.header, "backend": "onnxruntime"}, rows)
    with pytest.raises(InputError, match="must share a backend"):
        interleaved_interp_check(coarse, held, LocalDevice(), ArtifactCache(tmp_path / "c"), paired=3,
                                 also=[read_lut(tmp_path / "ort.csv")])
