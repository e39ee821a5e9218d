"""`--data` for the search: ImageFolder and train/test layouts, --limit-per-class, the decoded-image cache, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("FBPROF_CACHE_DIR", str(d))
    return d / "images"  # the images' own folder: the artifact cache beside it never sees them


def _folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.full((size, size, 3), 40 * c, dtype=np.uint8) + rng.integers(0, 30, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def _split(root: Path, per_train: int = 6, per_test: int = 4) -> Path:
    _folder(root / "train", per_class=per_train, seed=1)
    _folder(root / "test", per_class=per_test, seed=2)
    return root


def test_train_test_layout_uses_test_as_the_held_out_set(tmp_path):
    from fbprof.search.data import load_data

    d = load_data(str(_split(tmp_path / "ds")), 8)
    assert d.classes == ["c0", "c1", "c2"]
    assert len(d.y_train) == 18 and len(d.y_test) == 12  # all of train/ for the search, all of test/ held out
    assert sorted(d.y_test.tolist()) == sorted([0, 1, 2] * 4)
    assert d.x_train.shape[1:] == (3, 8, 8) and abs(float(d.x_train.mean())) < 1e-4  # normalised on train/ only


def test_limit_per_class_keeps_the_first_n_training_images(tmp_path):
    from fbprof.search.data import load_data

    root = _split(tmp_path / "ds")
    d = load_data(str(root), 8, limit_per_class=2)
    assert sorted(d.y_train.tolist()) == [0, 0, 1, 1, 2, 2] and len(d.y_test) == 12  # test/ is not limited
    flat = load_data(str(root / "train"), 8, limit_per_class=3)  # an ImageFolder: the held-out part is kept whole
    assert torch.bincount(flat.y_train).tolist() == [3, 3, 3]
    digits = load_data("digits", 8, limit_per_class=5)
    assert torch.bincount(digits.y_train).tolist() == [5] * 10


def test_images_are_decoded_once_and_the_cache_follows_the_content(tmp_path, _cache):
    from fbprof.search import data as data_mod

    root = _folder(tmp_path / "ds")
    notes: list[str] = []
    first = data_mod.load_data(str(root), 8, note=notes.append)
    files = sorted(_cache.glob("*.npz"))
    assert len(files) == 1 and any(str(files[0]) in n for n in notes)
    with np.load(files[0], allow_pickle=False) as z:  # a plain array archive, no pickles
        assert z["x"].dtype == np.uint8 and z["x"].shape == (18, 8, 8, 3)

    calls = []
    real = Image.open
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "open", lambda *a, **k: calls.append(a) or real(*a, **k))
        again = data_mod.load_data(str(root), 8)
    assert calls == []  # served from the cache
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)

    # another resolution, or a changed image (same name, same size), is another key: never served stale
    data_mod.load_data(str(root), 6)
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "c0" / "000.png")
    changed = data_mod.load_data(str(root), 8)
    assert len(list(_cache.glob("*.npz"))) == 3
    assert not torch.equal(torch.cat([changed.x_train, changed.x_test]).sort().values,
                           torch.cat([first.x_train, first.x_test]).sort().values)
    assert not list(_cache.glob("*.tmp"))  # written atomically


def test_a_cache_that_cannot_be_written_is_a_note_not_an_error(tmp_path, monkeypatch):
    from fbprof.search import data as data_mod

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go\n")
    monkeypatch.setenv("FBPROF_CACHE_DIR", str(blocked))
    notes: list[str] = []
    data = data_mod.load_data(str(_folder(tmp_path / "ds")), 8, note=notes.append)
    assert len(data.y_train) + len(data.y_test) == 18
    assert any("could not write the image cache" in n for n in notes), notes
    assert blocked.read_text().startswith("a file")  # left as it was


@pytest.mark.parametrize("case", ["empty", "one-class", "unreadable", "mixed-sizes", "class-mismatch", "no-images"])
def test_bad_folders_give_a_clear_error_naming_the_file(tmp_path, case):
    from typer.testing import CliRunner

    from fbprof.cli import app

    root = tmp_path / "ds"
    if case == "empty":
        root.mkdir()
        want = ["at least 2 class sub-folders, found 0"]
    elif case == "one-class":
        _folder(root, classes=1)
        want = ["at least 2 class sub-folders, found 1 (c0)"]
    elif case == "unreadable":
        _folder(root)
        bad = root / "c1" / "zz.jpg"
        bad.write_bytes(b"\xff\xd8 not really a jpeg")
        want = [str(bad), "cannot read image"]
    elif case == "mixed-sizes":
        _folder(root)
        odd = root / "c2" / "zz.png"
        Image.fromarray(np.zeros((12, 10, 3), dtype=np.uint8)).save(odd)
        want = [str(odd), "10x12", "one size"]
    elif case == "class-mismatch":
        _split(root)
        (root / "test" / "c2").rename(root / "test" / "other")
        want = ["train/ and test/ have different classes"]
    else:
        _folder(root)
        extra = root / "c3"
        extra.mkdir()
        (extra / "notes.txt").write_text("no images here")
        want = [str(extra), "class folder has no images"]
    lut = Path(__file__).resolve().parents[1] / "luts" / "local-cpu-onnxruntime.csv"
    res = CliRunner().invoke(app, ["search", "--lut", str(lut), "--data", str(root), "--out", str(tmp_path / "o"),
                                   "--quiet"])
    assert res.exit_code != 0
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    text = " ".join(res.output.split())
    for w in want:
        assert w in text, res.output
