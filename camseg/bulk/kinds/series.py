"""Segmentation of whole DICOM series and NRRD/NIfTI volumes (kind ``segment-series``),
one part per series, each writing one SEG or mask volume (:mod:`camseg.bulk.series`).

Part ``i`` writes ``series/<i>/`` (built aside, renamed into place) with ``row.json``,
its completion marker. A series that cannot be read (no pixel data, inconsistent
spacing, mixed series, an unsupported transfer syntax) gets a row with the reason and
no mask; the job goes on. A slice larger than the model's field of view (a mammogram)
goes whole under the tiling the job records, its candidates in the series'
``lesions.csv``. The results are ``results.csv`` and ``outputs/``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from camseg.bulk import series as ser
from camseg.bulk.kinds.common import pipeline_record, read_pipeline, segmentation_options
from camseg.bulk.store import RESULTS, JobKind, Manifest, create_job, link_into, summary_of, write_csv
from camseg.core.errors import CamsegError, CancelledError, InvalidInputError, NotFoundError
from camseg.core.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_WHOLE_PIXELS
from camseg.core.progress import OnProgress, ShouldStop
from camseg.core.windowing import Windowing
from camseg.data.folder import atomic_directory
from camseg.pipeline.options import Choices, Options
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.whole import Tiling

logger = logging.getLogger(__name__)

NAME = "segment-series"


def create_series_job(out_root: Path, model_dir: Path, data: Path, *, options: Options | Choices | None = None,
                      tiling: Tiling | None = None, output: str = "auto", heatmaps: bool = False,
                      windowing: str = "auto", job_id: str | None = None, labels: dict[str, str] | None = None,
                      max_pixels: int = DEFAULT_MAX_PIXELS, max_whole_pixels: int = DEFAULT_MAX_WHOLE_PIXELS) -> Path:
    """Plan the segmentation of every DICOM series and NRRD/NIfTI image volume under
    ``data`` (a folder or one file): one part per series, under ``tiling`` (None: the
    options' own) and a slice limit of ``max_pixels`` (``max_whole_pixels`` unless
    whole-image inference is off). Files that are DICOM but unreadable are recorded in
    the plan and reported in the summary; the series go on. InvalidInputError when
    ``data`` holds no series at all."""
    ser.check_output(output)
    window = str(Windowing.parse(windowing))
    _, opts = segmentation_options(model_dir, options, tiling)
    data = Path(data)
    if not data.exists():
        raise NotFoundError(f"{data}: no such file or folder")
    entries, unreadable = ser.plan(data)
    if not entries:
        raise InvalidInputError(f"{data}: no DICOM series and no NRRD/NIfTI volumes"
                                + (f" ({len(unreadable)} unreadable DICOM files)" if unreadable else ""))
    pipeline = pipeline_record(opts, max_pixels=max_pixels, max_whole_pixels=max_whole_pixels)
    job_dir = create_job(out_root, job_id, kind=NAME, model_dir=model_dir, data=data if data.is_dir() else data.parent,
                         options={"pipeline": pipeline, "output": output, "windowing": window,
                                  "series": entries, "unreadable": unreadable},
                         chunks=[[i] for i in range(len(entries))], heatmaps=heatmaps, labels=labels)
    logger.info("job %s: %d series (%d unreadable files)", job_dir.name, len(entries), len(unreadable))
    return job_dir


def _series_dir(job_dir: Path, index: int) -> Path:
    return Path(job_dir) / "series" / f"{index:06d}"


def _marker(job_dir: Path, m: Manifest, index: int) -> Path:
    return _series_dir(job_dir, index) / "row.json"


def _run(job_dir: Path, m: Manifest, index: int, model: LoadedModel | None, should_stop: ShouldStop,
         on_progress: OnProgress | None) -> None:
    model = model or LoadedModel.load(m.model)
    entry = m.options["series"][index]
    opts, limit = read_pipeline(m.options["pipeline"])
    with atomic_directory(_series_dir(job_dir, index), overwrite=True) as tmp:
        try:
            s = ser.load(entry, Path(m.data), max_pixels=limit)
            result = ser.segment_series(model, s, opts, windowing=Windowing.parse(m.options["windowing"]),
                                        on_progress=on_progress, should_stop=should_stop)
            row = ser.write_outputs(result, tmp, m.options["output"], ser.algorithm(model, opts, m.labels),
                                    heatmaps=m.heatmaps)
        except CamsegError as exc:
            if isinstance(exc, CancelledError):
                raise
            logger.warning("job %s: series %s failed: %s", m.job_id, entry["name"], exc.message)
            row = ser.row(None, error=exc.message, name=entry["name"], uid=entry["uid"])
        row["index"] = index
        (tmp / "row.json").write_text(json.dumps(row) + "\n")


def _finish(job_dir: Path, m: Manifest) -> dict[str, Any]:
    """Every series' row into ``results.csv``, its outputs linked under ``outputs/`` as
    ``<name>.mask<suffix>`` (``.heatmap<suffix>``, ``.lesions.csv``); failures are the failed series and the
    unreadable files of the plan."""
    rows = []
    out = job_dir / "outputs"
    out.mkdir(exist_ok=True)
    for i in range(len(m.chunks)):
        sdir = _series_dir(job_dir, i)
        row = json.loads((sdir / "row.json").read_text())
        for key, what in (("output", "mask"), ("heatmap", "heatmap"), ("lesion_file", "lesions")):
            if row.get(key):
                name = f"{row['name']}.{what}{_suffixes(row[key])}"
                link_into(sdir / row[key], out / name)
                row[key] = f"outputs/{name}"
        rows.append(row)
    write_csv(job_dir / RESULTS, ser.COLUMNS, rows)
    failures = [{"id": r["name"], "error": r["error"]} for r in rows if r["error"]]
    failures += [{"id": path, "error": reason} for path, reason in m.options.get("unreadable", [])]
    ok = [r for r in rows if not r["error"]]
    return summary_of(
        m, options=m.options["pipeline"], output=m.options["output"], windowing=m.options["windowing"],
        series=len(rows), segmented=len(ok), failed=len(failures), failures=failures[:1000],
        images=sum(int(r["slices"]) for r in ok), tumor_series=sum(1 for r in ok if int(r["tumor_slices"])),
        mean_dice=math.nan, outputs={r["name"]: r["output"] for r in ok},
        whole_slices=sum(int(r.get("whole_slices") or 0) for r in ok),
        lesions=sum(int(r.get("lesions") or 0) for r in ok))


def _images(job_dir: Path, m: Manifest, index: int) -> int:
    """The slices of a segmented series; 0 for one that failed."""
    row = json.loads(_marker(job_dir, m, index).read_text())
    return int(row["slices"] or 0) if not row["error"] else 0


def _suffixes(name: str) -> str:
    return name[name.index("."):] if "." in name else ""


KIND = JobKind(NAME, "series", _marker, _run, _finish, uses_model=True, images=_images)
