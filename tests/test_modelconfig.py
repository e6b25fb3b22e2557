"""The model config: validation that names the file and the field, the published JSON
Schema, the config camseg's own metadata implies, and the declared preprocessing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.models.modelconfig import (
    SCHEMA_PATH,
    Layout,
    ModelConfig,
    OutputKind,
    from_metadata,
    is_identity,
    load_config,
    preprocess,
    schema_text,
)

BASE: dict[str, Any] = {
    "input": {"layout": "NHWC", "height": 8, "width": 6, "channels": 3, "colour": "rgb",
              "scaling": {"divide": 255, "mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 2.0]}},
    "output": {"name": "probs", "kind": "probabilities"},
    "classes": ["normal", "benign", "malignant", "calcification"],
    "lesion_classes": ["malignant", "benign", "calcification"],
    "cam": {"layer": "/block3/Relu_output_0"},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(BASE))
    node = cfg
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    if value is _DROP:
        node.pop(last)
    else:
        node[last] = value
    return cfg


_DROP = object()


def test_published_schema_is_current() -> None:
    """camseg/schemas/camseg-model.schema.json is what the model generates
    (``python -m camseg.models.modelconfig`` rewrites it)."""
    assert SCHEMA_PATH.read_text() == schema_text()
    schema = json.loads(SCHEMA_PATH.read_text())
    assert set(schema["required"]) == {"input", "classes", "lesion_classes"}
    assert schema["additionalProperties"] is False


def test_a_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "camseg-model.json"
    path.write_text(json.dumps(BASE))
    cfg = load_config(path)
    assert cfg.input.layout is Layout.NHWC and cfg.output.kind is OutputKind.PROBABILITIES
    assert cfg.lesion_indices == (1, 2, 3)  # in class order, whatever order they are listed in
    assert cfg.size == (8, 6)
    assert ModelConfig.model_validate_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("input.layout", "CHWN", "input.layout", "NCHW"),
        ("input.channels", 2, "input.channels", "1 or 3"),
        ("input.colour", "rgb", None, None),  # fine as it is
        ("input.height", 0, "input.height", "greater than 0"),
        ("input.scaling.divide", 100, "input.scaling.divide", "255"),
        ("input.scaling.mean", [0.5], "input", "scaling.mean has 1 values for 3 channels"),
        ("input.scaling.std", [1.0, 0.0, 1.0], "input.scaling", "std must be positive"),
        ("input.scaling.std", _DROP, "input.scaling", "mean and std come together"),
        ("output.kind", "scores", "output.kind", "logits"),
        ("classes", ["a"], "classes", "at least 2"),
        ("classes", ["a", "a", "b", "c"], "(top level)", "distinct"),
        ("lesion_classes", ["tumour"], "(top level)", "tumour are not among the classes"),
        ("lesion_classes", [], "lesion_classes", "at least 1"),
        ("extra", 1, "extra", "not permitted"),
        ("input.size", 1, "input.size", "not permitted"),
    ],
)
def test_a_bad_config_names_the_file_and_the_field(tmp_path: Path, path: str, value: Any, field: str | None,
                                                   words: str | None) -> None:
    cfg_path = tmp_path / "camseg-model.json"
    cfg_path.write_text(json.dumps(_with(path, value)))
    if field is None:
        load_config(cfg_path)
        return
    with pytest.raises(InvalidInputError) as info:
        load_config(cfg_path)
    msg = info.value.message
    assert msg.startswith(f"{cfg_path}: {field}: "), msg
    assert words is not None and words in msg and "\n" not in msg


def test_rgb_needs_three_channels(tmp_path: Path) -> None:
    cfg_path = tmp_path / "camseg-model.json"
    cfg = _with("input.channels", 1)
    cfg["input"]["scaling"] = {"divide": None}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(InvalidInputError, match="input: colour rgb needs channels 3"):
        load_config(cfg_path)


def test_unreadable_and_missing_configs(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        load_config(tmp_path / "camseg-model.json")
    (tmp_path / "camseg-model.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_config(tmp_path / "camseg-model.json")


def test_camseg_metadata_states_the_same_facts() -> None:
    meta = {"spec": {"arch": "resnet", "in_channels": 1, "num_classes": 2, "input_size": 32},
            "classes": ["normal", "tumor"], "onnx": {"input": "images"}}
    cfg = from_metadata(meta, cam_layer="stage4")
    assert cfg.input.name == "images" and cfg.size == (32, 32) and cfg.input.channels == 1
    assert cfg.input.layout is Layout.NCHW and cfg.output.kind is OutputKind.PROBABILITIES
    assert cfg.lesion_classes == ("tumor",) and cfg.lesion_indices == (1,)
    assert cfg.cam.layer == "stage4"
    assert is_identity(cfg)  # camseg's graphs normalise inside: no preprocessing outside
    assert from_metadata({**meta, "positive_class": "normal"}).lesion_indices == (0,)
    with pytest.raises(InvalidInputError, match="'lesion' is not one of the classes"):
        from_metadata({**meta, "positive_classes": ["lesion"]})


def test_preprocessing_follows_the_declaration() -> None:
    cfg = ModelConfig.model_validate(BASE)
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 8, 6), dtype=np.float32)
    got = preprocess(x, cfg)
    mean, std = np.array([0.5, 0.25, 0.0]), np.array([0.5, 0.25, 2.0])
    want = ((x.transpose(0, 2, 3, 1) - mean) / std).astype(np.float32)  # NHWC, per-channel on the last axis
    assert got.shape == (2, 8, 6, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    raw = ModelConfig.model_validate({**BASE, "input": {**BASE["input"], "layout": "NCHW",
                                                        "scaling": {"divide": None}}})
    np.testing.assert_allclose(preprocess(x, raw), x * 255.0, rtol=1e-6)
    assert not is_identity(raw) and not is_identity(cfg)
    assert x.base is None and np.all(preprocess(x, cfg) == got)  # the input is left alone


# ---------------------------------------------------------------- positive classes
CLASSES = ("normal", "tumor")


def positive_classes(meta: dict[str, Any], classes: tuple[str, ...]) -> tuple[int, ...]:
    """The lesion classes a camseg model's metadata names."""
    spec = {"arch": "resnet", "in_channels": 1, "num_classes": len(classes), "input_size": 32}
    return from_metadata({**meta, "spec": spec, "classes": list(classes)}).lesion_indices


@pytest.mark.parametrize(
    ("meta", "want"),
    [
        ({}, (1,)),
        ({"positive_class": "tumor"}, (1,)),
        ({"positive_class": "normal"}, (0,)),
        ({"positive_class": 0}, (0,)),
        ({"positive_classes": ["tumor"]}, (1,)),
        ({"positive_classes": ["tumor", "normal"]}, (0, 1)),
        ({"positive_classes": [1, "tumor"]}, (1,)),
        ({"positive_classes": ["normal"], "positive_class": "tumor"}, (0,)),
        ({"positive_classes": [], "positive_class": "normal"}, (0,)),
        ({"positive_class": None}, (1,)),
    ],
)
def test_positive_classes(meta: dict[str, Any], want: tuple[int, ...]) -> None:
    assert positive_classes(meta, CLASSES) == want


@pytest.mark.parametrize(
    "meta",
    [
        {"positive_class": "cancer"},
        {"positive_classes": ["tumor", "cancer"]},
        {"positive_class": 2},
        {"positive_class": -1},
        {"positive_class": True},
        {"positive_classes": [1.0]},
    ],
)
def test_unknown_positive_class(meta: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError, match="positive class"):
        positive_classes(meta, CLASSES)
