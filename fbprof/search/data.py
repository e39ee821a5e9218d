"""Training data for the search: the scikit-learn digits (offline default) or an ImageFolder directory.

Both end up as in-memory float tensors ``N x C x R x R`` (R = the proxy training resolution),
normalised per channel with the training part's mean and std, plus integer labels. A fixed,
stratified part (``test_fraction``, 20% by default, always drawn with seed 0 so every run and every
architecture is judged on the same images) is held out for evaluation; the search itself only sees
the rest, which it splits 80/20 into the weight and the architecture-parameter sets.

* ``digits``: the 1797 8x8 handwritten digits that ship inside scikit-learn
  (``sklearn.datasets.load_digits``; real data, no download), values 0..16 scaled to [0, 1],
  upsampled bilinearly to R x R and repeated over the input channels.
* a directory: one sub-folder per class, images inside read with Pillow, converted to RGB (or L
  for one input channel) and resized to R x R. Fewer than two classes, a class without images or an
  image Pillow cannot decode is an :class:`~fbprof.errors.InputError` naming the folder or file.
  Everything is loaded into memory: meant for small proxy datasets (``max_images`` bounds it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fbprof.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Dataset", "load_data", "load_digits_data", "load_image_folder", "IMAGE_SUFFIXES", "stratified_split"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_IMAGES = 200_000
SPLIT_SEED = 0  # the held-out split never depends on the search seed


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


def load_image_folder(root: str | Path, resolution: int, in_channels: int = 3, test_fraction: float = 0.2,
                      max_images: int = DEFAULT_MAX_IMAGES) -> Dataset:
    """An ImageFolder layout: ``root/<class>/<image>``; every image resized to ``resolution``."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such data directory")
    if not root.is_dir():
        raise InputError(f"{root}: --data must be a directory with one sub-folder per class (or 'digits')")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        found = ", ".join(p.name for p in folders) or "none"
        raise InputError(f"{root}: an ImageFolder needs at least 2 class sub-folders, found {len(folders)} ({found})",
                         hint="lay images out as DIR/<class name>/<image>.png, one sub-folder per class")
    files: list[tuple[Path, int]] = []
    for ci, folder in enumerate(folders):
        imgs = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
        if not imgs:
            raise InputError(f"{folder}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += [(p, ci) for p in imgs]
        if len(files) > max_images:
            raise InputError(f"{root}: more than {max_images} images; the search loads its proxy data into memory",
                             hint="use a smaller proxy subset of the data")
    mode = "L" if in_channels == 1 else "RGB"
    arrays = np.empty((len(files), resolution, resolution, 1 if mode == "L" else 3), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as im:
                im = im.convert(mode).resize((resolution, resolution), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise InputError(f"{path}: cannot read image: {e}") from None
        arrays[i] = a.reshape(resolution, resolution, -1)
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] != in_channels:
        x = x[:, :1].repeat(1, in_channels, 1, 1) if in_channels != 3 else x
    y = torch.tensor([c for _, c in files], dtype=torch.long)
    return _finish(root.name or str(root), [p.name for p in folders], x, y, resolution, test_fraction,
                   [f"{root}: {len(files)} images in {len(folders)} classes resized to {resolution}x{resolution}"])


def load_data(spec: str | Path, resolution: int, in_channels: int = 3, test_fraction: float = 0.2) -> Dataset:
    """``digits`` or an ImageFolder directory."""
    if not 0.0 <= test_fraction < 0.9:
        raise InputError(f"test fraction must be in [0, 0.9), got {test_fraction}")
    if str(spec) == "digits":
        return load_digits_data(resolution, in_channels, test_fraction)
    return load_image_folder(spec, resolution, in_channels, test_fraction)
