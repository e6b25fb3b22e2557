"""Whole-image metrics: Dice on the images with a lesion, false mask area on the normal
images, lesion-level FROC and the image-level ROC AUC. Torch-free (numpy, scipy).

**Dice** (:func:`mask_dice`) has :func:`camseg.core.metrics.dice`'s semantics:
``2 |P ∩ T| / (|P| + |T|)``, 1 when both masks are empty, 0 when exactly one is.

**Hit rule** (:func:`match_candidates`). Truth lesions are the connected components of
the truth mask (8-connectivity, :func:`camseg.heat.lesions.label_components`). A
candidate (:class:`~camseg.heat.lesions.Lesion`) *hits* a truth lesion when its
centroid, rounded to the nearest pixel, lies inside that lesion's mask, or lies within
the lesion's equivalent-circle radius ``sqrt(area / pi)`` of the lesion's centroid. A
candidate that qualifies for several lesions is given to the one whose mask holds its
centroid, else to the one of nearest centroid. Each truth lesion counts once, with the
score of its best-scoring hit; further hits on a lesion are neither true nor false
positives; every candidate that hits no lesion is a false positive.

**FROC** (Bunch et al., "A free-response approach to the measurement and
characterisation of radiographic-observer performance", 1978; the operating points of
CAMELYON16 and LUNA16). Candidates of all images are ranked by score; at each distinct
score ``s`` the operating point is (false positives with score >= ``s`` per image,
share of truth lesions whose score is >= ``s``), starting from (0, 0) above every
score. The **sensitivity at a rate** ``r`` (:data:`FP_RATES`: 0.25, 0.5, 1, 2, 4 per
image) is a step rule, never an interpolation: the highest sensitivity among the
operating points with at most ``r`` false positives per image. Where every candidate
together stays below ``r`` false positives per image, that is the sensitivity of all
candidates (the curve is not extended). The **FROC score** is the mean of the five.

**Image-level AUC** (:func:`image_auc`): the Mann-Whitney U statistic of the image
scores, lesion images against normals (ties count half), as
:func:`camseg.core.metrics.roc_auc`; NaN with one class only.

Memory: each function holds one image's masks and their labels at a time; a
:class:`WholeReport` keeps per image only numbers (scores), not pixels.

>>> t = np.zeros((8, 8), bool); t[1:3, 1:3] = True
>>> hit = Lesion(0.9, 4, (1, 1, 3, 3), (1.5, 1.5)); miss = Lesion(0.4, 1, (6, 6, 7, 7), (6.0, 6.0))
>>> match_candidates([hit, miss], t)
Matched(lesion_scores=[0.9], fp_scores=[0.4], duplicates=0)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from camseg.core.errors import InvalidInputError
from camseg.core.types import BoolArray
from camseg.heat.lesions import Lesion, label_components

FP_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
"""False positives per image at which the FROC sensitivities are read."""


def _bool(mask: Any, what: str) -> BoolArray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InvalidInputError(f"{what} must be a 2-D mask, got shape {m.shape}")
    return m.astype(bool, copy=False)


def mask_dice(pred: BoolArray, truth: BoolArray) -> float:
    """Dice of two masks of one shape; 1 when both are empty, 0 when exactly one is.

    >>> mask_dice(np.array([[1, 1, 0, 0]], bool), np.array([[1, 0, 0, 0]], bool))
    0.6666666666666666
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise InvalidInputError(f"mask shapes differ: {p.shape} vs {t.shape}")
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(p & t)) / total


@dataclass(frozen=True)
class FalseArea:
    """Mask pixels on a normal image: their count, fraction of the image and fraction of
    the tissue (NaN without a tissue mask or with an empty one; mask pixels outside the
    tissue count too, so it may exceed 1)."""

    pixels: int
    image_fraction: float
    tissue_fraction: float


def false_area(pred: BoolArray, tissue: BoolArray | None = None) -> FalseArea:
    """The area of ``pred`` on an image with no lesion (every mask pixel is false)."""
    p = _bool(pred, "mask")
    pixels = int(p.sum())
    frac_tissue = math.nan
    if tissue is not None:
        t = _bool(tissue, "tissue mask")
        if t.shape != p.shape:
            raise InvalidInputError(f"mask {p.shape} and tissue mask {t.shape} differ in shape")
        frac_tissue = pixels / int(t.sum()) if t.any() else math.nan
    return FalseArea(pixels, pixels / p.size if p.size else math.nan, frac_tissue)


# ---------------------------------------------------------------------- hits
@dataclass(frozen=True)
class Matched:
    """Candidates of one image against its truth lesions: each lesion's best hit score
    (None where missed), the scores of the false positives, and the count of further hits
    on already-hit lesions (neither true nor false)."""

    lesion_scores: list[float | None]
    fp_scores: list[float]
    duplicates: int = 0


def match_candidates(candidates: Sequence[Lesion], truth: BoolArray) -> Matched:
    """Apply the hit rule of this module to one image's ``candidates`` and truth mask.
    Candidate centroids are in the truth mask's pixel frame, ``(y, x)``."""
    t = _bool(truth, "truth mask")
    labels, n = label_components(t)
    if n:
        index = np.arange(1, n + 1)
        areas = np.asarray(ndimage.sum_labels(np.ones(t.shape, np.int32), labels, index), dtype=float)
        centres = np.asarray(ndimage.center_of_mass(np.ones(t.shape, np.float32), labels, index), dtype=float)
        radii = np.sqrt(areas / math.pi)
    best: list[float | None] = [None] * n
    fps: list[float] = []
    duplicates = 0
    for c in candidates:
        target = -1
        if n:
            cy, cx = c.centroid
            iy, ix = round(cy), round(cx)
            inside = 0 <= iy < t.shape[0] and 0 <= ix < t.shape[1] and labels[iy, ix] > 0
            if inside:
                target = int(labels[iy, ix]) - 1
            else:
                dist = np.hypot(centres[:, 0] - cy, centres[:, 1] - cx)
                near = np.flatnonzero(dist <= radii)
                if near.size:
                    target = int(near[np.argmin(dist[near])])
        if target < 0:
            fps.append(float(c.score))
            continue
        prev = best[target]
        if prev is not None:
            duplicates += 1
        best[target] = float(c.score) if prev is None else max(prev, float(c.score))
    return Matched(best, fps, duplicates)


# ---------------------------------------------------------------------- FROC
@dataclass(frozen=True)
class Froc:
    """The FROC curve (``fp_per_image`` and ``sensitivity`` per operating point, from
    (0, 0), thresholds decreasing), the sensitivities at :data:`FP_RATES` and their mean."""

    fp_per_image: list[float]
    sensitivity: list[float]
    thresholds: list[float]
    at_rates: dict[float, float]
    score: float
    n_images: int
    n_lesions: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at_rates"] = {f"{k:g}": v for k, v in self.at_rates.items()}
        return d


def froc(matched: Sequence[Matched], rates: Sequence[float] = FP_RATES) -> Froc:
    """FROC over images (one :class:`Matched` each, normals included): the curve and the
    sensitivities at ``rates`` by this module's step rule. NaN sensitivities without a
    truth lesion; an error without images."""
    n_images = len(matched)
    if n_images == 0:
        raise InvalidInputError("FROC needs at least one image")
    if any(r < 0 for r in rates):
        raise InvalidInputError(f"false-positive rates must be >= 0, got {list(rates)}")
    lesions = np.asarray([-np.inf if s is None else s for m in matched for s in m.lesion_scores], dtype=float)
    fps = np.asarray([s for m in matched for s in m.fp_scores], dtype=float)
    n_lesions = int(lesions.size)
    levels = np.unique(np.concatenate([lesions[np.isfinite(lesions)], fps]))[::-1]
    fpi = [0.0] + [float((fps >= s).sum()) / n_images for s in levels]
    sens = [0.0 if n_lesions else math.nan] + [float((lesions >= s).sum()) / n_lesions if n_lesions else math.nan
                                               for s in levels]
    at: dict[float, float] = {}
    for r in rates:
        ok = [s for f, s in zip(fpi, sens, strict=True) if f <= r]
        at[float(r)] = max(ok) if n_lesions else math.nan
    score = float(np.mean(list(at.values()))) if n_lesions and at else math.nan
    return Froc(fpi, sens, [math.inf] + [float(s) for s in levels], at, score, n_images, n_lesions)


# ---------------------------------------------------------------------- image level
def image_auc(scores: Sequence[float], has_lesion: Sequence[bool]) -> float:
    """ROC AUC of image ``scores`` (higher: more likely a lesion) by the Mann-Whitney U
    statistic, ties counting half; NaN with one class only.

    >>> image_auc([0.9, 0.2, 0.5], [True, False, False])
    1.0
    """
    s = np.asarray(scores, dtype=float)
    pos = np.asarray(has_lesion, dtype=bool)
    if s.shape != pos.shape or s.ndim != 1:
        raise InvalidInputError(f"{s.size} scores but {pos.size} labels")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------------- per image and report
@dataclass(frozen=True)
class WholeRow:
    """One whole image: ``dice`` (lesion images; NaN on normals), the false area on
    normals (pixels, fraction of the image, of the tissue; NaN/0 on lesion images),
    ``score`` (the image-level lesion score), its candidates' count and matching."""

    id: str
    has_lesion: bool
    dice: float
    false_pixels: int
    false_fraction: float
    false_tissue_fraction: float
    n_candidates: int
    score: float
    lesion_scores: list[float | None] = field(default_factory=list)
    fp_scores: list[float] = field(default_factory=list)

    @property
    def matched(self) -> Matched:
        return Matched(list(self.lesion_scores), list(self.fp_scores))


def image_row(id: str, mask: BoolArray, truth: BoolArray, candidates: Sequence[Lesion], score: float, *,
              tissue: BoolArray | None = None) -> WholeRow:
    """The :class:`WholeRow` of one image's predicted mask, truth mask, candidates and
    image-level score (``tissue`` only for the false area's tissue fraction)."""
    m, t = _bool(mask, "mask"), _bool(truth, "truth mask")
    if m.shape != t.shape:
        raise InvalidInputError(f"{id}: mask {m.shape} and truth {t.shape} differ in shape")
    has = bool(t.any())
    matched = match_candidates(candidates, t)
    if has:
        return WholeRow(id, True, mask_dice(m, t), 0, math.nan, math.nan, len(candidates), float(score),
                        matched.lesion_scores, matched.fp_scores)
    fa = false_area(m, tissue)
    return WholeRow(id, False, math.nan, fa.pixels, fa.image_fraction, fa.tissue_fraction, len(candidates),
                    float(score), matched.lesion_scores, matched.fp_scores)


def _nanmean(xs: Sequence[float]) -> float:
    a = np.asarray([x for x in xs if x == x], dtype=float)
    return float(a.mean()) if a.size else math.nan


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


@dataclass(frozen=True)
class WholeReport:
    """Per-image rows of a whole-image evaluation and their summaries."""

    rows: list[WholeRow]
    name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def mean_dice(self) -> float:
        """Mean Dice over the images with a lesion (NaN without one)."""
        return _nanmean([r.dice for r in self.rows if r.has_lesion])

    @property
    def false_fraction(self) -> float:
        """Mean false area on the normal images, as a fraction of the image."""
        return _nanmean([r.false_fraction for r in self.rows if not r.has_lesion])

    @property
    def false_tissue_fraction(self) -> float:
        return _nanmean([r.false_tissue_fraction for r in self.rows if not r.has_lesion])

    @property
    def false_masks(self) -> float:
        """Share of normal images given any mask pixel."""
        normals = [r for r in self.rows if not r.has_lesion]
        return sum(r.false_pixels > 0 for r in normals) / len(normals) if normals else math.nan

    @property
    def auc(self) -> float:
        return image_auc([r.score for r in self.rows], [r.has_lesion for r in self.rows])

    def froc(self, rates: Sequence[float] = FP_RATES) -> Froc:
        return froc([r.matched for r in self.rows], rates)

    def summary(self) -> dict[str, Any]:
        f = self.froc() if self.rows else None
        return {"images": len(self.rows), "with_lesion": sum(r.has_lesion for r in self.rows),
                "mean_dice": self.mean_dice, "false_fraction": self.false_fraction,
                "false_tissue_fraction": self.false_tissue_fraction, "false_masks": self.false_masks,
                "auc": self.auc, "froc": f.to_dict() if f else None}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "notes": list(self.notes), "summary": self.summary(),
                "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WholeReport:
        """From :meth:`to_dict` output (the summary is recomputed from the rows)."""
        try:
            rows = [WholeRow(**r) for r in d["rows"]]
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"not a whole-image report ({exc})") from exc
        return cls(rows, str(d.get("name", "")), list(d.get("notes", [])))

    def to_markdown(self) -> str:
        s = self.summary()
        lines = [f"# Whole-image evaluation{f' of {self.name}' if self.name else ''}", ""]
        lines += [f"> {n}" for n in self.notes]
        lines += [f"{s['images']} images, {s['with_lesion']} with a lesion.", "",
                  "| mean Dice (lesion images) | false area on normals (of image) | (of tissue) | normals given a "
                  "mask | image AUC | FROC score |", "|---:|---:|---:|---:|---:|---:|",
                  f"| {_fmt(s['mean_dice'])} | {_fmt(s['false_fraction'])} | {_fmt(s['false_tissue_fraction'])} | "
                  f"{_fmt(s['false_masks'])} | {_fmt(s['auc'])} | "
                  f"{_fmt(s['froc']['score'] if s['froc'] else math.nan)} |"]
        if s["froc"]:
            rates = s["froc"]["at_rates"]
            lines += ["", f"Lesion sensitivity at false positives per image ({s['froc']['n_lesions']} lesions; a hit: "
                      "the candidate's centroid inside the lesion or within its equivalent radius of its centre):", "",
                      "| " + " | ".join(rates) + " |", "|" + "---:|" * len(rates),
                      "| " + " | ".join(_fmt(v) for v in rates.values()) + " |"]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> Path:
        """``out/whole.json``, ``out/whole.md`` and ``out/froc.png``."""
        from camseg.study import figures  # matplotlib only where a figure is written

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "whole.md").write_text(self.to_markdown())
        if self.rows:
            f = self.froc()
            figures.froc_curve(out / "froc.png", {self.name or "camseg": (f.fp_per_image, f.sensitivity)},
                               f"FROC over {f.n_images} images, {f.n_lesions} lesions")
        (out / "whole.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return out
