"""The runner that fbprof pushes to a device with Python (Termux, a Linux board reached over ADB).

It is copied next to ``fbprof_loop.py`` (a copy of fbprof/profiler/loop.py) and run there; it needs
only the standard library, numpy and the runtime it measures (onnxruntime or ai_edge_litert). On the
host, the local device imports :func:`open_onnxruntime` from it, so ONNX Runtime is set up identically
on this computer and on a device.

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


def _loop():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fbprof_loop

    return fbprof_loop


def open_onnxruntime(model: str, x, threads: int):
    """A callable that runs ``model`` on ``x`` with fbprof's ONNX Runtime settings (1 inter-op thread,
    sequential, all graph optimisations, denormals as zero, no spinning when single-threaded)."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if threads == 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return lambda: sess.run(None, feed)[0]


def _litert(model: str, x, threads: int):
    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # an older device install
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=model, num_threads=threads)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    it.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=inp["dtype"]).reshape(inp["shape"]))

    def run():
        it.invoke()
        return it.get_tensor(out["index"])

    return run


RUNTIMES = {"onnxruntime": (open_onnxruntime, "onnxruntime"), "litert": (_litert, "ai_edge_litert")}


def version(backend: str) -> dict:
    import importlib

    module = RUNTIMES[backend][1]
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
    fn = RUNTIMES[backend][0](model, x, threads)
    y = np.asarray(fn())
    np.save(output_npy, y, allow_pickle=False)
    retries: list[list[float]] = []
    m = loop.measure(fn, cfg, on_retry=lambda attempt, cv: retries.append([attempt, cv]))
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
