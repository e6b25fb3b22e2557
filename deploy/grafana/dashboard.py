"""Writes deploy/grafana/dashboards/camseg.json, the camseg operations dashboard.

Run ``python deploy/grafana/dashboard.py`` after editing a panel; a test checks the
committed JSON is this script's output, and another asks a real Prometheus for every
query here while a server, a worker, a load and a bulk job run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "camseg.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
ERRORS = 'code=~"INTERNAL|UNKNOWN|UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|DATA_LOSS"'

# (title, unit, kind, [(expr, legend)], description); kind: timeseries | stat | table
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]], str]]]] = [
    ("Service", [
        ("Requests by RPC", "reqps", "timeseries",
         [("sum by (rpc) (rate(camseg_grpc_requests_total[$__rate_interval]))", "{{rpc}}")],
         "gRPC calls answered per second, by method."),
        ("Errors by RPC and code", "reqps", "timeseries",
         [('sum by (rpc, code) (rate(camseg_grpc_requests_total{code!="OK"}[$__rate_interval]))',
           "{{rpc}} {{code}}")],
         "Calls that did not end OK. Client errors (INVALID_ARGUMENT, NOT_FOUND) are the callers'."),
        ("Server error ratio", "percentunit", "timeseries",
         [(f"(sum by (rpc) (rate(camseg_grpc_requests_total{{{ERRORS}}}[$__rate_interval])) or "
           "sum by (rpc) (rate(camseg_grpc_requests_total[$__rate_interval])) * 0) / "
           "sum by (rpc) (rate(camseg_grpc_requests_total[$__rate_interval]))", "{{rpc}}")],
         "Share of calls failing on the server side (the CamsegHighErrorRatio alert fires above 5%)."),
        ("Latency p50 / p90 / p99", "s", "timeseries",
         [(f"histogram_quantile({q}, sum by (le, rpc) "
           "(rate(camseg_grpc_request_duration_seconds_bucket[$__rate_interval])))", f"{{{{rpc}}}} p{int(q * 100)}")
          for q in (0.5, 0.9, 0.99)],
         "RPC latency percentiles from the server's histogram."),
        ("In-flight calls", "short", "timeseries",
         [("sum by (rpc) (camseg_grpc_in_flight_requests)", "{{rpc}}")],
         "Calls being worked on now."),
        ("Classify batch size", "short", "timeseries",
         [("sum(rate(camseg_batch_size_images_sum[$__rate_interval])) / "
           "sum(rate(camseg_batch_size_images_count[$__rate_interval]))", "mean"),
          ("histogram_quantile(0.9, sum by (le) (rate(camseg_batch_size_images_bucket[$__rate_interval])))", "p90")],
         "Images per ONNX Runtime batch formed by the dynamic batcher."),
        ("Batch queue wait p99", "s", "timeseries",
         [("histogram_quantile(0.99, sum by (le) (rate(camseg_batch_queue_seconds_bucket[$__rate_interval])))",
           "p99")],
         "Time a Classify waits for its batch to start."),
        ("Images per second", "short", "timeseries",
         [("sum by (rpc) (rate(camseg_images_total[$__rate_interval]))", "{{rpc}}"),
          ("sum(rate(camseg_job_images_total[$__rate_interval]))", "bulk jobs")],
         "Images processed by the service (by RPC) and by bulk jobs."),
        ("Serving", "short", "stat",
         [("camseg_serving", "{{instance}}")],
         "1 while health reports SERVING; 0 while starting or draining."),
        ("Targets up", "short", "stat",
         [('up{job=~"camseg-server|camseg-worker|camseg-dicom-listener"}', "{{job}} {{instance}}")],
         "Whether Prometheus reaches each server, worker and DICOM receiver."),
    ]),
    ("Models", [
        ("Model versions served", "short", "table",
         [("camseg_model_info == 1", "{{name}}/{{version}}")],
         "Every model version the server has loaded and serves."),
        ("Versions refused at load (1 h)", "short", "stat",
         [("sum by (name) (increase(camseg_model_load_failures_total[1h])) or vector(0)", "{{name}}")],
         "Version folders that failed to load; the server log names the file and field."),
        ("Mean Dice per model version", "short", "timeseries",
         [("camseg_evaluated_mean_dice", "{{model}}/{{version}}"),
          ("camseg:dice_floor", "floor")],
         "Mean Dice of each version's last Dice evaluation job (test split), and the alert's floor."),
    ]),
    ("Bulk jobs", [
        ("Queue length", "short", "timeseries",
         [("sum by (queue) (camseg_job_queue_length)", "{{queue}}")],
         "Tasks waiting in the Redis broker."),
        ("Tasks by outcome", "short", "timeseries",
         [("sum by (task, outcome) (rate(camseg_job_tasks_total[$__rate_interval]))", "{{task}} {{outcome}}")],
         "Task throughput: tasks ended per second, by task and outcome."),
        ("Task failures (15 min)", "short", "stat",
         [('sum(increase(camseg_job_tasks_total{outcome="FAILURE"}[15m])) or vector(0)', "failures")],
         "Tasks that ended in FAILURE (the CamsegTasksFailing alert)."),
        ("Task duration p90", "s", "timeseries",
         [("histogram_quantile(0.9, sum by (le, task) "
           "(rate(camseg_job_task_duration_seconds_bucket[$__rate_interval])))", "{{task}}")],
         "How long tasks run."),
        ("Mean job duration by kind", "s", "timeseries",
         [("sum by (kind) (camseg_job_duration_seconds_sum) / sum by (kind) (camseg_job_duration_seconds_count)",
           "{{kind}}")],
         "Created to finished, averaged over the jobs each worker finished."),
        ("Since the last success, by job kind", "s", "stat",
         [("time() - max by (kind) (camseg_job_last_success_timestamp_seconds)", "{{kind}}")],
         "Time since a job of each kind last succeeded (filtered retraining runs on a schedule)."),
    ]),
    ("DICOM receiver", [
        ("Instances received", "short", "timeseries",
         [("sum by (result) (rate(camseg_dicom_instances_received_total[$__rate_interval]))", "{{result}}")],
         "C-STORE instances per second: stored in the spool, or refused (bad UIDs, a full disk)."),
        ("Associations", "short", "timeseries",
         [("sum by (result) (rate(camseg_dicom_associations_total[$__rate_interval]))", "{{result}}")],
         "Associations per second: accepted, rejected (calling AE not allowed) or tls_refused (plaintext, no or "
         "an untrusted client certificate)."),
        ("Series by outcome (1 h)", "short", "stat",
         [("sum by (state) (increase(camseg_dicom_series_total[1h]))", "{{state}}")],
         "Series generations queued as jobs, segmented, or failed (the CamsegDicomSeriesFailing alert)."),
        ("Series and SEGs waiting", "short", "timeseries",
         [("sum(camseg_dicom_series_pending)", "series not yet sent, filed or failed"),
          ("sum(camseg_dicom_sends_pending)", "SEGs waiting to be sent")],
         "Work in the spool; SEGs that keep waiting mean the destination refuses them (CamsegDicomSendsBackingUp)."),
        ("SEG sends", "short", "timeseries",
         [("sum by (result) (rate(camseg_dicom_sends_total[$__rate_interval]))", "{{result}}")],
         "C-STORE sends of SEGs to the destination per second; failures are retried with backoff."),
    ]),
]


def _panel(pid: int, title: str, unit: str, kind: str, queries: list[tuple[str, str]], description: str,
           x: int, y: int) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
                     **({"instant": True, "format": "table"} if kind == "table" else {})}
                    for i, (expr, legend) in enumerate(queries)],
    }
    if kind == "timeseries":
        panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}}
    return panel


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for row_title, row_panels in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (title, unit, kind, queries, description) in enumerate(row_panels):
            panels.append(_panel(pid, title, unit, kind, queries, description, x=(i % 3) * 8, y=y + (i // 3) * 8))
            pid += 1
        y += ((len(row_panels) + 2) // 3) * 8
    return {
        "uid": "camseg-ops", "title": "camseg", "tags": ["camseg"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(OUT)
