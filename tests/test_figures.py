"""camseg.study.figures: overlays and PNG figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from camseg.heat.overlay import overlay
from camseg.study import figures


def test_overlay_draws_mask_in_red_and_truth_in_green() -> None:
    image = np.zeros((16, 16), np.float32)
    mask = np.zeros((16, 16), bool)
    mask[2:6, 2:6] = True
    truth = np.zeros((16, 16), bool)
    truth[9:14, 9:14] = True
    out = overlay(image, None, mask, truth)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert tuple(out[2, 2]) == (255, 25, 25)  # the mask's outline
    assert tuple(out[9, 9]) == (25, 255, 25)  # the truth's outline
    assert tuple(out[4, 4]) == (0, 0, 0)  # inside the mask: the (black) image


def test_figures_are_png_files(tmp_path: Path) -> None:
    figures.dice_curves(tmp_path / "d.png", {"gradcam@stage4": ([0.2, 0.5], [0.3, 0.4])}, "t")
    figures.filter_bars(tmp_path / "f.png", [{"filter": "none", "threshold": None, "accuracy": 0.8, "auc": 0.9}], "t")
    hist = [{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_auc": 0.6}]
    figures.training_curves(tmp_path / "t.png", {"resnet": hist})
    for name in ("d.png", "f.png", "t.png"):
        assert Image.open(tmp_path / name).format == "PNG"
