"""camseg.bulk.segment: bulk masks, overlays and results.csv over a folder data set."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camseg.bulk.segment import segment_folder
from camseg.core.errors import CancelledError, InvalidInputError, NotFoundError
from camseg.core.metrics import dice
from camseg.data.folder import FolderDataset, Record, read_mask, write_dataset
from camseg.data.tensors import load_arrays
from camseg.heat.rules import parse_rule
from camseg.models.modeldir import load_model, save_model
from camseg.pipeline.options import Options


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def _no_temporaries(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


def test_segment_writes_masks_overlays_and_results(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    summary = segment_folder(trained_dir, tiny_folder, out, Options(threshold=parse_rule("p80"), gate=False),
                             overlays=True)
    ds = FolderDataset.open(tiny_folder)
    rows = _rows(out)
    assert [r["id"] for r in rows] == [s.id for s in ds.samples]
    assert summary["images"] == len(ds) and summary["with_truth"] == sum(s.mask_path is not None for s in ds.samples)
    assert summary["reused"] is False
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


@pytest.fixture(scope="module")
def split_model(trained_dir: Path, tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model with its tumor logit shifted so that half the ROIs are predicted
    normal and half tumor: the gate then has work on both sides."""
    model, meta = load_model(trained_dir)
    data = load_arrays(FolderDataset.open(tiny_folder), list(range(24)), 32, 1)
    with torch.no_grad():
        logits = model(data.images)
        margin = logits[:, 1] - logits[:, 0]
        model.fc.bias[1] -= float(margin.median()) + 1e-4
    out = tmp_path_factory.mktemp("split") / "m"
    save_model(out, model, meta)
    return out


def test_gate_empties_exactly_the_masks_of_rois_predicted_normal(split_model: Path, tiny_folder: Path,
                                                                   tmp_path: Path) -> None:
    opts = Options(threshold=parse_rule("0.3"))
    segment_folder(split_model, tiny_folder, tmp_path / "g", opts)
    segment_folder(split_model, tiny_folder, tmp_path / "u", Options(threshold=parse_rule("0.3"), gate=False))
    gated, ungated = _rows(tmp_path / "g"), _rows(tmp_path / "u")
    normal = [r for r in gated if r["predicted_label"] == "normal"]
    assert 0 < len(normal) < len(gated)
    for g, u in zip(gated, ungated, strict=True):
        assert g["predicted_label"] == u["predicted_label"]
        if g["predicted_label"] == "normal":
            assert g["mask_area"] == "0" and g["gated"] == "1"
        else:
            assert g["mask_area"] == u["mask_area"] and g["gated"] == "0"
    # the gate removed something the heatmaps would have segmented
    assert any(int(u["mask_area"]) > 0 for u in ungated if u["predicted_label"] == "normal")


def test_masks_come_at_each_images_own_size(trained_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    recs = [Record(f"big{i}", i % 2, None, (rng.random((48 + 8 * i, 40)) * 255).astype(np.uint8),
                   np.ones((48 + 8 * i, 40), bool) if i % 2 else None) for i in range(4)]
    data = write_dataset(tmp_path / "big", recs, {"classes": ["normal", "tumor"]})
    segment_folder(trained_dir, data, tmp_path / "s", Options(gate=False))
    for i in range(4):
        assert read_mask(tmp_path / "s" / "masks" / f"big{i}.png").shape == (48 + 8 * i, 40)


def test_split_and_bad_options(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    s = segment_folder(trained_dir, tiny_folder, tmp_path / "t", Options(), split="test")
    assert s["images"] == len(FolderDataset.open(tiny_folder).subset("test"))
    with pytest.raises(InvalidInputError, match="threshold"):
        segment_folder(trained_dir, tiny_folder, tmp_path / "u", Options(threshold="p101"))  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="stage4"):
        segment_folder(trained_dir, tiny_folder, tmp_path / "u", Options(layer="fc9"))
    assert not (tmp_path / "u").exists()
    assert _no_temporaries(tmp_path)


def test_rerun_reuses_the_same_inputs_and_refuses_to_clobber_others(trained_dir: Path, tiny_folder: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "t"
    first = segment_folder(trained_dir, tiny_folder, out, Options(), split="test")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    again = segment_folder(trained_dir, tiny_folder, out, Options(), split="test")
    assert again["reused"] is True and again["key"] == first["key"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()} == before
    with pytest.raises(InvalidInputError, match="other results"):
        segment_folder(trained_dir, tiny_folder, out, Options(threshold=parse_rule("0.5")), split="test")
    other = segment_folder(trained_dir, tiny_folder, out, Options(threshold=parse_rule("0.5")), split="test",
                           overwrite=True)
    assert other["reused"] is False and other["key"] != first["key"]
    assert json.loads((out / "summary.json").read_text())["options"]["threshold"] == "0.5"
    assert _no_temporaries(tmp_path)


def test_stop_leaves_nothing_behind(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(CancelledError):
        segment_folder(trained_dir, tiny_folder, tmp_path / "out", Options(chunk=4), should_stop=stop)
    assert not (tmp_path / "out").exists() and _no_temporaries(tmp_path)


def test_nothing_half_written_when_an_image_is_corrupt(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    victim = sorted((data / "images").iterdir())[-1]
    victim.write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match=victim.name):
        segment_folder(trained_dir, data, tmp_path / "out", Options())
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
