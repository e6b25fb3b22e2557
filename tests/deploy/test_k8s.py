"""The Kubernetes manifests: the overlays render with kustomize, every built-in object
validates against the Kubernetes schemas, and names, ports, probes and settings agree
with the code."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from camseg.core.settings import unknown_variables
from jobs.app import QUEUE
from tests.deploy.manifests import DEFAULTS, DICOM_METRICS_PORT, IMAGE, WORKER_METRICS_PORT
from tests.deploy.tools import DEPLOY, kustomize

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.32.0"
CRDS = {"PodMonitor", "PrometheusRule", "ScaledObject"}


def _with_components(tmp_path: Path, *components: str) -> Path:
    folder = tmp_path / "overlay"
    folder.mkdir()
    rel = os.path.relpath(K8S, folder)
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: camseg\n"
        f"resources: [{rel}/overlays/cpu]\ncomponents: [{', '.join(f'{rel}/components/{c}' for c in components)}]\n")
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("k8s")
    return {"cpu": kustomize(K8S / "overlays" / "cpu"), "gpu": kustomize(K8S / "overlays" / "gpu"),
            "keda+external-redis": kustomize(_with_components(tmp, "keda", "external-redis"))}


def _by(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def _container(deploy: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deploy["spec"]["template"]["spec"]["containers"]
    return containers[0]


def _env(objs: list[dict[str, Any]], deploy: dict[str, Any]) -> dict[str, str]:
    c = _container(deploy)
    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        env.update(_by(objs, "ConfigMap", ref["configMapRef"]["name"])["data"])
    env.update({e["name"]: e.get("value", "<from secret>") for e in c.get("env", [])})
    return env


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "keda+external-redis"])
def test_every_object_validates(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    for obj in objs:
        if obj["kind"] in CRDS:
            assert obj["apiVersion"] in ("monitoring.coreos.com/v1", "keda.sh/v1alpha1"), obj["apiVersion"]
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds.count("Deployment") == (4 if overlay == "keda+external-redis" else 5)
    assert all(o["metadata"].get("namespace") == "camseg" for o in objs if o["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_server_matches_the_code(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    server = _by(objs, "Deployment", "camseg-server")
    c = _container(server)
    assert IMAGE.fullmatch(c["image"]) and c["image"].endswith(f":{overlay}")
    assert c["args"][0] == "serve"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = _env(objs, server)
    assert ports == {"grpc": DEFAULTS.port, "metrics": DEFAULTS.metrics_port}
    assert int(env["CAMSEG_PORT"]) == DEFAULTS.port and int(env["CAMSEG_METRICS_PORT"]) == DEFAULTS.metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == DEFAULTS.port, probe  # kubelet's native gRPC health probe
    assert env["CAMSEG_PLAINTEXT"] == "true"  # kubelet's gRPC probes speak no TLS
    drain = float(env["CAMSEG_DRAIN_DELAY_SECONDS"]) + float(env["CAMSEG_GRACE_SECONDS"])
    assert server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    limits = c["resources"]["limits"]
    threads = int(env["CAMSEG_TORCH_THREADS"]) * max(int(env["CAMSEG_ORT_WORKERS"]), 1)
    assert threads <= int(limits["cpu"])  # threads x workers fit the cores
    svc = _by(objs, "Service", "camseg-server")
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert {p["port"] for p in svc["spec"]["ports"]} == {DEFAULTS.port, DEFAULTS.metrics_port}
    pdb = _by(objs, "PodDisruptionBudget", "camseg-server")
    assert all(labels[k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    hpa = _by(objs, "HorizontalPodAutoscaler", "camseg-server")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "camseg-server"
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and env["CAMSEG_ORT_PROVIDERS"] == "auto"


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "keda+external-redis"])
def test_workers_beat_and_settings(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    worker, beat = _by(objs, "Deployment", "camseg-worker"), _by(objs, "Deployment", "camseg-beat")
    w, b = _container(worker), _container(beat)
    assert w["args"][:1] == ["worker"] and b["args"] == ["beat"]
    wenv = _env(objs, worker)
    assert int(wenv["CAMSEG_WORKER_METRICS_PORT"]) == WORKER_METRICS_PORT
    assert {p["name"]: p["containerPort"] for p in w["ports"]} == {"metrics": WORKER_METRICS_PORT}
    tmpfs = [v for v in worker["spec"]["template"]["spec"]["volumes"] if v.get("emptyDir", {}).get("medium")]
    mount = next(m for m in w["volumeMounts"] if m["name"] == tmpfs[0]["name"])
    assert mount["mountPath"] == wenv["PROMETHEUS_MULTIPROC_DIR"]  # the multiprocess files on a tmpfs
    assert int(wenv["CAMSEG_TORCH_THREADS"]) * int(w["args"][w["args"].index("--concurrency") + 1]) <= int(
        w["resources"]["limits"]["cpu"])
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    names: set[str] = set()
    for d in (o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] != "camseg-redis"):
        names |= set(_env(objs, d))
        spec = d["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        # Service links would put CAMSEG_SERVER_PORT=tcp://... beside the settings, which camseg refuses
        assert spec["enableServiceLinks"] is False
        assert {m["mountPath"] for m in _container(d)["volumeMounts"]} >= {"/models", "/jobs-out"}
    assert not unknown_variables(names)
    if overlay == "keda+external-redis":
        scaled = _by(objs, "ScaledObject", "camseg-worker")
        trigger = scaled["spec"]["triggers"][0]
        assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == QUEUE
        assert scaled["spec"]["scaleTargetRef"]["name"] == "camseg-worker"
        assert not [o for o in objs if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] ==
                    "camseg-worker"]  # one controller scales the workers
        assert not [o for o in objs if o["metadata"]["name"] == "camseg-redis"]
        assert wenv["CAMSEG_REDIS_URL"] == "<from secret>"
    else:
        hpa = _by(objs, "HorizontalPodAutoscaler", "camseg-worker")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "camseg-worker"
        redis_svc = _by(objs, "Service", "camseg-redis")
        assert wenv["CAMSEG_REDIS_URL"].startswith(f"redis://{redis_svc['metadata']['name']}:6379/")


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_dicom_listener_matches_the_code(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    lis = _by(objs, "Deployment", "camseg-dicom-listener")
    c, spec = _container(lis), lis["spec"]["template"]["spec"]
    assert c["args"] == ["dicom-listen"] and c["image"].endswith(":" + overlay)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]  # it moves files; it needs no GPU
    # one pod on the spool, even during a rollout
    assert lis["spec"]["replicas"] == 1 and lis["spec"]["strategy"]["type"] == "Recreate"
    env = _env(objs, lis)
    assert int(env["CAMSEG_DICOM_PORT"]) == DEFAULTS.dicom_port and env["CAMSEG_DICOM_HOST"] == "0.0.0.0"
    assert int(env["CAMSEG_DICOM_METRICS_PORT"]) == DICOM_METRICS_PORT and env["CAMSEG_DICOM_MODEL"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"dicom": DEFAULTS.dicom_port, "metrics": DICOM_METRICS_PORT}
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["tcpSocket"]["port"] in ("dicom", DEFAULTS.dicom_port), probe
    # the spool on its PVC, written here, read by the workers, which take it as a data root
    spool = env["CAMSEG_DICOM_SPOOL"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == spool)
    claim = next(v for v in spec["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]["claimName"]
    pvc = _by(objs, "PersistentVolumeClaim", claim)
    assert not mount.get("readOnly") and "ReadWriteMany" in pvc["spec"]["accessModes"]
    worker = _by(objs, "Deployment", "camseg-worker")
    wmount = next(m for m in _container(worker)["volumeMounts"] if m["mountPath"] == spool)
    assert wmount["readOnly"] is True
    assert next(v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == wmount["name"])[
        "persistentVolumeClaim"]["claimName"] == claim
    assert spool in json.loads(_env(objs, worker)["CAMSEG_DATA_ROOTS"])
    labels = lis["spec"]["template"]["metadata"]["labels"]
    svc = _by(objs, "Service", "camseg-dicom")
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(DEFAULTS.dicom_port, "dicom")]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_metrics_port_has_a_writable_multiprocess_folder(rendered: dict[str, list[dict[str, Any]]],
                                                               overlay: str) -> None:
    """The images set PROMETHEUS_MULTIPROC_DIR, so prometheus-client writes a file there for
    each metric a process creates, the server's and the receiver's included: on a read-only
    root filesystem that folder must be a volume, or the process dies at its first metric."""
    objs = rendered[overlay]
    image_env = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", (DEPLOY / "docker" / f"Dockerfile.{overlay}").read_text())
    assert image_env is not None
    checked = set()
    for d in (o for o in objs if o["kind"] == "Deployment"):
        c = _container(d)
        if "metrics" not in {p["name"] for p in c.get("ports", [])}:
            continue
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        folder = _env(objs, d).get("PROMETHEUS_MULTIPROC_DIR", image_env.group(1))
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert folder in mounts and not mounts[folder].get("readOnly"), d["metadata"]["name"]
        volume = next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == mounts[folder]["name"])
        assert "emptyDir" in volume, d["metadata"]["name"]  # the process's own, gone with the pod
        checked.add(d["metadata"]["name"])
    assert checked == {"camseg-server", "camseg-worker", "camseg-dicom-listener"}


def test_the_pod_monitor_scrapes_the_metrics_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["cpu"]
    pm = _by(objs, "PodMonitor", "camseg")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    wanted = pm["spec"]["selector"]["matchLabels"].items()
    selected = [d for d in objs if d["kind"] == "Deployment"
                and all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in wanted)]
    assert {d["metadata"]["name"] for d in selected} == {"camseg-server", "camseg-worker", "camseg-beat",
                                                         "camseg-dicom-listener"}
    relabel = pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert relabel["targetLabel"] == "job" and relabel["replacement"] == "camseg-$1"  # camseg-server, camseg-worker


def test_the_plain_prometheus_config_finds_every_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """prometheus-k8s.yml resolves the headless Services' per-pod records on the metrics ports."""
    import yaml

    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-k8s.yml").read_text())
    objs = rendered["cpu"]
    for job in cfg["scrape_configs"]:
        sd = job["dns_sd_configs"][0]
        name, namespace = sd["names"][0].split(".")[:2]
        svc = _by(objs, "Service", name)
        assert svc["metadata"]["namespace"] == namespace and svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["ports"][0]["port"] == sd["port"]
        component = svc["spec"]["selector"]["app.kubernetes.io/component"]
        assert job["job_name"] == f"camseg-{component}"  # the job names the rules expect
        pods = _by(objs, "Deployment", f"camseg-{component}")
        assert sd["port"] in {p["containerPort"] for p in _container(pods)["ports"]}
