"""Bring a folder data set into memory as tensors at a model's input size."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camseg.core.errors import InvalidInputError
from camseg.core.types import BoolArray, FloatArray
from camseg.data.folder import FolderDataset


@dataclass
class ArraySet:
    """Images ``(N, C, S, S)`` in [0, 1], labels ``(N,)``, masks ``(N, S, S)`` at input size.

    ``has_mask`` marks the samples whose truth mask exists; ``sizes`` keeps each
    image's original height and width.
    """

    ids: list[str]
    images: Tensor
    labels: Tensor
    masks: Tensor
    has_mask: Tensor
    sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, index: Sequence[int] | Tensor) -> ArraySet:
        idx = torch.as_tensor(index, dtype=torch.long)
        return ArraySet(
            [self.ids[i] for i in idx.tolist()], self.images[idx], self.labels[idx], self.masks[idx],
            self.has_mask[idx], [self.sizes[i] for i in idx.tolist()],
        )

    def digest(self) -> str:
        """SHA-256 of the pixels and labels: which data a model was trained on."""
        h = hashlib.sha256()
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()


def to_channels(image: FloatArray, channels: int) -> FloatArray:
    """``(H, W)`` or ``(H, W, 3)`` to ``(channels, H, W)``: luminance or replication."""
    if image.ndim == 3:
        if channels == 1:
            image = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        else:
            return np.ascontiguousarray(np.moveaxis(image, -1, 0))
    return np.repeat(image[None], channels, axis=0) if channels > 1 else image[None]


Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_image(x: Tensor, size: Size) -> Tensor:
    """``(C, H, W)`` to ``(C, *size)`` (a square side, or ``(height, width)``) by
    antialiased bilinear interpolation."""
    hw = _hw(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0]


def resize_mask(m: Tensor, size: Size) -> Tensor:
    hw = _hw(size)
    if tuple(m.shape[-2:]) == hw:
        return m
    return F.interpolate(m[None, None].float(), size=hw, mode="nearest")[0, 0] > 0.5


def load_arrays(ds: FolderDataset, indices: Sequence[int], size: Size, channels: int) -> ArraySet:
    """Decode ``indices`` of ``ds`` (in parallel threads) into an :class:`ArraySet` at
    ``size`` (a square side, or ``(height, width)``)."""
    if not indices:
        raise InvalidInputError(f"{ds.root}: no samples in the requested split")

    def one(i: int) -> tuple[FloatArray, BoolArray | None]:
        return ds.load(i)

    n = len(indices)
    hw = _hw(size)
    images = torch.empty((n, channels, *hw), dtype=torch.float32)
    masks = torch.zeros((n, *hw), dtype=torch.bool)
    has_mask = torch.zeros(n, dtype=torch.bool)
    sizes: list[tuple[int, int]] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for j, (image, mask) in enumerate(pool.map(one, indices)):
            sizes.append((int(image.shape[0]), int(image.shape[1])))
            images[j] = resize_image(torch.from_numpy(to_channels(image, channels)), size)
            if mask is not None:
                masks[j] = resize_mask(torch.from_numpy(mask), size)
                has_mask[j] = True
    labels = torch.tensor([ds.samples[i].label for i in indices], dtype=torch.long)
    return ArraySet([ds.samples[i].id for i in indices], images, labels, masks, has_mask, sizes)
