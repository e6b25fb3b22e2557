"""Bulk segmentation of a folder data set: masks, overlays and ``results.csv``."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camseg.cam import compute_cam, parse_method
from camseg.data.folder import FolderDataset, atomic_directory
from camseg.data.tensors import load_arrays
from camseg.errors import InvalidInputError
from camseg.figures import save_overlay
from camseg.masks import parse_rule, to_masks
from camseg.metrics import dice
from camseg.modeldir import load_model, write_json
from camseg.models import Classifier
from camseg.predict import to_size
from camseg.training import progress_bar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentOptions:
    method: str = "gradcam"
    threshold: str = "otsu"
    layer: str | None = None
    gate: bool = True
    largest: bool = False
    fill_holes: bool = False
    overlays: bool = False
    batch_size: int = 32

    def validate(self, model: Classifier) -> None:
        parse_method(self.method)
        parse_rule(self.threshold)
        if self.layer is not None:
            model.check_layer(self.layer)
        if self.batch_size < 1:
            raise InvalidInputError("batch size must be at least 1")


def heatmaps(
    model: Classifier, images: Tensor, *, method: str = "gradcam", layer: str | None = None,
    batch_size: int = 64, bar: Any = None, task: Any = None,
) -> tuple[Tensor, Tensor]:
    """Heatmaps ``(N, H, W)`` of a whole set, computed in batches.

    Returns the heatmaps and the class probabilities ``(N, classes)``.
    """
    maps, probs = [], []
    for i in range(0, len(images), batch_size):
        res = compute_cam(model, images[i : i + batch_size], method=method, layer=layer)
        maps.append(res.heatmaps)
        probs.append(res.probabilities)
        if bar is not None:
            bar.advance(task, len(res.heatmaps))
    return torch.cat(maps), torch.cat(probs)


def segment_folder(
    model_dir: Path, data_dir: Path, out: Path, opts: SegmentOptions, *, split: str | None = None,
    overwrite: bool = False, progress: bool = True,
) -> dict[str, Any]:
    """Segment every image of ``data_dir`` (or one split) with ``model_dir``'s heatmaps.

    Writes ``out/masks/<id>.png`` (at each image's own size), ``out/overlays/<id>.png``
    on request, ``out/results.csv`` and ``out/summary.json``; ``out`` appears whole or
    not at all. Returns the summary.
    """
    out = Path(out)
    model, meta = load_model(model_dir)
    opts.validate(model)
    ds = FolderDataset.open(data_dir)
    if tuple(meta.get("classes", ds.classes)) != ds.classes:
        raise InvalidInputError(f"{data_dir}: classes {ds.classes} differ from the model's {meta['classes']}")
    indices = ds.subset(split)
    size, channels = model.spec.input_size, model.spec.in_channels
    positive = model.spec.num_classes - 1
    rule = parse_rule(opts.threshold)
    rows: list[dict[str, Any]] = []
    with atomic_directory(out, overwrite=overwrite) as tmp:
        (tmp / "masks").mkdir()
        if opts.overlays:
            (tmp / "overlays").mkdir()
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task(f"segment {Path(model_dir).name}", total=len(indices), status="")
            for start in range(0, len(indices), opts.batch_size):
                chunk = indices[start : start + opts.batch_size]
                arrays = load_arrays(ds, chunk, size, channels)
                res = compute_cam(model, arrays.images, method=opts.method, layer=opts.layer)
                probs = res.probabilities
                pred = probs.argmax(1)
                for j, i in enumerate(chunk):
                    rows.append(_one(ds, i, arrays.images[j], res.heatmaps[j], probs[j], int(pred[j]),
                                     positive, rule, opts, tmp))
                bar.advance(task, len(chunk))
        _write_results(tmp / "results.csv", rows)
        summary = _summary(rows, opts, model_dir, data_dir, split, meta)
        write_json(tmp / "summary.json", summary)
    logger.info("segmented %d images into %s (mean Dice %.4f)", len(rows), out, summary["mean_dice"])
    return summary


def _one(ds: FolderDataset, i: int, image: Tensor, heat: Tensor, probs: Tensor, pred: int, positive: int,
         rule: Any, opts: SegmentOptions, tmp: Path) -> dict[str, Any]:
    sample = ds.samples[i]
    original, truth = ds.load(i)
    heat = to_size(heat, original.shape[:2])  # masks come at the image's own size
    mask = to_masks(heat[None], rule, predicted=torch.tensor([pred]) if opts.gate else None,
                    positive_class=positive, largest=opts.largest, fill_holes=opts.fill_holes)[0]
    mask_np = mask.numpy()
    Image.fromarray(mask_np.astype(np.uint8) * 255).save(tmp / "masks" / f"{sample.id}.png")
    if opts.overlays:
        save_overlay(tmp / "overlays" / f"{sample.id}.png", original, heat.numpy(), mask_np, truth)
    d = float(dice(mask, torch.from_numpy(truth))) if truth is not None else math.nan
    return {
        "id": sample.id,
        "label": ds.classes[sample.label],
        "probability": round(float(probs[positive]), 6),
        "predicted_label": ds.classes[pred],
        "mask_area": int(mask_np.sum()),
        "dice": "" if math.isnan(d) else round(d, 6),
    }


def _write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "label", "probability", "predicted_label", "mask_area", "dice"])
        writer.writeheader()
        writer.writerows(rows)


def _summary(rows: list[dict[str, Any]], opts: SegmentOptions, model_dir: Path, data_dir: Path,
             split: str | None, meta: dict[str, Any]) -> dict[str, Any]:
    dices = [float(r["dice"]) for r in rows if r["dice"] != ""]
    correct = [r["label"] == r["predicted_label"] for r in rows]
    return {
        "model": str(model_dir),
        "architecture": meta.get("architecture"),
        "data": str(data_dir),
        "split": split,
        "options": asdict(opts),
        "images": len(rows),
        "with_truth": len(dices),
        "mean_dice": float(np.mean(dices)) if dices else math.nan,
        "accuracy": float(np.mean(correct)) if correct else math.nan,
    }
