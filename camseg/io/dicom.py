"""DICOM in and out: instances and series to modality values with a plane geometry, windowing
to ``[0, 1]``, and tumor masks back out as DICOM SEG, NIfTI or NRRD.

Conventions
-----------
* **Arrays**: a volume is ``(N, R, C)`` = (slices or frames, rows, columns), as SimpleITK's
  ``GetArrayFromImage`` gives it; colour volumes are ``(N, R, C, 3)`` RGB.
* **Values** are modality values, float32: the stored values through the Modality LUT or
  Rescale Slope/Intercept (HU for CT), RT Dose's DoseGridScaling applied (Gy). MONOCHROME1
  images are mirrored within their value range so bright always means dense, and their
  VOI window centre is mirrored the same way (:func:`voi`). Colour (RGB, YBR converted to
  RGB, PALETTE COLOR through its LUT) keeps its stored values.
* **World** coordinates are DICOM patient LPS, mm. Voxel ``(i, j, k)`` = (column, row,
  slice) sits at ``origin + direction @ (spacing * [i, j, k])`` (:class:`Geometry`). DICOM's
  PixelSpacing is (row spacing, column spacing), so the column step ``i`` is
  ``PixelSpacing[1]`` and the row step ``j`` is ``PixelSpacing[0]``. NIfTI's RAS affine is
  ``diag(-1, -1, 1, 1) @ affine``.
* **Windowing** (:class:`Windowing`) is DICOM's linear window without its half-unit
  offsets: ``lo = center - width / 2``, ``hi = center + width / 2``, clipped.
* **Input is not trusted**: a file must be DICOM Part 10 ('DICM' at byte 128); truncation is
  detected (pydicom itself reads a truncated file silently), headers are checked before
  any pixel is decoded, and every problem is one :class:`~camseg.core.errors.InvalidInputError`
  (or :class:`~camseg.core.errors.UnsupportedError` for a transfer syntax no installed decoder
  handles) whose one-line message names the instance.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.pixels
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

import camseg
from camseg.core.errors import InvalidInputError, NotFoundError, UnsupportedError, shown
from camseg.core.limits import DEFAULT_MAX_PIXELS
from camseg.core.types import FloatArray
from camseg.core.windowing import (
    Windowing,
    apply_window,
)
from camseg.io.guards import Budget, Header, check_header, is_dicom
from camseg.io.volume import read_volume, volume_stem

logger = logging.getLogger(__name__)


"""Window presets, name -> (center, width) in modality units (HU for CT)."""

"""Robust window of a whole series, in percent."""

ORIENTATION_TOLERANCE = 1e-4
"""Largest difference of two instances' direction cosines still taken as one orientation."""
SPACING_TOLERANCE_MM = 0.01
"""Slice gaps may differ from their median by max(1 % of it, this)."""

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# Syntaxes newer than the installed pydicom knows by name.
_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


# ---------------------------------------------------------------------- reading
class _Truncated(Exception):
    """The file ends inside a data element."""


class _Watched(io.RawIOBase):
    """A read-only file that notices short reads (truncation) and never reads past its end,
    so a hostile length field cannot make the reader allocate more than the file holds."""

    def __init__(self, fh: BinaryIO, size: int, name: str) -> None:
        super().__init__()
        self._fh = fh
        self.size = size
        self.name = name
        self.short = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return self._fh.read()
        left = max(0, self.size - self._fh.tell())
        data = self._fh.read(min(n, left))
        # Zero bytes for an 8-byte read is the clean end of a data set (pydicom reads tags 8 at a time).
        if n > 0 and len(data) < n and not (len(data) == 0 and n == 8):
            self.short = True
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


def read_dataset(data: bytes | Path, name: str, *, pixels: bool = True) -> Dataset:
    """Parse one DICOM Part 10 instance.

    ``pixels=False`` stops before the pixel data (headers only; the pixel data element's
    declared length is still checked against the file size). Pixel data is never decoded
    here.

    Raises:
        NotFoundError: ``data`` is a path that does not exist.
        InvalidInputError: not DICOM Part 10 (no 'DICM'), truncated, or unparseable; the
            message names ``name``.
    """
    if isinstance(data, Path) and not data.is_file():
        raise NotFoundError(f"{name}: no such file")
    if not is_dicom(data):
        raise InvalidInputError(f"{name}: not a DICOM file (no 'DICM' at byte 128)")
    try:
        with data.open("rb") if isinstance(data, Path) else io.BytesIO(data) as fh:
            size = os.fstat(fh.fileno()).st_size if isinstance(data, Path) else len(data)
            watched = _Watched(fh, size, name)
            ds = pydicom.dcmread(watched, stop_before_pixels=not pixels)
            if not pixels and not watched.short:
                _check_pixel_length(watched, ds)
    except (InvalidInputError, NotFoundError):
        raise
    except _Truncated:
        raise InvalidInputError(f"{name}: truncated DICOM file (its pixel data runs past the end)") from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise InvalidInputError(f"{name}: not a readable DICOM file ({_short(exc)})") from None
    if watched.short:
        raise InvalidInputError(f"{name}: truncated DICOM file (it ends inside a data element)")
    # Keep no reference to the (closed) source: for bytes it would hold the whole file, pixels included.
    ds.buffer, ds.fileobj_type = None, None
    ds.filename = str(data) if isinstance(data, Path) else None
    if "TransferSyntaxUID" not in ds.file_meta:
        raise InvalidInputError(f"{name}: not a readable DICOM file (no TransferSyntaxUID in its file meta)")
    return ds


def _check_pixel_length(fh: _Watched, ds: Dataset) -> None:
    """After a read that stopped before the pixel data: its declared length fits the file."""
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    if syntax == DeflatedExplicitVRLittleEndian or not syntax.is_transfer_syntax:
        return  # the stream pydicom read is not this file's bytes
    start = fh.tell()
    head = fh.read(12)
    fh.short = False
    if len(head) < 8:
        return
    order: Literal["little", "big"] = "little" if syntax.is_little_endian else "big"
    tag = int.from_bytes(head[0:2], order) << 16 | int.from_bytes(head[2:4], order)
    if tag not in _PIXEL_TAGS:
        return
    if syntax.is_implicit_VR:
        length, offset = int.from_bytes(head[4:8], order), 8
    elif head[4:6] in _LONG_LENGTH_VRS and len(head) == 12:
        length, offset = int.from_bytes(head[8:12], order), 12
    else:
        length, offset = int.from_bytes(head[6:8], order), 8
    if length != 0xFFFFFFFF and start + offset + length > fh.size:
        raise _Truncated


def _int(ds: Dataset, keyword: str, default: int | None, name: str) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise InvalidInputError(f"{name}: no {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}: {keyword} {shown(value)} is not a number") from None


def dataset_header(ds: Dataset, name: str) -> Header:
    """:func:`header` of a dataset already parsed (with or without its pixel data)."""
    if "Rows" not in ds or "Columns" not in ds:
        raise InvalidInputError(f"{name}: no pixel data (no Rows or Columns: not an image)")
    return Header(format="DICOM", height=_int(ds, "Rows", None, name), width=_int(ds, "Columns", None, name),
                  samples=_int(ds, "SamplesPerPixel", 1, name), pages=_int(ds, "NumberOfFrames", 1, name))


def header(data: bytes | Path, name: str) -> Header:
    """``Header(format="DICOM", height=Rows, width=Columns, samples=SamplesPerPixel,
    pages=NumberOfFrames or 1)`` from the header alone (no pixel decoding).

    Raises:
        InvalidInputError: as :func:`read_dataset`, or no Rows/Columns (not an image).
    """
    return dataset_header(read_dataset(data, name, pixels=False), name)


# ---------------------------------------------------------------------- pixels
def _syntax(ds: Dataset) -> UID:
    return UID(ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else "")


def _syntax_text(uid: UID) -> str:
    label = _SYNTAX_NAMES.get(str(uid), uid.name)
    return f"{label} ({uid})" if label != str(uid) else f"{uid} (unknown to pydicom)"


def _groups(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword`` for ``frame``: per-frame, else shared."""
    for seq, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(seq)
        if groups is not None and len(groups) > index:
            inner = groups[index].get(keyword)
            if inner is not None and len(inner) > 0:
                item: Dataset = inner[0]
                return item
    return None


def _modality_lut(arr: npt.NDArray[Any], ds: Dataset, frame: int) -> npt.NDArray[np.float64]:
    """Stored values of ``frame`` to modality values."""
    transform = _groups(ds, frame, "PixelValueTransformationSequence")
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
        raise InvalidInputError(f"{name}: pixel data does not decode ({_short(exc)})") from None
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
        raise InvalidInputError(f"{name}: bad Modality LUT or rescale ({_short(exc)})") from None
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
    source: Dataset | None = ds if "WindowCenter" in ds and "WindowWidth" in ds else _groups(
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


# ---------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Where voxel ``(i=column, j=row, k=slice)`` sits in LPS mm:
    ``world = origin + direction @ (spacing * [i, j, k])``.

    ``direction``'s columns are the unit LPS vectors of ``i``, ``j``, ``k`` (stored as rows
    of the 3x3 matrix: ``np.array(direction)[:, 0]`` is the ``i`` direction). The slice
    direction need not be normal to the plane (a gantry-tilted stack).
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """4x4 voxel ``(i, j, k, 1)`` -> LPS mm."""
        out = np.eye(4)
        out[:3, :3] = np.asarray(self.direction, dtype=np.float64) * np.asarray(self.spacing, dtype=np.float64)
        out[:3, 3] = self.origin
        return out

    @property
    def ras_affine(self) -> npt.NDArray[np.float64]:
        """4x4 voxel -> RAS mm (NIfTI): ``diag(-1, -1, 1, 1) @ affine``."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine

    @classmethod
    def from_affine(cls, affine_lps: npt.ArrayLike) -> Geometry:
        """The geometry of a 4x4 (or 3x4) LPS affine; spacing is each column's length.

        Raises:
            InvalidInputError: not 4x4/3x4, not finite, or a zero column.
        """
        a = np.asarray(affine_lps, dtype=np.float64)
        if a.shape not in ((4, 4), (3, 4)) or not np.isfinite(a).all():
            raise InvalidInputError(f"affine: expected a finite 4x4 matrix, got shape {a.shape}")
        steps = a[:3, :3]
        spacing = np.linalg.norm(steps, axis=0)
        if not (spacing > 0).all():
            raise InvalidInputError(f"affine: an index axis has a zero step ({steps.tolist()})")
        return cls.make(a[:3, 3], spacing, steps / spacing)

    @classmethod
    def make(cls, origin: npt.ArrayLike, spacing: npt.ArrayLike, direction: npt.ArrayLike) -> Geometry:
        """From arrays: origin (3,), spacing (3,), direction 3x3 with unit columns."""
        o = np.asarray(origin, dtype=np.float64).reshape(3)
        s = np.asarray(spacing, dtype=np.float64).reshape(3)
        d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        return cls(origin=(float(o[0]), float(o[1]), float(o[2])), spacing=(float(s[0]), float(s[1]), float(s[2])),
                   direction=tuple((float(r[0]), float(r[1]), float(r[2])) for r in d))


# ---------------------------------------------------------------------- series
@dataclass
class Series:
    """One image series: modality values and where they sit.

    ``datasets`` are the source instances in slice order without their pixel data: each
    header as read up to the pixel data element, every attribute a DICOM SEG references
    kept (:func:`segmentation` needs no pixels); ``[]`` for a volume file.
    """

    uid: str
    name: str
    modality: str
    values: FloatArray
    geometry: Geometry | None
    datasets: list[Dataset]
    voi: tuple[float, float] | None = None
    source: Path | None = None

    def windowed(self, windowing: Windowing | None = None) -> FloatArray:
        """The values in ``[0, 1]`` (default ``auto``), percentiles over the whole series."""
        return apply_window(self.values, windowing or Windowing("auto"), modality=self.modality, voi=self.voi)


@dataclass(frozen=True)
class SeriesFiles:
    """The files of one series found by :func:`scan`."""

    uid: str
    files: tuple[Path, ...]
    modality: str
    description: str


def _safe(text: str, fallback: str = "series") -> str:
    """A file-name-safe form of ``text``: letters, digits, ``.``, ``_``, ``-``."""
    return _SAFE.sub("_", text).strip("._-")[:200] or fallback


def scan(paths: Path | Sequence[Path]) -> tuple[list[SeriesFiles], list[tuple[Path, str]]]:
    """Every DICOM Part 10 file under the given files and folders (recursively), headers
    only, grouped by SeriesInstanceUID; groups in uid order, files sorted by path.

    Files without 'DICM' at byte 128 are ignored (READMEs, DICOMDIR-less junk, JPEGs).
    Files that are DICOM but cannot be parsed (damaged, truncated) or lack a
    SeriesInstanceUID come back in the second list as ``(path, one-line reason)``; the
    other series go on.

    Raises:
        NotFoundError: a given path does not exist.
    """
    roots = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    candidates: list[Path] = []
    for root in roots:
        if root.is_dir():
            candidates.extend(p for p in root.rglob("*") if p.is_file())
        elif root.is_file():
            candidates.append(root)
        else:
            raise NotFoundError(f"{root}: no such file or folder")
    groups: dict[str, list[Path]] = {}
    described: dict[str, tuple[str, str]] = {}  # uid -> (modality, description) of its first file
    failures: list[tuple[Path, str]] = []
    skipped = 0
    for path in sorted(set(candidates)):
        if not is_dicom(path):
            skipped += 1
            continue
        try:
            ds = read_dataset(path, str(path), pixels=False)
        except (InvalidInputError, NotFoundError) as exc:
            failures.append((path, exc.message))
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if not uid:
            failures.append((path, f"{path}: no SeriesInstanceUID"))
            continue
        groups.setdefault(uid, []).append(path)
        described.setdefault(uid, (str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or "")))
    series = [SeriesFiles(uid=uid, files=tuple(members), modality=described[uid][0], description=described[uid][1])
              for uid, members in sorted(groups.items())]
    logger.info("scanned %d files: %d series, %d failures, %d not DICOM", len(candidates), len(series),
                len(failures), skipped)
    return series, failures


def _floats(ds: Dataset | None, keyword: str, n: int, name: str) -> npt.NDArray[np.float64] | None:
    """``n`` finite numbers of ``keyword``, or None where absent or empty."""
    if ds is None:
        return None
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        out = np.asarray([float(v) for v in (value if hasattr(value, "__len__") and not isinstance(value, str)
                                             else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}: {keyword} {shown(value)} is not {n} numbers") from None
    if out.shape != (n,) or not np.isfinite(out).all():
        raise InvalidInputError(f"{name}: {keyword} {shown(value)} is not {n} finite numbers")
    return out


def _cosines(iop: npt.NDArray[np.float64], name: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    row, col = iop[:3], iop[3:]
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        raise InvalidInputError(f"{name}: ImageOrientationPatient {iop.tolist()} has a zero vector")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-3:
        raise InvalidInputError(f"{name}: ImageOrientationPatient {iop.tolist()} is not two orthogonal vectors")
    return row, col


def _pixel_spacing(ds: Dataset, name: str, frame: int = 0) -> tuple[float, float]:
    """(column step, row step) in mm: PixelSpacing swapped; ImagerPixelSpacing, else 1 mm."""
    for source, keyword in ((_groups(ds, frame, "PixelMeasuresSequence"), "PixelSpacing"), (ds, "PixelSpacing"),
                            (ds, "ImagerPixelSpacing")):
        ps = _floats(source, keyword, 2, name)
        if ps is not None:
            if not (ps > 0).all():
                raise InvalidInputError(f"{name}: {keyword} {ps.tolist()} is not positive")
            return float(ps[1]), float(ps[0])
    return 1.0, 1.0


def _plane(ds: Dataset, name: str, frame: int = 0) -> tuple[npt.NDArray[np.float64] | None,
                                                            npt.NDArray[np.float64] | None]:
    """(ImagePositionPatient, ImageOrientationPatient) of ``frame``: functional groups,
    else the top level."""
    ipp = _floats(_groups(ds, frame, "PlanePositionSequence"), "ImagePositionPatient", 3, name)
    iop = _floats(_groups(ds, frame, "PlaneOrientationSequence"), "ImageOrientationPatient", 6, name)
    if ipp is None:
        ipp = _floats(ds, "ImagePositionPatient", 3, name)
    if iop is None:
        iop = _floats(ds, "ImageOrientationPatient", 6, name)
    return ipp, iop


def _mm(x: float) -> str:
    return f"{round(float(x), 4):g}"


def _check_gaps(proj: npt.NDArray[np.float64], names: Sequence[str], label: str) -> float:
    """The common slice step of positions ``proj`` (in order) along the normal; raises
    where two share a position or a gap differs from the median."""
    gaps = np.diff(proj)
    for g, (one, two) in zip(gaps, itertools.pairwise(names), strict=True):
        if abs(g) < SPACING_TOLERANCE_MM:
            raise InvalidInputError(f"{label}: {one} and {two} are at one position ({_mm(abs(g))} mm apart along "
                                    "the normal)")
    median = float(np.median(gaps))
    tolerance = max(0.01 * abs(median), SPACING_TOLERANCE_MM)
    bad = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if bad.size:
        b = int(bad[0])
        good = np.flatnonzero(np.abs(gaps - median) <= tolerance)
        ref = int(good[np.argmin(np.abs(good - b))]) if good.size else (b + 1 if b + 1 < gaps.size else b - 1)
        first, second = sorted((ref, b))
        raise InvalidInputError(
            f"{label}: inconsistent slice spacing: {_mm(abs(gaps[first]))} mm between {names[first]} and "
            f"{names[first + 1]}, {_mm(abs(gaps[second]))} mm between {names[second]} and {names[second + 1]}")
    return median


def _stack_geometry(positions: npt.NDArray[np.float64], row: npt.NDArray[np.float64],
                    col: npt.NDArray[np.float64], columns_rows: tuple[float, float], names: Sequence[str],
                    label: str) -> Geometry:
    """The geometry of planes at ``positions`` (in index order) with one orientation."""
    along = np.cross(row, col)
    _check_gaps(positions @ along, names, label)
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    off_line = np.linalg.norm(positions - (positions[0] + np.outer(np.arange(len(positions)), step)), axis=1)
    if off_line.max() > max(0.01 * float(np.linalg.norm(step)), SPACING_TOLERANCE_MM):
        logger.warning("%s: slice positions are up to %.3g mm off a straight line; geometry approximates them",
                       label, float(off_line.max()))
    length = float(np.linalg.norm(step))
    return Geometry.make(positions[0], (*columns_rows, length), np.stack([row, col, step / length], axis=1))


def _single_geometry(ds: Dataset, name: str) -> Geometry | None:
    ipp, iop = _plane(ds, name)
    if ipp is None or iop is None:
        return None
    row, col = _cosines(iop, name)
    thickness = 1.0
    for keyword in ("SliceThickness", "SpacingBetweenSlices"):
        value = _floats(_groups(ds, 0, "PixelMeasuresSequence"), keyword, 1, name)
        value = value if value is not None else _floats(ds, keyword, 1, name)
        if value is not None and value[0] > 0:
            thickness = float(value[0])
            break
    return Geometry.make(ipp, (*_pixel_spacing(ds, name), thickness), np.stack([row, col, np.cross(row, col)], 1))


def _multiframe_geometry(ds: Dataset, nframes: int, name: str, label: str) -> Geometry | None:
    """Per-frame functional groups, else IPP + IOP + GridFrameOffsetVector (RT Dose), else None."""
    frame_names = [f"frame {f + 1}" for f in range(nframes)]
    where = f"{label} ({name})"
    if _groups(ds, 0, "PlanePositionSequence") is not None:
        planes = [_plane(ds, name, f) for f in range(nframes)]
        if any(ipp is None or iop is None for ipp, iop in planes):
            return None
        iops = np.stack([iop for _, iop in planes if iop is not None])
        if np.abs(iops - iops[0]).max() > ORIENTATION_TOLERANCE:
            f = int(np.flatnonzero(np.abs(iops - iops[0]).max(axis=1) > ORIENTATION_TOLERANCE)[0])
            raise InvalidInputError(f"{where}: frames 1 and {f + 1} differ in ImageOrientationPatient")
        row, col = _cosines(iops[0], name)
        positions = np.stack([ipp for ipp, _ in planes if ipp is not None])
        return _stack_geometry(positions, row, col, _pixel_spacing(ds, name), frame_names, where)
    ipp, iop = _plane(ds, name)
    offsets = ds.get("GridFrameOffsetVector")
    if ipp is None or iop is None or offsets is None or offsets == "":
        return None
    offsets_mm = _floats(ds, "GridFrameOffsetVector", nframes, name)
    assert offsets_mm is not None
    row, col = _cosines(iop, name)
    # A first offset of 0 means offsets relative to IPP; otherwise they are absolute z (axial only),
    # and IPP is frame 1's position, so relative offsets are the differences from the first.
    relative = offsets_mm - offsets_mm[0]
    positions = ipp + np.outer(relative, np.cross(row, col))
    return _stack_geometry(positions, row, col, _pixel_spacing(ds, name), frame_names, where)


def load_series(files: Sequence[Path], name: str | None = None) -> Series:
    """One series from its files.

    * All files share one SeriesInstanceUID (``mixed series: ...`` otherwise); every
      instance has pixel data of one Rows/Columns/samples.
    * One multi-frame instance: frames in stored order; geometry from the per-frame
      functional groups (PlanePosition/PlaneOrientation/PixelMeasures, shared or per
      frame), else ImagePositionPatient + ImageOrientationPatient + GridFrameOffsetVector
      (RT Dose), else None. Frame positions must be evenly spaced.
    * Several single-frame instances: one ImageOrientationPatient (within 1e-4), slices
      sorted along the normal ``cross(row cosines, column cosines)`` by the projection of
      ImagePositionPatient; two slices at one position, or a gap off the median by more
      than max(1 %, 0.01 mm), is refused naming the instances. The slice step is the mean
      step between first and last position (along the normal unless the stack is tilted).
    * One single-frame instance: geometry from IPP/IOP/PixelSpacing where present (slice
      step SliceThickness, else SpacingBetweenSlices, else 1 mm), else None.
    * PixelSpacing missing: ImagerPixelSpacing, else 1 mm.

    ``name`` (default: the uid) names the series in messages; ``Series.name`` is its safe
    file-name form. ``Series.datasets`` are the instances' headers in slice order, read up to
    the pixel data (so without it, and without anything a file stores after it).

    Raises:
        InvalidInputError: any of the above, or an unreadable instance (named).
        UnsupportedError: several multi-frame instances; an undecodable transfer syntax.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise InvalidInputError(f"{name or 'series'}: no files")
    # Headers first: a series is checked and ordered before any file's pixel data is read.
    headers = [read_dataset(p, str(p), pixels=False) for p in paths]
    uids = [str(ds.get("SeriesInstanceUID", "") or "") for ds in headers]
    distinct = sorted(set(uids))
    if len(distinct) > 1:
        examples = ", ".join(f"{u or '(none)'} ({paths[uids.index(u)]})" for u in distinct[:3])
        more = f" and {len(distinct) - 3} more" if len(distinct) > 3 else ""
        raise InvalidInputError(f"mixed series: {len(distinct)} SeriesInstanceUIDs in {len(paths)} files: "
                                f"{examples}{more}; load one series at a time (scan() groups them)")
    uid = distinct[0]
    label = f"series {shown(name, quoted=False)}" if name else f"series {uid or '(no SeriesInstanceUID)'}"
    shapes = [dataset_header(ds, str(p)) for p, ds in zip(paths, headers, strict=True)]
    first = shapes[0]
    for hdr, p in zip(shapes[1:], paths[1:], strict=True):
        if (hdr.height, hdr.width, hdr.samples) != (first.height, first.width, first.samples):
            raise InvalidInputError(f"{label}: {p} is {hdr.width}x{hdr.height}x{hdr.samples}, {paths[0]} is "
                                    f"{first.width}x{first.height}x{first.samples} (columns x rows x samples)")

    geometry: Geometry | None
    if len(paths) == 1:
        ordered, ordered_paths = headers, paths
        if first.pages > 1:
            geometry = _multiframe_geometry(headers[0], first.pages, str(paths[0]), label)
        else:
            geometry = _single_geometry(headers[0], str(paths[0]))
    else:
        multi = [p for hdr, p in zip(shapes, paths, strict=True) if hdr.pages > 1]
        if multi:
            raise UnsupportedError(f"{label}: {len(paths)} instances including multi-frame {multi[0]}; "
                                   "load one multi-frame instance at a time")
        planes = [_plane(ds, str(p)) for p, ds in zip(paths, headers, strict=True)]
        for (ipp, iop), p in zip(planes, paths, strict=True):
            if ipp is None or iop is None:
                raise InvalidInputError(f"{label}: {p} has no ImagePositionPatient/ImageOrientationPatient, needed to "
                                        "order the slices of a series of several instances")
        iops = np.stack([iop for _, iop in planes if iop is not None])
        off = np.abs(iops - iops[0]).max(axis=1)
        if off.max() > ORIENTATION_TOLERANCE:
            other = int(np.argmax(off > ORIENTATION_TOLERANCE))
            raise InvalidInputError(f"{label}: {paths[0]} and {paths[other]} differ in ImageOrientationPatient "
                                    f"({iops[0].tolist()} vs {iops[other].tolist()})")
        row, col = _cosines(iops[0], str(paths[0]))
        positions = np.stack([ipp for ipp, _ in planes if ipp is not None])
        order = np.argsort(positions @ np.cross(row, col), kind="stable")
        ordered = [headers[i] for i in order]
        ordered_paths = [paths[i] for i in order]
        spacings = sorted({_pixel_spacing(ds, str(p)) for ds, p in zip(ordered, ordered_paths, strict=True)})
        if np.ptp(np.array(spacings), axis=0).max() > 1e-4:
            raise InvalidInputError(f"{label}: instances differ in PixelSpacing ({spacings})")
        geometry = _stack_geometry(positions[order], row, col, spacings[0], [str(p) for p in ordered_paths], label)

    values: FloatArray | None = None
    for n, p in enumerate(ordered_paths):
        # One instance's pixel data in memory at a time; the header datasets are what the Series keeps.
        decoded = frames(read_dataset(p, str(p)), str(p))
        if len(ordered_paths) == 1:
            values = decoded
        else:
            if values is None:
                values = np.empty((len(ordered_paths), *decoded.shape[1:]), dtype=np.float32)
            values[n] = decoded[0]
    assert values is not None
    modality = str(ordered[0].get("Modality", "") or "")
    logger.info("loaded %s: %d instances, values %s, modality %s, geometry %s", label, len(ordered),
                values.shape, modality or "-", "yes" if geometry else "none")
    return Series(uid=uid, name=_safe(name or uid), modality=modality, values=values, geometry=geometry,
                  datasets=list(ordered), voi=voi(ordered[len(ordered) // 2]))


def load_volume(path: Path) -> Series:
    """An NRRD/NIfTI image volume as a :class:`Series`: values ``(N=k, R=j, C=i)`` from
    :func:`camseg.io.volume.read_volume`'s ``(i, j, k)`` array, geometry from its header
    (LPS directions, spacing and origin; identity directions where the file has none),
    modality ``""``, datasets ``[]``, uid the file's name stem.

    Raises:
        NotFoundError, InvalidInputError: as ``read_volume``; a zero-length direction.
    """

    path = Path(path)
    arr, info = read_volume(path)
    values = np.ascontiguousarray(arr.transpose(2, 1, 0), dtype=np.float32)
    origin = np.asarray(info.get("origin") or [0.0, 0.0, 0.0], dtype=np.float64)
    if info.get("directions") is not None:
        steps = np.asarray(info["directions"], dtype=np.float64).T  # columns: the i, j, k steps
        spacing = np.linalg.norm(steps, axis=0)
        if not (spacing > 0).all():
            raise InvalidInputError(f"{path}: a zero-length space direction ({info['directions']})")
        geometry = Geometry.make(origin, spacing, steps / spacing)
    else:
        spacing = np.asarray(info["spacing"], dtype=np.float64)
        geometry = Geometry.make(origin, np.where(spacing > 0, spacing, 1.0), np.eye(3))
    stem = volume_stem(path)
    return Series(uid=stem, name=_safe(stem, "volume"), modality="", values=values, geometry=geometry, datasets=[],
                  source=path)


# ---------------------------------------------------------------------- writing
@dataclass(frozen=True)
class Algorithm:
    """What made a segmentation, recorded in the SEG (AlgorithmIdentificationSequence)."""

    model: str
    model_version: str
    recipe: str
    version: str = camseg.__version__
    name: str = "camseg"


def segmentation(mask: npt.NDArray[np.bool_], series: Series, algorithm: Algorithm, *,
                 series_number: int = 900, label: str = "Tumor") -> Dataset:
    """A DICOM SEG (``highdicom.seg.Segmentation``, BINARY) of ``mask`` ``(N, R, C)`` over
    the series' source instances.

    One segment: category SCT "Morphologically abnormal structure", type SCT "Neoplasm",
    algorithm type AUTOMATIC with the algorithm identification (name, version, family
    Artificial Intelligence, parameters model / model_version / recipe). Manufacturer
    ``camseg``, model name the algorithm's name, software version its version. Every frame
    is kept, so an all-empty mask is a valid SEG too. Works for several single-frame
    instances, one instance, and one multi-frame instance (frame ``n`` of the mask is
    source frame ``n + 1``). Non-zero mask values are tumor.

    Raises:
        UnsupportedError: a series without DICOM instances (a volume file).
        InvalidInputError: a mask whose shape is not the series' ``(N, R, C)``; sources
            highdicom cannot reference (the message names the series).
    """
    if not series.datasets:
        where = series.source or series.name
        raise UnsupportedError(f"{where}: not a DICOM series, so a DICOM SEG has no instances to reference; write a "
                               "NIfTI/NRRD mask instead")
    m = np.asarray(mask)
    if m.shape != series.values.shape[:3]:
        raise InvalidInputError(f"{series.name}: mask shape {tuple(m.shape)} differs from the series' "
                                f"{tuple(series.values.shape[:3])} (N, R, C)")
    m = m != 0
    import highdicom as hd  # only here: the rest of the module needs none of it
    from pydicom.sr.codedict import codes

    sources = series.datasets
    if len(sources) == 1 and m.shape[0] > 1 and "SharedFunctionalGroupsSequence" not in sources[0]:
        sources = [_with_functional_groups(sources[0], series, m.shape[0])]

    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version, family=codes.cid7162.ArtificialIntelligence,
        parameters={"model": algorithm.model, "model_version": algorithm.model_version, "recipe": algorithm.recipe})
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=m, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="camseg",
            manufacturer_model_name=algorithm.name, software_versions=algorithm.version,
            device_serial_number="0", omit_empty_frames=False,
            series_description=f"{algorithm.name} {label}"[:64])
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InvalidInputError(f"{series.name}: cannot make a DICOM SEG of it ({_short(exc)})") from None
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared and "PatientOrientation" not in seg:
        # Type 2C where the image has no plane orientation (secondary capture): the source's, or empty.
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    logger.info("SEG of %s: %d frames, %d tumor voxels", series.name, m.shape[0], int(m.sum()))
    return seg


def _with_functional_groups(ds: Dataset, series: Series, nframes: int) -> Dataset:
    """A copy of a legacy multi-frame instance (RT Dose: one IPP + GridFrameOffsetVector) with
    its geometry as the shared and per-frame functional groups highdicom reads; the SEG still
    references the original by its SOPInstanceUID."""
    from pydicom.sequence import Sequence as DicomSequence

    geometry = series.geometry
    if geometry is None:
        raise UnsupportedError(f"{series.name}: a multi-frame instance without plane geometry; a DICOM SEG cannot "
                               "place its frames, write a NIfTI/NRRD mask instead")
    copy = Dataset()
    copy.update(ds)  # a shallow copy: the source's elements are not changed
    copy.file_meta = ds.file_meta
    direction = np.asarray(geometry.direction)
    measures = Dataset()
    measures.PixelSpacing = [_ds_text(geometry.spacing[1]), _ds_text(geometry.spacing[0])]
    thickness = _floats(ds, "SliceThickness", 1, series.name)
    measures.SliceThickness = _ds_text(float(thickness[0]) if thickness is not None else geometry.spacing[2])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [_ds_text(v) for v in (*direction[:, 0], *direction[:, 1])]
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    copy.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames_groups = []
    for k in range(nframes):
        position = Dataset()
        position.ImagePositionPatient = [_ds_text(v) for v in (geometry.affine @ [0.0, 0.0, k, 1.0])[:3]]
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([position])
        frames_groups.append(item)
    copy.PerFrameFunctionalGroupsSequence = DicomSequence(frames_groups)
    return copy


def _ds_text(x: float) -> str:
    """A DICOM DS string (16 characters at most) of ``x``."""
    text = f"{float(x):.10g}"
    return text if len(text) <= 16 else f"{float(x):.8e}"[:16]


def to_bytes(ds: Dataset) -> bytes:
    """Part 10 bytes (preamble, file meta) of ``ds``; Explicit VR Little Endian where its
    file meta names no transfer syntax."""
    ds.ensure_file_meta()
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


def write_volume(path: Path, array: npt.NDArray[Any], geometry: Geometry | None) -> Path:
    """Write an ``(N, R, C)`` array as NIfTI (``.nii``, ``.nii.gz``) or NRRD (``.nrrd``).

    Both store the array in ``(i, j, k)`` order (``transpose(2, 1, 0)``). NIfTI: sform
    (and, where the directions are orthogonal, qform) = ``geometry.ras_affine``, code
    scanner, units mm. NRRD: space ``left-posterior-superior``, space directions = the
    direction columns times the spacing, space origin = the origin, gzip encoded. Bool
    arrays are stored as uint8 0/1, floats as float32, 64-bit integers as 32-bit where they
    fit. ``geometry`` None writes the identity. Written under a temporary name and renamed
    into place, so a reader never sees a partial file.

    Raises:
        InvalidInputError: another suffix, or not a 3-D array.
    """
    import nibabel as nib
    import nrrd

    path = Path(path)
    suffix = next((s for s in _VOLUME_SUFFIXES if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise InvalidInputError(f"{path}: unsupported volume suffix (expected {', '.join(_VOLUME_SUFFIXES)})")
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise InvalidInputError(f"{path}: expected an (N, R, C) array, got shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    elif arr.dtype in (np.int64, np.uint64) and arr.size and arr.min() >= -(2**31) and arr.max() < 2**31:
        arr = arr.astype(np.int32)  # NIfTI readers often lack 64-bit integers
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(f"{path}: unsupported voxel type {arr.dtype}")
    geo = geometry or Geometry.make((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    data = np.asfortranarray(arr.transpose(2, 1, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".nrrd":
            directions = np.asarray(geo.direction) * np.asarray(geo.spacing)
            nrrd.write(str(tmp), data, {"space": "left-posterior-superior", "space directions": directions.T,
                                        "space origin": np.asarray(geo.origin), "kinds": ["domain"] * 3,
                                        "encoding": "gzip"})
        else:
            affine = geo.ras_affine
            img = nib.Nifti1Image(data, affine)
            img.set_sform(affine, code=1)  # scanner coordinates
            direction = np.asarray(geo.direction)
            orthogonal = np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
            img.set_qform(affine if orthogonal else None, code=1 if orthogonal else 0)  # qform cannot shear
            img.header.set_xyzt_units("mm")
            nib.save(img, str(tmp))
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %s: %s %s", path, tuple(arr.shape), arr.dtype)
    return path
