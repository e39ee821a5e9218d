"""Property tests (issue 12): random and mutated inputs to the LUT reader and the space/architecture
decoder give fbprof's error (an FbprofError: a message and an exit code) or a valid result, never another
exception. The budget is fixed: ``FBPROF_FUZZ_EXAMPLES`` examples per test (default 150), derandomized
so that ``make test`` runs the same inputs every time; a hang is caught by the test's timeout.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fbprof.errors import FbprofError
from fbprof.lut.table import COLUMNS, format_lut, parse_lut_text
from fbprof.space import decode_space, load_arch, read_data_file

EXAMPLES = int(os.environ.get("FBPROF_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

LUT = (
    "# fbprof-lut v1\n# device: local\n# backend: onnxruntime\n# runtime: onnxruntime 1.20\n# threads: 1\n"
    "# spaces: tiny@32/w1\n# loop: warmup_runs=1 min_runs=5\n" + ",".join(COLUMNS) + "\n"
    "k3_e1:8x16x16:8:s1,ok,5,1,10.000,9.000,11.000,10.000,1.000,0.1000,9.000,12.000,temp_c=35.0,\n"
    "stem:3x32x32:8:s2,unstable,50,3,401.520,390.000,420.000,402.000,8.100,0.0200,380.000,450.000,,noisy\n"
)
TINY = (Path(__file__).resolve().parents[1] / "fbprof" / "data" / "spaces" / "tiny.yaml").read_text()
ARCH = "schema: 1\nname: mine\nspace: tiny\nresolution: 32\nwidth: 1.0\nhead_channels: 64\nblocks: [k3_e1, skip, k5_e3, k3_e3]\n"

# texts that tend to break parsers
NASTY = st.sampled_from([
    "", "\n", "\r\n", "\x00", "\ufeff", '"', '""', ",", ";", "=", ":", "#", "@", "/w", "\u2028", "nan", "inf", "-0",
    "1e308", "1_0", "9" * 5000, "-1", "0", "0.000", "&a", "*a", "!!python/object", "{", "[", "]", "}", "<<: *a",
    "\t", "  ", "..", "/dev/zero", "é", "\U0001f600", "1e-400", "0x10", "+5", "\\",
])


def _mutate(text: str, data) -> str:
    """A few edits of ``text``: insert, delete or replace a span with random or nasty text."""
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        i = data.draw(st.integers(0, len(text)), label="at")
        j = data.draw(st.integers(i, min(len(text), i + 40)), label="to")
        new = data.draw(st.one_of(NASTY, st.text(max_size=20)), label="new")
        text = text[:i] + new + text[j:]
    return text


def _reads_or_refuses(text: str) -> None:
    try:
        lut = parse_lut_text(text, "fuzz.csv")
    except FbprofError:
        return
    # a LUT that reads holds usable numbers: positive, finite, and so are sums of them
    import math

    total = 0.0
    for row in lut.rows.values():
        st_ = row.stats
        assert st_.median > 0
        total += sum(v for v in (st_.median, st_.p10, st_.p90, st_.mean, st_.std, st_.min, st_.max) if v) * 1e6
    assert math.isfinite(total)  # a million rows' worth
    # ... and is one fbprof can write back and read again, with every header field parsed strictly
    again = parse_lut_text(format_lut(lut.header, lut.rows.values()), "again.csv")
    assert set(again.rows) == set(lut.rows)
    for reader in (lut.space_tags, lut.threads, lut.loop_config):
        try:
            reader()
        except FbprofError:
            pass


@pytest.mark.timeout(300)
@FUZZ
@given(st.data())
def test_lut_reader_mutated(data):
    _reads_or_refuses(_mutate(LUT, data))


def _row(key: str = "k3_e1:8x16x16:16:s1", lat: str = "12.000") -> str:
    return LUT + f"{key},ok,5,1,10.000,9.000,11.000,10.000,1.000,0.1000,9.000,{lat},,\n"


@pytest.mark.timeout(300)
@FUZZ
@given(st.text(max_size=400))
@example(_row(lat="1.7e308"))  # the inputs of issue 12, always tried
@example(_row(key=f"k3_e1:{'9' * 5000}x16x16:16:s1"))
@example(_row(lat="1_2"))
@example("\ufeff" + LUT)
@example(LUT.replace("10.000,9.000,11.000,10.000,1.000,0.1000,9.000,12.000", "0,0,0,0,0,0,0,0"))
def test_lut_reader_random_text(text):
    _reads_or_refuses(text)


@pytest.mark.timeout(300)
@FUZZ
@given(st.lists(st.one_of(NASTY, st.text(max_size=12)), min_size=len(COLUMNS) - 1, max_size=len(COLUMNS) + 1))
def test_lut_reader_random_cells(cells):
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    _reads_or_refuses(LUT + buf.getvalue())


NUMBERS = st.one_of(st.integers(0, 10**20).map(str), st.floats(allow_nan=True).map(repr), NASTY,
                    st.sampled_from(["1.7e308", "1e13", "0", "0.0", "1_000", "12.0"]))


@pytest.mark.timeout(300)
@FUZZ
@given(st.data())
def test_lut_reader_mutated_cells(data):
    """One row of valid cells with some replaced: keys built from odd numbers, odd latencies, odd text."""
    cells = "k3_e1:8x16x16:8:s1,ok,5,1,10.000,9.000,11.000,10.000,1.000,0.1000,9.000,12.000,,".split(",")
    parts = ["8", "16", "16", "16", "1"]  # a key the LUT above does not hold
    if data.draw(st.integers(0, 3), label="mutate key") == 0:
        i = data.draw(st.integers(0, 4), label="key part")
        parts[i] = data.draw(NUMBERS, label="key number")
    cells[0] = "k3_e1:{}x{}x{}:{}:s{}".format(*parts)
    for _ in range(data.draw(st.integers(0, 3), label="cells")):
        i = data.draw(st.one_of(st.integers(4, 11), st.integers(1, len(cells) - 1)), label="i")  # mostly latencies
        cells[i] = data.draw(st.one_of(NUMBERS, st.text(max_size=10)), label="cell")
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    _reads_or_refuses(LUT + buf.getvalue())


# -- spaces and architectures ----------------------------------------------------------------------------
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True), NASTY,
                    st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
SPACE_KEYS = ["schema", "name", "resolution", "width", "channel_divisor", "in_channels", "num_classes", "stem",
              "stages", "candidates", "head", "bogus"]


def _decode_space(text: str, suffix: str = ".yaml") -> None:
    try:
        data = read_data_file(Path(f"fuzz{suffix}"), text)
        decode_space(data, f"fuzz{suffix}", "fuzz")
    except FbprofError:
        pass


@pytest.mark.timeout(300)
@FUZZ
@given(st.data())
def test_space_decoder_mutated_yaml(data):
    _decode_space(_mutate(TINY, data))


@pytest.mark.timeout(300)
@FUZZ
@given(st.dictionaries(st.sampled_from(SPACE_KEYS), VALUES, max_size=8))
def test_space_decoder_random_structure(d):
    base = yaml.safe_load(TINY)
    base.update(d)
    import json

    _decode_space(json.dumps(base, allow_nan=True), ".json")


@pytest.mark.timeout(300)
@FUZZ
@given(st.data())
def test_arch_decoder_mutated(data):
    text = _mutate(ARCH, data)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "arch.yaml"
        f.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_arch(str(f))
        except FbprofError:
            pass


BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.timeout(300)
@FUZZ
@given(st.text(max_size=300))
@example(TINY.replace("width: 1.0", "width: .nan"))  # the inputs of issue 12, always tried
@example(TINY.replace("width: 1.0", "width: 1e308"))
@example(TINY.replace("resolution: 32", "resolution: " + "9" * 5000))
@example(TINY.replace("repeats: 2", "repeats: 1000000000"))
@example(BOMB)
@example("[" * 50_000)
def test_space_decoder_random_text(text):
    import math

    try:
        space = decode_space(read_data_file(Path("fuzz.yaml"), text), "fuzz.yaml", "fuzz")
    except FbprofError:
        return
    assert math.isfinite(space.width) and 0 < space.width and len(space.all_specs()) > 0
