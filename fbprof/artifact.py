"""What an export produces: a model file with the input it is measured on and torch's output for it.

Ground floor (numpy only): backends write artifacts, devices run them, the profiler and verify check a
device's output against ``expected`` with :func:`check_output`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Artifact", "check_output", "to_layout"]


@dataclass(frozen=True)
class Artifact:
    """An exported model on disk with the input it is measured on and torch's output for that input.

    ``input`` and ``expected`` are already in the artifact's own layout (``nhwc`` for channel-last
    TFLite graphs), so a device feeds ``input`` as is and compares its output with ``expected``.
    """

    key: str
    format: str
    path: Path  # the model file (or .mlpackage folder)
    input: np.ndarray
    expected: np.ndarray
    layout: str = "nchw"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def save_arrays(self, folder: Path) -> None:
        np.save(folder / "input.npy", self.input, allow_pickle=False)
        np.save(folder / "expected.npy", self.expected, allow_pickle=False)
        (folder / "meta.json").write_text(
            json.dumps({"key": self.key, "format": self.format, "model": self.path.name, "layout": self.layout, **self.meta},
                       sort_keys=True, indent=1)
        )

    @classmethod
    def load(cls, folder: Path) -> "Artifact":
        meta = json.loads((folder / "meta.json").read_text())
        return cls(
            key=meta.pop("key"),
            format=meta.pop("format"),
            path=folder / meta.pop("model"),
            input=np.load(folder / "input.npy", allow_pickle=False),
            expected=np.load(folder / "expected.npy", allow_pickle=False),
            layout=meta.pop("layout", "nchw"),
            meta=meta,
        )


def to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """``a`` (NCHW when 4-D) in ``layout`` (``nchw`` or ``nhwc``)."""
    if layout == "nhwc" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    return a


def check_output(expected: np.ndarray, got: np.ndarray | None, atol: float = 1e-3) -> str | None:
    """None when the runtime's output matches torch's; else the reason."""
    if got is None:
        return None
    got = np.asarray(got)
    if got.shape != expected.shape:
        if got.size == expected.size:
            got = got.reshape(expected.shape)
        else:
            return f"output shape {tuple(got.shape)} != torch {tuple(expected.shape)}"
    if not np.all(np.isfinite(got)):
        return "output has NaN or inf"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    err = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))) if expected.size else 0.0
    if err > atol * scale:
        return f"output differs from torch: max abs error {err:.3g} > {atol * scale:.3g}"
    return None
