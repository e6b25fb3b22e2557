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
    the truth outline in green. Made in bands of :data:`BAND_PIXELS`, so beyond the
    picture (3 bytes a pixel) and the outlines (1 byte each) it holds a band's floats."""
    gray = image if image.ndim == 2 else image.mean(axis=0 if image.shape[0] in (1, 3) else -1)
    lo, hi = float(gray.min()), float(gray.max())
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    edges = [(_edge(m), colour) for m, colour in ((mask, (1.0, 0.1, 0.1)), (truth, (0.1, 1.0, 0.1)))
             if m is not None]
    h, w = gray.shape[:2]
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, BAND_PIXELS // max(1, w))
    for top in range(0, h, rows):
        band = slice(top, min(h, top + rows))
        g = ((gray[band] - lo) * scale).astype(np.float32)
        rgb = np.repeat(g[..., None], 3, axis=-1)
        if heatmap is not None:
            jet = _JET(np.clip(heatmap[band], 0, 1))[..., :3]
            rgb = ((1 - alpha) * rgb + alpha * jet).astype(np.float32)
        for edge, colour in edges:
            rgb[edge[band]] = colour
        out[band] = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return out


BAND_PIXELS = 1 << 18
"""Pixels of an overlay made at once (a band of rows)."""


def save_overlay(path: Path, *args: object, **kwargs: object) -> None:
    Image.fromarray(overlay(*args, **kwargs)).save(path)  # type: ignore[arg-type]
