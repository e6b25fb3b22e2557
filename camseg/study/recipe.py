"""The recipe: how a model's masks are made, chosen on val and recorded with the model.

:func:`choose_recipe` starts from the protocol's choice (:func:`camseg.study.evaluation.evaluate_dice`:
the best CAM method, layer, threshold rule and largest-component refinement on val) and
tries each further step in turn, keeping it only where it raises the mean Dice on the
selection split (val):

1. test-time augmentation of the heatmaps (4 flips, then the 8 flips and turns);
2. the decision threshold of the classifier gate, lowered until the val sensitivity
   reaches a target (a tumor the gate misses scores Dice 0);
3. refinement of the masks from the image (:mod:`camseg.heat.refine`);
4. a segmentation network distilled from the heatmaps (:mod:`camseg.study.distill`), trained
   on the train split's pseudo-labels only.

After every step the threshold rule is chosen again on val. Every step is also scored
on the report split (test), so the ablation shows what each step gave where nothing
was chosen. Three views of the masks are reported (:class:`Views`): mean Dice over all
tumor ROIs with the gate (a missed tumor counts 0), over the detected tumors only, and
the mask area the recipe puts on normal ROIs.

The chosen options are written to ``recipe.json`` in the model directory;
:class:`~camseg.pipeline.run.LoadedModel` loads them and ``camseg segment``, the service's
Segment (when a request does not choose) and the bulk jobs use them. A *label-free*
recipe (:data:`LABEL_FREE`, fixed without looking at any truth mask) is scored beside
it, so users see what the val masks bought.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camseg.core.errors import InvalidInputError
from camseg.core.metrics import dice
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.types import BoolArray, FloatArray
from camseg.data.folder import FolderDataset
from camseg.heat.methods import CamMethod, Segmenter
from camseg.heat.refine import Refiner
from camseg.heat.rules import parse_rule
from camseg.pipeline.options import Options
from camseg.pipeline.recipe_record import RECIPE_FILE, Recipe, Step, Views, load_recipe, save_recipe
from camseg.pipeline.run import LoadedModel, make_masks, run
from camseg.pipeline.student import DistillConfig
from camseg.study.distill import as_image, distill, save_student

logger = logging.getLogger(__name__)

RULES: tuple[str, ...] = ("0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "p80", "p85", "p90", "p95", "otsu")
DECISION_THRESHOLDS: tuple[float, ...] = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def views(masks: Sequence[Tensor], truths: Sequence[BoolArray | None], called_tumor: Sequence[bool]) -> Views:
    """:class:`Views` of ``masks`` against ``truths`` (None marks a normal ROI)."""
    all_d, det_d, area, any_mask, tp, tn = [], [], [], [], 0, 0
    for m, t, called in zip(masks, truths, called_tumor, strict=True):
        if t is not None:
            d = float(dice(m, torch.from_numpy(t)))
            all_d.append(d)
            if called:
                det_d.append(d)
                tp += 1
        else:
            area.append(float(m.float().mean()))
            any_mask.append(float(bool(m.any())))
            tn += int(not called)
    n_t, n_n = len(all_d), len(area)
    return Views(_mean(all_d), _mean(det_d), _mean(area), _mean(any_mask), tp / n_t if n_t else math.nan,
                 tn / n_n if n_n else math.nan, n_t, n_n)


# -------------------------------------------------------------------------- splits
@dataclass
class Split:
    """The decoded images of one split, their truth masks (None: a normal ROI) and a
    cache of heatmaps per heat source, so rules and refinements are tried without
    recomputing them."""

    name: str
    images: list[FloatArray]
    truths: list[BoolArray | None]
    cache: dict[tuple[Any, ...], tuple[list[Tensor], Tensor]] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: Path, split: str) -> Split:
        ds = FolderDataset.open(data_dir)
        idx = ds.subset(split)
        if not idx:
            raise InvalidInputError(f"{data_dir}: no samples in split {split!r}")
        pairs = [ds.load(i) for i in idx]
        return cls(split, [p[0] for p in pairs], [p[1] for p in pairs])


def _heat_key(model: LoadedModel, opts: Options) -> tuple[Any, ...]:
    return (str(model.path), id(model.student), opts.method.value, opts.layer, opts.target, opts.tta)


def heat_of(model: LoadedModel, split: Split, opts: Options) -> tuple[list[Tensor], Tensor]:
    """Heatmaps (one per image, at its size) and probabilities ``(N, classes)`` of
    ``opts``' heat source on ``split`` (cached)."""
    key = _heat_key(model, opts)
    if key not in split.cache:
        res = run(model, split.images, replace(opts, threshold=None, encodings=frozenset()), task=f"heat {split.name}")
        split.cache[key] = ([r.heatmap for r in res.items], torch.from_numpy(np.stack([r.probabilities
                                                                                      for r in res.items])))
    return split.cache[key]


def score(model: LoadedModel, split: Split, opts: Options) -> Views:
    """:class:`Views` of ``opts`` on ``split``: the pipeline's masks, from cached heatmaps."""
    heat, probs = heat_of(model, split, opts)
    predicted = model.decide(probs, opts.decision_threshold)
    masks: list[Tensor | None] = [None] * len(heat)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, h in enumerate(heat):
        by_size.setdefault((int(h.shape[0]), int(h.shape[1])), []).append(i)
    for idx in by_size.values():
        seg = make_masks(model, [split.images[i] for i in idx], torch.stack([heat[i] for i in idx]),
                         predicted[idx], opts)
        for k, i in enumerate(idx):
            masks[i] = seg.masks[k]
    called = [int(c) in model.positives for c in predicted]
    return views([m for m in masks if m is not None], split.truths, called)


def _key(v: Views) -> float:
    return -math.inf if math.isnan(v.all_tumors) else v.all_tumors


def best_rule(model: LoadedModel, split: Split, opts: Options, rules: Sequence[str] = RULES,
              largest: Sequence[bool] = (False, True)) -> tuple[Options, Views]:
    """``opts`` with the threshold rule and largest-component choice of the highest
    all-tumor Dice on ``split``."""
    best: tuple[Options, Views] | None = None
    for rule in rules:
        for lcc in largest:
            o = replace(opts, threshold=parse_rule(rule), largest=lcc)
            v = score(model, split, o)
            if best is None or _key(v) > _key(best[1]):
                best = (o, v)
    assert best is not None
    return best


def choose_decision_threshold(probs: Tensor, is_tumor: Tensor, positives: Sequence[int],
                              min_sensitivity: float = 0.9,
                              candidates: Sequence[float] = DECISION_THRESHOLDS) -> float:
    """The highest decision threshold (at most 0.5: the gate is only ever widened) whose
    sensitivity on these labels reaches ``min_sensitivity``; the lowest candidate where
    none does. Higher thresholds keep the specificity."""
    p = probs[:, list(positives)].sum(1)
    ordered = sorted(candidates, reverse=True)
    for t in ordered:
        called = p >= t
        sens = float((called & is_tumor).sum()) / max(int(is_tumor.sum()), 1)
        if sens >= min_sensitivity:
            return float(t)
    return float(ordered[-1])


# -------------------------------------------------------------------------- recipe
LABEL_FREE = Options(method=CamMethod.FUSED, threshold=parse_rule("otsu"), largest=True, tta=4)
LABEL_FREE_DISTILLED = Options(method=Segmenter.DISTILLED, threshold=parse_rule("0.5"), largest=True)


def label_free_options(model: LoadedModel) -> Options:
    """The recipe fixed without any truth mask: the distilled student at probability
    0.5 where the model has one (its pseudo-labels use no truth either), else fused
    LayerCAM with 4-fold test-time augmentation, Otsu's threshold and the largest
    component."""
    return LABEL_FREE_DISTILLED if model.student is not None else LABEL_FREE


Distiller = Callable[[LoadedModel, Options], LoadedModel | None]


def heat_source(model: LoadedModel, opts: Options) -> tuple[Callable[[Tensor], tuple[Tensor, Tensor]],
                                                             Callable[[Tensor, Tensor], Tensor] | None]:
    """The heat source and refinement of ``opts`` for :func:`camseg.study.distill.distill`:
    the pipeline's heatmaps (with its test-time augmentation) of prepared batches, the
    gate's decisions as "positive", and where ``opts`` refines, its masks."""
    heat_opts = replace(opts, threshold=None, encodings=frozenset())
    cache: dict[int, Tensor] = {}


    def images_of(x: Tensor) -> list[FloatArray]:
        return [as_image(t) for t in x]

    def heat(x: Tensor) -> tuple[Tensor, Tensor]:
        res = run(model, images_of(x), heat_opts, task="distill heatmaps")
        probs = torch.from_numpy(np.stack([r.probabilities for r in res.items]))
        predicted = model.decide(probs, opts.decision_threshold)
        cache[id(x)] = predicted
        positive = torch.tensor([int(c) in model.positives for c in predicted], dtype=torch.bool)
        return torch.stack([r.heatmap for r in res.items]), positive

    def refine(x: Tensor, maps: Tensor) -> Tensor:
        predicted = cache.pop(id(x))
        return make_masks(model, images_of(x), maps, predicted, replace(opts, gate=True)).masks

    return heat, (refine if opts.refine is not Refiner.NONE else None)


def make_distiller(data_dir: Path, cfg: Any = None, *, on_progress: OnProgress | None = None,
                   should_stop: ShouldStop | None = None) -> Distiller:
    """A :data:`Distiller` training on ``data_dir``'s train split (images only) with
    :class:`camseg.pipeline.student.DistillConfig` ``cfg``, saving the student with the model."""

    dcfg = cfg or DistillConfig()

    def run_distiller(model: LoadedModel, opts: Options) -> LoadedModel | None:
        heat, refine = heat_source(model, opts)
        student = distill(model, data_dir, dcfg, heat_fn=heat, refine=refine, split="train",
                          on_progress=on_progress, should_stop=should_stop)
        meta = {**student.meta, "heat_options": opts.to_record()}
        save_student(model.path, student.network, student.config, meta=meta)
        return LoadedModel.load(model.path)

    return run_distiller


@dataclass(frozen=True)
class RecipeConfig:
    """Which steps :func:`choose_recipe` tries."""

    tta: tuple[int, ...] = (4, 8)
    min_sensitivity: float = 0.9
    refiners: tuple[str, ...] = (Refiner.CRF.value, Refiner.RANDOM_WALK.value, Refiner.WATERSHED.value,
                                 Refiner.GRABCUT.value)
    refine_rules: tuple[str, ...] = ("0.3", "0.4", "0.5", "p80", "p90", "otsu")
    select_split: str = "val"
    report_split: str = "test"


def choose_recipe(
    model: LoadedModel,
    data_dir: Path,
    start: Options,
    *,
    paper: Options | None = None,
    cfg: RecipeConfig | None = None,
    distiller: Distiller | None = None,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> Recipe:
    """Choose the recipe of ``model`` on ``data_dir``'s val split, starting from the
    protocol's choice ``start`` (and scoring the paper's setting ``paper`` first).

    ``distiller(model, options)`` trains and saves a student from the heatmaps of
    ``options`` and returns the model reloaded with it (None to skip the step); it must
    not read truth masks (:func:`camseg.study.distill.distill` does not).
    """
    model.require_trained("camseg recipe")
    cfg = cfg or RecipeConfig()
    sel, rep = Split.load(data_dir, cfg.select_split), Split.load(data_dir, cfg.report_split)
    n_steps = 3 + len(cfg.tta) + len(cfg.refiners) + (2 if distiller else 0)
    tracker = Tracker(f"recipe {model.path.name}", n_steps, on_progress=on_progress, should_stop=should_stop)
    steps: list[Step] = []

    def add(name: str, o: Options, kept: bool, v: Views | None = None) -> None:
        steps.append(Step(name, o.to_record(), kept, v or score(model, sel, o), score(model, rep, o)))
        tracker.advance(1, f"{name}: val Dice {steps[-1].select.all_tumors:.3f}")

    if paper is not None:
        add("paper: Grad-CAM, last layer, fixed threshold", paper, False)
    current = start
    current_v = score(model, sel, current)
    add("camseg CAM: method, layer, rule, largest CC", current, True, current_v)

    def consider(name: str, o: Options, v: Views) -> None:
        nonlocal current, current_v
        better = _key(v) > _key(current_v) + 1e-4
        add(name, o, better, v)
        if better:
            current, current_v = o, v

    for n in cfg.tta:
        o, v = best_rule(model, sel, replace(current, tta=n))
        consider(f"+ test-time augmentation x{n}", o, v)
    _, probs = heat_of(model, sel, current)
    is_tumor = torch.tensor([t is not None for t in sel.truths])
    t = choose_decision_threshold(probs, is_tumor, model.positives, cfg.min_sensitivity)
    o = replace(current, decision_threshold=None if t == 0.5 else t)
    consider(f"+ gate at p >= {t:g} (val sensitivity >= {cfg.min_sensitivity:g})", o, score(model, sel, o))
    for name in cfg.refiners:
        o, v = best_rule(model, sel, replace(current, refine=Refiner(name)), rules=cfg.refine_rules,
                         largest=(current.largest,))
        consider(f"+ refinement: {name}", o, v)
    if distiller is not None:
        with_student = distiller(model, current)
        if with_student is not None:
            model = with_student
            base = replace(current, method=Segmenter.DISTILLED, layer=None, tta=1)
            o, v = best_rule(model, sel, base, rules=("0.3", "0.4", "0.5", "0.6", "0.7", "otsu"))
            consider("+ distilled student", o, v)
            if current.refine is not Refiner.NONE:
                o2, v2 = best_rule(model, sel, replace(base, refine=Refiner.NONE),
                                   rules=("0.3", "0.4", "0.5", "0.6", "0.7", "otsu"))
                consider("+ distilled student, no refinement", o2, v2)
    lf = label_free_options(model)
    recipe = Recipe(current, lf, cfg.select_split, cfg.report_split, steps, score(model, sel, lf),
                    score(model, rep, lf), str(Path(data_dir).resolve()))
    tracker.finish(f"val Dice {current_v.all_tumors:.3f}")
    return recipe


__all__ = [
    "LABEL_FREE",
    "RECIPE_FILE",
    "Recipe",
    "RecipeConfig",
    "Split",
    "Step",
    "Views",
    "choose_decision_threshold",
    "choose_recipe",
    "label_free_options",
    "load_recipe",
    "save_recipe",
    "score",
    "views",
]


