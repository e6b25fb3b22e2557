"""The one input-validation layer: every image, mask, id and path that reaches camseg
from outside (a request, a data set, a command line) passes here.

Nothing from outside is trusted; the model repository is (see ``SECURITY.md``).

* **Images** are decoded only from the documented formats (PNG, JPEG, TIFF, and DICOM
  instances, recognised by their Part 10 preamble and windowed by :mod:`camseg.io.dicom`). The header
  is read first: format, size, page count and samples per pixel are checked before a
  single pixel is decoded, so a small file that claims a huge image (a decompression
  bomb) or a multi-page TIFF is refused for what it claims, not after it filled memory.
* **Budgets**: besides the per-image pixel limit, a :class:`Budget` caps the decoded
  values (height x width x channels) of a whole request, and a server may share one
  across its calls; a budget that would be exceeded raises
  :class:`~camseg.core.errors.ResourceExhaustedError` before decoding.
* **Ids** match :data:`ID_PATTERN` (no path separators, no leading dot), and every path
  built from one must resolve (symlinks followed) under its root: :func:`path_under`.

Every rejection is an :class:`~camseg.core.errors.InvalidInputError` (or
``ResourceExhaustedError`` for budgets) whose message names the input, never a
traceback.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile
from PIL import Image, UnidentifiedImageError

from camseg.core.errors import InvalidInputError
from camseg.core.limits import DEFAULT_MAX_PIXELS
from camseg.core.types import BoolArray, FloatArray
from camseg.core.windowing import Windowing
from camseg.io import dicom
from camseg.io.guards import Budget, Header, array_to_float, check_header, is_dicom

FORMATS = ("PNG", "JPEG", "TIFF")  # what Pillow and tifffile decode; DICOM goes to camseg.io.dicom
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


_PIL_SAMPLES = {"1": 1, "L": 1, "P": 3, "I": 1, "F": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "LA": 2, "La": 2,
                "PA": 4, "RGB": 3, "RGBA": 4, "RGBa": 4, "RGBX": 3, "CMYK": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}


def _source(data: bytes | Path) -> Any:
    return data if isinstance(data, Path) else io.BytesIO(data)


def _is_tiff(data: bytes | Path) -> bool:
    if isinstance(data, Path):
        with data.open("rb") as fh:
            head = fh.read(4)
    else:
        head = data[:4]
    return head in TIFF_MAGIC


def read_header(data: bytes | Path, name: str) -> Header:
    """Format, size, samples per pixel and pages (frames, for DICOM), from the header alone."""
    if is_dicom(data):

        return dicom.header(data, name)
    try:
        if _is_tiff(data):
            return _tiff_header(data, name)
        with Image.open(_source(data), formats=[f for f in FORMATS if f != "TIFF"]) as img:
            w, h = img.size
            return Header(str(img.format), int(h), int(w), _PIL_SAMPLES.get(img.mode, 4),
                          int(getattr(img, "n_frames", 1)))
    except InvalidInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f"{name}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise InvalidInputError(f"{name}: not a readable image (PNG, JPEG, TIFF or DICOM)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidInputError(f"{name}: not a readable image ({_short(exc)})") from None


def _tiff_header(data: bytes | Path, name: str) -> Header:
    try:
        with tifffile.TiffFile(_source(data)) as tf:
            pages = len(tf.pages)
            page = tf.pages.first
            shape = tuple(int(s) for s in page.shape)
            samples = int(getattr(page, "samplesperpixel", 1))
    except Exception as exc:  # tifffile raises many exception types on corrupt files
        raise InvalidInputError(f"{name}: not a readable TIFF ({_short(exc)})") from None
    if len(shape) == 3 and samples > 1:
        h, w = (shape[1], shape[2]) if shape[0] == samples else (shape[0], shape[1])
    elif len(shape) == 2:
        h, w = shape
    else:
        raise InvalidInputError(f"{name}: TIFF page of shape {shape} is not a 2-D image")
    return Header("TIFF", h, w, samples, pages)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


# ---------------------------------------------------------------------- decoding
def decode_pixels(data: bytes | Path, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                  budget: Budget | None = None, windowing: Windowing | None = None) -> npt.NDArray[Any]:
    """Decode a PNG/JPEG/TIFF to its stored values, unscaled, after checking its header
    (and charging ``budget``): ``(H, W)`` or ``(H, W, C)``.

    A DICOM instance has no display values of its own: it comes back windowed to float32
    in [0, 1] (``windowing``, default per modality; see :class:`camseg.core.windowing.Windowing`).
    """
    if is_dicom(data):

        return dicom.decode_instance(data, name=name, windowing=windowing, max_pixels=max_pixels, budget=budget)
    header = read_header(data, name)
    check_header(header, name, max_pixels)
    if budget is not None:
        budget.take(header.values, name)
    try:
        if header.format == "TIFF":
            arr = np.asarray(tifffile.imread(_source(data), key=0))
        else:
            with Image.open(_source(data), formats=[header.format]) as img:
                img.load()
                arr = _pil_array(img)
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f"{name}: refused as a decompression bomb ({exc})") from None
    except Exception as exc:  # decoders raise many types on corrupt or truncated data
        raise InvalidInputError(f"{name}: not a readable {header.format} image ({_short(exc)})") from None
    if arr.ndim == 3 and arr.shape[0] == header.samples and arr.shape[-1] != header.samples:
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF
    if arr.shape[:2] != (header.height, header.width):
        raise InvalidInputError(f"{name}: decoded {arr.shape[:2]} differs from its header "
                                f"{(header.height, header.width)}")
    return arr


def decode_image(data: bytes | Path, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                 budget: Budget | None = None, windowing: Windowing | None = None) -> FloatArray:
    """Decode PNG/JPEG/TIFF (8/16-bit, gray or RGB) or a single-frame DICOM instance
    (windowed) to float32 in [0, 1].

    Returns ``(H, W)`` for grayscale and ``(H, W, 3)`` for colour (alpha dropped).
    """
    return array_to_float(decode_pixels(data, name=name, max_pixels=max_pixels, budget=budget,
                                        windowing=windowing), name)


def decode_mask(data: bytes | Path, *, name: str = "mask", max_pixels: int = DEFAULT_MAX_PIXELS,
                budget: Budget | None = None) -> BoolArray:
    """A mask image: non-zero stored values (in any channel) are tumor, whatever the
    pixel type (a float mask is not rescaled first)."""
    return mask_from_array(decode_pixels(data, name=name, max_pixels=max_pixels, budget=budget), name)


def _pil_array(img: Image.Image) -> npt.NDArray[Any]:
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode == "I":
        arr = np.asarray(img, dtype=np.int32)
        return arr.astype(np.uint16) if arr.max(initial=0) > 255 else arr.astype(np.uint8)
    if img.mode in ("L", "RGB"):
        return np.asarray(img)
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    return np.asarray(img.convert("RGB" if "A" in img.mode or img.mode == "P" else "L"))


def mask_from_array(arr: npt.NDArray[Any], name: str = "mask") -> BoolArray:
    """``(H, W)`` or ``(H, W, C)`` values to a boolean mask: non-zero in any channel
    (alpha ignored)."""
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):  # alpha is opacity, not tumor
            arr = arr[..., :-1]
        arr = (arr != 0).any(axis=-1)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise InvalidInputError(f"{name}: expected a 2-D mask, got shape {tuple(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InvalidInputError(f"{name}: contains NaN or infinite values")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidInputError(f"{name}: unsupported pixel type {arr.dtype}")
    return np.asarray(arr != 0, dtype=bool)


