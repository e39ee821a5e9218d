"""What the CLI prints for people and for scripts: --json documents, --plot PNGs, -q/-v, --version."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fbprof.cli import app
from fbprof.cli.jsonout import SCHEMAS, check

REPO = Path(__file__).resolve().parents[1]
ORT = REPO / "luts" / "local-cpu-onnxruntime.csv"
LITERT = REPO / "luts" / "local-cpu-litert.csv"
UNSTABLE = ORT  # fbnet-b and fbnet-c use an unstable row of it
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def doc_of(res, name: str) -> dict:
    doc = json.loads(res.stdout)
    assert doc["schema"] == f"fbprof.{name}/1"
    assert check(doc, SCHEMAS[name]) == []
    return doc


# ------------------------------------------------------------------------------------------------
# --json
def test_schema_check_can_fail():
    doc = json.loads(run("arch", "list", "--json").stdout)
    assert check(doc, SCHEMAS["arch-list"]) == []
    doc["spaces"][0]["layers"] = "22"
    del doc["archs"]
    doc["schema"] = "fbprof.arch-list/2"
    problems = check(doc, SCHEMAS["arch-list"])
    assert any("lacks 'archs'" in p for p in problems)
    assert any("$.spaces[0].layers: str is not integer" in p for p in problems)
    assert any("fbprof.arch-list/2" in p for p in problems)


def test_predict_json_lists_each_unstable_row_once():
    res = run("predict", "fbnet-a", "fbnet-b", "fbnet-c", "--lut", UNSTABLE, "--json")
    assert res.exit_code == 0
    doc = doc_of(res, "predict")
    assert [a["name"] for a in doc["archs"]] == ["fbnet-a", "fbnet-b", "fbnet-c"]
    a = doc["archs"][0]
    assert sum(layer["latency_us"] for layer in a["layers"]) == pytest.approx(a["total_us"])
    assert doc["lut"]["backend"] == "onnxruntime"
    keys = [u["key"] for u in doc["not_ok"]]
    assert keys and len(keys) == len(set(keys))
    used = {layer["key"] for arch in doc["archs"] for layer in arch["layers"] if layer["status"] == "unstable"}
    assert set(keys) == used
    assert res.stderr == ""  # nothing but the document


@pytest.mark.parametrize("args,name", [
    (["arch", "info", "fbnet-c", "--json"], "arch-info"),
    (["arch", "list", "--json"], "arch-list"),
    (["lut", "show", ORT, "--sort", "latency", "--limit", "5", "--json"], "lut-show"),
    (["lut", "diff", ORT, LITERT, "--json"], "lut-diff"),
    (["lut", "validate", ORT, LITERT, "--json"], "lut-validate"),
    (["devices", "--json"], "devices"),
])
def test_every_json_output_parses_and_matches_its_schema(args, name):
    res = run(*args)
    assert res.exit_code == 0, res.output
    doc = doc_of(res, name)
    if name == "arch-info":
        assert doc["arch"]["name"] == "fbnet-c" and len(doc["layers"]) == 22 + 4
        assert doc["macs"] == sum(x["macs"] for x in doc["layers"])
    elif name == "lut-show":
        lat = [r["median_us"] for r in doc["rows"]]
        assert len(lat) == 5 and lat == sorted(lat, reverse=True) and doc["header"]["backend"] == "onnxruntime"
    elif name == "lut-diff":
        s = doc["summary"]
        assert s["common"] == len(doc["rows"]) == 109 and s["a_faster"] + s["b_faster"] == 109
        ratios = [r["ratio"] for r in doc["rows"]]
        assert ratios == sorted(ratios)
    elif name == "lut-validate":
        assert doc["valid"] and [f["rows"] for f in doc["files"]] == [109, 109]
    elif name == "devices":
        assert "local" in [d["name"] for d in doc["devices"]]


def test_validate_json_reports_every_file_and_keeps_the_exit_code(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(ORT.read_text().replace(",ok,", ",great,", 1))
    plain = run("lut", "validate", bad, ORT)
    res = run("lut", "validate", bad, ORT, "--json")
    assert res.exit_code == plain.exit_code == 2
    doc = doc_of(res, "lut-validate")
    assert not doc["valid"] and [f["valid"] for f in doc["files"]] == [False, True]
    assert "status 'great'" in doc["files"][0]["problems"][0]


@pytest.mark.parametrize("args,code,kind", [
    (["predict", "fbnet-a", "--lut", "no-such.csv", "--json"], 2, "InputError"),
    (["lut", "show", "--json"], 2, "MissingParameter"),
    (["lut", "diff", ORT, ORT, "--json", "--no-such-option"], 2, "NoSuchOption"),
    (["arch", "info", "fbnet-z", "--json"], 2, "InputError"),
])
def test_errors_are_json_with_the_same_exit_code(args, code, kind):
    plain = run(*[a for a in args if a != "--json"])
    res = run(*args)
    assert res.exit_code == plain.exit_code == code
    doc = doc_of(res, "error")
    assert doc["error"]["type"] == kind and doc["error"]["exit_code"] == code and doc["error"]["message"]
    assert not plain.stdout.lstrip().startswith("{")


def test_a_file_system_error_is_json_too(monkeypatch):
    def denied():
        raise PermissionError(13, "Permission denied", "/no/access/archs")

    monkeypatch.setattr("fbprof.space.arch_names", denied)
    plain = run("arch", "list")
    assert plain.exit_code == 1 and "error: /no/access/archs: Permission denied" in plain.output
    doc = doc_of(run("arch", "list", "--json"), "error")
    assert doc["error"]["type"] == "PermissionError" and doc["error"]["exit_code"] == 1
    assert doc["error"]["message"] == "/no/access/archs: Permission denied"


def test_coverage_error_lists_missing_keys_in_json(tmp_path):
    small = tmp_path / "small.csv"
    lines = ORT.read_text().splitlines(keepends=True)
    small.write_text("".join(lines[:-5]))  # drop 5 rows
    doc = doc_of(run("predict", "fbnet-a", "--lut", small, "--json"), "error")
    assert doc["error"]["type"] == "LutCoverageError" and doc["error"]["hint"]


def test_json_output_doc_names_every_schema():
    text = (REPO / "docs" / "json-output.md").read_text(encoding="utf-8")
    for name in SCHEMAS:
        assert f"fbprof.{name}/1" in text, name


# ------------------------------------------------------------------------------------------------
# plots
def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("args,kind", [
    (["lut", "diff", ORT, LITERT], "diff"),
    (["lut", "show", ORT], "heatmap"),
    (["predict", "fbnet-a", "fbnet-b", "fbnet-c", "--lut", ORT], "predict"),
])
def test_each_plot_command_writes_a_png_of_the_expected_size(tmp_path, args, kind):
    from fbprof.lut.plot import SIZES

    out = tmp_path / "sub" / f"{kind}.png"
    out.parent.mkdir()
    res = run(*args, "--plot", out, "--json")
    assert res.exit_code == 0, res.output
    json.loads(res.stdout)  # --plot and --json together: stdout is still one document
    assert out.stat().st_size > 10_000
    assert png_size(out) == SIZES[kind]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # written atomically: no temporary left


def test_plotting_leaves_matplotlib_global_state_alone():
    code = ("import matplotlib, sys\nrc = lambda: {k: repr(v) for k, v in dict.items(matplotlib.rcParams)}\n"
            "before = rc()\nfrom fbprof.lut.table import read_lut\n"
            "from fbprof.lut.plot import heatmap_png\nl = read_lut(%r)\nheatmap_png(l, l.space())\n"
            "print(before == rc(), 'matplotlib.pyplot' in sys.modules)\n" % str(ORT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


# ------------------------------------------------------------------------------------------------
# -q / -v and the summaries
def test_predict_warns_once_for_all_architectures():
    res = run("predict", "fbnet-a", "fbnet-b", "fbnet-c", "--lut", UNSTABLE)
    assert res.exit_code == 0
    assert res.stderr.count("warning") == 1
    assert "not ok" in res.stderr and "-v lists them" in res.stderr
    unstable = json.loads(run("predict", "fbnet-a", "fbnet-b", "fbnet-c", "--lut", UNSTABLE, "--json").stdout)["not_ok"]
    verbose = run("predict", "fbnet-a", "fbnet-b", "fbnet-c", "--lut", UNSTABLE, "-v")
    for u in unstable:
        assert verbose.stderr.count(u["key"]) == 1
    for args in (["predict", "-q"], ["-q", "predict"]):  # the command's -q and the root's behave the same
        quiet = run(*args, "fbnet-a", "fbnet-b", "fbnet-c", "--lut", UNSTABLE)
        assert quiet.exit_code == 0 and quiet.stderr == "" and "fbnet-c" in quiet.stdout
    assert run("-v", "predict", "fbnet-b", "--lut", UNSTABLE).stderr.count(unstable[0]["key"]) >= 1


@pytest.mark.parametrize("args", [["arch", "list"], ["arch", "info", "fbnet-a"], ["lut", "show", ORT],
                                  ["lut", "diff", ORT, LITERT], ["lut", "validate", ORT], ["devices"],
                                  ["predict", "fbnet-a", "--lut", ORT]])
def test_every_command_takes_q_and_v(args):
    for flag in ("-q", "-v", "--quiet", "--verbose"):
        assert run(*args, flag).exit_code == 0, (args, flag)
    assert run(*args, "-q", "-v").exit_code == 2


def test_measure_summary_lists_retries_and_unstable_rows_once(capsys):
    from fbprof.cli.common import ProgressListener, print_summary
    from fbprof.loop import Stats
    from fbprof.lut.table import LutRow
    from fbprof.profiler.measure import MeasureSummary

    lis = ProgressListener(quiet=True)
    for attempt in (1, 2):
        lis.on_retry("k3_e1:8x16x16:8:s1", attempt, 0.3)
    lis.on_retry("k5_e3:8x16x16:16:s2", 1, 0.2)
    row = LutRow("k5_e3:8x16x16:16:s2", "unstable", Stats(5, 1, 10.0, 9.0, 12.0, 10.5, 2.0, 0.2, 9.0, 14.0),
                 note="still noisy after 2 attempts")
    lis.on_row_done(row)
    summary = MeasureSummary(Path("x.csv"), {"ok": 1, "unstable": 1, "invalid": 0}, 2, 0, {}, 1.0, 0.5, 0.1)
    assert capsys.readouterr().err == ""  # nothing printed while measuring
    print_summary(summary, lis, 0)
    out = capsys.readouterr().out
    assert "2 rows were noisy and measured again (3 retries)" in out
    assert out.count("k5_e3:8x16x16:16:s2") == 1 and "still noisy after 2 attempts" in out
    print_summary(summary, lis, 1)
    assert "k3_e1:8x16x16:8:s1: 2 retries" in capsys.readouterr().out
    print_summary(summary, lis, -1)
    assert "noisy" not in capsys.readouterr().out


def test_version_lists_fbprof_and_every_runtime_without_importing_them():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom fbprof.cli import app\n"
            "r = CliRunner().invoke(app, ['--version'])\nprint(r.exit_code)\nprint(r.output)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'torch', 'executorch', "
            "'ai_edge_litert', 'coremltools', 'numpy')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    from importlib import metadata

    import fbprof

    assert lines[0] == "0" and lines[-1] == "[]"
    assert lines[1].split() == ["fbprof", fbprof.__version__]
    text = "\n".join(lines)
    assert f"onnxruntime (onnxruntime)  {metadata.version('onnxruntime')}" in text
    for name in ("torch", "litert", "executorch", "coreml"):
        assert f"\n{name} (" in text


@pytest.mark.slow
def test_measure_and_verify_json_documents(tmp_path):
    out = tmp_path / "tiny.csv"
    quick = ["--min-runs", "5", "--min-time", "0", "--warmup", "1", "--workers", "1"]
    res = run("measure", "--space", "tiny", "--backend", "torch", "--out", out, *quick, "--json")
    assert res.exit_code == 0, res.output
    doc = doc_of(res, "measure")
    assert doc["path"] == str(out) and doc["measured"] == 18 and doc["reused"] == 0
    assert sum(doc["counts"].values()) == 18
    assert "measuring again after a pause" not in res.stderr  # retries are counted, not printed (without -v)
    again = doc_of(run("measure", "--space", "tiny", "--backend", "torch", "--out", out, *quick, "--json"), "measure")
    assert again["measured"] == 0 and again["reused"] == 18
    res = run("verify", "--lut", out, "--samples", 4, "--rounds", 1, "--noise-repeats", 0, "--calib-fraction", 0.5,
              "--no-store", "--min-runs", 5, "--min-time", 0, "--workers", 1, "--out", tmp_path / "v", "-q", "--json")
    assert res.exit_code == 0, res.output
    doc = doc_of(res, "verify")
    assert doc["summary"]["counts"]["calibration"] == 2
    assert {Path(p).name for p in doc["files"].values()} >= {"verify.csv", "summary.json", "verify.png"}
