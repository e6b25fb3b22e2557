"""What a caller asks of the pipeline: the options of one run, the engine and the mask encodings."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from camseg.core.errors import InvalidInputError
from camseg.heat.cam import (
    TTA_SIZES,
    CamMethod,
    parse_method,
)
from camseg.heat.masks import ThresholdRule, parse_rule
from camseg.heat.refine import Refiner, parse_refiner


class Engine(StrEnum):
    AUTO = "auto"  # one ONNX pass where the method allows it, else torch
    ONNX = "onnx"
    TORCH = "torch"


class Encoding(StrEnum):
    """Encodings of a mask a caller may ask for; none is made unasked."""

    MASK_PNG = "mask_png"
    MASK_BITS = "mask_bits"
    MASK_RLE = "mask_rle"
    OVERLAY_PNG = "overlay_png"


@dataclass(frozen=True)
class Options:
    """What to compute. ``threshold=None`` stops at heatmaps (no masks).

    ``target`` None means the positive class (with several positive classes, the most
    probable of them for each image). ``tta`` averages heatmaps (and logits) over 1, 4
    or 8 flips and quarter turns. ``refine`` refines each thresholded mask from its
    image (:mod:`camseg.heat.refine`), before the largest component is taken.
    ``decision_threshold`` is the probability of the positive class(es) from which an
    image is called tumor (the label and the gate); None takes the most probable class.
    ``chunk`` images go through the network at a time; ``should_stop`` is polled
    between chunks.
    """

    method: CamMethod = CamMethod.GRADCAM
    layer: str | None = None
    target: int | None = None
    threshold: ThresholdRule | None = field(default_factory=lambda: ThresholdRule("otsu"))
    gate: bool = True
    largest: bool = False
    fill_holes: bool = False
    encodings: frozenset[Encoding] = frozenset()
    engine: Engine = Engine.AUTO
    chunk: int = 16
    tta: int = 1
    refine: Refiner = Refiner.NONE
    decision_threshold: float | None = None

    def __post_init__(self) -> None:
        # accept the plain strings of configuration files and command lines
        object.__setattr__(self, "method", parse_method(self.method))
        object.__setattr__(self, "refine", parse_refiner(self.refine))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", parse_rule(self.threshold))
        if self.tta not in TTA_SIZES:
            raise InvalidInputError(f"tta must be one of {', '.join(map(str, TTA_SIZES))}, got {self.tta}")
        if self.decision_threshold is not None and not 0.0 < self.decision_threshold < 1.0:
            raise InvalidInputError(f"decision threshold must be within (0, 1), got {self.decision_threshold}")
        try:
            object.__setattr__(self, "engine", Engine(self.engine))
            object.__setattr__(self, "encodings", frozenset(Encoding(e) for e in self.encodings))
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        if self.chunk < 1:
            raise InvalidInputError("chunk must be at least 1 image")
        if self.layer == "":
            object.__setattr__(self, "layer", None)


    def to_record(self) -> dict[str, Any]:
        """The options as plain JSON values (no encodings: those are per call)."""
        return {"method": self.method.value, "layer": self.layer, "target": self.target,
                "threshold": str(self.threshold) if self.threshold is not None else None, "gate": self.gate,
                "largest": self.largest, "fill_holes": self.fill_holes, "chunk": self.chunk, "tta": self.tta,
                "refine": self.refine.value, "decision_threshold": self.decision_threshold}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Options:
        """Options from :meth:`to_record`'s values; absent keys take their defaults."""
        known = {f.name for f in fields(cls)} - {"encodings", "engine"}
        unknown = set(rec) - known
        if unknown:
            raise InvalidInputError(f"unknown options {', '.join(sorted(unknown))}")
        return cls(**rec)
