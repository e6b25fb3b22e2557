"""What a run allocates for one image, declared step by step, so that a budget can
charge the whole path from an image's claimed shape, before a pixel is decoded.

Each step that allocates in proportion to the image declares its bytes per pixel of
the image (``c`` channels); :func:`path_bytes` adds up what is held through the run and
the largest of the transient peaks. Refiners run at a bounded working resolution and
declare their own peak (:func:`camseg.heat.refine.refine_bytes`); whole images declare
their sliding window (:func:`camseg.pipeline.whole.whole_bytes`). The figures are upper
estimates, checked against measured peaks by the memory-ceiling tests.

>>> from camseg.pipeline.options import Options
>>> path_bytes((4096, 4096), Options()) // 2**20
368
"""

from __future__ import annotations

from dataclasses import dataclass

from camseg.heat.refine import Refiner, refine_bytes
from camseg.pipeline.options import Encoding, Options

DECODE = 12
"""Per value: the decoded native array (at most 4 bytes a sample) and its float32 copy,
plus a float64 step for float and wide integer images (8-bit and 16-bit ones convert in
place)."""
IMAGE = 4
"""Per value: the float32 image, held through the run."""
RESIZE = 8
"""Per value: the image brought to the model's input (its channel copy and the area
resize's input), transient."""
HEAT = 12
"""The heatmap at the image's size (float32, held) and the upsampling's and
normalisation's temporaries."""
MASKS = 14
"""The thresholded mask (held) and the threshold's and components' temporaries (int32
labels, the float sort of a percentile)."""
GRAY = 4
"""The gray float32 copy a refiner reads."""
DICOM_SEG = 10
"""A DICOM SEG made of the mask, transient (measured with tracemalloc: highdicom's copies of
the mask and its packed frame, and the source's placeholder values)."""
ENCODING_BYTES: dict[Encoding, float] = {
    Encoding.MASK_PNG: 4.0,  # uint8 copy, the compressor's buffer, the reply's copy
    Encoding.MASK_BITS: 0.5,
    # worst case (a run per pixel): numpy's int64 bounds and differences, the Python list
    # and the reply's repeated field
    Encoding.MASK_RLE: 42.0,
    Encoding.OVERLAY_PNG: 16.0,  # the uint8 RGB picture, the outlines, PNG and the reply's copy
}


@dataclass(frozen=True)
class Cost:
    """Bytes of one image's path: ``held`` through the run, and the largest transient
    ``peak`` of a step on top of it (with the step's name)."""

    held: int
    peak: int
    step: str

    @property
    def total(self) -> int:
        return self.held + self.peak


def path_cost(shape: tuple[int, int], options: Options, *, channels: int = 1, whole: int | None = None,
              model_space: tuple[int, int] | None = None, heat_reply: int = 0, dicom_seg: bool = False) -> Cost:
    """The :class:`Cost` of segmenting (or explaining, ``options.threshold`` None) one
    image of ``shape`` and ``channels`` under ``options``. ``whole``: the sliding
    window's bytes where the image goes whole (``model_space`` then the shape its
    refiner sees); ``heat_reply``: bytes per pixel of heatmap in the reply; ``dicom_seg``:
    a DICOM SEG of the mask is made for the reply."""
    p = int(shape[0]) * int(shape[1])
    c = max(1, int(channels))
    held = IMAGE * c * p
    steps = {"decode": (DECODE - IMAGE) * c * p}
    if whole is None:
        steps["resize"] = RESIZE * c * p
        held += 4 * p  # the heatmap
        steps["heatmap"] = (HEAT - 4) * p
    else:
        steps["sliding window"] = whole
    refine_shape = model_space if whole is not None and model_space is not None else (int(shape[0]), int(shape[1]))
    if options.threshold is not None:
        held += p
        steps["masks"] = MASKS * p
        if options.refine is not Refiner.NONE:
            steps["refine"] = refine_bytes(options.refine, refine_shape) + GRAY * refine_shape[0] * refine_shape[1]
    enc = sum(ENCODING_BYTES[e] for e in options.encodings if options.threshold is not None
              or e is Encoding.OVERLAY_PNG)
    if dicom_seg and options.threshold is not None:
        enc += 0.125  # its packed frame, in the reply
        steps["dicom seg"] = DICOM_SEG * p
    held += int((enc + heat_reply) * p)
    name, peak = max(steps.items(), key=lambda kv: kv[1])
    return Cost(held, peak, name)


def path_bytes(shape: tuple[int, int], options: Options, **kwargs: int | tuple[int, int] | bool | None) -> int:
    """:func:`path_cost`'s total: the bytes a budget charges for one image."""
    return path_cost(shape, options, **kwargs).total  # type: ignore[arg-type]


def classify_bytes(shape: tuple[int, int], *, channels: int = 1) -> int:
    """Bytes of classifying one image of ``shape``: decoding it and bringing it to the
    model's input."""
    p = int(shape[0]) * int(shape[1]) * max(1, int(channels))
    return (DECODE + RESIZE) * p
