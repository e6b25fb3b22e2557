"""Bulk segmentation of a folder data set: masks, overlays, ``results.csv`` and
``summary.json``, through :func:`camseg.pipeline.run.run`.

The output directory is keyed by its inputs (:mod:`camseg.pipeline.outputs`): a rerun with the
same model, data, split and options reuses the complete output; the directory appears
whole or not at all.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from camseg.bulk.wholerows import LESIONS, WHOLE_COLUMNS, lesion_rows, whole_values, write_lesions
from camseg.core.errors import InvalidInputError
from camseg.core.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_WHOLE_PIXELS
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.data.folder import FolderDataset, atomic_directory
from camseg.models.modelconfig import Source
from camseg.models.modeldir import write_json
from camseg.pipeline.options import Encoding, Options
from camseg.pipeline.outputs import data_fingerprint, model_fingerprint, output_key, reusable
from camseg.pipeline.run import ImageResult, LoadedModel, run
from camseg.pipeline.whole import decode_limit

logger = logging.getLogger(__name__)

SUMMARY = "summary.json"
COLUMNS = ["id", "label", "probability", "predicted_label", "correct", "mask_area", "threshold", "gated", "dice",
           *WHOLE_COLUMNS]


def segment_folder(
    model: LoadedModel | Path,
    data_dir: Path,
    out: Path,
    options: Options | None = None,
    *,
    split: str | None = None,
    overlays: bool = False,
    overwrite: bool = False,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_whole_pixels: int = DEFAULT_MAX_WHOLE_PIXELS,
) -> dict[str, Any]:
    """Segment every image of ``data_dir`` (or one split) with the model's heatmaps.

    An image larger than the model's field of view by the whole-image factor (or as
    ``options.tiling`` forces) is segmented whole (:mod:`camseg.pipeline.whole`); images
    are decoded up to ``max_whole_pixels`` unless whole-image inference is off, else up
    to ``max_pixels``.

    Writes ``out/masks/<id>.png`` (8-bit, 255 = tumor, at each image's own size),
    ``out/overlays/<id>.png`` when ``overlays``, ``out/results.csv`` (with the
    whole-image columns of :mod:`camseg.bulk.wholerows`), ``out/lesions.csv`` (the
    lesion candidates of the whole images) and, last, ``out/summary.json``. Returns the
    summary (``reused`` tells whether a complete output of the same inputs was found
    instead). Mean Dice is over the images with a truth mask.
    """
    loaded = model if isinstance(model, LoadedModel) else LoadedModel.load(model)
    opts = options or loaded.default_options()  # the model's recipe where it has one
    if opts.threshold is None:
        raise InvalidInputError("segmentation needs a threshold rule")
    loaded.engine_for(opts)
    ds = FolderDataset.open(data_dir)
    check_classes(ds, loaded)
    indices = ds.subset(split)
    key = output_key(model=model_fingerprint(loaded.path), data=data_fingerprint(ds, indices), split=split,
                     options=_options_record(opts), overlays=overlays)
    done = reusable(out, SUMMARY, key, overwrite=overwrite)
    if done is not None:
        logger.info("reusing %s (same inputs)", out)
        return {**done, "reused": True}
    encodings = {Encoding.MASK_PNG} | ({Encoding.OVERLAY_PNG} if overlays else set())
    opts = replace(opts, encodings=frozenset(encodings))
    rows: list[dict[str, Any]] = []
    lesions: list[dict[str, Any]] = []
    limit = decode_limit(opts.tiling, max_pixels, max_whole_pixels)
    tracker = Tracker(f"segment {loaded.path.name}", len(indices), on_progress=on_progress, should_stop=should_stop)
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "masks").mkdir()
        if overlays:
            (tmp / "overlays").mkdir()
        for start in range(0, len(indices), opts.chunk):
            chunk = indices[start : start + opts.chunk]
            loaded_pairs = [ds.load(i, max_pixels=limit) for i in chunk]
            result = run(loaded, [p[0] for p in loaded_pairs], opts, truths=[p[1] for p in loaded_pairs])
            for i, item in zip(chunk, result.items, strict=True):
                sample = ds.samples[i]
                assert item.mask_png is not None
                (tmp / "masks" / f"{sample.id}.png").write_bytes(item.mask_png)
                if item.overlay_png is not None:
                    (tmp / "overlays" / f"{sample.id}.png").write_bytes(item.overlay_png)
                rows.append(result_row(ds, i, loaded, item))
                lesions += lesion_rows(sample.id, item.whole)
            tracker.advance(len(chunk))
        _write_results(tmp / "results.csv", rows)
        write_lesions(tmp / LESIONS, lesions)
        summary = {**_summary(rows, opts, loaded, data_dir, split, key, overlays),
                   "whole_images": sum(int(r["whole"]) for r in rows), "lesions": len(lesions)}
        write_json(tmp / SUMMARY, summary)
    logger.info("segmented %d images into %s (mean Dice %.4f)", len(rows), out, summary["mean_dice"])
    return {**summary, "reused": False}


def _options_record(opts: Options) -> dict[str, Any]:
    return {**opts.to_record(tiling=True), "encodings": sorted(e.value for e in opts.encodings)}


def check_classes(ds: FolderDataset, model: LoadedModel) -> None:
    """A data set fits a model that has its classes; an imported model also takes a
    two-class data set (normal, lesion), scored as lesion vs. not."""
    if ds.classes == model.classes:
        return
    if model.source is Source.IMPORTED and len(ds.classes) == 2:
        return
    raise InvalidInputError(f"{ds.root}: classes {ds.classes} differ from the model's {model.classes}"
                            + (" (an imported model also takes a two-class data set: normal, lesion)"
                               if model.source is Source.IMPORTED else ""))


def is_lesion(ds: FolderDataset, label: int, model: LoadedModel) -> bool:
    """Whether a data set label is a lesion for ``model``: one of its lesion classes, or,
    for a two-class data set of other classes, the second (lesion) class."""
    if ds.classes == model.classes:
        return label in model.positives
    return label == len(ds.classes) - 1


def result_row(ds: FolderDataset, i: int, model: LoadedModel, item: ImageResult) -> dict[str, Any]:
    """One image's row of a results table (``camseg segment`` and bulk jobs). ``correct``
    compares lesion vs. not, so it also scores a model with other classes than the data."""
    sample = ds.samples[i]
    return {
        "id": sample.id,
        "label": ds.classes[sample.label],
        "probability": round(float(item.probabilities[list(model.positives)].sum()), 6),
        "predicted_label": model.classes[item.label],
        "correct": int(is_lesion(ds, sample.label, model) == (item.label in model.positives)),
        "mask_area": item.area,
        "threshold": "" if item.threshold_value is None else round(item.threshold_value, 6),
        "gated": int(item.gated),
        "dice": "" if item.dice is None else round(item.dice, 6),
        **whole_values(item.whole),
    }


def _write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _summary(rows: list[dict[str, Any]], opts: Options, model: LoadedModel, data_dir: Path, split: str | None,
             key: str, overlays: bool) -> dict[str, Any]:
    dices = [float(r["dice"]) for r in rows if r["dice"] != ""]
    correct = [bool(r["correct"]) for r in rows]
    return {
        "key": key,
        "model": str(model.path),
        "architecture": model.meta.get("architecture"),
        "data": str(data_dir),
        "split": split,
        "options": {**_options_record(opts), "overlays": overlays},
        "images": len(rows),
        "with_truth": len(dices),
        "mean_dice": float(np.mean(dices)) if dices else math.nan,
        "accuracy": float(np.mean(correct)) if correct else math.nan,
    }
