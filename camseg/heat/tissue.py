"""The tissue of a whole image: where the body is, apart from the dark background.

Computed at low resolution (the image block-averaged by ``factor``): Otsu's threshold
of the low-resolution intensities, capped at :data:`MAX_BACKGROUND` so that an image
with no dark background at all (a cropped ROI, a slice filled by the body) counts as
all tissue; holes are filled and specks smaller than ``min_fraction`` of the image
dropped. Memory: the low-resolution copy (``1/factor**2`` of the image) plus, where
asked, the full-size boolean mask (one byte per pixel).

>>> img = np.zeros((64, 64), np.float32); img[8:56, 0:40] = 0.6
>>> m = tissue_mask(img, factor=4)
>>> m.shape, bool(m[30, 20]), bool(m[30, 60])
((64, 64), True, False)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from camseg.core.types import BoolArray, FloatArray

MAX_BACKGROUND = 0.1
"""The highest intensity (images in [0, 1]) that may be called background."""


def downsample(image: FloatArray, factor: int) -> FloatArray:
    """Block means of ``factor x factor`` pixels (a partial edge block averages what it
    has); a 3-channel image is averaged over its channels first."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if factor <= 1:
        return img
    h, w = img.shape
    hh, ww = -(-h // factor), -(-w // factor)
    padded = np.zeros((hh * factor, ww * factor), dtype=np.float32)
    padded[:h, :w] = img
    count = np.zeros_like(padded)
    count[:h, :w] = 1.0
    sums = padded.reshape(hh, factor, ww, factor).sum(axis=(1, 3))
    n = count.reshape(hh, factor, ww, factor).sum(axis=(1, 3))
    out: FloatArray = (sums / np.maximum(n, 1.0)).astype(np.float32)
    return out


def tissue_low(image: FloatArray, *, factor: int = 8, min_fraction: float = 0.01) -> BoolArray:
    """The tissue mask at low resolution: ``ceil(H / factor) x ceil(W / factor)``."""
    low = downsample(image, factor)
    if low.size == 0 or not float(low.max()) > 0.0:
        return np.zeros(low.shape, dtype=bool)
    lo, hi = float(low.min()), float(low.max())
    level = min(float(threshold_otsu(low)) if hi > lo else lo, MAX_BACKGROUND)
    mask = low > level
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= max(1.0, min_fraction * mask.size)) + 1
        mask = np.isin(labels, keep)
    return np.asarray(mask, dtype=bool)


def upsample_mask(low: BoolArray, shape: tuple[int, int], factor: int) -> BoolArray:
    """A low-resolution mask back to ``shape`` by pixel repetition."""
    if factor <= 1:
        return low[: shape[0], : shape[1]].copy()
    big = np.repeat(np.repeat(low, factor, axis=0), factor, axis=1)
    return np.ascontiguousarray(big[: shape[0], : shape[1]])


def tissue_mask(image: FloatArray, *, factor: int = 8, min_fraction: float = 0.01) -> BoolArray:
    """The tissue mask at the image's own size (see the module's docstring)."""
    shape = (int(image.shape[0]), int(image.shape[1]))
    return upsample_mask(tissue_low(image, factor=factor, min_fraction=min_fraction), shape, factor)
