"""Where a DICOM series' voxels sit: :class:`Geometry` (LPS mm) and the slice order and
geometry of a series' instance headers (stacks of planes, multi-frame functional groups,
RT Dose's frame offsets), with the checks that refuse an inconsistent stack."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.io.dicom.read import floats, functional_group
from camseg.io.guards import Header

logger = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-4
"""Largest difference of two instances' direction cosines still taken as one orientation."""
SPACING_TOLERANCE_MM = 0.01
"""Slice gaps may differ from their median by max(1 % of it, this)."""


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
    for source, keyword in ((functional_group(ds, frame, "PixelMeasuresSequence"), "PixelSpacing"),
                            (ds, "PixelSpacing"), (ds, "ImagerPixelSpacing")):
        ps = floats(source, keyword, 2, name)
        if ps is not None:
            if not (ps > 0).all():
                raise InvalidInputError(f"{name}: {keyword} {ps.tolist()} is not positive")
            return float(ps[1]), float(ps[0])
    return 1.0, 1.0


def _plane(ds: Dataset, name: str, frame: int = 0) -> tuple[npt.NDArray[np.float64] | None,
                                                            npt.NDArray[np.float64] | None]:
    """(ImagePositionPatient, ImageOrientationPatient) of ``frame``: functional groups,
    else the top level."""
    ipp = floats(functional_group(ds, frame, "PlanePositionSequence"), "ImagePositionPatient", 3, name)
    iop = floats(functional_group(ds, frame, "PlaneOrientationSequence"), "ImageOrientationPatient", 6, name)
    if ipp is None:
        ipp = floats(ds, "ImagePositionPatient", 3, name)
    if iop is None:
        iop = floats(ds, "ImageOrientationPatient", 6, name)
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
        value = floats(functional_group(ds, 0, "PixelMeasuresSequence"), keyword, 1, name)
        value = value if value is not None else floats(ds, keyword, 1, name)
        if value is not None and value[0] > 0:
            thickness = float(value[0])
            break
    return Geometry.make(ipp, (*_pixel_spacing(ds, name), thickness), np.stack([row, col, np.cross(row, col)], 1))


def _multiframe_geometry(ds: Dataset, nframes: int, name: str, label: str) -> Geometry | None:
    """Per-frame functional groups, else IPP + IOP + GridFrameOffsetVector (RT Dose), else None."""
    frame_names = [f"frame {f + 1}" for f in range(nframes)]
    where = f"{label} ({name})"
    if functional_group(ds, 0, "PlanePositionSequence") is not None:
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
    offsets_mm = floats(ds, "GridFrameOffsetVector", nframes, name)
    assert offsets_mm is not None
    row, col = _cosines(iop, name)
    # A first offset of 0 means offsets relative to IPP; otherwise they are absolute z (axial only),
    # and IPP is frame 1's position, so relative offsets are the differences from the first.
    relative = offsets_mm - offsets_mm[0]
    positions = ipp + np.outer(relative, np.cross(row, col))
    return _stack_geometry(positions, row, col, _pixel_spacing(ds, name), frame_names, where)


def series_geometry(headers: Sequence[Dataset], paths: Sequence[Path], shapes: Sequence[Header],
                    label: str) -> tuple[list[Dataset], list[Path], Geometry | None]:
    """The instances' headers and paths in slice order, and their geometry, by the rules
    of :func:`camseg.io.dicom.series.load_series` (``shapes`` are the headers' image
    headers, ``label`` names the series in messages).

    Raises:
        InvalidInputError: planes that cannot be ordered or are not evenly spaced (named).
        UnsupportedError: several instances, one of them multi-frame.
    """
    first = shapes[0]
    geometry: Geometry | None
    if len(paths) == 1:
        ordered, ordered_paths = list(headers), list(paths)
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
    return ordered, ordered_paths, geometry
