"""The scale a classifier sees: how many source pixels, or millimetres, one model pixel spans.

A classifier trained on ROIs cut at a stated scale (:mod:`camseg.data.rois`) must see a
whole image at that scale too. The scale is stated one of two ways: in source pixels per
model pixel (images of one kind from one scanner) or in millimetres per model pixel (any
image whose pixel spacing is known). It is recorded in a data set's ``dataset.json`` and
copied to the metadata of a model trained on it.

>>> Scale(mm_per_model_pixel=0.4).pixels(0.1)
4.0
>>> Scale(source_pixels_per_model_pixel=3).to_dict()
{'source_pixels_per_model_pixel': 3.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from camseg.core.errors import InvalidInputError


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"scale: {name} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Scale:
    """Exactly one of ``source_pixels_per_model_pixel`` and ``mm_per_model_pixel``, positive."""

    source_pixels_per_model_pixel: float | None = None
    mm_per_model_pixel: float | None = None

    def __post_init__(self) -> None:
        px = _positive(self.source_pixels_per_model_pixel, "source_pixels_per_model_pixel")
        mm = _positive(self.mm_per_model_pixel, "mm_per_model_pixel")
        if (px is None) == (mm is None):
            raise InvalidInputError("scale: give exactly one of source pixels per model pixel and mm per model pixel")
        object.__setattr__(self, "source_pixels_per_model_pixel", px)
        object.__setattr__(self, "mm_per_model_pixel", mm)

    def pixels(self, spacing_mm: float | None) -> float:
        """Source pixels per model pixel for an image whose pixels are ``spacing_mm`` wide
        (None: unknown). An image without a spacing has no scale in millimetres."""
        if self.source_pixels_per_model_pixel is not None:
            return self.source_pixels_per_model_pixel
        assert self.mm_per_model_pixel is not None
        if spacing_mm is None:
            raise InvalidInputError(f"the scale is {self.mm_per_model_pixel:g} mm per model pixel but the image "
                                    "records no pixel spacing")
        if not (math.isfinite(spacing_mm) and spacing_mm > 0):
            raise InvalidInputError(f"pixel spacing must be a positive number of mm, got {spacing_mm!r}")
        return self.mm_per_model_pixel / spacing_mm

    def resized(self, factor: float) -> Scale:
        """The scale of the same ROIs resized so one model pixel spans ``factor`` times as much
        (``roi_size / input_size``)."""
        if self.source_pixels_per_model_pixel is not None:
            return Scale(source_pixels_per_model_pixel=self.source_pixels_per_model_pixel * factor)
        assert self.mm_per_model_pixel is not None
        return Scale(mm_per_model_pixel=self.mm_per_model_pixel * factor)

    def to_dict(self) -> dict[str, float]:
        """The one key that is set: what ``dataset.json`` and model metadata record."""
        if self.source_pixels_per_model_pixel is not None:
            return {"source_pixels_per_model_pixel": self.source_pixels_per_model_pixel}
        assert self.mm_per_model_pixel is not None
        return {"mm_per_model_pixel": self.mm_per_model_pixel}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scale:
        """The inverse of :meth:`to_dict`; an unknown key or a bad value is one InvalidInputError."""
        if not isinstance(d, Mapping):
            raise InvalidInputError(f"scale: expected an object, got {type(d).__name__}")
        unknown = set(d) - {"source_pixels_per_model_pixel", "mm_per_model_pixel"}
        if unknown:
            raise InvalidInputError(f"scale: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        return cls(d.get("source_pixels_per_model_pixel"), d.get("mm_per_model_pixel"))
