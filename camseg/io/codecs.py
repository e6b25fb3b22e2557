"""Encodings of images and masks, written once for every caller.

* PNG: 8-bit gray, 16-bit gray (``uint16`` becomes ``I;16``), RGB; booleans as 0/255;
  compression level 1, since masks and overlays are written on hot paths and level 1
  costs little size.
* Packed bits: the row-major mask, 8 pixels a byte, most significant bit first
  (``numpy.packbits``); the shape travels beside it.
* Run lengths: alternating background and foreground runs of the row-major mask,
  starting with a (possibly empty) background run.
* Raw arrays: ``(H, W)`` or ``(H, W, 1|3)`` of a named dtype, decoded to float in [0, 1].

>>> import numpy as np
>>> m = np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)
>>> run_lengths(m)
[0, 2, 2, 2]
>>> bool((from_run_lengths(run_lengths(m), m.shape) == m).all())
True
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from camseg.core.errors import InvalidInputError, shown
from camseg.core.types import BoolArray, FloatArray
from camseg.io.guards import Budget, array_to_float

RAW_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")


def encode_png(arr: npt.NDArray[Any]) -> bytes:
    """PNG bytes of a gray (uint8/uint16/bool) or RGB uint8 array."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_png(path: Path, arr: npt.NDArray[Any]) -> None:
    """Write :func:`encode_png` of ``arr`` to ``path`` (inside a directory being built)."""
    Path(path).write_bytes(encode_png(arr))


def packed_bits(mask: BoolArray) -> bytes:
    return np.packbits(mask.ravel()).tobytes()


def unpack_bits(data: bytes, shape: Sequence[int]) -> BoolArray:
    """Inverse of :func:`packed_bits`."""
    n = int(np.prod(shape))
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    if bits.size < n:
        raise InvalidInputError(f"packed mask holds {bits.size} bits; shape {tuple(shape)} needs {n}")
    return bits[:n].reshape(tuple(shape)).astype(bool)


def run_lengths(mask: BoolArray) -> list[int]:
    """Run lengths of the row-major mask, alternating background and foreground, starting
    with a (possibly empty) background run."""
    flat = mask.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def from_run_lengths(runs: Sequence[int], shape: tuple[int, int]) -> BoolArray:
    """Inverse of :func:`run_lengths`."""
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(shape)


def raw_to_image(dtype: str, shape: Sequence[int], data: bytes, *, max_pixels: int,
                 budget: Budget | None = None) -> FloatArray:
    """A raw ``(H, W)`` or ``(H, W, C)`` array (C in 1, 3) to float in [0, 1]."""
    return array_to_float(raw_array(dtype, shape, data, max_pixels=max_pixels, budget=budget), "raw image")


def raw_array(dtype: str, shape: Sequence[int], data: bytes, *, max_pixels: int,
              budget: Budget | None = None, name: str = "raw image") -> npt.NDArray[Any]:
    """A raw ``(H, W)`` or ``(H, W, C)`` array (C in 1, 3), checked, values as sent; the
    values are charged to ``budget``."""
    if dtype not in RAW_DTYPES:
        raise InvalidInputError(f"raw image dtype {shown(dtype)} is not one of {', '.join(RAW_DTYPES)}")
    if len(shape) not in (2, 3):
        raise InvalidInputError(f"raw image shape has {len(shape)} dimensions, not (H, W) or (H, W, 1|3)")
    dims = tuple(int(s) for s in shape)
    if min(dims) < 1 or (len(dims) == 3 and dims[2] not in (1, 3)):
        raise InvalidInputError(f"raw image shape {dims} is not (H, W) or (H, W, 1|3)")
    if dims[0] * dims[1] > max_pixels:
        raise InvalidInputError(f"image of {dims[0]}x{dims[1]} pixels exceeds the limit of {max_pixels}")
    if budget is not None:
        budget.take(int(np.prod(dims)), name)
    expected = int(np.prod(dims)) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise InvalidInputError(
            f"raw image data has {len(data)} bytes; dtype {dtype} and shape {dims} need {expected}")
    return np.frombuffer(data, dtype=dtype).reshape(dims)
