
import pytest

from fbprof.errors import FileFormatError, InputError
from fbprof.space import load_arch, load_space

# MACs of the publicly released FBNet models (REFERENCE section 1)
RELEASED_MACS = {"fbnet-a": 244.5e6, "fbnet-b": 291.1e6, "fbnet-c": 378.2e6}


@pytest.mark.parametrize("name", sorted(RELEASED_MACS))
def test_fbnet_macs_match_released_models(name):
    arch = load_arch(name)
    assert abs(arch.macs() - RELEASED_MACS[name]) / RELEASED_MACS[name] < 0.015


def test_fbnet_space_shape():
    sp = load_space("fbnet")
    assert len(sp.layers) == 22
    assert all(len(layer.candidates) == 9 for layer in sp.layers)
    specs = sp.all_specs()
    # 12 unique layer shapes x 8 blocks + 6 shape-changing skips + stem + (head, pool, fc) x 2 head widths
    assert len(specs) == 96 + 6 + 1 + 6
    assert not any(s.is_identity for s in specs)
    assert sp.layers[1].stride == 2 and (sp.layers[1].h, sp.layers[1].cin, sp.layers[1].cout) == (112, 16, 24)


def test_resolution_and_width_parameters():
    sp = load_space("fbnet", resolution=160, width=0.5)
    assert sp.stem.h == 160 and sp.stem.cout == 8
    assert sp.layers[-1].cout == 176  # make_divisible(352 * 0.5)
    assert sp.final_hw == (5, 5)


def test_user_space_file_same_schema(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nresolution: 64\nnum_classes: 5\nstem: {channels: 8, stride: 2}\n"
                 "candidates: [k3_e1, skip]\nstages:\n  - {channels: 16, repeats: 2, stride: 2}\nhead: {channels: 32}\n")
    sp = load_space(str(f))
    assert [layer.name for layer in sp.layers] == ["L01", "L02"]
    arch = sp.arch(["k3_e1", "skip"], name="x")
    assert [s.op for _, s in arch.ops()] == ["stem", "k3_e1", "skip", "head", "pool", "fc"]


def test_bad_space_file_lists_every_problem_with_lines(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\nresolution: 64\nstem: {channels: 8, stride: 2}\ncandidates: [k3_e1, k4_e1]\n"
                 "stages:\n  - {channels: 16, repeats: 0, stride: 2}\nbogus: 1\n")
    with pytest.raises(FileFormatError) as ei:
        load_space(str(f))
    msg = str(ei.value)
    assert f"{f}:4: candidates:" in msg and "kernel size must be odd" in msg
    assert f"{f}:6: stages[0].repeats: expected a positive integer" in msg
    assert f"{f}:7: unknown field 'bogus'" in msg


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\nstages: [\n  {a: 1\n")
    with pytest.raises(FileFormatError, match=r"broken.yaml:\d+: invalid YAML"):
        load_space(str(f))


def test_unknown_names_list_valid_ones():
    with pytest.raises(InputError, match="known spaces: fbnet, fbnetv2, tiny"):
        load_space("nope")
    with pytest.raises(InputError, match="known archs: fbnet-a, fbnet-b, fbnet-c"):
        load_arch("fbnet-z")


def test_arch_file_roundtrip_and_errors(tmp_path):
    a = load_arch("fbnet-b")
    out = tmp_path / "b.yaml"
    a.dump(out)
    b = load_arch(str(out))
    assert b.blocks == a.blocks and b.macs() == a.macs()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspace: fbnet\nblocks: [k3_e1]\n")
    with pytest.raises(FileFormatError, match=r"bad.yaml:3: arch x: 1 blocks given, space fbnet has 22"):
        load_arch(str(bad))
    bad.write_text("name: x\nspace: tiny\nblocks: [k3_e1, k3_e6, skip, skip]\n")
    with pytest.raises(FileFormatError, match=r"'k3_e6' is not a candidate"):
        load_arch(str(bad))
