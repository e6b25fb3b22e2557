"""The Dice evaluation protocol of a model on a labelled set as a job (kind ``evaluate``):
one part, :func:`camseg.study.evaluation.evaluate_dice`, whose report
(``report/``) is its completion marker."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camseg.bulk.kinds.common import check_model_and_data
from camseg.bulk.store import JobKind, Manifest, create_job, summary_of
from camseg.core.progress import OnProgress, ShouldStop
from camseg.heat.cam import METHODS
from camseg.pipeline.run import LoadedModel
from camseg.study.evaluation import DEFAULT_RULES, REPORT_FILE, evaluate_dice

NAME = "evaluate"


def create_evaluate_job(out_root: Path, model_dir: Path, data_dir: Path, *, select: str = "val",
                        report: str = "test", methods: Sequence[str] | None = None,
                        rules: Sequence[str] | None = None, job_id: str | None = None,
                        labels: dict[str, str] | None = None) -> Path:
    """Plan the evaluation: the options are chosen on ``select``, reported on ``report``,
    over ``methods`` (default: every CAM method) and ``rules`` (default:
    :data:`~camseg.study.evaluation.DEFAULT_RULES`)."""
    check_model_and_data(model_dir, data_dir)
    opts = {"select": select, "report": report, "methods": list(methods or METHODS),
            "rules": list(rules or DEFAULT_RULES)}
    return create_job(out_root, job_id, kind=NAME, model_dir=model_dir, data=data_dir, options=opts, chunks=[[0]],
                      labels=labels)


def _marker(job_dir: Path, m: Manifest, index: int) -> Path:
    return Path(job_dir) / "report" / REPORT_FILE


def _run(job_dir: Path, m: Manifest, index: int, model: LoadedModel | None, should_stop: ShouldStop,
         on_progress: OnProgress | None) -> None:
    o = m.options
    evaluate_dice(model or LoadedModel.load(m.model, onnx=False), Path(m.data), select=o["select"],
                  report=o["report"], methods=o["methods"], rules=o["rules"], out=job_dir / "report",
                  overwrite=True, on_progress=on_progress, should_stop=should_stop)


def _finish(job_dir: Path, m: Manifest) -> dict[str, Any]:
    """The report's best options, the paper's, and the mean Dice of the best."""
    report = json.loads(_marker(job_dir, m, 0).read_text())
    return summary_of(m, options=m.options, best=report["best"], paper=report["paper"], n_report=report["n_report"],
                      mean_dice=report["best"]["mean_dice"])


KIND = JobKind(NAME, "parts", _marker, _run, _finish, uses_model=False)
