"""DICOM series: the files of each series found under folders, one series loaded to
modality values with its geometry, and an NRRD/NIfTI volume loaded the same way."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from camseg.core.errors import InvalidInputError, NotFoundError, shown
from camseg.core.types import FloatArray
from camseg.core.windowing import Windowing, apply_window
from camseg.io.dicom.geometry import Geometry, series_geometry
from camseg.io.dicom.pixels import frames, voi
from camseg.io.dicom.read import dataset_header, read_dataset
from camseg.io.guards import is_dicom
from camseg.io.volume import read_volume, volume_stem

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Series:
    """One image series: modality values and where they sit.

    ``datasets`` are the source instances in slice order without their pixel data: each
    header as read up to the pixel data element, every attribute a DICOM SEG references
    kept (:func:`~camseg.io.dicom.write.segmentation` needs no pixels); ``[]`` for a volume file.
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


def load_series(files: Sequence[Path], name: str | None = None, *, max_pixels: int | None = None) -> Series:
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

    ``max_pixels`` (None: no limit) bounds each slice's rows x columns, checked on the
    headers before any pixel data is read. ``name`` (default: the uid) names the series in
    messages; ``Series.name`` is its safe file-name form. ``Series.datasets`` are the
    instances' headers in slice order, read up to the pixel data (so without it, and
    without anything a file stores after it).

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

    if max_pixels is not None and first.height * first.width > max_pixels:
        raise InvalidInputError(f"{label}: {first.width}x{first.height} pixels per slice exceed the limit of "
                                f"{max_pixels}")
    ordered, ordered_paths, geometry = series_geometry(headers, paths, shapes, label)

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


