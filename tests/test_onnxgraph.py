"""camseg.models.onnxgraph: every operator against ONNX Runtime (old and new opset forms), the
dynamic-batch shape arithmetic of a torch.onnx export, leaves and gradients against torch,
constant folding, pruning, thread safety and the errors."""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.models.onnxgraph import (
    SUPPORTED_OPERATORS,
    GraphModule,
    UnsupportedOperatorError,
    convert,
    unsupported_operators,
)
from camseg.models.onnxgraph.ops import DTYPES

REQUIRED = frozenset({
    "Conv", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish",
    "Mul", "Add", "Sub", "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Gemm", "MatMul",
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Pad", "Resize", "Softmax", "Identity",
    "Dropout", "Cast", "Shape", "Gather", "Slice", "Constant",
    # the cheap extras
    "GlobalMaxPool", "ReduceMax", "ReduceSum", "Max", "Min", "Sum", "Mean", "Neg", "Exp", "Log", "Sqrt", "Pow",
    "Abs", "Erf", "Floor", "Ceil", "ConstantOfShape", "Expand", "Where", "Equal", "Range", "LogSoftmax", "Elu",
    "Selu", "PRelu", "Sign", "Split",
})

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
_rng = np.random.default_rng(0)


def f32(*shape: int, low: float | None = None) -> np.ndarray:
    """Standard-normal float32 values (or uniform in [low, low + 2) when ``low`` is given)."""
    if low is not None:
        return (_rng.random(shape) * 2 + low).astype(np.float32)
    return _rng.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def node(op: str, inputs: list[str], outputs: list[str] | None = None, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs or ["y"], **attrs)


@dataclass
class Case:
    id: str
    nodes: list[onnx.NodeProto]
    inputs: dict[str, np.ndarray]
    opset: int = 17
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=lambda: ["y"])
    tol: float = 1e-5


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], outputs: list[str], opset: int,
               inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in inputs.items()],
        [onnx.ValueInfoProto(name=name) for name in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def ort_run(model: onnx.ModelProto, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return list(session.run(outputs, inputs))


def assert_close(got: Tensor, want: np.ndarray, tol: float, what: str = "") -> None:
    ref = torch.from_numpy(np.asarray(want))
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype} != {ref.dtype}"
    assert tuple(got.shape) == tuple(ref.shape), f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    if ref.dtype == torch.bool or not ref.is_floating_point():
        assert torch.equal(got, ref), f"{what}: {got} != {ref}"
        return
    diff = (got.detach().double() - ref.double()).abs().max().item()
    assert diff <= tol, f"{what}: max abs diff {diff}"


def _conv_case(id: str, x: tuple[int, ...], w: tuple[int, ...], bias: bool = True, opset: int = 17,
               **attrs: Any) -> Case:
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    inits = {"w": f32(*w)}
    if bias:
        inits["b"] = f32(w[0])
    return Case(id, [node("Conv", inputs, **attrs)], {"x": f32(*x)}, opset, inits)


def _pool_cases() -> list[Case]:
    cases = []
    configs: list[tuple[str, tuple[int, ...], dict[str, Any]]] = [
        ("k3s2p1", (1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("asym", (1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [0, 1, 1, 0]}),
        ("ceil", (1, 2, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ("ceil-last-window", (1, 2, 5, 4), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1,
                                            "pads": [0, 0, 1, 1]}),
        ("ceil-pads", (1, 2, 6, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                     "pads": [1, 1, 1, 1]}),
        ("big-pads", (1, 2, 6, 6), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [2, 2, 2, 2]}),
        ("same-upper", (1, 2, 7, 6), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ("same-lower", (1, 2, 7, 6), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
        ("valid", (1, 2, 7, 6), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "VALID"}),
        ("1d", (2, 3, 11), {"kernel_shape": [3], "strides": [2], "pads": [1, 0]}),
    ]
    for name, shape, attrs in configs:
        cases.append(Case(f"MaxPool-{name}", [node("MaxPool", ["x"], **attrs)], {"x": f32(*shape)}))
        for include in (0, 1):
            cases.append(Case(f"AveragePool-{name}-incl{include}",
                              [node("AveragePool", ["x"], count_include_pad=include, **attrs)], {"x": f32(*shape)}))
    cases += [
        Case("MaxPool-dilations", [node("MaxPool", ["x"], kernel_shape=[2, 3], dilations=[2, 2], pads=[1, 0, 1, 2])],
             {"x": f32(1, 2, 9, 9)}),
        Case("MaxPool-dilations-ceil", [node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 1],
                                             strides=[2, 2], ceil_mode=1)], {"x": f32(1, 2, 8, 7)}),
        Case("AveragePool-dilations", [node("AveragePool", ["x"], kernel_shape=[2, 2], dilations=[2, 2],
                                            strides=[1, 2], pads=[1, 1, 0, 1], count_include_pad=1)],
             {"x": f32(1, 2, 8, 8)}, opset=19),
        Case("GlobalAveragePool", [node("GlobalAveragePool", ["x"])], {"x": f32(2, 3, 5, 6)}),
        Case("GlobalMaxPool", [node("GlobalMaxPool", ["x"])], {"x": f32(2, 3, 5, 6)}),
    ]
    return cases


def _elementwise_cases() -> list[Case]:
    cases = [Case(op, [node(op, ["x"])], {"x": f32(2, 3, 4)})
             for op in ("Relu", "Sigmoid", "Tanh", "Neg", "Exp", "Abs", "Erf", "Floor", "Ceil", "Sign", "Softplus",
                        "Identity", "HardSwish")]
    cases += [Case(op, [node(op, ["x"])], {"x": f32(2, 3, 4, low=0.1)}) for op in ("Log", "Sqrt", "Reciprocal")]
    cases += [
        Case("Not", [node("Not", ["x"])], {"x": f32(2, 5) > 0}),
        Case("LeakyRelu", [node("LeakyRelu", ["x"], alpha=0.2)], {"x": f32(2, 3, 4)}),
        Case("Elu", [node("Elu", ["x"], alpha=0.7)], {"x": f32(2, 3, 4)}),
        Case("Selu", [node("Selu", ["x"])], {"x": f32(2, 3, 4)}),
        Case("Selu-attrs", [node("Selu", ["x"], alpha=1.5, gamma=1.1)], {"x": f32(2, 3, 4)}),
        Case("HardSigmoid", [node("HardSigmoid", ["x"])], {"x": f32(2, 3, 4) * 4}),
        Case("HardSigmoid-attrs", [node("HardSigmoid", ["x"], alpha=0.3, beta=0.4)], {"x": f32(2, 3, 4) * 4}),
        Case("HardSwish-wide", [node("HardSwish", ["x"])], {"x": f32(2, 3, 4) * 5}),
        Case("PRelu", [node("PRelu", ["x", "s"])], {"x": f32(2, 3, 4, 4)}, inits={"s": f32(3, 1, 1)}),
        Case("Gelu", [node("Gelu", ["x"])], {"x": f32(2, 3, 4)}, opset=20),
        Case("Gelu-tanh", [node("Gelu", ["x"], approximate="tanh")], {"x": f32(2, 3, 4)}, opset=20),
        Case("Clip-6-attrs", [node("Clip", ["x"], min=-0.5, max=0.5)], {"x": f32(2, 3, 4)}, opset=6),
        Case("Clip-10-min-only", [node("Clip", ["x"], min=-0.5)], {"x": f32(2, 3, 4)}, opset=10),
        Case("Clip-13-inputs", [node("Clip", ["x", "lo", "hi"])], {"x": f32(2, 3, 4)}, 13,
             {"lo": np.array(-0.3, np.float32), "hi": np.array(0.7, np.float32)}),
        Case("Clip-13-max-only", [node("Clip", ["x", "", "hi"])], {"x": f32(2, 3, 4)}, 13,
             {"hi": np.array(0.2, np.float32)}),
        Case("Clip-13-none", [node("Clip", ["x"])], {"x": f32(2, 3, 4)}, 13),
        Case("Clip-relu6", [node("Clip", ["x", "lo", "hi"])], {"x": f32(2, 3, 4) * 8}, 11,
             {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}),
        Case("Clip-int", [node("Clip", ["x", "lo", "hi"])], {"x": i64(-5, 0, 3, 9)}, 13,
             {"lo": np.array(-1, np.int64), "hi": np.array(4, np.int64)}),
    ]
    a, b = f32(2, 3, 4), f32(3, 1)
    for op in ("Add", "Sub", "Mul", "Div"):
        cases.append(Case(f"{op}-broadcast", [node(op, ["a", "b"])], {"a": a, "b": b}))
    ia, ib = i64(-7, 7, -8, 9, 0, -1), i64(2, -2, 3, 4, 5, 3)
    cases += [
        Case("Div-int-truncates", [node("Div", ["a", "b"])], {"a": ia, "b": ib}),
        Case("Add-int", [node("Add", ["a", "b"])], {"a": ia, "b": ib}),
        Case("Mul-int32", [node("Mul", ["a", "b"])], {"a": ia.astype(np.int32), "b": ib.astype(np.int32)}),
        Case("Pow", [node("Pow", ["a", "b"])], {"a": f32(2, 3, low=0.2), "b": f32(3)}),
        Case("Pow-int-exponent", [node("Pow", ["a", "b"])], {"a": f32(2, 3), "b": i64(2)}),
        Case("Equal", [node("Equal", ["a", "b"])], {"a": i64(1, 2, 3, 4), "b": i64(1, 0, 3, 5)}),
        Case("Equal-float", [node("Equal", ["a", "b"])], {"a": np.array([1.0, 2.5], np.float32),
                                                           "b": np.array([1.0, 2.0], np.float32)}),
        Case("Not-bool", [node("Not", ["a"])], {"a": np.array([True, False])}),
        Case("And", [node("And", ["a", "b"])], {"a": f32(6) > 0, "b": f32(6) > 0}),
        Case("Or", [node("Or", ["a", "b"])], {"a": f32(6) > 0, "b": f32(6) > 0}),
    ]
    for op in ("Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
        cases.append(Case(op, [node(op, ["a", "b"])], {"a": np.array([1, 2, 3], np.float32),
                                                       "b": np.array([2, 2, 2], np.float32)}))
    for op in ("Max", "Min", "Sum", "Mean"):
        cases.append(Case(f"{op}-variadic", [node(op, ["a", "b", "c"])], {"a": f32(2, 3, 4), "b": f32(3, 1),
                                                                          "c": f32(4)}))
        cases.append(Case(f"{op}-single", [node(op, ["a"])], {"a": f32(2, 3)}))
    return cases


def _conv_cases() -> list[Case]:
    return [
        _conv_case("Conv-basic", (1, 4, 7, 8), (6, 4, 3, 3), pads=[1, 1, 1, 1]),
        _conv_case("Conv-group-dilation-stride-asym", (2, 4, 9, 10), (6, 2, 3, 2), group=2, dilations=[2, 1],
                   strides=[2, 3], pads=[0, 1, 2, 1]),
        _conv_case("Conv-depthwise", (1, 4, 6, 6), (4, 1, 3, 3), group=4, pads=[1, 1, 1, 1]),
        _conv_case("Conv-same-upper", (1, 3, 7, 8), (5, 3, 2, 3), auto_pad="SAME_UPPER", strides=[2, 2]),
        _conv_case("Conv-same-lower", (1, 3, 7, 8), (5, 3, 2, 3), auto_pad="SAME_LOWER", strides=[2, 2]),
        _conv_case("Conv-valid", (1, 3, 7, 8), (5, 3, 3, 3), auto_pad="VALID", strides=[2, 1]),
        _conv_case("Conv-no-bias", (1, 3, 5, 5), (2, 3, 1, 1), bias=False),
        _conv_case("Conv-1d", (2, 3, 10), (4, 3, 3), strides=[2], pads=[1, 2]),
        _conv_case("Conv-1d-dilated", (2, 3, 12), (4, 3, 3), dilations=[3], kernel_shape=[3]),
        _conv_case("Conv-opset11", (1, 2, 5, 5), (3, 2, 3, 3), opset=11, pads=[1, 0, 0, 1]),
        Case("Conv-dynamic-weight", [node("Conv", ["x", "w"], pads=[1, 1, 1, 1])],
             {"x": f32(1, 2, 5, 5), "w": f32(3, 2, 3, 3)}),
        Case("BatchNormalization", [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
             {"x": f32(2, 3, 4, 5)}, 15,
             {"s": f32(3), "b": f32(3), "m": f32(3), "v": f32(3, low=0.5)}),
        Case("BatchNormalization-2d-opset9", [node("BatchNormalization", ["x", "s", "b", "m", "v"])],
             {"x": f32(4, 3)}, 9, {"s": f32(3), "b": f32(3), "m": f32(3), "v": f32(3, low=0.5)}),
        Case("InstanceNormalization", [node("InstanceNormalization", ["x", "s", "b"], epsilon=1e-4)],
             {"x": f32(2, 3, 4, 5)}, 17, {"s": f32(3), "b": f32(3)}),
        Case("LayerNormalization", [node("LayerNormalization", ["x", "s", "b"])], {"x": f32(2, 3, 8)}, 17,
             {"s": f32(8), "b": f32(8)}),
        Case("LayerNormalization-axis1-nobias", [node("LayerNormalization", ["x", "s"], axis=1, epsilon=1e-3)],
             {"x": f32(2, 3, 4)}, 17, {"s": f32(3, 4)}),
        Case("LRN", [node("LRN", ["x"], size=3, alpha=0.01, beta=0.6, bias=1.5)], {"x": f32(2, 5, 3, 3)}),
    ]


def _linear_cases() -> list[Case]:
    return [
        Case("Gemm", [node("Gemm", ["a", "b", "c"])], {"a": f32(3, 4)}, inits={"b": f32(4, 5), "c": f32(5)}),
        Case("Gemm-attrs", [node("Gemm", ["a", "b", "c"], alpha=0.5, beta=2.0, transA=1, transB=1)],
             {"a": f32(4, 3)}, inits={"b": f32(5, 4), "c": f32(3, 1)}),
        Case("Gemm-no-c", [node("Gemm", ["a", "b"], transB=1)], {"a": f32(3, 4), "b": f32(2, 4)}),
        Case("Gemm-opset9-scalar-c", [node("Gemm", ["a", "b", "c"], beta=0.5)], {"a": f32(3, 4)}, 9,
             {"b": f32(4, 2), "c": f32(1)}),
        Case("MatMul-batched", [node("MatMul", ["a", "b"])], {"a": f32(2, 3, 4), "b": f32(4, 5)}),
        Case("MatMul-broadcast", [node("MatMul", ["a", "b"])], {"a": f32(2, 1, 3, 4), "b": f32(3, 4, 2)}),
        Case("MatMul-1d", [node("MatMul", ["a", "b"])], {"a": f32(4), "b": f32(4, 5)}),
    ]


def _reduce_cases() -> list[Case]:
    x = f32(2, 3, 4, 5)
    cases = [
        Case("ReduceMean-13-attr", [node("ReduceMean", ["x"], axes=[1, -1], keepdims=0)], {"x": x}, 13),
        Case("ReduceMean-13-all", [node("ReduceMean", ["x"])], {"x": x}, 13),
        Case("ReduceMean-18-input", [node("ReduceMean", ["x", "a"])], {"x": x}, 18, {"a": i64(2, 3)}),
        Case("ReduceMean-18-all", [node("ReduceMean", ["x"], keepdims=0)], {"x": x}, 18),
        Case("ReduceMean-18-noop", [node("ReduceMean", ["x"], noop_with_empty_axes=1)], {"x": x}, 18),
        Case("ReduceMax-13", [node("ReduceMax", ["x"], axes=[2])], {"x": x}, 13),
        Case("ReduceMax-18", [node("ReduceMax", ["x", "a"], keepdims=0)], {"x": x}, 18, {"a": i64(-1)}),
        Case("ReduceMin-13", [node("ReduceMin", ["x"], axes=[0, 2])], {"x": x}, 13),
        Case("ReduceMin-18", [node("ReduceMin", ["x"])], {"x": x}, 18),
        Case("ReduceSum-11-attr", [node("ReduceSum", ["x"], axes=[1])], {"x": x}, 11),
        Case("ReduceSum-13-input", [node("ReduceSum", ["x", "a"], keepdims=0)], {"x": x}, 13, {"a": i64(0, 3)}),
        Case("ReduceSum-13-all", [node("ReduceSum", ["x"])], {"x": x}, 13, tol=1e-4),
        Case("ReduceSum-int", [node("ReduceSum", ["x", "a"])], {"x": i64(1, 2, 3).reshape(1, 3)}, 13,
             {"a": i64(1)}),
        Case("ArgMax", [node("ArgMax", ["x"], axis=1, keepdims=0)], {"x": x}),
        Case("ArgMax-last", [node("ArgMax", ["x"], axis=-1, select_last_index=1)],
             {"x": np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)}),
    ]
    for op in ("Softmax", "LogSoftmax"):
        cases += [
            Case(f"{op}-11-default", [node(op, ["x"])], {"x": f32(2, 3, 4)}, 11),
            Case(f"{op}-11-axis2", [node(op, ["x"], axis=2)], {"x": f32(2, 3, 4)}, 11),
            Case(f"{op}-11-axis0", [node(op, ["x"], axis=0)], {"x": f32(2, 3)}, 11),
            Case(f"{op}-13-default", [node(op, ["x"])], {"x": f32(2, 3, 4)}, 13),
            Case(f"{op}-13-axis1", [node(op, ["x"], axis=1)], {"x": f32(2, 3, 4)}, 13),
        ]
    return cases


def _shape_cases() -> list[Case]:
    x = f32(2, 3, 4, 5)
    cases = [
        Case("Flatten-axis1", [node("Flatten", ["x"])], {"x": x}),
        Case("Flatten-axis0", [node("Flatten", ["x"], axis=0)], {"x": x}),
        Case("Flatten-axis-1", [node("Flatten", ["x"], axis=-1)], {"x": x}),
        Case("Flatten-axis3", [node("Flatten", ["x"], axis=3)], {"x": x}),
        Case("Reshape-zero-minus-one", [node("Reshape", ["x", "s"])], {"x": x}, inits={"s": i64(0, -1, 5)}),
        Case("Reshape-allowzero", [node("Reshape", ["x", "s"], allowzero=1)], {"x": x}, 14,
             {"s": i64(6, 20)}),
        Case("Reshape-runtime-shape", [node("Reshape", ["x", "s"])], {"x": x, "s": i64(4, -1)}),
        Case("Transpose-perm", [node("Transpose", ["x"], perm=[0, 2, 3, 1])], {"x": x}),
        Case("Transpose-default", [node("Transpose", ["x"])], {"x": x}),
        Case("Squeeze-11-attr", [node("Squeeze", ["x"], axes=[1, -1])], {"x": f32(2, 1, 3, 1)}, 11),
        Case("Squeeze-13-input", [node("Squeeze", ["x", "a"])], {"x": f32(2, 1, 3, 1)}, 13, {"a": i64(-1)}),
        Case("Squeeze-13-all", [node("Squeeze", ["x"])], {"x": f32(1, 2, 1, 3, 1)}, 13),
        Case("Unsqueeze-11-attr", [node("Unsqueeze", ["x"], axes=[0, 3])], {"x": f32(2, 3)}, 11),
        Case("Unsqueeze-13-input", [node("Unsqueeze", ["x", "a"])], {"x": f32(2, 3)}, 13, {"a": i64(-1, 1)}),
        Case("Concat", [node("Concat", ["a", "b"], axis=1)], {"a": f32(2, 3, 2), "b": f32(2, 1, 2)}),
        Case("Concat-int64", [node("Concat", ["a", "b"], axis=-1)], {"a": i64(1, 2)}, inits={"b": i64(-1)}),
        Case("Shape", [node("Shape", ["x"])], {"x": x}),
        Case("Shape-start-end", [node("Shape", ["x"], start=1, end=-1)], {"x": x}, 15),
        Case("Shape-start-neg", [node("Shape", ["x"], start=-2)], {"x": x}, 15),
        Case("Size", [node("Size", ["x"])], {"x": x}),
        Case("Gather-axis0-negative", [node("Gather", ["x", "i"])], {"x": x}, inits={"i": i64(-1, 0, 1)}),
        Case("Gather-axis1-2d", [node("Gather", ["x", "i"], axis=1)], {"x": x},
             inits={"i": np.array([[0, 2], [-1, 1]], np.int64)}),
        Case("Gather-scalar", [node("Gather", ["x", "i"], axis=-2)], {"x": x}, inits={"i": np.array(2, np.int64)}),
        Case("Gather-int32-index", [node("Gather", ["x", "i"], axis=3)], {"x": x},
             inits={"i": np.array([4, -5], np.int32)}),
        Case("Gather-shape", [node("Shape", ["x"], ["s"]), node("Gather", ["s", "i"])], {"x": x},
             inits={"i": np.array(0, np.int64)}),
        Case("Slice-9-attrs", [node("Slice", ["x"], starts=[1, -3], ends=[INT64_MAX, 4], axes=[1, 3])], {"x": x}, 9),
        Case("Slice-9-no-axes", [node("Slice", ["x"], starts=[0, 1], ends=[1, 1000])], {"x": x}, 9),
        Case("Slice-10-no-steps", [node("Slice", ["x", "s", "e"])], {"x": x}, 10,
             {"s": i64(0, -2), "e": i64(-1, INT64_MAX)}),
        Case("Slice-13-steps", [node("Slice", ["x", "s", "e", "a", "st"])], {"x": x}, 13,
             {"s": i64(-4, 1), "e": i64(INT64_MAX, 5), "a": i64(-1, 2), "st": i64(2, 2)}),
        Case("Slice-13-reverse", [node("Slice", ["x", "s", "e", "a", "st"])], {"x": x}, 13,
             {"s": i64(INT64_MAX, -1), "e": i64(INT64_MIN, 0), "a": i64(1, 3), "st": i64(-1, -2)}),
        Case("Slice-13-reverse-partial", [node("Slice", ["x", "s", "e", "a", "st"])], {"x": x}, 13,
             {"s": i64(3), "e": i64(0), "a": i64(2), "st": i64(-2)}),
        Case("Slice-13-empty", [node("Slice", ["x", "s", "e", "a"])], {"x": x}, 13,
             {"s": i64(3), "e": i64(1), "a": i64(2)}),
        Case("Slice-runtime", [node("Slice", ["x", "s", "e"])], {"x": x, "s": i64(1), "e": i64(-1)}, 13),
        Case("Expand", [node("Expand", ["x", "s"])], {"x": f32(3, 1)}, inits={"s": i64(2, 1, 4)}),
        Case("Expand-runtime-shape", [node("Expand", ["x", "s"])], {"x": f32(1, 3), "s": i64(2, 1)}),
        Case("Tile", [node("Tile", ["x", "r"])], {"x": f32(2, 3)}, inits={"r": i64(2, 3)}),
        Case("Split-13-input", [node("Split", ["x", "s"], ["y", "z"], axis=1)], {"x": f32(2, 5, 3)}, 13,
             {"s": i64(2, 3)}, ["y", "z"]),
        Case("Split-11-attr", [node("Split", ["x"], ["y", "z"], axis=-1, split=[1, 2])], {"x": f32(2, 5, 3)}, 11,
             outputs=["y", "z"]),
        Case("Split-13-equal", [node("Split", ["x"], ["y", "z", "w"])], {"x": f32(6, 2)}, 13,
             outputs=["y", "z", "w"]),
        Case("Split-18-num-outputs", [node("Split", ["x"], ["y", "z", "w"], axis=1, num_outputs=3)],
             {"x": f32(2, 7)}, 18, outputs=["y", "z", "w"]),
    ]
    return cases


def _pad_cases() -> list[Case]:
    x = f32(1, 2, 4, 5)
    cases = [
        Case("Pad-2-attrs", [node("Pad", ["x"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=1.5)], {"x": x}, 10),
        Case("Pad-2-reflect", [node("Pad", ["x"], mode="reflect", pads=[0, 0, 2, 1, 0, 0, 1, 3])], {"x": x}, 10),
        Case("Pad-11-constant", [node("Pad", ["x", "p", "v"])], {"x": x}, 11,
             {"p": i64(0, 1, 1, 0, 0, 0, 2, 3), "v": np.array(-2.0, np.float32)}),
        Case("Pad-11-constant-default", [node("Pad", ["x", "p"])], {"x": x}, 11, {"p": i64(0, 0, 1, 1, 0, 0, 1, 1)}),
        Case("Pad-11-negative", [node("Pad", ["x", "p"])], {"x": x}, 11, {"p": i64(0, 0, -1, 2, 0, 0, 1, -2)}),
        Case("Pad-11-int", [node("Pad", ["x", "p", "v"])], {"x": i64(1, 2, 3)}, 11,
             {"p": i64(1, 2), "v": np.array(7, np.int64)}),
        Case("Pad-18-axes", [node("Pad", ["x", "p", "", "a"], mode="edge")], {"x": x}, 18,
             {"p": i64(2, 1, 0, 3), "a": i64(-1, 2)}),
        Case("Pad-19-wrap", [node("Pad", ["x", "p"], mode="wrap")], {"x": x}, 19,
             {"p": i64(0, 0, 2, 3, 0, 0, 1, 4)}),
    ]
    for mode in ("reflect", "edge"):
        cases.append(Case(f"Pad-11-{mode}", [node("Pad", ["x", "p"], mode=mode)], {"x": x}, 11,
                          {"p": i64(0, 0, 3, 1, 0, 0, 2, 4)}))
        cases.append(Case(f"Pad-13-{mode}-runtime-pads", [node("Pad", ["x", "p"], mode=mode)],
                          {"x": x, "p": i64(0, 0, 1, 2, 0, 0, 3, 1)}, 13))
    return cases


def _resize_cases() -> list[Case]:
    x = f32(1, 2, 5, 6)
    empty = np.zeros(0, np.float32)
    cases = [
        Case("Resize-10-nearest-up", [node("Resize", ["x", "s"])], {"x": x}, 10,
             {"s": np.array([1, 1, 2, 3], np.float32)}),
        Case("Resize-10-nearest-mixed", [node("Resize", ["x", "s"])], {"x": x}, 10,
             {"s": np.array([1, 1, 0.6, 1.7], np.float32)}),
        Case("Resize-10-linear", [node("Resize", ["x", "s"], mode="linear")], {"x": x}, 10,
             {"s": np.array([1, 1, 1.5, 0.5], np.float32)}),
        Case("Upsample-9-nearest", [node("Upsample", ["x", "s"])], {"x": x}, 9,
             {"s": np.array([1, 1, 2, 2.5], np.float32)}),
        Case("Upsample-9-linear", [node("Upsample", ["x", "s"], mode="linear")], {"x": x}, 9,
             {"s": np.array([1, 1, 2, 1.5], np.float32)}),
        Case("Upsample-7-attr", [node("Upsample", ["x"], scales=[1.0, 1.0, 3.0, 2.0])], {"x": x}, 7),
    ]
    nearest_modes = [("half_pixel", "round_prefer_floor"), ("asymmetric", "floor"), ("align_corners", "ceil"),
                     ("pytorch_half_pixel", "round_prefer_ceil"), ("tf_half_pixel_for_nn", "round_prefer_floor"),
                     ("half_pixel", "round_prefer_ceil"), ("asymmetric", "round_prefer_floor")]
    for ctm, nmode in nearest_modes:
        for scales in ([1, 1, 2, 3], [1, 1, 0.6, 1.5], [1, 1, 0.5, 0.5]):
            cases.append(Case(f"Resize-11-nearest-{ctm}-{nmode}-{scales[2]}x{scales[3]}",
                              [node("Resize", ["x", "r", "s"], coordinate_transformation_mode=ctm,
                                    nearest_mode=nmode)], {"x": x}, 11,
                              {"r": empty, "s": np.array(scales, np.float32)}))
    ctms = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
    for ctm in ctms:
        for scales in ([1, 1, 2, 3], [1, 1, 0.6, 1.5], [1, 1, 0.5, 0.25]):
            cases.append(Case(f"Resize-13-linear-{ctm}-{scales[2]}x{scales[3]}",
                              [node("Resize", ["x", "", "s"], mode="linear", coordinate_transformation_mode=ctm)],
                              {"x": x}, 13, {"s": np.array(scales, np.float32)}))
        cases.append(Case(f"Resize-13-linear-{ctm}-sizes",
                          [node("Resize", ["x", "", "", "z"], mode="linear", coordinate_transformation_mode=ctm)],
                          {"x": x}, 13, {"z": i64(1, 2, 7, 1)}))
        cases.append(Case(f"Resize-13-cubic-{ctm}",
                          [node("Resize", ["x", "", "s"], mode="cubic", coordinate_transformation_mode=ctm)],
                          {"x": x}, 13, {"s": np.array([1, 1, 1.8, 0.7], np.float32)}))
    cases += [
        Case("Resize-13-nearest-sizes", [node("Resize", ["x", "", "", "z"])], {"x": x}, 13, {"z": i64(1, 2, 8, 4)}),
        Case("Resize-13-cubic-exclude-outside", [node("Resize", ["x", "", "s"], mode="cubic", exclude_outside=1,
                                                      cubic_coeff_a=-0.5)], {"x": x}, 13,
             {"s": np.array([1, 1, 2.5, 1.5], np.float32)}),
        Case("Resize-13-runtime-sizes", [node("Resize", ["x", "", "", "z"], mode="linear")],
             {"x": x, "z": i64(1, 2, 3, 9)}, 13),
        Case("Resize-18-axes-sizes", [node("Resize", ["x", "", "", "z"], mode="linear", axes=[2, 3])], {"x": x}, 18,
             {"z": i64(9, 4)}),
        Case("Resize-18-axes-scales", [node("Resize", ["x", "", "s"], axes=[-1])], {"x": x}, 18,
             {"s": np.array([1.7], np.float32)}),
        Case("Resize-18-not-larger", [node("Resize", ["x", "", "", "z"], mode="linear", axes=[2, 3],
                                           keep_aspect_ratio_policy="not_larger")], {"x": x}, 18, {"z": i64(9, 9)}),
        Case("Resize-18-not-smaller", [node("Resize", ["x", "", "", "z"], axes=[2, 3],
                                            keep_aspect_ratio_policy="not_smaller")], {"x": x}, 18, {"z": i64(9, 9)}),
        Case("Resize-19-half-pixel-symmetric", [node("Resize", ["x", "", "s"], mode="linear",
                                                     coordinate_transformation_mode="half_pixel_symmetric")],
             {"x": x}, 19, {"s": np.array([1, 1, 1.7, 0.6], np.float32)}),
    ]
    return cases


def _misc_cases() -> list[Case]:
    x = f32(2, 3)
    return [
        Case("Constant-value", [node("Constant", [], ["c"], value=numpy_helper.from_array(f32(2, 3))),
                                node("Add", ["x", "c"])], {"x": x}),
        Case("Constant-value-float", [node("Constant", [], ["c"], value_float=2.5), node("Mul", ["x", "c"])],
             {"x": x}),
        Case("Constant-value-floats", [node("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0]),
                                       node("Sub", ["x", "c"])], {"x": x}),
        Case("Constant-value-int", [node("Constant", [], ["c"], value_int=1), node("Gather", ["x", "c"])],
             {"x": x}),
        Case("Constant-value-ints", [node("Constant", [], ["c"], value_ints=[3, 2]), node("Reshape", ["x", "c"])],
             {"x": x}),
        Case("Constant-output", [node("Constant", [], ["y"], value_ints=[3, 2]), node("Relu", ["x"], ["z"])],
             {"x": x}, outputs=["y", "z"]),
        Case("ConstantOfShape", [node("ConstantOfShape", ["s"])], {"s": i64(2, 3)}),
        Case("ConstantOfShape-value", [node("ConstantOfShape", ["s"],
                                            value=numpy_helper.from_array(np.array([7], np.int64)))],
             {"s": i64(3, 1, 2)}),
        Case("Where", [node("Where", ["c", "a", "b"])], {"c": f32(2, 3) > 0, "a": f32(2, 3), "b": f32(3)}),
        Case("Range-int", [node("Range", ["s", "l", "d"])], {"s": np.array(2, np.int64),
                                                            "l": np.array(11, np.int64),
                                                            "d": np.array(3, np.int64)}),
        Case("Range-float-negative", [node("Range", ["s", "l", "d"])], {"s": np.array(1.0, np.float32),
                                                                       "l": np.array(-2.0, np.float32),
                                                                       "d": np.array(-0.5, np.float32)}),
        Case("Range-empty", [node("Range", ["s", "l", "d"])], {"s": np.array(5, np.int64),
                                                              "l": np.array(2, np.int64),
                                                              "d": np.array(1, np.int64)}),
        Case("Dropout", [node("Dropout", ["x"])], {"x": x}, 13),
        Case("Dropout-mask", [node("Dropout", ["x"], ["y", "m"])], {"x": x}, 13, outputs=["y", "m"]),
        Case("Dropout-7-ratio", [node("Dropout", ["x"], ratio=0.3)], {"x": x}, 7),
        Case("Cast-float-int64", [node("Cast", ["x"], to=TensorProto.INT64)], {"x": x * 5}),
        Case("Cast-float-int32", [node("Cast", ["x"], to=TensorProto.INT32)], {"x": x * 5}),
        Case("Cast-float-bool", [node("Cast", ["x"], to=TensorProto.BOOL)],
             {"x": np.array([0.0, 1.5, -2.0, 0.0], np.float32)}),
        Case("Cast-int-float", [node("Cast", ["x"], to=TensorProto.FLOAT)], {"x": i64(-3, 0, 5)}),
        Case("Cast-bool-float", [node("Cast", ["x"], to=TensorProto.FLOAT)], {"x": np.array([True, False])}),
        Case("Cast-float-double", [node("Cast", ["x"], to=TensorProto.DOUBLE)], {"x": x}),
        Case("Cast-float-float16", [node("Cast", ["x"], to=TensorProto.FLOAT16)], {"x": x}, tol=1e-3),
        Case("Cast-float-uint8", [node("Cast", ["x"], to=TensorProto.UINT8)], {"x": np.abs(x) * 50}),
        Case("CastLike", [node("CastLike", ["x", "t"])], {"x": x * 5, "t": i64(0)}, 15),
    ]


CASES: list[Case] = [
    *_elementwise_cases(), *_conv_cases(), *_pool_cases(), *_linear_cases(), *_reduce_cases(), *_shape_cases(),
    *_pad_cases(), *_resize_cases(), *_misc_cases(),
]


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_operator_matches_onnxruntime(case: Case) -> None:
    model = make_model(case.nodes, case.inputs, case.outputs, case.opset, case.inits)
    want = ort_run(model, case.inputs, case.outputs)
    gm = GraphModule(model)
    assert gm.input_names == list(case.inputs)
    feeds = {k: torch.from_numpy(v.copy()) for k, v in case.inputs.items()}
    for t in feeds.values():
        if t.is_floating_point():
            t.requires_grad_(True)
    with torch.enable_grad():
        got = gm.run(feeds)
    assert list(got) == case.outputs
    for name, ref in zip(case.outputs, want, strict=True):
        assert_close(got[name], ref, case.tol, f"{case.id}:{name}")
    # every operator is differentiable where it should be: a gradient flows without error
    diff_outs = [t for t in got.values() if t.requires_grad]
    diff_ins = [t for t in feeds.values() if t.requires_grad]
    if diff_outs:
        score = sum((t.double().sum() for t in diff_outs), torch.zeros((), dtype=torch.float64))
        grads = torch.autograd.grad(score, diff_ins, allow_unused=True)
        assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)


def test_every_supported_operator_is_tested() -> None:
    covered = {n.op_type for case in CASES for n in case.nodes}
    assert covered >= SUPPORTED_OPERATORS, sorted(SUPPORTED_OPERATORS - covered)
    assert REQUIRED <= SUPPORTED_OPERATORS, sorted(REQUIRED - SUPPORTED_OPERATORS)


# --------------------------------------------------------------------------- a torch.onnx export


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.w = nn.Parameter(torch.randn(4 * 6 * 6, 5) * 0.2)
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC input
        x = self.relu(self.bn(self.conv(x)))
        x = x.reshape(x.shape[0], -1)
        return torch.softmax(x @ self.w + self.b, dim=1)


@pytest.fixture(scope="module")
def exported_net() -> tuple[_Net, onnx.ModelProto]:
    torch.manual_seed(0)
    net = _Net()
    assert net.bn.running_mean is not None and net.bn.running_var is not None
    with torch.no_grad():
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.2, 0.2)
        net.bn.running_mean.uniform_(-0.1, 0.1)
        net.bn.running_var.uniform_(0.5, 1.5)
    net.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 6, 6, 3),), buf,  # type: ignore[arg-type]
                          input_names=["input"], output_names=["probs"],
                          dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}}, opset_version=17,
                          dynamo=False, do_constant_folding=False)
    return net, onnx.load_from_string(buf.getvalue())


def _first(model: onnx.ModelProto, op: str) -> str:
    return next(n.output[0] for n in model.graph.node if n.op_type == op)


def test_exported_cnn_dynamic_batch_matches_onnxruntime(exported_net: tuple[_Net, onnx.ModelProto]) -> None:
    net, model = exported_net
    ops = {n.op_type for n in model.graph.node}
    assert {"Transpose", "Conv", "BatchNormalization", "Relu", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape",
            "MatMul", "Add", "Softmax"} <= ops
    gm = convert(model)
    assert gm.input_names == ["input"] and gm.output_names == ["probs"]
    assert {n.op_type for n in gm._nodes} >= {"Shape", "Gather", "Reshape"}  # the shape arithmetic runs per call
    for batch in (3, 5):
        x = np.random.default_rng(batch).random((batch, 6, 6, 3), dtype=np.float32)
        (want,) = ort_run(model, {"input": x}, ["probs"])
        got = gm(torch.from_numpy(x))
        assert isinstance(got, Tensor)
        assert_close(got, want, 1e-5, f"batch {batch}")
        with torch.no_grad():
            assert_close(net(torch.from_numpy(x)), want, 1e-5, "torch")


def test_leaf_gradient_equals_torch_hook(exported_net: tuple[_Net, onnx.ModelProto]) -> None:
    net, model = exported_net
    gm = convert(model)
    relu, conv = _first(model, "Relu"), _first(model, "Conv")
    assert gm.producer(relu) == "Relu" and gm.node_inputs(relu) == [_first(model, "BatchNormalization")]
    assert gm.producer("input") is None and gm.node_inputs("input") == []
    x = torch.rand(3, 6, 6, 3, requires_grad=True)  # the leaf cuts the graph even for an input requiring grad

    seen: dict[str, Tensor] = {}
    handle = net.relu.register_forward_hook(lambda m, i, o: seen.__setitem__("act", o))
    try:
        with torch.enable_grad():
            probs = net(x)
            (want,) = torch.autograd.grad(probs[:, 1].sum(), [seen["act"]])
    finally:
        handle.remove()

    with torch.enable_grad():
        res = gm.run({"input": x}, leaves=[relu], capture=[conv])
        leaf = res[relu]
        assert leaf.is_leaf and leaf.requires_grad
        assert res[conv].grad_fn is None and not res[conv].requires_grad  # upstream recorded nothing
        (got,) = torch.autograd.grad(res["probs"][:, 1].sum(), [leaf])
    assert list(res) == ["probs", conv, relu]
    assert (got - want).abs().max().item() <= 1e-5
    assert_close(res["probs"].detach(), probs.detach().numpy(), 1e-5)


def test_input_gradient_equals_torch(exported_net: tuple[_Net, onnx.ModelProto]) -> None:
    net, model = exported_net
    gm = convert(model)
    x = torch.rand(2, 6, 6, 3, requires_grad=True)
    with torch.enable_grad():
        (want,) = torch.autograd.grad(net(x)[:, 3].sum(), [x])
        out = gm(x)
        assert isinstance(out, Tensor)
        (got,) = torch.autograd.grad(out[:, 3].sum(), [x])
    assert (got - want).abs().max().item() <= 1e-5
    assert not any(b.requires_grad for b in gm.buffers())


def test_run_prunes_to_the_requested_tensors(exported_net: tuple[_Net, onnx.ModelProto]) -> None:
    _, model = exported_net
    gm = convert(model)
    conv = _first(model, "Conv")
    plan = gm._plan((conv,), frozenset())
    assert [step[0].op_type for step in plan.steps] == ["Transpose", "Conv"]
    res = gm.run({"input": torch.rand(2, 6, 6, 3)}, outputs=[conv])
    assert list(res) == [conv] and tuple(res[conv].shape) == (2, 4, 6, 6)


def test_concurrent_runs_agree(exported_net: tuple[_Net, onnx.ModelProto]) -> None:
    _, model = exported_net
    gm = convert(model)
    relu = _first(model, "Relu")
    xs = [torch.rand(b, 6, 6, 3) for b in (1, 2, 3, 4, 5, 6)]
    with torch.no_grad():
        want = [gm(x) for x in xs]
    got: dict[int, Tensor] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                with torch.enable_grad():
                    res = gm.run({"input": xs[i]}, leaves=[relu] if i % 2 else ())
                got[i] = res["probs"].detach()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, w in enumerate(want):
        assert isinstance(w, Tensor)
        assert torch.equal(got[i], w)


def test_module_to_double_moves_constants(exported_net: tuple[_Net, onnx.ModelProto]) -> None:
    net, model = exported_net
    gm = convert(model).double()
    x = torch.rand(2, 6, 6, 3, dtype=torch.float64)
    out = gm(x)
    assert isinstance(out, Tensor) and out.dtype == torch.float64
    assert {b.dtype for b in gm.buffers()} == {torch.float64, torch.int64}  # int64 shape constants stay int64
    with torch.no_grad():
        assert (out - net.double()(x)).abs().max().item() <= 1e-10
    net.float()


# --------------------------------------------------------------------------- folding, errors


def test_constant_subgraphs_are_folded() -> None:
    nodes = [
        node("Constant", [], ["c1"], value_ints=[-1]),
        node("Constant", [], ["c2"], value=numpy_helper.from_array(i64(4))),
        node("Concat", ["c1", "c2"], ["shape"], axis=0),
        node("Identity", ["w"], ["w2"]),
        node("Reshape", ["x", "shape"], ["r"]),
        node("Mul", ["r", "w2"]),
    ]
    inputs = {"x": f32(2, 3, 4)}
    model = make_model(nodes, inputs, ["y"], 17, {"w": f32(4)})
    gm = GraphModule(model)
    assert [n.op_type for n in gm._nodes] == ["Reshape", "Mul"]
    assert sorted(n.op_type for n in gm._folded) == ["Concat", "Constant", "Constant", "Identity"]
    assert [s[0].op_type for s in gm._plan(("y",), frozenset()).steps] == ["Reshape", "Mul"]
    assert set(gm._meta) == {"shape"}  # the folded shape is read as numbers: a CPU tensor, not a buffer
    assert "w2" in gm._const_buffer
    assert gm.producer("shape") == "Concat" and gm.node_inputs("shape") == ["c1", "c2"]
    assert_close(gm.run({"x": torch.from_numpy(inputs["x"])}, capture=["shape"])["shape"], i64(-1, 4), 0)
    (want,) = ort_run(model, inputs, ["y"])
    out = gm(torch.from_numpy(inputs["x"]))
    assert isinstance(out, Tensor)
    assert_close(out, want, 1e-6)


def test_unsupported_operators_are_refused_up_front() -> None:
    nodes = [
        node("Einsum", ["x", "x"], ["e"], equation="ij,ij->ij"),
        node("Foo", ["e"], ["f"], domain="com.example"),
        node("Relu", ["f"]),
        node("Resize", ["x", "", "s"], ["r"], coordinate_transformation_mode="tf_crop_and_resize"),
    ]
    model = make_model(nodes, {"x": f32(2, 2)}, ["y", "r"], 17, {"s": np.array([1, 2], np.float32)})
    expected = ["Einsum", "Resize(coordinate_transformation_mode=tf_crop_and_resize)", "com.example:Foo"]
    assert unsupported_operators(model) == expected
    with pytest.raises(UnsupportedOperatorError) as info:
        GraphModule(model)
    assert info.value.operators == expected
    assert "operators not supported for gradients: Einsum" in info.value.message
    assert info.value.code == "FAILED_PRECONDITION"
    lstm = make_model([node("LSTM", ["x", "w", "r"])], {"x": f32(1, 1, 2)}, ["y"], 17,
                      {"w": f32(1, 8, 2), "r": f32(1, 8, 2)})
    assert unsupported_operators(lstm) == ["LSTM"]
    pool = make_model([node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])], {"x": f32(1, 1, 4, 4)},
                      ["y", "i"], 17)
    assert unsupported_operators(pool) == ["MaxPool(Indices)"]
    assert unsupported_operators(make_model([node("Relu", ["x"])], {"x": f32(2)}, ["y"], 17)) == []


def test_unknown_tensor_names_raise_not_found(exported_net: tuple[_Net, onnx.ModelProto]) -> None:
    _, model = exported_net
    gm = convert(model)
    x = torch.rand(1, 6, 6, 3)
    with pytest.raises(NotFoundError, match="nope"):
        gm.run({"input": x}, capture=["nope"])
    with pytest.raises(NotFoundError, match="nope"):
        gm.run({"input": x}, leaves=["nope"])
    with pytest.raises(NotFoundError, match="nope"):
        gm.run({"input": x}, outputs=["nope"])
    with pytest.raises(NotFoundError, match="bogus"):
        gm.run({"input": x, "bogus": x})
    with pytest.raises(NotFoundError, match="nope"):
        gm.producer("nope")
    with pytest.raises(InvalidInputError, match="missing graph input"):
        gm.run({})
    with pytest.raises(InvalidInputError, match="expected 1 inputs"):
        gm(x, x)
    with pytest.raises(InvalidInputError, match="Conv"):
        gm(torch.rand(1, 6, 6, 2))  # wrong channel count: the failing node is named


def test_convert_reads_files(tmp_path: Path, exported_net: tuple[_Net, onnx.ModelProto]) -> None:
    _, model = exported_net
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    gm = convert(path)
    assert gm.output_names == ["probs"]
    with pytest.raises(NotFoundError):
        convert(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InvalidInputError):
        convert(bad)


def test_the_dtype_codes_are_onnx_s() -> None:
    """The converter names tensor types by their ONNX codes, so importing it loads no onnx."""
    names = {1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL",
             10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 16: "BFLOAT16"}
    assert set(DTYPES) == set(names)
    for code, name in names.items():
        assert getattr(onnx.TensorProto, name) == code
