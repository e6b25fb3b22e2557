"""Images and masks as a caller sent them, before a pixel is decoded: the bytes of an
encoded file, or a raw array's dtype, shape and bytes.

An adapter turns its messages into :class:`Source` values (the gRPC codec does); what
they claim (:func:`claimed_shapes`) and their decoding under limits and a budget
(:func:`decode_sources`) are then the same for every adapter, and run wherever the
adapter's data plane puts them (an event loop, a pool thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from camseg.core.errors import InvalidInputError
from camseg.core.windowing import Windowing
from camseg.io import codecs
from camseg.io.guards import Budget, array_to_float
from camseg.io.inputs import decode_image, decode_mask, mask_from_array, read_header


@dataclass(frozen=True)
class Raw:
    """A raw array as sent: its dtype name, its shape and its bytes (unchecked)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class Source:
    """One image or mask as sent: ``encoded`` file bytes, or a ``raw`` array; neither is
    refused when it is decoded. ``name`` is how errors name it (``"image 0 (a)"``)."""

    name: str
    encoded: bytes | None = None
    raw: Raw | None = None


def claimed_shapes(sources: Sequence[Source]) -> list[tuple[int, int]]:
    """(height, width) each source claims, from headers and raw shapes alone (nothing
    decoded): what a reply's size is estimated from before any work. A source whose
    header cannot be read, or that carries nothing, counts as empty; decoding it will
    refuse it."""
    out = []
    for src in sources:
        try:
            if src.encoded is not None:
                h = read_header(src.encoded, src.name)
                out.append((h.height, h.width))
                continue
            if src.raw is not None and len(src.raw.shape) >= 2:
                out.append((max(src.raw.shape[0], 0), max(src.raw.shape[1], 0)))
                continue
        except InvalidInputError:
            pass
        out.append((0, 0))
    return out


def decode_source(src: Source, *, max_pixels: int, budget: Budget | None = None, mask: bool = False,
                  windowing: Windowing | None = None) -> npt.NDArray[Any]:
    """A float image in [0, 1] (``(H, W)`` or ``(H, W, 3)``), or a boolean ``mask`` (tumor
    where a stored value is non-zero in any channel), checked header first, then the
    budget, then the pixels; DICOM instances are windowed by ``windowing`` (default: per
    modality)."""
    if src.encoded is not None:
        arr: npt.NDArray[Any] = (
            decode_mask(src.encoded, name=src.name, max_pixels=max_pixels, budget=budget) if mask
            else decode_image(src.encoded, name=src.name, max_pixels=max_pixels, budget=budget, windowing=windowing))
        return arr
    if src.raw is not None:
        try:
            raw = codecs.raw_array(src.raw.dtype, src.raw.shape, src.raw.data, max_pixels=max_pixels, budget=budget,
                                   name=src.name)
            return mask_from_array(raw, src.name) if mask else array_to_float(raw, src.name)
        except InvalidInputError as exc:
            raise type(exc)(f"{src.name}: {exc.message.removeprefix(src.name + ': ')}") from None
    raise InvalidInputError(f"{src.name}: carries neither encoded bytes nor a raw array")


def decode_sources(sources: Sequence[Source], *, max_images: int, max_pixels: int, budget: Budget | None = None,
                   mask: bool = False, windowing: Windowing | None = None) -> list[npt.NDArray[Any]]:
    """:func:`decode_source` of each, after checking their count: none, or more than
    ``max_images``, is refused before anything is decoded."""
    if not sources:
        raise InvalidInputError("the request holds no images")
    if len(sources) > max_images:
        raise InvalidInputError(f"{len(sources)} images exceed the limit of {max_images} per request")
    return [decode_source(src, max_pixels=max_pixels, budget=budget, mask=mask, windowing=windowing)
            for src in sources]


def decode_truths(sources: Sequence[Source], n: int, *, max_images: int, max_pixels: int,
                  budget: Budget | None = None) -> list[npt.NDArray[Any]] | None:
    """Truth masks, one for each of ``n`` images, or None when none was sent; a count
    other than ``n`` is refused before anything is decoded."""
    if not sources:
        return None
    if len(sources) != n:
        raise InvalidInputError(f"{len(sources)} truth masks for {n} images")
    return decode_sources(sources, max_images=max_images, max_pixels=max_pixels, budget=budget, mask=True)
