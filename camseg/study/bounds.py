"""What a Dice is worth: a floor (a trivial prior, no image and no model) and a ceiling
(a supervised network trained on the true masks) beside every camseg Dice.

**Floor, ROIs** (:func:`disk_floor`): a centred disk, the same for every ROI. Its radius
(a fraction of the ROI's shorter side, over :data:`DISK_RADII`) is chosen on the select
split's tumor ROIs to maximise mean Dice, and scored on the report split's tumor ROIs.
The synthetic and the cropped real ROIs are centred on the mass, so this prior is far
from zero.

**Floor, whole images** (:func:`whole_floor`): the better on the select split of an
empty mask and the tissue mask, by mean Dice over the images with a lesion (an empty
mask scores 0 there, so it wins only where the tissue masks miss every lesion); its
false area on the normal images is reported beside.

**Ceiling, ROIs** (:func:`fit_ceiling`): a U-Net trained by
:func:`camseg.study.distill.train_student` on the train split's *true* masks (labels
0/1; normal ROIs all 0) with the classifier's epoch budget: BCE plus soft Dice, flips
and quarter turns. Its fixed threshold (:data:`CEILING_RULES`) is chosen on the select
split's tumor ROIs and it is scored, ungated, on the report split's tumor ROIs. It is a
:class:`~camseg.pipeline.student.Student`, so ``dataclasses.replace(model, student=...)``
runs it through the pipeline's distilled-segmenter path (whole images included).

:class:`Bounds` holds both numbers and places a Dice between them:
``position = (dice - floor) / (ceiling - floor)``.

Dice is :func:`camseg.core.metrics.dice` (both masks empty -> 1).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.core.metrics import dice
from camseg.core.progress import OnProgress, ShouldStop
from camseg.core.types import BoolArray, FloatArray
from camseg.data.folder import FolderDataset
from camseg.data.tensors import ArraySet, Size, load_arrays
from camseg.heat.masks import segment_maps
from camseg.pipeline.student import DistillConfig, Student, load_student
from camseg.study.distill import save_student, train_student
from camseg.study.wholemetrics import mask_dice

logger = logging.getLogger(__name__)

DISK_RADII: tuple[float, ...] = tuple(round(0.02 * k, 2) for k in range(1, 26))
"""Centred-disk radii searched by the ROI floor, as fractions of the ROI's shorter side."""
CEILING_RULES: tuple[str, ...] = ("0.3", "0.4", "0.5", "0.6", "0.7")
"""The fixed thresholds the ceiling's one is chosen from."""
CEILING_FILE = "ceiling.json"


def _mean(x: Tensor) -> float:
    return float(x.double().mean()) if x.numel() else math.nan


def _tumor_masks(masks: Tensor, what: str) -> Tensor:
    if masks.ndim != 3:
        raise InvalidInputError(f"{what}: masks must be (N, H, W), got {tuple(masks.shape)}")
    keep = masks.flatten(1).any(1)
    if not bool(keep.any()):
        raise InvalidInputError(f"{what}: no tumor ROI (every truth mask is empty)")
    return masks[keep].bool()


# ---------------------------------------------------------------------- floor, ROIs
def centred_disk(size: Size, radius: float) -> Tensor:
    """A disk ``(H, W)`` bool about the image centre, of ``radius`` times the shorter side
    (a pixel is in where its centre is within the radius; 0 gives an empty mask)."""
    h, w = (size, size) if isinstance(size, int) else size
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    r = radius * min(h, w)
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= r * r


@dataclass(frozen=True)
class DiskFloor:
    """The centred disk chosen on the select split: its radius (fraction of the shorter
    side), mean Dice there (``select_dice``) and on the report split (``dice``)."""

    radius: float
    select_dice: float
    dice: float
    n_select: int
    n_report: int

    @property
    def label(self) -> str:
        return f"centred disk, radius {self.radius:g} of the side"


def disk_floor(select_masks: Tensor, report_masks: Tensor, radii: Sequence[float] = DISK_RADII) -> DiskFloor:
    """The centred-disk floor: the radius of ``radii`` of highest mean Dice over the tumor
    ROIs of ``select_masks`` ``(N, H, W)`` (ties: the smaller radius), scored on those of
    ``report_masks``. Empty truth masks (normal ROIs) are left out of both means. No image
    is read."""
    sel, rep = _tumor_masks(select_masks, "floor (select)"), _tumor_masks(report_masks, "floor (report)")
    if not radii:
        raise InvalidInputError("the floor needs at least one radius")
    sel_hw, rep_hw = (int(sel.shape[1]), int(sel.shape[2])), (int(rep.shape[1]), int(rep.shape[2]))
    scores = [_mean(dice(centred_disk(sel_hw, r).expand_as(sel), sel)) for r in radii]
    best = int(np.argmax(scores))
    radius = float(radii[best])
    test = _mean(dice(centred_disk(rep_hw, radius).expand_as(rep), rep))
    return DiskFloor(radius, scores[best], test, int(sel.shape[0]), int(rep.shape[0]))


# ---------------------------------------------------------------------- floor, whole images
TissueFn = Callable[[FloatArray], BoolArray]
"""An image ``(H, W)`` -> its tissue mask (e.g. ``camseg.heat.tissue.tissue_mask``)."""


def tissue_masks(images: Sequence[FloatArray], tissue: TissueFn) -> list[BoolArray]:
    """``tissue`` applied to each image, checked to give a mask of the image's shape."""
    out = []
    for i, image in enumerate(images):
        m = np.asarray(tissue(image), dtype=bool)
        if m.shape != image.shape[:2]:
            raise InvalidInputError(f"tissue mask of image {i} has shape {m.shape}, the image {image.shape[:2]}")
        out.append(m)
    return out


@dataclass(frozen=True)
class WholeFloor:
    """The whole-image floor: ``choice`` ("empty" or "tissue"), its mean Dice over the
    images with a lesion on the select split and on the report split, and its mean false
    area (fraction of the image) on the report split's normal images."""

    choice: str
    select_dice: float
    dice: float
    false_fraction: float
    n_select: int
    n_report: int

    @property
    def label(self) -> str:
        return f"{self.choice} mask"


def _whole_scores(truths: Sequence[BoolArray], tissue: Sequence[BoolArray], what: str
                  ) -> tuple[dict[str, float], float, int]:
    if len(truths) != len(tissue):
        raise InvalidInputError(f"{what}: {len(truths)} truth masks but {len(tissue)} tissue masks")
    lesion = [(np.asarray(t, bool), np.asarray(m, bool)) for t, m in zip(truths, tissue, strict=True)
              if np.asarray(t).any()]
    if not lesion:
        raise InvalidInputError(f"{what}: no image with a lesion")
    for t, m in lesion:
        if t.shape != m.shape:
            raise InvalidInputError(f"{what}: truth {t.shape} and tissue {m.shape} masks differ in shape")
    scores = {"empty": 0.0, "tissue": float(np.mean([mask_dice(m, t) for t, m in lesion]))}
    normals = [np.asarray(m, bool).mean() for t, m in zip(truths, tissue, strict=True) if not np.asarray(t).any()]
    return scores, float(np.mean(normals)) if normals else math.nan, len(lesion)


def whole_floor(select_truths: Sequence[BoolArray], select_tissue: Sequence[BoolArray],
                report_truths: Sequence[BoolArray], report_tissue: Sequence[BoolArray]) -> WholeFloor:
    """The better on the select split of the empty mask and the tissue mask (ties: empty),
    by mean Dice over the images with a lesion; scored on the report split. Tissue masks
    are given precomputed (:func:`tissue_masks` makes them from a :data:`TissueFn`)."""
    sel, _, n_sel = _whole_scores(select_truths, select_tissue, "whole floor (select)")
    rep, tissue_false, n_rep = _whole_scores(report_truths, report_tissue, "whole floor (report)")
    choice = "tissue" if sel["tissue"] > sel["empty"] else "empty"
    return WholeFloor(choice, sel[choice], rep[choice], tissue_false if choice == "tissue" else 0.0, n_sel, n_rep)


# ---------------------------------------------------------------------- ceiling
@dataclass(frozen=True)
class Ceiling:
    """The supervised ceiling: the network (a :class:`Student`), its threshold chosen on
    the select split, mean Dice there and on the report split (tumor ROIs, ungated), and
    the training time in seconds."""

    student: Student
    threshold: float
    select_dice: float
    dice: float
    seconds: float
    n_select: int
    n_report: int

    @property
    def label(self) -> str:
        c = self.student.config
        return f"U-Net base {c.base} depth {c.depth}, {c.epochs} epochs on the true masks, t={self.threshold:g}"

    def record(self) -> dict[str, Any]:
        """What ``ceiling.json`` holds (all but the network)."""
        return {"threshold": self.threshold, "select_dice": self.select_dice, "dice": self.dice,
                "seconds": self.seconds, "n_select": self.n_select, "n_report": self.n_report,
                "config": asdict(self.student.config), "label": self.label}


def ceiling_config(epochs: int, *, base: int = 16, depth: int = 3, seed: int = 0) -> DistillConfig:
    """The ceiling's training settings: BCE plus soft Dice, flips and quarter turns, flip
    averaging at inference (the student's defaults)."""
    return DistillConfig(epochs=epochs, base=base, depth=depth, seed=seed)


def truth_labels(masks: Tensor) -> Tensor:
    """Truth masks ``(N, H, W)`` as the 0/1 int8 labels :func:`train_student` takes."""
    return masks.bool().to(torch.int8)


def ceiling_dice(student: Student, data: ArraySet, rules: Sequence[str] = CEILING_RULES) -> dict[str, float]:
    """Mean Dice of ``student``'s masks over the tumor ROIs of ``data``, per fixed
    threshold rule, ungated (torch, flip averaging as configured)."""
    tumor = data.select(torch.nonzero(data.has_mask & data.masks.flatten(1).any(1)).flatten())
    if len(tumor) == 0:
        raise InvalidInputError("the ceiling needs tumor ROIs with truth masks")
    heat = student.heatmaps(tumor.images, onnx=False)
    return {r: _mean(dice(segment_maps(heat, r).masks, tumor.masks)) for r in rules}


def fit_ceiling(train: ArraySet, select: ArraySet, report: ArraySet, cfg: DistillConfig, *,
                rules: Sequence[str] = CEILING_RULES, on_progress: OnProgress | None = None,
                should_stop: ShouldStop | None = None) -> Ceiling:
    """Train the ceiling on ``train``'s images and true masks, choose its threshold on
    ``select``'s tumor ROIs (ties: the first rule), score it on ``report``'s."""
    started = time.perf_counter()
    net = train_student(train.images, truth_labels(train.masks), cfg, on_progress=on_progress,
                        should_stop=should_stop)
    seconds = round(time.perf_counter() - started, 1)
    h, w = train.images.shape[-2:]
    student = Student(net, None, cfg, {"ceiling": True, "labels": "truth masks", "training": {"seconds": seconds},
                                       "data": {"images": len(train)}, "input": {"size": int(h) if h == w else None}})
    on_select = ceiling_dice(student, select, rules)
    rule = max(rules, key=lambda r: (-math.inf if math.isnan(on_select[r]) else on_select[r]))
    on_report = ceiling_dice(student, report, (rule,))
    n_sel = int((select.has_mask & select.masks.flatten(1).any(1)).sum())
    n_rep = int((report.has_mask & report.masks.flatten(1).any(1)).sum())
    logger.info("ceiling: t=%s, Dice %.3f (select) %.3f (report), %.1f s", rule, on_select[rule], on_report[rule],
                seconds)
    return Ceiling(student, float(rule), on_select[rule], on_report[rule], seconds, n_sel, n_rep)


def save_ceiling(out: Path, ceiling: Ceiling) -> Path:
    """The ceiling in its own folder: the student files (:func:`save_student`, ONNX
    included) and ``ceiling.json`` (:meth:`Ceiling.record`), written last."""
    out = Path(out)
    net = ceiling.student.network
    size = int(ceiling.student.meta.get("input", {}).get("size") or 0) or None
    spec = {"input_size": size, "in_channels": net.in_channels}
    if size is None:
        raise InvalidInputError("the ceiling is saved at a square input size; it was trained on another shape")
    save_student(out, net, ceiling.student.config, meta=ceiling.student.meta, spec=spec)
    (out / CEILING_FILE).write_text(json.dumps(ceiling.record(), indent=2) + "\n")
    return out


def load_ceiling(out: Path, *, onnx: bool | None = False) -> tuple[Student, dict[str, Any]]:
    """The ceiling saved by :func:`save_ceiling`: the student and ``ceiling.json``."""
    out = Path(out)
    record_path = out / CEILING_FILE
    if not record_path.is_file():
        raise NotFoundError(f"{out}: no saved ceiling ({CEILING_FILE} missing)")
    student = load_student(out, onnx=onnx)
    if student is None:
        raise NotFoundError(f"{out}: the ceiling's network is missing")
    try:
        record: dict[str, Any] = json.loads(record_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{record_path}: not valid JSON ({exc})") from exc
    return student, record


# ---------------------------------------------------------------------- both
@dataclass(frozen=True)
class Bounds:
    """A floor and a ceiling of mean Dice on the same tumor ROIs, with what each is."""

    floor: float
    ceiling: float
    floor_label: str = ""
    ceiling_label: str = ""
    split: str = "test"
    n: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def position(self, dice: float) -> float:
        """``(dice - floor) / (ceiling - floor)``: 0 at the floor, 1 at the ceiling; NaN
        where the ceiling is not above the floor (or any input is NaN)."""
        if not self.ceiling > self.floor or dice != dice:
            return math.nan
        return (dice - self.floor) / (self.ceiling - self.floor)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Bounds:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    HEADER = "| setting | camseg Dice | floor | ceiling | position |\n|---|---:|---:|---:|---:|"

    def cells(self, dice: float) -> str:
        """``floor | ceiling | position`` cells (no outer bars) for a table row."""
        return f"{_fmt(self.floor)} | {_fmt(self.ceiling)} | {_fmt(self.position(dice))}"

    def row(self, label: str, dice: float) -> str:
        """One row of :attr:`HEADER`: camseg Dice | floor | ceiling | position."""
        return f"| {label} | {_fmt(dice)} | {self.cells(dice)} |"

    def note(self) -> str:
        """One sentence saying what the floor and the ceiling are."""
        return (f"Floor {_fmt(self.floor)}: {self.floor_label or 'a trivial prior'} (no image, no model); ceiling "
                f"{_fmt(self.ceiling)}: {self.ceiling_label or 'a supervised network on the true masks'}; both "
                f"on the {self.n} tumor ROIs of the {self.split} split, ungated, settings chosen on val. "
                "*position* = (Dice - floor) / (ceiling - floor).")


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def roi_bounds(floor: DiskFloor, ceiling: Ceiling | None, *, split: str = "test") -> Bounds:
    """:class:`Bounds` of a disk floor and a ceiling (NaN ceiling where none was trained)."""
    details: dict[str, Any] = {"floor": asdict(floor)}
    if ceiling is not None:
        details["ceiling"] = ceiling.record()
    return Bounds(floor.dice, ceiling.dice if ceiling is not None else math.nan, floor.label,
                  ceiling.label if ceiling is not None else "not trained", split, floor.n_report, details)


def dataset_bounds(data_dir: Path, size: Size, channels: int, *, cfg: DistillConfig | None = None,
                   select: str = "val", report: str = "test", out: Path | None = None,
                   on_progress: OnProgress | None = None, should_stop: ShouldStop | None = None) -> Bounds:
    """Floor and ceiling of the folder data set at ``data_dir`` at input ``size`` and
    ``channels``: the disk floor chosen on ``select`` and the ceiling (``cfg``; None skips
    it) trained on ``train``, both scored on ``report``. With ``out`` the ceiling is saved
    there (:func:`save_ceiling`). Memory: the three splits' images at ``size``."""
    ds = FolderDataset.open(data_dir)
    sel = load_arrays(ds, ds.subset(select), size, channels)
    rep = load_arrays(ds, ds.subset(report), size, channels)
    floor = disk_floor(sel.masks, rep.masks)
    ceiling = None
    if cfg is not None:
        train = load_arrays(ds, ds.subset("train"), size, channels)
        ceiling = fit_ceiling(train, sel, rep, cfg, on_progress=on_progress, should_stop=should_stop)
        if out is not None:
            save_ceiling(out, ceiling)
    return roi_bounds(floor, ceiling, split=report)
