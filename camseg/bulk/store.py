"""The job store: bulk work in resumable parts whose truth lives on disk.

A bulk job is a folder: ``job.json`` (the :class:`Manifest`: kind, inputs, model,
parts, created) written once, a completion marker per part written last for that part,
and the job's results written when every part is done, ``summary.json`` last of all.
Whoever runs the parts (the Celery workers in ``jobs/``, or
:func:`camseg.bulk.batch.run_local` in one process) keeps no state of its own that
matters: a broker that forgets everything loses nothing, because :func:`pending` reads
what is left from the folder. Every write is a temporary name renamed into place, so
running a part twice (a redelivered task, two workers) gives the same files, and the
results hold every image exactly once.

What a part is, where its marker lies, how it runs and how the parts become results is
the business of its :class:`JobKind` (one module each under :mod:`camseg.bulk.kinds`);
this module knows none of them.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.core.progress import OnProgress, ShouldStop
from camseg.io.guards import ID_PATTERN, path_under
from camseg.models.modeldir import atomic_write_bytes, write_json
from camseg.pipeline.run import LoadedModel

MANIFEST = "job.json"
CANCELLED = "cancelled"
FAILED = "failed.json"
SUMMARY = "summary.json"
RESULTS = "results.csv"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Manifest:
    """What a job is: written once when it is created, never changed. ``chunks`` holds
    one list per part: the image indices of a segmentation chunk, ``[i]`` for a part of
    any other kind."""

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


Marker = Callable[[Path, Manifest, int], Path]
"""``(job_dir, manifest, index)`` -> the file whose presence says part ``index`` is done."""
RunPart = Callable[[Path, Manifest, int, LoadedModel | None, ShouldStop, OnProgress | None], None]
"""``(job_dir, manifest, index, model, should_stop, on_progress)``: run a part that is not
done, its marker written last. ``model`` is the caller's loaded model where it keeps one
(None: the kind loads what it needs); ``should_stop`` already includes the job's cancel."""
Finish = Callable[[Path, Manifest], dict[str, Any]]
"""``(job_dir, manifest)`` -> the summary, with every part done: writes the job's other
results; :func:`finish` writes the summary itself, last."""
PartImages = Callable[[Path, Manifest, int], int]
"""``(job_dir, manifest, index)`` -> images (slices, for series) a done part segmented."""


def no_images(job_dir: Path, m: Manifest, index: int) -> int:
    return 0


@dataclass(frozen=True)
class JobKind:
    """One kind of job, as the store and the workers see it (one module per kind under
    :mod:`camseg.bulk.kinds`, registered in :data:`camseg.bulk.batch.KINDS`)."""

    name: str
    parts: str
    """What a part is called in messages: ``chunks``, ``series``, ``parts``."""
    marker: Marker
    run: RunPart
    finish: Finish
    uses_model: bool
    """Its parts run the served model: a worker passes the one it keeps loaded."""
    images: PartImages = no_images


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def valid_job_id(job_id: str) -> bool:
    """A job id names a folder: the safe id pattern of :mod:`camseg.io.guards`."""
    return ID_PATTERN.fullmatch(job_id) is not None


def check_under(roots: Sequence[Path], path: Path, what: str) -> Path:
    """``path`` when it resolves (symlinks followed) under one of ``roots``; refused
    before anything is read otherwise."""
    for root in roots:
        try:
            return path_under(root, path, what)
        except InvalidInputError:
            continue
    raise InvalidInputError(f"{what}: {path} is outside the allowed roots ({', '.join(map(str, roots))})")


def read_manifest(job_dir: Path) -> Manifest:
    """NotFoundError without a manifest; InvalidInputError for a file that is not one."""
    path = Path(job_dir) / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"{job_dir}: no such job (no {MANIFEST})")
    try:
        return Manifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise InvalidInputError(f"{path}: not a job manifest ({exc})") from None


def create_job(out_root: Path, job_id: str | None, *, kind: str, model_dir: Path, data: Path, options: dict[str, Any],
               chunks: list[list[int]], split: str | None = None, heatmaps: bool = False,
               labels: dict[str, str] | None = None) -> Path:
    """Write the manifest of a new job and return its folder ``out_root/<job_id>``: a fresh
    id, or ``job_id`` when it is valid and no job holds it yet (InvalidInputError
    otherwise). The kind's own checks come first: nothing is written for a refused job."""
    job_id = job_id or new_job_id()
    if not valid_job_id(job_id):
        raise InvalidInputError(f"bad job id {job_id[:64]!r}")
    job_dir = Path(out_root) / job_id
    if (job_dir / MANIFEST).exists():
        raise InvalidInputError(f"job {job_id} exists already")
    m = Manifest(job_id, kind, time.time(), str(Path(model_dir).resolve()), str(Path(data).resolve()), split, options,
                 chunks, heatmaps, dict(labels or {}))
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / MANIFEST, asdict(m))
    return job_dir


def done_parts(job_dir: Path, m: Manifest, kind: JobKind) -> list[int]:
    return [i for i in range(len(m.chunks)) if kind.marker(Path(job_dir), m, i).is_file()]


def pending(job_dir: Path, m: Manifest, kind: JobKind) -> list[int]:
    """Parts without a completion marker: what is left to run, read from disk alone."""
    done = set(done_parts(job_dir, m, kind))
    return [i for i in range(len(m.chunks)) if i not in done]


def cancel(job_dir: Path) -> None:
    """Mark the job cancelled: running parts stop at their next step, nothing more runs."""
    read_manifest(job_dir)
    (Path(job_dir) / CANCELLED).touch()


def is_cancelled(job_dir: Path) -> bool:
    return (Path(job_dir) / CANCELLED).exists()


def stopper(job_dir: Path, should_stop: ShouldStop | None = None) -> ShouldStop:
    """The stop test a part polls: the job cancelled, or the caller's own ``should_stop``."""

    def stop() -> bool:
        return is_cancelled(job_dir) or (should_stop is not None and should_stop())

    return stop


def fail(job_dir: Path, reason: str) -> None:
    """Mark the job failed with ``reason`` (a plain message, shown by ``status``)."""
    write_json(Path(job_dir) / FAILED, {"reason": reason, "at": time.time()})


def run_part(job_dir: Path, m: Manifest, kind: JobKind, index: int, *, model: LoadedModel | None = None,
             should_stop: ShouldStop | None = None, on_progress: OnProgress | None = None) -> bool:
    """Run part ``index``; False when it was already done (nothing is written), NotFoundError
    for an index the job does not have."""
    job_dir = Path(job_dir)
    if not 0 <= index < len(m.chunks):  # before the marker: a kind's marker may index by part
        raise NotFoundError(f"job {m.job_id} has no part {index}")
    if kind.marker(job_dir, m, index).is_file():
        return False
    kind.run(job_dir, m, index, model, stopper(job_dir, should_stop), on_progress)
    return True


@contextlib.contextmanager
def _finishing(job_dir: Path) -> Iterator[None]:
    """One finisher at a time per job, across processes: two workers whose last parts
    end together both see nothing pending; the second waits, then reads the summary."""
    with (job_dir / ".finish.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def finish(job_dir: Path, m: Manifest, kind: JobKind) -> dict[str, Any]:
    """The results of a job whose parts are all done, ``summary.json`` written last;
    idempotent (a finished job returns its summary as written). Raises InvalidInputError
    when parts are missing."""
    job_dir = Path(job_dir)
    with _finishing(job_dir):
        done = job_dir / SUMMARY
        if done.is_file():
            summary: dict[str, Any] = json.loads(done.read_text())
            return summary
        missing = pending(job_dir, m, kind)
        if missing:
            raise InvalidInputError(f"job {m.job_id}: {len(missing)} {kind.parts} are not done")
        summary = kind.finish(job_dir, m)
        write_json(done, summary)
        return summary


def summary_of(m: Manifest, **fields: Any) -> dict[str, Any]:
    """A summary: what every job's says (id, kind, model, labels, data, times) around the
    kind's own ``fields``."""
    now = time.time()
    return {"job_id": m.job_id, "kind": m.kind, "model": m.model, "labels": m.labels, "data": m.data, **fields,
            "created": m.created, "finished": now, "seconds": round(now - m.created, 3)}


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as CSV under ``columns``, atomically."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def link_into(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (the same file system: the job's own folder)
    unless it exists; a finisher that linked it first is no error."""
    if not target.exists():
        with contextlib.suppress(FileExistsError):
            os.link(source, target)


def status(job_dir: Path, m: Manifest, kind: JobKind, *, started: bool = False) -> JobStatus:
    """A job's state from its folder alone: succeeded (a summary), failed, cancelled,
    running (a part done, or ``started``), else queued."""
    job_dir = Path(job_dir)
    done = done_parts(job_dir, m, kind)
    images_done = sum(len(m.chunks[i]) for i in done)
    failed = job_dir / FAILED
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
