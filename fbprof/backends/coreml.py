"""Core ML: ML Program packages (``.mlpackage`` folders) converted by coremltools from the traced module.

Export: static input shape, NCHW, float32 compute precision unless ``options["precision"] == "fp16"``,
deployment target ``options["target"]`` (default iOS16). Prediction needs macOS or iOS: on this kind of
computer there is no local runtime (the iPhone companion app and ``fbprof companion serve`` on a Mac run
it); :func:`open_session` serves the reference companion on macOS.
"""

from __future__ import annotations

import sys

SPEC = {
    "name": "coreml",
    "format": "mlpackage",
    "suffix": ".mlpackage",
    "aliases": ("coreml", "mlpackage"),
    "extra": "coreml",
    "runtime_module": "coremltools",
    "converter_module": "coremltools",
    "denormals": "runtime default",
    "description": "CoreML ML Program (prediction on macOS/iOS only)",
    "local": False,
}

#: CoreML deployment targets accepted by ``options["target"]`` (mlprogram needs iOS 15 or later)
TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")
#: the compute-unit names of the companion protocol, and coremltools' names for them
COMPUTE_UNITS = {"cpuOnly": "CPU_ONLY", "cpuAndGPU": "CPU_AND_GPU", "cpuAndNeuralEngine": "CPU_AND_NE", "all": "ALL"}


def can_predict() -> bool:
    """coremltools predicts on macOS only."""
    return sys.platform == "darwin"


def export(module, example, path, options: dict) -> str:
    """CoreML ML Program package (.mlpackage folder) from the traced module, static input shape."""
    import coremltools as ct
    import torch

    from fbprof.backends.base import silent
    from fbprof.errors import InputError

    target_name = str(options.get("target", "iOS16"))
    if target_name not in TARGETS:
        raise InputError(f"CoreML target {target_name!r}: expected one of {', '.join(TARGETS)}")
    precision = str(options.get("precision", "fp32"))
    if precision not in ("fp32", "fp16"):
        raise InputError(f"CoreML precision {precision!r}: expected fp32 or fp16")
    with silent(), torch.no_grad():
        traced = torch.jit.trace(module, example)
        model = ct.convert(
            traced,
            inputs=[ct.TensorType(name="input", shape=tuple(example.shape))],
            outputs=[ct.TensorType(name="output")],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, target_name),
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        )
        model.save(str(path))
    return "nchw"


class CoreMLSession:  # macOS only: coremltools cannot predict elsewhere
    def __init__(self, model_path: str, x, units: str = "all") -> None:
        import numpy as np
        import coremltools as ct

        cu = getattr(ct.ComputeUnit, COMPUTE_UNITS[units])
        self.model = ct.models.MLModel(str(model_path), compute_units=cu)
        self.feed = {self.model.get_spec().description.input[0].name: np.asarray(x, dtype=np.float32)}

    def invoke(self) -> None:
        self.model.predict(self.feed)

    def run(self):
        import numpy as np

        return np.asarray(next(iter(self.model.predict(self.feed).values())))

    def close(self) -> None:
        self.model = None


def open_session(model_path: str, x, threads: int, units: str = "all") -> CoreMLSession:
    return CoreMLSession(model_path, x, units)
