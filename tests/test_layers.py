"""The layers: the core package ``camseg`` imports no transport and no adapter."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import camseg

FORBIDDEN = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "celery", "kombu", "redis",
             "prometheus_client", "services", "jobs")


def core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(camseg.__path__, "camseg.") if not m.name.endswith("__main__"))


def test_core_imports_no_transport_in_a_fresh_interpreter() -> None:
    modules = core_modules()
    assert {"camseg.pipeline", "camseg.evaluation", "camseg.repository", "camseg.cli", "camseg.demo"} <= set(modules)
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
        "import sys, camseg.pipeline, grpc\n"
        f"print(','.join(sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert "grpc" in proc.stdout
