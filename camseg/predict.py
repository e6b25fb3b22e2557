"""Per-request inference on decoded images: the transport-free core of the service.

Images arrive one by one at any size, 8/16-bit, gray or RGB (decoded to float in
[0, 1] by :func:`camseg.data.folder.decode_image`); they are brought to the model's
input contract here, and heatmaps and masks go back at each image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from camseg.cam import CamMethod, compute_cam, parse_method, upsample
from camseg.data.folder import FloatArray, array_to_float
from camseg.data.tensors import resize_image, to_channels
from camseg.errors import InvalidInputError
from camseg.inference import OnnxModel
from camseg.masks import ThresholdRule, thresholds, to_masks
from camseg.metrics import dice
from camseg.models import Classifier

RAW_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")


def raw_to_image(dtype: str, shape: Sequence[int], data: bytes, *, max_pixels: int) -> FloatArray:
    """A raw ``(H, W)`` or ``(H, W, C)`` array (C in 1, 3) to float in [0, 1]."""
    if dtype not in RAW_DTYPES:
        raise InvalidInputError(f"raw image dtype {dtype!r} is not one of {', '.join(RAW_DTYPES)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1 or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise InvalidInputError(f"raw image shape {shape} is not (H, W) or (H, W, 1|3)")
    if shape[0] * shape[1] > max_pixels:
        raise InvalidInputError(f"image of {shape[0]}x{shape[1]} pixels exceeds the limit of {max_pixels}")
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise InvalidInputError(
            f"raw image data has {len(data)} bytes; dtype {dtype} and shape {shape} need {expected}")
    return array_to_float(np.frombuffer(data, dtype=dtype).reshape(shape), "raw image")


def prepare(images: Sequence[FloatArray], size: int, channels: int) -> torch.Tensor:
    """Decoded images to the model's input batch ``(N, channels, size, size)``."""
    if not images:
        raise InvalidInputError("the request holds no images")
    batch = torch.empty((len(images), channels, size, size), dtype=torch.float32)
    for i, img in enumerate(images):
        batch[i] = resize_image(torch.from_numpy(to_channels(img, channels)), size)
    return batch


def to_size(heat: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """One heatmap ``(h, w)`` resampled to ``shape``, kept in [0, 1]."""
    return upsample(heat[None], shape)[0].clamp(0, 1)


@dataclass(frozen=True)
class Explained:
    heatmaps: list[torch.Tensor]  # each at its image's own size
    probabilities: torch.Tensor  # (N, classes)
    targets: torch.Tensor
    layers: tuple[str, ...]


def explain(model: Classifier, images: Sequence[FloatArray], *, method: str | CamMethod = "gradcam",
            target: int | None = None, layer: str | None = None) -> Explained:
    """Heatmaps of ``images`` at their own sizes (torch path)."""
    parse_method(method)
    if layer:
        model.check_layer(layer)
    batch = prepare(images, model.spec.input_size, model.spec.in_channels)
    res = compute_cam(model, batch, method=method, targets=target, layer=layer or None)
    maps = [to_size(res.heatmaps[i], img.shape[:2]) for i, img in enumerate(images)]
    return Explained(maps, res.probabilities, res.targets, res.layers)


def explain_onnx(onnx: OnnxModel, images: Sequence[FloatArray], *, method: str | CamMethod = "gradcam",
                 target: int | None = None) -> Explained:
    """Heatmaps of ``images`` at their own sizes from one ONNX pass (the exported layer)."""
    x = prepare(images, onnx.size, onnx.channels).numpy()
    res = onnx.explain(x, method=method, targets=target)
    maps = [to_size(res.heatmaps[i], img.shape[:2]) for i, img in enumerate(images)]
    return Explained(maps, res.probabilities, res.targets, res.layers)


@dataclass(frozen=True)
class Segmented:
    mask: npt.NDArray[np.bool_]
    threshold_value: float
    gated: bool
    dice: float | None


def segment_one(heat: torch.Tensor, rule: ThresholdRule, *, predicted: int, positive: int, gate: bool,
                largest: bool, truth: npt.NDArray[np.bool_] | None) -> Segmented:
    """The mask of one heatmap (at its image's size) and its Dice against ``truth``."""
    t = float(thresholds(heat[None], rule)[0])
    mask = to_masks(heat[None], rule, predicted=torch.tensor([predicted]) if gate else None,
                    positive_class=positive, largest=largest)[0].numpy()
    gated = gate and predicted != positive
    d = None
    if truth is not None:
        if truth.shape != mask.shape:
            raise InvalidInputError(f"truth mask shape {truth.shape} differs from its image {mask.shape}")
        d = float(dice(torch.from_numpy(mask), torch.from_numpy(truth)))
    return Segmented(mask, t, gated, d)


def run_lengths(mask: npt.NDArray[np.bool_]) -> list[int]:
    """Run lengths of the row-major mask, alternating background and foreground, starting
    with a (possibly empty) background run."""
    flat = mask.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def from_run_lengths(runs: Sequence[int], shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Inverse of :func:`run_lengths`."""
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(shape)
