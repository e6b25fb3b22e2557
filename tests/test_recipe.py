"""The recipe: views, the gate threshold, choosing on val, and the recipe travelling with
the model into ``camseg segment`` and bulk jobs."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from camseg.bulk import batch
from camseg.bulk.kinds.common import read_pipeline
from camseg.bulk.segment import segment_folder
from camseg.core.errors import InvalidInputError
from camseg.data.synth import SynthConfig, synthesize
from camseg.heat.methods import CamMethod, Segmenter
from camseg.heat.refine import Refiner
from camseg.heat.rules import parse_rule
from camseg.pipeline.options import Options
from camseg.pipeline.recipe_record import RECIPE_FILE, Recipe, Views, load_recipe, save_recipe
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.student import DistillConfig
from camseg.study.recipe import RecipeConfig, choose_decision_threshold, choose_recipe, make_distiller, views


def test_views_count_missed_tumors_as_zero_and_measure_false_area() -> None:
    truth = np.zeros((4, 4), dtype=bool)
    truth[:2, :2] = True
    perfect = torch.from_numpy(truth.copy())
    empty = torch.zeros((4, 4), dtype=torch.bool)
    quarter_false = torch.zeros((4, 4), dtype=torch.bool)
    quarter_false[2:, 2:] = True
    v = views([perfect, empty, quarter_false, empty], [truth, truth, None, None], [True, False, True, False])
    assert v.all_tumors == pytest.approx(0.5)  # the missed tumor counts 0
    assert v.detected == pytest.approx(1.0)
    assert v.false_area == pytest.approx(0.125)  # (4/16 + 0) / 2
    assert v.false_masks == pytest.approx(0.5)
    assert v.sensitivity == pytest.approx(0.5) and v.specificity == pytest.approx(0.5)
    assert (v.n_tumor, v.n_normal) == (2, 2)
    none = views([empty], [None], [False])
    assert math.isnan(none.all_tumors) and math.isnan(none.sensitivity) and none.specificity == 1.0


def test_decision_threshold_is_the_highest_reaching_the_sensitivity() -> None:
    p_tumor = torch.tensor([0.9, 0.6, 0.42, 0.2, 0.3, 0.1])
    probs = torch.stack([1 - p_tumor, p_tumor], 1)
    is_tumor = torch.tensor([True, True, True, True, False, False])
    assert choose_decision_threshold(probs, is_tumor, (1,), 0.5) == 0.5
    assert choose_decision_threshold(probs, is_tumor, (1,), 0.75) == 0.4
    assert choose_decision_threshold(probs, is_tumor, (1,), 1.0) == 0.2
    # never reached: the lowest candidate
    assert choose_decision_threshold(probs, is_tumor, (1,), 1.0, candidates=(0.5, 0.3)) == 0.3


def test_options_record_round_trip_and_refusals() -> None:
    o = Options(method=CamMethod.LAYERCAM, layer="stage3", threshold=parse_rule("p85"), largest=True, tta=8,
                refine=Refiner.RANDOM_WALK, decision_threshold=0.35, gate=False)
    assert Options.from_record(json.loads(json.dumps(o.to_record()))) == o
    with pytest.raises(InvalidInputError, match="unknown options"):
        Options.from_record({**o.to_record(), "colour": "red"})
    with pytest.raises(InvalidInputError, match="tta"):
        Options(tta=2)
    with pytest.raises(InvalidInputError, match="decision threshold"):
        Options(decision_threshold=1.0)
    with pytest.raises(InvalidInputError, match="refiner"):
        Options(refine="magic")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """More ROIs than the tiny set (its val split holds too few tumors to choose on)."""
    return synthesize(tmp_path_factory.mktemp("recipe") / "data", SynthConfig(n=80, size=32, seed=11))


@pytest.fixture(scope="module")
def chosen(exported: tuple[Path, dict[str, Any]], recipe_data: Path,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recipe]:
    model_dir = tmp_path_factory.mktemp("recipe-model") / "m"
    shutil.copytree(exported[0], model_dir)
    model = LoadedModel.load(model_dir)
    start = Options(method=CamMethod.GRADCAM, threshold=parse_rule("0.5"))
    recipe = choose_recipe(model, recipe_data, start, paper=start,
                           cfg=RecipeConfig(tta=(4,), refiners=(Refiner.CRF.value, Refiner.WATERSHED.value)),
                           distiller=make_distiller(recipe_data, DistillConfig(epochs=2, batch_size=8)))
    save_recipe(model_dir, recipe)
    return model_dir, recipe


def test_choose_recipe_keeps_only_steps_that_raise_val_dice(chosen: tuple[Path, Recipe]) -> None:
    _, recipe = chosen
    names = [s.name for s in recipe.steps]
    assert names[0].startswith("paper") and not recipe.steps[0].kept
    assert names[1].startswith("camseg CAM") and recipe.steps[1].kept
    assert any("test-time augmentation x4" in n for n in names)
    assert any(n.startswith("+ gate") for n in names)
    assert any("crf" in n for n in names) and any("watershed" in n for n in names)
    assert any("distilled" in n for n in names)
    kept = [s for s in recipe.steps if s.kept]
    for before, after in itertools.pairwise(kept):
        assert after.select.all_tumors > before.select.all_tumors
    for s in recipe.steps[2:]:
        if not s.kept:  # a dropped step did not beat the state before it
            prior = [k for k in kept if recipe.steps.index(k) < recipe.steps.index(s)][-1]
            assert s.select.all_tumors <= prior.select.all_tumors + 1e-4
    assert recipe.final is kept[-1]
    assert recipe.options.to_record() == kept[-1].options
    # the student exists (distillation ran): the label-free recipe is the student at 0.5
    assert recipe.label_free.method is Segmenter.DISTILLED
    assert recipe.label_free_report is not None and recipe.label_free_report.n_tumor > 0
    for s in recipe.steps:
        assert isinstance(s.report, Views) and s.report.n_tumor > 0 and s.report.n_normal > 0


def test_the_recipe_travels_with_the_model(chosen: tuple[Path, Recipe], recipe_data: Path,
                                           tmp_path: Path) -> None:
    model_dir, recipe = chosen
    assert (model_dir / RECIPE_FILE).is_file()
    assert load_recipe(model_dir) == recipe
    model = LoadedModel.load(model_dir)
    assert model.recipe == recipe and model.default_options() == recipe.options
    assert model.student is not None
    # camseg segment without options: the recipe
    summary = segment_folder(model, recipe_data, tmp_path / "seg", split="test")
    rec = {k: v for k, v in summary["options"].items() if k not in ("encodings", "overlays")}
    assert rec == recipe.options.to_record(tiling=True)  # the recipe's options, the call's (default) tiling
    # ... and its Dice is the recipe's reported number (the same masks, the same split)
    final = recipe.final
    assert final is not None
    assert summary["mean_dice"] == pytest.approx(final.report.all_tumors, abs=1e-5)  # rows hold 6 decimals
    # a bulk job without options records the recipe in its manifest
    job = batch.create_segment_job(tmp_path / "jobs", model_dir, recipe_data, split="test")
    assert read_pipeline(batch.read_manifest(job).options)[0] == recipe.options
    # an explicit choice wins
    job2 = batch.create_segment_job(tmp_path / "jobs", model_dir, recipe_data, split="test",
                                    options=Options(threshold=parse_rule("p90")))
    assert batch.read_manifest(job2).options["threshold"] == "p90"
    assert batch.read_manifest(job2).options["method"] == "gradcam"


def test_a_model_without_recipe_keeps_the_defaults(exported: tuple[Path, dict[str, Any]]) -> None:
    model = LoadedModel.load(exported[0])
    assert model.recipe is None and model.default_options() == Options()


def test_a_broken_recipe_is_a_clear_error(exported: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(exported[0], model_dir)
    (model_dir / RECIPE_FILE).write_text('{"options": {"method": "nope"}}')
    with pytest.raises(InvalidInputError, match="unknown CAM method"):
        LoadedModel.load(model_dir)
    (model_dir / RECIPE_FILE).write_text("{not json")
    with pytest.raises(InvalidInputError, match="not a recipe"):
        LoadedModel.load(model_dir)
