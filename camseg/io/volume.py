"""Reading NRRD and NIfTI volumes: the array and its geometry, every problem one InvalidInputError naming the file."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np
import numpy.typing as npt
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import SpatialImage
from nrrd.errors import NRRDError

from camseg.core.errors import InvalidInputError, NotFoundError

NRRD_SUFFIXES = (".nrrd", ".nhdr")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Sign that takes each world axis of a NRRD space to LPS.
_TO_LPS: dict[str, tuple[float, float, float]] = {
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0),
}
_SPACE_ALIASES = {
    "lps": "left-posterior-superior",
    "ras": "right-anterior-superior",
    "las": "left-anterior-superior",
}


class _Unreadable(Exception):
    """A reader library's own error, re-raised in one type."""


# What the readers raise on a damaged or foreign file (truncated data, bad gzip, bad header).
_READ_ERRORS = (_Unreadable, OSError, ValueError, EOFError, zlib.error, UnicodeDecodeError)


def _format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    raise InvalidInputError(
        f"{path}: unsupported volume format (expected {', '.join(NRRD_SUFFIXES + NIFTI_SUFFIXES)})"
    )


def volume_stem(path: Path) -> str:
    """A volume file's name without its suffix (``.nii.gz`` counts as one)."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_volume(path: Path) -> tuple[npt.NDArray[Any], dict[str, Any]]:
    """Read a 3-D NRRD (``.nrrd``, ``.nhdr``) or NIfTI (``.nii``, ``.nii.gz``) volume.

    Returns the voxel array in the file's index order (see the module docstring) and
    a JSON-friendly header summary::

        {"format": "nrrd" | "nifti", "shape": [i, j, k], "spacing": [si, sj, sk],
         "directions": [[x, y, z] per index axis, in LPS] | None,
         "origin": [x, y, z] in LPS}

    ``spacing`` is the length of each index axis's step (mm for the usual files);
    ``directions`` is None where the file carries no world orientation. ``origin`` is
    voxel (0, 0, 0)'s position (NRRD ``space origin``, NIfTI ``affine[:3, 3]``), taken to
    LPS like the directions; ``[0, 0, 0]`` where the file has none. A 4-D volume
    with a single trailing component is squeezed to 3-D.

    Raises:
        NotFoundError: the file does not exist.
        InvalidInputError: unsupported suffix, unreadable file, not a 3-D volume.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such volume file")
    fmt = _format(path)
    try:
        arr, spacing, directions, origin = _read_nrrd(path) if fmt == "nrrd" else _read_nifti(path)
    except _READ_ERRORS as exc:
        raise InvalidInputError(
            f"{path}: not a readable {fmt.upper()} volume ({_one_line(exc)})"
        ) from exc
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InvalidInputError(f"{path}: expected a 3-D volume, got shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)  # percentiles and arithmetic need numbers
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidInputError(f"{path}: unsupported voxel type {arr.dtype}")
    info: dict[str, Any] = {
        "format": fmt,
        "shape": [int(n) for n in arr.shape],
        "spacing": [float(s) for s in spacing[:3]],
        "directions": None
        if directions is None
        else [[float(v) for v in row] for row in directions[:3]],
        "origin": [float(v) for v in origin],
    }
    return arr, info


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_nrrd(
    path: Path,
) -> tuple[npt.NDArray[Any], list[float], npt.NDArray[np.float64] | None, npt.NDArray[np.float64]]:
    try:
        arr, header = nrrd.read(str(path))
    except NRRDError as exc:
        raise _Unreadable(str(exc)) from exc
    arr = np.asarray(arr)
    dirs_raw = header.get("space directions")
    directions: npt.NDArray[np.float64] | None = None
    spacing: list[float] = [1.0] * arr.ndim
    if dirs_raw is not None:
        # Non-spatial axes (e.g. a vector component) have no direction: rows of NaN or None.
        rows = [None if r is None else np.asarray(r, dtype=np.float64) for r in dirs_raw]
        spatial = [r for r in rows if r is not None and np.isfinite(r).all()]
        if len(spatial) >= 3:
            directions = np.stack(spatial[:3])
            spacing = [float(np.linalg.norm(r)) for r in directions]
    elif header.get("spacings") is not None:
        spacing = [float(s) for s in header["spacings"]]
    space = str(header.get("space", "")).lower()
    space = _SPACE_ALIASES.get(space, space)
    if directions is not None and space in _TO_LPS:
        directions = directions * np.asarray(_TO_LPS[space])
    elif directions is not None:
        directions = None  # unknown world frame: no orientation we can trust
    origin = np.zeros(3)
    origin_raw = header.get("space origin")
    if origin_raw is not None and space in _TO_LPS:
        values = np.asarray(origin_raw, dtype=np.float64).reshape(-1)
        if values.size >= 3 and np.isfinite(values[:3]).all():
            origin = values[:3] * np.asarray(_TO_LPS[space])
    return arr, spacing, directions, origin


def _read_nifti(
    path: Path,
) -> tuple[npt.NDArray[Any], list[float], npt.NDArray[np.float64] | None, npt.NDArray[np.float64]]:
    try:
        img = nib.load(str(path))
        if not isinstance(img, SpatialImage):  # e.g. a CIFTI file: no voxel grid
            raise _Unreadable(f"not a spatial image ({type(img).__name__})")
        arr = np.asarray(img.dataobj)  # keeps integer labels integer (get_fdata would make floats)
        spacing = [float(z) for z in img.header.get_zooms()[:3]]
        affine = np.asarray(img.affine, dtype=np.float64)
    except ImageFileError as exc:
        raise _Unreadable(str(exc)) from exc
    # The affine's columns are the index axes' steps in RAS; LPS negates x and y.
    directions = (affine[:3, :3] * np.array([[-1.0], [-1.0], [1.0]])).T
    origin = affine[:3, 3] * np.array([-1.0, -1.0, 1.0])
    return arr, spacing, directions, origin
