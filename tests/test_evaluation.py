"""camseg.evaluation: the Dice sweep and filtered retraining."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from camseg.data.tensors import ArraySet
from camseg.errors import InvalidInputError
from camseg.evaluation import (
    FILTERS,
    best_row,
    dice_sweep,
    filter_images,
    filtered_retrain,
    paper_row,
    split_arrays,
)
from camseg.modeldir import load_model
from camseg.training import TrainConfig


def _images_and_heat(n: int = 6, c: int = 1, s: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand((n, c, s, s), generator=g), torch.rand((n, s, s), generator=g)


@pytest.mark.parametrize("c", [1, 3])
def test_keep_hot_plus_keep_cold_is_the_image_plus_its_mean(c: int) -> None:
    x, heat = _images_and_heat(c=c)
    hot = filter_images(x, heat, "keep-hot", 0.5)
    cold = filter_images(x, heat, "keep-cold", 0.5)
    mean = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(hot + cold, x + mean)
    # each keeps exactly its side of the split and fills the other with the mean
    split = (heat >= 0.5)[:, None].expand_as(x)
    torch.testing.assert_close(hot[split], x[split])
    torch.testing.assert_close(cold[~split], x[~split])
    torch.testing.assert_close(hot[~split], mean.expand_as(x)[~split])


def test_soft_and_random_filters() -> None:
    x, heat = _images_and_heat()
    torch.testing.assert_close(filter_images(x, heat, "soft", 0.5), x * heat[:, None])
    rnd = filter_images(x, heat, "random", 0.5, torch.Generator().manual_seed(1))
    mean = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    removed = (rnd == mean) & (x != mean)
    # random removes as many pixels as the hot area, per image, and not the hot area itself
    assert removed.reshape(6, -1).sum(1).tolist() == (heat >= 0.5).reshape(6, -1).sum(1).tolist()
    assert not torch.equal(removed[:, 0], heat >= 0.5)


def test_filter_errors() -> None:
    x, heat = _images_and_heat()
    with pytest.raises(InvalidInputError, match="unknown filter"):
        filter_images(x, heat, "blur", 0.5)
    with pytest.raises(InvalidInputError, match="do not match"):
        filter_images(x, heat[:, :8], "keep-hot", 0.5)


def test_dice_sweep_rows(trained_dir: Path, tiny_folder: Path) -> None:
    model, _ = load_model(trained_dir)
    data = split_arrays(tiny_folder, model, "train")
    rows = dice_sweep(model, data, methods=["gradcam", "layercam", "fused"], rules=["0.5", "otsu"], progress=False)
    # gradcam and layercam at the last three layers, fused once; 2 rules x 2 refinements each
    assert len(rows) == (2 * 3 + 1) * 4
    assert all(0.0 <= r.mean_dice <= 1.0 and r.n == int(data.has_mask.sum()) for r in rows)
    assert best_row(rows).mean_dice == max(r.mean_dice for r in rows)
    base = paper_row(rows, model)
    assert (base.method, base.layer, base.largest) == ("gradcam", model.cam_layer, False)


def test_dice_sweep_needs_truth_masks(trained_dir: Path, tiny_folder: Path) -> None:
    model, _ = load_model(trained_dir)
    data = split_arrays(tiny_folder, model, "train")
    normal = data.select(torch.nonzero(~data.has_mask).flatten())
    with pytest.raises(InvalidInputError, match="truth masks"):
        dice_sweep(model, normal, progress=False)


def test_filtered_retrain_reports_every_filter(trained_dir: Path, tiny_folder: Path) -> None:
    res = filtered_retrain(trained_dir, tiny_folder, thresholds=[0.4], cfg=TrainConfig(epochs=1, batch_size=8),
                           progress=False)
    assert [r.filter for r in res] == ["none", *FILTERS]
    assert all(0.0 <= r.accuracy <= 1.0 for r in res)
    assert all(math.isnan(r.auc) or 0.0 <= r.auc <= 1.0 for r in res)
    assert 0.0 < res[1].hot_fraction < 1.0
    with pytest.raises(InvalidInputError, match="outside"):
        filtered_retrain(trained_dir, tiny_folder, thresholds=[1.5])


def test_arrayset_select_keeps_rows_together() -> None:
    x, _ = _images_and_heat()
    s = ArraySet([f"i{i}" for i in range(6)], x, torch.arange(6) % 2, torch.zeros(6, 16, 16, dtype=torch.bool),
                 torch.arange(6) % 2 == 1, [(16, 16)] * 6)
    sub = s.select([4, 1])
    assert sub.ids == ["i4", "i1"] and sub.labels.tolist() == [0, 1]
    torch.testing.assert_close(sub.images, x[[4, 1]])
