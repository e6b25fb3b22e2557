"""The paper's filtered retraining as a job (kind ``retrain``): one part per (threshold,
filter) run of :func:`camseg.study.retraining.filtered_retrain`, each run's record
(``retrain/runs/<filter>-t<threshold>.json``) its completion marker; the results gather
the runs under ``retrain/``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from camseg.bulk.kinds.common import check_model_and_data
from camseg.bulk.store import JobKind, Manifest, create_job, summary_of
from camseg.core.errors import InvalidInputError
from camseg.core.progress import OnProgress, ShouldStop
from camseg.models.modeldir import read_metadata
from camseg.models.training import TrainConfig
from camseg.pipeline.run import LoadedModel
from camseg.study.retraining import FILTERS, filtered_retrain

NAME = "retrain"


def create_retrain_job(out_root: Path, model_dir: Path, data_dir: Path, *, thresholds: Sequence[float] = (0.5,),
                       filters: Sequence[str] | None = None, method: str = "gradcam", epochs: int | None = None,
                       seed: int = 0, job_id: str | None = None, labels: dict[str, str] | None = None) -> Path:
    """Plan the runs: every threshold (in [0, 1]) with every filter (default: all of
    :data:`~camseg.study.retraining.FILTERS`); ``epochs`` default to the model's own."""
    kinds = list(filters or FILTERS)
    bad = [k for k in kinds if k not in FILTERS]
    if bad or not kinds:
        raise InvalidInputError(f"unknown filters {bad}; choose from {', '.join(FILTERS)}")
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise InvalidInputError("filter thresholds must be in [0, 1]")
    check_model_and_data(model_dir, data_dir)
    runs = [[float(t), k] for t in thresholds for k in kinds]
    opts = {"runs": runs, "method": method, "epochs": epochs, "seed": seed}
    return create_job(out_root, job_id, kind=NAME, model_dir=model_dir, data=data_dir, options=opts,
                      chunks=[[i] for i in range(len(runs))], labels=labels)


def _retrain_args(m: Manifest) -> dict[str, Any]:
    """The model's training recipe (its epochs replaced where the job sets them), method
    and seed."""
    cfg = TrainConfig(**read_metadata(Path(m.model)).get("training", {}))
    if m.options.get("epochs"):
        cfg = replace(cfg, epochs=int(m.options["epochs"]))
    return {"method": m.options["method"], "cfg": cfg, "seed": int(m.options.get("seed", 0))}


def _marker(job_dir: Path, m: Manifest, index: int) -> Path:
    t, kind = m.options["runs"][index]
    return Path(job_dir) / "retrain" / "runs" / f"{kind}-t{float(t):g}.json"


def _run(job_dir: Path, m: Manifest, index: int, model: LoadedModel | None, should_stop: ShouldStop,
         on_progress: OnProgress | None) -> None:
    t, kind = m.options["runs"][index]
    filtered_retrain(Path(m.model), Path(m.data), None, thresholds=[float(t)], filters=[kind],
                     on_progress=on_progress, should_stop=should_stop, **_retrain_args(m),
                     runs_dir=job_dir / "retrain" / "runs")


def _finish(job_dir: Path, m: Manifest) -> dict[str, Any]:
    """Every run's result (read back from the runs already done) under ``retrain/``."""
    runs = m.options["runs"]
    thresholds = sorted({float(t) for t, _ in runs})
    filters = list(dict.fromkeys(k for _, k in runs))
    results = filtered_retrain(Path(m.model), Path(m.data), job_dir / "retrain", thresholds=thresholds,
                               filters=filters, **_retrain_args(m), runs_dir=job_dir / "retrain" / "runs")
    return summary_of(m, options=m.options, results=[asdict(r) for r in results])


KIND = JobKind(NAME, "parts", _marker, _run, _finish, uses_model=False)
