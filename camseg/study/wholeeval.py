"""Whole-image evaluation: a model slid over the whole images of a folder data set,
scored by Dice, false area, lesion FROC and image AUC (:mod:`camseg.study.wholemetrics`),
beside its floor and its ceiling (:mod:`camseg.study.bounds`).

The threshold rule, whether the blended probability gates the map, and at which
decision threshold, are chosen on the val images, by mean Dice over those with a lesion: the classifier is
slid over each val image once (:func:`camseg.pipeline.whole.whole_maps`) and every
candidate setting makes its masks from the same maps (:func:`~camseg.pipeline.whole.masks_of`).

The ceiling is the supervised U-Net of :func:`camseg.study.bounds.fit_ceiling` put in
the classifier's place as its student (:class:`~camseg.pipeline.methods.Segmenter`),
slid by the same window, its threshold (and whether the classifier gates it) chosen on
the same val images. The floor is the better on val of the empty mask and the tissue mask.

Memory: one image at a time, plus the model-space maps of the val images while a
setting is chosen (about 17 bytes per model-space pixel each).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from camseg.core.errors import InvalidInputError
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.types import BoolArray
from camseg.data.folder import FolderDataset
from camseg.heat.methods import Segmenter
from camseg.heat.refine import Refiner
from camseg.heat.rules import parse_rule
from camseg.heat.tissue import tissue_mask
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.student import Student
from camseg.pipeline.whole import Tiling, Whole, WholeMaps, masks_of, whole_maps
from camseg.study.bounds import Bounds, WholeFloor, whole_floor
from camseg.study.wholemetrics import WholeReport, image_row, mask_dice

WHOLE_RULES: tuple[str, ...] = ("0.3", "0.5", "0.7", "otsu", "p90")
"""Threshold rules tried on the val images."""
DECISIONS: tuple[float, ...] = (0.5, 0.7, 0.9, 0.97)
"""Decision thresholds (the gate of the blended lesion probability) tried on val."""
CEILING_RULES: tuple[str, ...] = ("0.3", "0.5", "0.7", "0.8", "0.9", "0.95")
REFINED = 3
"""The settings, best on unrefined masks, tried again with the options' refinement."""
WHOLE = Tiling(mode=Whole.ALWAYS)
"""The default tiling of an evaluation: every image slid, at the model's scale."""


@dataclass(frozen=True)
class WholeChoice:
    """The setting chosen on val and the val Dice of every setting tried."""

    options: Options
    val_dice: float
    tried: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        o = self.options
        gate = f", gate p>={o.decision_threshold:g}" if o.gate and o.decision_threshold is not None else \
            (", ungated" if not o.gate else "")
        return f"{o.method.value} t={o.threshold}{gate}" + (f", TTA x{o.tta}" if o.tta > 1 else "") + \
            (f", {o.refine.value}" if o.refine.value != "none" else "")


def _whole(opts: Options, tiling: Tiling) -> Options:
    return replace(opts, tiling=replace(tiling, mode=Whole.ALWAYS))


def _slide(model: LoadedModel, ds: FolderDataset, idx: Sequence[int], opts: Options, tracker: Tracker,
           on_progress: OnProgress | None, should_stop: ShouldStop | None) -> list[tuple[WholeMaps, BoolArray]]:
    engine = model.engine_for(opts)
    out = []
    for i in idx:
        image, truth = ds.load(i)
        maps = whole_maps(model, image, opts, engine, should_stop=should_stop)
        out.append((maps, truth if truth is not None else np.zeros(image.shape[:2], dtype=bool)))
        tracker.advance(1)
    return out


def choose_whole(model: LoadedModel, data: Path | FolderDataset, options: Options | None = None, *,
                 tiling: Tiling = WHOLE, split: str = "val", rules: Sequence[str] = WHOLE_RULES,
                 decisions: Sequence[float] = DECISIONS, gates: Sequence[bool] = (False, True),
                 on_progress: OnProgress | None = None, should_stop: ShouldStop | None = None) -> WholeChoice:
    """The threshold rule, gate and decision threshold with the best mean Dice over the
    ``split`` images with a lesion, for ``options`` (default: the model's recipe, else
    its defaults); the method, layer, TTA and refinement stay. ``gates``: ungated
    (every rule), gated (every rule at every decision threshold), or both. Every setting
    is scored on unrefined masks, and the :data:`REFINED` best again with the options'
    refinement (``tried`` lists the unrefined scores). Ties keep the first tried."""
    ds = data if isinstance(data, FolderDataset) else FolderDataset.open(data)
    idx = ds.subset(split)
    base = _whole(options or model.default_options(), tiling)
    tracker = Tracker(f"choose on {split}", len(idx), on_progress=on_progress, should_stop=should_stop)
    slid = _slide(model, ds, idx, base, tracker, on_progress, should_stop)
    lesion = [(m, t) for m, t in slid if t.any()]
    if not lesion:
        raise InvalidInputError(f"{ds.root}: no {split} image with a lesion to choose a whole-image setting on")
    def score(opts: Options) -> float:
        scores = []
        for maps, truth in lesion:
            _, mask, _, _ = masks_of(maps, opts)
            assert mask is not None
            scores.append(mask_dice(mask, truth))
        return float(np.mean(scores))

    # every setting on unrefined masks (refinement costs a CRF or a random walk per region);
    # the best few again with the options' refinement, which the final choice carries
    refine = base.refine
    tried: dict[str, float] = {}
    ranked: list[tuple[float, int, Options]] = []
    settings = [(gate, decision) for gate in gates for decision in (decisions if gate else (None,))]
    for gate, decision in settings:
        for rule in rules:
            opts = replace(base, threshold=parse_rule(rule), gate=gate, decision_threshold=decision,
                           refine=Refiner.NONE)
            d = score(opts)
            tried[f"t={rule}" + (f" gate={decision:g}" if decision is not None else "")] = round(d, 4)
            ranked.append((d, len(ranked), opts))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    if refine is not Refiner.NONE:
        ranked = sorted(((score(replace(o, refine=refine)), k, replace(o, refine=refine)) for _, k, o in
                         ranked[:REFINED]), key=lambda r: (-r[0], r[1]))
    best = (ranked[0][0], ranked[0][2])
    tracker.finish()
    return WholeChoice(best[1], best[0], tried)


def evaluate_whole(model: LoadedModel, data: Path | FolderDataset, options: Options, *, tiling: Tiling = WHOLE,
                   split: str = "test", name: str = "", on_progress: OnProgress | None = None,
                   should_stop: ShouldStop | None = None, keep: int = 0) -> tuple[WholeReport, list[Any]]:
    """Slide ``model`` over the ``split`` images under ``options`` and score each
    (:func:`camseg.study.wholemetrics.image_row`). Returns the report and, for the first
    ``keep`` images, ``(id, image, truth, mask)`` for figures."""
    ds = data if isinstance(data, FolderDataset) else FolderDataset.open(data)
    idx = ds.subset(split)
    opts = _whole(options, tiling)
    engine = model.engine_for(opts)
    tracker = Tracker(f"whole images {name or split}", len(idx), on_progress=on_progress, should_stop=should_stop)
    rows = []
    kept: list[Any] = []
    notes: list[str] = []
    for i in idx:
        image, truth = ds.load(i)
        t = truth if truth is not None else np.zeros(image.shape[:2], dtype=bool)
        maps = whole_maps(model, image, opts, engine, should_stop=should_stop)
        _, mask, _, info = masks_of(maps, opts)
        assert mask is not None
        sid = ds.samples[i].id
        rows.append(image_row(sid, mask, t, info.lesions, info.score, tissue=maps.tissue_at_image_size()))
        if info.note:
            notes.append(f"{sid}: {info.note}")
        if len(kept) < keep:
            kept.append((sid, image, t, mask))
        tracker.advance(1)
    tracker.finish()
    return WholeReport(rows, name, notes), kept


def with_ceiling(model: LoadedModel, student: Student) -> LoadedModel:
    """``model`` with the supervised U-Net in its student's place (the classifier stays
    for the tile probabilities; the ceiling runs ungated)."""
    return replace(model, student=student)


def ceiling_options() -> Options:
    return Options(method=Segmenter.DISTILLED, gate=False, threshold=parse_rule("0.5"))


def whole_floor_of(data: Path | FolderDataset, *, select: str = "val", report: str = "test") -> WholeFloor:
    """The whole-image floor: the better on ``select`` of the empty and the tissue mask."""
    ds = data if isinstance(data, FolderDataset) else FolderDataset.open(data)

    def masks(split: str) -> tuple[list[BoolArray], list[BoolArray]]:
        truths, tissues = [], []
        for i in ds.subset(split):
            image, truth = ds.load(i)
            truths.append(truth if truth is not None else np.zeros(image.shape[:2], dtype=bool))
            tissues.append(tissue_mask(image))
        return truths, tissues

    return whole_floor(*masks(select), *masks(report))


@dataclass(frozen=True)
class WholeStudy:
    """camseg's whole-image report, its floor and ceiling, and the settings chosen."""

    report: WholeReport
    choice: WholeChoice
    floor: WholeFloor
    ceiling: WholeReport | None
    ceiling_choice: WholeChoice | None

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.floor.dice, self.ceiling.mean_dice if self.ceiling is not None else math.nan,
                      self.floor.label, "the supervised U-Net slid by the same window"
                      if self.ceiling is not None else "not trained", "test",
                      sum(r.has_lesion for r in self.report.rows))

    def to_dict(self) -> dict[str, Any]:
        b = self.bounds
        choice = {"label": self.choice.label, "val_dice": self.choice.val_dice, "tried": self.choice.tried,
                  "options": self.choice.options.to_record()}
        return {"camseg": self.report.to_dict(), "choice": choice,
                "floor": {"choice": self.floor.choice, "dice": self.floor.dice,
                          "select_dice": self.floor.select_dice, "false_fraction": self.floor.false_fraction},
                "ceiling": self.ceiling.to_dict() if self.ceiling is not None else None,
                "ceiling_choice": {"label": self.ceiling_choice.label, "val_dice": self.ceiling_choice.val_dice}
                if self.ceiling_choice is not None else None,
                "bounds": b.to_dict(), "position": b.position(self.report.mean_dice)}


def whole_ceiling(model: LoadedModel, data: Path | FolderDataset, student: Student, *, tiling: Tiling = WHOLE,
                  on_progress: OnProgress | None = None, should_stop: ShouldStop | None = None,
                  ) -> tuple[WholeReport, WholeChoice]:
    """The ceiling slid over the test images: ``student`` (a U-Net trained on the true
    masks) in ``model``'s student's place, its threshold chosen on val among
    :data:`CEILING_RULES`, ungated or gated by the classifier's blended probability at
    one of :data:`DECISIONS` (the same choices camseg's masks get), whichever is better."""
    ceiled = with_ceiling(model, student)
    choice = choose_whole(ceiled, data, ceiling_options(), tiling=tiling, rules=CEILING_RULES,
                          on_progress=on_progress, should_stop=should_stop)
    report, _ = evaluate_whole(ceiled, data, choice.options, tiling=tiling, name="ceiling",
                               on_progress=on_progress, should_stop=should_stop)
    return report, choice


def whole_study(model: LoadedModel, data: Path, *, ceiling: tuple[WholeReport, WholeChoice] | None = None,
                options: Options | None = None, tiling: Tiling = WHOLE, name: str = "", keep: int = 0,
                on_progress: OnProgress | None = None, should_stop: ShouldStop | None = None,
                ) -> tuple[WholeStudy, list[Any]]:
    """Choose on val, report on test: camseg's masks beside the floor and (where given,
    :func:`whole_ceiling`) the ceiling. Returns the study and :func:`evaluate_whole`'s
    kept images."""
    ds = FolderDataset.open(data)
    choice = choose_whole(model, ds, options, tiling=tiling, on_progress=on_progress, should_stop=should_stop)
    report, kept = evaluate_whole(model, ds, choice.options, tiling=tiling, name=name, keep=keep,
                                  on_progress=on_progress, should_stop=should_stop)
    floor = whole_floor_of(ds)
    return WholeStudy(report, choice, floor, ceiling[0] if ceiling else None, ceiling[1] if ceiling else None), kept
