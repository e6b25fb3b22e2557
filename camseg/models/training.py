"""Seeded classifier training with validation, early stopping and the best checkpoint."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import camseg
from camseg.core.errors import InvalidInputError
from camseg.core.metrics import accuracy, roc_auc
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.scale import Scale
from camseg.data.folder import FolderDataset
from camseg.data.tensors import ArraySet, load_arrays
from camseg.models import Classifier, ModelSpec, build, count_parameters
from camseg.models.modeldir import load_model, save_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 4
    seed: int = 0
    augment: bool = True
    label_smoothing: float = 0.0
    brightness: float = 0.03  # augmentation: a uniform shift in [-b, b] per image
    contrast: float = 0.1  # augmentation: a scale in [1 - c, 1 + c] about each image's mean
    dilated: bool = False  # dilation instead of stride in the last downsampling stage (a finer CAM layer)
    balanced: bool = False  # weigh the loss by inverse class frequency in the train split (few tumor ROIs)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_auc: float
    seconds: float


@dataclass
class TrainResult:
    model: Classifier
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0

    @property
    def best(self) -> EpochLog:
        return self.history[self.best_epoch - 1]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA where torch sees a GPU, else the CPU; otherwise a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InvalidInputError(f"bad device {name!r} ({exc})") from exc


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def augment(x: Tensor, gen: torch.Generator, *, brightness: float = 0.0, contrast: float = 0.0) -> Tensor:
    """Random flips and quarter turns (the labels and masks of an ROI do not change), then
    a small brightness shift and contrast scale per image, clipped to [0, 1]."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.transpose(-1, -2)
    if brightness > 0 or contrast > 0:
        scale = 1 + contrast * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
        shift = brightness * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * scale + mean + shift).clamp(0.0, 1.0)
    return x


@torch.inference_mode()
def predict_proba(model: Classifier, images: Tensor, batch_size: int = 128) -> Tensor:
    """Softmax probabilities ``(N, classes)`` on the CPU; the model must be in eval mode."""
    device = model.fc.weight.device
    out = [F.softmax(model(images[i : i + batch_size].to(device)), dim=1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty((0, model.spec.num_classes))


def evaluate(model: Classifier, data: ArraySet, batch_size: int = 128) -> dict[str, float]:
    """Loss, accuracy and ROC AUC (tumor = class 1 vs the rest) on ``data``."""
    was_training = model.training
    model.eval()
    try:
        probs = predict_proba(model, data.images, batch_size)
    finally:
        model.train(was_training)
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-8)), data.labels).item()
    return {
        "loss": loss,
        "accuracy": accuracy(probs.argmax(1), data.labels),
        "auc": roc_auc(probs[:, -1], data.labels == probs.shape[1] - 1),
    }


def train(
    spec: ModelSpec,
    train_set: ArraySet,
    val_set: ArraySet,
    cfg: TrainConfig,
    *,
    task: str | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    device: str | torch.device = "cpu",
    init_from: Path | None = None,
) -> TrainResult:
    """Train a fresh ``spec`` classifier; return the weights of the best validation epoch.

    With ``init_from`` (a model directory of the same spec) training starts from that
    model's weights instead (fine-tuning); the input statistics are still those of
    ``train_set``. A different spec raises :class:`~camseg.core.errors.InvalidInputError`.
    ``cfg.balanced`` weighs each class's loss by ``n / (classes * n_class)`` of the
    train split (King & Zeng's "balanced" weights, as in scikit-learn).

    The best epoch is the one with the lowest validation loss; training stops after
    ``cfg.patience`` epochs without improvement. Progress is reported per batch under
    the name ``task`` (default: the architecture); ``should_stop`` is polled after each
    batch and stops training with :class:`~camseg.core.errors.CancelledError`.
    """
    if len(train_set) == 0 or len(val_set) == 0:
        raise InvalidInputError("training needs a non-empty train and val split")
    if len(torch.unique(train_set.labels)) < 2:
        raise InvalidInputError("the train split holds a single class; a classifier cannot learn from it")
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = resolve_device(device) if isinstance(device, str) else device
    model = build(spec)
    if init_from is not None:
        model.load_state_dict(_base_state(Path(init_from), spec))
    mean, std = train_set.images.mean().item(), train_set.images.std().item()
    model.set_input_stats(mean, std)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    weight = None
    if cfg.balanced:
        counts = torch.bincount(train_set.labels, minlength=spec.num_classes).clamp_min(1).float()
        weight = (counts.sum() / (len(counts) * counts)).to(dev)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2
    )
    result = TrainResult(model)
    best_loss, best_state, stale = math.inf, copy.deepcopy(model.state_dict()), 0
    name = task or f"train {spec.arch}"
    logger.info("training %s (%d parameters) on %d images", spec.arch, count_parameters(model), len(train_set))
    tracker = Tracker(name, cfg.epochs * steps_per_epoch, on_progress=on_progress, should_stop=should_stop)
    status = ""
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_set), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                tracker.advance(1, status)
                continue
            x = train_set.images[idx]
            if cfg.augment:
                x = augment(x, gen, brightness=cfg.brightness, contrast=cfg.contrast)
            loss = F.cross_entropy(model(x.to(dev)), train_set.labels[idx].to(dev), weight=weight,
                                   label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            tracker.advance(1, status)
        val = evaluate(model, val_set)
        log = EpochLog(epoch, total / len(train_set), val["loss"], val["accuracy"], val["auc"],
                       time.perf_counter() - start)
        result.history.append(log)
        status = f"epoch {epoch} val acc {log.val_accuracy:.3f} auc {log.val_auc:.3f}"
        tracker.advance(0, status)
        logger.info("%s epoch %d: train loss %.4f, val loss %.4f, acc %.4f, auc %.4f",
                    name, epoch, log.train_loss, log.val_loss, log.val_accuracy, log.val_auc)
        if on_epoch is not None:
            on_epoch(log)
        if log.val_loss < best_loss - 1e-4:
            best_loss, best_state, stale = log.val_loss, copy.deepcopy(model.state_dict()), 0
            result.best_epoch = epoch
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    tracker.finish(status)
    model.load_state_dict(best_state)
    model.cpu().eval()  # checkpoints, export and callers get a CPU model
    return result


def train_from_folder(
    data_dir: Path,
    arch: str,
    out: Path,
    cfg: TrainConfig,
    *,
    input_size: int | None = None,
    channels: int = 1,
    width: int = 16,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    device: str = "cpu",
    init_from: Path | None = None,
) -> dict[str, Any]:
    """Train ``arch`` on a folder data set and write the model directory; returns metadata.

    ``init_from``: fine-tune from that model directory's weights (see :func:`train`). The
    data set's scale (``dataset.json`` ``scale``, :mod:`camseg.data.rois`) is copied to the
    metadata as ``scale`` (:func:`camseg.models.modelconfig.model_scale` reads it back),
    times ``roi_size / input_size`` where the model's input size is not the ROIs' size.
    """
    ds = FolderDataset.open(data_dir)
    scale = None
    if ds.meta.get("scale") is not None:
        try:
            scale = Scale.from_dict(ds.meta["scale"])
        except InvalidInputError as exc:
            raise InvalidInputError(f"{Path(data_dir) / 'dataset.json'}: {exc.message}") from None
    size = input_size or _native_size(ds)
    spec = ModelSpec(arch=arch, in_channels=channels, num_classes=len(ds.classes), input_size=size, width=width,
                     extra={"dilated": 1} if cfg.dilated else {})
    build(spec)  # unknown architecture fails before any data is read
    train_idx, val_idx, test_idx = ds.subset("train"), ds.subset("val"), ds.subset("test")
    if not any(s.split for s in ds.samples):
        raise InvalidInputError(f"{data_dir}/labels.csv: no split column; training needs train and val splits")
    train_set = load_arrays(ds, train_idx, size, channels)
    val_set = load_arrays(ds, val_idx, size, channels)
    result = train(spec, train_set, val_set, cfg, task=f"train {Path(out).name}", on_progress=on_progress,
                   should_stop=should_stop, device=device, init_from=init_from)
    metrics: dict[str, Any] = {"best_epoch": result.best_epoch, "val": _rounded(asdict(result.best))}
    if test_idx:
        metrics["test"] = _rounded(evaluate(result.model, load_arrays(ds, test_idx, size, channels)))
    metadata = {
        "name": Path(out).name,
        "architecture": arch,
        "spec": asdict(spec),
        "input": {"size": size, "channels": channels, "range": [0.0, 1.0], "layout": "NCHW"},
        "normalisation": {"mean": float(result.model.input_stats[0]), "std": float(result.model.input_stats[1]),
                          "applied_in_model": True},
        "classes": list(ds.classes),
        "positive_class": ds.classes[-1],
        "gradcam_layer": result.model.cam_layer,
        "layers": result.model.layer_names,
        "parameters": count_parameters(result.model),
        "metrics": metrics,
        "history": [asdict(h) for h in result.history],
        "training": asdict(cfg),
        "data": {"path": str(Path(data_dir).resolve()), "sha256": train_set.digest(),
                 "n_train": len(train_set), "n_val": len(val_set), "n_test": len(test_idx)},
        "camseg_version": camseg.__version__,
    }
    if init_from is not None:
        metadata["fine_tuned_from"] = str(Path(init_from).resolve())
    if scale is not None:
        # trained at another size than the ROIs were cut at, a model pixel spans more or less
        roi_size = ds.meta.get("roi_size")
        factor = roi_size / size if isinstance(roi_size, int) and roi_size > 0 else 1.0
        metadata["scale"] = scale.resized(factor).to_dict()
    save_model(Path(out), result.model, metadata)
    return metadata


def _base_state(model_dir: Path, spec: ModelSpec) -> dict[str, Any]:
    """The weights of the model in ``model_dir``, which must have ``spec``."""
    base, _ = load_model(model_dir)
    if base.spec != spec:
        theirs, ours = asdict(base.spec), asdict(spec)
        diff = ", ".join(f"{k} {theirs[k]!r} vs {ours[k]!r}" for k in ours if theirs[k] != ours[k])
        raise InvalidInputError(f"{model_dir}: cannot fine-tune from this model, its spec differs ({diff})")
    return base.state_dict()


def _native_size(ds: FolderDataset) -> int:
    image, _ = ds.load(0)
    return int(max(image.shape[:2]))


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in d.items()}
