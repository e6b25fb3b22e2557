"""Heatmap to mask: a threshold rule, the classifier gate, connected components.

Threshold rules (:func:`parse_rule`):

* a number in [0, 1] (``"0.5"``): heat >= t, on maps normalised to [0, 1];
* a percentile (``"p90"``): heat >= the map's own 90th percentile;
* ``"otsu"``: Otsu's threshold of each map's histogram (scikit-image).

The classifier gate (Guan & Loew) gives an ROI predicted normal an empty mask. The
largest-connected-component option keeps the one blob of the mask with the most
pixels (8-connectivity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from torch import Tensor

from camseg.errors import InvalidInputError

RuleKind = Literal["fixed", "percentile", "otsu"]


@dataclass(frozen=True)
class ThresholdRule:
    kind: RuleKind
    value: float = 0.0

    def __str__(self) -> str:
        if self.kind == "otsu":
            return "otsu"
        if self.kind == "percentile":
            return f"p{self.value:g}"
        return f"{self.value:g}"


def parse_rule(text: str | float | ThresholdRule) -> ThresholdRule:
    """``"otsu"``, ``"p90"`` or ``"0.5"`` to a :class:`ThresholdRule`."""
    if isinstance(text, ThresholdRule):
        return text
    s = str(text).strip().lower()
    try:
        if s == "otsu":
            return ThresholdRule("otsu")
        if s.startswith("p"):
            q = float(s[1:])
            if 0 <= q <= 100:
                return ThresholdRule("percentile", q)
        else:
            t = float(s)
            if 0 <= t <= 1:
                return ThresholdRule("fixed", t)
    except ValueError:
        pass
    raise InvalidInputError(f"bad threshold {text!r}: use otsu, a percentile like p90, or a number in [0, 1]")


def thresholds(heatmaps: Tensor, rule: ThresholdRule) -> Tensor:
    """The threshold each map ``(N, H, W)`` gets under ``rule``: ``(N,)``."""
    n = heatmaps.shape[0]
    if rule.kind == "fixed":
        return torch.full((n,), rule.value, dtype=heatmaps.dtype, device=heatmaps.device)
    flat = heatmaps.reshape(n, -1).float()
    if rule.kind == "percentile":
        return torch.quantile(flat, rule.value / 100.0, dim=1).to(heatmaps.dtype)
    values = flat.cpu().numpy()
    out = [threshold_otsu(v) if v.max() > v.min() else np.inf for v in values]
    return torch.tensor(out, dtype=heatmaps.dtype, device=heatmaps.device)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2-D boolean mask (empty stays empty)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def to_masks(
    heatmaps: Tensor,
    rule: ThresholdRule | str = "otsu",
    *,
    predicted: Tensor | None = None,
    positive_class: int = 1,
    largest: bool = False,
    fill_holes: bool = False,
) -> Tensor:
    """Boolean masks ``(N, H, W)`` from heatmaps.

    Args:
        heatmaps: ``(N, H, W)`` normalised to [0, 1].
        rule: the threshold rule.
        predicted: predicted class per image; where given, images not predicted as
            ``positive_class`` get an empty mask (the classifier gate).
        largest: keep only the largest connected component.
        fill_holes: fill enclosed holes.
    """
    if heatmaps.ndim != 3:
        raise InvalidInputError(f"heatmaps must be (N, H, W), got {tuple(heatmaps.shape)}")
    r = parse_rule(rule)
    t = thresholds(heatmaps, r)
    masks = heatmaps >= t[:, None, None]
    if r.kind == "percentile":
        masks &= heatmaps > 0  # a flat-zero region is never above its own percentile
    if predicted is not None:
        masks &= (predicted.to(masks.device) == positive_class)[:, None, None]
    if largest or fill_holes:
        arr = masks.cpu().numpy()
        for i in range(arr.shape[0]):
            if largest:
                arr[i] = largest_component(arr[i])
            if fill_holes:
                arr[i] = ndimage.binary_fill_holes(arr[i])
        masks = torch.from_numpy(arr).to(heatmaps.device)
    return masks
