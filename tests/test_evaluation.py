"""camseg.study.evaluation: the Dice sweep and the protocol (chosen on val, reported on test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from camseg.core.errors import InvalidInputError
from camseg.core.outdir import MARKER
from camseg.data.folder import Record, write_dataset
from camseg.data.tensors import ArraySet
from camseg.models.modeldir import load_model
from camseg.study.evaluation import DiceReport, best_row, dice_sweep, evaluate_dice, paper_rows, split_arrays

SIZE = 32


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tumor ROIs whose truth is the whole image on val and the top half on test, so the
    Dice of a full mask is known: 1 on val, 2*512/(1024+512) = 2/3 on test."""
    rng = np.random.default_rng(0)
    recs = []
    for i in range(12):
        split = ("train", "val", "test")[i % 3]
        label = 1 if i % 2 else 0
        mask = None
        if label:
            mask = np.ones((SIZE, SIZE), bool)
            if split == "test":
                mask[SIZE // 2 :] = False
        recs.append(Record(f"r{i}", label, split, (rng.random((SIZE, SIZE)) * 255).astype(np.uint8), mask))
    return write_dataset(tmp_path_factory.mktemp("known") / "d", recs, {"classes": ["normal", "tumor"]})


def test_sweep_gives_known_dice(trained_dir: Path, known: Path) -> None:
    model, _ = load_model(trained_dir)
    rows = dice_sweep(model, split_arrays(known, model, "val"), methods=["gradcam", "layercam"], rules=["0", "1"],
                      largest=(False,), gate=False)
    assert len(rows) == 2 * 3 * 2
    full = [r for r in rows if r.rule == "0"]
    # t = 0 keeps every pixel: the whole-image truth is matched exactly
    assert all(r.mean_dice == 1.0 for r in full) and all(r.n == 2 for r in rows)
    # t = 1 keeps only the maximum of each map (a plateau where the upsampling clamps at an edge)
    assert all(r.mean_dice < 0.8 for r in rows if r.rule == "1")
    test_rows = dice_sweep(model, split_arrays(known, model, "test"), methods=["gradcam"], rules=["0"],
                           largest=(False,), gate=False)
    assert [r.mean_dice for r in test_rows] == pytest.approx([2 / 3] * 3)


def test_protocol_chooses_on_val_and_reports_test(trained_dir: Path, known: Path, tmp_path: Path) -> None:
    report = evaluate_dice(trained_dir, known, methods=["gradcam"], rules=["0", "1"], largest=(False,), gate=False,
                           out=tmp_path / "ev")
    # "0" wins on val (Dice 1) and is reported with its test Dice (2/3), not with the 1 it had on val
    assert report.best.rule == "0" and report.best.selected_dice == 1.0
    assert report.best.mean_dice == pytest.approx(2 / 3)
    assert report.paper.method == "gradcam" and report.paper.layer == report.default_layer
    assert report.n_select == 2 and report.n_report == 2 and not report.notes
    assert set(report.by_method) == {"gradcam"}
    files = {p.name for p in (tmp_path / "ev").iterdir()}
    assert files == {"report.json", "report.md", "dice_vs_threshold.png", MARKER}
    def same(a: DiceReport, b: DiceReport) -> bool:  # NaN-aware equality
        return json.dumps(a.to_dict()) == json.dumps(b.to_dict())

    assert same(DiceReport.from_dict(json.loads((tmp_path / "ev" / "report.json").read_text())), report)
    assert "chosen on the val split" in (tmp_path / "ev" / "report.md").read_text()
    # a rerun finds the complete report of the same inputs and does not recompute it
    stamp = (tmp_path / "ev" / "report.json").stat().st_mtime_ns
    assert same(evaluate_dice(trained_dir, known, methods=["gradcam"], rules=["0", "1"], largest=(False,),
                              gate=False, out=tmp_path / "ev"), report)
    assert (tmp_path / "ev" / "report.json").stat().st_mtime_ns == stamp


def test_protocol_without_splits_says_so(trained_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    recs = [Record(f"r{i}", i % 2, None, (rng.random((SIZE, SIZE)) * 255).astype(np.uint8),
                   np.ones((SIZE, SIZE), bool) if i % 2 else None) for i in range(4)]
    data = write_dataset(tmp_path / "nosplit", recs, {"classes": ["normal", "tumor"]})
    report = evaluate_dice(trained_dir, data, methods=["gradcam"], rules=["0"], largest=(False,), gate=False)
    assert report.notes and "optimistic" in report.notes[0]
    assert report.best.mean_dice == report.best.selected_dice == 1.0


def test_dice_sweep_rows_and_paper_setting(trained_dir: Path, tiny_folder: Path) -> None:
    model, _ = load_model(trained_dir)
    data = split_arrays(tiny_folder, model, "train")
    rows = dice_sweep(model, data, methods=["gradcam", "layercam", "fused"], rules=["0.5", "otsu"])
    # gradcam and layercam at the last three layers, fused once; 2 rules x 2 refinements each
    assert len(rows) == (2 * 3 + 1) * 4
    assert all(0.0 <= r.mean_dice <= 1.0 and r.n == int(data.has_mask.sum()) for r in rows)
    paper = paper_rows(rows, model.cam_layer)
    assert {(r.method, r.layer, r.rule, r.largest) for r in paper} == {("gradcam", model.cam_layer, "0.5", False)}
    nan_row = rows[0].__class__("x", "y", "0.5", False, float("nan"), 1)
    assert best_row([nan_row, rows[0]]) is rows[0]


def test_dice_sweep_needs_truth_masks(trained_dir: Path, tiny_folder: Path) -> None:
    model, _ = load_model(trained_dir)
    data = split_arrays(tiny_folder, model, "train")
    normal = data.select(torch.nonzero(~data.has_mask).flatten())
    with pytest.raises(InvalidInputError, match="truth masks"):
        dice_sweep(model, normal)


def test_arrayset_select_keeps_rows_together() -> None:
    x = torch.rand((6, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    s = ArraySet([f"i{i}" for i in range(6)], x, torch.arange(6) % 2, torch.zeros(6, 16, 16, dtype=torch.bool),
                 torch.arange(6) % 2 == 1, [(16, 16)] * 6)
    sub = s.select([4, 1])
    assert sub.ids == ["i4", "i1"] and sub.labels.tolist() == [0, 1]
    torch.testing.assert_close(sub.images, x[[4, 1]])
