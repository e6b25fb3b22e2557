"""DICOM pixel data to modality values: decoding every frame, the Modality LUT or rescale,
MONOCHROME1 mirrored, the VOI window, and one single-frame instance decoded and windowed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom.pixels
from pydicom.dataset import Dataset
from pydicom.uid import UID

from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.core.limits import DEFAULT_MAX_PIXELS
from camseg.core.types import FloatArray
from camseg.core.windowing import Windowing, apply_window
from camseg.io.dicom.read import dataset_header, functional_group, read_dataset, reason
from camseg.io.guards import Budget, check_header

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Syntaxes newer than the installed pydicom knows by name.
_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}


def _syntax(ds: Dataset) -> UID:
    return UID(ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else "")


def _syntax_text(uid: UID) -> str:
    label = _SYNTAX_NAMES.get(str(uid), uid.name)
    return f"{label} ({uid})" if label != str(uid) else f"{uid} (unknown to pydicom)"


def _modality_lut(arr: npt.NDArray[Any], ds: Dataset, frame: int) -> npt.NDArray[np.float64]:
    """Stored values of ``frame`` to modality values."""
    transform = functional_group(ds, frame, "PixelValueTransformationSequence")
    if transform is not None and "RescaleSlope" in transform and "RescaleIntercept" in transform:
        out = arr.astype(np.float64) * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    else:
        out = np.asarray(pydicom.pixels.apply_modality_lut(arr, ds), dtype=np.float64)
    if ds.get("Modality") == "RTDOSE" and ds.get("DoseGridScaling") not in (None, ""):
        out = out * float(ds.DoseGridScaling)  # stored dose units to Gy
    return out


def _per_frame_transform(ds: Dataset) -> bool:
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    return bool(groups) and any("PixelValueTransformationSequence" in g for g in groups)


def _mirror(ds: Dataset, frame: int) -> float:
    """For MONOCHROME1: the sum of the modality values of the lowest and highest stored
    value, so ``mirror - v`` flips the value range onto itself."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0):
        extremes = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        extremes = np.array([0, 2**bits - 1], dtype=np.int64)
    values = _modality_lut(extremes, ds, frame)
    return float(values[0] + values[1])


def frames(ds: Dataset, name: str) -> FloatArray:
    """Every frame's modality values, float32 ``(F, R, C)`` (``(F, R, C, 3)`` for colour).

    Monochrome: the stored values through the Modality LUT or RescaleSlope/Intercept
    (per frame where the functional groups carry a PixelValueTransformationSequence), RT
    Dose's DoseGridScaling applied, MONOCHROME1 mirrored (see the module docstring).
    Colour: YBR converted to RGB, PALETTE COLOR through its LUT, stored values kept.

    Raises:
        InvalidInputError: ``<name>: no pixel data``; pixel data that does not decode.
        UnsupportedError: a transfer syntax no installed decoder handles (named with its UID).
    """
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise InvalidInputError(f"{name}: no pixel data")
    syntax = _syntax(ds)
    if not syntax:
        raise InvalidInputError(f"{name}: no TransferSyntaxUID to decode its pixel data with")
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError:
        raise UnsupportedError(f"{name}: no decoder for transfer syntax {_syntax_text(syntax)}") from None
    if not decoder.is_available:
        raise UnsupportedError(f"{name}: no installed decoder plugin for transfer syntax {_syntax_text(syntax)}")
    try:
        arr, meta = decoder.as_array(ds)  # as_rgb is on by default: YBR comes back RGB
        photometric = str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
        if photometric.startswith("YBR"):
            arr = pydicom.pixels.convert_color_space(arr, photometric, "RGB")
            photometric = "RGB"
        nframes = int(meta.get("number_of_frames", 1) or 1)
        samples = int(meta.get("samples_per_pixel", 1) or 1)
        if photometric == "PALETTE COLOR":
            arr = pydicom.pixels.apply_color_lut(arr, ds)
            samples = 3
    except (InvalidInputError, UnsupportedError):
        raise
    except Exception as exc:  # decoders raise many types on corrupt or truncated data
        raise InvalidInputError(f"{name}: pixel data does not decode ({reason(exc)})") from None
    plane_ndim = 2 if samples == 1 else 3
    if arr.ndim == plane_ndim:
        arr = arr[np.newaxis]
    if arr.ndim != plane_ndim + 1 or arr.shape[0] != nframes or (samples > 1 and arr.shape[-1] != 3):
        raise InvalidInputError(f"{name}: decoded pixel data of shape {tuple(arr.shape)} is not {nframes} frame(s) "
                                f"of {samples} sample(s) per pixel")
    if samples > 1:
        return np.ascontiguousarray(arr, dtype=np.float32)
    out = np.empty(arr.shape, dtype=np.float32)
    per_frame = _per_frame_transform(ds)
    try:
        for f in range(nframes):
            # Frame by frame: a float64 rescale of a whole multi-frame volume would double its memory.
            index = f if per_frame else 0
            values = _modality_lut(arr[f], ds, index)
            out[f] = _mirror(ds, index) - values if photometric == "MONOCHROME1" else values
    except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
        raise InvalidInputError(f"{name}: bad Modality LUT or rescale ({reason(exc)})") from None
    return out


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0]) if len(value) else None


def voi(ds: Dataset) -> tuple[float, float] | None:
    """``(center, width)`` of the first WindowCenter/WindowWidth (top level, else the
    FrameVOILUTSequence of the shared or first frame's functional groups), where present,
    finite and ``width > 0``; None otherwise. For MONOCHROME1 the center is mirrored like
    the values :func:`frames` returns, so the window selects the same tissue."""
    source: Dataset | None = ds if "WindowCenter" in ds and "WindowWidth" in ds else functional_group(
        ds, 0, "FrameVOILUTSequence")
    if source is None:
        return None
    try:
        center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
        if center is None or width is None or not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
            return None
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            center = _mirror(ds, 0) - center
    except (TypeError, ValueError):
        return None
    return center, width


def decode_instance(data: bytes | Path, *, name: str = "image", windowing: Windowing | None = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS, budget: Budget | None = None) -> FloatArray:
    """One single-frame instance -> float32 ``(R, C)`` or ``(R, C, 3)`` in ``[0, 1]``,
    windowed (default ``auto`` for its Modality).

    The header is read and checked first (:func:`camseg.io.guards.check_header`: a
    multi-frame instance is refused as ``pages > 1``, the pixel limit) and ``budget``
    charged (three values per pixel for PALETTE COLOR) before the pixel data is even read.

    Raises:
        InvalidInputError, UnsupportedError: as :func:`read_dataset` and :func:`frames`.
        ResourceExhaustedError: the budget is spent.
    """
    head = read_dataset(data, name, pixels=False)
    hdr = dataset_header(head, name)
    check_header(hdr, name, max_pixels)
    if budget is not None:
        palette = head.get("PhotometricInterpretation") == "PALETTE COLOR"
        budget.take(hdr.pixels * 3 if palette else hdr.values, name)
    ds = read_dataset(data, name)
    values = frames(ds, name)[0]
    return apply_window(values, windowing or Windowing("auto"), modality=str(ds.get("Modality", "")), voi=voi(ds))


