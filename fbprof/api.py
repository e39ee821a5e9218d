"""fbprof's public Python API: the names ``import fbprof`` offers (see docs/python-api.md).

Everything here is also reachable as ``fbprof.<name>`` (``fbprof/__init__.py`` loads this module the
first time such a name is used, so ``import fbprof`` and ``fbprof --help`` stay light).

Stable names (:data:`STABLE`) keep their signatures and meaning within a major version; anything else
in ``fbprof.*`` is internal and may change. The library never prints: progress and results reach you
through the return values and the listener objects you pass in (every listener method is optional;
subclass the listener or pass any object with the methods you want).

::

    import fbprof
    lut = fbprof.read_lut("luts/local-cpu-onnxruntime.csv")
    df = lut.to_pandas()                      # one row per op, header in df.attrs["header"]
    p = fbprof.predict("fbnet-a", lut)        # p.total_us, p.layers, p.to_pandas()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from fbprof import _API, __version__
from fbprof.errors import (DeviceError, FbprofError, FileFormatError, InputError, LutCoverageError, MeasurementError,
                           MissingExtraError)
from fbprof.loop import LoopConfig, Stats
from fbprof.lut.predict import LayerCost, LutDiff, LutDiffRow, Prediction, diff_luts as _diff_luts
from fbprof.lut.predict import predict as _predict
from fbprof.lut.table import Lut, LutRow, read_lut as _read_lut
from fbprof.space import Arch, Space, arch_names, load_arch, load_space, space_names
from fbprof.spec import OpSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from fbprof.profiler.measure import MeasureConfig, MeasureSummary
    from fbprof.search.dnas import SearchConfig, SearchListener, SearchResult
    from fbprof.verify import VerifyConfig, VerifyResult

#: the public, stable names (``fbprof.<name>``): fbprof/__init__.py lists them (it offers them lazily)
STABLE = ("__version__", *_API)
__all__ = list(STABLE) + ["STABLE"]

#: names that load heavier modules (numpy, the profiler), resolved on first use by :func:`__getattr__`
_LAZY = {
    "MeasureConfig": ("fbprof.profiler.measure", "MeasureConfig"),
    "VerifyConfig": ("fbprof.verify.plan", "VerifyConfig"),
    "MeasureListener": ("fbprof.profiler.measure", "Listener"),
    "MeasureSummary": ("fbprof.profiler.measure", "MeasureSummary"),
    "VerifyListener": ("fbprof.verify.plan", "VerifyListener"),
    "VerifyResult": ("fbprof.verify.stats", "VerifyResult"),
    "SearchConfig": ("fbprof.search.dnas", "SearchConfig"),
    "SearchListener": ("fbprof.search.dnas", "SearchListener"),
    "SearchResult": ("fbprof.search.dnas", "SearchResult"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fbprof.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# ------------------------------------------------------------------------------------------------
# LUTs
def read_lut(path: str | Path) -> Lut:
    """Read a LUT CSV strictly; a bad file raises :class:`FileFormatError` listing every ``path:line: reason``."""
    return _read_lut(path)


def write_lut(lut: Lut, path: str | Path | None = None) -> Path:
    """Write ``lut`` atomically (rows sorted, fixed number format) to ``path`` (default: ``lut.path``)."""
    return lut.write(path)


@dataclass(frozen=True)
class LutCheck:
    """The result of :func:`validate_lut`."""

    path: str
    valid: bool
    rows: int
    counts: dict[str, int]  # rows per status (ok, unstable, invalid); empty when the file is not valid
    problems: list[str]  # "path:line: reason", empty when valid


def validate_lut(path: str | Path) -> LutCheck:
    """Check a LUT file without raising for a malformed one (a missing file still raises :class:`InputError`)."""
    try:
        lut = _read_lut(path).validate()
    except FileFormatError as e:
        return LutCheck(str(path), False, 0, {}, list(e.problems))
    return LutCheck(str(path), True, len(lut), lut.counts(), [])


def _lut(lut: Lut | str | Path) -> Lut:
    return lut if isinstance(lut, Lut) else _read_lut(lut)


def diff_luts(a: Lut | str | Path, b: Lut | str | Path) -> LutDiff:
    """Per-op latency ratio B/A over the ops both LUTs hold (sorted by ratio), and the ops only one holds."""
    return _diff_luts(_lut(a), _lut(b))


# ------------------------------------------------------------------------------------------------
# prediction
def predict(arch: Arch | str | Path, lut: Lut | str | Path, *, resolution: int | None = None,
            width: float | None = None) -> Prediction:
    """Predicted latency of one architecture (a packaged name, a file or an :class:`Arch`) from a LUT.

    ``Prediction.total_us`` is the LUT sum, ``calibrated_us`` the calibrated one when the LUT carries a
    calibration, ``layers`` the per-layer costs and ``to_pandas()`` them as a DataFrame. Rows that are not
    ``ok`` are named in ``warnings``; a LUT lacking an op raises :class:`LutCoverageError`.
    """
    a = arch if isinstance(arch, Arch) else load_arch(arch, resolution, width)
    return _predict(a, _lut(lut))


def predict_frame(archs: Iterable[Arch | str | Path], lut: Lut | str | Path) -> "pd.DataFrame":
    """One row per architecture: arch, total_us, calibrated_us, macs, params, unstable (rows not ok)."""
    import pandas as pd

    table = _lut(lut)
    records = []
    for arch in archs:
        a = arch if isinstance(arch, Arch) else load_arch(arch)
        p = _predict(a, table)
        records.append({"arch": a.name, "total_us": p.total_us, "calibrated_us": p.calibrated_us, "macs": a.macs(),
                        "params": a.params(), "unstable": sum(c.status not in ("ok", "identity") for c in p.layers)})
    df = pd.DataFrame.from_records(records, columns=["arch", "total_us", "calibrated_us", "macs", "params", "unstable"])
    df.attrs = {"lut": str(table.path), "header": dict(table.header)}
    return df


# ------------------------------------------------------------------------------------------------
# measuring
def run_measure(config: "MeasureConfig", listener: Any = None) -> "MeasureSummary":
    """Measure the ops of a space on a device into a LUT (resuming and extending like ``fbprof measure``,
    through the same :func:`fbprof.profiler.measure.open_measure`).

    ``listener``: a :class:`MeasureListener` (or any object with some of its ``on_*`` methods); it also
    hears, through ``on_note``, when the device cannot run its profile's backend and another is measured.
    """
    from fbprof.profiler.measure import measure_lut, open_measure

    lis = _adapt(listener, "fbprof.profiler.measure", "Listener")
    with open_measure(config, on_note=lis.on_note if lis is not None else None) as req:
        return measure_lut(req, lis)


# ------------------------------------------------------------------------------------------------
# verifying
def run_verify(config: "VerifyConfig", listener: Any = None) -> "VerifyResult":
    """Measure random whole networks end to end and compare them with the LUT's predictions (``fbprof verify``,
    through the same :func:`fbprof.verify.open_verify`).

    ``result.summary`` is the dict written as summary.json; ``result.results`` one entry per network; with
    ``config.report_dir``, verify.csv, summary.json, verify.png and COMMAND.txt are written there.
    """
    from fbprof.fileio import atomic_write_text
    from fbprof.verify import open_verify, run_verify, write_report

    with open_verify(config) as req:
        result = run_verify(req, _adapt(listener, "fbprof.verify.plan", "VerifyListener"))
    if config.report_dir is not None:
        write_report(result, Path(config.report_dir))
        atomic_write_text(Path(config.report_dir) / "COMMAND.txt", req.command + "\n")
    return result


# ------------------------------------------------------------------------------------------------
# searching
def run_search(config: "SearchConfig", listener: Any = None) -> "SearchResult":
    """FBNet differentiable architecture search with the LUT in the loss (``fbprof search``); needs torch.

    ``config`` is a :class:`SearchConfig` (``fbprof.SearchConfig(lut=..., out=..., epochs=...)``).
    """
    from fbprof.search.dnas import run_search

    return run_search(config, _adapt(listener, "fbprof.search.dnas", "SearchListener"))


def _adapt(listener: Any, module: str, base: str) -> Any:
    """A listener with every method: the caller's where it has one, the base class's no-op otherwise."""
    import importlib

    cls = getattr(importlib.import_module(module), base)
    if listener is None or isinstance(listener, cls):
        return listener

    class _Adapter(cls):  # type: ignore[misc, valid-type]
        def __getattribute__(self, name: str) -> Any:
            if name.startswith("on_") and hasattr(listener, name):
                return getattr(listener, name)
            return object.__getattribute__(self, name)

    return _Adapter()
