"""camseg.study.bounds: the centred-disk and whole-image floors, the supervised ceiling
(trained, saved, loaded and run through the pipeline's distilled path) and Bounds."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from camseg.app.cli import main
from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.data.folder import FolderDataset
from camseg.data.synth import SynthConfig, synthesize
from camseg.data.tensors import load_arrays
from camseg.heat.methods import Segmenter
from camseg.heat.rules import parse_rule
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel, run
from camseg.study.bounds import (
    CEILING_RULES,
    Bounds,
    ceiling_config,
    centred_disk,
    dataset_bounds,
    disk_floor,
    fit_ceiling,
    load_ceiling,
    save_ceiling,
    tissue_masks,
    whole_floor,
)
from camseg.study.evaluation import DiceReport, evaluate_dice


def test_centred_disk() -> None:
    d = centred_disk(32, 0.25)  # radius 8 px about (15.5, 15.5)
    assert d.shape == (32, 32) and d[15, 15] and d[16, 16] and not d[0, 0] and not d[15, 25]
    assert abs(int(d.sum()) - math.pi * 64) < 12
    assert not centred_disk((16, 24), 0.0).any()
    assert torch.equal(d, d.flip(0)) and torch.equal(d, d.flip(1))


def test_disk_floor_finds_the_truth_radius() -> None:
    truth = centred_disk(32, 0.3)
    masks = torch.stack([truth, truth, torch.zeros(32, 32, dtype=torch.bool)])  # a normal ROI is left out
    shifted = torch.roll(truth, 3, dims=1)
    report = torch.stack([truth, shifted])
    f = disk_floor(masks, report)
    assert f.radius == 0.3 and f.select_dice == 1.0 and (f.n_select, f.n_report) == (2, 2)
    inter = int((truth & shifted).sum())
    assert f.dice == pytest.approx((1.0 + 2 * inter / (2 * int(truth.sum()))) / 2)
    with pytest.raises(InvalidInputError, match="no tumor"):
        disk_floor(torch.zeros(2, 8, 8, dtype=torch.bool), report)


def test_whole_floor_tissue_or_empty() -> None:
    truth = np.zeros((10, 10), bool)
    truth[2:4, 2:4] = True  # 4 px
    tissue = np.zeros((10, 10), bool)
    tissue[:, :5] = True  # 50 px, holds the lesion: Dice 2*4/54
    normal = np.zeros((10, 10), bool)
    f = whole_floor([truth, normal], [tissue, tissue], [truth, normal], [tissue, tissue])
    assert f.choice == "tissue" and f.dice == pytest.approx(8 / 54) and f.false_fraction == pytest.approx(0.5)
    assert (f.n_select, f.n_report) == (1, 1)
    away = ~tissue  # the tissue misses every lesion: no better than an empty mask
    g = whole_floor([truth], [away], [truth, normal], [tissue, tissue])
    assert g.choice == "empty" and g.dice == 0.0 and g.false_fraction == 0.0
    # a tissue function in place of precomputed masks
    masks = tissue_masks([np.where(tissue, 0.8, 0.0).astype(np.float32)], lambda im: im > 0.5)
    assert np.array_equal(masks[0], tissue)
    with pytest.raises(InvalidInputError, match="shape"):
        tissue_masks([np.zeros((4, 4), np.float32)], lambda im: np.zeros((2, 2), bool))
    with pytest.raises(InvalidInputError, match="no image with a lesion"):
        whole_floor([normal], [tissue], [truth], [tissue])


def test_bounds_position_and_markdown() -> None:
    b = Bounds(0.4, 0.6, "centred disk", "U-Net", "test", 10)
    assert b.position(0.5) == pytest.approx(0.5) and b.position(0.4) == 0.0 and b.position(0.7) == pytest.approx(1.5)
    assert math.isnan(Bounds(0.6, 0.6).position(0.5)) and math.isnan(Bounds(0.6, 0.5).position(0.5))
    assert math.isnan(b.position(float("nan")))
    assert b.row("camseg", 0.5) == "| camseg | 0.500 | 0.400 | 0.600 | 0.500 |"
    assert Bounds.from_dict({**b.to_dict(), "newer_field": 1}) == b
    assert "10 tumor ROIs" in b.note()


@pytest.fixture(scope="module")
def synth40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("bounds") / "data", SynthConfig(n=40, size=32, seed=1))


def test_ceiling_fit_save_load_and_pipeline(synth40: Path, exported: tuple[Path, dict[str, Any]],
                                            tmp_path: Path) -> None:
    ds = FolderDataset.open(synth40)
    train, val, test = (load_arrays(ds, ds.subset(s), 32, 1) for s in ("train", "val", "test"))
    cfg = ceiling_config(2, base=4, depth=2)
    ceiling = fit_ceiling(train, val, test, cfg)
    assert str(ceiling.threshold) in CEILING_RULES or f"{ceiling.threshold:g}" in CEILING_RULES
    assert 0.0 <= ceiling.dice <= 1.0 and ceiling.seconds >= 0 and ceiling.student.config == cfg
    assert ceiling.n_report == int(test.has_mask.sum())
    out = save_ceiling(tmp_path / "ceiling", ceiling)
    student, record = load_ceiling(out)
    assert record["threshold"] == ceiling.threshold and record["dice"] == ceiling.dice
    x = test.images[:4]
    assert torch.allclose(student.heatmaps(x, onnx=False), ceiling.student.heatmaps(x, onnx=False), atol=1e-6)
    with pytest.raises(NotFoundError):
        load_ceiling(tmp_path)
    # the ceiling through the pipeline's distilled-segmenter path of a classifier
    model = dataclasses.replace(LoadedModel.load(exported[0], onnx=False), student=student)
    image, _ = ds.load(ds.subset("test")[0])
    res = run(model, [image], Options(method=Segmenter.DISTILLED, threshold=parse_rule("0.5"), gate=False))
    heat = student.heatmaps(torch.from_numpy(image)[None, None].float(), onnx=False)[0]
    assert res.items[0].mask is not None
    assert np.array_equal(res.items[0].mask, (heat >= 0.5).numpy())


def test_dataset_bounds_floor_only(synth40: Path) -> None:
    b = dataset_bounds(synth40, 32, 1, cfg=None)
    assert 0.0 < b.floor < 1.0 and math.isnan(b.ceiling) and math.isnan(b.position(0.5))
    assert b.details["floor"]["radius"] > 0 and b.split == "test"


def test_dice_report_shows_bounds(trained_dir: Path, synth40: Path, tmp_path: Path) -> None:
    b = Bounds(0.2, 0.8, "centred disk", "U-Net", "test", 5)
    kw: dict[str, Any] = {"methods": ["gradcam"], "rules": ["0.5"], "largest": (False,)}
    report = evaluate_dice(trained_dir, synth40, out=tmp_path / "ev", bounds=b, **kw)
    assert report.bounds == b
    md = (tmp_path / "ev" / "report.md").read_text()
    assert Bounds.HEADER in md and b.row(f"best ({report.best.label})", report.best.mean_dice) in md
    again = DiceReport.from_dict(json.loads((tmp_path / "ev" / "report.json").read_text()))
    assert again.bounds == b
    # reused with other bounds: the same sweep, the new bounds written
    other = dataclasses.replace(b, ceiling=0.9)
    assert evaluate_dice(trained_dir, synth40, out=tmp_path / "ev", bounds=other, **kw).bounds == other
    assert DiceReport.from_dict(json.loads((tmp_path / "ev" / "report.json").read_text())).bounds == other
    assert "floor" not in evaluate_dice(trained_dir, synth40, **kw).to_markdown()


def test_evaluate_command_with_bounds(trained_dir: Path, synth40: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-progress", "evaluate", "--model", str(trained_dir), "--data", str(synth40), "--methods",
                 "gradcam", "--rules", "0.5", "--out", str(tmp_path / "ev"), "--bounds", "--ceiling-epochs", "1",
                 "--ceiling-base", "4"]) == 0
    assert "floor (centred disk" in capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["bounds"]["details"]["ceiling"]["config"]["epochs"] == 1
