"""camseg.segment: bulk masks, overlays and results.csv over a folder data set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camseg.data.folder import FolderDataset, read_mask
from camseg.errors import InvalidInputError, NotFoundError
from camseg.metrics import dice
from camseg.segment import SegmentOptions, segment_folder


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_segment_writes_masks_overlays_and_results(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    summary = segment_folder(trained_dir, tiny_folder, out, SegmentOptions(threshold="p80", gate=False,
                                                                           overlays=True), progress=False)
    ds = FolderDataset.open(tiny_folder)
    rows = _rows(out)
    assert [r["id"] for r in rows] == [s.id for s in ds.samples]
    assert summary["images"] == len(ds) and summary["with_truth"] == sum(s.mask_path is not None for s in ds.samples)
    dices, areas = [], []
    for r, s in zip(rows, ds.samples, strict=True):
        mask = read_mask(out / "masks" / f"{s.id}.png")
        assert mask.shape == (32, 32)
        assert int(r["mask_area"]) == int(mask.sum())
        # ungated p80 keeps at most about a fifth of a map (none of an all-zero one)
        assert mask.sum() <= 0.3 * mask.size
        areas.append(int(mask.sum()))
        assert Image.open(out / "overlays" / f"{s.id}.png").mode == "RGB"
        assert 0.0 <= float(r["probability"]) <= 1.0
        if s.mask_path is None:
            assert r["dice"] == ""
        else:
            expect = float(dice(torch.from_numpy(mask), torch.from_numpy(read_mask(s.mask_path))))
            assert float(r["dice"]) == pytest.approx(expect, abs=1e-6)
            dices.append(expect)
    assert summary["mean_dice"] == pytest.approx(np.mean(dices))
    assert sum(a >= 0.1 * 1024 for a in areas) >= len(areas) // 2
    assert json.loads((out / "summary.json").read_text())["options"]["threshold"] == "p80"


def test_gate_empties_masks_of_rois_predicted_normal(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    segment_folder(trained_dir, tiny_folder, tmp_path / "g", SegmentOptions(threshold="0.3"), progress=False)
    rows = _rows(tmp_path / "g")
    for r in rows:
        if r["predicted_label"] == "normal":
            assert r["mask_area"] == "0"
    assert any(r["predicted_label"] == "tumor" and int(r["mask_area"]) > 0 for r in rows) or all(
        r["predicted_label"] == "normal" for r in rows
    )


def test_masks_come_at_each_images_own_size(trained_dir: Path, tmp_path: Path) -> None:
    from camseg.data.folder import Record, write_dataset

    rng = np.random.default_rng(0)
    recs = [Record(f"big{i}", i % 2, None, (rng.random((48, 40)) * 255).astype(np.uint8),
                   np.ones((48, 40), bool) if i % 2 else None) for i in range(4)]
    data = write_dataset(tmp_path / "big", recs, {"classes": ["normal", "tumor"]})
    segment_folder(trained_dir, data, tmp_path / "s", SegmentOptions(threshold="otsu", gate=False), progress=False)
    assert read_mask(tmp_path / "s" / "masks" / "big1.png").shape == (48, 40)


def test_split_and_bad_options(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    s = segment_folder(trained_dir, tiny_folder, tmp_path / "t", SegmentOptions(), split="test", progress=False)
    assert s["images"] == len(FolderDataset.open(tiny_folder).subset("test"))
    with pytest.raises(InvalidInputError, match="threshold"):
        segment_folder(trained_dir, tiny_folder, tmp_path / "u", SegmentOptions(threshold="p101"), progress=False)
    with pytest.raises(NotFoundError, match="stage4"):
        segment_folder(trained_dir, tiny_folder, tmp_path / "u", SegmentOptions(layer="fc9"), progress=False)
    with pytest.raises(InvalidInputError, match="already exists"):
        segment_folder(trained_dir, tiny_folder, tmp_path / "t", SegmentOptions(), progress=False)
    assert not (tmp_path / "u").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_nothing_half_written_when_an_image_is_corrupt(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    victim = sorted((data / "images").iterdir())[-1]
    victim.write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match=victim.name):
        segment_folder(trained_dir, data, tmp_path / "out", SegmentOptions(), progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
