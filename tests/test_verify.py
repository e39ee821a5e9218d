"""`fbprof verify`: whole networks measured end to end against LUT predictions, and the calibration.

The end-to-end tests measure a tiny LUT with the torch backend (its export is fast), verify it on
ten random tiny networks and check the report files and the calibration stored in the LUT.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil

import pytest
from typer.testing import CliRunner

from fbprof.cli import app
from fbprof.errors import FileFormatError, InputError
from fbprof.lut.calibration import (CALIBRATION_SCHEMA, LinearCalibration, calibration_of, fit, group_sums, rows_digest,
                                    select_and_fit, store_calibration)
from fbprof.lut.predict import predict
from fbprof.lut.table import Lut, LutRow, read_lut, write_lut
from fbprof.loop import Stats
from fbprof.verify import (CSV_COLUMNS, REPORT_FILES, VerifyRequest, accuracy, plan_verify, published_archs,
                           round_order, sample_archs)
from fbprof.space import load_space

runner = CliRunner()
QUICK = ["--min-runs", "5", "--min-time", "0", "--warmup", "1", "--workers", "1", "-q"]
SAMPLES, CALIB = 10, 6  # --calib-fraction 0.6 of 10 random archs


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------------------------------------------------
# end to end: measure -> verify -> report files, calibration stored, predict uses it
@pytest.fixture(scope="module")
def torch_lut(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("vlut") / "tiny-torch.csv"
    res = run("measure", "--space", "tiny", "--backend", "torch", "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def verified(torch_lut, tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    lut = d / "lut.csv"
    shutil.copy(torch_lut, lut)
    out = d / "report"
    res = run("verify", "--lut", lut, "--device", "local", "--samples", SAMPLES, "--seed", 3, "--rounds", 2,
              "--noise-repeats", 2, "--calib-fraction", 0.6, "--min-runs", 5, "--min-time", 0, "--workers", 1,
              "--out", out, "-q")
    assert res.exit_code == 0, res.output
    return {"lut": lut, "original": torch_lut, "out": out, "output": res.output}


def test_verify_writes_the_per_arch_csv(verified):
    with open(verified["out"] / REPORT_FILES["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == SAMPLES  # tiny: no published archs
    assert sorted(r["split"] for r in rows) == ["calibration"] * CALIB + ["held-out"] * (SAMPLES - CALIB)
    assert len({r["blocks"] for r in rows}) == SAMPLES
    for r in rows:
        assert r["status"] == "ok" and r["kind"] == "random"
        pred, cal, meas = float(r["predicted_us"]), float(r["calibrated_us"]), float(r["measured_us"])
        assert pred > 0 and cal > 0 and meas > 0
        # columns are rounded to 0.001: error_pct from rounded values agrees to ~0.01 points
        assert float(r["error_pct"]) == pytest.approx(100 * (pred - meas) / meas, abs=0.01)
        assert float(r["calibrated_error_pct"]) == pytest.approx(100 * (cal - meas) / meas, abs=0.01)
        rounds = [float(x) for x in r["rounds"].split()]
        assert len(rounds) == 2 and meas == pytest.approx(sum(rounds) / 2, abs=2e-3)  # median of two rounds
        assert int(r["macs"]) > 0 and r["head_channels"] == "64" and len(r["blocks"].split()) == 4


def test_verify_writes_the_summary_and_plot(verified):
    s = json.loads((verified["out"] / REPORT_FILES["summary"]).read_text())
    assert s["schema"] == 1
    assert s["command"].startswith("fbprof verify --lut")
    assert s["space"] == "tiny@32/w1" and s["lut_header"]["backend"] == "torch"
    assert s["counts"] == {"archs": SAMPLES, "random": SAMPLES, "published": 0, "given": 0, "measured": SAMPLES,
                           "calibration": CALIB, "held_out": SAMPLES - CALIB, "failed": 0}
    metric_keys = {"n", "mape_pct", "rmspe_pct", "bias_pct", "max_abs_error_pct", "within_5_pct", "within_10_pct",
                   "kendall_tau", "spearman_rho"}
    assert set(s["raw"]["all"]) == metric_keys and s["raw"]["all"]["n"] == SAMPLES
    assert set(s["raw"]["held_out"]) == metric_keys and s["raw"]["held_out"]["n"] == SAMPLES - CALIB
    assert set(s["calibrated"]["held_out"]) == metric_keys
    assert s["calibrated"]["source"] == "fitted" and s["calibration"]["chosen"] in ("scale", "linear")
    # 6 archs: too few for 4-parameter stages; "linear" is left out when noise makes its fit unphysical (negative
    # scale or a non-positive prediction), "scale" (a positive ratio of positive sums) never is
    assert "scale" in s["calibration"]["loo_rmspe_pct"] and set(s["calibration"]["loo_rmspe_pct"]) <= {"scale", "linear"}
    for block in (s["raw"]["all"], s["calibrated"]["held_out"]):
        assert 0 <= block["within_5_pct"] <= block["within_10_pct"] <= 1
        assert -1 <= block["kendall_tau"] <= 1 and -1 <= block["spearman_rho"] <= 1
    assert set(s["macs"]["all"]) == {"kendall_tau", "spearman_rho"}
    assert "linear_fit_held_out" in s["macs"]
    nf = s["noise_floor"]
    assert nf["replicas"] == 2 and nf["single_measurements"] == 4 and nf["spread_pct"] >= 0
    assert 0 < nf["perfect_predictor_within_5_pct"] <= nf["perfect_predictor_within_10_pct"] <= 1
    assert len(nf["replica_rounds_us"]) == 2 and all(len(x) == 2 for x in nf["replica_rounds_us"])
    assert -1 <= nf["perfect_predictor_kendall_tau_held_out"] <= 1
    assert set(s["goals_met"]) == {"within_10_pct", "within_5_pct", "kendall_tau", "judged_on"}
    assert (verified["out"] / REPORT_FILES["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (verified["out"] / "COMMAND.txt").read_text().startswith("fbprof verify --lut")


def test_verify_stores_the_calibration_keeping_rows(verified):
    before, after = verified["original"].read_text().splitlines(), verified["lut"].read_text().splitlines()
    col = before.index(next(line for line in before if line.startswith("key,")))
    assert after[after.index(before[col]):] == before[col:]  # rows byte-identical
    cal_lines = [line for line in after if line.startswith("# calibration: ")]
    assert len(cal_lines) == 1
    d = json.loads(cal_lines[0][len("# calibration: "):])
    assert d["schema"] == CALIBRATION_SCHEMA and d["fitted_on"] == CALIB
    lut = read_lut(verified["lut"])
    cal = calibration_of(lut)
    assert cal is not None and cal.model == d["model"] and d["rows_digest"] == rows_digest(lut.rows)
    s = json.loads((verified["out"] / REPORT_FILES["summary"]).read_text())
    assert cal.intercept_us == pytest.approx(s["calibration"]["intercept_us"], abs=1e-3)


def test_predict_uses_the_stored_calibration(verified, tmp_path):
    arch = tmp_path / "a.yaml"
    arch.write_text("name: mine\nspace: tiny\nblocks: [k3_e1, k3_e3, skip, k5_e3]\n")
    lut = read_lut(verified["lut"])
    from fbprof.space import load_arch

    p = predict(load_arch(str(arch)), lut)
    cal = calibration_of(lut)
    assert p.calibrated_us == pytest.approx(cal.apply(p.total_us, load_arch(str(arch))))
    assert p.calibrated_us != pytest.approx(p.total_us)
    res = run("predict", arch, "--lut", verified["lut"])
    assert res.exit_code == 0 and f"{p.calibrated_us / 1000:.3f}" in res.output
    # the uncalibrated LUT shows no calibrated value
    assert predict(load_arch(str(arch)), read_lut(verified["original"])).calibrated_us is None


def test_no_calibrate_reports_the_stored_calibration_and_stores_nothing(verified, tmp_path):
    """--no-calibrate: no split, nothing fitted or stored; the LUT's stored calibration is applied to every network
    (this went unreported between 2026-12-01 and 2026-12-02: a branch for grid LUTs shadowed it)."""
    lut = tmp_path / "lut.csv"
    shutil.copy(verified["lut"], lut)
    before = lut.read_text()
    out = tmp_path / "report"
    res = run("verify", "--lut", lut, "--samples", 2, "--seed", 9, "--rounds", 1, "--noise-repeats", 0, "--no-calibrate",
              "--min-runs", 5, "--min-time", 0, "--workers", 1, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    s = json.loads((out / REPORT_FILES["summary"]).read_text())
    assert s["calibrated"]["source"] == "stored in the LUT" and s["counts"]["calibration"] == 0
    table = read_lut(lut)
    cal, sp = calibration_of(table), table.space()
    rows = list(csv.DictReader((out / REPORT_FILES["csv"]).open(newline="")))
    assert len(rows) == 2
    for r in rows:
        arch = sp.arch(r["blocks"].split(), int(r["head_channels"]), name=r["arch"])
        assert float(r["calibrated_us"]) == pytest.approx(cal.apply(float(r["predicted_us"]), arch), abs=0.01)
    assert lut.read_text() == before


def test_verify_rejects_another_backend_and_uncovered_space(verified, tmp_path):
    res = runner.invoke(app, ["verify", "--lut", str(verified["original"]), "--backend", "onnxruntime", "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2 and "was measured with backend 'torch', not 'onnxruntime'" in res.output
    res = runner.invoke(app, ["verify", "--lut", str(verified["original"]), "--space", "fbnet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "does not cover space fbnet" in res.output
    assert not (tmp_path / "r").exists()


def test_same_run_rows_predict_from_this_runs_rows_not_the_stored_ones(torch_lut, tmp_path):
    """--same-run-rows: the rows the predictions read are measured beside the networks, and every network is
    predicted again from them. A LUT whose rows all read 1000x (as if measured on a far slower day) misses by
    ~1000x raw; the same-run prediction does not read the stored rows at all, and now/LUT says 1/1000."""
    from fbprof.lut.predict import rows_read

    lut = read_lut(torch_lut)
    slow = tmp_path / "slow.csv"
    old_header = {k: v for k, v in lut.header.items() if k != "timed"}  # and timed as before 2026-12-01
    write_lut(slow, old_header, [LutRow(r.key, r.status, r.stats.scaled(1000)) for r in lut.rows.values()])
    out = tmp_path / "report"
    res = run("verify", "--lut", slow, "--samples", 4, "--seed", 5, "--rounds", 1, "--noise-repeats", 0, "--no-calibrate",
              "--same-run-rows", "--min-runs", 3, "--min-time", 0, "--workers", 1, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert "LUT rows measured in this run" in res.output
    s = json.loads((out / REPORT_FILES["summary"]).read_text())
    assert "--same-run-rows" in s["command"]
    assert [m for m in s["identity_mismatch"] if m.startswith("timed:")] == [
        "timed: '(none: an output read back in every call)' in the LUT, 'invoke' here"]
    sr = s["same_run_rows"]
    rows = list(csv.DictReader((out / REPORT_FILES["csv"]).open(newline="")))
    sp = lut.space()
    archs = [sp.arch(r["blocks"].split(), int(r["head_channels"]), name=r["arch"]) for r in rows]
    assert set(sr["rows_us"]) == {k for a in archs for k in rows_read(a, lut)} and sr["rows"] == len(sr["rows_us"])
    assert sr["failed"] == {} and sr["now_over_lut"]["median"] < 0.01  # 1/1000 of the stored rows, give or take noise
    for r, a in zip(rows, archs):
        assert float(r["same_run_us"]) == pytest.approx(sum(sr["rows_us"][k] for k in rows_read(a, lut)), abs=0.01)
        assert float(r["predicted_us"]) > 100 * float(r["same_run_us"])  # the stored rows' sum is the 1000x one
    assert sr["raw"]["all"]["n"] == 4 and s["raw"]["all"]["bias_pct"] > 10000
    assert abs(sr["raw"]["all"]["bias_pct"]) < 1000  # same-run rows: the device's own scale, not the stored 1000x


def test_same_run_rows_paired_a_row_that_fails_and_a_change_of_method(torch_lut, tmp_path, monkeypatch):
    """By pairing, on a LUT measured with loops: the summary says the rows were measured otherwise than the LUT's
    (and the listener is told); a row that cannot be exported is listed as failed, and exactly the networks that
    read it get no same-run prediction; a network named like a row is refused."""
    import fbprof.verify as verify_mod
    from fbprof.errors import MeasurementError
    from fbprof.lut.predict import rows_read
    from fbprof.verify import VerifyConfig, open_verify, run_verify

    lut = read_lut(torch_lut)
    broken = "k5_e3:16x8x8:16:s1"
    assert broken in lut.rows
    real = verify_mod.export_ops

    def export_ops(specs, *args, **kwargs):
        out = real([s for s in specs if s.key != broken], *args, **kwargs)
        if any(s.key == broken for s in specs):
            out[broken] = MeasurementError(f"{broken}: export failed (test)")
        return out

    monkeypatch.setattr(verify_mod, "export_ops", export_ops)
    notes: list[str] = []

    class Listen(verify_mod.VerifyListener):
        def on_note(self, message):
            notes.append(message)

    cfg = VerifyConfig(lut=torch_lut, samples=6, seed=1, rounds=2, paired=6, noise_repeats=0, calibrate=False,
                       same_run_rows=True)
    with open_verify(cfg) as req:
        result = run_verify(req, Listen())
    sr = result.summary["same_run_rows"]
    assert sr["measured"] == {"here": "pairing (6 iterations)", "in_the_lut": f"loop ({lut.header['loop']})"}
    assert any("ratio mixes that change" in n for n in notes) and any(broken in n for n in notes)
    assert list(sr["failed"]) == [broken] and broken not in sr["rows_us"]
    for r in result.results:
        reads = broken in rows_read(r.arch, lut)
        assert r.measured_us is not None and (r.same_run_us is None) == reads
    assert any(broken in rows_read(r.arch, lut) for r in result.results)
    assert any(r.same_run_us is not None for r in result.results)
    assert result.summary["lut_header"]["timed"] == "invoke"

    named = tmp_path / "row x.yaml"
    named.write_text("name: row x\nspace: tiny\nblocks: [k3_e1, k3_e3, skip, k5_e3]\n")
    with pytest.raises(InputError, match="names starting with 'row '"):
        with open_verify(VerifyConfig(lut=torch_lut, samples=0, archs=[str(named)], same_run_rows=True)) as req:
            run_verify(req)


# ------------------------------------------------------------------------------------------------
# units: sampling, order, statistics, calibration fit and header round trip
def test_sampling_is_seeded_distinct_and_uniform():
    sp = load_space("tiny")
    a, b = sample_archs(sp, 200, 7), sample_archs(sp, 200, 7)
    assert [x.blocks for x in a] == [x.blocks for x in b]
    assert [x.blocks for x in sample_archs(sp, 5, 8)] != [x.blocks for x in a[:5]]
    assert len({x.blocks for x in a}) == 200
    for i, layer in enumerate(sp.layers):
        counts = {c: sum(x.blocks[i] == c for x in a) for c in layer.candidates}
        assert all(25 <= n <= 75 for n in counts.values()), counts  # 50 expected each
    with pytest.raises(InputError, match="fewer than 300 distinct"):
        sample_archs(sp, 300, 0)  # tiny has 4**4 = 256


def test_published_archs_only_for_fbnet():
    assert [a.name for a in published_archs(load_space("fbnet"))] == ["fbnet-a", "fbnet-b", "fbnet-c"]
    assert [a.head_channels for a in published_archs(load_space("fbnet"))] == [1504, 1984, 1984]
    assert published_archs(load_space("tiny")) == []


def test_round_order_visits_each_once_and_spreads_noise_replicas():
    names = [f"a{i}" for i in range(12)]
    rng = random.Random(0)
    o1, o2 = round_order(names, "a3", 3, rng), round_order(names, "a3", 3, rng)
    for o in (o1, o2):
        assert sorted(n for n, rep in o if rep < 0) == sorted(names)
        reps = [i for i, (n, rep) in enumerate(o) if rep >= 0]
        assert [o[i] for i in reps] == [("a3", 0), ("a3", 1), ("a3", 2)]
        assert all(b - a >= 3 for a, b in zip(reps, reps[1:]))  # spread through the round
    assert o1 != o2
    assert round_order(names, None, 3, rng) and all(rep < 0 for _, rep in round_order(names, None, 3, rng))


def test_accuracy_statistics():
    meas = [100.0, 200.0, 300.0, 400.0]
    pred = [104.0, 180.0, 330.0, 400.0]  # +4%, -10%, +10%, 0%
    a = accuracy(pred, meas)
    assert a["n"] == 4
    assert a["mape_pct"] == pytest.approx(6.0)
    assert a["rmspe_pct"] == pytest.approx(math.sqrt((16 + 100 + 100) / 4), abs=1e-3)
    assert a["bias_pct"] == pytest.approx(1.0)
    assert a["within_5_pct"] == 0.5 and a["within_10_pct"] == 1.0 and a["max_abs_error_pct"] == pytest.approx(10.0)
    assert a["kendall_tau"] == 1.0 and a["spearman_rho"] == 1.0
    assert accuracy([3.0, 2.0, 1.0], [1.0, 2.0, 3.0])["kendall_tau"] == -1.0
    assert accuracy([], []) == {"n": 0}


def _fake_lut(path, space, seed=0) -> Lut:
    rng = random.Random(seed)
    rows = {}
    for s in space.all_specs():
        m = rng.uniform(10, 100)
        rows[s.key] = LutRow(s.key, "ok", Stats(5, 1, m, None, None, m, 0.0, 0.0, m, m))
    header = {"device": "local", "backend": "torch", "format": "torchscript", "runtime": "torch x", "threads": "1",
              "spaces": f"{space.name}@{space.resolution}/w{space.width:g}",
              "loop": "warmup_runs=2;warmup_min_s=0.0;min_runs=7;min_time_s=0.5"}
    write_lut(path, header, rows.values())
    return read_lut(path)


def test_fit_recovers_linear_and_stage_corrections(tmp_path):
    sp = load_space("tiny")
    lut = _fake_lut(tmp_path / "l.csv", sp)
    archs = sample_archs(sp, 40, 1)
    raw = [predict(a, lut).total_us for a in archs]
    measured = [50.0 + 1.1 * r for r in raw]
    cal, rep = select_and_fit(archs, measured, lut)
    assert rep.chosen == "linear" and rep.loo_rmspe_pct["linear"] < 1e-6 < rep.loo_rmspe_pct["scale"]
    assert cal.intercept_us == pytest.approx(50.0) and cal.scales["all"] == pytest.approx(1.1)
    assert cal.apply(raw[0], archs[0]) == pytest.approx(measured[0])
    # early blocks faster, late slower: only the per-stage model fits it
    staged = [20 + 0.8 * g["early"] + 1.0 * g["middle"] + 1.3 * g["late"]
              for g in (group_sums(a, lut, "thirds") for a in archs)]
    cal, rep = select_and_fit(archs, staged, lut)
    assert rep.chosen == "stages"
    assert cal.scales == pytest.approx({"early": 0.8, "middle": 1.0, "late": 1.3}) and cal.intercept_us == pytest.approx(20)
    # a cost per MB of weights (re-read from beyond the private cache in a network): only `weights` fits it
    weighted = [30 + 0.95 * g["all"] + 4.0 * g["weight_mb"] for g in (group_sums(a, lut, "weights") for a in archs)]
    assert len({round(g["weight_mb"], 6) for g in (group_sums(a, lut, "weights") for a in archs)}) > 10
    cal, rep = select_and_fit(archs, weighted, lut)
    assert rep.chosen == "weights" and rep.loo_rmspe_pct["weights"] < 1e-6
    assert cal.scales == pytest.approx({"all": 0.95, "weight_mb": 4.0}) and cal.intercept_us == pytest.approx(30)
    assert cal.apply(raw[3], archs[3]) == pytest.approx(weighted[3])
    assert "us/MB x weight_mb" in cal.describe()
    with pytest.raises(ValueError, match="at least 3 calibration archs"):
        select_and_fit(archs[:2], staged[:2], lut)
    with pytest.raises(ValueError, match="only 1 archs"):
        fit([{"all": 1.0}], [2.0], "linear")


def test_calibration_round_trips_through_the_lut_header(tmp_path):
    sp = load_space("tiny")
    path = tmp_path / "l.csv"
    lut = _fake_lut(path, sp)
    rows_before = path.read_text().split("key,status")[1]
    cal = LinearCalibration("stages", 12.5, {"early": 0.9, "middle": 1.05, "late": 1.2})
    store_calibration(str(path), cal, {"fitted_on": 30})
    assert path.read_text().split("key,status")[1] == rows_before
    back = calibration_of(read_lut(path))
    assert back is not None and back.model == "stages" and back.intercept_us == 12.5
    assert back.scales == {"early": 0.9, "middle": 1.05, "late": 1.2} and back.info["fitted_on"] == 30
    a = sample_archs(sp, 1, 0)[0]
    cal.lut = lut
    assert back.apply(predict(a, lut).total_us, a) == pytest.approx(cal.apply(0.0, a))
    assert predict(a, read_lut(path)).calibrated_us == pytest.approx(cal.apply(0.0, a))
    # rows measured again: the calibration no longer applies
    text = path.read_text()
    key = sorted(lut.rows)[0]
    line = next(x for x in text.splitlines() if x.startswith(key + ","))
    cells = line.split(",")
    cells[4] = cells[7] = cells[10] = cells[11] = f"{float(cells[4]) + 1:.3f}"
    path.write_text(text.replace(line, ",".join(cells)))
    assert calibration_of(read_lut(path)) is None


def test_calibration_is_not_stored_over_rows_it_was_not_fitted_on_or_while_another_run_writes(tmp_path):
    from fbprof.fileio import OutputLock

    sp = load_space("tiny")
    path = tmp_path / "l.csv"
    lut = _fake_lut(path, sp)
    before = path.read_text()
    cal = LinearCalibration("scale", 0.0, {"all": 0.9})
    changed = {k: r for k, r in list(lut.rows.items())[1:]}  # the fit saw other rows than the file holds now
    with pytest.raises(InputError, match="rows changed while the calibration was being fitted"):
        store_calibration(str(path), cal, {"fitted_on": 3}, fitted_rows=changed)
    with OutputLock(path, "fbprof measure --out l.csv"):
        with pytest.raises(InputError, match="being written by another run .*fbprof measure --out l.csv"):
            store_calibration(str(path), cal, {"fitted_on": 3}, fitted_rows=lut.rows)
    assert path.read_text() == before
    store_calibration(str(path), cal, {"fitted_on": 3}, fitted_rows=lut.rows)
    assert calibration_of(read_lut(path)).info["rows_digest"] == rows_digest(lut.rows)


@pytest.mark.parametrize("value, reason", [
    ("{not json", "invalid JSON"),
    ('{"schema": 9, "model": "linear"}', "unsupported schema 9"),
    ('{"schema": 1, "model": "cubic"}', "unknown model 'cubic'"),
    ('{"schema": 1, "model": "linear", "intercept_us": 1, "scales": {"early": 1}}', "scales must be an object with exactly the groups all"),
    ('{"schema": 1, "model": "scale", "intercept_us": 3, "scales": {"all": 1}}', "model scale has no intercept"),
    ('{"schema": 1, "model": "linear", "intercept_us": "x", "scales": {"all": 1}}', "intercept_us must be"),
])
def test_malformed_calibration_names_file_and_line(tmp_path, value, reason):
    path = tmp_path / "l.csv"
    _fake_lut(path, load_space("tiny"))
    lines = path.read_text().split("\n")
    lines.insert(3, f"# calibration: {value}")
    path.write_text("\n".join(lines))
    with pytest.raises(FileFormatError) as e:
        calibration_of(read_lut(path))
    assert f"{path}:4: calibration: {reason}" in str(e.value)


def test_plan_reads_space_loop_and_splits_from_the_lut(tmp_path):
    sp = load_space("tiny")
    lut = _fake_lut(tmp_path / "l.csv", sp)
    assert lut.space().layers == sp.layers
    loop = lut.loop_config()
    assert (loop.warmup_runs, loop.min_runs, loop.min_time_s) == (2, 7, 0.5)

    class NoDevice:  # plan_verify only reads the LUT
        pass

    plan = plan_verify(VerifyRequest(tmp_path / "l.csv", NoDevice(), samples=10, seed=1, calib_fraction=0.3))
    assert plan.backend == "torch" and plan.format == "torchscript" and plan.threads == 1
    assert sum(s == "calibration" for s in plan.splits.values()) == 3 and len(plan.archs) == 10
    assert plan.noise_arch == plan.archs[0].name
    plan = plan_verify(VerifyRequest(tmp_path / "l.csv", NoDevice(), samples=10, seed=1, calibrate=False))
    assert set(plan.splits.values()) == {"held-out"}
    lut.header["spaces"] = "tiny@32/w1, fbnet@224/w1"
    with pytest.raises(InputError, match="names 2 spaces"):
        lut.space()
    with pytest.raises(InputError, match="between 0 and 1"):
        VerifyRequest(tmp_path / "l.csv", NoDevice(), calib_fraction=1.5)


def test_the_recorded_verify_command_says_what_an_api_call_measured():
    from fbprof.loop import LoopConfig
    from fbprof.verify import VerifyConfig, verify_command

    cmd = verify_command(VerifyConfig(lut="x.csv", loop=LoopConfig(min_runs=7, min_time_s=0.1), profiles=["p.yaml"],
                                      options={"token": "s3cr3t", "pin": "false"}, report_dir="rep"))
    assert "--min-runs 7 --min-time 0.1 --out rep --profiles p.yaml" in cmd
    assert "--option pin=false" in cmd and "--option 'token=<secret>'" in cmd and "s3cr3t" not in cmd
    cli = verify_command(VerifyConfig(lut="x.csv", min_runs=5, paired=9, rounds=3))
    assert cli.startswith("fbprof verify --lut x.csv --device local --samples 100 --seed 0 --rounds 3 --paired 9 ")
    assert cli.endswith("--min-runs 5")


def test_plot_legend_says_tau_is_undefined_rather_than_nan():
    """Two networks give no Kendall tau (None, or nan from the stats): the legend says ``-``; a tau of 0 is a value."""
    from fbprof.verify.report import _tau

    assert _tau(None) == "-" and _tau(float("nan")) == "-"
    assert _tau(0.0) == "0.000" and _tau(0.8571) == "0.857"
