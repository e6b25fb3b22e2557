"""Whole-image evaluation: choosing on val with one slide, scoring test images, the floor
and the ceiling slid by the same window (real tiny model, real full-field data)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from camseg.app.cli import main
from camseg.data.folder import FolderDataset
from camseg.data.fullfield import FullFieldConfig, synthesize_fullfield
from camseg.data.tensors import load_arrays
from camseg.pipeline.run import LoadedModel
from camseg.study.bounds import ceiling_config, fit_ceiling
from camseg.study.wholeeval import (
    DECISIONS,
    WHOLE_RULES,
    choose_whole,
    evaluate_whole,
    whole_ceiling,
    whole_floor_of,
    whole_study,
)


@pytest.fixture(scope="module")
def whole_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "ff"
    return synthesize_fullfield(out, FullFieldConfig(n=10, height=160, width=192, roi_size=32, seed=4,
                                                     split=(0.0, 0.4, 0.6)))


@pytest.fixture(scope="module")
def model(exported: tuple[Path, dict[str, Any]]) -> LoadedModel:
    return LoadedModel.load(exported[0], providers="CPUExecutionProvider", threads=1)


def test_choice_tries_every_setting_and_keeps_the_best(model: LoadedModel, whole_data: Path) -> None:
    choice = choose_whole(model, whole_data)
    assert len(choice.tried) == len(WHOLE_RULES) * (1 + len(DECISIONS))  # ungated, and gated at each
    assert choice.val_dice == pytest.approx(max(choice.tried.values()), abs=1e-4)
    assert choice.options.tiling.mode.value == "always" and str(choice.options.threshold) in WHOLE_RULES


def test_test_images_scored_with_floor_and_ceiling(model: LoadedModel, whole_data: Path,
                                                    tiny_folder: Path) -> None:
    ds = FolderDataset.open(whole_data)
    report, kept = evaluate_whole(model, ds, choose_whole(model, ds).options, keep=2)
    test = ds.subset("test")
    assert [r.id for r in report.rows] == [ds.samples[i].id for i in test] and len(kept) == 2
    assert {r.has_lesion for r in report.rows} == {True, False} or len(test) < 3
    assert 0.0 <= report.mean_dice <= 1.0
    floor = whole_floor_of(ds)
    assert floor.choice in ("empty", "tissue") and 0.0 <= floor.dice < 0.5
    rois = FolderDataset.open(tiny_folder)
    tr, va, te = (load_arrays(rois, rois.subset(s), 32, 1) for s in ("train", "val", "test"))
    ceiling = fit_ceiling(tr, va, te, ceiling_config(1, base=4))
    creport, cchoice = whole_ceiling(model, ds, ceiling.student)
    assert cchoice.options.method.value == "distilled"
    assert any(k.startswith("t=0.95 gate=") for k in cchoice.tried) and "t=0.95" in cchoice.tried  # both ways
    assert len(creport.rows) == len(report.rows)
    study, _ = whole_study(model, whole_data, ceiling=(creport, cchoice), name="tiny")
    d = study.to_dict()
    assert d["bounds"]["floor"] == floor.dice and d["bounds"]["ceiling"] == pytest.approx(creport.mean_dice)
    pos = study.bounds.position(study.report.mean_dice)
    assert math.isnan(pos) or pos == pytest.approx(d["position"])


def test_evaluate_whole_command(exported: tuple[Path, dict[str, Any]], whole_data: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w"
    assert main(["evaluate-whole", "--model", str(exported[0]), "--data", str(whole_data), "--out", str(out),
                 "--no-progress"]) == 0
    assert {"whole.md", "whole.json", "froc.png", "study.json"} <= {p.name for p in out.iterdir()}
    assert "position" in capsys.readouterr().out
    assert main(["evaluate-whole", "--model", str(exported[0]), "--data", str(whole_data), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "\n" not in err
