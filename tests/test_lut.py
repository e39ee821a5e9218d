"""The LUT CSV: deterministic writer, strict reader (every error with path:line), coverage, predict, diff."""

from pathlib import Path

import pytest

from fbprof.errors import FileFormatError, LutCoverageError
from fbprof.lut.predict import diff_luts, predict, require_space
from fbprof.lut.table import COLUMNS, Journal, LutRow, format_lut, read_lut, write_lut
from fbprof.loop import Stats
from fbprof.space import load_space

HEADER = {"device": "local", "backend": "onnxruntime", "runtime": "onnxruntime 1.0", "threads": "1",
          "spaces": "tiny@32/w1"}


def rows_for(space, scale=1.0):
    out = []
    for i, s in enumerate(space.all_specs()):
        v = (10.0 + i) * scale
        out.append(LutRow(s.key, "ok", Stats.of([v, v * 1.01, v * 0.99, v * 1.02, v * 0.98, v, v, v, v, v])))
    return out


@pytest.fixture
def tiny():
    return load_space("tiny")


@pytest.fixture
def lut_file(tmp_path, tiny):
    p = tmp_path / "tiny.csv"
    write_lut(p, HEADER, rows_for(tiny))
    return p


def test_roundtrip_is_deterministic(lut_file, tiny):
    text = lut_file.read_text()
    lut = read_lut(lut_file)
    assert len(lut) == len(tiny.all_specs())
    assert format_lut(lut.header, reversed(list(lut.rows.values()))) == text  # order-independent, same bytes
    keys = [line.split(",")[0] for line in text.splitlines() if not line.startswith("#")][1:]
    assert keys == sorted(keys)


def _break(path: Path, lineno: int, new: str | None) -> None:
    lines = path.read_text().split("\n")
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    path.write_text("\n".join(lines))


def _first_row_line(path: Path) -> int:
    lines = path.read_text().split("\n")
    return lines.index(",".join(COLUMNS)) + 2


def test_every_broken_row_is_reported_at_once(lut_file):
    first = _first_row_line(lut_file)
    lines = lut_file.read_text().split("\n")
    row = lines[first - 1].split(",")
    bad_status = ",".join([row[0], "great"] + row[2:])
    bad_number = ",".join(row[:4] + ["fast"] + row[5:])
    _break(lut_file, first, bad_status)
    _break(lut_file, first + 1, bad_number)
    _break(lut_file, first + 2, "k3_e1:8x16x16:8,ok")
    _break(lut_file, first + 3, lines[first + 4 - 1])  # duplicate of the next row
    with pytest.raises(FileFormatError) as ei:
        read_lut(lut_file)
    msg = str(ei.value)
    assert f"{lut_file}:{first}: status 'great' is not one of ok, unstable, invalid" in msg
    assert f"{lut_file}:{first + 1}: median_us 'fast' is not a number" in msg
    assert f"{lut_file}:{first + 2}: expected 14 fields, found 2" in msg
    assert f"{lut_file}:{first + 4}: duplicate row for" in msg and f"(first at line {first + 3})" in msg
    assert "4 problems" in msg


def test_truncated_file(lut_file):
    text = lut_file.read_text()
    lut_file.write_text(text[: len(text) - 20])
    with pytest.raises(FileFormatError, match=r"truncated row \(the file ends without a newline"):
        read_lut(lut_file)


@pytest.mark.parametrize("mutate, reason", [
    (lambda t: "key,status\n", "not an fbprof LUT"),
    (lambda t: t.replace("# fbprof-lut v1", "# fbprof-lut v9"), "unsupported LUT schema"),
    (lambda t: t.replace("# backend: onnxruntime\n", ""), "header lacks the required field 'backend'"),
    (lambda t: t.replace("key,status", "key,state"), "expected the column line"),
    (lambda t: t.replace(",ok,", ",ok,-3,", 1).replace(",10,", ",", 1), "negative"),
    (lambda t: t + "\n", "blank line"),
    (lambda t: t + "# late comment\n", "comment lines are only allowed in the header"),
])
def test_bad_files(lut_file, mutate, reason):
    lut_file.write_text(mutate(lut_file.read_text()))
    with pytest.raises(FileFormatError, match=reason):
        read_lut(lut_file)


def test_latencies_out_of_order(lut_file):
    first = _first_row_line(lut_file)
    row = lut_file.read_text().split("\n")[first - 1].split(",")
    row[COLUMNS.index("min_us")] = "99999"
    _break(lut_file, first, ",".join(row))
    with pytest.raises(FileFormatError, match=f"{first}: latencies out of order"):
        read_lut(lut_file)


def test_coverage_lists_missing_keys(lut_file, tiny):
    lut = read_lut(lut_file)
    require_space(lut, tiny)
    with pytest.raises(LutCoverageError) as ei:
        require_space(lut, load_space("tiny", resolution=64))
    assert "does not cover space tiny at resolution 64" in str(ei.value)
    assert "stem:3x64x64:8:s2" in ei.value.missing


def test_predict_sums_layers_and_warns(tmp_path, tiny):
    rows = {r.key: r for r in rows_for(tiny)}
    stem = tiny.stem.key
    rows[stem] = LutRow(stem, "unstable", rows[stem].stats, note="cv 0.2")
    p = tmp_path / "t.csv"
    write_lut(p, HEADER, rows.values())
    lut = read_lut(p)
    arch = tiny.arch(["skip", "k3_e1", "skip", "k3_e3"], name="a")
    pred = predict(arch, lut)
    expected = sum(0.0 if s.is_identity else lut.rows[s.key].median_us for _, s in arch.ops())
    assert pred.total_us == pytest.approx(expected)
    assert [c.status for c in pred.layers] == ["unstable", "identity", "ok", "identity", "ok", "ok", "ok", "ok"]
    assert pred.warnings == [f"{stem} is unstable: cv 0.2"]


def test_diff_sorted_by_ratio(tmp_path, tiny):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_lut(a, HEADER, rows_for(tiny))
    rb = rows_for(tiny, 2.0)
    rb[3] = LutRow(rb[3].key, "ok", Stats.of([1.0] * 10))
    write_lut(b, HEADER, rb[:-1])
    d = diff_luts(read_lut(a), read_lut(b))
    assert d.rows[0].key == rb[3].key and d.rows[0].ratio < 1
    assert d.rows[-1].ratio == pytest.approx(2.0)
    assert d.only_a == [rb[-1].key] and d.only_b == []


def test_journal_drops_only_the_incomplete_last_row(tmp_path, tiny):
    out = tmp_path / "x.csv"
    j = Journal(out)
    j.start(HEADER)
    rows = rows_for(tiny)[:3]
    for r in rows:
        j.append(r)
    j.close()
    with open(j.path, "a") as fh:
        fh.write(rows_for(tiny)[4].cells()[0] + ",ok,5")  # a row cut mid-write
    header, got, notes = Journal(out).read()
    assert header["device"] == "local"
    assert list(got) == [r.key for r in rows]
    assert "dropped an incomplete last row" in notes[0]
