"""The runner that fbprof pushes to a device with Python (Termux, a Linux board reached over ADB).

It is copied next to ``fbprof_loop.py`` (a copy of fbprof/loop.py) and ``fbprof_backend_<name>.py``
(a copy of the backend's module in fbprof/backends/) and run there; it needs only the standard library,
numpy and the runtime it measures (onnxruntime or ai_edge_litert). The backend module is the one the
local device uses, so a runtime is set up identically on this computer and on a device.

    python3 fbprof_runner.py version BACKEND
    python3 fbprof_runner.py measure BACKEND MODEL INPUT_NPY OUTPUT_NPY THREADS CONFIG_JSON

``measure`` loads the model, runs it once on the input (saved to OUTPUT_NPY for the host to check
against torch), then measures it with the shared loop and prints one line ``FBPROF_RESULT {json}``.
Failures print ``FBPROF_ERROR {json}`` and exit with status 3.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import traceback


def _here(name: str):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import importlib

    return importlib.import_module(name)


def _loop():
    return _here("fbprof_loop")


def _backend(backend: str):
    """The backend module pushed beside this runner (fbprof/backends/<backend>.py)."""
    if backend not in PUSHED_BACKENDS:
        raise ValueError(f"the python runner runs {', '.join(PUSHED_BACKENDS)}, not {backend!r}")
    return _here(f"fbprof_backend_{backend}")


#: backends whose module (standard library at import time) is pushed beside the runner
PUSHED_BACKENDS = ("onnxruntime", "litert")


def version(backend: str) -> dict:
    import importlib

    module = _backend(backend).SPEC["runtime_module"]
    try:
        mod = importlib.import_module(module)
        v = getattr(mod, "__version__", "unknown")
    except ImportError:
        v = None
    try:
        import numpy

        npv = numpy.__version__
    except ImportError:
        npv = None
    return {"module": module, "version": v, "numpy": npv, "python": platform.python_version(),
            "machine": platform.machine()}


def measure(backend: str, model: str, input_npy: str, output_npy: str, threads: int, config: str) -> dict:
    import numpy as np

    loop = _loop()
    cfg = loop.LoopConfig.from_dict(json.loads(config))
    x = np.load(input_npy, allow_pickle=False)
    session = _backend(backend).open_session(model, x, threads)
    try:
        y = np.asarray(session.run())
        np.save(output_npy, y, allow_pickle=False)
        retries: list[list[float]] = []
        m = loop.measure(getattr(session, "invoke", session.run), cfg, on_retry=lambda attempt, cv: retries.append([attempt, cv]))
    finally:
        session.close()
    from dataclasses import asdict

    return {"stats": asdict(m.stats), "status": m.status, "attempts": m.attempts, "loop_s": m.loop_s,
            "notes": m.notes, "retries": retries}


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 2 and argv[0] == "version":
            print("FBPROF_RESULT " + json.dumps(version(argv[1])), flush=True)
            return 0
        if len(argv) == 7 and argv[0] == "measure":
            res = measure(argv[1], argv[2], argv[3], argv[4], int(argv[5]), argv[6])
            print("FBPROF_RESULT " + json.dumps(res), flush=True)
            return 0
        print("FBPROF_ERROR " + json.dumps({"error": f"bad arguments: {argv}"}), flush=True)
        return 2
    except Exception as e:  # noqa: BLE001 - reported to the host
        print("FBPROF_ERROR " + json.dumps({"error": f"{type(e).__name__}: {e}",
                                            "trace": traceback.format_exc()[-2000:]}), flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
