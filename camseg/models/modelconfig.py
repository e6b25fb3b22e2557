"""What camseg needs to know about a classifier: its input, output, classes and CAM layer.

A version folder that holds only a ``model.onnx`` (a Keras model exported with
tf2onnx, a PyTorch or timm model exported with torch.onnx) is described by a small
``camseg-model.json`` beside it; camseg's own models state the same facts in their
``metadata.json``. :func:`read_config` reads either into one :class:`ModelConfig`, so
the rest of camseg has one code path for both. The JSON Schema of the file is
published as ``camseg/schemas/camseg-model.schema.json`` (``python -m
camseg.models.modelconfig`` writes it).

>>> cfg = ModelConfig.model_validate({
...     "input": {"layout": "NHWC", "height": 224, "width": 224, "channels": 3, "colour": "rgb",
...               "scaling": {"divide": 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
...     "output": {"kind": "probabilities"},
...     "classes": ["normal", "benign", "malignant"], "lesion_classes": ["benign", "malignant"]})
>>> cfg.lesion_indices
(1, 2)

Preprocessing (:func:`preprocess`): decoded images arrive as floats in [0, 1] (8- and
16-bit files alike), ``(N, channels, height, width)`` in NCHW; with ``divide`` set the
model's input is that unit value (the pixel divided by 255 or 65535), with
``divide: null`` it is the pixel on the 8-bit scale (0..255); then ``(x - mean) /
std`` per channel where given, then the declared layout.

``scale`` (optional) states the scale the model was trained at, in source pixels or
millimetres per model pixel (:class:`camseg.core.scale.Scale`); :func:`model_scale`
reads it from a camseg model's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.core.scale import Scale

CONFIG_FILE = "camseg-model.json"
SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "camseg-model.schema.json"


class Layout(StrEnum):
    NCHW = "NCHW"
    NHWC = "NHWC"


class Colour(StrEnum):
    GRAY = "gray"  # one luminance channel, repeated where the model takes three
    RGB = "rgb"


class OutputKind(StrEnum):
    LOGITS = "logits"
    PROBABILITIES = "probabilities"


class Source(StrEnum):
    CAMSEG = "camseg"  # trained by camseg: model.pt + metadata.json (+ model.onnx)
    IMPORTED = "imported"  # model.onnx + camseg-model.json


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scaling(_Strict):
    """Pixel scaling: ``divide`` (255 or 65535: the model takes values in [0, 1]; null:
    the model takes 0..255), then per-channel ``mean`` and ``std`` where given."""

    divide: Literal[255, 65535] | None = 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _pairs(self) -> Scaling:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std come together")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self


class InputSpec(_Strict):
    name: str | None = Field(None, description="input tensor; default the graph's only input")
    layout: Layout = Layout.NCHW
    height: int = Field(gt=0, le=8192)
    width: int = Field(gt=0, le=8192)
    channels: Literal[1, 3] = 1
    colour: Colour = Colour.GRAY
    scaling: Scaling = Scaling()

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if self.colour is Colour.RGB and self.channels != 3:
            raise ValueError("colour rgb needs channels 3")
        for what in ("mean", "std"):
            values = getattr(self.scaling, what)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"scaling.{what} has {len(values)} values for {self.channels} channels")
        return self


class OutputSpec(_Strict):
    name: str | None = Field(None, description="output tensor; default the graph's first output")
    kind: OutputKind = OutputKind.LOGITS


class CamSpec(_Strict):
    layer: str | None = Field(None, description="intermediate 4-D tensor the heatmaps are taken at; "
                                                "default the deepest convolution block")
    method: str | None = Field(None, description="default CAM method, e.g. gradcam, or scorecam "
                                                 "(gradient-free: ONNX Runtime alone)")


class ScaleSpec(_Strict):
    """The scale the model was trained at (:class:`camseg.core.scale.Scale`): exactly one of
    source pixels per model pixel and millimetres per model pixel."""

    source_pixels_per_model_pixel: float | None = Field(None, gt=0, allow_inf_nan=False)
    mm_per_model_pixel: float | None = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one(self) -> ScaleSpec:
        if (self.source_pixels_per_model_pixel is None) == (self.mm_per_model_pixel is None):
            raise ValueError("give exactly one of source_pixels_per_model_pixel and mm_per_model_pixel")
        return self

    def to_scale(self) -> Scale:
        return Scale(self.source_pixels_per_model_pixel, self.mm_per_model_pixel)


class ModelConfig(_Strict):
    """The contents of ``camseg-model.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="camseg model config")

    version: Literal[1] = 1
    input: InputSpec
    output: OutputSpec = OutputSpec()
    classes: tuple[str, ...] = Field(min_length=2)
    lesion_classes: tuple[str, ...] = Field(min_length=1, description="classes that count as lesion")
    cam: CamSpec = CamSpec()
    scale: ScaleSpec | None = Field(None, description="the scale the model was trained at; "
                                                      "none: images are taken as they come")

    @model_validator(mode="after")
    def _classes(self) -> ModelConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be distinct")
        unknown = [c for c in self.lesion_classes if c not in self.classes]
        if unknown:
            raise ValueError(f"lesion classes {', '.join(unknown)} are not among the classes")
        return self

    @property
    def lesion_indices(self) -> tuple[int, ...]:
        return tuple(sorted(self.classes.index(c) for c in set(self.lesion_classes)))

    @property
    def size(self) -> tuple[int, int]:
        return (self.input.height, self.input.width)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"


def field_error(path: Path | str, exc: ValidationError) -> InvalidInputError:
    """A one-line error naming the file and the first invalid field."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return InvalidInputError(f"{path}: {where}: {msg}{more}")


def load_config(path: Path | str) -> ModelConfig:
    """Read and validate a ``camseg-model.json``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from None
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise field_error(path, exc) from None


def model_scale(meta: Mapping[str, Any]) -> Scale | None:
    """The scale a camseg-trained model's ``metadata.json`` records (copied from its training
    data set's ``dataset.json``), or None where it records none.

    Raises:
        InvalidInputError: a recorded scale that is not one positive number of one kind.
    """
    raw = meta.get("scale")
    if raw is None:
        return None
    try:
        return Scale.from_dict(raw)
    except InvalidInputError as exc:
        raise InvalidInputError(f"metadata.json: {exc.message}") from None


def from_metadata(meta: dict[str, Any], *, cam_layer: str | None = None) -> ModelConfig:
    """The config a camseg-trained model's ``metadata.json`` implies: NCHW input in
    [0, 1] (normalisation is inside the network and its ONNX graph), probabilities
    out, the positive classes as lesion classes (``positive_classes``, else
    ``positive_class``, else the last class)."""
    spec = meta["spec"]
    classes = tuple(meta.get("classes") or [str(i) for i in range(int(spec["num_classes"]))])
    names = meta.get("positive_classes") or ([meta["positive_class"]] if meta.get("positive_class") is not None
                                              else [classes[-1]])
    lesion = []
    for n in names:
        if isinstance(n, int) and not isinstance(n, bool) and 0 <= n < len(classes):
            lesion.append(classes[n])
        elif isinstance(n, str) and n in classes:
            lesion.append(n)
        else:
            raise InvalidInputError(f"positive class {n!r} is not one of the classes {', '.join(classes)}")
    channels = int(spec["in_channels"])
    onnx_meta = meta.get("onnx") or {}
    scale = model_scale(meta)
    try:
        return ModelConfig(
            input=InputSpec(name=onnx_meta.get("input"), height=int(spec["input_size"]),
                            width=int(spec["input_size"]), channels=channels,
                            colour=Colour.GRAY if channels == 1 else Colour.RGB),
            output=OutputSpec(name="probabilities" if onnx_meta else None, kind=OutputKind.PROBABILITIES),
            classes=classes, lesion_classes=tuple(dict.fromkeys(lesion)), cam=CamSpec(layer=cam_layer),
            scale=None if scale is None else ScaleSpec(**scale.to_dict()))
    except ValidationError as exc:
        raise field_error("metadata.json", exc) from None


def is_identity(cfg: ModelConfig) -> bool:
    """True when the model takes prepared batches as they are (camseg's own models)."""
    sc = cfg.input.scaling
    return sc.divide is not None and sc.mean is None and cfg.input.layout is Layout.NCHW


def preprocess(images: npt.NDArray[np.float32], cfg: ModelConfig) -> npt.NDArray[np.float32]:
    """A prepared batch ``(N, channels, height, width)`` in [0, 1] to the model's input
    tensor: scaling, then the declared layout."""
    x = images.astype(np.float32, copy=True)
    scaling = cfg.input.scaling
    if scaling.divide is None:
        x *= 255.0
    if scaling.mean is not None and scaling.std is not None:
        x -= np.asarray(scaling.mean, dtype=np.float32)[None, :, None, None]
        x /= np.asarray(scaling.std, dtype=np.float32)[None, :, None, None]
    if cfg.input.layout is Layout.NHWC:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def schema() -> dict[str, Any]:
    return ModelConfig.model_json_schema()


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m camseg.models.modelconfig: (re)write the published schema
    SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_PATH.write_text(schema_text())
    print(SCHEMA_PATH)
