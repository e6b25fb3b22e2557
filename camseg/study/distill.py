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

import hashlib
import io
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camseg
from camseg.core.errors import InvalidInputError
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.types import FloatArray
from camseg.data.folder import SPLITS, FolderDataset, decode_image
from camseg.heat.methods import CamMethod, parse_method
from camseg.models.export import ExportParityError, onnx_bytes
from camseg.models.modeldir import atomic_write_bytes, read_metadata, write_json
from camseg.models.runtime import make_session
from camseg.models.training import augment, resolve_device, seed_everything
from camseg.models.unet import UNet
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel, run
from camseg.pipeline.student import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    PARITY_TOLERANCE,
    STUDENT_FILE,
    STUDENT_META_FILE,
    STUDENT_ONNX_FILE,
    DistillConfig,
    Student,
    _check_thresholds,
    eval_mode,
)

logger = logging.getLogger(__name__)


IGNORE = -1  # pseudo-label of the uncertain band

HeatFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""A batch ``(N, C, S, S)`` in [0, 1] -> heatmaps ``(N, S, S)`` in [0, 1] and ``positive``
``(N,)`` bool (the heat source says tumor)."""
RefineFn = Callable[[Tensor, Tensor], Tensor]
"""Images ``(N, C, S, S)`` and heatmaps ``(N, S, S)`` -> refined masks ``(N, S, S)`` bool."""
OnEpoch = Callable[[int, float], None]


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
    """:func:`camseg.models.training.augment`'s flips and quarter turns, the same for each image
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
    with :class:`~camseg.core.errors.CancelledError`. ``on_epoch(epoch, mean_loss)`` follows
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
                 tolerance: float = PARITY_TOLERANCE, providers: str = "auto",
                 spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save ``student`` with the model at ``model_dir``; returns what ``student.json`` holds.

    The student is exported at the model's input size (``metadata.json``'s spec, or
    ``spec``'s ``input_size`` and ``in_channels`` for a folder without a model) and its
    channels must be the model's. The ONNX graph is checked against torch on
    :func:`parity_inputs` first: beyond ``tolerance`` it raises
    :class:`~camseg.models.export.ExportParityError` and nothing is written. Then
    ``student.pt``, ``student.onnx`` and last ``student.json`` (``meta`` plus config,
    architecture, input/output contract and parity), each replaced atomically.
    """
    model_dir = Path(model_dir)
    if spec is not None:
        model_dir.mkdir(parents=True, exist_ok=True)
    spec = spec if spec is not None else read_metadata(model_dir).get("spec", {})
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


