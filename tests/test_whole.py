"""Whole-image inference (camseg.pipeline.whole): the classifier slid over an image
larger than its input, on a real trained and exported tiny model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from camseg.core.errors import CancelledError, InvalidInputError
from camseg.data.synth import SynthConfig, generate
from camseg.heat.rules import parse_rule
from camseg.heat.tissue import tissue_mask
from camseg.models.modelconfig import ScaleSpec
from camseg.pipeline.options import Engine, Options
from camseg.pipeline.run import LoadedModel, run
from camseg.pipeline.whole import WHOLE_FACTOR, Tiling, Whole, is_whole, positions, whole_bytes, window

ONE = Tiling(scale=1.0)


@pytest.fixture(scope="module")
def model(exported: tuple[Path, dict[str, Any]]) -> LoadedModel:
    return LoadedModel.load(exported[0], providers="CPUExecutionProvider", threads=1)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    """A 200x260 image: texture with one small mass, a dark background band on the left."""
    s = 260
    imgs, masks, _, _ = generate(SynthConfig(n=2, size=s, seed=11, tumor_fraction=0.5,
                                             radius_range=(0.09 * 32 / s, 0.2 * 32 / s), centre_jitter=0.2))
    k = int(np.flatnonzero(masks.reshape(2, -1).any(1))[0])
    img, mask = imgs[k][:200].copy(), masks[k][:200].copy()
    img[:, :60] = 0.0
    mask[:, :60] = False
    return img, mask


def test_positions_cover_and_end_at_the_edge() -> None:
    assert positions(100, 32, 0.5) == [0, 16, 32, 48, 64, 68]
    assert positions(32, 32, 0.5) == [0]
    assert positions(70, 32, 0.0) == [0, 32, 38]


def test_window_is_gaussian_with_peak_one() -> None:
    w = window((32, 32), 0.125)
    assert w.max() == pytest.approx(1.0, abs=0.01) and w.min() > 0 and w[0, 0] < 0.01
    assert (window((8, 8), 0.0) == 1).all()


def test_is_whole_by_fields_of_view(model: LoadedModel) -> None:
    side = max(model.input_hw)
    big = int(WHOLE_FACTOR * side) + 1
    assert not is_whole(model, (big - 1, big - 1), ONE)
    assert is_whole(model, (big, 10), ONE)
    assert not is_whole(model, (big * 4, big), Tiling(mode=Whole.NEVER))
    assert is_whole(model, (10, 10), Tiling(mode=Whole.ALWAYS, scale=1.0))
    assert not is_whole(model, (big, big), Tiling(scale=2.0))  # two image pixels per model pixel


def test_bad_tiling_is_refused() -> None:
    for bad in ({"overlap": 0.95}, {"scale": 0.0}, {"mode": "sometimes"}, {"sigma": -1.0}):
        with pytest.raises(InvalidInputError):
            Tiling(**bad)


def test_whole_image_mask_heat_and_lesions(model: LoadedModel, scene: tuple[np.ndarray, np.ndarray]) -> None:
    img, truth = scene
    res = run(model, [img], Options(threshold=parse_rule("0.3"), tiling=ONE), truths=[truth])
    item = res.items[0]
    info = item.whole
    assert info is not None and info.scale == 1.0 and not info.padded
    assert item.heatmap.shape == img.shape and item.mask is not None and item.mask.shape == img.shape
    assert info.tiles > 0 and info.skipped > 0  # the dark band's tiles are skipped
    assert 0.5 < info.tissue_fraction < 0.85
    assert not item.mask[:, :50].any() and float(item.heatmap[:, :50].abs().max()) == 0.0
    assert item.dice is not None and 0.0 <= item.dice <= 1.0
    assert 0.0 <= info.score <= 1.0
    for c in info.lesions:
        y0, x0, y1, x1 = c.box
        assert 0 <= y0 < y1 <= img.shape[0] and 0 <= x0 < x1 <= img.shape[1] and c.area > 0
        assert item.mask[int(c.centroid[0]), x0:x1].any() or c.area < 4
    assert sum(c.area for c in info.lesions) == int(item.mask.sum())
    assert [c.score for c in info.lesions] == sorted((c.score for c in info.lesions), reverse=True)


def test_engines_agree_on_the_whole_map(model: LoadedModel, scene: tuple[np.ndarray, np.ndarray]) -> None:
    img, _ = scene
    a = run(model, [img], Options(threshold=None, engine=Engine.ONNX, tiling=ONE)).items[0].heatmap
    b = run(model, [img], Options(threshold=None, engine=Engine.TORCH, tiling=ONE)).items[0].heatmap
    assert torch.allclose(a, b, atol=2e-3)


def test_no_tissue_gives_an_empty_mask_and_says_so(model: LoadedModel) -> None:
    item = run(model, [np.zeros((300, 300), np.float32)], Options(tiling=ONE)).items[0]
    assert item.whole is not None and item.whole.no_tissue and "no tissue" in item.whole.note
    assert item.whole.tiles == 0 and item.mask is not None and not item.mask.any()
    assert item.label not in model.positives


def test_small_image_is_padded_to_one_tile(model: LoadedModel) -> None:
    img = np.full((20, 25), 0.5, np.float32)
    item = run(model, [img], Options(tiling=Tiling(mode=Whole.ALWAYS, scale=1.0))).items[0]
    assert item.whole is not None and item.whole.padded and item.whole.tiles == 1
    assert item.mask is not None and item.mask.shape == (20, 25) and item.heatmap.shape == (20, 25)


def test_a_model_without_a_scale_is_a_one_line_error(model: LoadedModel) -> None:
    assert model.config is not None and model.config.scale is not None  # synthetic ROIs record scale 1
    assert model.config.scale.source_pixels_per_model_pixel == 1.0
    unscaled = replace(model, config=model.config.model_copy(update={"scale": None}))
    big = np.full((400, 400), 0.5, np.float32)
    with pytest.raises(InvalidInputError, match="no recorded scale") as exc:
        run(unscaled, [big], Options())
    assert "\n" not in str(exc.value)
    assert run(unscaled, [big], Options(tiling=Tiling(scale=2.0))).items[0].whole is not None


def test_scale_two_works_in_model_space(model: LoadedModel, scene: tuple[np.ndarray, np.ndarray]) -> None:
    img, _ = scene
    one = run(model, [img], Options(tiling=Tiling(mode=Whole.ALWAYS, scale=1.0))).items[0]
    two = run(model, [img], Options(tiling=Tiling(mode=Whole.ALWAYS, scale=2.0))).items[0]
    assert two.whole is not None and one.whole is not None and two.whole.tiles < one.whole.tiles
    assert two.mask is not None and two.mask.shape == img.shape


def test_rois_and_whole_images_in_one_call(model: LoadedModel, scene: tuple[np.ndarray, np.ndarray]) -> None:
    img, _ = scene
    roi = np.full((32, 32), 0.4, np.float32)
    res = run(model, [roi, img, roi], Options(tiling=ONE))
    assert [r.whole is not None for r in res.items] == [False, True, False]
    assert res.items[1].mask is not None and res.items[1].mask.shape == img.shape


def test_cancellation_between_chunks(model: LoadedModel, scene: tuple[np.ndarray, np.ndarray]) -> None:
    img, _ = scene
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(CancelledError):
        run(model, [img], Options(chunk=4, tiling=ONE), should_stop=stop)


def test_tissue_mask_and_budget() -> None:
    img = np.zeros((120, 160), np.float32)
    img[10:110, 0:100] = 0.5
    m = tissue_mask(img, factor=8)
    assert m[60, 50] and not m[60, 150] and m.shape == img.shape
    assert tissue_mask(np.zeros((40, 40), np.float32)).sum() == 0
    assert tissue_mask(np.full((40, 40), 0.7, np.float32)).all()  # no background: all tissue
    # 31 bytes a pixel at scale 1: a 4096 x 5120 image is under 1.5 GB, a 6144^2 one near 1.2 GB
    assert whole_bytes((4096, 5120), 1.0) < 1.5 * 2**30
    assert whole_bytes((4096, 5120), 4.0) < whole_bytes((4096, 5120), 1.0)


def test_a_scale_in_millimetres_needs_the_pixel_spacing(model: LoadedModel) -> None:
    assert model.config is not None
    in_mm = replace(model, config=model.config.model_copy(
        update={"scale": ScaleSpec(mm_per_model_pixel=0.4)}))
    big = np.full((400, 400), 0.5, np.float32)
    with pytest.raises(InvalidInputError, match="no pixel spacing"):
        run(in_mm, [big], Options())
    item = run(in_mm, [big], Options(tiling=Tiling(spacing_mm=0.2))).items[0]
    assert item.whole is not None and item.whole.scale == pytest.approx(2.0)
