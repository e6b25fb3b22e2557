"""What the manifests must agree on with the code: ports and images (setting names are
checked with :func:`camseg.core.settings.unknown_variables`)."""

from __future__ import annotations

import re

from camseg.core.settings import Settings

DEFAULTS = Settings.model_construct()  # the classes' defaults, whatever this shell's CAMSEG_* say
WORKER_METRICS_PORT = 9101  # what the images, compose and Kubernetes give CAMSEG_WORKER_METRICS_PORT
DICOM_METRICS_PORT = 9102  # what compose and Kubernetes give CAMSEG_DICOM_METRICS_PORT (the code's default: none)
IMAGE = re.compile(r"(?:.+/)?camseg:(cpu|gpu)$")
