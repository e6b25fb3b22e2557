"""The graph walker: an ONNX graph as a differentiable torch module.

Initializers and Constant values become registered buffers (so ``.to(device)`` works;
none requires grad), except those the graph reads only as shapes, axes, pads or scales
(:data:`~camseg.models.onnxgraph.ops.META_INPUTS`), which stay plain CPU tensors (no
device round trip per call, no cast by ``.half()``). Every node whose inputs are all
constants is evaluated once at construction (constant folding); shape arithmetic on
dynamic tensors runs per call on int64 tensors (``Shape`` returns the runtime shape on
the input's device). :meth:`GraphModule.run` executes only the nodes needed for the
requested tensors, can capture intermediate tensors, and can cut the graph at
``leaves``: a leaf is replaced by a detached tensor that requires grad, and the nodes not
downstream of any leaf run under ``torch.no_grad()``, so only the part of the graph after
the leaves is recorded and ``torch.autograd.grad(score, [leaf])`` is the gradient with
respect to that layer's activations. No parameter requires grad: use
``torch.autograd.grad``, not ``backward``.

Thread safety: construction builds everything; :meth:`GraphModule.run` keeps all of its
state in local variables (no hooks, no module attributes written besides an idempotent
plan cache), so many threads may run one module concurrently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from camseg.core.errors import CamsegError, InvalidInputError, NotFoundError, UnsupportedError
from camseg.core.lazy import LazyModule
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES
from camseg.models.modelfiles import check_onnx_model, load_onnx
from camseg.models.onnxgraph.ops import META_INPUTS, OPS, Inputs, OpFn, variant_problem

if TYPE_CHECKING:
    import onnx
    from onnx import numpy_helper
else:  # loaded when a graph is first read: importing camseg pulls in no protobuf
    onnx = LazyModule("onnx")
    numpy_helper = LazyModule("onnx.numpy_helper")

__all__ = ["GraphModule", "UnsupportedOperatorError", "convert", "unsupported_operators"]


class UnsupportedOperatorError(UnsupportedError):
    """The graph holds operators (or operator variants) the converter lacks.

    ``operators`` is the sorted list of their names: an op_type (``"LSTM"``), ``"domain:op"``
    for a node outside the default domain, or ``"Op(detail)"`` for an unsupported variant
    of a supported operator.
    """

    operators: list[str]

    def __init__(self, operators: Iterable[str]) -> None:
        self.operators = sorted(set(operators))
        super().__init__("operators not supported for gradients: " + ", ".join(self.operators))


def _tensor(proto: onnx.TensorProto) -> Tensor:
    """A TensorProto (initializer or attribute) as a CPU torch tensor."""
    arr = numpy_helper.to_array(proto)
    if arr.dtype == object:
        raise UnsupportedError(f"string tensor {proto.name!r} is not supported")
    if arr.dtype.name == "bfloat16":
        return torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
    try:
        return torch.from_numpy(np.array(arr, copy=True))
    except TypeError as exc:
        raise UnsupportedError(f"tensor {proto.name!r} has an unsupported type {arr.dtype}") from exc


def _model_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise InvalidInputError("the model imports no default-domain (ai.onnx) opset")


def _plain_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value
    return out



def unsupported_operators(model: onnx.ModelProto) -> list[str]:
    """The sorted names of the operators in ``model``'s graph that the converter lacks.

    Default-domain (``""``/``"ai.onnx"``) nodes are named by op_type, others as
    ``"domain:op"``; a supported operator used in an unsupported variant appears as
    ``"Op(detail)"``.
    """
    bad: set[str] = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            bad.add(f"{node.domain}:{node.op_type}")
        elif node.op_type not in OPS:
            bad.add(node.op_type)
        else:
            problem = variant_problem(node.op_type, _plain_attrs(node), node.output)
            if problem:
                bad.add(problem)
    return sorted(bad)


@dataclass(frozen=True, slots=True)
class _Node:
    op_type: str
    inputs: tuple[str, ...]  # "" for an omitted optional input
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    fn: OpFn


@dataclass(frozen=True, slots=True)
class _Plan:
    """The nodes one call executes: (node, whether it may record autograd, tensors to drop after it)."""

    steps: tuple[tuple[_Node, bool, tuple[str, ...]], ...]
    inputs: tuple[str, ...]


def _toposort(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """The nodes in an order where every input is produced before use (stable for sorted graphs)."""
    ready = set(available)
    pending, order = list(nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(not name or name in ready for name in node.input):
                order.append(node)
                ready.update(name for name in node.output if name)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node.input if n and n not in ready})
            raise InvalidInputError(f"the graph uses tensors nothing produces (or has a cycle): {missing[:5]}")
        pending = rest
    return order


class GraphModule(nn.Module):
    """An ONNX graph as a differentiable torch module (see the module docstring)."""

    input_names: list[str]
    output_names: list[str]

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        bad = unsupported_operators(model)
        if bad:
            raise UnsupportedOperatorError(bad)
        self.opset = _model_opset(model)
        graph = model.graph
        if len(graph.sparse_initializer):
            raise UnsupportedError("sparse initializers are not supported")
        consts: dict[str, Tensor] = {init.name: _tensor(init) for init in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in consts]
        self.output_names = [o.name for o in graph.output]
        self._input_set = frozenset(self.input_names)
        self._producers: dict[str, _Node] = {}  # every node, folded or not, by output name
        self._runtime: dict[str, _Node] = {}  # the nodes executed per call, by output name
        self._nodes: list[_Node] = []  # ... in execution order
        self._folded: list[_Node] = []  # the nodes evaluated once here
        for proto in _toposort(graph.node, set(self.input_names) | set(consts)):
            attrs = {k: _tensor(v) if isinstance(v, onnx.TensorProto) else v
                     for k, v in _plain_attrs(proto).items()}
            attrs["_op"] = proto.op_type
            attrs["_num_outputs"] = len(proto.output)
            node = _Node(proto.op_type, tuple(proto.input), tuple(proto.output), attrs, OPS[proto.op_type])
            for name in node.outputs:
                if name:
                    self._producers[name] = node
            if all(not name or name in consts for name in node.inputs):
                args: Inputs = [consts[name] if name else None for name in node.inputs]
                try:
                    with torch.no_grad():
                        results = node.fn(node.attrs, args, self.opset)
                except CamsegError:
                    raise
                except Exception as exc:
                    raise InvalidInputError(
                        f"cannot evaluate constant {node.op_type} node {node.outputs}: {exc}") from exc
                for name, value in zip(node.outputs, results, strict=False):
                    if name:
                        consts[name] = value.detach().contiguous()
                self._folded.append(node)
            else:
                self._nodes.append(node)
                for name in node.outputs:
                    if name:
                        self._runtime[name] = node
        # A constant that runtime nodes read only as shape/axes/pads/scales (with .tolist())
        # stays a plain CPU tensor: no device round trip per call, and no cast by .half().
        # Every other constant becomes a buffer.
        meta = {name for node in self._nodes for name in node.inputs if name in consts}
        for node in self._nodes:
            positions = META_INPUTS.get(node.op_type, frozenset())
            meta.difference_update(name for i, name in enumerate(node.inputs) if i not in positions)
        meta.difference_update(self.output_names)
        self._meta: dict[str, Tensor] = {name: consts[name] for name in meta}
        self._const_buffer: dict[str, str] = {}
        for name, value in consts.items():
            if name not in meta:
                key = f"_c{len(self._const_buffer)}"
                self.register_buffer(key, value)
                self._const_buffer[name] = key
        self._known = frozenset(self._input_set | set(consts) | set(self._producers))
        unknown = [name for name in self.output_names if name not in self._known]
        if unknown:
            raise InvalidInputError(f"graph outputs nothing produces: {unknown}")
        self._plans: dict[tuple[tuple[str, ...], frozenset[str]], _Plan] = {}

    # --- introspection

    def _check_name(self, name: str) -> None:
        if name not in self._known:
            raise NotFoundError(f"no tensor named {name!r} in the graph")

    def producer(self, name: str) -> str | None:
        """The op_type of the node producing tensor ``name`` (None for inputs and initializers)."""
        self._check_name(name)
        node = self._producers.get(name)
        return node.op_type if node is not None else None

    def node_inputs(self, name: str) -> list[str]:
        """The input tensor names of the node producing ``name`` ([] for inputs and initializers)."""
        self._check_name(name)
        node = self._producers.get(name)
        return list(node.inputs) if node is not None else []

    def _is_const(self, name: str) -> bool:
        return name in self._const_buffer or name in self._meta

    def _const(self, name: str) -> Tensor:
        t = self._meta.get(name)
        if t is None:
            t = self._buffers[self._const_buffer[name]]
        assert t is not None
        return t

    # --- execution

    def _plan(self, targets: tuple[str, ...], leaves: frozenset[str]) -> _Plan:
        key = (targets, leaves)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._make_plan(targets, leaves)
            if len(self._plans) < 256:
                self._plans[key] = plan
        return plan

    def _make_plan(self, targets: tuple[str, ...], leaves: frozenset[str]) -> _Plan:
        needed: set[int] = set()  # ids of the runtime nodes that are needed
        inputs: set[str] = set()
        stack, seen = list(targets), set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            node = self._runtime.get(name)
            if node is None:
                if name in self._input_set:
                    inputs.add(name)
                continue
            if id(node) not in needed:
                needed.add(id(node))
                stack.extend(n for n in node.inputs if n)
        nodes = [node for node in self._nodes if id(node) in needed]
        keep = set(targets)
        last: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for name in node.inputs:
                if name:
                    last[name] = i
        drops: list[list[str]] = [[] for _ in nodes]
        for name, i in last.items():
            if name not in keep:
                drops[i].append(name)
        for i, node in enumerate(nodes):
            drops[i].extend(n for n in node.outputs if n and n not in last and n not in keep)
        tainted = set(leaves)  # tensors downstream of a leaf (or leaves themselves)
        steps = []
        for node, drop in zip(nodes, drops, strict=True):
            record = not leaves or any(n in tainted for n in node.inputs)
            if leaves and record:
                tainted.update(n for n in node.outputs if n)
            steps.append((node, record, tuple(drop)))
        return _Plan(tuple(steps), tuple(sorted(inputs)))

    def run(self, feeds: dict[str, Tensor], *, outputs: Sequence[str] | None = None,
            leaves: Sequence[str] = (), capture: Sequence[str] = ()) -> dict[str, Tensor]:
        """Execute the graph.

        Returns the requested ``outputs`` (default: the graph outputs) plus every tensor
        named in ``capture`` and ``leaves``. Each leaf, when produced, is replaced by
        ``t.detach().requires_grad_(True)`` before any consumer uses it, and the nodes not
        downstream of a leaf run without recording, so under ``torch.enable_grad()``
        ``torch.autograd.grad(score, [leaf])`` is the gradient with respect to that tensor.
        Only the nodes needed for the requested tensors execute. Unknown tensor names raise
        :class:`~camseg.core.errors.NotFoundError`; a missing graph input
        :class:`~camseg.core.errors.InvalidInputError`.
        """
        out_names = list(self.output_names if outputs is None else outputs)
        leaf_set = frozenset(leaves)
        for name in [*out_names, *capture, *leaves]:
            self._check_name(name)
        for name in feeds:
            if name not in self._input_set:
                raise NotFoundError(f"no graph input named {name!r} (inputs: {self.input_names})")
        wanted = tuple(dict.fromkeys([*out_names, *capture, *leaves]))
        plan = self._plan(wanted, leaf_set)

        def as_leaf(t: Tensor, name: str) -> Tensor:
            if not t.is_floating_point():
                raise InvalidInputError(f"leaf {name!r} is not a floating-point tensor ({t.dtype})")
            return t.detach().requires_grad_(True)

        env: dict[str, Tensor] = {}
        for name in plan.inputs:
            if name not in feeds:
                raise InvalidInputError(f"missing graph input {name!r}")
            value = feeds[name]
            if not isinstance(value, Tensor):
                value = torch.as_tensor(value)
            env[name] = as_leaf(value, name) if name in leaf_set else value
        for name in leaf_set:
            if self._is_const(name):
                env[name] = as_leaf(self._const(name), name)
        opset = self.opset
        for node, record, drop in plan.steps:
            args: Inputs = [None if not n else env[n] if n in env else self._const(n) for n in node.inputs]
            try:
                if record:
                    results = node.fn(node.attrs, args, opset)
                else:
                    with torch.no_grad():
                        results = node.fn(node.attrs, args, opset)
            except (CamsegError, torch.OutOfMemoryError):
                raise
            except Exception as exc:
                raise InvalidInputError(f"{node.op_type} node producing {node.outputs[0]!r} failed: {exc}") from exc
            for name, value in zip(node.outputs, results, strict=False):
                if name:
                    env[name] = as_leaf(value, name) if name in leaf_set else value
            for name in drop:
                env.pop(name, None)
        result: dict[str, Tensor] = {}
        for name in wanted:
            if name in env:
                result[name] = env[name]
            elif self._is_const(name):
                result[name] = self._const(name)
            else:
                raise InvalidInputError(f"missing graph input {name!r}")
        return result

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """The graph outputs (one tensor for one output) for the inputs in ``input_names`` order."""
        if len(inputs) != len(self.input_names):
            raise InvalidInputError(f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        res = self.run(dict(zip(self.input_names, inputs, strict=True)))
        outs = tuple(res[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs


def convert(model: onnx.ModelProto | str | Path, *, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> GraphModule:
    """A :class:`GraphModule` for an ONNX model (a ModelProto or a file path).

    Checked first (:mod:`camseg.models.modelfiles`): a file's external data must stay in
    its folder, a ModelProto must hold its data (none left external), and the tensors
    must fit ``max_bytes``."""
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise NotFoundError(f"no ONNX file at {path}")
        model = load_onnx(path, max_bytes=max_bytes)
    else:
        check_onnx_model(model, "a model in memory", None, max_bytes=max_bytes)
    return GraphModule(model)
