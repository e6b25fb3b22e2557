"""Tiny ONNX classifiers saved with external data, and ways to make that data leave
its folder (for the tests of :mod:`camseg.models.modelfiles`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from camseg.models.modelconfig import CONFIG_FILE

WEIGHTS = "weights.bin"
CONFIG = {"input": {"name": "x", "height": 16, "width": 16, "channels": 1},
          "output": {"name": "logits", "kind": "logits"},
          "classes": ["normal", "mass"], "lesion_classes": ["mass"], "cam": {"layer": "act"}}


def tiny_classifier(seed: int = 0) -> onnx.ModelProto:
    """Conv 3x3 (4 maps) -> Relu -> global average pool -> a 4x2 head: a real
    classifier of 16x16 gray images, made with onnx.helper."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "head")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["feat"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["feat"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def save_external(model: onnx.ModelProto, folder: Path, *, config: bool = True) -> Path:
    """``folder/model.onnx`` with every initializer's data in ``folder/weights.bin`` (and
    the ``camseg-model.json`` of an imported classifier); the model file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=WEIGHTS, size_threshold=0)
    if config:
        (folder / CONFIG_FILE).write_text(json.dumps(CONFIG))
    return folder / "model.onnx"


def relocate(model_file: Path, location: str, *, tensor: str | None = None) -> None:
    """Rewrite the external-data ``location`` of every initializer (or of ``tensor``)
    in ``model_file``, without reading the data."""
    model = onnx.load(str(model_file), load_external_data=False)
    for t in model.graph.initializer:
        if tensor is None or t.name == tensor:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
    model_file.write_bytes(model.SerializeToString())


def external(name: str, dims: list[int], location: str, length: int | None = None) -> TensorProto:
    """A float tensor whose data an external file holds (nothing is written)."""
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0"} | ({"length": str(length)} if length is not None else {})
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)
    return t
