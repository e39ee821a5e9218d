"""`fbprof verify --breakdown`: per-layer in-context costs from a network's prefixes, beside the LUT rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fbprof.cli import app
from fbprof.space import load_space
from fbprof.verify.breakdown import BREAKDOWN_COLUMNS, worst_from_report

runner = CliRunner()
QUICK = ["--min-runs", "5", "--min-time", "0", "--warmup", "1", "--workers", "1", "-q"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def torch_lut(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("blut") / "tiny-torch.csv"
    res = run("measure", "--space", "tiny", "--backend", "torch", "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    return out


def test_prefix_artifacts_are_the_networks_first_ops(cache_dir):
    from fbprof.backends.cache import ArtifactCache
    from fbprof.build import build_arch, example_input, seed_for
    from fbprof.profiler.export import arch_artifact
    from fbprof.verify.breakdown import prefix_artifact

    sp = load_space("tiny")
    arch = sp.arch(["k3_e1", "k5_e3", "skip", "k3_e3"], name="bd-a")
    cache = ArtifactCache(cache_dir)
    n = len(arch.ops())
    full = prefix_artifact(arch, n, "torchscript", cache)
    whole = arch_artifact(arch, "torchscript", cache)
    np.testing.assert_allclose(full.expected, whole.expected, rtol=1e-6, atol=1e-6)  # same weights, same BN
    net = build_arch(arch)
    x = example_input((1, 3, 32, 32), seed=seed_for(arch.name))
    import torch

    with torch.no_grad():
        y = x
        for layer in list(net.layers)[:3]:
            y = layer(y)
    p3 = prefix_artifact(arch, 3, "torchscript", cache)
    assert p3.expected.shape == tuple(y.shape) == (1, 16, 8, 8)
    np.testing.assert_allclose(p3.expected, y.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="out of range"):
        prefix_artifact(arch, n + 1, "torchscript", cache)


def test_breakdown_cli_writes_table_csv_json_png(torch_lut, tmp_path):
    arch = tmp_path / "a.yaml"
    arch.write_text("name: bd-a\nspace: tiny\nblocks: [k3_e1, k5_e3, skip, k3_e3]\n")
    out = tmp_path / "report"
    res = run("verify", "--lut", torch_lut, "--breakdown", arch, "--rounds", 2, "--min-runs", 5, "--min-time", 0,
              "--workers", 1, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert "in context" in res.output and "isolated LUT sum" in res.output
    rows = list(csv.DictReader((out / "breakdown.csv").open()))
    assert tuple(rows[0]) == BREAKDOWN_COLUMNS
    sp = load_space("tiny")
    ops = sp.arch(["k3_e1", "k5_e3", "skip", "k3_e3"]).ops()
    assert [r["key"] for r in rows] == [s.key for _, s in ops]
    assert [r["layer"] for r in rows] == [n for n, _ in ops]
    prefixes = [float(r["prefix_us"]) for r in rows]
    diffs = [float(r["in_context_us"]) for r in rows]
    assert all(p > 0 for p in prefixes)
    # in-context costs are differences of consecutive prefixes: they add up to the whole network
    assert sum(diffs) == pytest.approx(prefixes[-1], rel=1e-3, abs=0.01)
    skip = rows[3]
    assert skip["key"].startswith("skip:") and float(skip["isolated_us"]) == 0 and skip["ratio"] == ""
    assert float(skip["isolated_now_us"]) == 0 and all(float(r["isolated_now_us"]) > 0 for r in rows if r is not skip)
    # the ratio is in context over isolated, both from this run
    r = rows[1]
    assert float(r["ratio"]) == pytest.approx(float(r["in_context_us"]) / float(r["isolated_now_us"]), rel=1e-3)
    summary = json.loads((out / "breakdown.json").read_text())
    assert summary["archs"]["bd-a"]["end_to_end_us"] == pytest.approx(prefixes[-1], abs=0.001)
    assert "--breakdown" in summary["command"] and (out / "BREAKDOWN_COMMAND.txt").exists()
    assert "--min-runs 5 --min-time 0" in summary["command"]  # the command reproduces the run, loop included
    png = (out / "breakdown.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # --json: one document on stdout, no tables; --backend other than the LUT's is refused, not ignored
    from fbprof.cli.jsonout import SCHEMAS, check

    res = run("verify", "--lut", torch_lut, "--breakdown", arch, "--rounds", 1, "--min-runs", 3, "--min-time", 0,
              "--workers", 1, "--out", tmp_path / "j", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert check(doc, SCHEMAS["verify-breakdown"]) == [] and doc["schema"] == "fbprof.verify-breakdown/1"
    assert [c["key"] for c in doc["summary"]["layers"]["bd-a"]] == [s.key for _, s in ops]
    assert Path(doc["files"]["csv"]).exists()
    res = run("verify", "--lut", torch_lut, "--breakdown", arch, "--backend", "onnxruntime", "--out", tmp_path / "b")
    assert res.exit_code == 2 and "measures with the LUT's backend (torch)" in res.output


def test_paired_breakdown_differences_samples_iteration_by_iteration(torch_lut, tmp_path):
    arch = tmp_path / "a.yaml"
    arch.write_text("name: bd-p\nspace: tiny\nblocks: [k3_e1, k5_e3, skip, k3_e3]\n")
    out = tmp_path / "paired"
    res = run("verify", "--lut", torch_lut, "--breakdown", arch, "--paired", 12, "--workers", 1, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "breakdown.csv").open()))
    assert [r["layer"] for r in rows][:1] == ["stem"] and all(float(r["prefix_us"]) > 0 for r in rows)
    assert float(rows[0]["in_context_us"]) == pytest.approx(float(rows[0]["prefix_us"]), rel=1e-3)
    assert all(r["in_context_us"] != "" and r["prefix_spread_pct"] != "" for r in rows)
    summary = json.loads((out / "breakdown.json").read_text())
    assert summary["paired_iterations"] == 12 and "rounds" not in summary
    assert "--paired 12" in summary["command"] and "--rounds" not in summary["command"]
    # verify's own networks, paired: the iterations are cut into --rounds rounds
    res = run("verify", "--lut", torch_lut, "--arch", arch, "--paired", 9, "--rounds", 3, "--noise-repeats", 2,
              "--out", tmp_path / "v", "-q")
    assert res.exit_code == 0, res.output
    v = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert v["paired_iterations"] == 9 and v["rounds"] == 3 and "--paired 9" in v["command"]
    assert v["noise_floor"]["replicas"] == 2 and "pairing" in v["aggregation"]
    got = list(csv.DictReader((tmp_path / "v" / "verify.csv").open()))
    assert [len(r["rounds"].split()) for r in got] == [3] and float(got[0]["measured_us"]) > 0
    res = run("verify", "--lut", torch_lut, "--arch", arch, "--paired", 2, "--rounds", 3, "--out", tmp_path / "w", "-q")
    assert res.exit_code != 0 and "must be at least --rounds 3" in res.output


def test_paired_breakdown_needs_a_device_that_pairs_samples(torch_lut, remote_device):
    from fbprof.errors import InputError
    from fbprof.verify.breakdown import BreakdownRequest

    arch = load_space("tiny").arch(["k3_e1", "k5_e3", "skip", "k3_e3"], name="bd-r")
    with pytest.raises(InputError, match="cannot interleave single samples"):
        BreakdownRequest(torch_lut, remote_device, [arch], paired=10)


def test_two_networks_of_one_name_are_refused_before_measuring(torch_lut, tmp_path):
    # prefixes, CSV rows and the JSON report are keyed by the network's name: a second one would overwrite the first
    sp = load_space("tiny")
    for i, blocks in enumerate((["k3_e1", "k5_e3", "skip", "k3_e3"], ["k3_e3", "k3_e3", "k3_e3", "k3_e3"])):
        sp.arch(blocks, name="same").dump(tmp_path / f"a{i}.yaml")
    res = run("verify", "--lut", torch_lut, "--breakdown", tmp_path / "a0.yaml", "--breakdown", tmp_path / "a1.yaml",
              "--out", tmp_path / "bd", "-q")
    assert res.exit_code == 2, res.output
    assert "two networks to break down are named 'same'" in res.output
    assert not (tmp_path / "bd").exists()


def test_worst_networks_come_from_a_verify_report(tmp_path):
    sp = load_space("tiny")
    rep = tmp_path / "verify.csv"
    rep.write_text(
        "arch,kind,split,predicted_us,calibrated_us,measured_us,error_pct,calibrated_error_pct,round_spread_pct,rounds,"
        "macs,head_channels,blocks,status,note\n"
        "rand-000,random,held-out,1,,1,-3.0,,,,1,64,k3_e1 k3_e1 k3_e1 k3_e1,ok,\n"
        "rand-001,random,held-out,1,,1,12.5,,,,1,64,skip skip skip skip,ok,\n"
        "rand-002,random,calibration,1,,1,40.0,,,,1,64,k5_e3 k5_e3 k5_e3 k5_e3,ok,\n"
        "fbnet-x,published,held-out,1,,1,-30.0,,,,1,64,k3_e3 k3_e3 k3_e3 k3_e3,ok,\n")
    worst = worst_from_report(rep, sp, 2)
    assert [a.name for a in worst] == ["rand-001", "rand-000"]  # held-out random ones only, by |error|
    assert worst[0].blocks == ("skip",) * 4
    rep.write_text("arch,kind\nx,random\n")
    from fbprof.errors import InputError

    with pytest.raises(InputError, match="verify.csv:2"):
        worst_from_report(rep, sp, 1)
