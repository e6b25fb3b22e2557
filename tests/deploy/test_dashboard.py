"""The Grafana dashboard is its generator's output and covers what ops watch."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from tests.deploy.tools import DEPLOY

GRAFANA = DEPLOY / "grafana"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("dashboard", GRAFANA / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the committed dashboard."""
    board = json.loads((GRAFANA / "dashboards" / "camseg.json").read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def test_the_committed_dashboard_is_the_generators_output() -> None:
    assert (GRAFANA / "dashboards" / "camseg.json").read_text() == _generator().render()


def test_the_dashboard_covers_what_ops_watch() -> None:
    text = " ".join(expr for _, expr in queries())
    for metric in ("camseg_grpc_requests_total", "camseg_grpc_request_duration_seconds_bucket",
                   "camseg_batch_size_images", "camseg_grpc_in_flight_requests", "camseg_model_info",
                   "camseg_job_queue_length", "camseg_job_tasks_total", "camseg_job_duration_seconds",
                   "camseg_job_last_success_timestamp_seconds", "camseg_evaluated_mean_dice",
                   "camseg_dicom_instances_received_total", "camseg_dicom_associations_total",
                   "camseg_dicom_series_total", "camseg_dicom_series_pending", "camseg_dicom_sends_pending",
                   "camseg_dicom_sends_total"):
        assert metric in text, metric
    board = json.loads((GRAFANA / "dashboards" / "camseg.json").read_text())
    assert board["templating"]["list"][0]["type"] == "datasource"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    provisioned = (GRAFANA / "provisioning" / "dashboards" / "camseg.yml").read_text()
    assert "/var/lib/grafana/dashboards" in provisioned
