"""Bulk jobs: the registry of job kinds over the job store, and what adapters call.

The job store (:mod:`camseg.bulk.store`) keeps a job as a folder whose truth is on disk;
each kind (:mod:`camseg.bulk.kinds`) says what its parts are, how one runs and how the
done parts become results. :data:`KINDS` maps a manifest's ``kind`` to its
:class:`~camseg.bulk.store.JobKind`; the functions here read a job's manifest, look its
kind up, and hand both to the store. A manifest of a kind not registered is refused
with InvalidInputError.

>>> job = create_segment_job(out_root, "repo/resnet/2", "data/archive")  # doctest: +SKIP
>>> for i in pending_chunks(job): run_part(job, i, model=model)          # doctest: +SKIP
>>> finish(job)["mean_dice"]                                             # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from camseg.bulk import store
from camseg.bulk.kinds import evaluate, retrain, segment, series
from camseg.bulk.kinds.evaluate import create_evaluate_job
from camseg.bulk.kinds.retrain import create_retrain_job
from camseg.bulk.kinds.segment import create_segment_job
from camseg.bulk.kinds.series import create_series_job
from camseg.bulk.store import (
    CANCELLED,
    MANIFEST,
    RESULTS,
    SUMMARY,
    JobKind,
    JobState,
    JobStatus,
    Manifest,
    cancel,
    check_under,
    fail,
    is_cancelled,
    new_job_id,
    read_manifest,
    valid_job_id,
)
from camseg.core.errors import CamsegError, InvalidInputError
from camseg.core.progress import OnProgress, ShouldStop
from camseg.pipeline.run import LoadedModel

__all__ = [
    "CANCELLED", "KINDS", "MANIFEST", "RESULTS", "SERIES", "SUMMARY", "JobKind", "JobState", "JobStatus", "Manifest",
    "cancel", "check_under", "create_evaluate_job", "create_retrain_job", "create_segment_job", "create_series_job",
    "fail", "finish", "is_cancelled", "kind_of", "list_jobs", "new_job_id", "part_images", "pending_chunks",
    "read_manifest", "run_local", "run_part", "status", "valid_job_id",
]

KINDS: dict[str, JobKind] = {k.name: k for k in (segment.KIND, series.KIND, evaluate.KIND, retrain.KIND)}
"""Every kind of job, by the name its manifests record."""
SERIES = series.NAME
"""The kind of job that segments whole DICOM series and NRRD/NIfTI volumes, one part each."""


def kind_of(m: Manifest) -> JobKind:
    """The registered kind of a job; InvalidInputError for a kind no module registers."""
    kind = KINDS.get(m.kind)
    if kind is None:
        raise InvalidInputError(f"job {m.job_id}: unknown kind {m.kind!r}")
    return kind


def _open(job_dir: Path) -> tuple[Path, Manifest, JobKind]:
    m = read_manifest(job_dir)
    return Path(job_dir), m, kind_of(m)


def pending_chunks(job_dir: Path) -> list[int]:
    """Parts (chunks, series, retraining runs) without a completion marker: what is left
    to run, read from disk alone."""
    return store.pending(*_open(job_dir))


def run_part(job_dir: Path, index: int, *, model: LoadedModel | None = None, should_stop: ShouldStop | None = None,
             on_progress: OnProgress | None = None) -> bool:
    """Run part ``index`` of any kind of job; False when it was already done. A segmenting
    kind uses ``model`` where given (a worker keeps one loaded) and loads the job's own
    otherwise. Stops with CancelledError when the job is cancelled or ``should_stop`` says
    so; NotFoundError for a part the job does not have."""
    job_dir, m, kind = _open(job_dir)
    return store.run_part(job_dir, m, kind, index, model=model, should_stop=should_stop, on_progress=on_progress)


def finish(job_dir: Path) -> dict[str, Any]:
    """The results of a job whose parts are all done (idempotent): ``summary.json`` last.
    InvalidInputError while parts are missing."""
    return store.finish(*_open(job_dir))


def part_images(job_dir: Path, index: int) -> int:
    """Images (slices, for series) done part ``index`` segmented: what the image counters
    add; 0 for kinds that segment nothing."""
    job_dir, m, kind = _open(job_dir)
    return kind.images(job_dir, m, index)


def status(job_dir: Path, *, started: bool = False) -> JobStatus:
    """A job's state from its folder alone."""
    job_dir, m, kind = _open(job_dir)
    return store.status(job_dir, m, kind, started=started)


def list_jobs(out_root: Path) -> list[JobStatus]:
    """The status of every job under ``out_root`` (none when it does not exist), by id;
    a folder whose manifest cannot be read is left out."""
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
    """Every pending part of a job in this process, then the results: the in-process
    reference (and what ``camseg segment`` runs for series)."""
    for i in pending_chunks(job_dir):
        run_part(job_dir, i, model=model, should_stop=should_stop, on_progress=on_progress)
    return finish(job_dir)
