"""What a backend is: one runtime format (its exporter, its local session, its version, its denormal
policy, its file suffix and aliases), described by one module of this package.

Every backend module follows one shape, standard library only at import time (the ones a phone's Python
runs are pushed there as single files):

- ``SPEC``: a dict with ``name``, ``format``, ``suffix``, ``aliases``, ``extra``, ``runtime_module``,
  ``converter_module``, ``denormals``, ``description`` and ``local`` (whether this computer can run it), and
  optionally ``timed``: what one timed call runs, when it differs from the default ``invoke`` (the LUT header
  field of that name; rows timed differently do not mix);
- ``export(module, example, path, options) -> layout`` (``"nchw"`` or ``"nhwc"``);
- optionally ``export_batch(modules, examples, paths, options) -> layouts``: several modules converted
  together into one file each (``SPEC["batch"]`` of them at a time), cheaper than one conversion each;
- ``open_session(model_path, input, threads) -> session`` with ``invoke()`` (the timed call), ``run() -> ndarray``
  (feeds ``input``) and ``close()`` (gives back any process-wide state the session changed);
- optionally ``session_scope(threads)``: a context manager held around a run of sessions, a LUT build's or
  verify's measuring phase (ExecuTorch: its process-wide thread pool set once for the run).

:class:`Backend` wraps such a module for the rest of fbprof; :mod:`fbprof.backends` keeps the registry.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, Callable, Iterator, Protocol

from fbprof.errors import MeasurementError, MissingExtraError
from fbprof.lut.table import TIMED

__all__ = ["Backend", "Session", "dist_version", "quiet", "silent", "temporary_env", "reuse_export_setup",
           "fold_batchnorm"]


class Session(Protocol):
    """An opened artifact. ``invoke`` runs the model on its input and is what a loop times: it reads no output
    back (a copy of a large output would be charged to the op, once per isolated op, and a network never pays
    it between layers). ``run`` invokes and returns the output, for the check against torch."""

    def invoke(self) -> Any: ...
    def run(self) -> Any: ...
    def close(self) -> None: ...


@functools.lru_cache(maxsize=None)
def dist_version(top_module: str) -> str:
    """Installed version of the distribution that provides ``top_module`` (memoised per process)."""
    for dist in (top_module, top_module.replace("_", "-")):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    dists = metadata.packages_distributions().get(top_module)
    if dists:
        try:
            return metadata.version(dists[0])
        except metadata.PackageNotFoundError:
            pass
    return "missing"


@dataclass(frozen=True)
class Backend:
    name: str
    format: str
    suffix: str
    aliases: tuple[str, ...]
    extra: str | None  # pip extra that provides the runtime and converter
    runtime_module: str  # module the local runtime needs
    converter_module: str  # module the exporter needs
    denormals: str  # how the runtime avoids denormal slowdowns (recorded in LUT headers)
    description: str
    local: bool  # a local runtime exists on this kind of computer
    module: ModuleType = field(repr=False, compare=False)
    batch: int = 1  # ops converted together by the module's export_batch (1: it has none)
    timed: str = TIMED  # what one timed call runs: the LUT header's ``timed`` field (docs/lut-format.md)
    fold_bn: bool = False  # BN folded into the conv before converting (:func:`fold_batchnorm`)

    @classmethod
    def of(cls, module: ModuleType) -> "Backend":
        s = module.SPEC
        return cls(s["name"], s["format"], s["suffix"], tuple(s.get("aliases", ())), s.get("extra"), s["runtime_module"],
                   s["converter_module"], s["denormals"], s["description"], bool(s.get("local", True)), module,
                   int(s.get("batch", 1)) if hasattr(module, "export_batch") else 1, s.get("timed", TIMED),
                   bool(s.get("fold_bn", False)))

    # -- export ------------------------------------------------------------------------------------
    def converter_version(self) -> str:
        """The converter's installed version, read from package metadata (importing converters is slow and
        noisy). ``missing`` when it is not installed."""
        return dist_version(self.converter_module.split(".")[0])

    def exporter(self) -> Callable[..., str]:
        """``export(module, example, path, options) -> layout``; a missing converter names the pip extra."""
        try:
            importlib.import_module(self.converter_module)
        except ImportError:
            raise MissingExtraError(f"exporting to {self.format}", self.extra or "all", self.converter_module) from None
        return self.module.export

    def require_exporter(self) -> None:
        """Raise :class:`MissingExtraError` when the converter is not installed, without importing it (seconds:
        ``litert_torch`` takes ~6 s, which a process that only hands the conversions to workers never needs)."""
        import importlib.util

        try:
            found = importlib.util.find_spec(self.converter_module) is not None
        except (ImportError, ValueError):  # a parent package missing or broken
            found = False
        if not found:
            raise MissingExtraError(f"exporting to {self.format}", self.extra or "all", self.converter_module)

    # -- local runtime -----------------------------------------------------------------------------
    def runtime_version(self) -> str:
        """``"<module> <version>"`` of the local runtime (``missing`` when it is not installed)."""
        try:
            mod = importlib.import_module(self.runtime_module)
        except ImportError:
            return "missing"
        version = getattr(mod, "__version__", None)
        if version is None:  # e.g. executorch keeps it in the distribution metadata
            try:
                version = metadata.version(self.runtime_module.split(".")[0])
            except metadata.PackageNotFoundError:
                version = "unknown"
        return f"{self.runtime_module} {version}"

    def session_scope(self, threads: int) -> contextlib.AbstractContextManager:
        """Held around a run of sessions with ``threads`` threads: the module's ``session_scope(threads)``
        (ExecuTorch: its process-wide XNNPACK pool set once for the run, not resized on every session's open
        and close), or nothing."""
        scope = getattr(self.module, "session_scope", None)
        if scope is None:
            return contextlib.nullcontext()
        try:
            importlib.import_module(self.runtime_module)
        except ImportError:
            raise MissingExtraError(f"backend {self.name}", self.extra or "all", self.runtime_module) from None
        return scope(int(threads))

    def open(self, artifact, threads: int) -> Session:
        """A session that runs ``artifact`` (its own input) on this computer with ``threads`` threads."""
        if not self.local:
            raise MeasurementError(f"{artifact.key}: backend {self.name} has no runtime on this computer ({self.description})")
        try:
            importlib.import_module(self.runtime_module)
        except ImportError:
            raise MissingExtraError(f"backend {self.name}", self.extra or "all", self.runtime_module) from None
        try:
            return self.module.open_session(str(artifact.path), artifact.input, int(threads))
        except MissingExtraError:
            raise
        except Exception as e:
            raise MeasurementError(f"{artifact.key}: {self.name} could not load {os.path.basename(str(artifact.path))}: "
                                   f"{type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence converters' chatter (warnings, logging, stdout) around one export."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript", "absl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


@contextlib.contextmanager
def silent() -> Iterator[None]:
    """quiet() plus stderr: converters draw their own progress bars."""
    with quiet(), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def native_stderr_to_null() -> Iterator[None]:
    """File descriptor 2 on the null device and ``sys.stderr`` on a discarded buffer for the block: what a
    runtime's native code logs (ExecuTorch's cpuinfo probe and thread pool resizes: to fd 2, or through
    ``sys.stderr`` when the binding routes its log there) does not reach the terminal. Process-wide while it
    lasts (what any thread writes to stderr then is lost), so it is used only for calls of milliseconds where
    nothing of fbprof writes: before a LUT build's progress bars start and after they end, or between two
    phases of verify's, whose bars keep their shape across the call: a refresh of them that falls inside is lost
    (rarely, cut in the middle) and the next one redraws them."""
    import sys

    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def temporary_env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of one conversion, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: preservable CIA op sets collected by torch.export, keyed by the dispatcher state they were collected in
_CIA_OPS: dict = {}


class reuse_export_setup:
    """Within the block, two per-call fixed costs of ``ExportedProgram.run_decompositions`` (three per
    ExecuTorch lowering, four per LiteRT conversion) are paid once per process instead of on every call:

    - the set of preservable CompositeImplicitAutograd ops (``torch._export.utils._collect_all_valid_cia_ops``
      walks every op namespace): reused while the dispatcher's CIA registrations and the op namespaces are
      unchanged (checked on every call), handed out as a fresh copy as torch does;
    - the type hints ``Callable[_P, _T]`` that ``OpOverload.py_impl`` builds each time it runs (about 6000
      times per call, to patch every CIA op): built once, the same objects. Only annotations read them;
      ``isinstance(x, Callable)`` in that module still means ``collections.abc.Callable``.

    torch computes the same things either way, so the exported files are byte-identical
    (tests/test_export.py checks it). Scoped to one export call; a patch whose target differs in this
    torch is skipped."""

    def __enter__(self):
        self.patched: list = []
        try:
            import torch
            from torch import _ops
            from torch._export import utils
            from torch.export import decomp_utils, exported_program
        except ImportError:
            return self
        orig = getattr(utils, "_collect_all_valid_cia_ops", None)
        if orig is not None:
            def fingerprint() -> tuple:
                names = tuple(torch.ops._dir)
                sizes = tuple(len(getattr(getattr(torch.ops, n), "_dir", ())) for n in names if hasattr(torch.ops, n))
                cia = torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")
                return names, sizes, len(cia), hash(tuple(cia))

            def collect():
                key = fingerprint()
                ops = _CIA_OPS.get(key)
                if ops is None:
                    ops = orig()
                    _CIA_OPS.clear()
                    _CIA_OPS[fingerprint()] = ops  # collecting materialises ops: key by the state it leaves
                return set(ops)

            for m in (exported_program, decomp_utils):
                if getattr(m, "_collect_all_valid_cia_ops", None) is orig:
                    self.patched.append((m, "_collect_all_valid_cia_ops", orig))
                    m._collect_all_valid_cia_ops = collect
        import collections.abc

        if getattr(_ops, "Callable", None) is collections.abc.Callable:
            self.patched.append((_ops, "Callable", collections.abc.Callable))
            _ops.Callable = _MemoCallable
        return self

    def __exit__(self, *exc) -> None:
        for m, name, orig in reversed(self.patched):
            setattr(m, name, orig)


class _MemoCallableMeta(type):
    """``collections.abc.Callable`` with its subscriptions memoised (see :class:`reuse_export_setup`)."""

    aliases: dict = {}

    def __getitem__(cls, params):
        import collections.abc

        try:
            return cls.aliases[params]
        except KeyError:
            alias = cls.aliases[params] = collections.abc.Callable[params]
            return alias
        except TypeError:  # unhashable parameters (a list of argument types)
            return collections.abc.Callable[params]

    def __instancecheck__(cls, obj) -> bool:
        import collections.abc

        return isinstance(obj, collections.abc.Callable)

    def __subclasscheck__(cls, sub) -> bool:
        import collections.abc

        return issubclass(sub, collections.abc.Callable)


class _MemoCallable(metaclass=_MemoCallableMeta):
    pass


def fold_batchnorm(module: Any) -> Any:
    """A copy of ``module`` (eval mode) in which every ``Conv2d`` directly followed by a ``BatchNorm2d`` in an
    ``nn.Sequential`` is one conv with the BN folded into its weight and bias (``fuse_conv_bn_eval``), the BN
    replaced by ``nn.Identity``. The original is untouched.

    What a backend converts when its SPEC says ``fold_bn``: its converter folds those BNs anyway (LiteRT,
    XNNPACK's partitioner, ONNX Runtime's graph optimizer), so the model it runs has the same ops, while
    every BN no longer passes through the converter's decompositions and tracing (fewer nodes: about half
    the conversion time of an FBNet op, docs/formats.md)."""
    import copy

    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def plain(m: Any) -> bool:  # no hooks that an Identity in its place would drop
        return not (m._forward_hooks or m._forward_pre_hooks)

    mods = list(module.modules())
    if any(m.training for m in mods) or not any(type(m) is torch.nn.BatchNorm2d for m in mods):
        return module  # a training-mode BN normalises with batch statistics: nothing to fold
    folded = copy.deepcopy(module)
    for seq in folded.modules():
        if type(seq) is not torch.nn.Sequential:  # a subclass may have its own forward
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (type(conv) is torch.nn.Conv2d and type(bn) is torch.nn.BatchNorm2d and bn.track_running_stats
                    and plain(conv) and plain(bn)):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = torch.nn.Identity()
    return folded


def batch_module(modules: list) -> Any:
    """Several independent single-input modules as one module with N inputs and N outputs (submodules
    ``m0``, ``m1``, ...), in eval mode: what a backend's ``export_batch`` converts once and then splits."""
    import torch

    class _Batch(torch.nn.Module):
        def __init__(self, ms) -> None:
            super().__init__()
            for i, m in enumerate(ms):
                self.add_module(f"m{i}", m)

        def forward(self, *xs):
            return tuple(getattr(self, f"m{i}")(x) for i, x in enumerate(xs))

    return _Batch(modules).eval()
