import pytest

from fbprof.errors import InputError
from fbprof.spec import OpSpec, parse_block


@pytest.mark.parametrize("key", [
    "k3_e6:16x112x112:24:s2", "k5_e1_g2:112x14x14:112:s1", "skip:16x112x112:24:s2", "stem:3x224x224:16:s2",
    "head:352x7x7:1984:s1", "pool:1984x7x7:1984:s1", "fc:1984x1x1:1000:s1", "k7_e4:8x9x11:8:s1",
])
def test_key_roundtrip(key):
    spec = OpSpec.parse(key)
    assert spec.key == key
    assert OpSpec.parse(spec.key) == spec


@pytest.mark.parametrize("key, reason", [
    ("k3_e6:16x112x112:24", "malformed op key"),
    ("k3_e6:16x112x112:24:s2 ", "malformed op key"),
    ("k4_e6:16x112x112:24:s2", "kernel size must be odd"),
    ("conv:16x112x112:24:s2", "unknown block"),
    ("k3_e1_g1:16x8x8:16:s1", "write groups only when > 1"),
    ("k3_e1_g2:15x8x8:16:s1", "not divisible by 2 groups"),
    ("fc:10x2x2:5:s1", "input must be Cx1x1"),
    ("k3_e6:0x8x8:8:s1", "cin must be >= 1"),
])
def test_bad_keys(key, reason):
    with pytest.raises(InputError, match=reason):
        OpSpec.parse(key)


def test_block_decoding():
    b = parse_block("k5_e1_g2")
    assert (b.kind, b.kernel, b.expansion, b.groups) == ("ir", 5, 1, 2)
    assert parse_block("skip").kind == "skip"


def test_identity_skip_and_shapes():
    assert OpSpec("skip", 16, 112, 112, 16, 1).is_identity
    assert not OpSpec("skip", 16, 112, 112, 24, 2).is_identity
    s = OpSpec.parse("k3_e6:16x112x112:24:s2")
    assert s.output_shape == (1, 24, 56, 56)
    assert s.mid_channels == 96
    # expand 16*96*112*112 + dw 96*9*56*56 + project 96*24*56*56
    assert s.macs() == 16 * 96 * 112 * 112 + 96 * 9 * 56 * 56 + 96 * 24 * 56 * 56
