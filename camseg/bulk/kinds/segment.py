"""Bulk segmentation of a folder data set (kind ``segment``), in chunks of images.

Chunk ``i`` writes ``chunks/<i>/masks/<id>.png`` (and heatmaps on request),
``chunks/<i>/lesions.json`` (the lesion candidates of its whole images) and, last,
``chunks/<i>/rows.json``, its completion marker; the chunk folder is built aside and
renamed into place. The results are ``results.csv`` (one row per image, in chunk
order, with the whole-image columns of :mod:`camseg.bulk.wholerows`), ``lesions.csv``
and ``masks/``. Images may go whole as in :func:`camseg.pipeline.run.run`, under the
tiling the job records. A bad image fails that image (its row records the reason), not
the chunk nor the job.

>>> job = create_segment_job(out_root, "repo/resnet/2", "data/archive")  # doctest: +SKIP
>>> batch.run_local(job, model)["mean_dice"]                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from camseg.bulk.kinds.common import pipeline_record, read_pipeline, segmentation_options
from camseg.bulk.segment import check_classes, result_row
from camseg.bulk.store import RESULTS, JobKind, Manifest, create_job, link_into, summary_of, write_csv
from camseg.bulk.wholerows import LESIONS, WHOLE_COLUMNS, blank_values, lesion_rows, write_lesions
from camseg.core.errors import CamsegError, InvalidInputError
from camseg.core.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_WHOLE_PIXELS
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.data.folder import FolderDataset, atomic_directory
from camseg.pipeline.options import Choices, Encoding, Options
from camseg.pipeline.run import LoadedModel, run
from camseg.pipeline.whole import Tiling

logger = logging.getLogger(__name__)

NAME = "segment"
COLUMNS = ["id", "label", "predicted_label", "correct", "probability", "mask_area", "threshold", "gated", "dice",
           *WHOLE_COLUMNS, "error"]


def create_segment_job(out_root: Path, model_dir: Path, data_dir: Path, *, split: str | None = None,
                       options: Options | Choices | None = None, tiling: Tiling | None = None,
                       chunk_size: int = 64, heatmaps: bool = False, job_id: str | None = None,
                       labels: dict[str, str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                       max_whole_pixels: int = DEFAULT_MAX_WHOLE_PIXELS) -> Path:
    """Plan a bulk segmentation: check the model and data, split the images of ``split``
    (all without one) into chunks of ``chunk_size`` and write the manifest, whose options
    carry the ``tiling`` (None: the options' own) and the pixel limit
    (:func:`~camseg.bulk.kinds.common.pipeline_record`). Returns the job's folder
    ``out_root/<job_id>``."""
    if chunk_size < 1:
        raise InvalidInputError("chunk size must be at least 1")
    model, opts = segmentation_options(model_dir, options, tiling)
    ds = FolderDataset.open(data_dir)
    check_classes(ds, model)
    indices = ds.subset(split)
    chunks = [indices[i : i + chunk_size] for i in range(0, len(indices), chunk_size)]
    job_dir = create_job(out_root, job_id, kind=NAME, model_dir=model_dir, data=data_dir, split=split,
                         options=pipeline_record(opts, max_pixels=max_pixels, max_whole_pixels=max_whole_pixels),
                         chunks=chunks, heatmaps=heatmaps, labels=labels)
    logger.info("job %s: %d images in %d chunks", job_dir.name, len(indices), len(chunks))
    return job_dir


_datasets: dict[tuple[str, int, int], FolderDataset] = {}
_datasets_lock = threading.Lock()


def open_dataset(data: str | Path) -> FolderDataset:
    """:meth:`FolderDataset.open`, kept per process while ``labels.csv`` is unchanged: a
    worker running chunk after chunk of one large set checks the set once, not per chunk."""
    labels = Path(data) / "labels.csv"
    try:
        st = labels.stat()
    except OSError:
        return FolderDataset.open(data)  # the one-line error of the reader
    key = (str(Path(data).resolve()), st.st_mtime_ns, st.st_size)
    with _datasets_lock:
        ds = _datasets.get(key)
    if ds is None:
        ds = FolderDataset.open(data)
        with _datasets_lock:
            _datasets.clear()  # one set at a time: memory stays flat
            _datasets[key] = ds
    return ds


def _chunk_dir(job_dir: Path, index: int) -> Path:
    return Path(job_dir) / "chunks" / f"{index:06d}"


def _marker(job_dir: Path, m: Manifest, index: int) -> Path:
    return _chunk_dir(job_dir, index) / "rows.json"


def _run(job_dir: Path, m: Manifest, index: int, model: LoadedModel | None, should_stop: ShouldStop,
         on_progress: OnProgress | None) -> None:
    """Segment chunk ``index``: masks (heatmaps) and ``rows.json`` in a folder renamed into
    place. An image that cannot be read gets a row with its error and no mask."""
    model = model or LoadedModel.load(m.model)
    ds = open_dataset(m.data)
    recorded, limit = read_pipeline(m.options)
    opts = replace(recorded, encodings=frozenset({Encoding.MASK_PNG}))
    tracker = Tracker(f"{m.job_id} chunk {index}", len(m.chunks[index]), on_progress=on_progress,
                      should_stop=should_stop)
    rows: list[dict[str, Any]] = []
    lesions: list[dict[str, Any]] = []
    with atomic_directory(_chunk_dir(job_dir, index), overwrite=True) as tmp:
        (tmp / "masks").mkdir()
        if m.heatmaps:
            (tmp / "heatmaps").mkdir()
        good: list[tuple[int, Any, Any]] = []
        for i in m.chunks[index]:
            try:
                image, truth = ds.load(i, max_pixels=limit)
                good.append((i, image, truth))
            except CamsegError as exc:
                rows.append(_error_row(ds, i, exc.message))
        for start in range(0, len(good), opts.chunk):
            part = good[start : start + opts.chunk]
            result = run(model, [p[1] for p in part], opts, truths=[p[2] for p in part], should_stop=should_stop)
            for (i, _, _), item in zip(part, result.items, strict=True):
                sample = ds.samples[i]
                assert item.mask_png is not None
                (tmp / "masks" / f"{sample.id}.png").write_bytes(item.mask_png)
                if m.heatmaps:
                    np.save(tmp / "heatmaps" / f"{sample.id}.npy", item.heatmap.numpy().astype(np.float16))
                rows.append({**result_row(ds, i, model, item), "error": ""})
                lesions += lesion_rows(sample.id, item.whole)
            tracker.advance(len(part))
        order = {ds.samples[i].id: k for k, i in enumerate(m.chunks[index])}
        rows.sort(key=lambda r: order[r["id"]])
        lesions.sort(key=lambda r: order[r["id"]])  # stable: each image's candidates keep their rank order
        (tmp / "lesions.json").write_text(json.dumps(lesions) + "\n")
        (tmp / "rows.json").write_text(json.dumps(rows) + "\n")


def _error_row(ds: FolderDataset, i: int, reason: str) -> dict[str, Any]:
    s = ds.samples[i]
    return {"id": s.id, "label": ds.classes[s.label], "predicted_label": "", "correct": "", "probability": "",
            "mask_area": "", "threshold": "", "gated": "", "dice": "", **blank_values(), "error": reason}


def _finish(job_dir: Path, m: Manifest) -> dict[str, Any]:
    """Every chunk's rows into ``results.csv`` and lesion candidates into ``lesions.csv``,
    its masks linked under ``masks/``; the summary: counts, failures (the first 1000),
    mean Dice over the images with a truth mask and accuracy over the segmented ones (NaN
    where there are none), the images segmented whole and their candidates."""
    rows: list[dict[str, Any]] = []
    lesions: list[dict[str, Any]] = []
    masks = job_dir / "masks"
    masks.mkdir(exist_ok=True)
    for i in range(len(m.chunks)):
        cdir = _chunk_dir(job_dir, i)
        rows += json.loads((cdir / "rows.json").read_text())
        if (cdir / "lesions.json").is_file():  # a chunk done before candidates were recorded has none
            lesions += json.loads((cdir / "lesions.json").read_text())
        for f in (cdir / "masks").iterdir():
            link_into(f, masks / f.name)
    write_csv(job_dir / RESULTS, COLUMNS, rows)
    write_lesions(job_dir / LESIONS, lesions)
    dices = [float(r["dice"]) for r in rows if r["dice"] != ""]
    failures = [{"id": r["id"], "error": r["error"]} for r in rows if r["error"]]
    ok = [r for r in rows if not r["error"]]
    return summary_of(
        m, split=m.split, options=m.options, images=len(rows), segmented=len(ok), failed=len(failures),
        failures=failures[:1000], with_truth=len(dices), mean_dice=float(np.mean(dices)) if dices else math.nan,
        accuracy=float(np.mean([bool(r["correct"]) for r in ok])) if ok else math.nan,
        whole_images=sum(1 for r in ok if str(r.get("whole", "")) == "1"), lesions=len(lesions))


def _images(job_dir: Path, m: Manifest, index: int) -> int:
    return len(m.chunks[index])


KIND = JobKind(NAME, "chunks", _marker, _run, _finish, uses_model=True, images=_images)

