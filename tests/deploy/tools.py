"""The real tools the deploy tests run. A missing tool fails the test that needs it, with
the command that installs it (``make tools``); it never skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
_PATH = os.pathsep.join([str(Path(sys.executable).parent), str(ROOT / ".tools" / "node_modules" / ".bin"),
                         os.environ.get("PATH", "")])


def tool(name: str) -> str:
    found = shutil.which(name, path=_PATH)
    if found is None:
        pytest.fail(f"{name} is not installed: `make tools` (deploy/ensure-tools.sh) or `make test` installs it")
    return found


def run(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool; the test fails with its output when it exits non-zero."""
    proc = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def kustomize(folder: Path) -> list[dict]:
    """The objects an overlay renders to, with kubectl's kustomize or the kustomize binary."""
    if shutil.which("kubectl", path=_PATH):
        out = run(tool("kubectl"), "kustomize", str(folder)).stdout
    else:
        out = run(tool("kustomize"), "build", str(folder)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def compose() -> list[str]:
    """The compose command: docker-compose, or docker's compose plugin."""
    if shutil.which("docker-compose", path=_PATH):
        return [tool("docker-compose")]
    docker = shutil.which("docker", path=_PATH)
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.fail("docker-compose is not installed: `make tools` (deploy/ensure-tools.sh) installs it")
