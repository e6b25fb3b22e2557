"""Classification and segmentation metrics.

Dice follows Dice (1945) / Sørensen (1948): ``2 |P ∩ T| / (|P| + |T|)`` for a
predicted mask ``P`` and a truth mask ``T``. Edge cases, stated once for all callers:

* both masks empty -> 1.0 (nothing to find and nothing found, e.g. a normal ROI
  the classifier gated to an empty mask);
* exactly one mask empty -> 0.0.

The paper's mean Dice is the mean over tumor ROIs (those with a truth mask);
:func:`mean_dice` takes the selection explicitly.

>>> import torch
>>> p = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
>>> t = torch.tensor([[1, 0, 0, 0]], dtype=torch.bool)
>>> round(dice(p, t).item(), 4)
0.6667
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from torch import Tensor


def dice(pred: Tensor, truth: Tensor) -> Tensor:
    """Per-sample Dice of boolean masks shaped ``(N, ...)`` (or a single mask)."""
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {tuple(pred.shape)} vs {tuple(truth.shape)}")
    if pred.ndim <= 2:
        return dice(pred[None], truth[None])[0]
    p = pred.reshape(pred.shape[0], -1).bool()
    t = truth.reshape(truth.shape[0], -1).bool()
    inter = (p & t).sum(1).double()
    total = (p.sum(1) + t.sum(1)).double()
    return torch.where(total == 0, torch.ones_like(total), 2 * inter / total.clamp_min(1))


def mean_dice(pred: Tensor, truth: Tensor, select: Tensor | None = None) -> float:
    """Mean of :func:`dice` over the samples where ``select`` is true (all by default).

    NaN when the selection is empty.
    """
    d = dice(pred, truth)
    if select is not None:
        d = d[select.bool()]
    return float(d.mean()) if d.numel() else math.nan


def accuracy(pred: Tensor, labels: Tensor) -> float:
    return float((pred == labels).float().mean()) if labels.numel() else math.nan


def roc_auc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count half).

    NaN when only one class is present.
    """
    s = scores.detach().double().cpu().numpy()
    pos = positive.bool().cpu().numpy()
    if pos.all() or not pos.any():
        return math.nan
    u = mannwhitneyu(s[pos], s[~pos], alternative="two-sided").statistic
    return float(u / (pos.sum() * (~pos).sum()))


def confusion(pred: Tensor, labels: Tensor, num_classes: int = 2) -> np.ndarray:
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).numpy()
