"""Heatmap evaluation: the Dice sweep and the paper's filtered retraining.

**Dice sweep** — every CAM method at every layer, every threshold rule, with the
classifier gate: mean Dice over the tumor ROIs of a split. The paper's setting is
Grad-CAM at the last stage with a fixed threshold; the sweep measures whether other
layers, methods, fused maps and refinement (largest component) beat it.

**Filtered retraining** (Guan & Loew, arXiv:2201.02771, Sec. III-C) — heatmaps of the
trained model filter the train, val and test images, a fresh classifier is trained on
each filtered set, and test accuracy and ROC AUC are compared with the unfiltered
baseline:

* ``keep-hot``: pixels with heat >= t kept, the rest set to the image mean;
* ``keep-cold``: the complement (only the dark regions kept);
* ``soft``: the image multiplied by its heatmap;
* ``random``: the same number of pixels as ``keep-cold`` removes (the hot area), removed
  at random — the ROAR control (Hooker et al., NeurIPS 2019), which separates "the
  heatmap found the evidence" from "any removal of that size hurts".

``keep-hot(x) + keep-cold(x) = x + mean(x)`` wherever the heat is split by ``t``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camseg.cam import METHODS, CamMethod
from camseg.data.folder import FolderDataset
from camseg.data.tensors import ArraySet, load_arrays
from camseg.errors import InvalidInputError
from camseg.masks import ThresholdRule, parse_rule, to_masks
from camseg.metrics import mean_dice
from camseg.modeldir import load_model
from camseg.models import Classifier, ModelSpec
from camseg.segment import heatmaps
from camseg.training import TrainConfig, evaluate, progress_bar, train

logger = logging.getLogger(__name__)

FILTERS: tuple[str, ...] = ("keep-hot", "keep-cold", "soft", "random")
DEFAULT_RULES: tuple[str, ...] = ("0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "p80", "p90", "p95", "otsu")


# ------------------------------------------------------------------- Dice sweep
@dataclass(frozen=True)
class SweepRow:
    method: str
    layer: str
    rule: str
    largest: bool
    mean_dice: float
    n: int

    @property
    def name(self) -> str:
        return f"{self.method}@{self.layer}"


def dice_sweep(
    model: Classifier,
    data: ArraySet,
    *,
    methods: Sequence[str] = METHODS,
    layers: Sequence[str] | None = None,
    rules: Sequence[str] = DEFAULT_RULES,
    largest: Sequence[bool] = (False, True),
    gate: bool = True,
    progress: bool = True,
) -> list[SweepRow]:
    """Mean Dice over the tumor ROIs of ``data`` for every combination.

    ``layers`` defaults to the last three stages; the fused method is evaluated once,
    at the model's Grad-CAM layer. Rows come in a stable order.
    """
    layer_names = list(layers) if layers else model.layer_names[-3:]
    for name in layer_names:
        model.check_layer(name)
    parsed = [parse_rule(r) for r in rules]
    if not bool(data.has_mask.any()):
        raise InvalidInputError("the Dice sweep needs tumor ROIs with truth masks in the split")
    # the mean is over tumor ROIs and each mask depends on its own image only
    data = data.select(torch.nonzero(data.has_mask).flatten())
    select = data.has_mask
    combos = [(m, lay) for m in methods for lay in (layer_names if m != CamMethod.FUSED else [model.cam_layer])]
    rows: list[SweepRow] = []
    positive = model.spec.num_classes - 1
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("Dice sweep", total=len(combos) * len(data), status="")
        for method, layer in combos:
            heat, probs = heatmaps(model, data.images, method=method, layer=layer, bar=bar, task=task)
            pred = probs.argmax(1) if gate else None
            for rule, lcc in itertools.product(parsed, largest):
                masks = to_masks(heat, rule, predicted=pred, positive_class=positive, largest=lcc)
                rows.append(SweepRow(method, layer, str(rule), lcc, mean_dice(masks, data.masks, select),
                                     int(select.sum())))
    return rows


def best_row(rows: Iterable[SweepRow]) -> SweepRow:
    return max(rows, key=lambda r: (-math.inf if math.isnan(r.mean_dice) else r.mean_dice))


def paper_row(rows: Sequence[SweepRow], model: Classifier) -> SweepRow:
    """The paper's baseline: Grad-CAM at the last stage, best fixed threshold, no refinement."""
    cands = [r for r in rows if r.method == "gradcam" and r.layer == model.cam_layer and not r.largest
             and parse_rule(r.rule).kind == "fixed"]
    if not cands:
        raise InvalidInputError("the sweep holds no plain Grad-CAM row at the default layer")
    return best_row(cands)


# ------------------------------------------------------------- filtered retraining
def filter_images(images: Tensor, heat: Tensor, kind: str, threshold: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """Filtered copies of ``images`` ``(N, C, H, W)`` by heatmaps ``(N, H, W)``.

    Removed pixels are set to each image's (per-channel) mean intensity.
    """
    if kind not in FILTERS:
        raise InvalidInputError(f"unknown filter {kind!r}; choose one of {', '.join(FILTERS)}")
    if heat.shape != (images.shape[0], *images.shape[2:]):
        raise InvalidInputError(f"heatmaps {tuple(heat.shape)} do not match images {tuple(images.shape)}")
    mean = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    hot = (heat >= threshold)[:, None].expand_as(images)
    if kind == "keep-hot":
        return torch.where(hot, images, mean)
    if kind == "keep-cold":
        return torch.where(hot, mean, images)
    if kind == "soft":
        return images * heat[:, None]
    # random: remove as many pixels as the hot area, uniformly at random per image
    n, _, h, w = images.shape
    counts = (heat >= threshold).reshape(n, -1).sum(1)
    noise = torch.rand((n, h * w), generator=generator)
    ranks = noise.argsort(1).argsort(1)
    removed = (ranks < counts[:, None]).reshape(n, 1, h, w).expand_as(images)
    return torch.where(removed, mean, images)


@dataclass(frozen=True)
class FilterResult:
    filter: str
    threshold: float | None
    accuracy: float
    auc: float
    hot_fraction: float
    best_epoch: int


def filtered_retrain(
    model_dir: Path,
    data_dir: Path,
    *,
    thresholds: Sequence[float] = (0.5,),
    filters: Sequence[str] = FILTERS,
    method: str = "gradcam",
    layer: str | None = None,
    cfg: TrainConfig | None = None,
    arch: str | None = None,
    progress: bool = True,
    seed: int = 0,
) -> list[FilterResult]:
    """Retrain a fresh classifier on each heatmap-filtered copy of the data.

    The first row is the unfiltered baseline: the trained model on the plain test set.
    """
    model, meta = load_model(model_dir)
    for f in filters:
        if f not in FILTERS:
            raise InvalidInputError(f"unknown filter {f!r}; choose one of {', '.join(FILTERS)}")
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise InvalidInputError(f"filter threshold {t} is outside [0, 1]")
    ds = FolderDataset.open(data_dir)
    size, channels = model.spec.input_size, model.spec.in_channels
    sets = {name: load_arrays(ds, ds.subset(name), size, channels) for name in ("train", "val", "test")}
    base = evaluate(model, sets["test"])
    results = [FilterResult("none", None, base["accuracy"], base["auc"], 1.0, 0)]
    heat = {name: heatmaps(model, s.images, method=method, layer=layer)[0] for name, s in sets.items()}
    spec = ModelSpec(**{**asdict(model.spec), "arch": arch or model.spec.arch})
    cfg = cfg or TrainConfig(**meta.get("training", {}))
    gen = torch.Generator().manual_seed(seed)
    for t, kind in itertools.product(thresholds, filters):
        filtered = {name: _replace_images(s, filter_images(s.images, heat[name], kind, t, gen))
                    for name, s in sets.items()}
        res = train(spec, filtered["train"], filtered["val"], cfg, progress=progress,
                    description=f"retrain {kind} t={t:g}")
        scores = evaluate(res.model, filtered["test"])
        hot = float((heat["test"] >= t).float().mean())
        results.append(FilterResult(kind, t, scores["accuracy"], scores["auc"], hot, res.best_epoch))
        logger.info("filter %s t=%.2f: test accuracy %.4f, auc %.4f", kind, t, scores["accuracy"], scores["auc"])
    return results


def _replace_images(s: ArraySet, images: Tensor) -> ArraySet:
    return ArraySet(s.ids, images, s.labels, s.masks, s.has_mask, s.sizes)


def split_arrays(data_dir: Path, model: Classifier, split: str = "test") -> ArraySet:
    ds = FolderDataset.open(data_dir)
    return load_arrays(ds, ds.subset(split), model.spec.input_size, model.spec.in_channels)


def rule_label(rule: ThresholdRule | str) -> str:
    return str(parse_rule(rule))


def sweep_records(rows: Sequence[SweepRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
