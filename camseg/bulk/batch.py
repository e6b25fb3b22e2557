"""Bulk work in resumable chunks whose truth lives on disk.

A bulk job is a folder: ``job.json`` (the manifest: kind, inputs, model, chunking,
created) written once, a completion marker per chunk written last for that chunk, and
the job's results written when every chunk is done. Whoever runs the chunks (the
Celery workers in ``jobs/``, or :func:`run_local` in one process) keeps no state of its
own that matters: a broker that forgets everything loses nothing, because
:func:`pending_chunks` reads what is left from the folder. Every write is a temporary
name renamed into place, so running a chunk twice (a redelivered task, two workers)
gives the same files, and the results hold every image exactly once.

A bad image fails that image (its row records the reason), not the chunk nor the job.

>>> job = create_segment_job(out_root, "repo/resnet/2", "data/archive")  # doctest: +SKIP
>>> for i in pending_chunks(job): run_segment_chunk(job, i, model)      # doctest: +SKIP
>>> finish_segment_job(job)["mean_dice"]                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from camseg.bulk import series as ser
from camseg.bulk.segment import check_classes, result_row
from camseg.core.errors import CamsegError, CancelledError, InvalidInputError, NotFoundError
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.windowing import Windowing
from camseg.data.folder import FolderDataset, atomic_directory
from camseg.heat.cam import METHODS
from camseg.io.guards import ID_PATTERN, path_under
from camseg.models.modeldir import atomic_write_bytes, read_metadata
from camseg.models.training import TrainConfig
from camseg.pipeline.options import Choices, Encoding, Options
from camseg.pipeline.run import LoadedModel, run
from camseg.study.evaluation import DEFAULT_RULES, REPORT_FILE, evaluate_dice
from camseg.study.retraining import FILTERS, filtered_retrain

logger = logging.getLogger(__name__)

MANIFEST = "job.json"
SERIES = "segment-series"
"""The kind of job that segments whole DICOM series and NRRD/NIfTI volumes, one part each."""
MODEL_KINDS = ("segment", SERIES)
"""Kinds whose parts run the served model (a worker keeps it loaded)."""
CANCELLED = "cancelled"
SUMMARY = "summary.json"
RESULTS = "results.csv"
COLUMNS = ["id", "label", "predicted_label", "correct", "probability", "mask_area", "threshold", "gated", "dice",
           "error"]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Manifest:
    """What a job is: written once when it is created, never changed."""

    job_id: str
    kind: str
    created: float
    model: str
    data: str
    split: str | None
    options: dict[str, Any]
    chunks: list[list[int]]
    heatmaps: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return sum(len(c) for c in self.chunks)


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def valid_job_id(job_id: str) -> bool:
    """A job id names a folder: the safe id pattern of :mod:`camseg.io.inputs`."""
    return ID_PATTERN.fullmatch(job_id) is not None


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def read_manifest(job_dir: Path) -> Manifest:
    path = Path(job_dir) / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"{job_dir}: no such job (no {MANIFEST})")
    try:
        return Manifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise InvalidInputError(f"{path}: not a job manifest ({exc})") from None


def check_under(roots: Sequence[Path], path: Path, what: str) -> Path:
    """``path`` when it resolves (symlinks followed) under one of ``roots``; refused
    before anything is read otherwise."""
    for root in roots:
        try:
            return path_under(root, path, what)
        except InvalidInputError:
            continue
    raise InvalidInputError(f"{what}: {path} is outside the allowed roots ({', '.join(map(str, roots))})")


def _claim(out_root: Path, job_id: str | None) -> Path:
    """The folder of a new job: a fresh id, or the given one when it is valid and unused."""
    job_id = job_id or new_job_id()
    if not valid_job_id(job_id):
        raise InvalidInputError(f"bad job id {job_id[:64]!r}")
    job_dir = Path(out_root) / job_id
    if (job_dir / MANIFEST).exists():
        raise InvalidInputError(f"job {job_id} exists already")
    return job_dir


def create_segment_job(out_root: Path, model_dir: Path, data_dir: Path, *, split: str | None = None,
                       options: Options | Choices | None = None, chunk_size: int = 64, heatmaps: bool = False,
                       job_id: str | None = None, labels: dict[str, str] | None = None) -> Path:
    """Plan a bulk segmentation: check the model and data, split the images into chunks
    and write the manifest. Returns the job's folder ``out_root/<job_id>``. ``options``
    are run as given, or a caller's :class:`Choices` (None: none) are resolved against
    the model's recipe (:meth:`LoadedModel.options_for`); the manifest records the result."""
    if chunk_size < 1:
        raise InvalidInputError("chunk size must be at least 1")
    model = LoadedModel.load(model_dir, onnx=False)
    opts, _ = model.options_for(options)
    if opts.threshold is None:
        raise InvalidInputError("bulk segmentation needs a threshold rule")
    model.engine_for(opts)
    ds = FolderDataset.open(data_dir)
    check_classes(ds, model)
    indices = ds.subset(split)
    job_dir = _claim(out_root, job_id)
    manifest = Manifest(job_dir.name, "segment", time.time(), str(Path(model_dir).resolve()),
                        str(Path(data_dir).resolve()),
                        split, opts.to_record(), [indices[i : i + chunk_size]
                                                      for i in range(0, len(indices), chunk_size)],
                        heatmaps, dict(labels or {}))
    (job_dir / "chunks").mkdir(parents=True, exist_ok=True)
    _write_json(job_dir / MANIFEST, asdict(manifest))
    logger.info("job %s: %d images in %d chunks", job_dir.name, manifest.images, len(manifest.chunks))
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


def _series_dir(job_dir: Path, index: int) -> Path:
    return Path(job_dir) / "series" / f"{index:06d}"


def _marker(job_dir: Path, m: Manifest, index: int) -> Path:
    """The file whose presence says part ``index`` of the job is done."""
    if m.kind == "retrain":
        t, kind = m.options["runs"][index]
        return Path(job_dir) / "retrain" / "runs" / f"{kind}-t{float(t):g}.json"
    if m.kind == "evaluate":
        return Path(job_dir) / "report" / REPORT_FILE
    if m.kind == SERIES:
        return _series_dir(job_dir, index) / "row.json"
    return _chunk_dir(job_dir, index) / "rows.json"


def chunk_done(job_dir: Path, index: int, manifest: Manifest | None = None) -> bool:
    return _marker(job_dir, manifest or read_manifest(job_dir), index).is_file()


def pending_chunks(job_dir: Path) -> list[int]:
    """Parts (chunks, retraining runs) without a completion marker: what is left to run,
    read from disk alone."""
    m = read_manifest(job_dir)
    return [i for i in range(len(m.chunks)) if not chunk_done(job_dir, i, m)]


def cancel(job_dir: Path) -> None:
    """Mark the job cancelled: running chunks stop at their next step, nothing more runs."""
    read_manifest(job_dir)
    (Path(job_dir) / CANCELLED).touch()


def is_cancelled(job_dir: Path) -> bool:
    return (Path(job_dir) / CANCELLED).exists()


def run_segment_chunk(job_dir: Path, index: int, model: LoadedModel, *, should_stop: ShouldStop | None = None,
                      on_progress: OnProgress | None = None) -> bool:
    """Segment chunk ``index`` of the job; True when it ran, False when it was already done.

    Writes ``chunks/<index>/masks/<id>.png`` (and heatmaps on request) and, last,
    ``chunks/<index>/rows.json``, the chunk's completion marker; the chunk folder is
    built aside and renamed into place. An image that cannot be read gets a row with
    its error and no mask.
    """
    job_dir = Path(job_dir)
    m = read_manifest(job_dir)
    if chunk_done(job_dir, index, m):
        return False
    if not 0 <= index < len(m.chunks):
        raise NotFoundError(f"job {m.job_id} has no chunk {index}")
    ds = open_dataset(m.data)
    opts = options_record_with_encodings(m)

    def stop() -> bool:
        return is_cancelled(job_dir) or (should_stop is not None and should_stop())

    tracker = Tracker(f"{m.job_id} chunk {index}", len(m.chunks[index]), on_progress=on_progress, should_stop=stop)
    rows: list[dict[str, Any]] = []
    with atomic_directory(_chunk_dir(job_dir, index), overwrite=True) as tmp:
        (tmp / "masks").mkdir()
        if m.heatmaps:
            (tmp / "heatmaps").mkdir()
        good: list[tuple[int, Any, Any]] = []
        for i in m.chunks[index]:
            try:
                image, truth = ds.load(i)
                good.append((i, image, truth))
            except CamsegError as exc:
                rows.append(_error_row(ds, i, exc.message))
        for start in range(0, len(good), opts.chunk):
            part = good[start : start + opts.chunk]
            result = run(model, [p[1] for p in part], opts, truths=[p[2] for p in part], should_stop=stop)
            for (i, _, _), item in zip(part, result.items, strict=True):
                sample = ds.samples[i]
                assert item.mask_png is not None
                (tmp / "masks" / f"{sample.id}.png").write_bytes(item.mask_png)
                if m.heatmaps:
                    np.save(tmp / "heatmaps" / f"{sample.id}.npy", item.heatmap.numpy().astype(np.float16))
                rows.append({**result_row(ds, i, model, item), "error": ""})
            tracker.advance(len(part))
        order = {ds.samples[i].id: k for k, i in enumerate(m.chunks[index])}
        rows.sort(key=lambda r: order[r["id"]])
        (tmp / "rows.json").write_text(json.dumps(rows) + "\n")
    return True


def _error_row(ds: FolderDataset, i: int, reason: str) -> dict[str, Any]:
    s = ds.samples[i]
    return {"id": s.id, "label": ds.classes[s.label], "predicted_label": "", "correct": "", "probability": "",
            "mask_area": "", "threshold": "", "gated": "", "dice": "", "error": reason}


def options_record_with_encodings(m: Manifest) -> Options:
    return replace(Options.from_record(m.options), encodings=frozenset({Encoding.MASK_PNG}))


@contextlib.contextmanager
def _finishing(job_dir: Path) -> Any:
    """One finisher at a time per job, across processes: two workers whose last chunks
    end together both see nothing pending; the second waits, then reads the summary."""
    with (job_dir / ".finish.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _finished_or_ready(job_dir: Path, m: Manifest, parts: str) -> dict[str, Any] | None:
    """The summary of a job already finished; None when every part is done and the results
    are still to write; raises when ``parts`` (chunks, series, ...) are missing."""
    done = job_dir / SUMMARY
    if done.is_file():
        summary: dict[str, Any] = json.loads(done.read_text())
        return summary
    missing = pending_chunks(job_dir)
    if missing:
        raise InvalidInputError(f"job {m.job_id}: {len(missing)} {parts} are not done")
    return None


def finish_segment_job(job_dir: Path) -> dict[str, Any]:
    """Merge every chunk into ``results.csv`` and ``summary.json`` (written last) and
    gather the masks under ``masks/``; idempotent. Raises when chunks are missing."""
    job_dir = Path(job_dir)
    with _finishing(job_dir):
        return _finish_segment_job(job_dir)


def _finish_segment_job(job_dir: Path) -> dict[str, Any]:
    m = read_manifest(job_dir)
    if (finished := _finished_or_ready(job_dir, m, "chunks")) is not None:
        return finished
    rows: list[dict[str, Any]] = []
    masks = job_dir / "masks"
    masks.mkdir(exist_ok=True)
    for i in range(len(m.chunks)):
        cdir = _chunk_dir(job_dir, i)
        rows += json.loads((cdir / "rows.json").read_text())
        for f in (cdir / "masks").iterdir():
            target = masks / f.name
            if not target.exists():
                with contextlib.suppress(FileExistsError):  # another finisher linked it first
                    os.link(f, target)  # the same file system: the job's own folder
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(job_dir / RESULTS, buf.getvalue().encode())
    dices = [float(r["dice"]) for r in rows if r["dice"] != ""]
    failures = [{"id": r["id"], "error": r["error"]} for r in rows if r["error"]]
    ok = [r for r in rows if not r["error"]]
    summary = {
        "job_id": m.job_id, "kind": m.kind, "model": m.model, "labels": m.labels, "data": m.data, "split": m.split,
        "options": m.options, "images": len(rows), "segmented": len(ok), "failed": len(failures),
        "failures": failures[:1000], "with_truth": len(dices),
        "mean_dice": float(np.mean(dices)) if dices else math.nan,
        "accuracy": float(np.mean([bool(r["correct"]) for r in ok])) if ok else math.nan,
        "created": m.created, "finished": time.time(), "seconds": round(time.time() - m.created, 3),
    }
    _write_json(job_dir / SUMMARY, summary)
    return summary


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    kind: str
    state: JobState
    chunks_done: int
    chunks: int
    images_done: int
    images: int
    reason: str = ""


def status(job_dir: Path, *, started: bool = False) -> JobStatus:
    """A job's state from its folder alone."""
    job_dir = Path(job_dir)
    m = read_manifest(job_dir)
    done = [i for i in range(len(m.chunks)) if chunk_done(job_dir, i, m)]
    images_done = sum(len(m.chunks[i]) for i in done)
    failed = job_dir / "failed.json"
    if (job_dir / SUMMARY).is_file():
        state = JobState.SUCCEEDED
    elif failed.is_file():
        state = JobState.FAILED
    elif is_cancelled(job_dir):
        state = JobState.CANCELLED
    elif done or started:
        state = JobState.RUNNING
    else:
        state = JobState.QUEUED
    reason = json.loads(failed.read_text()).get("reason", "") if state is JobState.FAILED else ""
    return JobStatus(m.job_id, m.kind, state, len(done), len(m.chunks), images_done, m.images, reason)


def fail(job_dir: Path, reason: str) -> None:
    _write_json(Path(job_dir) / "failed.json", {"reason": reason, "at": time.time()})


def list_jobs(out_root: Path) -> list[JobStatus]:
    out = []
    root = Path(out_root)
    if not root.is_dir():
        return []
    for d in sorted(root.iterdir()):
        if (d / MANIFEST).is_file():
            try:
                out.append(status(d))
            except CamsegError:
                continue
    return out


def run_local(job_dir: Path, model: LoadedModel, *, should_stop: ShouldStop | None = None,
              on_progress: OnProgress | None = None) -> dict[str, Any]:
    """Every pending part of a segmentation job in this process, then the results: the
    in-process reference (and what ``camseg segment`` runs for series)."""
    for i in pending_chunks(job_dir):
        run_part(job_dir, i, model=model, should_stop=should_stop, on_progress=on_progress)
    return finish(job_dir)


# ---------------------------------------------------------------------- other kinds
def _new_job(out_root: Path, kind: str, model_dir: Path, data_dir: Path, options: dict[str, Any], parts: int,
             job_id: str | None, labels: dict[str, str] | None) -> Path:
    LoadedModel.load(model_dir, onnx=False)  # a model that cannot load fails the submission, not a worker
    FolderDataset.open(data_dir)
    job_dir = _claim(out_root, job_id)
    m = Manifest(job_dir.name, kind, time.time(), str(Path(model_dir).resolve()), str(Path(data_dir).resolve()), None,
                 options, [[i] for i in range(parts)], False, dict(labels or {}))
    job_dir.mkdir(parents=True, exist_ok=True)
    _write_json(job_dir / MANIFEST, asdict(m))
    return job_dir


def create_evaluate_job(out_root: Path, model_dir: Path, data_dir: Path, *, select: str = "val",
                        report: str = "test", methods: Sequence[str] | None = None,
                        rules: Sequence[str] | None = None, job_id: str | None = None,
                        labels: dict[str, str] | None = None) -> Path:
    """Plan the Dice evaluation protocol of a model on a data set (one part)."""

    opts = {"select": select, "report": report, "methods": list(methods or METHODS),
            "rules": list(rules or DEFAULT_RULES)}
    return _new_job(out_root, "evaluate", model_dir, data_dir, opts, 1, job_id, labels)


def create_retrain_job(out_root: Path, model_dir: Path, data_dir: Path, *, thresholds: Sequence[float] = (0.5,),
                       filters: Sequence[str] | None = None, method: str = "gradcam", epochs: int | None = None,
                       seed: int = 0, job_id: str | None = None, labels: dict[str, str] | None = None) -> Path:
    """Plan the paper's filtered retraining: one part per (threshold, filter)."""

    kinds = list(filters or FILTERS)
    bad = [k for k in kinds if k not in FILTERS]
    if bad or not kinds:
        raise InvalidInputError(f"unknown filters {bad}; choose from {', '.join(FILTERS)}")
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise InvalidInputError("filter thresholds must be in [0, 1]")
    runs = [[float(t), k] for t in thresholds for k in kinds]
    opts = {"runs": runs, "method": method, "epochs": epochs, "seed": seed}
    return _new_job(out_root, "retrain", model_dir, data_dir, opts, len(runs), job_id, labels)


def _retrain_args(m: Manifest) -> dict[str, Any]:

    cfg = TrainConfig(**read_metadata(Path(m.model)).get("training", {}))
    if m.options.get("epochs"):
        cfg = replace(cfg, epochs=int(m.options["epochs"]))
    return {"method": m.options["method"], "cfg": cfg, "seed": int(m.options.get("seed", 0))}


def run_part(job_dir: Path, index: int, *, model: LoadedModel | None = None, should_stop: ShouldStop | None = None,
             on_progress: OnProgress | None = None) -> bool:
    """Run part ``index`` of any kind of job; False when it was already done."""
    job_dir = Path(job_dir)
    m = read_manifest(job_dir)
    if chunk_done(job_dir, index, m):
        return False

    def stop() -> bool:
        return is_cancelled(job_dir) or (should_stop is not None and should_stop())

    if m.kind == "segment":
        return run_segment_chunk(job_dir, index, model or LoadedModel.load(m.model), should_stop=should_stop,
                                 on_progress=on_progress)
    if m.kind == SERIES:
        return run_series_part(job_dir, index, model or LoadedModel.load(m.model), should_stop=should_stop,
                               on_progress=on_progress)
    if m.kind == "evaluate":

        o = m.options
        evaluate_dice(model or LoadedModel.load(m.model, onnx=False), Path(m.data), select=o["select"],
                      report=o["report"], methods=o["methods"], rules=o["rules"], out=job_dir / "report",
                      overwrite=True, on_progress=on_progress, should_stop=stop)
        return True
    if m.kind == "retrain":

        t, kind = m.options["runs"][index]
        filtered_retrain(Path(m.model), Path(m.data), None, thresholds=[float(t)], filters=[kind],
                         on_progress=on_progress, should_stop=stop, **_retrain_args(m),
                         runs_dir=job_dir / "retrain" / "runs")
        return True
    raise InvalidInputError(f"job {m.job_id}: unknown kind {m.kind!r}")


def finish(job_dir: Path) -> dict[str, Any]:
    """The results of a job whose parts are all done (idempotent): ``summary.json`` last."""
    job_dir = Path(job_dir)
    m = read_manifest(job_dir)
    if m.kind == "segment":
        return finish_segment_job(job_dir)
    with _finishing(job_dir):
        if m.kind == SERIES:
            return _finish_series_job(job_dir, m)
        return _finish_other(job_dir, m)


def _finish_other(job_dir: Path, m: Manifest) -> dict[str, Any]:
    if (finished := _finished_or_ready(job_dir, m, "parts")) is not None:
        return finished
    base = {"job_id": m.job_id, "kind": m.kind, "model": m.model, "labels": m.labels, "data": m.data,
            "options": m.options, "created": m.created, "finished": time.time(),
            "seconds": round(time.time() - m.created, 3)}
    if m.kind == "evaluate":
        report = json.loads((job_dir / "report" / REPORT_FILE).read_text())
        summary = {**base, "best": report["best"], "paper": report["paper"], "n_report": report["n_report"],
                   "mean_dice": report["best"]["mean_dice"]}
    else:

        runs = m.options["runs"]
        thresholds = sorted({float(t) for t, _ in runs})
        filters = list(dict.fromkeys(k for _, k in runs))
        results = filtered_retrain(Path(m.model), Path(m.data), job_dir / "retrain", thresholds=thresholds,
                                   filters=filters, **_retrain_args(m))
        summary = {**base, "results": [asdict(r) for r in results]}
    _write_json(job_dir / SUMMARY, summary)
    return summary


# ---------------------------------------------------------------------- series and volumes
def create_series_job(out_root: Path, model_dir: Path, data: Path, *, options: Options | Choices | None = None,
                      output: str = "auto", heatmaps: bool = False, windowing: str = "auto",
                      job_id: str | None = None, labels: dict[str, str] | None = None) -> Path:
    """Plan the segmentation of every DICOM series and NRRD/NIfTI image volume under
    ``data`` (a folder or one file): one part per series, each writing one SEG or mask
    volume (:mod:`camseg.bulk.series`). Files that are DICOM but unreadable are recorded in the
    plan and reported in the summary; the series go on."""

    ser.check_output(output)
    window = str(Windowing.parse(windowing))
    model = LoadedModel.load(model_dir, onnx=False)
    opts, _ = model.options_for(options)  # as create_segment_job
    if opts.threshold is None:
        raise InvalidInputError("bulk segmentation needs a threshold rule")
    model.engine_for(opts)
    data = Path(data)
    if not data.exists():
        raise NotFoundError(f"{data}: no such file or folder")
    entries, unreadable = ser.plan(data)
    if not entries:
        raise InvalidInputError(f"{data}: no DICOM series and no NRRD/NIfTI volumes"
                                + (f" ({len(unreadable)} unreadable DICOM files)" if unreadable else ""))
    job_dir = _claim(out_root, job_id)
    base = data if data.is_dir() else data.parent
    manifest = Manifest(job_dir.name, SERIES, time.time(), str(Path(model_dir).resolve()), str(base.resolve()),
                        None, {"pipeline": opts.to_record(), "output": output, "windowing": window,
                               "series": entries, "unreadable": unreadable},
                        [[i] for i in range(len(entries))], heatmaps, dict(labels or {}))
    (job_dir / "series").mkdir(parents=True, exist_ok=True)
    _write_json(job_dir / MANIFEST, asdict(manifest))
    logger.info("job %s: %d series (%d unreadable files)", job_dir.name, len(entries), len(unreadable))
    return job_dir


def run_series_part(job_dir: Path, index: int, model: LoadedModel, *, should_stop: ShouldStop | None = None,
                    on_progress: OnProgress | None = None) -> bool:
    """Segment series ``index`` of the job into ``series/<index>/`` (built aside, renamed
    into place) with ``row.json``, its completion marker. A series that cannot be read
    (no pixel data, inconsistent spacing, mixed series, an unsupported transfer syntax)
    gets a row with the reason and no mask; the job goes on."""

    job_dir = Path(job_dir)
    m = read_manifest(job_dir)
    if chunk_done(job_dir, index, m):
        return False
    if not 0 <= index < len(m.chunks):
        raise NotFoundError(f"job {m.job_id} has no part {index}")
    entry = m.options["series"][index]

    def stop() -> bool:
        return is_cancelled(job_dir) or (should_stop is not None and should_stop())

    opts = Options.from_record(m.options["pipeline"])
    with atomic_directory(_series_dir(job_dir, index), overwrite=True) as tmp:
        try:
            s = ser.load(entry, Path(m.data))
            result = ser.segment_series(model, s, opts, windowing=Windowing.parse(m.options["windowing"]),
                                        on_progress=on_progress, should_stop=stop)
            row = ser.write_outputs(result, tmp, m.options["output"], ser.algorithm(model, opts, m.labels),
                                    heatmaps=m.heatmaps)
        except CamsegError as exc:
            if isinstance(exc, CancelledError):
                raise
            logger.warning("job %s: series %s failed: %s", m.job_id, entry["name"], exc.message)
            row = ser.row(None, error=exc.message, name=entry["name"], uid=entry["uid"])
        row["index"] = index
        (tmp / "row.json").write_text(json.dumps(row) + "\n")
    return True


def _finish_series_job(job_dir: Path, m: Manifest) -> dict[str, Any]:

    if (finished := _finished_or_ready(job_dir, m, "series")) is not None:
        return finished
    rows = []
    out = job_dir / "outputs"
    out.mkdir(exist_ok=True)
    for i in range(len(m.chunks)):
        sdir = _series_dir(job_dir, i)
        row = json.loads((sdir / "row.json").read_text())
        for key in ("output", "heatmap"):
            if row[key]:
                name = f"{row['name']}.{'heatmap' if key == 'heatmap' else 'mask'}{_suffixes(row[key])}"
                target = out / name
                if not target.exists():
                    with contextlib.suppress(FileExistsError):  # another finisher linked it first
                        os.link(sdir / row[key], target)
                row[key] = f"outputs/{name}"
        rows.append(row)
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=ser.COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(job_dir / RESULTS, buf.getvalue().encode())
    failures = [{"id": r["name"], "error": r["error"]} for r in rows if r["error"]]
    failures += [{"id": path, "error": reason} for path, reason in m.options.get("unreadable", [])]
    ok = [r for r in rows if not r["error"]]
    summary = {
        "job_id": m.job_id, "kind": m.kind, "model": m.model, "labels": m.labels, "data": m.data,
        "options": m.options["pipeline"], "output": m.options["output"], "windowing": m.options["windowing"],
        "series": len(rows), "segmented": len(ok), "failed": len(failures), "failures": failures[:1000],
        "images": sum(int(r["slices"]) for r in ok), "tumor_series": sum(1 for r in ok if int(r["tumor_slices"])),
        "mean_dice": math.nan, "outputs": {r["name"]: r["output"] for r in ok},
        "created": m.created, "finished": time.time(), "seconds": round(time.time() - m.created, 3),
    }
    _write_json(job_dir / SUMMARY, summary)
    return summary


def part_images(job_dir: Path, index: int, m: Manifest) -> int:
    """Images (slices, for series) a done part segmented: what the image counters add."""
    if m.kind == "segment":
        return len(m.chunks[index])
    if m.kind == SERIES:
        row = json.loads((_series_dir(job_dir, index) / "row.json").read_text())
        return int(row["slices"] or 0) if not row["error"] else 0
    return 0


def _suffixes(name: str) -> str:
    return name[name.index("."):] if "." in name else ""
