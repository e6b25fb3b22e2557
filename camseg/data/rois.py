"""ROIs for training, cut at a stated scale from whole images with truth masks.

From every source image (or slice) come

* **lesion ROIs**: for each lesion (a connected component of the truth mask,
  8-connectivity), ``per_lesion`` ROIs that hold the whole lesion *somewhere* inside,
  not centred: the ROI centre is the lesion's box centre moved by an offset drawn
  uniformly in ``[-offset, offset]`` of the ROI side on each axis (the synthetic
  generator's ``centre_jitter``). The mask is the truth mask cropped, so another lesion
  that falls in is marked too.
* **normal ROIs**: drawn uniformly among the places where the ROI, grown by ``margin``
  of its side on every edge, touches no lesion pixel, and at least ``min_tissue`` of it
  is tissue (:func:`camseg.heat.tissue.tissue_mask`). ``normal_ratio`` normal ROIs per
  lesion ROI are wanted in all, shared evenly over the sources (a seeded draw over the
  slices of a volume); what one source cannot give passes on to the next, and any
  shortfall at the end is recorded (``normal_shortfall``).

**Scale**: the ROI spans ``S * size`` source pixels on a side, ``S`` the
:class:`~camseg.core.scale.Scale`'s source pixels per model pixel (from millimetres
where the source states its pixel spacing; per axis, so anisotropic pixels give a ROI
square in mm), and is resized to ``size`` by area averaging (Pillow's box filter);
its mask is the pixels at least half covered by the lesion.

**Placement**: a lesion ROI is shifted to lie inside the image while keeping the whole
lesion inside (so the offset drawn is an upper bound: the recorded ``offset`` is the one
kept). Only where the image is smaller than the ROI does the ROI reach outside it, padded
with zeros; a lesion larger than the ROI gets a ROI centred on it, cut (``cut``: true).
Lesions under ``min_lesion_area`` model pixels are skipped (their count is recorded), but
normal ROIs keep clear of them too.

**Splits** are assigned per source image, or per case for volumes and DICOM series, so
the ROIs of one image or one patient never straddle train/val/test: a split the source
already has (the ``split`` column of a folder data set) carries over, the others are
drawn, stratified on whether the source has lesions, from the seed.

**Memory**: one source image (or volume, or series with its SEG) at a time, plus the
ROIs of it; a first pass reads only the masks, to count lesions for the splits and the
normal quota.

``dataset.json`` records the ``scale``, ``roi_size``, ``offset``, the ``source`` and, per
ROI id, its source image, case and box (``[y0, x0, y1, x1]`` in source pixels, ends
exclusive).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.scale import Scale
from camseg.core.types import BoolArray, FloatArray
from camseg.data.folder import CLASSES, FolderDataset, Record, read_mask, write_dataset
from camseg.data.synth import SynthConfig, split_ids
from camseg.data.volumes import DEFAULT_AXIS, slice_arrays, slice_spacing, volume_ids
from camseg.heat.lesions import label_components
from camseg.heat.tissue import tissue_mask
from camseg.io.guards import array_to_float
from camseg.io.inputs import decode_pixels
from camseg.io.volume import read_volume

logger = logging.getLogger(__name__)

DEFAULT_OFFSET = SynthConfig.centre_jitter
"""The largest lesion-centre offset, a fraction of the ROI side: the synthetic ROIs' own."""


@dataclass(frozen=True)
class RoiConfig:
    """What :func:`extract_rois` cuts; recorded in ``dataset.json``."""

    scale: Scale
    size: int = 64
    per_lesion: int = 2
    offset: float = DEFAULT_OFFSET
    normal_ratio: float = 1.0
    min_tissue: float = 0.7
    margin: float = 0.1  # fraction of the ROI side kept clear of every lesion around a normal ROI
    min_lesion_area: float = 2.0  # model pixels: smaller lesions give no ROI
    tries: int = 200  # random places tried per wanted normal ROI
    seed: int = 0
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)

    def validate(self) -> None:
        if not 16 <= self.size <= 1024:
            raise InvalidInputError(f"--size must be within 16..1024, got {self.size}")
        if not 1 <= self.per_lesion <= 64:
            raise InvalidInputError(f"--per-lesion must be within 1..64, got {self.per_lesion}")
        if not (math.isfinite(self.offset) and 0.0 <= self.offset <= 0.5):
            raise InvalidInputError(f"--offset must be within 0..0.5 of the ROI side, got {self.offset}")
        if not (math.isfinite(self.normal_ratio) and 0.0 <= self.normal_ratio <= 100.0):
            raise InvalidInputError(f"--normal-ratio must be within 0..100, got {self.normal_ratio}")
        if not (math.isfinite(self.min_tissue) and 0.0 <= self.min_tissue <= 1.0):
            raise InvalidInputError(f"--min-tissue must be within 0..1, got {self.min_tissue}")
        if not (math.isfinite(self.margin) and 0.0 <= self.margin <= 1.0):
            raise InvalidInputError(f"--margin must be within 0..1 of the ROI side, got {self.margin}")
        if self.tries < 1:
            raise InvalidInputError(f"tries must be at least 1, got {self.tries}")
        fractions = self.split
        if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions) \
                or abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] <= 0:
            raise InvalidInputError(f"split must be three fractions (train, val, test) summing to 1 with "
                                    f"train > 0, got {fractions!r}")


@dataclass(frozen=True)
class Plane:
    """One 2-D source image: stored values (uint8/uint16, or float in [0, 1]), gray or RGB,
    its truth mask, and its ``(row, column)`` pixel spacing in mm where known."""

    id: str
    pixels: npt.NDArray[Any]
    mask: BoolArray
    spacing: tuple[float, float] | None


@dataclass(frozen=True)
class Case:
    """A unit of the split: one image, one volume, one series. ``planes`` loads its images
    one at a time; ``masks`` its truth masks alone (the first pass)."""

    id: str
    split: str | None
    planes: Callable[[], Iterator[Plane]]
    masks: Callable[[], Iterator[BoolArray]]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Roi:
    """One ROI cut from a plane: ``box`` in source pixels, ``offset`` of the ROI centre from
    the lesion's box centre in ROI sides (lesion ROIs)."""

    kind: str  # "lesion" or "normal"
    box: tuple[int, int, int, int]
    image: npt.NDArray[Any]
    mask: BoolArray | None
    offset: tuple[float, float] | None = None
    cut: bool = False


# ---------------------------------------------------------------------------- sources
def folder_cases(root: Path, scale: Scale) -> tuple[list[Case], dict[str, Any]]:
    """Each image of a folder data set is a case; its split carries over.

    The pixel spacing is the source ``dataset.json``'s ``pixel_spacing_mm`` (one number,
    or ``[row, column]``) where present, else unknown. Images without a mask have no lesion.
    """
    ds = FolderDataset.open(root)
    if all(s.mask_path is None for s in ds.samples):
        raise InvalidInputError(f"{root}: no masks (masks/<id>.png): ROI extraction needs whole images with their "
                                "truth masks")
    spacing = _spacing_of(ds.meta.get("pixel_spacing_mm"), root)
    if scale.mm_per_model_pixel is not None and spacing is None:
        raise InvalidInputError(f"{root}: --mm needs the pixel spacing, which this data set does not record "
                                "(dataset.json pixel_spacing_mm); use --scale")

    def case(index: int) -> Case:
        s = ds.samples[index]

        def planes() -> Iterator[Plane]:
            pixels = decode_pixels(s.image_path, name=str(s.image_path))
            if s.mask_path is None:
                mask = np.zeros(pixels.shape[:2], dtype=bool)
            else:
                mask = read_mask(s.mask_path)
                if mask.shape != pixels.shape[:2]:
                    raise InvalidInputError(f"{s.mask_path}: mask shape {mask.shape} differs from its image "
                                            f"{pixels.shape[:2]}")
            yield Plane(s.id, pixels, mask, spacing)

        def masks() -> Iterator[BoolArray]:
            # an image without a mask has no lesion: no pixel data is read for it
            yield read_mask(s.mask_path) if s.mask_path is not None else np.zeros((0, 0), dtype=bool)

        return Case(s.id, s.split, planes, masks, {"image": str(s.image_path)})

    return [case(i) for i in range(len(ds))], {"source": str(Path(root)), "source_kind": "folder",
                                               "split_by": "image"}


def _spacing_of(value: Any, root: Path) -> tuple[float, float] | None:
    if value is None:
        return None
    values = [value, value] if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not (isinstance(values, list) and len(values) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                    for v in values)):
        raise InvalidInputError(f"{root / 'dataset.json'}: pixel_spacing_mm must be a positive number or "
                                f"[row, column], got {value!r}")
    return float(values[0]), float(values[1])


def volume_cases(pairs: Sequence[tuple[Path, Path]], *, axis: int = DEFAULT_AXIS,
                 window: tuple[float, float] | None = None) -> tuple[list[Case], dict[str, Any]]:
    """Each NRRD/NIfTI image + label pair is a case, sliced along ``axis`` as
    :func:`camseg.data.volumes.slice_pair` slices it (windowed to ``uint16``, rows flipped
    for display); the pixel spacing is the header's in-plane spacing."""
    pairs = [(Path(i), Path(lab)) for i, lab in pairs]
    if not pairs:
        raise InvalidInputError("no volume pairs")
    for image_path, label_path in pairs:
        for p in (image_path, label_path):
            if not p.is_file():
                raise NotFoundError(f"{p}: no such volume file")
    ids = volume_ids(pairs)

    def case(index: int) -> Case:
        image_path, label_path = pairs[index]
        vid = ids[index]

        def planes() -> Iterator[Plane]:
            image, info = read_volume(image_path)
            label, _ = read_volume(label_path)
            records = slice_arrays(image, info, label, axis=axis, id_prefix=vid, window=window,
                                   image_path=image_path, label_path=label_path)
            del image, label
            spacing = slice_spacing(info, axis)
            for r in records:
                mask = r.mask if r.mask is not None else np.zeros(r.image.shape[:2], dtype=bool)
                yield Plane(r.id, r.image, mask, spacing)

        def masks() -> Iterator[BoolArray]:
            label, _ = read_volume(label_path)
            for k in range(label.shape[axis]):  # lesion counts do not depend on the display flip
                yield np.take(label, k, axis=axis) != 0

        return Case(vid, None, planes, masks, {"image": str(image_path), "label": str(label_path)})

    return [case(i) for i in range(len(pairs))], {
        "source": [{"image": str(i), "label": str(lab)} for i, lab in pairs], "source_kind": "volumes",
        "axis": axis, "split_by": "volume"}


def dicom_cases(pairs: Sequence[tuple[Path, Path]]) -> tuple[list[Case], dict[str, Any]]:
    """Each DICOM series (a folder) with its DICOM SEG (a file) is a case: the series the SEG
    references, windowed per modality (:meth:`camseg.io.dicom.Series.windowed`), its mask
    every segment of the SEG together; the pixel spacing is the series' in-plane spacing."""
    pairs = [(Path(s), Path(g)) for s, g in pairs]
    if not pairs:
        raise InvalidInputError("no DICOM series")
    for folder, seg in pairs:
        if not folder.exists():
            raise NotFoundError(f"{folder}: no such DICOM folder")
        if not seg.is_file():
            raise NotFoundError(f"{seg}: no such DICOM SEG file")

    def case(index: int) -> Case:
        folder, seg_path = pairs[index]
        cid = f"series{index + 1:03d}"

        def planes() -> Iterator[Plane]:
            series, mask = _load_series_with_seg(folder, seg_path)
            values = series.windowed()
            spacing = None if series.geometry is None else (float(series.geometry.spacing[1]),
                                                            float(series.geometry.spacing[0]))
            for k in range(values.shape[0]):
                yield Plane(f"{cid}-s{k:03d}", values[k], mask[k], spacing)

        def masks() -> Iterator[BoolArray]:
            yield from _load_series_with_seg(folder, seg_path)[1]

        return Case(cid, None, planes, masks, {"series": str(folder), "seg": str(seg_path)})

    return [case(i) for i in range(len(pairs))], {
        "source": [{"series": str(s), "seg": str(g)} for s, g in pairs], "source_kind": "dicom",
        "split_by": "series"}


def _load_series_with_seg(folder: Path, seg_path: Path) -> tuple[Any, BoolArray]:
    """The series under ``folder`` that the SEG references, and the SEG's mask ``(N, R, C)``
    over it in the series' slice order."""
    import highdicom as hd  # only here: heavy to import

    from camseg.io.dicom import load_series, scan

    try:
        seg = hd.seg.segread(seg_path)
        uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except Exception as exc:  # highdicom and pydicom raise many types on a foreign or damaged file
        raise InvalidInputError(f"{seg_path}: not a readable DICOM SEG ({' '.join(str(exc).split())[:200]})") \
            from None
    found, _ = scan(folder)
    files = next((f.files for f in found if f.uid == uid), None)
    if files is None:
        raise InvalidInputError(f"{seg_path}: references series {uid}, which is not under {folder}")
    series = load_series(files)
    sources = series.datasets
    try:
        if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) > 1:
            pixels = seg.get_pixels_by_source_frame(
                sources[0].SOPInstanceUID, list(range(1, series.values.shape[0] + 1)),
                ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
        else:
            pixels = seg.get_pixels_by_source_instance(
                [ds.SOPInstanceUID for ds in sources], ignore_spatial_locations=True,
                assert_missing_frames_are_empty=True)
    except Exception as exc:
        raise InvalidInputError(f"{seg_path}: its frames do not map onto series {uid} "
                                f"({' '.join(str(exc).split())[:200]})") from None
    mask = np.asarray(pixels) != 0
    mask = mask.any(axis=-1) if mask.ndim == 4 else mask
    if mask.shape != series.values.shape[:3]:
        raise InvalidInputError(f"{seg_path}: mask shape {mask.shape} differs from series {uid}'s "
                                f"{series.values.shape[:3]}")
    return series, mask


# ---------------------------------------------------------------------------- cutting
def _area_resize(arr: FloatArray, size: int) -> FloatArray:
    """``(h, w)`` or ``(h, w, C)`` float32 to ``(size, size[, C])`` by area averaging
    (Pillow's box filter: each output pixel the mean of the source pixels it covers)."""
    if arr.ndim == 3:
        return np.stack([_area_resize(arr[..., c], size) for c in range(arr.shape[-1])], axis=-1)
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float32)


def _crop(arr: npt.NDArray[Any], y0: int, x0: int, hy: int, hx: int) -> npt.NDArray[Any]:
    """``arr[y0:y0+hy, x0:x0+hx]``, zero where the window leaves the array."""
    h, w = arr.shape[:2]
    if min(y0, x0) >= 0 and y0 + hy <= h and x0 + hx <= w:
        return arr[y0:y0 + hy, x0:x0 + hx]
    out = np.zeros((hy, hx, *arr.shape[2:]), dtype=arr.dtype)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y0 + hy, h), min(x0 + hx, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


def _place(want: float, side: int, lo: int, hi: int, extent: int) -> tuple[int, bool]:
    """The start of a ROI of ``side`` nearest ``want`` that holds the lesion ``[lo, hi)`` and
    lies inside ``[0, extent)``; the lesion wins where the image is smaller than the ROI. A
    lesion longer than ``side`` gets a ROI centred on it (cut: True)."""
    start = round(want)
    a, b = hi - side, lo  # the lesion inside
    if a > b:  # longer than the ROI: centred on it, inside the image where it fits
        start = round((lo + hi - side) / 2)
        return (int(np.clip(start, 0, extent - side)) if extent >= side else start), True
    c, d = 0, extent - side  # the ROI inside the image
    if max(a, c) <= min(b, d):
        return int(np.clip(start, max(a, c), min(b, d))), False
    return int(np.clip(start, a, b)), False


def _quantise(values: FloatArray, dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    top = 255.0 if np.dtype(dtype) == np.uint8 else 65535.0
    return np.round(np.clip(values, 0.0, 1.0) * top).astype(dtype)


def plane_rois(plane: Plane, cfg: RoiConfig, rng: np.random.Generator, normals: int) -> tuple[list[Roi], int]:
    """The lesion ROIs of ``plane`` and up to ``normals`` normal ROIs; returns them and the
    number of lesions skipped as smaller than ``cfg.min_lesion_area`` model pixels.

    Memory: the plane as float32 and its tissue mask (``H*W`` booleans) besides the ROIs.
    """
    try:
        sy = cfg.scale.pixels(None if plane.spacing is None else plane.spacing[0])
        sx = cfg.scale.pixels(None if plane.spacing is None else plane.spacing[1])
    except InvalidInputError as exc:
        raise InvalidInputError(f"{plane.id}: {exc.message}") from None
    hy, hx = round(sy * cfg.size), round(sx * cfg.size)
    if hy < 1 or hx < 1:
        raise InvalidInputError(f"{plane.id}: a ROI of {sy * cfg.size:.3g} x {sx * cfg.size:.3g} source pixels is "
                                "less than one pixel: the scale is too small")
    image = array_to_float(plane.pixels, plane.id)
    dtype = np.uint8 if plane.pixels.dtype == np.uint8 or image.ndim == 3 else np.uint16
    mask = plane.mask
    h, w = mask.shape

    def cut(y0: int, x0: int, with_mask: bool) -> tuple[npt.NDArray[Any], BoolArray | None]:
        pixels = _quantise(_area_resize(_crop(image, y0, x0, hy, hx), cfg.size), dtype)
        if not with_mask:
            return pixels, None
        return pixels, _area_resize(_crop(mask, y0, x0, hy, hx).astype(np.float32), cfg.size) >= 0.5

    rois: list[Roi] = []
    skipped = 0
    labels, n = label_components(mask)
    if n:
        areas = ndimage.sum_labels(np.ones(mask.shape, dtype=np.int32), labels, np.arange(1, n + 1))
        for k, box in enumerate(ndimage.find_objects(labels)):
            if box is None:
                continue
            if areas[k] < cfg.min_lesion_area * sy * sx:
                skipped += 1
                continue
            ly0, ly1, lx0, lx1 = box[0].start, box[0].stop, box[1].start, box[1].stop
            cy, cx = (ly0 + ly1) / 2, (lx0 + lx1) / 2
            for _ in range(cfg.per_lesion):
                dy, dx = rng.uniform(-cfg.offset, cfg.offset, 2)
                y0, cut_y = _place(cy + dy * hy - hy / 2, hy, ly0, ly1, h)
                x0, cut_x = _place(cx + dx * hx - hx / 2, hx, lx0, lx1, w)
                pixels, roi_mask = cut(y0, x0, True)
                assert roi_mask is not None
                if not roi_mask.any():  # a lesion thinner than half a model pixel everywhere
                    skipped += 1
                    break
                offset = ((y0 + hy / 2 - cy) / hy, (x0 + hx / 2 - cx) / hx)
                rois.append(Roi("lesion", (y0, x0, y0 + hy, x0 + hx), pixels, roi_mask, offset, cut_y or cut_x))
    if normals > 0 and hy <= h and hx <= w:
        tissue = tissue_mask(image, factor=max(1, int(min(sy, sx))))
        my, mx = math.ceil(cfg.margin * hy), math.ceil(cfg.margin * hx)
        found = 0
        for _ in range(cfg.tries * normals):
            y0, x0 = int(rng.integers(0, h - hy + 1)), int(rng.integers(0, w - hx + 1))
            if mask[max(0, y0 - my):y0 + hy + my, max(0, x0 - mx):x0 + hx + mx].any():
                continue
            if tissue[y0:y0 + hy, x0:x0 + hx].mean() < cfg.min_tissue:
                continue
            pixels, _ = cut(y0, x0, False)
            rois.append(Roi("normal", (y0, x0, y0 + hy, x0 + hx), pixels, None))
            found += 1
            if found == normals:
                break
    return rois, skipped


# ---------------------------------------------------------------------------- the data set
def _assign_splits(cases: Sequence[Case], has_lesion: Sequence[bool], cfg: RoiConfig) -> list[str]:
    """Each case's split: its own where it has one, else a stratified draw (lesions or not)."""
    free = [i for i, c in enumerate(cases) if c.split is None]
    drawn = split_ids(np.array([int(has_lesion[i]) for i in free], dtype=np.int64), cfg.split, cfg.seed)
    out = [c.split or "" for c in cases]
    for i, s in zip(free, drawn, strict=True):
        out[i] = s
    return out


def extract_rois(
    cases: Sequence[Case],
    out: Path,
    cfg: RoiConfig,
    *,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """Cut lesion and normal ROIs from ``cases`` (see the module docstring) and write them in
    the folder layout at ``out``, atomically (:func:`~camseg.data.folder.write_dataset`).

    Two passes, one case in memory at a time: the masks (lesion counts: the splits and the
    normal quota), then the images. Progress is reported per case under the tasks
    ``lesions <name>`` and ``rois <name>``.

    Raises:
        InvalidInputError: bad settings, no lesion in any mask, --mm where a source image
            has no pixel spacing, or any source problem (named).
    """
    cfg.validate()
    if not cases:
        raise InvalidInputError("no source images")
    name = Path(out).name
    counts: list[int] = []
    planes: list[int] = []
    tracker = Tracker(f"lesions {name}", len(cases), on_progress=on_progress, should_stop=should_stop)
    for case in cases:
        n_lesions = n_planes = 0
        for m in case.masks():
            n_planes += 1
            n_lesions += label_components(m)[1] if m.size else 0
        counts.append(n_lesions)
        planes.append(n_planes)
        tracker.advance()
    if sum(counts) == 0:
        raise InvalidInputError(f"{(provenance or {}).get('source', 'the source')}: no lesion in any truth mask")
    splits = _assign_splits(cases, [c > 0 for c in counts], cfg)
    wanted = round(cfg.normal_ratio * cfg.per_lesion * sum(counts))
    share = np.random.default_rng((cfg.seed, 1)).permutation(len(cases)) < wanted % len(cases)
    quotas = [wanted // len(cases) + int(extra) for extra in share]

    rois_meta: dict[str, dict[str, Any]] = {}
    totals = {"lesion_rois": 0, "normal_rois": 0, "skipped_lesions": 0, "cut_lesions": 0}
    meta: dict[str, Any] = {
        "name": name,
        "generator": "camseg.data.rois",
        "classes": list(CLASSES),
        **dict(provenance or {}),
        "scale": cfg.scale.to_dict(),
        "roi_size": cfg.size,
        "offset": cfg.offset,
        "parameters": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "scale"},
        "cases": [{"id": c.id, "split": s, "lesions": n, **c.info} for c, s, n in zip(cases, splits, counts,
                                                                                        strict=True)],
        "normals_wanted": wanted,
        "totals": totals,
        "rois": rois_meta,
    }

    def records() -> Iterator[Record]:
        progress = Tracker(f"rois {name}", len(cases), on_progress=on_progress, should_stop=should_stop)
        carry = 0
        for ci, case in enumerate(cases):
            n_planes = max(planes[ci], 1)
            per_plane = np.random.default_rng((cfg.seed, 2, ci)).multinomial(quotas[ci], [1 / n_planes] * n_planes)
            for pi, plane in enumerate(case.planes()):
                want = (int(per_plane[pi]) if pi < len(per_plane) else 0) + carry
                rng = np.random.default_rng((cfg.seed, 3, ci, pi))
                rois, skipped = plane_rois(plane, cfg, rng, want)
                totals["skipped_lesions"] += skipped
                n_lesion = n_normal = 0
                for roi in rois:
                    if roi.kind == "lesion":
                        rid, label = f"{plane.id}-l{n_lesion:03d}", 1
                        n_lesion += 1
                    else:
                        rid, label = f"{plane.id}-n{n_normal:03d}", 0
                        n_normal += 1
                    if rid in rois_meta:
                        raise InvalidInputError(f"ROI id {rid!r} comes from two source images: rename one source")
                    entry: dict[str, Any] = {"source": plane.id, "case": case.id, "kind": roi.kind,
                                             "box": list(roi.box)}
                    if roi.offset is not None:
                        entry["offset"] = [round(v, 4) for v in roi.offset]
                    if roi.cut:
                        entry["cut"] = True
                        totals["cut_lesions"] += 1
                    rois_meta[rid] = entry
                    yield Record(rid, label, splits[ci], roi.image, roi.mask)
                totals["lesion_rois"] += n_lesion
                totals["normal_rois"] += n_normal
                carry = want - n_normal
            progress.advance()
        meta["normal_shortfall"] = carry
        if carry:
            logger.warning("%s: %d normal ROIs of %d wanted found no place clear of lesions", name, carry, wanted)
        if totals["lesion_rois"] == 0:
            raise InvalidInputError(f"{meta.get('source', 'the source')}: every lesion is smaller than "
                                    f"{cfg.min_lesion_area:g} model pixels at this scale: no lesion ROI")

    return write_dataset(Path(out), records(), meta, overwrite=overwrite)


__all__ = ["DEFAULT_OFFSET", "Case", "Plane", "Roi", "RoiConfig", "dicom_cases", "extract_rois",
           "folder_cases", "plane_rois", "volume_cases"]
