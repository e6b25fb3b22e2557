"""Submitting and following jobs: what the ``camseg jobs`` commands (and other
services, and the scheduled tasks) call. Inputs are checked before anything is read:
the model comes from the model repository by name and version, the data must resolve
under a configured data root, and every output goes under the output root. Work is
sent by task name (:mod:`jobs.tasks` imports this module, not the reverse)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from camseg.bulk import batch
from camseg.core.errors import InvalidInputError
from camseg.core.settings import Settings
from camseg.models.repository import ModelStore
from camseg.pipeline.options import Choices, Options
from camseg.pipeline.whole import Tiling


@dataclass(frozen=True)
class Submitted:
    job_id: str
    chunks: int
    images: int


def job_dir(settings: Settings, job_id: str) -> Path:
    """The folder of ``job_id`` under the output root; InvalidInputError for an id that
    is not a safe folder name (a path, ``..``)."""
    if not batch.valid_job_id(job_id):
        raise InvalidInputError(f"bad job id {job_id[:64]!r}")
    return settings.output_root / job_id


def enqueue_pending(app: Celery, settings: Settings, job_id: str) -> int:
    """Send every part of the job that has no completion marker; returns how many. With
    none left, the job's finishing is sent instead (its results may be missing)."""
    pending = batch.pending_chunks(job_dir(settings, job_id))
    for index in pending:
        app.send_task("camseg.run_part", args=[job_id, index])
    if not pending:
        app.send_task("camseg.finish_job", args=[job_id])
    return len(pending)


def submit_segment(app: Celery, settings: Settings, *, model: str, version: str, data: Path | None = None,
                   volumes: Sequence[tuple[Path, Path]] = (), axis: int = 2, split: str | None = None,
                   options: Options | Choices | None = None, tiling: Tiling | None = None, heatmaps: bool = False,
                   chunk_size: int | None = None) -> Submitted:
    """Plan a bulk segmentation job on disk, then enqueue its chunks.

    The input is a folder data set (``data``) or NRRD/NIfTI image + label volume pairs
    (``volumes``), which are sliced along ``axis`` into the job's own ``data/`` folder
    first (a slice is a tumor slice when its label has any voxel). ``options`` run as
    given; a caller's :class:`Choices` (None: none) are resolved against the model's
    recipe when the job is planned, and the manifest records the options, with the
    ``tiling`` of whole images (None: the options' own) and the settings' pixel limits.
    """
    if (data is None) == (not volumes):
        raise InvalidInputError("give either a data set folder or image + label volume pairs")
    job_id = batch.new_job_id()
    if volumes:
        from camseg.data.volumes import convert_volumes

        pairs = [(batch.check_under(settings.data_roots, Path(img), "volume"),
                  batch.check_under(settings.data_roots, Path(lab), "label volume")) for img, lab in volumes]
        ModelStore(settings.model_repo).resolve(model, version)  # refuse an unknown model before slicing
        data = convert_volumes(pairs, settings.output_root / job_id / "data", axis=axis)
        path, labels = _model(settings, model, version)
        data_dir = data
    else:
        assert data is not None
        path, data_dir, labels = _prepare(settings, model, version, data)
    job = batch.create_segment_job(settings.output_root, path, data_dir, split=split, options=options, tiling=tiling,
                                   chunk_size=chunk_size or settings.chunk_size, heatmaps=heatmaps, labels=labels,
                                   job_id=job_id, max_pixels=settings.max_pixels,
                                   max_whole_pixels=settings.max_whole_pixels)
    return _enqueue(app, settings, job)


def submit_series(app: Celery, settings: Settings, *, model: str, version: str, data: Path,
                  output: str = "auto", heatmaps: bool = False, windowing: str | None = None,
                  options: Options | Choices | None = None, tiling: Tiling | None = None,
                  job_id: str | None = None) -> Submitted:
    """Plan the segmentation of every DICOM series and NRRD/NIfTI volume under ``data``
    (one SEG or mask volume each, :func:`camseg.bulk.batch.create_series_job`; slices such
    as mammograms go whole under ``tiling``), then enqueue one task per series."""
    path, data_dir, labels = _prepare(settings, model, version, data)
    job = batch.create_series_job(settings.output_root, path, data_dir, options=options, tiling=tiling,
                                  output=output, heatmaps=heatmaps, windowing=windowing or settings.dicom_window,
                                  job_id=job_id, labels=labels, max_pixels=settings.max_pixels,
                                  max_whole_pixels=settings.max_whole_pixels)
    return _enqueue(app, settings, job)


def _model(settings: Settings, model: str, version: str) -> tuple[Path, dict[str, str]]:
    ref = ModelStore(settings.model_repo).resolve(model, version)
    settings.output_root.mkdir(parents=True, exist_ok=True)
    return ref.path, {"model": ref.name, "version": ref.version}


def _prepare(settings: Settings, model: str, version: str, data: Path) -> tuple[Path, Path, dict[str, str]]:
    data_dir = batch.check_under(settings.data_roots, Path(data), "data")
    path, labels = _model(settings, model, version)
    return path, data_dir, labels


def submit_evaluate(app: Celery, settings: Settings, *, model: str, version: str, data: Path,
                    select: str = "val", report: str = "test", methods: Sequence[str] | None = None,
                    rules: Sequence[str] | None = None) -> Submitted:
    """The Dice evaluation protocol of a model version on a labelled set, as a job."""
    path, data_dir, labels = _prepare(settings, model, version, data)
    job = batch.create_evaluate_job(settings.output_root, path, data_dir, select=select, report=report,
                                    methods=methods, rules=rules, labels=labels)
    return _enqueue(app, settings, job)


def submit_retrain(app: Celery, settings: Settings, *, model: str, version: str, data: Path,
                   thresholds: Sequence[float] = (0.5,), filters: Sequence[str] | None = None,
                   epochs: int | None = None, job_id: str | None = None) -> Submitted:
    """The paper's filtered retraining as a job: one task per (threshold, filter)."""
    path, data_dir, labels = _prepare(settings, model, version, data)
    job = batch.create_retrain_job(settings.output_root, path, data_dir, thresholds=thresholds, filters=filters,
                                   epochs=epochs, labels=labels, job_id=job_id)
    return _enqueue(app, settings, job)


def _enqueue(app: Celery, settings: Settings, job: Path) -> Submitted:
    m = batch.read_manifest(job)
    enqueue_pending(app, settings, m.job_id)
    return Submitted(m.job_id, len(m.chunks), m.images)


def resume(app: Celery, settings: Settings, job_id: str) -> int:
    """Re-enqueue the chunks of ``job_id`` that have no completion marker (after a broker
    lost its queues, or a cancelled job is to go on); returns how many."""
    job = job_dir(settings, job_id)
    (job / batch.CANCELLED).unlink(missing_ok=True)
    return enqueue_pending(app, settings, job_id)


def cancel(settings: Settings, job_id: str) -> batch.JobStatus:
    job = job_dir(settings, job_id)
    batch.cancel(job)
    return batch.status(job)


def status(settings: Settings, job_id: str) -> batch.JobStatus:
    return batch.status(job_dir(settings, job_id))
