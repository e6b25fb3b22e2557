"""Lesion candidates: the connected components of a whole-image mask, each with a
score and an area.

A candidate's ``score`` is the highest value of the score map (the blended lesion
probability of :mod:`camseg.pipeline.whole`) inside its component; FROC curves rank
candidates by it. Coordinates are in the image's own pixels: ``box`` is
``(y0, x0, y1, x1)`` with exclusive ends, ``centroid`` is ``(y, x)``.

>>> m = np.zeros((8, 8), bool); m[1:3, 1:3] = True; m[5:8, 5:7] = True
>>> [(c.area, c.score) for c in lesions_of(m, np.full((8, 8), 0.5, np.float32))]
[(6, 0.5), (4, 0.5)]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from camseg.core.types import BoolArray, FloatArray

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as the masks' largest component


@dataclass(frozen=True)
class Lesion:
    """One candidate: score in [0, 1], area in pixels, bounding box and centroid."""

    score: float
    area: int
    box: tuple[int, int, int, int]
    centroid: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"], d["centroid"] = list(self.box), [round(v, 2) for v in self.centroid]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lesion:
        y0, x0, y1, x1 = (int(v) for v in d["box"])
        cy, cx = (float(v) for v in d["centroid"])
        return cls(float(d["score"]), int(d["area"]), (y0, x0, y1, x1), (cy, cx))


def label_components(mask: BoolArray) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label`` with 8-connectivity: the label image and the count."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=EIGHT)
    return labels, int(n)


def lesions_of(mask: BoolArray, score_map: FloatArray, *, min_area: int = 1) -> list[Lesion]:
    """The components of ``mask`` of at least ``min_area`` pixels as candidates, the
    highest-scoring first (ties: the larger first). ``score_map`` has the mask's shape."""
    if mask.shape != score_map.shape:
        raise ValueError(f"mask {mask.shape} and score map {score_map.shape} differ in shape")
    labels, n = label_components(mask)
    if n == 0:
        return []
    # sums over the labelled pixels alone (scipy's per-label reductions visit every pixel)
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    lab = flat[fg]
    areas = np.bincount(lab, minlength=n + 1)
    ys, xs = np.divmod(fg, mask.shape[1])
    cys = np.bincount(lab, weights=ys, minlength=n + 1)
    cxs = np.bincount(lab, weights=xs, minlength=n + 1)
    scores = np.full(n + 1, -np.inf)
    np.maximum.at(scores, lab, np.asarray(score_map, dtype=np.float64).ravel()[fg])
    boxes = ndimage.find_objects(labels)
    out = []
    for k in range(1, n + 1):
        box = boxes[k - 1]
        if areas[k] < min_area or box is None:
            continue
        by, bx = box
        out.append(Lesion(float(np.clip(scores[k], 0.0, 1.0)), int(areas[k]),
                          (int(by.start), int(bx.start), int(by.stop), int(bx.stop)),
                          (float(cys[k] / areas[k]), float(cxs[k] / areas[k]))))
    out.sort(key=lambda c: (-c.score, -c.area))
    return out
