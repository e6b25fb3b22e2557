"""The layers: the core package ``camseg`` imports no transport and no adapter, and its
subpackages import one way (import-linter's contracts in pyproject.toml, run by ``make lint``)."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import camseg

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "celery", "kombu", "redis",
             "prometheus_client", "services", "jobs")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(camseg.__path__, "camseg.") if not m.name.endswith("__main__"))


def test_core_imports_no_transport_in_a_fresh_interpreter() -> None:
    modules = core_modules()
    assert {"camseg.pipeline.run", "camseg.study.evaluation", "camseg.models.repository", "camseg.app.cli",
            "camseg.app.demo"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if any(k == f or k.startswith(f + '.') for f in {FORBIDDEN!r}))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert proc.stdout.strip() == "", f"core modules pulled in {proc.stdout.strip()}"


def test_the_check_sees_a_transport_import() -> None:
    """The same probe reports a transport module when one is imported (the test can fail)."""
    code = (
        "import sys, camseg.pipeline.run, grpc\n"
        f"print(','.join(sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert "grpc" in proc.stdout


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for name in ("camseg", "services", "jobs"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_contracts_hold_and_break_on_an_upward_import(tmp_path: Path) -> None:
    """The tree as committed keeps every contract; one upward import (the core's Dice module
    importing the command line) and one transport import each break one, by name."""
    tree = _copy(tmp_path)
    ok = _lint(tree)
    assert ok.returncode == 0, ok.stdout[-2000:]
    assert "4 kept, 0 broken" in ok.stdout

    metrics = tree / "camseg" / "core" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom camseg.app import cli  # noqa\n")
    up = _lint(tree)
    assert up.returncode != 0
    assert "camseg subpackages import one way, lower never higher BROKEN" in up.stdout
    assert "camseg.core.metrics -> camseg.app.cli" in up.stdout

    (tree / "camseg" / "core" / "metrics.py").write_text(metrics.read_text().replace(
        "from camseg.app import cli  # noqa", "import celery  # noqa"))
    transport = _lint(tree)
    assert transport.returncode != 0
    assert "the core imports no transport and no adapter BROKEN" in transport.stdout


@pytest.mark.parametrize(("module", "line", "contract", "chain"), [
    ("jobs/submit.py", "from jobs import tasks", "jobs import one way", "jobs.submit -> jobs.tasks"),
    ("jobs/app.py", "from jobs import tasks", "jobs import one way", "jobs.app -> jobs.tasks"),
    ("camseg/bulk/store.py", "from camseg.bulk import batch", "bulk jobs import one way",
     "camseg.bulk.store -> camseg.bulk.batch"),
    ("camseg/bulk/kinds/segment.py", "from camseg.bulk import batch", "bulk jobs import one way",
     "camseg.bulk.kinds.segment -> camseg.bulk.batch"),
])
def test_jobs_and_bulk_import_one_way(tmp_path: Path, module: str, line: str, contract: str, chain: str) -> None:
    """The submission and the app never import the tasks (the tasks import them), and the
    job store never imports the kinds or their registry: one import the other way breaks
    its contract, by name, even inside a function."""
    tree = _copy(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n\ndef _upward() -> None:\n    {line}  # noqa\n")
    out = _lint(tree)
    assert out.returncode != 0
    assert [ln for ln in out.stdout.splitlines() if ln.startswith(contract) and ln.endswith("BROKEN")], out.stdout
    assert chain in out.stdout, out.stdout[-2000:]
