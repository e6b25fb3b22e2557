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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from torch import Tensor

from camseg.core.errors import InvalidInputError
from camseg.heat.rules import ThresholdRule, parse_rule


def thresholds(heatmaps: Tensor, rule: ThresholdRule) -> Tensor:
    """The threshold each map ``(N, H, W)`` gets under ``rule``: ``(N,)``."""
    n = heatmaps.shape[0]
    if rule.kind == "fixed":
        return torch.full((n,), rule.value, dtype=heatmaps.dtype, device=heatmaps.device)
    flat = heatmaps.reshape(n, -1).float()
    if rule.kind == "percentile":
        return torch.quantile(flat, rule.value / 100.0, dim=1).to(heatmaps.dtype)
    values = flat.cpu().numpy()
    out = [_otsu(v) for v in values]
    return torch.tensor(out, dtype=heatmaps.dtype, device=heatmaps.device)


OTSU_BINS = 256


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold as the lower edge of the first foreground bin.

    scikit-image returns the centre of the last background bin; pixels in that bin's
    upper half would pass ``heat >= t``. Its histogram is ``np.histogram`` over
    [min, max] with half-open bins, so ``heat >= centre + half a bin`` reproduces the
    split Otsu chose exactly.
    """
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return float(np.inf)
    return float(threshold_otsu(values, nbins=OTSU_BINS)) + (hi - lo) / (2 * OTSU_BINS)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of each 2-D mask of ``(H, W)`` or ``(N, H, W)``.

    An empty mask stays empty; of two equally large components the later-labelled
    (lower, then further right) is kept.
    """
    stack = mask[None] if mask.ndim == 2 else mask
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within a slice, never across slices
    labels, count = ndimage.label(stack, structure=structure)
    if count == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    key = sizes.astype(np.int64) * (count + 1) + np.arange(count + 1)  # size first, label breaks ties
    key[0] = 0
    per_pixel = key[labels].reshape(stack.shape[0], -1)
    keep = (per_pixel == per_pixel.max(axis=1, keepdims=True)) & (per_pixel > 0)
    out = keep.reshape(stack.shape)
    return out[0] if mask.ndim == 2 else out


@dataclass(frozen=True)
class Masks:
    """Masks ``(N, H, W)``, the threshold each map got ``(N,)`` (``inf`` where the rule
    finds none, as Otsu on a flat map) and which images the classifier gate emptied."""

    masks: Tensor
    thresholds: Tensor
    gated: Tensor


def segment_maps(
    heatmaps: Tensor,
    rule: ThresholdRule | str = "otsu",
    *,
    predicted: Tensor | None = None,
    positive_class: int | Sequence[int] = 1,
    largest: bool = False,
    fill_holes: bool = False,
) -> Masks:
    """Heatmaps to masks, each threshold computed once.

    Args:
        heatmaps: ``(N, H, W)`` normalised to [0, 1].
        rule: the threshold rule.
        predicted: predicted class per image; where given, images not predicted as a
            positive class get an empty mask (the classifier gate).
        positive_class: the tumor class, or several (any of them counts as tumor).
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
    gated = torch.zeros(heatmaps.shape[0], dtype=torch.bool, device=heatmaps.device)
    if predicted is not None:
        positives = torch.as_tensor([positive_class] if isinstance(positive_class, int) else list(positive_class))
        gated = ~torch.isin(predicted.cpu(), positives).to(heatmaps.device)
        masks &= ~gated[:, None, None]
    if largest or fill_holes:
        arr = masks.cpu().numpy()
        if largest:
            arr = largest_component(arr)
        if fill_holes:
            structure = np.zeros((3, 3, 3), dtype=bool)
            structure[1] = ndimage.generate_binary_structure(2, 1)
            arr = ndimage.binary_fill_holes(arr, structure=structure)
        masks = torch.from_numpy(np.ascontiguousarray(arr)).to(heatmaps.device)
    return Masks(masks, t, gated)


def to_masks(
    heatmaps: Tensor,
    rule: ThresholdRule | str = "otsu",
    *,
    predicted: Tensor | None = None,
    positive_class: int | Sequence[int] = 1,
    largest: bool = False,
    fill_holes: bool = False,
) -> Tensor:
    """Boolean masks ``(N, H, W)`` from heatmaps: :func:`segment_maps`' masks alone."""
    return segment_maps(heatmaps, rule, predicted=predicted, positive_class=positive_class, largest=largest,
                        fill_holes=fill_holes).masks
