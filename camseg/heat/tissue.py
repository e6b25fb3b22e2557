"""Where an image shows tissue: not the dark background around a breast or a body.

Otsu's threshold (Otsu, IEEE Trans. SMC 9(1), 1979) of a block-averaged copy of the image,
capped at 0.1: an image with a dark background is cut between background and tissue,
while an image with no background (an ROI, a slice filled by the body) has no class below
0.1 and comes out all tissue. The low-resolution decision is taken back to the image's
pixels by repetition (nearest neighbour). Memory: the small copy is ``H*W/factor**2``
floats; the result is ``H*W`` booleans.

>>> img = np.zeros((8, 8), np.float32); img[:, 4:] = 0.6
>>> tissue_mask(img, factor=2)[0].tolist()
[False, False, False, False, True, True, True, True]
>>> bool(tissue_mask(np.full((8, 8), 0.5, np.float32), factor=2).all())
True
"""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu
from skimage.measure import block_reduce

from camseg.core.types import BoolArray, FloatArray

MAX_THRESHOLD = 0.1
"""The cap on Otsu's threshold: intensities above it are tissue whatever Otsu says."""


def tissue_mask(image: FloatArray, *, factor: int) -> BoolArray:
    """Tissue pixels of ``image`` (``(H, W)`` or ``(H, W, C)``, values in [0, 1]).

    The image (channels averaged) is block-averaged by ``factor`` (edge blocks average the
    pixels they hold), thresholded at ``min(otsu, 0.1)``, and repeated back to ``(H, W)``.
    A constant image is all tissue when its value is above 0, else none.
    """
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    gray = np.asarray(image, dtype=np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=-1)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a 2-D image, got shape {np.shape(image)}")
    small = block_reduce(gray, (factor, factor), np.nanmean, cval=np.nan) if factor > 1 else gray
    lo, hi = float(small.min()), float(small.max())
    threshold = 0.0 if hi <= lo else min(float(threshold_otsu(small)), MAX_THRESHOLD)
    tissue = small > threshold
    if factor > 1:
        tissue = np.repeat(np.repeat(tissue, factor, axis=0), factor, axis=1)[: gray.shape[0], : gray.shape[1]]
    return np.ascontiguousarray(tissue, dtype=bool)
