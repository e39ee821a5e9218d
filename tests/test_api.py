"""The public Python API (fbprof.api, offered as fbprof.<name>) and the examples of docs/python-api.md."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fbprof
from fbprof.errors import FileFormatError, InputError

REPO = Path(__file__).resolve().parents[1]
LUT = REPO / "luts" / "local-cpu-onnxruntime.csv"


def test_stable_names_are_offered_by_fbprof_and_listed_once():
    from fbprof import api

    assert sorted(fbprof._API) == sorted(n for n in api.STABLE if n != "__version__")
    for name in api.STABLE:
        assert getattr(fbprof, name) is getattr(api, name), name
    assert set(api.STABLE) <= set(dir(fbprof))
    with pytest.raises(AttributeError):
        fbprof.no_such_name  # noqa: B018


def test_import_fbprof_loads_neither_the_api_nor_pandas():
    code = ("import sys, fbprof\nprint(sorted(m for m in sys.modules if m in ('fbprof.api', 'pandas', 'numpy', 'torch')))\n"
            "fbprof.read_lut\nprint('fbprof.api' in sys.modules, 'pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True False"]


def test_pandas_round_trip_keeps_every_field_and_the_header(tmp_path):
    lut = fbprof.read_lut(LUT)
    df = lut.to_pandas()
    assert list(df.columns) == ["key", "status", "n", "repeats", "median_us", "p10_us", "p90_us", "mean_us", "std_us",
                                "cv", "min_us", "max_us", "env", "note", "op", "cin", "h", "w", "cout", "stride"]
    assert len(df) == len(lut) and df.attrs["header"] == lut.header
    row = df[df.key == "k5_e6:16x112x112:24:s2"].iloc[0]
    assert (row.op, row.cin, row.h, row.w, row.cout, row.stride) == ("k5_e6", 16, 112, 112, 24, 2)
    assert row.median_us == lut.rows["k5_e6:16x112x112:24:s2"].median_us
    back = fbprof.Lut.from_pandas(df)
    assert back == lut  # path, header, every row (status, all stats, env, note)
    # through a file, with a note that pd.read_csv(comment="#") would cut, and a missing p10/p90
    df.loc[0, "note"] = "noisy # see log, 'quoted', comma, here"
    df.loc[1, ["p10_us", "p90_us"]] = math.nan
    df.loc[2, "env"] = "governor=performance"
    path = fbprof.write_lut(fbprof.Lut.from_pandas(df), tmp_path / "x.csv")
    again = fbprof.read_lut(path).to_pandas()
    assert again.drop(columns=[]).equals(df)
    assert again.attrs["header"] == lut.header and again.loc[0, "note"] == "noisy # see log, 'quoted', comma, here"
    assert fbprof.read_lut(path).rows[df.loc[1, "key"]].stats.p10 is None


def test_from_pandas_checks_rows_like_the_csv_reader():
    df = fbprof.read_lut(LUT).to_pandas()
    bad = df.copy()
    bad.loc[3, "status"] = "great"
    bad.loc[5, "median_us"] = -1.0
    bad.loc[7, "cin"] = 999
    with pytest.raises(FileFormatError) as e:
        fbprof.Lut.from_pandas(bad)
    text = "\n".join(e.value.problems)
    assert "DataFrame row 3" in text and "status 'great'" in text
    assert "DataFrame row 5" in text and "negative" in text
    assert "DataFrame row 7: cin 999 disagrees with the key" in text
    with pytest.raises(InputError, match="lacks the LUT column"):
        fbprof.Lut.from_pandas(df.drop(columns=["cv"]))
    dup = df.iloc[[0, 0]]
    with pytest.raises(FileFormatError, match="duplicate row"):
        fbprof.Lut.from_pandas(dup)


def test_validate_lut_reports_instead_of_raising(tmp_path):
    ok = fbprof.validate_lut(LUT)
    assert ok.valid and ok.rows == 109 and ok.problems == []
    broken = tmp_path / "b.csv"
    broken.write_text(LUT.read_text().replace(",ok,", ",fine,", 1))
    bad = fbprof.validate_lut(broken)
    assert not bad.valid and len(bad.problems) == 1 and "status 'fine'" in bad.problems[0]
    with pytest.raises(InputError, match="no such LUT"):
        fbprof.validate_lut(tmp_path / "nope.csv")
    # a malformed header field: the same verdict as `fbprof lut validate`
    threads = tmp_path / "t.csv"
    threads.write_text(LUT.read_text().replace("# threads: 1\n", "# threads: many\n", 1))
    bad = fbprof.validate_lut(threads)
    assert not bad.valid and len(bad.problems) == 1 and "t.csv:6" in bad.problems[0] and "threads" in bad.problems[0]
    from typer.testing import CliRunner

    from fbprof.cli import app

    assert CliRunner().invoke(app, ["lut", "validate", str(threads)]).exit_code != 0


def test_predict_takes_names_paths_and_objects_and_gives_frames():
    lut = fbprof.read_lut(LUT)
    p = fbprof.predict("fbnet-b", LUT)
    assert p.total_us == fbprof.predict(fbprof.load_arch("fbnet-b"), lut).total_us
    layers = p.to_pandas()
    assert layers.latency_us.sum() == pytest.approx(p.total_us)
    assert layers.share.sum() == pytest.approx(1.0)
    assert layers.attrs["arch"] == "fbnet-b"
    t = fbprof.predict_frame(["fbnet-a", "fbnet-b"], lut)
    assert t.arch.tolist() == ["fbnet-a", "fbnet-b"]
    assert t.total_us[1] == pytest.approx(p.total_us) and t.calibrated_us[1] == pytest.approx(p.calibrated_us)


def test_listener_adapter_fills_missing_methods():
    from fbprof.api import _adapt

    seen = []

    class Partial:
        def on_note(self, m):
            seen.append(m)

    lis = _adapt(Partial(), "fbprof.profiler.measure", "Listener")
    lis.on_start(1, 1, 0)  # absent on Partial: the base class's no-op
    lis.on_note("hello")
    assert seen == ["hello"]


def _examples() -> list[str]:
    text = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_every_example_of_the_python_api_doc_runs(tmp_path, monkeypatch, capsys):
    blocks = _examples()
    assert len(blocks) >= 6
    shutil.copytree(REPO / "luts", tmp_path / "luts")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/python-api.md example {i + 1}", "exec"), ns)
        except Exception as e:  # pragma: no cover - the failure message names the example
            raise AssertionError(f"docs/python-api.md example {i + 1} failed: {type(e).__name__}: {e}") from e
    out = capsys.readouterr().out
    assert "LutCoverageError" in out  # the last example ran to its end
    assert (tmp_path / "search-out").is_dir()


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    shutil.copytree(REPO / "luts", tmp_path / "luts")
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    assert fbprof.read_lut(tmp_path / "copy.csv").rows == fbprof.read_lut(LUT).rows
