"""Reading DICOM Part 10 instances: the parse that notices truncation, the image header
checked before any pixel, and the attribute readers the rest of the package shares
(functional groups, lists of finite numbers)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, SegmentationStorage

from camseg.core.errors import InvalidInputError, NotFoundError, shown
from camseg.io.guards import Header, is_dicom

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


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


def is_image(ds: Dataset) -> bool:
    """Whether ``ds`` is an image camseg segments: it carries pixel data (Pixel Data, Float or
    Double Float Pixel Data) and is not a Segmentation (camseg's own output: a SEG sent back is
    not segmented again). A structured report, an encapsulated PDF or a presentation state is
    not an image; neither is an image class whose pixel data is missing."""
    return any(tag in ds for tag in _PIXEL_TAGS) and ds.get("SOPClassUID") != SegmentationStorage


def reason(exc: BaseException) -> str:
    """``exc``'s text on one line (200 characters at most), else its type's name."""
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
        raise InvalidInputError(f"{name}: not a readable DICOM file ({reason(exc)})") from None
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


def functional_group(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword`` for ``frame``: per-frame, else shared."""
    for seq, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(seq)
        if groups is not None and len(groups) > index:
            inner = groups[index].get(keyword)
            if inner is not None and len(inner) > 0:
                item: Dataset = inner[0]
                return item
    return None


def floats(ds: Dataset | None, keyword: str, n: int, name: str) -> npt.NDArray[np.float64] | None:
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

