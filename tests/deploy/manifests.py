"""What the manifests must agree on with the code: setting names, ports, images."""

from __future__ import annotations

import re

from jobs.settings import JobSettings
from services.settings import ServeSettings

SETTING_NAMES = {f"CAMSEG_{name.upper()}" for cls in (ServeSettings, JobSettings) for name in cls.model_fields}
SERVE = ServeSettings()
JOBS = JobSettings()
WORKER_METRICS_PORT = 9101  # what the images, compose and Kubernetes give CAMSEG_WORKER_METRICS_PORT
IMAGE = re.compile(r"(?:.+/)?camseg:(cpu|gpu)$")


def unknown_settings(names: set[str]) -> set[str]:
    """CAMSEG_* names that no settings class declares (a typo a container would ignore)."""
    return {n for n in names if n.startswith("CAMSEG_") and n not in SETTING_NAMES}
