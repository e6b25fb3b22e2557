"""Distil a classifier's heatmaps into a small segmentation network (the *student*).

The method is self-training on CAM pseudo-labels with an ignored band, the recipe of
weakly supervised semantic segmentation: a classifier trained on image labels alone
explains each training image with a heatmap; only its confident parts become labels
(foreground where the heat is high on images the classifier calls tumor, background
where it is low and on every image it calls normal) and the uncertain band between is
ignored by the loss. A U-Net trained on those labels learns what the confident regions
share and fills in the band, sharpening and completing the blurry, low-resolution CAM.

* Kolesnikov & Lampert, "Seed, Expand and Constrain", ECCV 2016: CAM seeds as the
  only pixel supervision.
* Ahn & Kwak, "Learning Pixel-level Semantic Affinity with Image-level Supervision
  for Weakly Supervised Semantic Segmentation" (AffinityNet), CVPR 2018: confident
  foreground and background from thresholded CAMs, the band between ignored.
* Wang et al., "Self-supervised Equivariant Attention Mechanism for Weakly Supervised
  Semantic Segmentation" (SEAM), CVPR 2020: CAMs made consistent under spatial
  transforms; here flips and quarter turns augment training and flips are averaged at
  inference (flip test-time augmentation).

Refined masks (a dense CRF, GrabCut) may be fed in as the source of the labels
(:func:`pseudo_labels`'s ``masks``, :func:`distill`'s ``refine``): a pixel is then
labelled only where the refined mask and the heatmap agree.

**Truth masks are never read.** :func:`distill_inputs` decodes the image files of the
folder data set and nothing else: it does not call
:meth:`~camseg.data.folder.FolderDataset.load` or :func:`~camseg.data.tensors.load_arrays`
(both decode masks), and the class labels of ``labels.csv`` are not used either; the
classifier's own predictions decide which images are tumor. ``tests/test_distill.py``
overwrites every mask of a data set with garbage and checks the pseudo-labels do not
change.

A student is saved with its model: ``student.pt`` (weights and config),
``student.onnx`` (input ``images`` ``(N, C, S, S)`` in [0, 1], output
``probabilities`` ``(N, 1, S, S)``, dynamic batch, written only when its parity with
torch holds) and ``student.json`` (config, parity, pseudo-label settings and training
summary), each by an atomic write.

>>> model = LoadedModel.load("models/resnet")  # doctest: +SKIP
>>> student = distill(model, Path("data/synth"), DistillConfig(epochs=20))  # doctest: +SKIP
>>> save_student(model.path, student.network, student.config, meta=student.meta)  # doctest: +SKIP
>>> load_student(model.path).heatmaps(model.prepare(images))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import pickle
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camseg
from camseg.cam import CamMethod, parse_method
from camseg.data.folder import SPLITS, FloatArray, FolderDataset, decode_image
from camseg.errors import InvalidInputError, UnsupportedError
from camseg.export import ExportParityError, onnx_bytes
from camseg.modeldir import atomic_write_bytes, read_metadata, write_json
from camseg.models.unet import UNet
from camseg.progress import OnProgress, ShouldStop, Tracker
from camseg.runtime import make_session
from camseg.training import augment, resolve_device, seed_everything

if TYPE_CHECKING:  # camseg.pipeline serves the student, so it imports this module, not the reverse
    from camseg.pipeline import LoadedModel

logger = logging.getLogger(__name__)

STUDENT_FILE = "student.pt"
STUDENT_ONNX_FILE = "student.onnx"
STUDENT_META_FILE = "student.json"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
OPSET = 18
PARITY_TOLERANCE = 1e-4

IGNORE = -1  # pseudo-label of the uncertain band

HeatFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""A batch ``(N, C, S, S)`` in [0, 1] -> heatmaps ``(N, S, S)`` in [0, 1] and ``positive``
``(N,)`` bool (the heat source says tumor)."""
RefineFn = Callable[[Tensor, Tensor], Tensor]
"""Images ``(N, C, S, S)`` and heatmaps ``(N, S, S)`` -> refined masks ``(N, S, S)`` bool."""
OnEpoch = Callable[[int, float], None]


@dataclass(frozen=True)
class DistillConfig:
    """How pseudo-labels are made and the student is trained.

    ``fg``/``bg``: heat thresholds of confident foreground and background; ``margin``:
    the dilation (pixels) around a refined mask that is ignored. ``dice_weight`` adds a
    soft Dice term to the BCE (0 turns it off). ``augment``: random flips and quarter
    turns, the same for image and label. ``flip_tta``: average the student's
    probabilities over flips at inference. ``cam_method``/``cam_layer``: the
    classifier's heatmap when no ``heat_fn`` is given.
    """

    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    base: int = 16
    depth: int = 3
    seed: int = 0
    fg: float = 0.6
    bg: float = 0.2
    margin: int = 2
    dice_weight: float = 0.5
    augment: bool = True
    flip_tta: bool = True
    cam_method: str = "gradcam"
    cam_layer: str | None = None

    def __post_init__(self) -> None:
        _check_thresholds(self.fg, self.bg)
        if self.epochs < 1 or self.batch_size < 2:
            raise InvalidInputError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.dice_weight >= 0):
            raise InvalidInputError("lr must be > 0, weight_decay and dice_weight >= 0")
        if self.base < 1 or self.depth < 1 or self.margin < 0:
            raise InvalidInputError(f"base and depth must be >= 1 and margin >= 0, got {self.base}, {self.depth}, "
                                    f"{self.margin}")
        method = parse_method(self.cam_method)
        if method is CamMethod.DISTILLED:
            raise InvalidInputError("a student learns from the classifier's CAMs, not from another student")
        object.__setattr__(self, "cam_method", method.value)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        """From :func:`dataclasses.asdict` output; unknown keys (a newer writer) are dropped."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_thresholds(fg: float, bg: float) -> None:
    if not 0.0 <= bg < fg <= 1.0:
        raise InvalidInputError(f"pseudo-label thresholds need 0 <= bg < fg <= 1, got bg={bg}, fg={fg}")


# ---------------------------------------------------------------------- pseudo-labels
def dilate(masks: Tensor, radius: int) -> Tensor:
    """Masks ``(N, H, W)`` grown by ``radius`` pixels (a square, Chebyshev distance)."""
    if radius <= 0:
        return masks.bool()
    grown = F.max_pool2d(masks[:, None].float(), 2 * radius + 1, stride=1, padding=radius)
    return grown[:, 0] > 0.5


def pseudo_labels(heatmaps: Tensor, positive: Tensor, *, fg: float = 0.6, bg: float = 0.2,
                  masks: Tensor | None = None, margin: int = 2) -> Tensor:
    """Pseudo-labels ``(N, S, S)`` int8: 1 confident tumor, 0 confident background,
    -1 ignored (:data:`IGNORE`).

    Args:
        heatmaps: ``(N, S, S)`` in [0, 1] (the classifier's, normalised per map).
        positive: ``(N,)`` bool, the classifier (not the truth) calls the image tumor.
        fg, bg: on positive images, heat >= ``fg`` is foreground, heat <= ``bg``
            background, the band between ignored. Every pixel of an image called
            normal is background, whatever its heat.
        masks: optional refined masks ``(N, S, S)`` bool (a CRF's or GrabCut's output
            on positive images). Where given, a pixel is labelled only where mask and
            heat agree: foreground = mask and heat > ``bg``; background = outside the
            mask dilated by ``margin`` pixels and heat < ``fg``. The ring of the
            dilation, mask pixels the heat calls background and heat >= ``fg`` the
            mask left out are ignored. Masks of images called normal are not used.

    Nothing forces a foreground pixel: on an image called tumor whose map never reaches
    ``fg``, every pixel is background or ignored.

    >>> heat = torch.tensor([[[0.9, 0.4, 0.1]], [[0.9, 0.4, 0.1]]])
    >>> pseudo_labels(heat, torch.tensor([True, False])).tolist()
    [[[1, -1, 0]], [[0, 0, 0]]]
    """
    _check_thresholds(fg, bg)
    if heatmaps.ndim != 3 or not heatmaps.is_floating_point():
        raise InvalidInputError(f"heatmaps must be float (N, S, S), got {heatmaps.dtype} {tuple(heatmaps.shape)}")
    n = heatmaps.shape[0]
    if positive.shape != (n,):
        raise InvalidInputError(f"positive must be shaped ({n},), got {tuple(positive.shape)}")
    if not torch.isfinite(heatmaps).all():
        raise InvalidInputError("heatmaps hold NaN or infinite values")
    heat = heatmaps.float()
    if masks is None:
        fore, back = heat >= fg, heat <= bg
    else:
        if masks.shape != heatmaps.shape:
            raise InvalidInputError(f"masks {tuple(masks.shape)} differ from heatmaps {tuple(heatmaps.shape)}")
        m = masks.bool()
        if margin < 0:
            raise InvalidInputError(f"margin must be >= 0, got {margin}")
        fore = m & (heat > bg)
        back = ~dilate(m, margin) & (heat < fg)
    pos = positive.bool()[:, None, None]
    labels = torch.full(heat.shape, IGNORE, dtype=torch.int8)
    labels[back] = 0
    labels[fore] = 1
    labels[~pos.expand_as(labels)] = 0
    return labels


def label_summary(labels: Tensor) -> dict[str, Any]:
    """Counts of a pseudo-label set: images, images with foreground, pixel fractions."""
    total = max(labels.numel(), 1)
    return {
        "images": int(labels.shape[0]),
        "images_with_foreground": int((labels == 1).flatten(1).any(1).sum()) if labels.numel() else 0,
        "fraction_foreground": round(float((labels == 1).sum()) / total, 6),
        "fraction_background": round(float((labels == 0).sum()) / total, 6),
        "fraction_ignored": round(float((labels == IGNORE).sum()) / total, 6),
    }


# ---------------------------------------------------------------------- data
def _read_images(data_dir: Path, split: str | None, model: LoadedModel) -> Tensor:
    """The image files of ``split`` at the model's input size; masks untouched."""
    if split is not None and split not in SPLITS:
        raise InvalidInputError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    ds = FolderDataset.open(data_dir)  # validates labels.csv; reads no pixels
    idx = ds.subset(split)
    if not idx:
        raise InvalidInputError(f"{data_dir}: no samples in split {split!r}")
    paths = [ds.samples[i].image_path for i in idx]  # image paths only: Sample.mask_path is never opened

    def one(path: Path) -> FloatArray:
        return decode_image(path, name=str(path))

    with ThreadPoolExecutor(max_workers=4) as pool:
        decoded = list(pool.map(one, paths))
    return model.prepare(decoded)


def as_image(x: Tensor) -> FloatArray:
    """One prepared ``(C, S, S)`` image back to the ``(S, S)`` / ``(S, S, 3)`` form of
    :func:`camseg.pipeline.run` (which prepares it again: a no-op at the model's size)."""
    arr: FloatArray = (x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)).contiguous().numpy()
    return arr


def classifier_heat(model: LoadedModel, *, method: str | CamMethod = CamMethod.GRADCAM,
                    layer: str | None = None) -> HeatFn:
    """The default heat source: ``model``'s heatmaps at its input size (normalised to
    [0, 1] per map) and its predictions (positive = a positive class is the argmax)."""
    from camseg.pipeline import Options, run

    options = Options(method=parse_method(method), layer=layer, threshold=None, gate=False)
    positives = set(model.positives)

    def heat(x: Tensor) -> tuple[Tensor, Tensor]:
        result = run(model, [as_image(t) for t in x], options, task="distill heatmaps")
        maps = torch.stack([r.heatmap for r in result.items])
        positive = torch.tensor([r.label in positives for r in result.items], dtype=torch.bool)
        return maps, positive

    return heat


def _checked_heat(heat: Tensor, positive: Tensor, n: int, size: int) -> tuple[Tensor, Tensor]:
    if not isinstance(heat, Tensor) or heat.shape != (n, size, size) or not heat.is_floating_point():
        got = tuple(heat.shape) if isinstance(heat, Tensor) else type(heat).__name__
        raise InvalidInputError(f"heat source: heatmaps must be float ({n}, {size}, {size}), got {got}")
    if not isinstance(positive, Tensor) or positive.shape != (n,):
        got = tuple(positive.shape) if isinstance(positive, Tensor) else type(positive).__name__
        raise InvalidInputError(f"heat source: positive must be shaped ({n},), got {got}")
    if not torch.isfinite(heat).all() or heat.min() < -1e-6 or heat.max() > 1 + 1e-6:
        raise InvalidInputError("heat source: heatmaps must be finite and within [0, 1]")
    return heat.float().clamp(0.0, 1.0), positive.bool()


def distill_inputs(
    model: LoadedModel,
    data_dir: Path,
    split: str | None = "train",
    *,
    cfg: DistillConfig | None = None,
    heat_fn: HeatFn | None = None,
    refine: RefineFn | None = None,
    chunk: int = 64,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> tuple[Tensor, Tensor]:
    """The images of ``split`` at the model's input size ``(N, C, S, S)`` and their
    pseudo-labels ``(N, S, S)`` int8 (:func:`pseudo_labels` with ``cfg``'s thresholds).

    Only the image files are decoded: truth masks and the class labels of ``labels.csv``
    are never read. ``heat_fn`` (default :func:`classifier_heat`) is called on chunks of
    ``chunk`` images; ``refine``, where given, turns each chunk's images and heatmaps
    into refined masks. A data set without splits gives all of its images.
    """
    cfg = cfg or DistillConfig()
    if chunk < 1:
        raise InvalidInputError("chunk must be at least 1 image")
    source = heat_fn or classifier_heat(model, method=cfg.cam_method, layer=cfg.cam_layer)
    images = _read_images(Path(data_dir), split, model)
    n, size = images.shape[0], images.shape[-1]
    labels = torch.empty((n, size, size), dtype=torch.int8)
    tracker = Tracker("distill labels", n, on_progress=on_progress, should_stop=should_stop)
    for start in range(0, n, chunk):
        x = images[start : start + chunk]
        heat, positive = _checked_heat(*source(x), x.shape[0], size)
        masks = refine(x, heat) if refine is not None else None
        labels[start : start + chunk] = pseudo_labels(heat, positive, fg=cfg.fg, bg=cfg.bg, masks=masks,
                                                      margin=cfg.margin)
        tracker.advance(x.shape[0])
    logger.info("pseudo-labels of %d images of %s (split %s): %s", n, data_dir, split, label_summary(labels))
    return images, labels


# ---------------------------------------------------------------------- training
def distill_loss(logits: Tensor, labels: Tensor, *, dice_weight: float = 0.5) -> Tensor:
    """BCE-with-logits over the labelled pixels (label 0 or 1), plus ``dice_weight`` times
    a soft Dice loss over the same pixels (Milletari et al., V-Net, 3DV 2016).

    Ignored pixels (-1) get exactly zero gradient. The Dice term is one ratio over the
    whole batch, smoothed by 1: a batch without foreground pushes probabilities to 0
    instead of dividing by zero. A batch with no labelled pixel has loss 0.
    """
    if logits.ndim == 4:
        logits = logits[:, 0]
    if logits.shape != labels.shape:
        raise InvalidInputError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    valid = (labels >= 0).to(logits.dtype)
    target = (labels == 1).to(logits.dtype)
    n = valid.sum()
    if n == 0:
        return logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (bce * valid).sum() / n
    if dice_weight > 0:
        p = torch.sigmoid(logits) * valid
        inter = (p * target).sum()
        loss = loss + dice_weight * (1.0 - (2.0 * inter + 1.0) / (p.sum() + target.sum() + 1.0))
    return loss


def augment_pair(x: Tensor, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """:func:`camseg.training.augment`'s flips and quarter turns, the same for each image
    ``(N, C, S, S)`` and its labels ``(N, S, S)``."""
    both = augment(torch.cat([x, labels[:, None].to(x.dtype)], dim=1), gen)
    return both[:, :-1], both[:, -1].round().to(labels.dtype)


def _check_training_set(images: Tensor, labels: Tensor, cfg: DistillConfig) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise InvalidInputError(f"images must be float (N, C, S, S), got {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.int8 or labels.shape != (images.shape[0], *images.shape[2:]):
        raise InvalidInputError(f"labels must be int8 {(images.shape[0], *images.shape[2:])}, got "
                                f"{labels.dtype} {tuple(labels.shape)}")
    if images.shape[0] < 2:
        raise InvalidInputError("the student needs at least 2 images (BatchNorm)")
    multiple = 2**cfg.depth
    if images.shape[2] % multiple or images.shape[3] % multiple:
        raise InvalidInputError(f"image size {images.shape[2]}x{images.shape[3]} is not a multiple of {multiple} "
                                f"(2**depth, depth {cfg.depth})")
    if not (labels >= 0).any():
        raise InvalidInputError("every pseudo-label is ignored; lower fg or raise bg")


def train_student(
    images: Tensor,
    labels: Tensor,
    cfg: DistillConfig,
    *,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    on_epoch: OnEpoch | None = None,
    device: str | torch.device = "cpu",
) -> UNet:
    """Train a fresh :class:`UNet` on ``images`` ``(N, C, S, S)`` in [0, 1] and pseudo-labels
    ``(N, S, S)`` int8; returns it in eval mode on the CPU.

    :func:`distill_loss` over the labelled pixels, AdamW with a one-cycle schedule, the
    weights of the last epoch (there is no truth to select an epoch by). Seeded: on the
    CPU, the same inputs and config give the same weights. Progress is reported per
    batch as the task ``distill``; ``should_stop`` is polled after each batch and stops
    with :class:`~camseg.errors.CancelledError`. ``on_epoch(epoch, mean_loss)`` follows
    each epoch.
    """
    _check_training_set(images, labels, cfg)
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = resolve_device(device) if isinstance(device, str) else device
    net = UNet(images.shape[1], cfg.base, cfg.depth)
    net.set_input_stats(images.mean().item(), images.std().item())
    net.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = images.shape[0]
    steps = math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.2)
    tracker = Tracker("distill", cfg.epochs * steps, on_progress=on_progress, should_stop=should_stop)
    status = ""
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        for b in range(steps):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                tracker.advance(1, status)
                continue
            x, y = images[idx], labels[idx]
            if cfg.augment:
                x, y = augment_pair(x, y, gen)
            loss = distill_loss(net(x.to(dev)), y.to(dev), dice_weight=cfg.dice_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            tracker.advance(1, status)
        mean_loss = total / max(seen, 1)
        status = f"epoch {epoch} loss {mean_loss:.4f}"
        tracker.advance(0, status)
        logger.info("distill epoch %d: loss %.4f", epoch, mean_loss)
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
    tracker.finish(status)
    return net.cpu().eval()


# ---------------------------------------------------------------------- inference
def _flips(x: Tensor) -> Tensor:
    """The batch under the four flips (identity, horizontal, vertical, both), stacked."""
    return torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-2, -1)])


def _unflip_mean(p: Tensor, n: int) -> Tensor:
    """Inverse of :func:`_flips` on maps ``(4n, H, W)``, averaged: ``(n, H, W)``."""
    a, h, v, hv = p[:n], p[n : 2 * n], p[2 * n : 3 * n], p[3 * n :]
    return (a + h.flip(-1) + v.flip(-2) + hv.flip(-2, -1)) / 4.0


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode for the block; the caller's mode is restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def student_heatmaps(student: UNet, x: Tensor, *, tta: bool = True, chunk: int = 64) -> Tensor:
    """Tumor probabilities ``(N, H, W)`` of images ``(N, C, H, W)`` in [0, 1].

    With ``tta`` the probabilities (after the sigmoid) are averaged over the four flips
    (identity, horizontal, vertical, both), each flipped back, so the result is
    flip-equivariant. The student runs in eval mode; its mode is restored afterwards.
    """
    student.check_input(x)
    out = []
    with eval_mode(student), torch.inference_mode():
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk].float()
            if tta:
                out.append(_unflip_mean(torch.sigmoid(student(_flips(part)))[:, 0], part.shape[0]))
            else:
                out.append(torch.sigmoid(student(part))[:, 0])
    return torch.cat(out)


@dataclass(frozen=True)
class Student:
    """A distilled student: the U-Net, its ONNX Runtime session (``onnx``) where loaded,
    its config and metadata (``student.json``). Safe to share between threads once
    loaded: ONNX Runtime sessions run concurrently and the torch network stays in eval
    mode."""

    network: UNet
    onnx: ort.InferenceSession | None
    config: DistillConfig
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int | None:
        """The input size the ONNX graph was exported at (None before saving)."""
        size = self.meta.get("input", {}).get("size")
        return int(size) if size is not None else None

    def heatmaps(self, x: Tensor, *, onnx: bool | None = None, tta: bool | None = None, chunk: int = 64) -> Tensor:
        """Tumor probabilities ``(N, S, S)`` of images ``(N, C, S, S)`` in [0, 1].

        ``onnx`` None runs ONNX Runtime where loaded, else torch; True requires the
        session (FAILED_PRECONDITION otherwise); False runs torch. ``tta`` None follows
        the config's ``flip_tta``; on ONNX the flipped copies go through in the same
        batch as the images.
        """
        use_tta = self.config.flip_tta if tta is None else tta
        if onnx and self.onnx is None:
            raise UnsupportedError("the student has no ONNX session (not exported, or loaded with onnx=False)")
        if self.onnx is None or onnx is False:
            return student_heatmaps(self.network, x, tta=use_tta, chunk=chunk)
        self.network.check_input(x)
        if self.size is not None and tuple(x.shape[2:]) != (self.size, self.size):
            raise InvalidInputError(f"images must be {self.size}x{self.size} for the exported student, got "
                                    f"{x.shape[2]}x{x.shape[3]}")
        out = []
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk].float()
            batch = _flips(part) if use_tta else part
            (probs,) = self.onnx.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch.numpy())})
            p = torch.from_numpy(probs)[:, 0]
            out.append(_unflip_mean(p, part.shape[0]) if use_tta else p)
        return torch.cat(out)


def distill(
    model: LoadedModel,
    data_dir: Path,
    cfg: DistillConfig,
    *,
    heat_fn: HeatFn | None = None,
    refine: RefineFn | None = None,
    split: str | None = "train",
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    device: str | torch.device = "cpu",
) -> Student:
    """Pseudo-label ``split`` of the folder data set at ``data_dir`` with ``model``'s
    heatmaps (or ``heat_fn``'s, refined by ``refine``) and train a student on them.

    Truth masks are never read (:func:`distill_inputs`). The returned student has no
    ONNX session; its ``meta`` (pseudo-label settings, label statistics, training
    summary, data and teacher) is what :func:`save_student` records.
    """
    model.require_trained("camseg distill")
    started = time.perf_counter()
    images, labels = distill_inputs(model, data_dir, split, cfg=cfg, heat_fn=heat_fn, refine=refine,
                                    on_progress=on_progress, should_stop=should_stop)
    losses: list[float] = []
    net = train_student(images, labels, cfg, on_progress=on_progress, should_stop=should_stop,
                        on_epoch=lambda _epoch, loss: losses.append(round(loss, 6)), device=device)
    meta: dict[str, Any] = {
        "pseudo_labels": {
            "fg": cfg.fg, "bg": cfg.bg, "margin": cfg.margin, "ignore_value": IGNORE,
            "heat_source": "custom" if heat_fn is not None else f"classifier {cfg.cam_method}",
            "cam_layer": cfg.cam_layer, "refined": refine is not None, "split": split,
            **label_summary(labels),
        },
        "training": {"epochs": cfg.epochs, "losses": losses, "final_loss": losses[-1] if losses else None,
                     "seconds": round(time.perf_counter() - started, 3)},
        "data": {"path": str(Path(data_dir).resolve()), "images": int(images.shape[0]),
                 "sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest()},
        "teacher": {"path": str(model.path), "name": model.meta.get("name"),
                    "architecture": model.meta.get("architecture")},
    }
    return Student(net, None, cfg, meta)


# ---------------------------------------------------------------------- saving
class _Probabilities(nn.Module):
    def __init__(self, net: UNet):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x))


def student_onnx(net: UNet, size: int, opset: int = OPSET) -> bytes:
    """Serialise ``net`` (eval mode) with a sigmoid to ONNX bytes: input ``images``
    ``(N, C, size, size)``, output ``probabilities`` ``(N, 1, size, size)``, dynamic N."""
    wrapper = _Probabilities(net)
    example = torch.rand(2, net.in_channels, size, size)
    with eval_mode(wrapper):
        return onnx_bytes(wrapper, example, INPUT_NAME, [OUTPUT_NAME], opset)


def parity_inputs(channels: int, size: int, n: int = 6) -> Tensor:
    """Fixed parity images: a blank, a white and ``n - 2`` seeded uniform-noise images."""
    noise = torch.rand(max(n - 2, 1), channels, size, size, generator=torch.Generator().manual_seed(0))
    return torch.cat([torch.zeros(1, channels, size, size), torch.ones(1, channels, size, size), noise])


def student_parity(net: UNet, onnx_path: Path, images: Tensor, providers: str = "auto") -> dict[str, float]:
    """Max absolute differences of probabilities, ONNX Runtime vs torch (whole batch and
    batch of one)."""
    session = make_session(onnx_path, providers)
    with eval_mode(net), torch.inference_mode():
        ref = torch.sigmoid(net(images)).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    single = session.run([OUTPUT_NAME], {INPUT_NAME: images[:1].numpy()})[0]
    return {
        "max_abs_diff_probabilities": float(np.abs(got - ref).max()),
        "max_abs_diff_probabilities_batch1": float(np.abs(single - ref[:1]).max()),
        "images": int(images.shape[0]),
    }


def save_student(model_dir: Path, student: UNet, cfg: DistillConfig, *, meta: dict[str, Any],
                 tolerance: float = PARITY_TOLERANCE, providers: str = "auto") -> dict[str, Any]:
    """Save ``student`` with the model at ``model_dir``; returns what ``student.json`` holds.

    The student is exported at the model's input size (``metadata.json``'s spec) and its
    channels must be the model's. The ONNX graph is checked against torch on
    :func:`parity_inputs` first: beyond ``tolerance`` it raises
    :class:`~camseg.export.ExportParityError` and nothing is written. Then
    ``student.pt``, ``student.onnx`` and last ``student.json`` (``meta`` plus config,
    architecture, input/output contract and parity), each replaced atomically.
    """
    model_dir = Path(model_dir)
    spec = read_metadata(model_dir).get("spec", {})
    size, channels = int(spec.get("input_size", 0)), int(spec.get("in_channels", 0))
    if channels != student.in_channels:
        raise InvalidInputError(f"{model_dir}: the model takes {channels} channels, the student "
                                f"{student.in_channels}")
    if size <= 0 or size % student.multiple:
        raise InvalidInputError(f"{model_dir}: input size {size} is not a multiple of {student.multiple} "
                                f"(the student's 2**depth)")
    tmp = model_dir / f".{STUDENT_ONNX_FILE}.candidate"
    atomic_write_bytes(tmp, student_onnx(student, size))
    try:
        report = student_parity(student, tmp, parity_inputs(channels, size), providers)
        worst = max(report["max_abs_diff_probabilities"], report["max_abs_diff_probabilities_batch1"])
        if not worst <= tolerance:
            raise ExportParityError(f"{model_dir}: student ONNX probabilities differ from torch by {worst:.3g} "
                                    f"(> {tolerance:g})")
        architecture = {"name": "unet", "in_channels": student.in_channels, "base": student.base,
                        "depth": student.depth}
        buf = io.BytesIO()
        torch.save({"architecture": architecture, "config": asdict(cfg), "input_size": size,
                    "state_dict": student.state_dict()}, buf)
        atomic_write_bytes(model_dir / STUDENT_FILE, buf.getvalue())
        tmp.replace(model_dir / STUDENT_ONNX_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    record = {
        **meta,
        "architecture": {**architecture, "parameters": sum(p.numel() for p in student.parameters())},
        "config": asdict(cfg),
        "input": {"name": INPUT_NAME, "size": size, "channels": channels, "range": [0.0, 1.0], "layout": "NCHW",
                  "normalisation": {"mean": float(student.input_stats[0]), "std": float(student.input_stats[1]),
                                    "applied_in_model": True}},
        "output": {"name": OUTPUT_NAME, "shape": ["N", 1, size, size], "activation": "sigmoid",
                   "flip_tta": cfg.flip_tta},
        "onnx": {"file": STUDENT_ONNX_FILE, "opset": OPSET, "dynamic_batch": True, "parity": report,
                 "tolerance": tolerance},
        "camseg_version": camseg.__version__,
    }
    write_json(model_dir / STUDENT_META_FILE, record)
    logger.info("saved student of %s (parity %.2e)", model_dir, worst)
    return record


def load_student(model_dir: Path, *, providers: str = "auto", threads: int = 0,
                 onnx: bool | None = None, spinning: bool = True) -> Student | None:
    """The student saved with the model at ``model_dir``; None where there is none.

    ``onnx`` True requires ``student.onnx`` (FAILED_PRECONDITION otherwise), False skips
    it, None loads it where present and recorded in ``student.json``.
    """
    model_dir = Path(model_dir)
    path = model_dir / STUDENT_FILE
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        arch = ckpt["architecture"]
        net = UNet(int(arch["in_channels"]), int(arch["base"]), int(arch["depth"]))
        net.load_state_dict(ckpt["state_dict"])
        cfg = DistillConfig.from_dict(ckpt["config"])
    except (RuntimeError, KeyError, TypeError, EOFError, ValueError, pickle.UnpicklingError,
            InvalidInputError) as exc:
        raise InvalidInputError(f"{path}: unreadable student checkpoint ({exc})") from exc
    net.eval()
    meta_path = model_dir / STUDENT_META_FILE
    meta: dict[str, Any] = {"config": ckpt["config"], "input": {"size": ckpt.get("input_size")}}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{meta_path}: not valid JSON ({exc})") from exc
    onnx_path = model_dir / STUDENT_ONNX_FILE
    session = None
    if onnx and not onnx_path.is_file():
        raise UnsupportedError(f"{model_dir}: the student is not exported ({STUDENT_ONNX_FILE} missing)")
    if onnx or (onnx is None and onnx_path.is_file() and meta.get("onnx")):
        session = make_session(onnx_path, providers, threads=threads, spinning=spinning)
    return Student(net, session, cfg, meta)

