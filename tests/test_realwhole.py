"""Leave-one-case-out on whole slices: ROIs from the train and val cases only, a
classifier and a ceiling trained on them, slid over the held-out case's slices."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from camseg.core.errors import InvalidInputError
from camseg.data.folder import Record, write_dataset
from camseg.study.realeval import case_of
from camseg.study.realwhole import WholeLocoReport, leave_one_case_out_whole

# (case, lesion slices, normal slices); slices are 48 x 48 with one bright disk per lesion slice
CASES = (("caseA", 2, 2), ("caseB", 2, 2), ("caseC", 0, 3), ("caseD", 2, 1))
SIDE = 48


def _slice(rng: np.random.Generator, lesion: bool) -> tuple[np.ndarray, np.ndarray | None]:
    image = 0.35 + 0.05 * rng.standard_normal((SIDE, SIDE))
    if not lesion:
        return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), None
    yy, xx = np.mgrid[:SIDE, :SIDE]
    cy, cx = rng.integers(14, SIDE - 14, 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(4, 7)) ** 2
    image[mask] += 0.45
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def sliced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    records = []
    for case, n_lesion, n_normal in CASES:
        kinds = [False] * (n_normal // 2) + [True] * n_lesion + [False] * (n_normal - n_normal // 2)
        for k, lesion in enumerate(kinds):
            image, mask = _slice(rng, lesion)
            records.append(Record(f"{case}-s{k:03d}", int(lesion), "train", image, mask))
    return write_dataset(tmp_path_factory.mktemp("sliced") / "data", records, {"name": "stand-in"})


@pytest.fixture(scope="module")
def whole(sliced: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WholeLocoReport]:
    out = tmp_path_factory.mktemp("whole") / "out"
    return out, leave_one_case_out_whole(sliced, out, epochs=1, size=32, per_lesion=2, normal_ratio=1.0)


def test_rois_come_only_from_the_train_and_val_cases(whole: tuple[Path, WholeLocoReport]) -> None:
    out, report = whole
    assert [f.case for f in report.folds] == [c[0] for c in CASES]
    for f in report.folds:
        meta = json.loads((out / "folds" / f.case / "rois" / "dataset.json").read_text())
        split_of = {f.val_case: "val", **{c: "train" for c in f.train_cases}}
        assert meta["rois"], f.case
        with (out / "folds" / f.case / "rois" / "labels.csv").open(newline="") as fh:
            labels = {r["id"]: r["split"] for r in csv.DictReader(fh)}
        assert set(labels) == set(meta["rois"])
        for rid, entry in meta["rois"].items():
            source = case_of(entry["source"])
            assert source != f.case and source in split_of  # no held-out pixel in any ROI
            assert labels[rid] == split_of[source]  # a case's ROIs stay in its split
        assert f.rois["train_lesion"] > 0 and f.rois["val_lesion"] > 0
        assert 0.0 <= f.classifier["auc"] <= 1.0 or math.isnan(f.classifier["auc"])
        assert not math.isnan(f.classifier["accuracy"])
        # the classifier records the ROIs' scale, and every held-out slice is scored whole
        assert f.classifier["scale"] == {"source_pixels_per_model_pixel": 1.0}
        assert len(f.camseg.rows) == len(f.ceiling.rows) == f.n_lesion + f.n_normal
        assert {r.id for r in f.camseg.rows} == {f"{f.case}-s{k:03d}" for k in range(f.n_lesion + f.n_normal)}


def test_reports_and_figures_are_written(whole: tuple[Path, WholeLocoReport]) -> None:
    out, report = whole
    saved = json.loads((out / "report.json").read_text())
    again = WholeLocoReport.from_dict(saved)
    assert again.pooled.mean_dice == pytest.approx(report.pooled.mean_dice)
    assert saved["pooled"]["camseg"]["with_lesion"] == sum(c[1] for c in CASES)
    lesion_dice = [r.dice for f in report.folds for r in f.camseg.rows if r.has_lesion]
    assert report.pooled.mean_dice == pytest.approx(float(np.mean(lesion_dice)))
    no_lesion = next(f for f in report.folds if f.case == "caseC")
    assert no_lesion.floor is None and math.isnan(no_lesion.camseg.mean_dice) and no_lesion.notes
    assert all(f.floor is not None for f in report.folds if f.n_lesion)
    md = (out / "report.md").read_text()
    assert "Leave-one-case-out, whole slices" in md and "pooled over lesion slices" in md
    for f in report.folds:
        assert f.figure is not None and (out / f.figure).is_file()
    assert report.earlier is None  # no earlier number for an unknown data set


def test_bad_input_is_one_line(sliced: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="per-lesion"):
        leave_one_case_out_whole(sliced, tmp_path / "o1", epochs=1, size=32, per_lesion=0)
    with pytest.raises(InvalidInputError, match="holds the data set"):
        leave_one_case_out_whole(sliced, sliced.parent, epochs=1)
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "x").write_text("x")
    with pytest.raises(InvalidInputError, match="not empty"):
        leave_one_case_out_whole(sliced, tmp_path / "o2", epochs=1, size=32)


def test_the_command_refuses_roi_only_options_in_one_line(sliced: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from camseg.app.cli import main

    code = main(["evaluate-real", "--data", str(sliced), "--out", str(tmp_path / "o"), "--method", "whole",
                 "--base", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--method roi" in err
    code = main(["evaluate-real", "--data", str(sliced), "--out", str(tmp_path / "o"), "--method", "whole",
                 "--per-lesion", "0", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--per-lesion" in err
