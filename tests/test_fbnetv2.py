"""FBNetV2 (issue 14, first half): block grammar, F1..F4, channel spaces, the grid header, interpolation."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from fbprof.errors import FileFormatError, InputError
from fbprof.loop import Stats
from fbprof.lut.interp import GridLut, OutsideGridError, bilinear, check_interpolation, predict_interpolated
from fbprof.lut.predict import predict
from fbprof.lut.table import Lut, LutRow, format_lut, parse_lut_text, read_lut
from fbprof.space import GridCell, format_grid, load_arch, load_space, parse_grid
from fbprof.spec import OpSpec, parse_block, round_channels

# ------------------------------------------------------------------------------------------------
# block names


@pytest.mark.parametrize("key", [
    "k5_e5p4566:8x64x64:24:s2", "k3_e4_sehsig_hs:56x8x8:56:s1", "k5_e1p7712_se:80x8x8:80:s1",
    "k3_e1_hs:16x112x112:16:s1", "k5_e6_g2_sehsig:16x8x8:16:s1", "k3_e0p5_hs:16x8x8:16:s1",
    "stem_hs:3x224x224:16:s2", "ir_pool_e6_hs:224x7x7:1984:s1", "ir_pool_e6:224x7x7:1984:s1",
])
def test_new_keys_roundtrip(key):
    spec = OpSpec.parse(key)
    assert spec.key == key and OpSpec.parse(spec.key) == spec


@pytest.mark.parametrize("name, reason", [
    ("k5_e6p0", "unknown block"),  # one spelling per expansion: no trailing zero
    ("k5_e5p40", "unknown block"),
    ("k5_e06", "unknown block"),
    ("k5_e0", "expansion must be > 0"),
    ("k5_e4_hs_sehsig", "unknown block"),  # fixed order: SE before h-swish
    ("k5_e4_sesig", "unknown block"),
    ("ir_pool_e6_se", "unknown block"),
    ("stem_relu", "unknown block"),
])
def test_bad_names(name, reason):
    with pytest.raises(InputError, match=reason):
        parse_block(name)


def test_block_decoding_and_family():
    b = parse_block("k5_e5p4566_g2_sehsig_hs")
    assert (b.kind, b.kernel, b.expansion, b.groups, b.se, b.hswish) == ("ir", 5, 5.4566, 2, "sehsig", True)
    assert b.family == "k5_g2_sehsig_hs"
    old = parse_block("k3_e6")  # the FBNet names decode as before
    assert (old.kind, old.expansion, old.se, old.hswish) == ("ir", 6, "", False) and isinstance(old.expansion, int)
    assert parse_block("ir_pool_e6_hs").kind == "irpool" and parse_block("stem_hs").hswish
    with pytest.raises(InputError, match="stride must be 1"):
        OpSpec("ir_pool_e6_hs", 224, 7, 7, 1984, 2)


def test_round_channels_and_hidden_widths():
    assert [round_channels(v) for v in (43.65, 40, 4, 36, 92)] == [48, 40, 8, 40, 96]
    assert OpSpec("k5_e5p4566", 8, 64, 64, 24, 2).mid_channels == 48  # 43.65 -> 40 < 95% -> 48
    assert OpSpec("k3_e6", 20, 8, 8, 20, 1).mid_channels == 120  # integer expansion: cin*E, as before
    s = OpSpec("k3_e5p1246_sehsig_hs", 56, 8, 8, 56, 1)
    assert (s.mid_channels, s.se_channels) == (288, 72)
    assert OpSpec("k5_e1p7712_sehsig_hs", 80, 8, 8, 80, 1).se_channels == 40  # int(144/4)=36 -> 40


def test_macs_and_params_of_new_blocks():
    s = OpSpec("k3_e4_sehsig_hs", 16, 8, 8, 24, 1)
    mid, r = 64, 16
    assert s.macs() == 16 * mid * 64 + mid * 9 * 64 + (mid * 64 + 2 * mid * r) + mid * 24 * 64
    assert s.params() == (16 * mid + 2 * mid) + (mid * 9 + 2 * mid) + (mid * r + r + r * mid + mid) + (mid * 24 + 2 * 24)
    h = OpSpec("ir_pool_e6_hs", 16, 4, 4, 32, 1)
    assert h.output_shape == (1, 32) and h.macs() == 16 * 96 * 16 + 96 * 16 + 96 * 32
    assert h.params() == 16 * 96 + 2 * 96 + 96 * 32
    # the FBNet blocks keep their numbers
    assert OpSpec.parse("k3_e6:16x112x112:24:s2").macs() == 16 * 96 * 112 * 112 + 96 * 9 * 56 * 56 + 96 * 24 * 56 * 56


# ------------------------------------------------------------------------------------------------
# F1..F4 against the published numbers (REFERENCE section 2)

PUBLISHED = {"fbnetv2-f1": (128, 56.41, 5.999), "fbnetv2-f2": (160, 85.44, 5.999),
             "fbnetv2-f3": (192, 121.82, 6.900), "fbnetv2-f4": (224, 238.35, 6.995)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_archs_match_macs_and_params(name):
    res, macs, params = PUBLISHED[name]
    a = load_arch(name)
    assert a.space.name == "fbnetv2" and a.space.resolution == res
    assert abs(a.macs() / 1e6 / macs - 1) < 0.01
    assert abs(a.params() / 1e6 / params - 1) < 0.01


def test_f1_and_f2_share_blocks():
    f1, f2 = load_arch("fbnetv2-f1"), load_arch("fbnetv2-f2")
    assert f1.blocks == f2.blocks and f1.channels == f2.channels and f1.params() == f2.params()
    assert f2.macs() > f1.macs()


def test_arch_info_cli():
    from fbprof.cli import app

    res = CliRunner().invoke(app, ["arch", "info", "fbnetv2-f4"], catch_exceptions=False)
    assert res.exit_code == 0 and "238.3M MACs" in res.output


# ------------------------------------------------------------------------------------------------
# builders

@pytest.mark.parametrize("key", [
    "k5_e5p4566:8x16x16:24:s2", "k3_e4_sehsig_hs:16x8x8:16:s1", "k5_e1p7712_se:16x8x8:16:s1",
    "k3_e1_hs:16x8x8:16:s1", "stem_hs:3x16x16:8:s2", "ir_pool_e6_hs:16x4x4:32:s1", "k3_e3_g2_sehsig:16x8x8:16:s1",
])
def test_builders_match_spec(key):
    import torch

    from fbprof.build import build_calibrated_op, example_input

    spec = OpSpec.parse(key)
    m = build_calibrated_op(spec)
    assert sum(p.numel() for p in m.parameters()) == spec.params()
    with torch.no_grad():
        y = m(example_input(spec))
    assert tuple(y.shape) == spec.output_shape and torch.isfinite(y).all()
    acts = {type(x).__name__ for x in m.modules()}
    assert ("Hardswish" in acts) == spec.block.hswish
    assert ("Hardsigmoid" in acts) == (spec.block.se == "sehsig")


def test_fbnet_builders_unchanged():
    from fbprof.build import InvertedResidual, build_op

    m = build_op(OpSpec.parse("k3_e6:16x8x8:24:s2"))
    assert type(m) is InvertedResidual and len(m.body) == 8  # expand(3) + dw(3) + project(2)


def test_whole_f1_builds_with_the_spec_params():
    import torch

    from fbprof.build import build_arch

    a = load_arch("fbnetv2-f1")
    net = build_arch(a, calibrated=False)
    assert sum(p.numel() for p in net.parameters()) == a.params()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 128, 128)).shape == (1, 1000)


# ------------------------------------------------------------------------------------------------
# the channel space

TINY = """schema: 1
name: v2tiny
kind: channels
resolutions: [32, 16]
num_classes: 10
stem: {channels: [8], stride: 2, block: stem_hs}
candidates: [k3_e1_hs, k3_e4_hs, k3_e4_sehsig_hs, skip]
stages:
  - {channels: [8, 16, 24], repeats: 2, stride: 2}
head: {channels: [32], block: ir_pool_e6_hs}
grid: {points: 2}
"""


@pytest.fixture
def tiny_space(tmp_path):
    p = tmp_path / "v2tiny.yaml"
    p.write_text(TINY)
    return p


def test_fbnetv2_space_shape():
    sp = load_space("fbnetv2")
    assert sp.resolutions == (128, 160, 192, 224) and len(sp.layers) == 19
    assert [str(t) for t in sp.tags] == ["fbnetv2@128/w1", "fbnetv2@160/w1", "fbnetv2@192/w1", "fbnetv2@224/w1"]
    one = load_space("fbnetv2", 160)
    assert one.resolutions == (160,) and len(one.all_specs()) < len(sp.all_specs())
    cells = {str(c) for c in one.grid()}
    assert "10x10/s1 cin=48,80,112 cout=48,80,112" in cells  # stage 4 (7 layers) at 160 px: one cell


def test_grid_and_specs_of_a_tiny_space(tiny_space):
    sp = load_space(tiny_space, 32)
    assert [str(c) for c in sp.grid()] == ["8x8/s1 cin=8,24 cout=8,24", "16x16/s2 cin=8 cout=8,24"]
    keys = {s.key for s in sp.all_specs()}
    assert "k3_e4_hs:8x8x8:24:s1" in keys and "k3_e4_hs:16x8x8:24:s1" not in keys  # IR: grid points only
    assert "skip:16x8x8:24:s1" in keys and "skip:16x8x8:16:s1" not in keys  # skips: every shape, no identity
    held = sp.heldout_specs(5)
    assert held and all(s.block.kind == "ir" and (s.cin == 16 or s.cout == 16) for s in held)


def test_channel_arch_validation(tiny_space, tmp_path):
    sp = load_space(tiny_space, 32)
    a = sp.arch(["k3_e2p5_hs", "skip"], [16, 16])  # between k3_e1_hs and k3_e4_hs: allowed
    assert [s.key for _, s in a.ops()][1:3] == ["k3_e2p5_hs:8x16x16:16:s2", "skip:16x8x8:16:s1"]
    with pytest.raises(InputError, match="width 20 not offered"):
        sp.arch(["k3_e1_hs", "skip"], [20, 16])
    with pytest.raises(InputError, match="neither a candidate nor between"):
        sp.arch(["k3_e5_hs", "skip"], [16, 16])  # beyond the family's largest expansion
    with pytest.raises(InputError, match="neither a candidate"):
        sp.arch(["k5_e1_hs", "skip"], [16, 16])
    f = tmp_path / "a.yaml"
    f.write_text("name: a\nspace: fbnet\nblocks: []\nchannels: []\n")
    with pytest.raises(FileFormatError, match="does not search widths"):
        load_arch(f)


def test_space_file_errors_name_lines(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(TINY.replace("block: ir_pool_e6_hs", "block: k3_e1").replace("points: 2", "points: 1"))
    with pytest.raises(FileFormatError) as e:
        load_space(p)
    msg = str(e.value)
    assert f"{p}:10: head.block: expected a block of kind irpool or head, got 'k3_e1'" in msg
    assert f"{p}:11: grid.points: at least 2" in msg


# ------------------------------------------------------------------------------------------------
# the grid header: one writer, one strict parser

def test_grid_text_roundtrip_and_errors():
    cells = [GridCell(8, 8, 1, (8, 24), (8, 16, 24)), GridCell(16, 16, 2, (8,), (8, 24))]
    text = format_grid(cells)
    assert text == "8x8/s1 cin=8,24 cout=8,16,24; 16x16/s2 cin=8 cout=8,24"
    assert parse_grid(text) == cells and parse_grid("-") == [] and format_grid([]) == "-"
    for bad in ("8x8/s1 cin=8,24", "8x8/s1 cin=24,8 cout=8", "8x8 cin=8 cout=8", "8x8/s1 cin=8,8 cout=8"):
        with pytest.raises(InputError, match="grid"):
            parse_grid(bad, "where")


def _row(key: str, us: float, status: str = "ok") -> LutRow:
    return LutRow(key, status, Stats(10, 1, us, us, us, us, 0.0, 0.0, us, us))


HEADER = {"device": "local", "backend": "onnxruntime", "runtime": "x", "threads": "1", "spaces": "v2tiny@32/w1"}


def _lut(rows: dict[str, float], grid: str = "8x8/s1 cin=8,24 cout=8,24; 16x16/s2 cin=8 cout=8,24") -> Lut:
    text = format_lut({**HEADER, "grid": grid}, [_row(k, v) for k, v in rows.items()])
    return parse_lut_text(text, "mem.csv")


def test_malformed_grid_header_names_path_and_line(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text(format_lut({**HEADER, "grid": "8x8/s1 cin=8 cout=x"}, []))
    lut = read_lut(p)
    with pytest.raises(FileFormatError, match=rf"{p}:7: header grid: cannot read grid cell"):
        lut.grid()


# ------------------------------------------------------------------------------------------------
# interpolation

def f_lat(cin: float, cout: float, e: float = 4.0) -> float:
    return 3.0 + 0.5 * cin + 0.25 * cout + 0.01 * cin * cout + 2.0 * e


def test_bilinear_is_exact_on_bilinear_functions_and_refuses_to_extrapolate():
    xs, ys = (8, 16, 40), (8, 24)
    table = [[f_lat(x, y) for y in ys] for x in xs]
    for x, y in [(8, 8), (16, 24), (12, 10), (30.5, 17.25), (40, 8)]:
        assert bilinear(xs, ys, table, x, y) == pytest.approx(f_lat(x, y))
    with pytest.raises(ValueError, match="outside"):
        bilinear(xs, ys, table, 41, 8)


def test_bilinear_gradient_flows_to_fractional_widths():
    torch = pytest.importorskip("torch")
    xs, ys = (8, 24), (8, 24)
    table = [[f_lat(x, y) for y in ys] for x in xs]
    cin = torch.tensor(12.5, requires_grad=True)
    cout = torch.tensor(20.0, requires_grad=True)
    out = bilinear(xs, ys, table, cin, cout)
    out.backward()
    assert out.item() == pytest.approx(f_lat(12.5, 20.0))
    assert cin.grad.item() == pytest.approx(0.5 + 0.01 * 20.0)  # d/dcin of the bilinear function
    assert cout.grad.item() == pytest.approx(0.25 + 0.01 * 12.5)


def _synthetic_lut() -> Lut:
    rows = {}
    for e in (1, 4):
        for ci in (8, 24):
            for co in (8, 24):
                rows[f"k3_e{e}_hs:{ci}x8x8:{co}:s1"] = f_lat(ci, co, e)
        for co in (8, 24):
            rows[f"k3_e{e}_hs:8x16x16:{co}:s2"] = f_lat(8, co, e) + 1
    rows.update({"stem_hs:3x32x32:8:s2": 5.0, "skip:16x8x8:24:s1": 2.0, "ir_pool_e6_hs:24x8x8:32:s1": 7.0,
                 "fc:32x1x1:10:s1": 1.0})
    return _lut(rows)


def test_grid_lut_interpolates_widths_and_expansion():
    g = GridLut(_synthetic_lut())
    assert g.interpolate("k3_e4_hs", 1, 8, 16, 12) == pytest.approx(f_lat(16, 12, 4))
    assert g.interpolate("k3_e2p5_hs", 1, 8, 16, 12) == pytest.approx(f_lat(16, 12, 2.5))  # linear in E
    assert g.latency_us(OpSpec.parse("k3_e1_hs:24x8x8:8:s1")) == (f_lat(24, 8, 1), "exact")
    assert g.latency_us(OpSpec.parse("skip:16x8x8:16:s1")) == (0.0, "identity")
    for block, h, cin, cout, why in [("k3_e4_hs", 8, 30, 8, "widths outside the grid axes"),
                                     ("k3_e4_hs", 4, 8, 8, "no grid cell at 4x4/s1"),
                                     ("k3_e5_hs", 8, 16, 16, "not between measured ones"),
                                     ("k5_e4_hs", 8, 16, 16, "nor any block of family k5_hs")]:
        with pytest.raises(OutsideGridError, match=why):
            g.interpolate(block, 1, h, cin, cout)


def test_macs_scheme_is_exact_where_latency_is_proportional_to_macs_and_bilinear_is_not():
    """``scheme="macs"``: the block's MACs (cin^2 in the expansion conv) times bilinear latency per MAC. On a
    latency proportional to MACs it is exact between grid points, where plain bilinear overestimates (the
    chord of a convex function); at the grid points both read the row; differentiable in the widths."""
    torch = pytest.importorskip("torch")
    from fbprof.lut.interp import block_macs

    def lat(ci, co):
        return 0.002 * block_macs("k3_e4_hs", 8, 8, 1, ci, co)

    rows = {f"k3_e4_hs:{ci}x8x8:{co}:s1": lat(ci, co) for ci in (8, 24) for co in (8, 24)}
    lut = _lut(rows)
    macs, plain = GridLut(lut, scheme="macs"), GridLut(lut)
    assert macs.interpolate("k3_e4_hs", 1, 8, 16, 12) == pytest.approx(lat(16, 12))
    assert plain.interpolate("k3_e4_hs", 1, 8, 16, 12) > 1.05 * lat(16, 12)
    assert macs.interpolate("k3_e4_hs", 1, 8, 24, 8) == pytest.approx(rows["k3_e4_hs:24x8x8:8:s1"])
    assert block_macs("k3_e4_hs", 8, 8, 1, 16, 24) == OpSpec.parse("k3_e4_hs:16x8x8:24:s1").macs()
    cin = torch.tensor(16.0, requires_grad=True)
    out = macs.interpolate("k3_e4_hs", 1, 8, cin, torch.tensor(12.0))
    out.backward()
    assert cin.grad.item() == pytest.approx(0.002 * (2 * 4 * 16 * 64 + 4 * 9 * 64 + 4 * 12 * 64), rel=1e-6)
    with pytest.raises(InputError, match="scheme"):
        GridLut(lut, scheme="cubic")


def test_expected_widths_a_rounding_error_off_an_axis_end_are_at_that_end():
    """The search queries E[c] = sum_i g_i c_i in float32: with g nearly one-hot on the narrowest width it comes
    out a few 1e-6 under the axis' first point (a search once stopped on 23.999998 against an axis from 24).
    Such a query reads the end of the axis; one a real fraction of a channel outside still raises."""
    torch = pytest.importorskip("torch")
    g = GridLut(_synthetic_lut())
    e_cin = torch.tensor(24.0) * (1 + 1e-7)  # float32: 24.000002, over the top end
    e_cout = (torch.tensor([0.99999994, 0.0]) * torch.tensor([8.0, 24.0])).sum()  # weights short of 1 by an ulp
    assert float(e_cin) > 24.0 and float(e_cout) < 8.0  # the point of the test: just outside the grid
    for cin, cout in [(e_cin, e_cout), (24.000001, 7.999998), (7.9999, 24.0001)]:
        assert float(g.interpolate("k3_e4_hs", 1, 8, cin, cout)) == pytest.approx(f_lat(_v(cin), _v(cout), 4), rel=1e-5)
    for cin, cout in [(24.01, 8), (16, 7.99)]:
        with pytest.raises(OutsideGridError, match="widths outside the grid axes"):
            g.interpolate("k3_e4_hs", 1, 8, cin, cout)


def _v(x) -> float:
    return float(x.detach()) if hasattr(x, "detach") else float(x)


def test_grid_lut_is_differentiable_in_the_search():
    torch = pytest.importorskip("torch")
    g = GridLut(_synthetic_lut())
    cin = torch.tensor(16.0, requires_grad=True)
    lat = g.interpolate("k3_e4_hs", 1, 8, cin, torch.tensor(12.0))
    lat.backward()
    assert lat.item() == pytest.approx(f_lat(16, 12, 4)) and cin.grad.item() == pytest.approx(0.5 + 0.01 * 12)


def test_predict_reads_interpolated_rows_and_says_when_outside(tiny_space):
    lut = _synthetic_lut()
    sp = load_space(tiny_space, 32)
    a = sp.arch(["k3_e4_hs", "skip"], [16, 24], head_channels=32)
    p = predict(a, lut)
    by = {c.layer: c for c in p.layers}
    assert by["L01"].status == "interp" and by["L01"].latency_us == pytest.approx(f_lat(8, 16, 4) + 1)
    assert by["L02"].status == "ok" and by["L02"].latency_us == 2.0
    assert p.total_us == pytest.approx(5.0 + f_lat(8, 16, 4) + 1 + 2.0 + 7.0 + 1.0)
    wide = dataclasses.replace(sp, resolutions=(16,)).arch(["k3_e4_hs", "skip"], [16, 24], head_channels=32)
    with pytest.raises(OutsideGridError, match="falls outside the measured grid") as e:
        predict_interpolated(wide, lut)
    assert any("no grid cell at 8x8/s2" in q for q in e.value.queries)


def test_check_interpolation_reports_mape():
    grid = _synthetic_lut()
    held = parse_lut_text(format_lut(HEADER, [_row("k3_e4_hs:16x8x8:16:s1", f_lat(16, 16) * 1.1),
                                              _row("k3_e4_hs:16x8x8:12:s1", f_lat(16, 12)),
                                              _row("k3_e4_hs:40x8x8:12:s1", 50.0)]), "held.csv")
    check = check_interpolation(grid, held)
    assert len(check.rows) == 2 and len(check.skipped) == 1
    assert check.mape == pytest.approx(100 * (0.1 / 1.1) / 2)


# ------------------------------------------------------------------------------------------------
# end to end on the local CPU: a small grid

def test_measure_a_channel_space_end_to_end(tiny_space, tmp_path, cache_dir):
    from fbprof.cli import app

    run = CliRunner()
    quick = ["--min-runs", "3", "--min-time", "0", "--warmup", "1", "--workers", "1", "-q", "--backend", "torch"]
    small = tmp_path / "s.yaml"
    small.write_text(TINY.replace("resolutions: [32, 16]", "resolutions: [16]")
                     .replace("candidates: [k3_e1_hs, k3_e4_hs, k3_e4_sehsig_hs, skip]", "candidates: [k3_e1_hs, k3_e4_hs]"))
    out = tmp_path / "g.csv"
    res = run.invoke(app, ["measure", "--space", str(small), "--out", str(out), *quick], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    lut = read_lut(out)
    sp = load_space(small)
    assert lut.grid() == sp.grid() and set(lut.rows) == {s.key for s in sp.all_specs()}
    assert lut.header["spaces"] == "v2tiny@16/w1" and "--resolution" not in lut.header["command"]
    arch = tmp_path / "a.yaml"
    arch.write_text(f"name: a\nspace: {small}\nresolution: 16\nblocks: [k3_e2p5_hs, k3_e1_hs]\nchannels: [16, 24]\n")
    res = run.invoke(app, ["predict", str(arch), "--lut", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "interp" in res.output
    res = run.invoke(app, ["lut", "validate", str(out)], catch_exceptions=False)
    assert "grid of 2 cells" in " ".join(res.output.split())
    # a second run reuses every row and keeps the grid
    res = run.invoke(app, ["measure", "--space", str(small), "--out", str(out), *quick], catch_exceptions=False)
    assert res.exit_code == 0 and read_lut(out).grid() == sp.grid()
    # held-out off-grid ops, measured directly, then the interpolation check
    held = tmp_path / "h.csv"
    res = run.invoke(app, ["measure", "--space", str(small), "--heldout", "2", "--out", str(held), *quick],
                     catch_exceptions=False)
    assert res.exit_code == 0, res.output
    hl = read_lut(held)
    assert "grid" not in hl.header and len(hl) == 2 and "--heldout 2" in hl.header["command"]
    assert not set(hl.rows) & set(lut.rows)
    res = run.invoke(app, ["lut", "interp-check", str(out), str(held)], catch_exceptions=False)
    assert res.exit_code == 0 and "MAPE" in res.output and "over 2 held-out ops" in " ".join(res.output.split())


def test_python_api_measures_a_channel_space_like_the_cli(tiny_space, tmp_path, cache_dir):
    """run_measure and `fbprof measure` build their request in one place: every resolution's tag and the grid
    reach the header through the API too (the API once recorded only the first resolution and no grid)."""
    import fbprof
    from fbprof.loop import LoopConfig

    sp = load_space(tiny_space)
    keys = [s.key for s in sp.all_specs()][:2]
    out = tmp_path / "api.csv"
    summary = fbprof.run_measure(fbprof.MeasureConfig(out=out, space=tiny_space, backend="torch", keys=keys,
                                                      loop=LoopConfig(warmup_runs=1, min_runs=3, min_time_s=0)))
    lut = read_lut(out)
    assert summary.measured == 2 and set(lut.rows) == set(keys)
    assert lut.header["spaces"] == "v2tiny@16/w1, v2tiny@32/w1" and lut.grid() == sp.grid()
    assert lut.header["command"].startswith("fbprof measure --device local --backend torch --space ")


def test_grid_design_interpolates_macs_within_5_percent():
    """The grid of the fbnetv2 space, noise-free: with latency := MACs, held-out off-grid ops are
    interpolated within a few percent (what remains in a measured MAPE is measurement noise)."""
    sp = load_space("fbnetv2", 160)

    def lut_of(specs, grid):
        rows = [_row(s.key, float(s.macs())) for s in specs]
        return parse_lut_text(format_lut({**HEADER, "grid": grid}, rows), "proxy.csv")

    check = check_interpolation(lut_of(sp.all_specs(), format_grid(sp.grid())), lut_of(sp.heldout_specs(60), "-"))
    assert len(check.rows) == 60 and not check.skipped
    assert 0 < check.mape < 5
