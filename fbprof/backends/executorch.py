"""ExecuTorch runtime running ``.pte`` programs lowered to the XNNPACK delegate.

Export: ``torch.export`` -> ``to_edge_transform_and_lower(XnnpackPartitioner)`` -> ``.pte``; NCHW.
:func:`export_batch` lowers several ops in one pass (one XNNPACK delegate per op) and writes one ``.pte``
per op, byte for byte the file :func:`export` writes for that op.

A session sets ExecuTorch's (process-wide) XNNPACK thread pool to ``threads``, and torch's intra-op
pool too: the Python binding moves inputs and outputs through torch tensors, whose copies use that pool;
left at its default (all cores), its workers' wake-ups on a busy or pinned core quantise each run to
scheduler ticks (measured: 8.0 ms instead of 0.47 ms for k3_e1 at 16x112x112). Closing the session
gives torch's thread count back.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

SPEC = {
    "name": "executorch",
    "format": "pte",
    "suffix": ".pte",
    "aliases": ("pte",),
    "extra": "executorch",
    "runtime_module": "executorch",
    "converter_module": "executorch.version",
    "denormals": "XNNPACK default (denormals flushed to zero)",
    "description": "ExecuTorch runtime, XNNPACK partitioned .pte",
    "local": True,
    "batch": 8,  # ops per lowering (export_batch)
    "fold_bn": True,  # the runtime folds them too: same ops run (tests/test_export.py), half the conversion time
    # one timed call: ExecuTorchMethod.execute() on inputs set once (before 2026-12-02 its invoke was
    # Method.execute(inputs), which also copied the input in and cloned the output: 6-141 us per FBNet op)
    "timed": "invoke/2",
}


def export(module, example, path, options: dict) -> str:
    """ExecuTorch program lowered to the XNNPACK delegate."""
    from pathlib import Path

    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from fbprof.backends.base import reuse_export_setup, silent

    with silent(), torch.no_grad(), reuse_export_setup():
        program = torch.export.export(module, (example,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        buffer = edge.to_executorch().buffer
    Path(path).write_bytes(buffer)
    return "nchw"


def export_batch(modules, examples, paths, options: dict) -> list[str]:
    """Lower several independent single-input ops together, then write one program per op.

    The ops are exported as one module with N inputs and N outputs and lowered once (torch.export's and
    the edge dialect's fixed per-call costs are paid once per batch, not per op), with two changes that
    make each op's part what a single export gives: the XNNPACK partitions are split per op (one
    delegate each; the partitioner alone would fuse independent ops into one) and debug handles are
    numbered per op. Each op's program is then cut out of the lowered graph (its delegate, its input and
    its unused BN counters, renamed as a single export names them) and serialised alone, so its ``.pte``
    is byte-identical to :func:`export`'s (tests/test_export.py checks it). A graph whose shape differs
    from that (an op not entirely delegated, say) raises, and the caller exports one op at a time."""
    from pathlib import Path

    import torch
    from executorch.exir import to_edge_transform_and_lower

    from fbprof.backends.base import batch_module, reuse_export_setup, silent

    if len(modules) == 1:
        return [export(modules[0], examples[0], paths[0], options)]

    with silent(), torch.no_grad(), reuse_export_setup():
        program = torch.export.export(batch_module(modules), tuple(examples))
        inputs = program.graph_signature.user_inputs
        if len(inputs) != len(modules):
            raise ValueError(f"batch of {len(modules)} ops has {len(inputs)} inputs")
        with _per_op_debug_handles(inputs):
            edge = to_edge_transform_and_lower(program, partitioner=[_per_op_partitioner(inputs)])
        buffers = [_op_program(edge, i, _input_name(modules[i])).to_executorch().buffer for i in range(len(modules))]
    for path, buffer in zip(paths, buffers):
        Path(path).write_bytes(buffer)
    return ["nchw"] * len(modules)


def _input_name(module) -> str:
    """The name torch.export gives the input of ``module`` alone (its forward's parameter)."""
    import inspect

    params = list(inspect.signature(module.forward).parameters)
    if len(params) != 1:
        raise ValueError(f"{type(module).__name__}.forward takes {len(params)} arguments, not one")
    return params[0]


def _owners(graph, inputs: list[str]) -> dict:
    """Node -> index of the batch input it is computed from (parameters: that of the op reading them)."""
    own: dict = {}
    by_name = {n.name: n for n in graph.nodes}
    for i, name in enumerate(inputs):
        todo = [by_name[name]]
        while todo:
            node = todo.pop()
            if node.op == "output":
                continue
            if node in own:
                if own[node] != i:
                    raise ValueError(f"node {node.name} computes from batch inputs {own[node]} and {i}")
                continue
            own[node] = i
            todo.extend(node.users)
    for node in graph.nodes:
        if node not in own and node.op != "output":
            users = {own[u] for u in node.users if u in own}
            if len(users) == 1:
                own[node] = users.pop()
    return own


def _per_op_partitioner(inputs: list[str]):
    """An XnnpackPartitioner whose partitions never span two ops of the batch (a single export's partition
    holds one op; the stock partitioner fuses independent ops into one)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from torch.fx.passes.infra.partitioner import Partition

    class _PerOp(XnnpackPartitioner):
        def generate_partitions(self, ep):
            own = _owners(ep.graph, inputs)
            out = []
            for part in super().generate_partitions(ep):
                groups: dict = {}
                for node in part.nodes:
                    if node not in own:
                        raise ValueError(f"partitioned node {node.name} belongs to no op of the batch")
                    groups.setdefault(own[node], []).append(node)
                out.extend(Partition(id=len(out) + k, nodes=groups[i]) for k, i in enumerate(sorted(groups)))
            return out

    return _PerOp()


class _per_op_debug_handles:
    """Within the block, ExecuTorch's ``DebugHandleGeneratorPass`` numbers each op's nodes from 1 (a single
    export's numbering) instead of counting on across the batch; other graphs it runs on are numbered as
    before. Debug handles only map profiler events back to nodes; they are written into the delegate and
    the program."""

    def __init__(self, inputs: list[str]) -> None:
        self.inputs = inputs
        self.cls = self.orig = None

    def __enter__(self):
        from executorch.exir import debug_handle_utils, graph_module
        from executorch.exir.passes import debug_handle_generator_pass as dhg
        from torch.fx.passes.infra.pass_base import PassResult

        cls = dhg.DebugHandleGeneratorPass
        inputs = self.inputs

        orig = cls.__dict__["call"]

        def call(self_, gm):
            names = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
            if not names.issuperset(inputs):  # another graph (a partition's, say): numbered as torch does
                return orig(self_, gm)
            own = _owners(gm.graph, inputs)
            tables: dict = {}

            def number(node) -> None:
                if node.op in ("placeholder", "output"):
                    return
                if node not in own:
                    raise ValueError(f"node {node.name} belongs to no op of the batch")
                table = tables.setdefault(own[node], {})
                ancestor = debug_handle_utils.get_greatest_ancestor_node_identifier(node)
                handle = table.setdefault(ancestor, len(table) + 1)
                node.meta[debug_handle_utils.DEBUG_HANDLE_KEY] = handle

            graph_module.bfs_trace_with_node_process(gm, number)
            return PassResult(gm, True)

        self.cls, self.orig = cls, orig
        cls.call = call
        return self

    def __exit__(self, *exc) -> None:
        if self.cls is not None:
            self.cls.call = self.orig


def _op_program(edge, i: int, input_name: str):
    """Op ``i`` of a lowered batch as the EdgeProgramManager a single export of it gives."""
    import copy
    import operator

    import torch
    import torch.utils._pytree as pytree
    from executorch.exir import EdgeProgramManager
    from torch.export.exported_program import ExportedProgram, ModuleCallEntry, ModuleCallSignature
    from torch.export.graph_signature import (ExportGraphSignature, InputKind, InputSpec, OutputKind, OutputSpec,
                                              TensorArgument)

    ep = edge.exported_program()
    g = ep.graph
    delegate = torch.ops.higher_order.executorch_call_delegate
    user = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    kinds = {s.arg.name: s for s in ep.graph_signature.input_specs}
    for node in g.nodes:  # only what a fully delegated batch leaves
        ok = (node.op in ("placeholder", "output", "get_attr")
              or (node.op == "call_function" and node.target in (delegate, operator.getitem)))
        if not ok:
            raise ValueError(f"lowered batch keeps {node.op} {node.target} outside a delegate")
    out = g.output_node().args[0][i]
    call = out.args[0] if out.op == "call_function" and out.target is operator.getitem else None
    if call is None or call.target is not delegate or len(call.args) != 2 or call.args[1].name != user[i]:
        raise ValueError(f"output {i} of the batch is not one delegate's result on input {i}")
    if len(call.users) != 1 or len(call.meta["val"]) != 1 or out.args[1] != 0:
        raise ValueError(f"the delegate of op {i} has more than one output")
    lowered, x = call.args
    prefix = f"m{i}."
    state, specs = {}, []
    graph = torch.fx.Graph()
    for node in g.nodes:
        spec = kinds.get(node.name) if node.op == "placeholder" else None
        if spec is None or spec.kind == InputKind.USER_INPUT:
            continue
        if spec.kind != InputKind.BUFFER or spec.target is None:
            raise ValueError(f"lowered batch keeps input {node.name} ({spec.kind})")
        if not spec.target.startswith(prefix):
            continue
        if node.users:
            raise ValueError(f"buffer {spec.target} is read outside a delegate")
        target = spec.target[len(prefix):]
        ph = graph.placeholder("b_" + target.replace(".", "_"))
        ph.meta = copy.copy(node.meta)
        specs.append(InputSpec(InputKind.BUFFER, TensorArgument(ph.name), target, spec.persistent))
        state[target] = ep.state_dict[spec.target]
    xin = graph.placeholder(input_name)
    xin.meta = copy.copy(x.meta)
    specs.append(InputSpec(InputKind.USER_INPUT, TensorArgument(xin.name), None))
    lm = graph.get_attr("lowered_module_0")
    c = graph.call_function(delegate, (lm, xin))
    c.meta = copy.copy(call.meta)
    o = graph.call_function(operator.getitem, (c, 0))
    o.meta = copy.copy(out.meta)
    graph.output((o,))
    root = torch.nn.Module()
    root.lowered_module_0 = getattr(ep.graph_module, lowered.target)
    signature = ExportGraphSignature(specs, [OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(o.name), None)])
    calls = [ModuleCallEntry("", ModuleCallSignature([], [], pytree.tree_structure(((0,), {})), pytree.tree_structure(0),
                                                     forward_arg_names=[input_name]))]
    single = ExportedProgram(root=torch.fx.GraphModule(root, graph), graph=graph, graph_signature=signature,
                             state_dict=state, range_constraints={}, module_call_graph=calls, constants={},
                             verifiers=ep.verifiers)
    return EdgeProgramManager({"forward": single}, compile_config=edge.compile_config)


def runtime_binding() -> object:
    """ExecuTorch's runtime binding (the compiled module behind ``executorch.runtime``).

    ``executorch.runtime`` reaches it through ``portable_lib``, which imports ``executorch.exir._warnings`` for a
    warning class, and with it the whole compiler package ``executorch.exir``: ~5 s per process (6.8 s against
    1.8 s for torch alone here), paid by every run that only measures. The binding itself needs torch's
    libraries loaded first, nothing else; ``portable_lib`` is used when the binding is not where it is in
    ExecuTorch 1.x."""
    import importlib

    importlib.import_module("torch")  # the binding links against torch's libraries

    try:
        from executorch.extension.pybindings import _C as binding
    except ImportError:
        from executorch.extension.pybindings import portable_lib as binding
    return binding


def xnnpack_threads(threads: int | None = None) -> int:
    """Set ExecuTorch's XNNPACK thread pool to ``threads`` (None: leave it); returns the count now in use
    (-1: unknown)."""
    binding = runtime_binding()
    reset = getattr(binding, "_unsafe_reset_threadpool", None)
    count = getattr(binding, "_threadpool_get_thread_count", None)
    if threads is not None and reset is not None and (count is None or count() != threads):
        reset(int(threads))
    return int(count()) if count is not None else -1


class _PoolLease:
    """ExecuTorch's XNNPACK thread pool is process-wide and sessions overlap (verify and paired measuring keep
    several open): the first session to open records the pool's size, the last one to close gives it back."""

    def __init__(self) -> None:
        import threading

        self.open = 0
        self.before = -1
        self._lock = threading.Lock()

    def take(self, threads: int) -> int:
        """Set the pool to ``threads`` for one more open session; counted only once it is set."""
        with self._lock:
            before = xnnpack_threads() if self.open == 0 else self.before
            now = xnnpack_threads(threads)
            self.before = before
            self.open += 1
            return now

    def give_back(self) -> None:
        with self._lock:
            self.open = max(0, self.open - 1)
            if self.open == 0 and self.before > 0:
                xnnpack_threads(self.before)


_POOL = _PoolLease()  # process-wide, like the pool it tracks


@contextlib.contextmanager
def session_scope(threads: int) -> Iterator[None]:
    """The XNNPACK pool held at ``threads`` for a run of sessions (:meth:`Backend.session_scope`): sessions of
    that size then find it set, and the last one to close does not give it back until the run ends. Without
    it, each op of a LUT build resized the pool twice, and the runtime logged both resizes to stderr
    ("Resetting threadpool to N threads", two lines per op beside the progress bars). What the runtime logs
    when the scope loads it (a cpuinfo probe: five lines) and sets or gives back the pool goes to the null
    device: the measuring loop holds the scope outside its progress bars."""
    from fbprof.backends.base import native_stderr_to_null

    runtime_binding()  # its import (seconds) outside the redirect; the pool's first query and resize take ms
    with native_stderr_to_null():
        _POOL.take(threads)
    try:
        yield
    finally:
        with native_stderr_to_null():
            _POOL.give_back()


class ExecuTorchSession:
    def __init__(self, model_path: str, x, threads: int) -> None:
        from pathlib import Path

        import numpy as np
        import torch

        from fbprof.backends.base import dist_version
        from fbprof.errors import MeasurementError

        binding = runtime_binding()
        self.torch = torch
        self.method = None
        self._torch_threads_before = torch.get_num_threads()
        self.threads = _POOL.take(threads)  # given back on close (or a failed open)
        try:
            torch.set_num_threads(int(threads))
            # what executorch.runtime's Runtime.load_program(path, verification=Minimal) does, on the binding
            program = binding._load_program(str(model_path), enable_etdump=False, debug_buffer_size=0,
                                            program_verification=binding.Verification.Minimal)
            if "forward" not in {program.get_method_name(i) for i in range(program.num_methods())}:
                raise ValueError(f"{Path(model_path).name} has no forward method")
            method = program.load_method("forward")
            self.inputs = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))]
            # inputs set once, then execute() alone (``method(inputs)``, what ``Method.execute(inputs)`` runs, copies
            # the input in and clones every output on each call, which a layer inside a network does not pay)
            if not (hasattr(method, "set_inputs") and hasattr(method, "execute")):
                raise MeasurementError(f"executorch {dist_version('executorch')}: its runtime Method has no "
                                       "set_inputs/execute; fbprof times ExecuTorch 1.x's")
            method.set_inputs(self.inputs)
        except Exception:
            self._give_back()
            raise
        self.program, self.method = program, method

    def invoke(self) -> None:
        self.method.execute()

    def run(self):
        return self.method(self.inputs)[0].numpy()

    def close(self) -> None:
        if self.method is not None:
            self.method = self.program = None
            self._give_back()

    def _give_back(self) -> None:
        self.torch.set_num_threads(self._torch_threads_before)
        _POOL.give_back()


def runtime_ops(path) -> tuple:
    """What the runtime runs: the program's non-delegated operators, its delegates (by backend id) and the
    kinds of its instructions (for comparing two exports of one op; a delegate's payload is opaque)."""
    from pathlib import Path

    from executorch.exir._serialize._program import deserialize_pte_binary

    prog = deserialize_pte_binary(Path(path).read_bytes())
    plan = getattr(prog, "program", prog).execution_plan[0]
    return (sorted(o.name for o in plan.operators), [d.id for d in plan.delegates],
            [[type(i.instr_args).__name__ for i in c.instructions] for c in plan.chains])


def open_session(model_path: str, x, threads: int) -> ExecuTorchSession:
    return ExecuTorchSession(model_path, x, threads)
