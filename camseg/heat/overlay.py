"""The picture of one heatmap on one image: the image in gray, the heatmap in jet, mask and truth outlined."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

_JET = matplotlib.colormaps["jet"]


def gray_rgb(image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    img = image if image.ndim == 2 else image.mean(axis=0 if image.shape[0] in (1, 3) else -1)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.repeat(img[..., None], 3, axis=-1)


def _edge(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    return mask & ~ndimage.binary_erosion(mask)


def overlay(
    image: npt.NDArray[np.float32],
    heatmap: npt.NDArray[np.float32] | None = None,
    mask: npt.NDArray[np.bool_] | None = None,
    truth: npt.NDArray[np.bool_] | None = None,
    alpha: float = 0.4,
) -> npt.NDArray[np.uint8]:
    """An RGB uint8 picture: the image, the heatmap in jet, the mask outline in red and
    the truth outline in green."""
    rgb = gray_rgb(image)
    if heatmap is not None:
        rgb = ((1 - alpha) * rgb + alpha * _JET(np.clip(heatmap, 0, 1))[..., :3]).astype(np.float32)
    if mask is not None:
        rgb[_edge(mask)] = (1.0, 0.1, 0.1)
    if truth is not None:
        rgb[_edge(truth)] = (0.1, 1.0, 0.1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def save_overlay(path: Path, *args: object, **kwargs: object) -> None:
    Image.fromarray(overlay(*args, **kwargs)).save(path)  # type: ignore[arg-type]
