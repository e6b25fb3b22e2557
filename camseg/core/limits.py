"""Limits shared by the settings (their defaults) and the guards on untrusted input."""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image accepted (height x width) unless a caller or ``CAMSEG_MAX_PIXELS`` says otherwise."""
