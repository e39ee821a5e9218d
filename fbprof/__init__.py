"""fbprof: measure operator latency on real devices and search hardware-aware networks (FBNet).

The public Python API lives in :mod:`fbprof.api` and is offered here too (``fbprof.read_lut``,
``fbprof.predict``, ...; the stable names are ``fbprof.api.STABLE``, see docs/python-api.md). This
module is on the ground floor of the package (docs/architecture.md), so it does not import the API:
the first use of one of its names loads it (module ``__getattr__``), and ``import fbprof`` alone
imports nothing else (``fbprof --help`` stays free of numpy, torch and pandas).
"""

__version__ = "0.1.0"

#: the names fbprof.api offers (kept equal to fbprof.api.STABLE by tests/test_api.py)
_API = (
    "Lut", "LutRow", "Stats", "read_lut", "write_lut", "validate_lut", "LutCheck", "diff_luts", "LutDiff", "LutDiffRow",
    "Space", "Arch", "OpSpec", "load_space", "load_arch", "space_names", "arch_names",
    "predict", "predict_frame", "Prediction", "LayerCost",
    "LoopConfig", "MeasureConfig", "MeasureListener", "MeasureSummary", "run_measure",
    "VerifyConfig", "VerifyListener", "VerifyResult", "run_verify",
    "SearchConfig", "SearchListener", "SearchResult", "run_search",
    "FbprofError", "InputError", "FileFormatError", "LutCoverageError", "MissingExtraError", "DeviceError",
    "MeasurementError",
)


def __getattr__(name: str):
    if name in _API:
        # the one reference from the ground floor to the top: a name lookup at run time, not an import of the
        # API's dependencies by fbprof itself (importlib keeps it out of the import-flow check on purpose)
        import importlib

        return getattr(importlib.import_module("fbprof.api"), name)
    raise AttributeError(f"module 'fbprof' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
