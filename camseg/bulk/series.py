"""Segmentation of whole series and volumes, with their geometry kept.

A DICOM series or an NRRD/NIfTI volume (:mod:`camseg.io.dicom`) is windowed, its slices go
through :func:`camseg.pipeline.run.run` like any images, and the slice masks are stacked back
into a mask volume on the source's own grid. The outputs say where they sit:

* ``seg``: a DICOM SEG referencing the source series (a viewer overlays it on the study);
* ``nifti`` / ``nrrd``: a mask volume with the source's affine (spacing, origin, direction);
* ``auto``: SEG for DICOM, and the source's own format for a volume file.

A slice (a mammogram, one MG instance) larger than the model's field of view by the
whole-image factor goes through whole-image inference (:mod:`camseg.pipeline.whole`),
under the options' tiling; the results row then says how (the columns of
:data:`COLUMNS` from ``whole_slices`` on) and ``lesions.csv`` lists its lesion
candidates. Heatmaps can come beside them as a float volume in the same grid. What this module writes
for one series is the same for the ``camseg segment`` command and for a bulk job's part:
:func:`write_outputs` is the one place.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from camseg.bulk.wholerows import LESIONS, lesion_rows, write_lesions
from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.core.progress import OnProgress, ShouldStop
from camseg.core.windowing import Windowing
from camseg.io import dicom
from camseg.io.volume import NIFTI_SUFFIXES, NRRD_SUFFIXES, volume_stem
from camseg.models.modeldir import atomic_write_bytes
from camseg.pipeline.options import Encoding, Options
from camseg.pipeline.recipe_record import describe
from camseg.pipeline.run import LoadedModel, run
from camseg.pipeline.whole import WholeInfo

logger = logging.getLogger(__name__)

OUTPUTS = ("auto", "seg", "nifti", "nrrd")
"""Output formats of a segmented series."""

SUFFIX = {"seg": ".dcm", "nifti": ".nii.gz", "nrrd": ".nrrd"}
COLUMNS = ["index", "name", "series_uid", "modality", "slices", "rows", "columns", "tumor_slices", "mask_voxels",
           "mask_ml", "output", "heatmap", "whole_slices", "image_score", "tiles", "lesions", "lesion_file", "note",
           "error"]


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise InvalidInputError(f"unknown output format {output!r}; choose from {', '.join(OUTPUTS)}")
    return output


def output_format(output: str, series: dicom.Series) -> str:
    """The concrete format of ``output`` for ``series``: ``auto`` is SEG for DICOM and the
    volume file's own format otherwise. SEG needs DICOM sources."""
    check_output(output)
    if output == "auto":
        if series.datasets:
            return "seg"
        name = series.source.name.lower() if series.source is not None else ""
        return "nrrd" if name.endswith((".nrrd", ".nhdr")) else "nifti"
    if output == "seg" and not series.datasets:
        raise UnsupportedError(f"{series.name}: a DICOM SEG needs DICOM source instances; "
                               "ask for a nifti or nrrd mask volume instead")
    return output


@dataclass(frozen=True)
class SeriesResult:
    """One series segmented: ``mask`` and ``heatmap`` are ``(N, R, C)`` on the source grid."""

    series: dicom.Series
    mask: npt.NDArray[np.bool_]
    heatmap: npt.NDArray[np.float32]
    probabilities: npt.NDArray[np.float32]  # (N, classes)
    predicted: npt.NDArray[np.int64]  # (N,)
    whole: tuple[WholeInfo | None, ...] = ()  # per slice: how it was segmented whole (None: as an ROI)

    @property
    def tumor_slices(self) -> int:
        return int(self.mask.reshape(len(self.mask), -1).any(axis=1).sum())

    @property
    def mask_ml(self) -> float | None:
        """The mask's volume in millilitres; None without geometry."""
        g = self.series.geometry
        return None if g is None else float(self.mask.sum()) * float(np.prod(g.spacing)) / 1000.0


def segment_series(model: LoadedModel, series: dicom.Series, options: Options, *,
                   windowing: Windowing | None = None, on_progress: OnProgress | None = None,
                   should_stop: ShouldStop | None = None) -> SeriesResult:
    """Every slice of ``series``, windowed (``windowing``, default per modality), through
    :func:`camseg.pipeline.run.run` with ``options`` (a threshold rule is needed); the masks
    and heatmaps stacked in slice order. A slice the classifier calls normal gets an empty
    mask when the options gate."""
    if options.threshold is None:
        raise InvalidInputError("segmenting a series needs a threshold rule")
    images = series.windowed(windowing)
    if options.tiling.spacing_mm is None and (spacing := pixel_spacing(series)) is not None:
        options = replace(options, tiling=replace(options.tiling, spacing_mm=spacing))
    opts = replace(options, encodings=frozenset(options.encodings - {Encoding.MASK_PNG, Encoding.MASK_BITS,
                                                                     Encoding.MASK_RLE, Encoding.OVERLAY_PNG}))
    res = run(model, list(images), opts, on_progress=on_progress, should_stop=should_stop, task=series.name)
    mask = np.stack([np.asarray(r.mask, dtype=bool) for r in res.items])
    heat = np.stack([r.heatmap.numpy().astype(np.float32) for r in res.items])
    probs = np.stack([r.probabilities for r in res.items]).astype(np.float32)
    return SeriesResult(series, mask, heat, probs, np.array([r.label for r in res.items], dtype=np.int64),
                        tuple(r.whole for r in res.items))


def pixel_spacing(series: dicom.Series) -> float | None:
    """The series' in-plane pixel spacing in mm (the mean of rows and columns), for a model
    whose scale is recorded in millimetres: PixelSpacing, else ImagerPixelSpacing of the
    first instance; a volume file's own spacing; None where none is recorded."""
    if series.datasets:
        ds = series.datasets[0]
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = ds.get(keyword)
            try:
                pair = [float(v) for v in value] if value is not None else []
            except (TypeError, ValueError):
                pair = []
            if len(pair) == 2 and all(v > 0 for v in pair):
                return (pair[0] + pair[1]) / 2
        return None
    if series.geometry is not None:
        return float(np.mean(series.geometry.spacing[:2]))
    return None


def algorithm(model: LoadedModel, options: Options, labels: dict[str, str] | None = None) -> dicom.Algorithm:
    """What made a segmentation, for the SEG: the model's name and version (the repository's
    labels where known, else its folder) and the CAM recipe in one line."""

    labels = labels or {}
    path = Path(model.path)
    return dicom.Algorithm(model=labels.get("model") or path.parent.name or path.name,
                           model_version=labels.get("version") or path.name,
                           recipe=describe(options.to_record()))


def write_outputs(result: SeriesResult, out_dir: Path, output: str, algo: dicom.Algorithm, *,
                  heatmaps: bool = False) -> dict[str, Any]:
    """Write the series' mask (``mask.dcm`` SEG, ``mask.nii.gz`` or ``mask.nrrd``) and, with
    ``heatmaps``, ``heatmap.nii.gz`` / ``heatmap.nrrd`` (float32, the same grid) into
    ``out_dir``; returns the series' results row (see :data:`COLUMNS`), file names relative
    to ``out_dir``. Where slices went whole, their lesion candidates go to ``lesions.csv``
    (``slice`` the slice index) and the row says how: the slices segmented whole, the
    highest image-level score, the tiles run, the candidates and any note."""
    s = result.series
    fmt = output_format(output, s)
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_file = out_dir / f"mask{SUFFIX[fmt]}"
    if fmt == "seg":
        seg = dicom.segmentation(result.mask, s, algo)
        atomic_write_bytes(mask_file, dicom.to_bytes(seg))
    else:
        dicom.write_volume(mask_file, result.mask, s.geometry)
    heat_file = ""
    if heatmaps:
        heat_path = out_dir / ("heatmap.nrrd" if fmt == "nrrd" else "heatmap.nii.gz")
        dicom.write_volume(heat_path, result.heatmap, s.geometry)
        heat_file = heat_path.name
    ml = result.mask_ml
    return row(s, error="", output=mask_file.name, heatmap=heat_file, tumor_slices=result.tumor_slices,
               mask_voxels=int(result.mask.sum()), mask_ml="" if ml is None else round(ml, 4),
               **_whole_columns(result, out_dir))


def _whole_columns(result: SeriesResult, out_dir: Path) -> dict[str, Any]:
    """The row's whole-image columns; ``lesions.csv`` written where a slice went whole."""
    whole = [(k, w) for k, w in enumerate(result.whole) if w is not None]
    if not whole:
        return {"whole_slices": 0}
    lesions = [r for k, w in whole for r in lesion_rows(result.series.name, w, slice_index=k)]
    write_lesions(out_dir / LESIONS, lesions)
    notes = sorted({w.note for _, w in whole if w.note})
    return {"whole_slices": len(whole), "image_score": round(max(w.score for _, w in whole), 6),
            "tiles": sum(w.tiles for _, w in whole), "lesions": len(lesions), "lesion_file": LESIONS,
            "note": "; ".join(notes)}


def instance_segmentation(data: bytes | Path, mask: npt.NDArray[np.bool_], algo: dicom.Algorithm, *,
                          name: str = "image") -> bytes:
    """A DICOM SEG (Part 10 bytes) of one single-frame instance's ``(R, C)`` mask: what the
    service answers for an image that was a DICOM instance."""
    ds = dicom.read_dataset(data, name, pixels=False)
    h = dicom.dataset_header(ds, name)
    if h.pages != 1:
        raise InvalidInputError(f"{name}: a DICOM SEG of one image needs a single-frame instance, not {h.pages} frames")
    source = dicom.Series(uid=str(ds.get("SeriesInstanceUID", "")), name=name, modality=str(ds.get("Modality", "")),
                          values=np.zeros((1, h.height, h.width), dtype=np.float32), geometry=None, datasets=[ds])
    return dicom.to_bytes(dicom.segmentation(np.asarray(mask, dtype=bool)[None], source, algo))


def row(series: dicom.Series | None, *, error: str, name: str = "", uid: str = "", **values: Any) -> dict[str, Any]:
    """A results row: what is known of the series, and the error where it failed."""
    out: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    if series is not None:
        n, r, c = series.values.shape[:3]
        out.update(name=series.name, series_uid=series.uid, modality=series.modality, slices=n, rows=r, columns=c)
    else:
        out.update(name=name, series_uid=uid)
    out.update(values, error=error)
    return out


def load(entry: dict[str, Any], root: Path, *, max_pixels: int | None = None) -> dicom.Series:
    """The series a job's plan names: DICOM files, or a volume file, relative to ``root``;
    a slice of more than ``max_pixels`` (rows x columns; None: no limit) is refused (a
    DICOM series' before its pixel data is read)."""
    files = [root / f for f in entry["files"]]
    if entry["kind"] == "volume":
        series = dicom.load_volume(files[0])
        if max_pixels is not None and series.values.shape[1] * series.values.shape[2] > max_pixels:
            raise InvalidInputError(f"{entry['name']}: {series.values.shape[2]}x{series.values.shape[1]} pixels per "
                                    f"slice exceed the limit of {max_pixels}")
    else:
        series = dicom.load_series(files, entry["name"], max_pixels=max_pixels)
    series.name = entry["name"]
    return series


def safe_name(text: str) -> str:
    """``text`` as a file name: letters, digits and ``._-`` only, not starting with a dot."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")[:120]
    return name or "series"


def plan(root: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every DICOM series and NRRD/NIfTI image volume under ``root`` (a folder or one file):
    ``({"kind", "name", "uid", "files"}, ...)`` with files relative to ``root``'s folder,
    and the files that could not be read as (path, reason). Names are unique and safe for
    file names."""

    root = Path(root)
    base = root if root.is_dir() else root.parent
    groups, failures = dicom.scan(root)
    entries: list[dict[str, Any]] = []
    for g in groups:
        entries.append({"kind": "dicom", "uid": g.uid, "modality": g.modality,
                        "files": [str(f.relative_to(base)) for f in g.files]})
    candidates: Sequence[Path] = sorted(root.rglob("*")) if root.is_dir() else [root]
    for f in candidates:
        if f.is_file() and f.name.lower().endswith(NRRD_SUFFIXES + NIFTI_SUFFIXES) and not _is_label(f):
            entries.append({"kind": "volume", "uid": "", "modality": "", "files": [str(f.relative_to(base))]})
    taken: set[str] = set()
    for e in entries:
        stem = e["uid"] if e["kind"] == "dicom" else volume_stem(Path(e["files"][0]))
        name = safe_name(stem)
        while name in taken:
            name = f"{name}-{len(taken)}"
        taken.add(name)
        e["name"] = name
    return entries, [(str(p), reason) for p, reason in failures]


def _is_label(path: Path) -> bool:
    """Label volumes beside their images (BraTS ``*_seg``, ``*label*``, ``*mask*``) are not
    series to segment."""

    stem = volume_stem(path).lower()
    return stem.endswith(("_seg", "-seg", "_label", "-label", "_mask", "-mask")) or stem.startswith(("label", "mask"))
