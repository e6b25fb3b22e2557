"""The compose files pass `docker-compose config`; the Dockerfiles pass hadolint; both
agree with the code's settings, ports and commands; `camseg health` (the images'
health check) answers for a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from camseg.app.cli import build_parser
from camseg.core.settings import unknown_variables
from tests.deploy.manifests import DEFAULTS, DICOM_METRICS_PORT, IMAGE, WORKER_METRICS_PORT
from tests.deploy.tools import DEPLOY, compose, run, tool

COMPOSE = DEPLOY / "compose"
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))


def _mounts(svc: dict[str, Any]) -> list[tuple[str, bool]]:
    """(target, read-only) of each volume, in compose v1's short or v2's long form."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((v["target"], bool(v.get("read_only"))))
    return out


def _published(svc: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) if not isinstance(p, dict) else int(p["target"])
            for p in svc.get("ports", [])}


def _config(*files: str) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", f)]
    out = run(*compose(), *args, "config", cwd=COMPOSE).stdout
    cfg: dict[str, Any] = yaml.safe_load(out)
    return cfg


@pytest.mark.parametrize("files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.gpu.yml")])
def test_compose_config_accepts_the_files(files: tuple[str, ...]) -> None:
    cfg = _config(*files)
    services = cfg["services"]
    assert set(services) == {"server", "worker", "beat", "dicom-listener", "redis", "prometheus", "grafana"}
    commands = {"server": "serve", "worker": "worker", "beat": "beat", "dicom-listener": "dicom-listen"}
    action = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    subcommands = set(action.choices or ())
    names: set[str] = set()
    for name, command in commands.items():
        svc = services[name]
        tag = "gpu" if len(files) == 2 and name in ("server", "worker") else "cpu"  # beat, the listener: no GPU
        assert IMAGE.fullmatch(svc["image"]) and svc["image"].endswith(f":{tag}")
        assert svc["command"][0] == command and command in subcommands
        assert ("/models", True) in _mounts(svc)
        names |= set(svc.get("environment", {}))
        assert svc["environment"]["CAMSEG_REDIS_URL"].startswith("redis://redis:6379/")
    assert not unknown_variables(names)
    server = services["server"]
    assert _published(server) == {DEFAULTS.port, DEFAULTS.metrics_port}
    drain = float(server["environment"]["CAMSEG_DRAIN_DELAY_SECONDS"]) + float(
        server["environment"]["CAMSEG_GRACE_SECONDS"])
    grace = server["stop_grace_period"]
    assert float(re.fullmatch(r"(\d+)s", grace).group(1)) > drain  # type: ignore[union-attr]
    assert any("/run/camseg-metrics" in str(t) for t in services["worker"]["tmpfs"])
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in prom["scrape_configs"]}
    assert targets == {"camseg-server": f"server:{DEFAULTS.metrics_port}",
                       "camseg-worker": f"worker:{WORKER_METRICS_PORT}",
                       "camseg-dicom-listener": f"dicom-listener:{DICOM_METRICS_PORT}"}
    _check_the_dicom_listener(cfg)
    if len(files) == 2:
        devices = services["server"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia"


def _check_the_dicom_listener(cfg: dict[str, Any]) -> None:
    """Its ports, its spool on a named volume, the workers reading that spool, its own health check."""
    services = cfg["services"]
    lis, worker = services["dicom-listener"], services["worker"]
    env = lis["environment"]
    assert int(env["CAMSEG_DICOM_PORT"]) == DEFAULTS.dicom_port and env["CAMSEG_DICOM_HOST"] == "0.0.0.0"
    assert int(env["CAMSEG_DICOM_METRICS_PORT"]) == DICOM_METRICS_PORT
    assert _published(lis) == {DEFAULTS.dicom_port, DICOM_METRICS_PORT}
    spool = env["CAMSEG_DICOM_SPOOL"]
    sources = {(v.split(":")[1] if isinstance(v, str) else v["target"]): (v.split(":")[0] if isinstance(v, str)
                                                                          else v["source"]) for v in lis["volumes"]}
    assert sources[spool] in cfg["volumes"] and (spool, False) in _mounts(lis)  # a named volume, written here
    assert (spool, True) in _mounts(worker) and ("/jobs-out", False) in _mounts(lis)
    assert spool in yaml.safe_load(worker["environment"]["CAMSEG_DATA_ROOTS"])
    check = " ".join(lis["healthcheck"]["test"])
    assert "health" not in check and str(DEFAULTS.dicom_port) in check  # not the image's gRPC check


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes_the_dockerfile(dockerfile: Path) -> None:
    run(tool("hadolint"), str(dockerfile))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_images_agree_with_the_code(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    env = dict(re.findall(r"\b(CAMSEG_[A-Z_]+|PROMETHEUS_MULTIPROC_DIR)=(\S+)", text))
    assert not unknown_variables(set(env))
    assert int(env["CAMSEG_PORT"]) == DEFAULTS.port and int(env["CAMSEG_METRICS_PORT"]) == DEFAULTS.metrics_port
    assert int(env["CAMSEG_WORKER_METRICS_PORT"]) == WORKER_METRICS_PORT
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/camseg-metrics"
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")  # the final stage runs as non-root
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["camseg", "health", "--server", "127.0.0.1:50051"', text)
    assert "torch==2.13.0" in text and '".[serve,jobs]"' in text
    expose = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.M)[0].split()}
    assert expose == {DEFAULTS.port, DEFAULTS.metrics_port, WORKER_METRICS_PORT}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_images_own_the_folders_compose_writes_on_named_volumes(dockerfile: Path) -> None:
    """A new named volume takes the owner of its mount point in the image: one the image
    does not create is root's, and the camseg user (10001) could not write the spool."""
    text = dockerfile.read_text()
    chowned = {p for line in re.findall(r"chown camseg:camseg ([^\n\\&]+)", text) for p in line.split()}
    cfg = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    named = set(cfg["volumes"])
    written = {target for svc in cfg["services"].values() if IMAGE.fullmatch(svc.get("image", ""))
               for v in svc.get("volumes", []) if isinstance(v, str) and v.split(":")[0] in named
               for target, read_only in [(v.split(":")[1], v.count(":") > 1 and "ro" in v.split(":")[2])]
               if not read_only}
    assert written >= {"/jobs-out", "/dicom-spool"}
    assert written <= chowned, written - chowned


def test_camseg_health_answers_for_a_real_server(tmp_path: Path, exported: tuple[Path, dict[str, Any]]) -> None:
    import shutil

    from tests.services.servers import start_server, stop

    shutil.copytree(exported[0], tmp_path / "repo" / "tiny" / "1")
    server = start_server(tmp_path / "repo")
    try:
        ok = subprocess.run([sys.executable, "-m", "camseg", "health", "--server", server.address, "--plaintext"],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and ok.stdout.strip().endswith("SERVING"), ok.stderr
    finally:
        stop(server)
    gone = subprocess.run([sys.executable, "-m", "camseg", "health", "--server", server.address, "--plaintext",
                           "--timeout", "1"], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr
