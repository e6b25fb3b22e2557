"""3-D image + label volume pairs (NRRD, NIfTI) sliced to 2-D ROIs in the folder layout.

Conventions
-----------
* **Axes** are the file's index order, the same for both formats: pynrrd's default
  (Fortran) order and nibabel's ``(i, j, k)``. ``axis=2`` (the default) slices along
  the third index, which is axial for the usual acquisitions (BraTS, CT, the
  pyradiomics cases).
* **Slices** are 2-D arrays with ``rows`` = the later of the two in-plane index axes
  and ``cols`` = the earlier one, so an axial slice is ``(y, x)`` as SimpleITK's
  ``GetArrayFromImage(img)[k]`` shows it.
* **Orientation**: world directions are taken to LPS (NIfTI's RAS and NRRD's
  RAS/LAS spaces are converted). With ``flip_rows=None`` the rows are flipped when
  the row axis points the "wrong" way for the usual radiological display: anterior
  at the top for rows along y, superior at the top for rows along z. The pyradiomics
  brain cases, for example, have a negative y spacing (``space directions`` with
  ``-0.78`` on y) and are flipped; its lung and breast cases are not. A file with no
  usable direction information is never flipped.
* **Intensities** are windowed to ``[0, 1]`` with the 0.5th and 99.5th percentiles of
  the whole volume (or a given window) and stored as ``uint16`` (0..65535).
* **Labels**: any non-zero label voxel is tumor, whatever its value (BraTS labels
  1, 2 and 4 all count). A slice is a tumor slice (class 1) when its label slice
  has any tumor voxel; otherwise it is normal (class 0) and has no mask.

Every problem stops with one :class:`~camseg.core.errors.CamsegError` whose message names
the file.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.core.types import UInt16Array
from camseg.data.folder import CLASSES, SPLITS, Record, write_dataset
from camseg.data.synth import split_ids
from camseg.io.volume import (
    _format,
    read_volume,
    volume_stem,
)

logger = logging.getLogger(__name__)

DEFAULT_AXIS = 2
"""Slice along the third index axis: axial for the usual acquisitions."""

PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Robust intensity window of a whole volume, in percent."""


# Wanted LPS sign of the row axis per dominant world axis: rows along x run right to
# left (L+), along y anterior to posterior (P+), along z superior to inferior (S-).
_ROW_SIGN = (1.0, 1.0, -1.0)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")




def display_flip(info: Mapping[str, Any], axis: int) -> bool:
    """Whether slices along ``axis`` need their rows flipped for the usual display.

    The row axis is the later in-plane index axis. Its LPS direction's dominant
    component decides: rows along y should run anterior to posterior, rows along z
    superior to inferior, rows along x right to left. False where ``info`` has no
    directions.
    """
    _check_axis(axis)
    directions = info.get("directions")
    if directions is None:
        return False
    row_axis = max(a for a in range(3) if a != axis)
    vec = np.asarray(directions[row_axis], dtype=np.float64)
    world = int(np.argmax(np.abs(vec)))
    return bool(vec[world] * _ROW_SIGN[world] < 0)


def slice_spacing(info: Mapping[str, Any], axis: int) -> tuple[float, float]:
    """The ``(row, column)`` pixel spacing of slices along ``axis`` (mm for the usual files):
    the steps of the later and the earlier in-plane index axes (:func:`slice_pair`'s rows
    and columns)."""
    _check_axis(axis)
    col_axis, row_axis = (a for a in range(3) if a != axis)
    spacing = info["spacing"]
    return float(spacing[row_axis]), float(spacing[col_axis])


def _check_axis(axis: int) -> None:
    if axis not in (0, 1, 2):
        raise InvalidInputError(f"axis must be 0, 1 or 2, got {axis!r}")


def _window(
    image: npt.NDArray[Any], window: tuple[float, float] | None, path: Path
) -> tuple[float, float]:
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise InvalidInputError(
                f"window must be two finite numbers (low, high) with high > low, got {window!r}"
            )
        return lo, hi
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise InvalidInputError(f"{path}: contains NaN or infinite values")
    lo, hi = np.percentile(image, PERCENTILES)
    return float(lo), float(hi)


def _to_uint16(plane: npt.NDArray[Any], lo: float, hi: float) -> UInt16Array:
    if hi <= lo:  # a constant volume carries no contrast
        return np.zeros(plane.shape, dtype=np.uint16)
    scaled = (plane.astype(np.float64) - lo) / (hi - lo)
    return np.ascontiguousarray(np.round(np.clip(scaled, 0.0, 1.0) * 65535.0), dtype=np.uint16)


def slice_pair(
    image_path: Path,
    label_path: Path,
    *,
    axis: int,
    id_prefix: str,
    window: tuple[float, float] | None = None,
    normal_stride: int = 1,
    flip_rows: bool | None = None,
) -> list[Record]:
    """Slice an image volume and its label volume into 2-D records (split left None).

    Args:
        image_path: the intensity volume.
        label_path: the label volume; non-zero voxels are tumor. Same shape as the image.
        axis: index axis to slice along (0, 1 or 2; 2 is axial for usual files).
        id_prefix: record ids are ``f"{id_prefix}-s{index:03d}"``, ``index`` being the
            slice's position in the volume. Letters, digits, ``.``, ``_``, ``-``.
        window: ``(low, high)`` intensities mapped to 0 and 65535; default the 0.5th
            and 99.5th percentiles of the whole image volume.
        normal_stride: keep every n-th normal slice (counted by slice index); tumor
            slices are all kept. 1 keeps everything.
        flip_rows: flip each slice's rows; None decides from the image header's
            directions (see :func:`display_flip`).

    Returns:
        Records in slice order: ``uint16`` images, label 1 with a boolean mask for
        tumor slices, label 0 with no mask for normal ones.

    Raises:
        NotFoundError: a file does not exist.
        InvalidInputError: unreadable files, shapes that differ (both files named),
            bad arguments.
    """
    _check_axis(axis)
    if not _ID_RE.match(id_prefix):
        raise InvalidInputError(f"id_prefix {id_prefix!r} must be letters, digits, '.', '_' or '-'")
    if normal_stride < 1:
        raise InvalidInputError(f"normal_stride must be at least 1, got {normal_stride}")
    image_path, label_path = Path(image_path), Path(label_path)
    image, info = read_volume(image_path)
    label, _ = read_volume(label_path)
    return slice_arrays(image, info, label, axis=axis, id_prefix=id_prefix, window=window,
                        normal_stride=normal_stride, flip_rows=flip_rows, image_path=image_path,
                        label_path=label_path)


def slice_arrays(
    image: npt.NDArray[Any],
    info: Mapping[str, Any],
    label: npt.NDArray[Any],
    *,
    axis: int,
    id_prefix: str,
    window: tuple[float, float] | None = None,
    normal_stride: int = 1,
    flip_rows: bool | None = None,
    image_path: Path = Path("image"),
    label_path: Path = Path("label"),
) -> list[Record]:
    """:func:`slice_pair` of volumes already read (:func:`~camseg.io.volume.read_volume`'s
    arrays and the image's header summary ``info``); the paths name the files in messages."""
    _check_axis(axis)
    if not _ID_RE.match(id_prefix):
        raise InvalidInputError(f"id_prefix {id_prefix!r} must be letters, digits, '.', '_' or '-'")
    if normal_stride < 1:
        raise InvalidInputError(f"normal_stride must be at least 1, got {normal_stride}")
    if image.shape != label.shape:
        raise InvalidInputError(
            f"{label_path}: label shape {tuple(label.shape)} differs from image {image_path} "
            f"shape {tuple(image.shape)}"
        )
    lo, hi = _window(image, window, image_path)
    flip = display_flip(info, axis) if flip_rows is None else flip_rows
    # Move the slice axis first and put the later in-plane axis on rows.
    planes = np.moveaxis(image, axis, 0).transpose(0, 2, 1)
    labels = np.moveaxis(label, axis, 0).transpose(0, 2, 1) != 0
    if flip:
        planes, labels = planes[:, ::-1, :], labels[:, ::-1, :]
    records: list[Record] = []
    for k in range(planes.shape[0]):
        mask = np.ascontiguousarray(labels[k])
        tumor = bool(mask.any())
        if not tumor and k % normal_stride:
            continue
        records.append(
            Record(
                id=f"{id_prefix}-s{k:03d}",
                label=1 if tumor else 0,
                split=None,
                image=_to_uint16(planes[k], lo, hi),
                mask=mask if tumor else None,
            )
        )
    logger.info(
        "sliced %s: %d slices kept, %d with tumor (axis %d, flip_rows %s)",
        id_prefix,
        len(records),
        sum(r.label for r in records),
        axis,
        flip,
    )
    return records


def volume_ids(pairs: Sequence[tuple[Path, Path]]) -> list[str]:
    """Id prefixes from file names: the common stem of image and label ("brain1")."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for image_path, label_path in pairs:
        a, b = volume_stem(Path(image_path)), volume_stem(Path(label_path))
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        base = a[:n].rstrip("._- ") or a
        base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-") or "volume"
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
    if len(split) != 3 or any(not np.isfinite(f) or f < 0 for f in split):
        raise InvalidInputError(
            f"split must be three non-negative fractions (train, val, test), got {split!r}"
        )
    if abs(sum(split) - 1.0) > 1e-6 or split[0] <= 0:
        raise InvalidInputError(f"split fractions must sum to 1 with train > 0, got {tuple(split)}")
    return float(split[0]), float(split[1]), float(split[2])


def _split_volumes(n: int, split: Sequence[float], seed: int) -> list[str]:
    """Assign ``n`` volumes to train/val/test, deterministic from ``seed``.

    Every split with a non-zero fraction gets at least one volume when ``n >= 3``;
    train gets the rest.
    """
    fractions = _check_split(split)
    counts = [0, 0, 0]
    for s in (1, 2):
        if fractions[s] > 0:
            counts[s] = max(1, round(n * fractions[s])) if n >= 3 else round(n * fractions[s])
    while sum(counts[1:]) > n - 1:  # keep at least one training volume
        counts[1 if counts[1] >= counts[2] else 2] -= 1
    counts[0] = n - counts[1] - counts[2]
    order = np.random.default_rng(seed).permutation(n)
    out = [""] * n
    for rank, i in enumerate(order):
        out[i] = (
            SPLITS[0]
            if rank < counts[0]
            else SPLITS[1]
            if rank < counts[0] + counts[1]
            else SPLITS[2]
        )
    return out


def convert_volumes(
    pairs: Sequence[tuple[Path, Path]],
    out: Path,
    *,
    axis: int = DEFAULT_AXIS,
    ids: Sequence[str] | None = None,
    window: tuple[float, float] | None = None,
    normal_stride: int = 1,
    overwrite: bool = False,
    seed: int = 0,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Slice image/label volume pairs and write them in the folder layout at ``out``.

    Splits are assigned **by volume** when there are at least three pairs, so the
    slices of one patient never straddle train/val/test; with one or two pairs they
    are assigned by slice (stratified by label), which leaks neighbouring slices
    across splits and is only fit for smoke tests. Rows are flipped per volume as
    :func:`display_flip` says. The write is atomic (:func:`write_dataset`).

    Args:
        pairs: ``(image, label)`` paths, one pair per volume.
        out: the data set folder to write.
        axis: index axis to slice along (default 2, axial for usual files).
        ids: one id prefix per pair; default the common stem of the two file names
            (``brain1_image.nrrd`` + ``brain1_label.nrrd`` -> ``brain1``).
        window, normal_stride: as for :func:`slice_pair`.
        overwrite: replace a non-empty ``out``.
        seed: seeds the split assignment.
        split: train/val/test fractions.
        meta: extra provenance merged into ``dataset.json``.

    Returns:
        ``out``. Its ``dataset.json`` records ``classes``, the axis, the split
        policy, and each volume's source files and split.

    Example::

        pairs = [(Path(f"{c}_image.nrrd"), Path(f"{c}_label.nrrd")) for c in ("p1", "p2", "p3")]
        convert_volumes(pairs, Path("data/volumes"))  # ids p1-s000, p1-s001, ...

    Raises:
        NotFoundError: a volume file is missing (checked before anything is read).
        InvalidInputError: no pairs, bad arguments, or any volume problem.
    """
    _check_axis(axis)
    fractions = _check_split(split)
    pairs = [(Path(i), Path(lab)) for i, lab in pairs]
    if not pairs:
        raise InvalidInputError("no volume pairs to convert")
    for image_path, label_path in pairs:
        for p in (image_path, label_path):
            if not p.is_file():
                raise NotFoundError(f"{p}: no such volume file")
            _format(p)
    prefixes = list(ids) if ids is not None else volume_ids(pairs)
    if len(prefixes) != len(pairs):
        raise InvalidInputError(f"ids: {len(prefixes)} ids for {len(pairs)} volume pairs")
    bad = [p for p in prefixes if not _ID_RE.match(p)]
    if bad:
        raise InvalidInputError(f"ids {bad} must be letters, digits, '.', '_' or '-'")
    if len(set(prefixes)) != len(prefixes):
        raise InvalidInputError(f"ids must be unique, got {list(prefixes)}")
    by_volume = len(pairs) >= 3
    volume_splits: list[str | None] = (
        list(_split_volumes(len(pairs), fractions, seed)) if by_volume else [None] * len(pairs)
    )

    def sliced(index: int) -> list[Record]:
        image_path, label_path = pairs[index]
        return slice_pair(
            image_path,
            label_path,
            axis=axis,
            id_prefix=prefixes[index],
            window=window,
            normal_stride=normal_stride,
        )

    def by_volume_records() -> Iterator[Record]:
        # One volume in memory at a time: a BraTS-size set does not fit otherwise.
        for i in range(len(pairs)):
            for r in sliced(i):
                yield dataclasses.replace(r, split=volume_splits[i])

    if by_volume:
        records: Iterator[Record] | list[Record] = by_volume_records()
    else:
        logger.warning(
            "only %d volume(s): splitting by slice, neighbouring slices share splits", len(pairs)
        )
        flat = [r for i in range(len(pairs)) for r in sliced(i)]
        slice_splits = split_ids(np.array([r.label for r in flat], dtype=np.int64), fractions, seed)
        records = [dataclasses.replace(r, split=s) for r, s in zip(flat, slice_splits, strict=True)]

    info: dict[str, Any] = {
        "name": Path(out).name,
        "generator": "camseg.data.volumes",
        "classes": list(CLASSES),
        "axis": axis,
        "window": list(window) if window is not None else None,
        "percentiles": list(PERCENTILES) if window is None else None,
        "normal_stride": normal_stride,
        "split_by": "volume" if by_volume else "slice",
        "split": list(fractions),
        "seed": seed,
        "volumes": [
            {"id": vid, "image": str(img), "label": str(lab), "split": s}
            for vid, (img, lab), s in zip(prefixes, pairs, volume_splits, strict=True)
        ],
    }
    info.update(meta or {})
    info["classes"] = list(CLASSES)  # the labels written are these, whatever meta says
    return write_dataset(Path(out), records, info, overwrite=overwrite)
