"""Bring your own classifier: any ONNX image classifier as a camseg model.

A version folder holding ``model.onnx`` and ``camseg-model.json``
(:mod:`camseg.models.modelconfig`) is loaded by :func:`load_imported` into three parts:

* an :class:`~camseg.models.inference.OnnxModel` that classifies through ONNX Runtime with the
  declared preprocessing, and also returns the CAM layer's activations (the layer is
  added to the graph's outputs) for the gradient-free Score-CAM;
* an :class:`ImportedNetwork`: the graph converted node by node into a differentiable
  torch module (:mod:`camseg.models.onnxgraph`), so Grad-CAM and its kin get real gradients.
  At load its outputs are checked against ONNX Runtime on real images (camseg's
  synthetic ROIs and noise); a graph with an operator the converter lacks, or one
  that does not match, is served without it and gradient methods name the reason;
* the candidate CAM layers: the ends of the graph's convolution blocks (a Conv and
  the normalisation, activation, residual Add and Concat that follow it), shallow to
  deep, with their shapes.

:func:`inspect_model` reads a bare ``model.onnx`` and proposes a config
(``camseg inspect``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from camseg.core.errors import InvalidInputError, NotFoundError, UnsupportedError
from camseg.core.lazy import LazyModule
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES
from camseg.data.synth import SynthConfig, generate
from camseg.heat.methods import parse_method
from camseg.models.inference import OnnxModel
from camseg.models.modelconfig import (
    CONFIG_FILE,
    CamSpec,
    Colour,
    InputSpec,
    Layout,
    ModelConfig,
    OutputKind,
    OutputSpec,
    field_error,
    load_config,
    preprocess,
)
from camseg.models.modeldir import ONNX_FILE, atomic_write_bytes
from camseg.models.modelfiles import load_onnx
from camseg.models.onnxgraph import GraphModule, UnsupportedOperatorError, convert, unsupported_operators
from camseg.models.runtime import make_session

if TYPE_CHECKING:
    import onnx
else:  # loaded when a graph is first read: importing camseg pulls in no protobuf
    onnx = LazyModule("onnx")

PARITY_TOLERANCE = 1e-4
# ops that continue a convolution block: its normalisation, activation, residual sum
_BLOCK_OPS = frozenset({"BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
                        "Tanh", "Elu", "Selu", "PRelu", "Identity", "Add", "Mul", "Concat", "InstanceNormalization"})
_DEFAULT_SIDE = 224


def read_onnx(path: Path, *, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> onnx.ModelProto:
    """The graph of ``path`` with its data, once :func:`camseg.models.modelfiles.load_onnx`
    has checked that its external data stays in its folder and its tensors fit ``max_bytes``."""
    if not path.is_file() and not path.is_symlink():
        raise NotFoundError(f"{path}: no such file")
    return load_onnx(path, max_bytes=max_bytes)


# ------------------------------------------------------------------ graph facts
@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...] | None  # None: rank unknown; str: a symbolic dim
    dtype: str

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


def _info(v: onnx.ValueInfoProto) -> TensorInfo:
    t = v.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
    if not t.HasField("shape"):
        return TensorInfo(v.name, None, dtype)
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return TensorInfo(v.name, tuple(dims), dtype)


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    inits = {i.name for i in model.graph.initializer}
    return [_info(v) for v in model.graph.input if v.name not in inits]


def graph_outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    return [_info(v) for v in model.graph.output]


def candidate_layers(model: onnx.ModelProto) -> list[str]:
    """Ends of the convolution blocks, in graph (topological) order: the output of a
    Conv, or of the chain of block ops that continues from it, that no further block op
    continues."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    features: set[str] = set()
    order: list[str] = []
    for node in model.graph.node:
        feeds_from_block = node.op_type in _BLOCK_OPS and any(i in features for i in node.input)
        if node.op_type == "Conv" or feeds_from_block:
            if node.op_type == "Concat" and _attr(node, "axis", 1) not in (1, -3):
                continue
            for out in node.output[:1]:
                features.add(out)
                order.append(out)
    ends = []
    for name in order:
        cont = [c for c in consumers.get(name, []) if c.op_type in _BLOCK_OPS
                and not (c.op_type == "Concat" and _attr(c, "axis", 1) not in (1, -3))]
        if not cont:
            ends.append(name)
    return ends


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _value_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input}
    for node in model.graph.node:
        names.update(o for o in node.output if o)
    return names


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate tensors ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    known = {v.name: v for v in list(out.graph.value_info)}
    for name in names:
        if name in have:
            continue
        if name in known:
            out.graph.output.append(known[name])
        else:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


def layer_shapes(model: onnx.ModelProto, input_name: str, example: npt.NDArray[np.float32],
                 names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors ``names`` for ``example``, from one ONNX Runtime pass."""
    if not names:
        return {}
    session = make_session(with_outputs(model, names), "CPUExecutionProvider")
    values = session.run(list(names), {input_name: example})
    return {n: tuple(int(d) for d in v.shape) for n, v in zip(names, values, strict=True)}


# ------------------------------------------------------------------ checking a config
@dataclass(frozen=True)
class Bound:
    """A config checked against its graph: the resolved tensor names."""

    input_name: str
    output_name: str
    cam_layer: str | None


def bind(cfg: ModelConfig, model: onnx.ModelProto, where: Path | str) -> Bound:
    """Check ``cfg`` against the graph; InvalidInputError names the file and the field."""

    def bad(fieldname: str, msg: str) -> InvalidInputError:
        return InvalidInputError(f"{where}: {fieldname}: {msg}")

    def named(tensors: list[TensorInfo], name: str | None, kind: str) -> TensorInfo:
        """The tensor the config names, or, where it names none, the graph's only input
        (its first output)."""
        if name is None:
            if kind == "input" and len(tensors) != 1:
                raise bad("input.name", f"the graph has {len(tensors)} inputs "
                          f"({', '.join(t.name for t in tensors)}); name one")
            return tensors[0]
        match = [t for t in tensors if t.name == name]
        if not match:
            raise bad(f"{kind}.name", f"no {kind} {name!r} in the graph (it has {', '.join(t.name for t in tensors)})")
        return match[0]

    inp = named(graph_inputs(model), cfg.input.name, "input")
    out = named(graph_outputs(model), cfg.output.name, "output")
    if inp.shape is not None:
        if len(inp.shape) != 4:
            raise bad("input.layout", f"the input {inp.describe()} is not 4-D")
        axes = ({"channels": 1, "height": 2, "width": 3} if cfg.input.layout is Layout.NCHW
                else {"channels": 3, "height": 1, "width": 2})
        for what, axis in axes.items():
            dim, value = inp.shape[axis], getattr(cfg.input, what)
            if isinstance(dim, int) and dim > 0 and dim != value:
                raise bad("input.layout" if what == "channels" else f"input.{what}",
                          f"{cfg.input.layout.value} with {what} {value} contradicts the graph's input "
                          f"{inp.describe()}")
    if out.shape and isinstance(out.shape[-1], int) and out.shape[-1] > 0 and out.shape[-1] != len(cfg.classes):
        raise bad("classes", f"{len(cfg.classes)} classes for the output {out.describe()}")
    layer = cfg.cam.layer
    if layer is not None and layer not in _value_names(model):
        raise bad("cam.layer", f"no tensor {layer!r} in the graph")
    if cfg.cam.method is not None:
        try:
            parse_method(cfg.cam.method)
        except InvalidInputError as exc:
            raise bad("cam.method", exc.message) from None
    return Bound(inp.name, out.name, layer)


# ------------------------------------------------------------------ the torch side
def parity_images(cfg: ModelConfig, n: int = 4) -> Tensor:
    """Real inputs for the parity check: camseg's synthetic ROIs (tumor and normal) at
    the model's input size and channels, then uniform noise."""

    h, w = cfg.size
    side = max(16, min(1024, max(h, w)))
    images, _, _, _ = generate(SynthConfig(n=max(2, n - 1), size=side, seed=7))
    x = torch.from_numpy(images)[:, None]
    if (side, side) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = x.expand(-1, cfg.input.channels, -1, -1)
    noise = torch.rand((1, cfg.input.channels, h, w), generator=torch.Generator().manual_seed(7))
    return torch.cat([x, noise]).contiguous().float()


class ImportedNetwork(nn.Module):
    """An imported ONNX classifier as a :class:`camseg.heat.cam.CamNetwork`: prepared batches
    ``(N, C, H, W)`` in [0, 1] in; the declared scaling and layout, then the converted
    graph; logits out. Where the graph ends in a Softmax the heatmap score is its
    input (the logits); where it outputs probabilities otherwise, their logarithm."""

    mean: Tensor
    std: Tensor

    def __init__(self, graph: GraphModule, cfg: ModelConfig, bound: Bound, layers: Sequence[str],
                 shapes: dict[str, tuple[int, ...]], cam_layer: str, positions: dict[str, int]):
        super().__init__()
        self.graph = graph
        self.config = cfg
        self.bound = bound
        self._layers = list(layers)
        self._shapes = dict(shapes)
        self._positions = dict(positions)
        self._log_probs = False
        self._score = bound.output_name
        if cfg.output.kind is OutputKind.PROBABILITIES:
            if graph.producer(bound.output_name) == "Softmax":
                self._score = graph.node_inputs(bound.output_name)[0]
            else:
                self._log_probs = True
        sc = cfg.input.scaling
        mean = torch.tensor(sc.mean or [0.0] * cfg.input.channels, dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(sc.std or [1.0] * cfg.input.channels, dtype=torch.float32)[None, :, None, None]
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self._gain = 255.0 if sc.divide is None else 1.0
        if cam_layer not in self._layers:
            raise NotFoundError(f"CAM layer {cam_layer!r} is not among the layers")
        self.layer_for_cam = cam_layer
        self.eval()

    # ---- CamNetwork
    @property
    def in_channels(self) -> int:
        return self.config.input.channels

    @property
    def num_classes(self) -> int:
        return len(self.config.classes)

    @property
    def cam_layer(self) -> str:
        return self.layer_for_cam

    @property
    def layer_names(self) -> list[str]:
        return list(self._layers)

    def check_layer(self, name: str) -> int:
        """Any tensor the graph computes may be a CAM layer (it must be 4-D when used);
        the position of its node orders layers shallow to deep."""
        if name not in self._positions:
            shown = ", ".join(self._layers[-4:])
            raise NotFoundError(f"unknown layer {name!r}; no tensor of this graph has that name "
                                f"(its deepest CAM layers: {shown})")
        return self._positions[name]

    def fused_layers(self, layer: str) -> list[str]:
        """``layer`` and the last layer before it at a finer resolution."""
        k = self.check_layer(layer)
        hw = self._shapes.get(layer, (0, 0, 0, 0))[-2:]
        for prev in reversed([n for n in self._layers if self._positions[n] < k]):
            shape = self._shapes.get(prev)
            if shape is not None and len(shape) == 4 and shape[-2] * shape[-1] > hw[0] * hw[1]:
                return [prev, layer]
        return [layer]

    def head_weight(self, layer: str) -> Tensor | None:
        return None

    def layer_shape(self, name: str) -> tuple[int, ...] | None:
        return self._shapes.get(name)

    def _input(self, x: Tensor) -> Tensor:
        x = (x * self._gain - self.mean) / self.std
        return x.permute(0, 2, 3, 1) if self.config.input.layout is Layout.NHWC else x

    def _logits(self, out: dict[str, Tensor]) -> Tensor:
        y = out[self._score].reshape(out[self._score].shape[0], -1)
        return torch.log(y.clamp_min(1e-30)) if self._log_probs else y

    def forward(self, x: Tensor) -> Tensor:
        return self._logits(self.graph.run({self.bound.input_name: self._input(x)}, outputs=[self._score]))

    def raw_output(self, x: Tensor) -> Tensor:
        """The graph's declared output, as ONNX Runtime gives it."""
        return self.raw_outputs(x, [self.bound.output_name])[0]

    def raw_outputs(self, x: Tensor, names: Sequence[str]) -> list[Tensor]:
        """Tensors of the graph (the declared output, a layer), all from one pass."""
        out = self.graph.run({self.bound.input_name: self._input(x)}, outputs=list(names))
        return [out[n] for n in names]

    def activations(self, x: Tensor, layers: Sequence[str], *, leaves: bool) -> tuple[Tensor, list[Tensor]]:
        # the shallowest layer becomes the leaf; deeper ones stay in its graph, so the
        # score's gradient reaches every one of them
        first = min(layers, key=self.check_layer)
        out = self.graph.run({self.bound.input_name: self._input(x)}, outputs=[self._score],
                             leaves=[first] if leaves else (), capture=list(layers))
        acts = [out[name] for name in layers]
        for name, a in zip(layers, acts, strict=True):
            if a.ndim != 4:
                raise UnsupportedError(f"layer {name!r} has shape {tuple(a.shape)}, not (N, C, h, w)")
        return self._logits(out), acts


def default_layer(layers: Sequence[str], shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The deepest candidate layer whose maps are larger than 1x1."""
    for name in reversed(layers):
        shape = shapes.get(name)
        if shape is None or (len(shape) == 4 and shape[-2] * shape[-1] > 1):
            return name
    return layers[-1] if layers else None


# ------------------------------------------------------------------ loading
@dataclass
class Imported:
    """An imported version: the ONNX Runtime classifier, the converted network (None
    where gradients are unavailable, with the reason) and the config."""

    config: ModelConfig
    bound: Bound
    onnx: OnnxModel
    network: ImportedNetwork | None
    unavailable: str | None
    layers: list[str]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)


def load_imported(model_dir: Path | str, *, providers: str = "auto", threads: int = 0,
                  spinning: bool = True, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> Imported:
    """Load ``model.onnx`` + ``camseg-model.json`` from ``model_dir``. A bad config is
    refused (InvalidInputError naming the file and the field), as is a graph whose
    external data leaves the folder or whose tensors declare more than ``max_bytes``
    (:mod:`camseg.models.modelfiles`); an unsupported operator or a converted graph that
    differs from ONNX Runtime leaves gradients unavailable."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / CONFIG_FILE
    cfg = load_config(cfg_path)
    model = read_onnx(model_dir / ONNX_FILE, max_bytes=max_bytes)
    bound = bind(cfg, model, cfg_path)
    layers = candidate_layers(model)
    images = parity_images(cfg)
    example = preprocess(images.numpy(), cfg)
    probe = list(dict.fromkeys([*layers, *([bound.cam_layer] if bound.cam_layer else [])]))
    try:
        shapes = layer_shapes(model, bound.input_name, example[:1], probe)
    except Exception as exc:
        raise InvalidInputError(f"{model_dir / ONNX_FILE}: ONNX Runtime cannot run the graph on the declared "
                                f"input ({str(exc).splitlines()[0][:200]})") from None
    cam_layer = bound.cam_layer or default_layer(layers, shapes)
    positions = {o: i for i, node in enumerate(model.graph.node) for o in node.output if o}
    if cam_layer is not None and cam_layer not in layers:
        layers = sorted([*layers, cam_layer], key=lambda n: positions.get(n, -1))
    session_model = with_outputs(model, [cam_layer]) if cam_layer else model
    session = OnnxModel.imported(session_model, cfg, input_name=bound.input_name,
                                 output_name=bound.output_name, cam_layer=cam_layer, providers=providers,
                                 threads=threads, spinning=spinning, max_bytes=max_bytes)
    session.dir = model_dir
    network: ImportedNetwork | None = None
    unavailable: str | None = None
    parity: dict[str, float] = {}
    if cam_layer is None:
        unavailable = "the graph has no convolution layer to take heatmaps at; set cam.layer"
    else:
        try:
            network = ImportedNetwork(convert(model, max_bytes=max_bytes), cfg, bound, layers, shapes, cam_layer,
                                      positions)
        except UnsupportedOperatorError as exc:
            unavailable = exc.message
    if network is not None:
        parity = check_parity(network, session, images)
        worst = max(parity.values())
        if not worst <= PARITY_TOLERANCE:
            unavailable = (f"the converted graph differs from ONNX Runtime by {worst:.3g} "
                           f"(over {PARITY_TOLERANCE:g})")
            network = None
    return Imported(cfg, bound, session, network, unavailable, layers, shapes, parity)


def check_parity(network: ImportedNetwork, session: OnnxModel, images: Tensor) -> dict[str, float]:
    """Max abs differences, converted module vs ONNX Runtime: the output, and the CAM
    layer's activations relative to their largest magnitude."""
    names = [network.bound.output_name, network.cam_layer]  # the session outputs the same layer
    with torch.inference_mode():
        out, acts = (t.numpy() for t in network.raw_outputs(images, names))
    ref_out, ref_acts = session.raw_outputs(images.numpy(), names)
    scale = max(1.0, float(np.abs(ref_acts).max()))
    return {"max_abs_diff_output": float(np.abs(out.reshape(ref_out.shape) - ref_out).max()),
            "max_rel_diff_activations": float(np.abs(acts - ref_acts).max()) / scale}


# ------------------------------------------------------------------ inspect
@dataclass(frozen=True)
class Inspection:
    path: Path
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    proposal: ModelConfig
    layers: list[tuple[str, str, tuple[int, ...] | None]]  # name, producing op, shape; last first
    notes: list[str]
    unsupported: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "inputs": [i.describe() for i in self.inputs],
                "outputs": [o.describe() for o in self.outputs],
                "proposed_config": json.loads(self.proposal.to_json()),
                "cam_layers": [{"name": n, "op": op, "shape": list(s) if s else None} for n, op, s in self.layers],
                "notes": self.notes, "unsupported_operators": self.unsupported}


def _guess_layout(shape: tuple[int | str | None, ...] | None) -> tuple[Layout, int, int, int, list[str]]:
    notes = []
    dims = [d if isinstance(d, int) and d > 0 else None for d in (shape or (None,) * 4)]
    if len(dims) != 4:
        raise InvalidInputError(f"the input has {len(dims)} dimensions; camseg takes 4-D image batches")
    c: int | None
    h: int | None
    w: int | None
    if dims[3] in (1, 3) and dims[1] not in (1, 3):
        layout, c, h, w = Layout.NHWC, dims[3], dims[1], dims[2]
    else:
        layout, c, h, w = Layout.NCHW, dims[1], dims[2], dims[3]
        if dims[1] is None:
            notes.append("the layout could not be told from the input's dims; NCHW assumed")
    if c is None:
        c = 3
        notes.append("the channel count is dynamic; 3 assumed")
    if h is None or w is None:
        h, w = h or _DEFAULT_SIDE, w or _DEFAULT_SIDE
        notes.append(f"the input size is dynamic; {h}x{w} assumed: set input.height and input.width")
    return layout, int(c), int(h), int(w), notes


def inspect_model(path: Path | str, *, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> Inspection:
    """The graph's inputs and outputs, a proposed config and the candidate CAM layers."""
    path = Path(path)
    model = read_onnx(path, max_bytes=max_bytes)
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    if not inputs or not outputs:
        raise InvalidInputError(f"{path}: the graph has no inputs or no outputs")
    inp, out = inputs[0], outputs[0]
    layout, c, h, w, notes = _guess_layout(inp.shape)
    if len(inputs) > 1:
        notes.append(f"the graph has {len(inputs)} inputs; the first, {inp.name!r}, is proposed")
    producers = {o: n for n in model.graph.node for o in n.output}
    softmax = out.name in producers and producers[out.name].op_type == "Softmax"
    n_classes = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) and out.shape[-1] > 1 else 2
    if not (out.shape and isinstance(out.shape[-1], int)):
        notes.append("the class count could not be read from the output; 2 assumed")
    classes = tuple(f"class_{i}" for i in range(n_classes))
    notes.append("name the classes and the lesion classes (proposed: the last class)")
    layers = candidate_layers(model)
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        example = np.zeros((1, c, h, w) if layout is Layout.NCHW else (1, h, w, c), dtype=np.float32)
        shapes = layer_shapes(model, inp.name, example, layers)
    except Exception as exc:
        notes.append(f"ONNX Runtime could not run the graph for layer shapes ({str(exc).splitlines()[0][:120]})")
    cam_layer = default_layer(layers, shapes)
    try:
        proposal = ModelConfig(
            input=InputSpec(name=inp.name, layout=layout, height=h, width=w, channels=c,
                            colour=Colour.RGB if c == 3 else Colour.GRAY),
            output=OutputSpec(name=out.name, kind=OutputKind.PROBABILITIES if softmax else OutputKind.LOGITS),
            classes=classes, lesion_classes=(classes[-1],), cam=CamSpec(layer=cam_layer))
    except ValidationError as exc:
        raise field_error(path, exc) from None
    listed = [(n, producers[n].op_type if n in producers else "?", shapes.get(n)) for n in reversed(layers)]
    return Inspection(path, inputs, outputs, proposal, listed, notes, unsupported_operators(model))


def write_proposal(inspection: Inspection, *, overwrite: bool = False) -> Path:

    target = inspection.path.parent / CONFIG_FILE
    if target.exists() and not overwrite:
        raise InvalidInputError(f"{target} exists; pass --overwrite to replace it")
    atomic_write_bytes(target, inspection.proposal.to_json().encode())
    return target
