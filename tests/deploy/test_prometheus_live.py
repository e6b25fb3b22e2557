"""A real Prometheus on loopback scrapes a running camseg server, a real worker and a real
``camseg dicom-listen`` while a small load, two bulk jobs and a few DICOM associations run;
then every dashboard query must return data and every rule must evaluate without error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from camseg.core.settings import Settings
from camseg.data.synth import SynthConfig, synthesize
from camseg.heat.rules import parse_rule
from camseg.io.codecs import encode_png
from camseg.pipeline.options import Options
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.deploy.test_dashboard import queries
from tests.deploy.tools import DEPLOY, tool
from tests.jobs.workers import flushed_redis, free_port, start_worker
from tests.services.servers import start_server, stop
from tests.services.test_dicom_listen import READY

REDIS_DB = 11  # this test's own database index
RULES = DEPLOY / "prometheus" / "rules" / "camseg.yml"
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval becomes here (scrapes every second)


def _get(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _query(base: str, expr: str) -> dict[str, Any]:
    reply: dict[str, Any] = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return reply


def _wait(what: str, ok: Any, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if ok():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def redis_url() -> Iterator[str]:
    with flushed_redis(REDIS_DB) as url:
        yield url


def _load(stub: pb_grpc.SegmentationStub, image: bytes, stop_event: threading.Event) -> None:
    """Classify, Explain and Segment calls, and one bad call a round, until told to stop."""
    img = pb.Image(encoded=image)
    while not stop_event.is_set():
        stub.Classify(pb.ClassifyRequest(images=[img, img, img]), timeout=30)
        stub.Explain(pb.ExplainRequest(images=[img]), timeout=30)
        stub.Segment(pb.SegmentRequest(images=[img], gate=False), timeout=30)
        try:
            stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=b"not an image")]), timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        time.sleep(0.05)


def test_every_dashboard_query_and_rule_against_a_real_prometheus(
        tmp_path: Path, exported: tuple[Path, dict[str, Any]], redis_url: str) -> None:
    from jobs.app import make_app
    from jobs.submit import submit_evaluate, submit_segment

    prometheus = tool("prometheus")
    repo, data_root, out = tmp_path / "repo", tmp_path / "data", tmp_path / "out"
    shutil.copytree(exported[0], repo / "tiny" / "1")
    (repo / "broken" / "1").mkdir(parents=True)  # refused at load: the "versions refused" panel and alert
    for name in ("model.onnx", "model.pt", "metadata.json"):
        (repo / "broken" / "1" / name).write_bytes(b"garbage")
    synthesize(data_root / "rois", SynthConfig(n=48, size=32, seed=9))
    worker_port = free_port()
    env = {"CAMSEG_REDIS_URL": redis_url, "CAMSEG_MODEL_REPO": str(repo), "CAMSEG_DATA_ROOTS": f'["{data_root}"]',
           "CAMSEG_OUTPUT_ROOT": str(out), "CAMSEG_TORCH_THREADS": "1", "CAMSEG_WORKER_METRICS_PORT": str(worker_port)}
    server = start_server(repo, env={"CAMSEG_JOBS": "false"})
    worker = start_worker(env, concurrency=1)
    listener, listener_metrics = _start_listener(env, tmp_path)
    prom_port = free_port()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(RULES)],
              "scrape_configs": [
                  {"job_name": "camseg-server", "static_configs": [
                      {"targets": [f"127.0.0.1:{server.serve.metrics_port}"]}]},
                  {"job_name": "camseg-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
                  {"job_name": "camseg-dicom-listener", "static_configs": [
                      {"targets": [f"127.0.0.1:{listener_metrics}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=prom_log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    stop_load = threading.Event()
    loader: threading.Thread | None = None
    try:
        _wait("Prometheus ready", lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, 60)
        image = encode_png((synthesize_roi(data_root) * 255).astype("uint8"))
        stub = pb_grpc.SegmentationStub(server.channel())
        loader = threading.Thread(target=_load, args=(stub, image, stop_load), daemon=True)
        loader.start()
        settings = Settings(redis_url=redis_url, model_repo=repo, data_roots=[data_root], output_root=out)
        app = make_app(settings)
        seg = submit_segment(app, settings, model="tiny", version="", data=data_root / "rois",
                             options=Options(threshold=parse_rule("p90"), gate=False), chunk_size=16)
        ev = submit_evaluate(app, settings, model="tiny", version="", data=data_root / "rois",
                             methods=["gradcam"], rules=["otsu", "p90"])

        def done(job_id: str) -> bool:
            return (out / job_id / "summary.json").is_file()

        _wait("both jobs", lambda: done(seg.job_id) and done(ev.job_id), 240)
        _wait("the worker's job metrics scraped", lambda: _query(
            base, 'camseg_evaluated_mean_dice{model="tiny"}')["data"]["result"] != [], 60)
        # a rate needs two samples in its window: wait for a few scrapes after the jobs' series appear
        _wait("the worker's task counters scraped three times", lambda: _query(
            base, "min(count_over_time(camseg_job_tasks_total[1m])) >= 3")["data"]["result"] != [], 60)
        _wait("the DICOM receiver's associations scraped", lambda: _query(
            base, 'camseg_dicom_associations_total{job="camseg-dicom-listener", result="accepted"} > 0'
        )["data"]["result"] != [], 60)
        _wait("the server's load scraped", lambda: _query(
            base, 'rate(camseg_grpc_requests_total{rpc="Segment"}[1m]) > 0')["data"]["result"] != [], 60)
        no_data, errors = [], []
        for title, expr in queries():
            reply = _query(base, expr.replace("$__rate_interval", RATE_INTERVAL))
            if reply["status"] != "success":
                errors.append(f"{title}: {expr}: {reply}")
            elif not reply["data"]["result"]:
                no_data.append(f"{title}: {expr}")
        assert not errors, "\n".join(errors)
        assert not no_data, "panels without data:\n" + "\n".join(no_data)

        groups = yaml.safe_load(RULES.read_text())["groups"]
        exprs = [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]
        for name, expr in exprs:
            reply = _query(base, expr)
            assert reply["status"] == "success", (name, reply)

        def evaluated() -> bool:
            rules = [r for g in _get(f"{base}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
            return len(rules) == len(exprs) and all(r.get("lastEvaluation", "").startswith("2") and
                                                    not r["lastEvaluation"].startswith("0001") for r in rules)

        _wait("every rule evaluated", evaluated, 30)
        rules = [r for g in _get(f"{base}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not bad, bad
        # the alerts a healthy system should not raise are silent: no server down or not serving
        firing = {a["labels"]["alertname"] for a in _get(f"{base}/api/v1/alerts")["data"]["alerts"]}
        assert not firing & {"CamsegServerDown", "CamsegWorkerDown", "CamsegNotServing", "CamsegTasksFailing",
                             "CamsegDicomListenerDown", "CamsegDicomSeriesFailing", "CamsegDicomSendsBackingUp"}
    finally:
        stop_load.set()
        if loader is not None:
            loader.join(timeout=60)
        prom.terminate()
        prom.wait(timeout=30)
        prom_log.close()
        listener.terminate()
        listener.wait(timeout=30)
        worker.stop()
        stop(server)


def _start_listener(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    """``camseg dicom-listen`` on free ports (its metrics port returned), answering a few
    C-ECHOs and rejecting a caller it does not allow, so its counters move."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    lenv = {**os.environ, **env, "CAMSEG_DICOM_PORT": "0", "CAMSEG_DICOM_METRICS_PORT": "0",
            "CAMSEG_DICOM_MODEL": "tiny", "CAMSEG_DICOM_SPOOL": str(tmp_path / "spool"),
            "CAMSEG_DICOM_ALLOWED_AES": '["MODALITY"]'}
    proc = subprocess.Popen([sys.executable, "-m", "camseg", "dicom-listen"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=lenv)
    assert proc.stdout is not None
    m = READY.search(proc.stdout.readline())
    if not m:
        proc.kill()
        proc.wait()
        raise AssertionError("camseg dicom-listen did not start")
    port = int(m.group(3))
    for calling in ("MODALITY", "MODALITY", "INTRUDER"):
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="CAMSEG")
        if assoc.is_established:
            assert int(assoc.send_c_echo().Status) == 0
            assoc.release()
        else:
            assert calling == "INTRUDER"
    return proc, int(m.group(4))


def synthesize_roi(data_root: Path) -> Any:
    """The first tumor ROI of the job data, as a float array."""
    from camseg.data.folder import FolderDataset

    ds = FolderDataset.open(data_root / "rois")
    i = next(k for k, s in enumerate(ds.samples) if s.label == 1)
    return ds.load(i)[0]
