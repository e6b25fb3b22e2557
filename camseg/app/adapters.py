"""The adapters' command modules (``services.cli`` with ``camseg[serve]``, ``jobs.cli`` with
``camseg[jobs]``), found by name where installed: the core never imports them statically.
Each has ``register(sub)`` (its subcommands) and ``demo_steps(settings)``."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

logger = logging.getLogger(__name__)

ADAPTER_MODULES = ("services.cli", "jobs.cli")


def adapters() -> list[ModuleType]:
    """The adapter command modules that import here; a missing extra is skipped."""
    found = []
    for name in ADAPTER_MODULES:
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            logger.debug("%s not available: %s", name, exc)
    return found
