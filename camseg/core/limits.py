"""Limits shared by the settings (their defaults) and the guards on untrusted input."""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image accepted (height x width) unless a caller or ``CAMSEG_MAX_PIXELS`` says otherwise."""

DEFAULT_MAX_WHOLE_PIXELS = 6144 * 6144
"""Largest image accepted for whole-image inference (a scanned film mammogram is about
6000 x 4000): the sliding window's memory, about 31 bytes per pixel at scale 1
(:func:`camseg.pipeline.whole.whole_bytes`), keeps such an image near 1.2 GB."""

DEFAULT_MAX_MODEL_BYTES = 2 * 1024**3
"""Largest model file, and largest total of the tensors an ONNX graph declares (its
external data included), unless ``CAMSEG_MAX_MODEL_BYTES`` says otherwise: protobuf's
own limit for one ONNX file, and room for any CNN classifier camseg serves."""
