"""Training data for the search: the scikit-learn digits (offline default) or an ImageFolder directory.

Both end up as in-memory float tensors ``N x C x R x R`` (R = the proxy training resolution),
normalised per channel with the training part's mean and std, plus integer labels. A fixed,
stratified part (``test_fraction``, 20% by default, always drawn with seed 0 so every run and every
architecture is judged on the same images) is held out for evaluation; the search itself only sees
the rest, which it splits 80/20 into the weight and the architecture-parameter sets.

* ``digits``: the 1797 8x8 handwritten digits that ship inside scikit-learn
  (``sklearn.datasets.load_digits``; real data, no download), values 0..16 scaled to [0, 1],
  upsampled bilinearly to R x R and repeated over the input channels.
* a directory: one sub-folder per class (an ImageFolder), or ``train/`` and ``test/`` ImageFolders of the same
  classes (``test/`` is then the held-out part, whole, and nothing else is held out). Images are read with
  Pillow, converted to RGB (or L for one input channel) and resized to R x R; decoded once and cached as
  ``.npz`` in :func:`cache_dir` (keyed by the files' content). Fewer than two classes, a class without
  images, an image Pillow cannot decode or images of different sizes are an :class:`~fbprof.errors.InputError`
  naming the folder or file. Everything is held in memory (``max_images`` bounds it).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fbprof.errors import InputError
from fbprof.fileio import WriteError, atomic_write_bytes, cache_dir as _cache_dir

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

__all__ = ["Dataset", "load_data", "load_digits_data", "load_image_folder", "IMAGE_SUFFIXES", "stratified_split",
           "cache_dir"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_IMAGES = 200_000
SPLIT_SEED = 0  # the held-out split never depends on the search seed
CACHE_VERSION = 1


@dataclass
class Dataset:
    """Normalised images and labels, already split into a training part and a held-out part."""

    name: str
    classes: list[str]
    x_train: "torch.Tensor"
    y_train: "torch.Tensor"
    x_test: "torch.Tensor"
    y_test: "torch.Tensor"
    resolution: int
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.classes)} classes, {len(self.y_train)} training + {len(self.y_test)} held-out "
                f"images at {self.resolution}x{self.resolution}")


def stratified_split(labels: "torch.Tensor", fraction: float, seed: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Indices (rest, part) with ``part`` holding about ``fraction`` of every class (at least one each
    when a class has two or more images)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    rest, part = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        part.append(idx[:k])
        rest.append(idx[k:])
    rest_t, part_t = torch.cat(rest), torch.cat(part)
    # a fixed, class-interleaved order (not sorted by class)
    rest_t = rest_t[torch.randperm(len(rest_t), generator=gen)]
    part_t = part_t[torch.randperm(len(part_t), generator=gen)]
    return rest_t, part_t


def _finish(name: str, classes: list[str], x: "torch.Tensor", y: "torch.Tensor", resolution: int,
            test_fraction: float, notes: list[str]) -> Dataset:
    train_idx, test_idx = stratified_split(y, test_fraction, SPLIT_SEED)
    x_train, x_test = x[train_idx], x[test_idx]
    dims = (0, 2, 3)
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-3)
    return Dataset(name, classes, ((x_train - mean) / std).contiguous(), y[train_idx].clone(),
                   ((x_test - mean) / std).contiguous(), y[test_idx].clone(), resolution, notes)


def load_digits_data(resolution: int, in_channels: int = 3, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's handwritten digits (1797 images, 10 classes), upsampled to ``resolution``."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if resolution != x.shape[-1]:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = x.repeat(1, in_channels, 1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    return _finish("digits", [str(c) for c in range(10)], x, y, resolution, test_fraction,
                   [f"digits: 8x8 images upsampled to {resolution}x{resolution}"])


def cache_dir() -> Path:
    """Where decoded images are cached: :func:`fbprof.fileio.cache_dir` ``("images")``
    (``$FBPROF_CACHE_DIR/images``, else ``$XDG_CACHE_HOME/fbprof/images``, else ``~/.cache/fbprof/images``)."""
    return _cache_dir("images")


def _class_folders(root: Path, what: str) -> list[Path]:
    if not root.exists():
        raise InputError(f"{root}: no such data directory")
    if not root.is_dir():
        raise InputError(f"{root}: --data must be a directory with one sub-folder per class (or 'digits')")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        found = ", ".join(p.name for p in folders) or "none"
        raise InputError(f"{root}: {what} needs at least 2 class sub-folders, found {len(folders)} ({found})",
                         hint="lay images out as DIR/<class name>/<image>.png, one sub-folder per class "
                              "(or DIR/train/<class>/... and DIR/test/<class>/...)")
    return folders


def _list_images(folders: list[Path], limit_per_class: int | None) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for ci, folder in enumerate(folders):
        imgs = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
        if not imgs:
            raise InputError(f"{folder}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        if limit_per_class is not None:
            imgs = imgs[:limit_per_class]
        files += [(p, ci) for p in imgs]
    return files


def _decode(files: list[tuple[Path, int]], resolution: int, mode: str, note=None) -> tuple["np.ndarray", "np.ndarray", str]:
    """uint8 images (N x R x R x C) and labels, decoded once and cached in :func:`cache_dir` as ``.npz``
    (no pickles), keyed by the content of every file, its class and path, the resolution and the colour mode;
    a changed file, a new or removed image or another resolution is another key. Returns (x, y, cache path)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    h = hashlib.sha256(f"fbprof-images v{CACHE_VERSION} {resolution} {mode}\n".encode())
    for path, label in files:
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot read image: {e.strerror or e}") from None
        h.update(f"{path.parent.name}/{path.name}\t{label}\t{len(blob)}\n".encode())
        h.update(hashlib.sha256(blob).digest())
    key = h.hexdigest()[:32]
    cache = cache_dir() / f"{key}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                x, y = z["x"], z["y"]
            if len(x) == len(files) == len(y) and x.shape[1:3] == (resolution, resolution):
                return x, y, str(cache)
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
            pass
    channels = 1 if mode == "L" else 3
    x = np.empty((len(files), resolution, resolution, channels), dtype=np.uint8)
    first: tuple[Path, tuple[int, int]] | None = None
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as im:
                size = im.size
                if first is None:
                    first = (path, size)
                elif size != first[1]:
                    raise InputError(f"{path}: image is {size[0]}x{size[1]}, but {first[0]} is "
                                     f"{first[1][0]}x{first[1][1]}: the images of a dataset must all have one size",
                                     hint="resize the images to one size first")
                im = im.convert(mode).resize((resolution, resolution), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except InputError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise InputError(f"{path}: cannot read image: {e}") from None
        x[i] = a.reshape(resolution, resolution, channels)
    y = np.asarray([c for _, c in files], dtype=np.int64)
    try:
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        atomic_write_bytes(cache, buf.getvalue())
        if note is not None:
            note(f"decoded {len(files)} images, cached in {cache}")
    except (OSError, WriteError) as e:  # a read-only or full cache is not an error; the next run decodes again
        if note is not None:
            note(f"could not write the image cache {cache}: {e}")
        return x, y, ""
    return x, y, str(cache)


def load_image_folder(root: str | Path, resolution: int, in_channels: int = 3, test_fraction: float = 0.2,
                      max_images: int = DEFAULT_MAX_IMAGES, limit_per_class: int | None = None, note=None) -> Dataset:
    """An ImageFolder ``root/<class>/<image>`` (a fixed, stratified ``test_fraction`` held out), or a folder with
    ``train/`` and ``test/`` ImageFolders of the same classes (``test/`` is then the held-out set, whole).
    ``limit_per_class`` keeps the first N images (sorted by name) of every training class. Images are resized
    to ``resolution``; they must all have one size."""
    import torch

    root = Path(root)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    mode = "L" if in_channels == 1 else "RGB"
    if split:
        folders = _class_folders(root / "train", "the train/ ImageFolder")
        test_folders = _class_folders(root / "test", "the test/ ImageFolder")
        if [p.name for p in folders] != [p.name for p in test_folders]:
            raise InputError(f"{root}: train/ and test/ have different classes "
                             f"({', '.join(p.name for p in folders)} vs {', '.join(p.name for p in test_folders)})")
        files = _list_images(folders, limit_per_class)
        test_files = _list_images(test_folders, None)
    else:
        folders = _class_folders(root, "an ImageFolder")
        files = _list_images(folders, None)
        test_files = []
    if len(files) + len(test_files) > max_images:
        raise InputError(f"{root}: more than {max_images} images; the search loads its proxy data into memory",
                         hint="use --limit-per-class N or a smaller proxy subset of the data")
    x_np, y_np, cached = _decode(files + test_files, resolution, mode, note)
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] != in_channels:
        x = x[:, :1].repeat(1, in_channels, 1, 1) if in_channels != 3 else x
    y = torch.from_numpy(y_np).long()
    name = root.name or str(root)
    notes = [f"{root}: {len(files)} training" + (f" + {len(test_files)} test" if split else "")
             + f" images in {len(folders)} classes resized to {resolution}x{resolution}"
             + (f", first {limit_per_class} per class" if limit_per_class else "")]
    if cached:
        notes.append(f"decoded images cached in {cached}")
    classes = [p.name for p in folders]
    if not split:
        ds = _finish(name, classes, x, y, resolution, test_fraction, notes)
        return _limit(ds, limit_per_class)
    n = len(files)
    x_train, x_test = x[:n], x[n:]
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
    return Dataset(name, classes, ((x_train - mean) / std).contiguous(), y[:n].clone(),
                   ((x_test - mean) / std).contiguous(), y[n:].clone(), resolution, notes)


def _limit(ds: Dataset, limit_per_class: int | None) -> Dataset:
    """Keep the first ``limit_per_class`` training images of every class (the held-out part is unchanged)."""
    import torch

    if limit_per_class is None:
        return ds
    keep = torch.cat([torch.nonzero(ds.y_train == c).flatten()[:limit_per_class] for c in range(ds.num_classes)])
    keep = keep.sort().values
    ds.x_train, ds.y_train = ds.x_train[keep].contiguous(), ds.y_train[keep].clone()
    ds.notes.append(f"first {limit_per_class} training images per class")
    return ds


def load_data(spec: str | Path, resolution: int, in_channels: int = 3, test_fraction: float = 0.2,
              limit_per_class: int | None = None, note=None) -> Dataset:
    """``digits`` or an ImageFolder directory (see :func:`load_image_folder`)."""
    if not 0.0 <= test_fraction < 0.9:
        raise InputError(f"test fraction must be in [0, 0.9), got {test_fraction}")
    if limit_per_class is not None and limit_per_class < 1:
        raise InputError(f"--limit-per-class must be >= 1, got {limit_per_class}")
    if str(spec) == "digits":
        return _limit(load_digits_data(resolution, in_channels, test_fraction), limit_per_class)
    return load_image_folder(spec, resolution, in_channels, test_fraction, limit_per_class=limit_per_class, note=note)
