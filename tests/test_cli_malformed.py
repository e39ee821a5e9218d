"""Every CLI command with malformed arguments (issue 12): an exit code and a message, never a traceback,
and no work started (the measuring, searching, verifying, exporting and serving entry points are
replaced by a tripwire, so an argument that slips through validation fails the test at once)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fbprof.cli import COMMANDS, app

runner = CliRunner()

LUT = ("# fbprof-lut v1\n# device: local\n# backend: onnxruntime\n# runtime: x\n# threads: 1\n# spaces: tiny@32/w1\n"
       "key,status,n,repeats,median_us,p10_us,p90_us,mean_us,std_us,cv,min_us,max_us,env,note\n"
       "k3_e1:8x16x16:8:s1,ok,5,1,10.000,9.000,11.000,10.000,1.000,0.1000,9.000,12.000,,\n")

#: (command line, expected exit code, words the message must hold); {lut} {junk} {missing} {dir} are files
CASES = [
    ("measure --bogus", 2, "No such option"),
    ("measure --min-runs x", 2, "--min-runs"),
    ("measure --width nan --space tiny", 2, "width multiplier"),
    ("measure --width inf --space tiny", 2, "width multiplier"),
    ("measure --resolution 3 --space tiny", 2, "too small"),
    ("measure --space {junk}", 2, "not UTF-8"),
    ("measure --space /dev/zero", 2, "not a regular file"),
    ("measure --space {missing}", 2, "no such"),
    ("measure --device nope", 2, "unknown device"),
    ("measure --device adb:", 2, "give an address"),
    ("measure --threads 0", 2, "--threads"),
    ("measure --onnx-exporter bogus", 2, "expected dynamo or legacy"),
    ("measure --option novalue", 2, "expected KEY=VALUE"),
    ("measure --option pinn=1 --space tiny", 2, "unknown local device setting"),
    ("measure --min-time -1", 2, "--min-time"),
    ("measure --profiles {junk}", 2, "not UTF-8"),
    ("predict", 2, "Missing"),
    ("predict fbnet-b --lut {missing}", 2, "no such LUT file"),
    ("predict fbnet-b --lut {junk}", 2, "not UTF-8"),
    ("predict fbnet-b --lut {dir}", 2, "is a folder"),
    ("predict {junk} --lut {lut}", 2, "not UTF-8"),
    ("predict fbnet-z --lut {lut}", 2, "unknown arch"),
    ("arch", 2, ""),
    ("arch info", 2, "Missing argument"),
    ("arch info fbnet-b --width nan", 2, "width multiplier"),
    ("arch info fbnet-b --width 1e308", 2, "width multiplier"),
    ("arch info fbnet-b --resolution x", 2, "--resolution"),
    ("arch info /dev/zero", 2, "not a regular file"),
    ("arch list --bogus", 2, "No such option"),
    ("lut", 2, ""),
    ("lut validate", 2, "Missing argument"),
    ("lut validate {junk}", 2, "not UTF-8"),
    ("lut validate /dev/zero", 2, "not a regular file"),
    ("lut show {lut} --limit -1", 2, "--limit"),
    ("lut show {lut} --sort nope", 2, "--sort"),
    ("lut diff {lut} {missing}", 2, "no such LUT file"),
    ("lut diff {lut} {lut} --limit x", 2, "--limit"),
    ("devices --profiles {junk}", 2, "not UTF-8"),
    ("devices --profiles {missing}", 2, "no such"),
    ("export", 2, "Missing argument"),
    ("export fbnet-b --format nope", 2, "format"),
    ("export fbnet-b --format onnx --width nan", 2, "width multiplier"),
    ("export {junk} --format onnx", 2, "not UTF-8"),
    ("verify", 2, "Missing option"),
    ("verify --lut {junk}", 2, "not UTF-8"),
    ("verify --lut {lut} --calib-fraction 2", 2, "calib"),
    ("verify --lut {lut} --samples -1", 2, "--samples"),
    ("verify --lut {lut} --device nope", 2, "unknown device"),
    ("search", 2, "Missing option"),
    ("search --lut {missing}", 2, "no such LUT file"),
    ("search --lut {lut} --out {lut}", 2, "is a file"),
    ("search --lut {lut} --lr nan", 2, "--lr"),
    ("search --lut {lut} --tau0 -1", 2, "--tau0"),
    ("search --lut {lut} --width nan", 2, "--width"),
    ("search --lut {lut} --epochs 0", 2, "--epochs"),
    ("search --lut {lut} --alpha 0", 2, "--alpha 0.0: expected a finite number > 0"),
    ("search --lut {lut} --beta inf", 2, "--beta inf: expected a finite number >= 0"),
    ("search --lut {lut} --target-weight -1", 2, "--target-weight -1.0"),
    ("companion", 2, ""),
    ("companion serve --port 70000", 2, "--port"),
    ("companion serve --max-upload-mb 0", 2, "--max-upload-mb"),
    ("companion info", 2, "Missing option"),
    ("companion info --device nope", 2, "unknown device"),
    ("companion discover --seconds 0", 2, "--seconds"),
    ("nosuchcommand", 2, "No such command"),
]


def _tripwire(*a, **kw):
    raise AssertionError("malformed arguments reached the work itself")


def _reads_lut_then_trips(lut_path):
    """search and verify read their LUT first thing: that much runs, then the tripwire."""
    from fbprof.lut.table import read_lut

    def run(first, *a, **kw):
        lut = read_lut(lut_path(first))
        lut.space_tags()
        _tripwire()

    return run


@pytest.fixture
def files(tmp_path, monkeypatch):
    import fbprof.companion.phone_server as server
    import fbprof.profiler.export as export
    import fbprof.profiler.measure as measure
    import fbprof.search.dnas as dnas
    import fbprof.verify as verify

    monkeypatch.setattr(measure, "measure_lut", _tripwire)
    monkeypatch.setattr(dnas, "run_search", _reads_lut_then_trips(lambda cfg: cfg.lut))
    monkeypatch.setattr(verify, "run_verify", _reads_lut_then_trips(lambda req: req.lut_path))
    monkeypatch.setattr(export, "export_arch_file", _tripwire)
    monkeypatch.setattr(server.CompanionServer, "serve_forever", _tripwire)
    monkeypatch.chdir(tmp_path)
    lut = tmp_path / "l.csv"
    lut.write_text(LUT)
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(bytes(range(256)) * 4)
    (tmp_path / "folder").mkdir()
    return {"lut": str(lut), "junk": str(junk), "missing": str(tmp_path / "missing.yaml"),
            "dir": str(tmp_path / "folder")}


def test_every_command_is_covered():
    assert {c.split()[0] for c, _, _ in CASES} >= set(COMMANDS)


@pytest.mark.parametrize("line, code, words", CASES, ids=[c[0] for c in CASES])
def test_malformed_arguments_give_a_message(files, line, code, words):
    args = [a.format(**files) for a in line.split()]
    r = runner.invoke(app, args)
    out = r.output
    assert r.exit_code == code, (r.exit_code, out, r.exception)
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # no other exception escaped
    assert "Traceback" not in out
    assert words in out, out
    assert out.strip(), "no message"
