"""camseg.study.retraining: the heatmap filters and filtered retraining, resumable."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from camseg.core.errors import CancelledError, InvalidInputError
from camseg.models.training import TrainConfig
from camseg.study.retraining import FILTERS, filter_images, filtered_retrain


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


def test_filtered_retrain_reports_every_filter(trained_dir: Path, tiny_folder: Path) -> None:
    res = filtered_retrain(trained_dir, tiny_folder, thresholds=[0.4], cfg=TrainConfig(epochs=1, batch_size=8))
    assert [r.filter for r in res] == ["none", *FILTERS]
    assert all(0.0 <= r.accuracy <= 1.0 for r in res)
    assert all(math.isnan(r.auc) or 0.0 <= r.auc <= 1.0 for r in res)
    assert 0.0 < res[1].hot_fraction < 1.0
    with pytest.raises(InvalidInputError, match="outside"):
        filtered_retrain(trained_dir, tiny_folder, thresholds=[1.5])




def test_filtered_retrain_writes_runs_and_resumes(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=8)
    out = tmp_path / "f"
    runs = 0

    def stop_after_first_run() -> bool:
        return (out / "runs" / "keep-hot-t0.4.json").is_file()

    with pytest.raises(CancelledError):
        filtered_retrain(trained_dir, tiny_folder, out, thresholds=[0.4], filters=["keep-hot", "random"], cfg=cfg,
                         should_stop=stop_after_first_run)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["keep-hot-t0.4.json"]
    assert not (out / "results.json").exists()
    first = json.loads((out / "runs" / "keep-hot-t0.4.json").read_text())

    def count(p: object) -> None:
        nonlocal runs
        if getattr(p, "task", "").startswith("retrain"):
            runs += getattr(p, "done", 0) == 0
    res = filtered_retrain(trained_dir, tiny_folder, out, thresholds=[0.4], filters=["keep-hot", "random"], cfg=cfg,
                           on_progress=count)
    # the finished run is reused, only the random filter is trained
    assert runs == 1
    assert [r.filter for r in res] == ["none", "keep-hot", "random"]
    assert res[1].accuracy == first["result"]["accuracy"]
    written = json.loads((out / "results.json").read_text())
    assert [r["filter"] for r in written["results"]] == ["none", "keep-hot", "random"]
    assert (out / "filtered_retraining.png").stat().st_size > 0
