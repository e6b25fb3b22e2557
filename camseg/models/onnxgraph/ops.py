"""The operators of the ONNX → torch converter: a registry from ONNX op_type to a torch function.

Each entry of :data:`OPS` is an :data:`OpFn`, ``fn(attrs, inputs, opset) -> outputs``:

* ``attrs``: the node's attributes as plain Python values (strings decoded, tensor
  attributes as CPU torch tensors), plus ``"_op"`` (the op_type, for functions that serve
  several) and ``"_num_outputs"`` (how many outputs the node declares);
* ``inputs``: the input tensors in order, ``None`` for an omitted optional input;
* ``opset``: the model's default-domain opset, which picks the operator's form where ONNX
  moved an attribute to an input (``Clip``'s bounds, ``Reshape``'s shape, ``Slice``'s
  starts and ends, ``Squeeze``'s axes, ...).

Every function is made of torch operations, so autograd sees through it, and follows the
ONNX operator semantics (checked against ONNX Runtime in ``tests/test_onnxgraph.py``).
:func:`variant_problem` names the uses of a registered operator that fall outside the
inference subset (MaxPool's Indices, BatchNormalization in training mode, ...), and
:data:`META_INPUTS` the inputs an operator reads only as Python numbers, which the graph
keeps as CPU tensors. Nothing here reads an ONNX protobuf: the graph walker
(:mod:`camseg.models.onnxgraph.graph`) turns nodes into these calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.core.lazy import LazyModule

if TYPE_CHECKING:
    import onnx
else:  # only a refused Cast's message names an ONNX type: importing the registry pulls in no protobuf
    onnx = LazyModule("onnx")

__all__ = ["DTYPES", "META_INPUTS", "OPS", "SUPPORTED_OPERATORS", "Inputs", "OpFn", "variant_problem"]

Inputs = list[Tensor | None]
OpFn = Callable[[dict[str, Any], Inputs, int], list[Tensor]]

OPS: dict[str, OpFn] = {}

_FLT_MAX = float(np.finfo(np.float32).max)

# onnx.TensorProto.DataType values (fixed by the ONNX spec)
DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    11: torch.float64,
    10: torch.float16,
    16: torch.bfloat16,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    2: torch.uint8,
    4: torch.uint16,
    12: torch.uint32,
    13: torch.uint64,
    9: torch.bool,
}


def _op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def _arg(ins: Inputs, i: int) -> Tensor:
    t = ins[i] if i < len(ins) else None
    if t is None:
        raise InvalidInputError(f"required input {i} is missing")
    return t


def _opt(ins: Inputs, i: int) -> Tensor | None:
    """An optional input; an empty name or an absent trailing input is None."""
    return ins[i] if i < len(ins) else None


def _ints(t: Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis




def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    def op(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
        return [fn(_arg(ins, 0))]

    return op


for _name, _fn in {
    "Identity": lambda t: t,
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Abs": torch.abs,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Sign": torch.sign,
    "Reciprocal": torch.reciprocal,
    "Softplus": F.softplus,
    "Not": torch.logical_not,
}.items():
    OPS[_name] = _unary(_fn)


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates like C


def _pow(a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b).to(a.dtype)  # the result has the base's type


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def op(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
        return [fn(_arg(ins, 0), _arg(ins, 1))]

    return op


BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": _pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
}
for _name, _bfn in BINARY.items():
    OPS[_name] = _binary(_bfn)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor], mean: bool = False) -> OpFn:
    def op(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
        args = [t for t in ins if t is not None]
        out = reduce(fn, args)
        return [out / len(args) if mean else out]

    return op


OPS["Max"] = _variadic(torch.maximum)
OPS["Min"] = _variadic(torch.minimum)
OPS["Sum"] = _variadic(torch.add)
OPS["Mean"] = _variadic(torch.add, mean=True)


@_op("LeakyRelu")
def _leaky_relu(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    return [F.leaky_relu(_arg(ins, 0), a.get("alpha", 0.01))]


@_op("Elu")
def _elu(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    return [F.elu(_arg(ins, 0), a.get("alpha", 1.0))]


@_op("Selu")
def _selu(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    alpha = a.get("alpha", 1.67326319217681884765625)
    gamma = a.get("gamma", 1.05070102214813232421875)
    return [torch.where(x > 0, x * gamma, (torch.exp(x) * alpha - alpha) * gamma)]


@_op("PRelu")
def _prelu(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    return [torch.where(x < 0, x * _arg(ins, 1), x)]


@_op("Gelu")
def _gelu(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    return [F.gelu(_arg(ins, 0), approximate=a.get("approximate", "none"))]


@_op("HardSigmoid")
def _hard_sigmoid(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    return [torch.clamp(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0.0, 1.0)]


@_op("HardSwish")
def _hard_swish(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    return [x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)]


@_op("Clip")
def _clip(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    if opset < 11:
        return [torch.clamp(x, a.get("min", -_FLT_MAX), a.get("max", _FLT_MAX))]
    lo, hi = _opt(ins, 1), _opt(ins, 2)
    if lo is None and hi is None:
        return [x]
    return [torch.clamp(x, lo, hi)]


@_op("Softmax", "LogSoftmax")
def _softmax(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    fn = F.log_softmax if a["_op"] == "LogSoftmax" else F.softmax
    if opset < 13:  # coerced to 2-D at `axis`
        axis = _axis(a.get("axis", 1), x.dim())
        shape = x.shape
        flat = x.reshape(math.prod(shape[:axis]), math.prod(shape[axis:]))
        return [fn(flat, dim=1).reshape(shape)]
    return [fn(x, dim=a.get("axis", -1))]


# --- convolution and pooling


def _spatial_pads(a: dict[str, Any], spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """Begin and end pads of the spatial axes, from ``pads`` or ``auto_pad``."""
    nd = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            out = -(-n // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
            small = total // 2
            begins.append(small if auto == "SAME_UPPER" else total - small)
            ends.append(total - small if auto == "SAME_UPPER" else small)
        return begins, ends
    if auto == "VALID":
        return [0] * nd, [0] * nd
    pads = list(a.get("pads", [0] * (2 * nd)))
    return pads[:nd], pads[nd:]


def _torch_pads(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """ONNX begin/end pads of the trailing axes in F.pad's order (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        out += [b, e]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@_op("Conv")
def _conv(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x, w, b = _arg(ins, 0), _arg(ins, 1), _opt(ins, 2)
    nd = x.dim() - 2
    kernel = list(w.shape[2:])
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    begins, ends = _spatial_pads(a, x.shape[2:], kernel, strides, dilations)
    if begins != ends:
        x = F.pad(x, _torch_pads(begins, ends))
        begins = [0] * nd
    return [_CONV[nd](x, w, b, strides, begins, dilations, a.get("group", 1))]


@dataclass(frozen=True, slots=True)
class _PoolGeometry:
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begins: list[int]
    ends: list[int]
    extra: list[int]  # padding after `ends` that ceil_mode's last windows reach into

    @property
    def simple(self) -> bool:
        """torch's own padding reproduces ONNX: symmetric, small pads, no ceil-mode overhang."""
        return (self.begins == self.ends and not any(self.extra)
                and all(2 * p <= k for p, k in zip(self.begins, self.kernel, strict=True)))


def _pool_geometry(a: dict[str, Any], x: Tensor) -> _PoolGeometry:
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    spatial = list(x.shape[2:])
    begins, ends = _spatial_pads(a, spatial, kernel, strides, dilations)
    extra = []
    for n, k, s, d, pb, pe in zip(spatial, kernel, strides, dilations, begins, ends, strict=True):
        span = n + pb + pe - ((k - 1) * d + 1)
        if a.get("ceil_mode", 0):
            out = -(-span // s) + 1
            if (out - 1) * s >= n + pb:  # the last window must start inside the input or its begin pad
                out -= 1
        else:
            out = span // s + 1
        extra.append(max(0, (out - 1) * s + (k - 1) * d + 1 - (n + pb + pe)))
    return _PoolGeometry(kernel, strides, dilations, begins, ends, extra)


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@_op("MaxPool")
def _max_pool(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    g = _pool_geometry(a, x)
    pool = _MAX_POOL[len(g.kernel)]
    if g.simple:
        return [pool(x, g.kernel, g.strides, g.begins, g.dilations)]
    ends = [e + x_ for e, x_ in zip(g.ends, g.extra, strict=True)]
    x = F.pad(x, _torch_pads(g.begins, ends), value=-math.inf)
    return [pool(x, g.kernel, g.strides, 0, g.dilations)]


def _sum_pool(x: Tensor, g: _PoolGeometry) -> Tensor:
    """Window sums of an (already padded) tensor, as a depthwise convolution with ones."""
    n, c = x.shape[:2]
    flat = x.reshape(n * c, 1, *x.shape[2:])
    ones = torch.ones(1, 1, *g.kernel, dtype=x.dtype, device=x.device)
    out = _CONV[len(g.kernel)](flat, ones, None, g.strides, 0, g.dilations)
    return out.reshape(n, c, *out.shape[2:])


@_op("AveragePool")
def _average_pool(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    g = _pool_geometry(a, x)
    include_pad = bool(a.get("count_include_pad", 0))
    if g.simple and all(d == 1 for d in g.dilations):
        return [_AVG_POOL[len(g.kernel)](x, g.kernel, g.strides, g.begins, False, include_pad)]
    nd = len(g.kernel)
    ends = [e + x_ for e, x_ in zip(g.ends, g.extra, strict=True)]
    total = F.pad(x, _torch_pads(g.begins, ends))
    # The divisor: window elements inside the input, or inside input and pads (not the
    # ceil-mode overhang), counted by pooling a mask the same way.
    mask = torch.ones(1, 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    if include_pad:
        mask = F.pad(mask, _torch_pads(g.begins, g.ends), value=1.0)
        mask = F.pad(mask, _torch_pads([0] * nd, g.extra))
    else:
        mask = F.pad(mask, _torch_pads(g.begins, ends))
    return [_sum_pool(total, g) / _sum_pool(mask, g)]


@_op("GlobalAveragePool")
def _global_average_pool(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@_op("GlobalMaxPool")
def _global_max_pool(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


# --- normalisation


@_op("BatchNormalization")
def _batch_norm(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x, scale, bias, mean, var = (_arg(ins, i) for i in range(5))
    return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))]


@_op("InstanceNormalization")
def _instance_norm(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x, scale, bias = _arg(ins, 0), _arg(ins, 1), _arg(ins, 2)
    return [F.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))]


@_op("LayerNormalization")
def _layer_norm(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x, scale, bias = _arg(ins, 0), _arg(ins, 1), _opt(ins, 2)
    dims = tuple(range(_axis(a.get("axis", -1), x.dim()), x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=dims, keepdim=True)
    y = centred / torch.sqrt(var + a.get("epsilon", 1e-5)) * scale
    return [y if bias is None else y + bias]


@_op("LRN")
def _lrn(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    size = int(a["size"])
    lo = (size - 1) // 2
    sq = F.pad(x * x, [0, 0] * (x.dim() - 2) + [lo, size - 1 - lo])
    channels = x.shape[1]
    total = reduce(torch.add, (sq.narrow(1, k, channels) for k in range(size)))
    scale = total * (a.get("alpha", 1e-4) / size) + a.get("bias", 1.0)
    return [x / scale ** a.get("beta", 0.75)]


# --- linear algebra


@_op("MatMul")
def _matmul(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    return [torch.matmul(_arg(ins, 0), _arg(ins, 1))]


@_op("Gemm")
def _gemm(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x, w, c = _arg(ins, 0), _arg(ins, 1), _opt(ins, 2)
    if a.get("transA", 0):
        x = x.transpose(0, 1)
    if a.get("transB", 0):
        w = w.transpose(0, 1)
    y = x @ w
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


# --- reductions


def _reduce(kind: str) -> OpFn:
    def op(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
        x = _arg(ins, 0)
        if opset >= (13 if kind == "sum" else 18):
            t = _opt(ins, 1)
            axes = _ints(t) if t is not None else []
        else:
            axes = list(a.get("axes", []))
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        dims = tuple(sorted({_axis(v, x.dim()) for v in axes}))
        if kind == "mean":
            return [x.mean(dim=dims, keepdim=keep)]
        if kind == "sum":
            return [x.sum(dim=dims, keepdim=keep).to(x.dtype)]
        if kind == "max":
            return [x.amax(dim=dims, keepdim=keep)]
        return [x.amin(dim=dims, keepdim=keep)]

    return op


OPS["ReduceMean"] = _reduce("mean")
OPS["ReduceSum"] = _reduce("sum")
OPS["ReduceMax"] = _reduce("max")
OPS["ReduceMin"] = _reduce("min")


@_op("ArgMax")
def _argmax(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    axis = _axis(a.get("axis", 0), x.dim())
    keep = bool(a.get("keepdims", 1))
    if a.get("select_last_index", 0):
        return [x.shape[axis] - 1 - torch.argmax(x.flip(axis), dim=axis, keepdim=keep)]
    return [torch.argmax(x, dim=axis, keepdim=keep)]


# --- shape manipulation


@_op("Flatten")
def _flatten(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    axis = _axis(a.get("axis", 1), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@_op("Reshape")
def _reshape(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    shape = _ints(_arg(ins, 1)) if opset >= 5 else list(a["shape"])
    if not a.get("allowzero", 0):  # 0 copies the input's dimension
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@_op("Transpose")
def _transpose(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    perm = a.get("perm") or list(reversed(range(x.dim())))
    return [x.permute(*perm)]


def _axes(a: dict[str, Any], ins: Inputs, opset: int, since: int) -> list[int] | None:
    """Axes from the attribute (opset < since) or the optional second input."""
    if opset < since:
        axes = a.get("axes")
        return list(axes) if axes is not None else None
    t = _opt(ins, 1)
    return _ints(t) if t is not None else None


@_op("Squeeze")
def _squeeze(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    axes = _axes(a, ins, opset, 13)
    if not axes:
        return [x.squeeze()]
    return [x.squeeze(tuple(_axis(v, x.dim()) for v in axes))]


@_op("Unsqueeze")
def _unsqueeze(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    axes = _axes(a, ins, opset, 13) or []
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(v, rank) for v in axes):
        x = x.unsqueeze(axis)
    return [x]


@_op("Concat")
def _concat(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    return [torch.cat([t for t in ins if t is not None], dim=a["axis"])]


@_op("Split")
def _split(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    axis = _axis(a.get("axis", 0), x.dim())
    t = _opt(ins, 1) if opset >= 13 else None
    sizes = _ints(t) if t is not None else list(a.get("split", []))
    if not sizes:  # equal parts; with opset 18's num_outputs the last may be smaller
        parts = a.get("num_outputs", a["_num_outputs"])
        dim = x.shape[axis]
        chunk = -(-dim // parts)
        sizes = [max(0, min(chunk, dim - i * chunk)) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


@_op("Shape")
def _shape(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    dims = list(x.shape)[a.get("start", 0):a.get("end", x.dim())]
    return [torch.tensor(dims, dtype=torch.int64, device=x.device)]


@_op("Size")
def _size(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    return [torch.tensor(x.numel(), dtype=torch.int64, device=x.device)]


@_op("Gather")
def _gather(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x, idx = _arg(ins, 0), _arg(ins, 1)
    axis = _axis(a.get("axis", 0), x.dim())
    idx = idx.to(device=x.device, dtype=torch.int64)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return [out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))]


@_op("Slice")
def _slice(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    if opset < 10:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes: list[int] | None = list(a["axes"]) if "axes" in a else None
        steps: list[int] | None = None
    else:
        starts, ends = _ints(_arg(ins, 1)), _ints(_arg(ins, 2))
        t_axes, t_steps = _opt(ins, 3), _opt(ins, 4)
        axes = _ints(t_axes) if t_axes is not None else None
        steps = _ints(t_steps) if t_steps is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis = _axis(axis, x.dim())
        n = x.shape[axis]
        start = start + n if start < 0 else start
        end = end + n if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), n), min(max(end, 0), n), step)
        else:  # torch slicing has no negative steps: gather the indices
            start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
            x = x.index_select(axis, torch.arange(start, end, step, device=x.device))
    return [x[tuple(index)]]


@_op("Pad")
def _pad(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    rank = x.dim()
    mode = a.get("mode", "constant")
    if opset < 11:
        pads, value, axes = list(a["pads"]), float(a.get("value", 0.0)), list(range(rank))
    else:
        pads = _ints(_arg(ins, 1))
        cv, t_axes = _opt(ins, 2), _opt(ins, 3)
        value = cv.reshape(-1)[0].item() if cv is not None and cv.numel() else 0.0
        axes = [_axis(v, rank) for v in _ints(t_axes)] if t_axes is not None else list(range(rank))
    n = len(axes)
    begin = {axis: pads[i] for i, axis in enumerate(axes)}
    end = {axis: pads[i + n] for i, axis in enumerate(axes)}
    if mode == "constant":
        flat = _torch_pads([begin.get(i, 0) for i in range(rank)], [end.get(i, 0) for i in range(rank)])
        return [F.pad(x, flat, value=value if x.is_floating_point() else int(value))]
    for axis in axes:  # edge / reflect / wrap: gather the source index of every output element
        b, e, size = begin[axis], end[axis], x.shape[axis]
        if b == 0 and e == 0:
            continue
        idx = torch.arange(-b, size + e, device=x.device)
        if mode == "edge":
            idx = idx.clamp(0, size - 1)
        elif mode == "reflect":
            period = 2 * (size - 1)
            idx = idx.remainder(period) if period else torch.zeros_like(idx)
            idx = torch.where(idx >= size, period - idx, idx)
        elif mode == "wrap":
            idx = idx.remainder(size)
        else:
            raise UnsupportedError(f"Pad mode {mode!r} is not supported")
        x = x.index_select(axis, idx)
    return [x]


@_op("Expand")
def _expand(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(_arg(ins, 1))))
    return [x.expand(shape)]


@_op("Tile")
def _tile(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    return [_arg(ins, 0).repeat(_ints(_arg(ins, 1)))]


# --- constants, types, selection


@_op("Constant")
def _constant(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    if "value" in a:
        return [a["value"]]
    if "value_float" in a:
        return [torch.tensor(a["value_float"], dtype=torch.float32)]
    if "value_floats" in a:
        return [torch.tensor(list(a["value_floats"]), dtype=torch.float32)]
    if "value_int" in a:
        return [torch.tensor(a["value_int"], dtype=torch.int64)]
    if "value_ints" in a:
        return [torch.tensor(list(a["value_ints"]), dtype=torch.int64)]
    raise UnsupportedError("Constant without a numeric value is not supported")


@_op("ConstantOfShape")
def _constant_of_shape(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    shape = _arg(ins, 0)
    value = a.get("value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    return [torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype, device=shape.device)]


@_op("Cast")
def _cast(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    return [_arg(ins, 0).to(DTYPES[a["to"]])]


@_op("CastLike")
def _cast_like(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    return [_arg(ins, 0).to(_arg(ins, 1).dtype)]


@_op("Dropout")
def _dropout(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)  # inference: the identity, and a mask of ones when asked for
    if a["_num_outputs"] > 1:
        return [x, torch.ones_like(x, dtype=torch.bool)]
    return [x]


@_op("Where")
def _where(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    return [torch.where(_arg(ins, 0).bool(), _arg(ins, 1), _arg(ins, 2))]


@_op("Range")
def _range(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    start, limit, delta = (_arg(ins, i).item() for i in range(3))
    like = _arg(ins, 0)
    if math.ceil((limit - start) / delta) <= 0:  # ONNX: max(ceil((limit - start) / delta), 0) elements
        return [torch.empty(0, dtype=like.dtype, device=like.device)]
    return [torch.arange(start, limit, delta, dtype=like.dtype, device=like.device)]


# --- resizing


def _source_coords(ctm: str, n_out: int, n_in: int, scale: float) -> np.ndarray:
    """The source coordinate of each output index along one axis, in float32 like ORT."""
    f32 = np.float32
    xr = np.arange(n_out, dtype=f32)
    s, half = f32(scale), f32(0.5)
    if ctm == "half_pixel":
        return (xr + half) / s - half
    if ctm == "half_pixel_symmetric":
        adjustment = f32(n_out) / (s * f32(n_in))
        offset = f32(n_in) / f32(2) * (f32(1) - adjustment)
        return offset + (xr + half) / s - half
    if ctm == "pytorch_half_pixel":
        return (xr + half) / s - half if n_out > 1 else np.zeros(n_out, dtype=f32)
    if ctm == "align_corners":
        return xr * f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else np.zeros(n_out, dtype=f32)
    if ctm == "asymmetric":
        return xr / s
    if ctm == "tf_half_pixel_for_nn":
        return (xr + half) / s
    raise UnsupportedError(f"Resize coordinate_transformation_mode {ctm!r} is not supported")


def _nearest_index(coords: np.ndarray, mode: str, scale: float, n_in: int) -> np.ndarray:
    c = coords.astype(np.float64)
    if mode == "simple":  # Resize-10 / Upsample in ORT: ceil when downsampling, else truncate
        idx = np.ceil(c) if scale < 1 else np.trunc(c)
    elif mode == "round_prefer_floor":
        idx = np.where(c == np.floor(c) + 0.5, np.floor(c), np.floor(c + 0.5))
    elif mode == "round_prefer_ceil":
        idx = np.floor(c + 0.5)
    elif mode == "floor":
        idx = np.floor(c)
    elif mode == "ceil":
        idx = np.ceil(c)
    else:
        raise UnsupportedError(f"Resize nearest_mode {mode!r} is not supported")
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def _along(w: np.ndarray, x: Tensor, axis: int) -> Tensor:
    """Per-index weights shaped to broadcast along ``axis`` of ``x``."""
    t = torch.from_numpy(np.ascontiguousarray(w)).to(device=x.device, dtype=x.dtype)
    return t.reshape(-1, *([1] * (x.dim() - axis - 1)))


def _resize_axis(x: Tensor, axis: int, n_out: int, scale: float, a: dict[str, Any]) -> Tensor:
    n_in = x.shape[axis]
    coords = _source_coords(a["_ctm"], n_out, n_in, scale)
    mode = a.get("mode", "nearest")
    dev = x.device
    if mode == "nearest":
        idx = _nearest_index(coords, a["_nearest"], scale, n_in)
        return x.index_select(axis, torch.from_numpy(idx).to(dev))
    if mode in ("linear", "bilinear"):
        c = np.clip(coords, np.float32(0), np.float32(n_in - 1))
        x1 = np.minimum(c.astype(np.int64), n_in - 1)
        x2 = np.minimum(x1 + 1, n_in - 1)
        d1 = np.abs(c - x1.astype(np.float32))
        d2 = np.abs(c - x2.astype(np.float32))
        same = x1 == x2
        d1[same], d2[same] = 0.5, 0.5
        lo = x.index_select(axis, torch.from_numpy(x1).to(dev))
        hi = x.index_select(axis, torch.from_numpy(x2).to(dev))
        return lo * _along(d2, x, axis) + hi * _along(d1, x, axis)
    if mode == "cubic":
        f32 = np.float32
        A = f32(a.get("cubic_coeff_a", -0.75))
        base = np.floor(coords)
        s = (coords - base).astype(f32)
        one, two = f32(1), f32(2)
        weights = np.stack([
            ((A * (s + one) - f32(5) * A) * (s + one) + f32(8) * A) * (s + one) - f32(4) * A,
            ((A + two) * s - (A + f32(3))) * s * s + one,
            ((A + two) * (one - s) - (A + f32(3))) * (one - s) * (one - s) + one,
            ((A * (two - s) - f32(5) * A) * (two - s) + f32(8) * A) * (two - s) - f32(4) * A,
        ], axis=1).astype(f32)
        taps = base.astype(np.int64)[:, None] + np.arange(-1, 3)
        if a.get("exclude_outside", 0):
            weights = np.where((taps >= 0) & (taps < n_in), weights, f32(0))
            weights = (weights / weights.sum(axis=1, keepdims=True)).astype(f32)
        taps = np.clip(taps, 0, n_in - 1)
        out: Tensor | None = None
        for k in range(4):
            term = x.index_select(axis, torch.from_numpy(np.ascontiguousarray(taps[:, k])).to(dev))
            term = term * _along(weights[:, k], x, axis)
            out = term if out is None else out + term
        assert out is not None
        return out
    raise UnsupportedError(f"Resize mode {mode!r} is not supported")


@_op("Resize", "Upsample")
def _resize(a: dict[str, Any], ins: Inputs, opset: int) -> list[Tensor]:
    x = _arg(ins, 0)
    rank = x.dim()
    sizes_t: Tensor | None = None
    scales_t: Tensor | None
    if a["_op"] == "Upsample" or opset < 11:
        a = {**a, "_ctm": "asymmetric", "_nearest": "simple"}
        scales_t = torch.tensor(a["scales"]) if "scales" in a else _arg(ins, 1)
    else:
        a = {**a, "_ctm": a.get("coordinate_transformation_mode", "half_pixel"),
             "_nearest": a.get("nearest_mode", "round_prefer_floor")}
        scales_t, sizes_t = _opt(ins, 2), _opt(ins, 3)
    axes = [_axis(v, rank) for v in a["axes"]] if "axes" in a else list(range(rank))
    in_sizes = [x.shape[axis] for axis in axes]
    f32 = np.float32
    if sizes_t is not None and sizes_t.numel():
        sizes = _ints(sizes_t)
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            scales = [float(f32(o) / f32(i)) for o, i in zip(sizes, in_sizes, strict=True)]
        else:
            ratios = [f32(o) / f32(i) for o, i in zip(sizes, in_sizes, strict=True)]
            common = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [math.floor(float(common * f32(i)) + 0.5) for i in in_sizes]
            scales = [float(common)] * len(axes)
    elif scales_t is not None and scales_t.numel():
        scales_np = scales_t.detach().cpu().numpy().astype(f32).reshape(-1)
        scales = [float(s) for s in scales_np]
        sizes = [int(f32(s) * f32(i)) for s, i in zip(scales_np, in_sizes, strict=True)]
    else:
        raise InvalidInputError("Resize needs scales or sizes")
    for axis, n_in, n_out, scale in zip(axes, in_sizes, sizes, scales, strict=True):
        if n_in == n_out and scale == 1.0:
            continue
        x = _resize_axis(x, axis, n_out, scale, a)
    return [x]


SUPPORTED_OPERATORS: frozenset[str] = frozenset(OPS)

_AXES_INPUT = frozenset({1})
# The input positions that an operator reads only as Python numbers (shapes, axes, pads, scales).
META_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": _AXES_INPUT, "Squeeze": _AXES_INPUT, "Unsqueeze": _AXES_INPUT, "Split": _AXES_INPUT,
    "Expand": _AXES_INPUT, "Tile": _AXES_INPUT, "Upsample": _AXES_INPUT, "ReduceMean": _AXES_INPUT,
    "ReduceSum": _AXES_INPUT, "ReduceMax": _AXES_INPUT, "ReduceMin": _AXES_INPUT,
    "Resize": frozenset({1, 2, 3}), "Slice": frozenset({1, 2, 3, 4}), "Pad": frozenset({1, 2, 3}),
}



def variant_problem(op: str, a: dict[str, Any], outputs: Sequence[str]) -> str | None:
    """A name like ``"Resize(antialias=1)"`` when supported operator ``op`` (with plain
    attributes ``a`` and output names ``outputs``, "" for an omitted one) is used in a
    variant outside the inference subset; None when it is not."""
    if a.get("broadcast") and op in BINARY:
        return f"{op}(broadcast=1)"
    if op == "MaxPool" and len(outputs) > 1 and outputs[1]:
        return "MaxPool(Indices)"
    if op == "BatchNormalization" and (a.get("training_mode") or a.get("spatial", 1) == 0):
        return "BatchNormalization(training_mode=1)" if a.get("training_mode") else "BatchNormalization(spatial=0)"
    if op == "LayerNormalization" and len([o for o in outputs if o]) > 1:
        return "LayerNormalization(Mean/InvStdDev)"
    if op == "Constant" and not {"value", "value_float", "value_floats", "value_int", "value_ints"} & set(a):
        return "Constant(" + ",".join(sorted(a)) + ")"
    if op == "Cast" and a.get("to") not in DTYPES:
        return f"Cast(to={onnx.TensorProto.DataType.Name(a.get('to', 0))})"
    if op in ("Resize", "Upsample"):
        mode = a.get("mode", "nearest")
        if mode not in ("nearest", "linear", "bilinear", "cubic"):
            return f"{op}(mode={mode})"
        ctm = a.get("coordinate_transformation_mode", "half_pixel")
        if ctm == "tf_crop_and_resize":
            return f"{op}(coordinate_transformation_mode={ctm})"
        if a.get("antialias") and mode != "nearest":
            return f"{op}(antialias=1)"
    if op == "Pad" and a.get("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"Pad(mode={a['mode']})"
    return None
