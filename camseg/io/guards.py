"""Guards for everything that comes from outside: ids, paths, the memory budget, and image
headers checked before a pixel is decoded.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from camseg.core.errors import InvalidInputError, ResourceExhaustedError, shown
from camseg.core.types import FloatArray

MAX_SAMPLES = 4  # gray, gray+alpha, RGB, RGBA
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


# ---------------------------------------------------------------------- ids and paths
def check_id(sample_id: str, where: str) -> str:
    """``sample_id`` when it matches :data:`ID_PATTERN`; InvalidInputError otherwise."""
    if not ID_PATTERN.fullmatch(sample_id):
        raise InvalidInputError(f"{where}: id {shown(sample_id)} is not allowed (letters, digits and ._-, "
                                "not starting with a dot, at most 200 characters)")
    return sample_id


def path_under(root: Path, path: Path, where: str) -> Path:
    """``path`` when it resolves (symlinks followed) inside ``root``; InvalidInputError
    when it escapes."""
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if not real.is_relative_to(real_root):
        raise InvalidInputError(f"{where}: {path} resolves outside {root}")
    return path


# ---------------------------------------------------------------------- budgets
class Budget:
    """Decoded values (height x width x channels) that may still be taken; thread-safe.

    A request's budget may draw on a ``parent`` shared by all calls of a server: a take
    must fit both, and leaving the ``with`` block gives the request's share back to the
    parent.

    >>> server = Budget(150, "server budget")
    >>> with Budget(100, "request budget", parent=server) as request:
    ...     request.take(60, "image 0")
    ...     server.used
    60
    >>> server.used
    0
    >>> Budget(100).take(160, "image 1")
    Traceback (most recent call last):
    ...
    camseg.core.errors.ResourceExhaustedError: image 1: 160 decoded values exceed the 100 left of a budget of 100
    """

    def __init__(self, limit: int, what: str = "budget", parent: Budget | None = None):
        self.limit = int(limit)
        self.what = what
        self.parent = parent
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int, name: str) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise ResourceExhaustedError(f"{name}: {n} decoded values exceed the {self.limit - self.used} left "
                                             f"of a {self.what} of {self.limit}")
            if self.parent is not None:
                self.parent.take(n, name)
            self.used += n

    def give_back(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)

    def __enter__(self) -> Budget:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            used, self.used = self.used, 0
        if self.parent is not None:
            self.parent.give_back(used)


# ---------------------------------------------------------------------- headers
@dataclass(frozen=True)
class Header:
    """What an encoded image claims before any pixel is decoded."""

    format: str
    height: int
    width: int
    samples: int
    pages: int

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def values(self) -> int:
        """Decoded values: what the image costs of a :class:`Budget`."""
        return self.pixels * self.samples


def is_dicom(data: bytes | Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble (reads at most 132 bytes
    of a path). Files without the preamble are not taken for DICOM."""
    if isinstance(data, Path):
        try:
            with data.open("rb") as fh:
                head = fh.read(132)
        except OSError:
            return False
    else:
        head = bytes(data[:132])
    return len(head) == 132 and head[128:] == b"DICM"


def check_header(header: Header, name: str, max_pixels: int) -> None:
    """One 2-D image of 1-4 samples per pixel, within the pixel limit."""
    if header.pages != 1:
        raise InvalidInputError(f"{name}: {header.format} with {header.pages} pages; send one 2-D image per image")
    if not 1 <= header.samples <= MAX_SAMPLES:
        raise InvalidInputError(f"{name}: {header.samples} samples per pixel; gray, RGB or RGBA only")
    if header.height < 1 or header.width < 1:
        raise InvalidInputError(f"{name}: empty image ({header.width}x{header.height})")
    if header.pixels > max_pixels:
        raise InvalidInputError(f"{name}: {header.width}x{header.height} pixels exceed the limit of {max_pixels}")


def array_to_float(arr: npt.NDArray[Any], name: str = "image") -> FloatArray:
    """Scale an integer or float array to float32 in [0, 1]; keep gray or 3-channel
    (alpha dropped)."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[-1] == 2:
        arr = arr[..., 0]  # gray + alpha
    elif arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr[:3], 0, -1)
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise InvalidInputError(f"{name}: expected a 2-D image, got shape {tuple(arr.shape)}")
    if arr.dtype in (np.uint8, np.uint16):
        # one float copy, scaled in place: no full-size temporaries beside it
        out = arr.astype(np.float32)
        out /= 255.0 if arr.dtype == np.uint8 else 65535.0
        return out
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.float32:
        # the common raw input: checked and passed on in float32 (min and max are NaN or
        # infinite where any value is), no float64 copy unless it needs scaling
        lo32, hi32 = float(arr.min()), float(arr.max())
        if math.isfinite(lo32) and math.isfinite(hi32) and lo32 >= 0.0 and hi32 <= 1.0:
            return np.array(arr, dtype=np.float32)
    if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        # min-max scaling in float64 of halved values: no range of finite inputs overflows
        with np.errstate(invalid="ignore", over="ignore"):
            out = arr.astype(np.float64)
        if not np.isfinite(out).all():
            raise InvalidInputError(f"{name}: contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
            return out.astype(np.float32)
        if not hi > lo:
            return np.zeros(out.shape, dtype=np.float32)
        scaled = (out / 2 - lo / 2) / (hi / 2 - lo / 2)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)
    raise InvalidInputError(f"{name}: unsupported pixel type {arr.dtype}")
