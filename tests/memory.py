"""Helpers for the memory-ceiling tests: a 16-bit image of the largest size the pixel
limit admits, a model version whose recipe is the heaviest, and a process's peak RSS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from camseg.core.limits import DEFAULT_MAX_PIXELS
from camseg.heat.refine import Refiner
from camseg.io.codecs import encode_png
from camseg.pipeline.options import Options
from camseg.pipeline.recipe_record import Recipe, save_recipe

SIDE = int(DEFAULT_MAX_PIXELS**0.5)  # 4096: the largest square image the default pixel limit admits
CEILING_MIB = 2500
"""The peak RSS SECURITY.md states for one process (server, command or worker) segmenting
any image the pixel limit admits, with any options."""
RECIPE = Options(tta=4, refine=Refiner.CRF, gate=False)
"""A recipe as heavy as the ones the quality runs choose (TTA x4 and the dense CRF); the
gate off so that every image's mask is refined."""


def big_image16(side: int = SIDE, seed: int = 0) -> bytes:
    """A 16-bit gray PNG of ``side`` x ``side``: a bright disc on a smooth ramp, with noise
    (so the mask has an edge for the refiners to move and the decode is real)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = 0.3 * x + 0.1 * y + 0.5 * (((y - 0.45) ** 2 + (x - 0.55) ** 2) < 0.04)
    img += rng.normal(0.0, 0.02, (side, side)).astype(np.float32)
    return encode_png((np.clip(img, 0.0, 1.0) * 65535).astype(np.uint16))


WHOLE_SCALE = 8.0
"""Source pixels per model pixel of :func:`with_recipe`'s copy: its whole images slide
over a 512 x 512 model-space image (a 32-px model at scale 1 would take 65536 tiles)."""


def with_recipe(model_dir: Path, dest: Path, recipe: Options = RECIPE) -> Path:
    """A copy of ``model_dir`` at ``dest`` with ``recipe`` recorded as its recipe and a
    recorded scale of :data:`WHOLE_SCALE`."""
    shutil.copytree(model_dir, dest)
    save_recipe(dest, Recipe(recipe, Options()))
    meta = json.loads((dest / "metadata.json").read_text())
    meta["scale"] = {"source_pixels_per_model_pixel": WHOLE_SCALE}
    (dest / "metadata.json").write_text(json.dumps(meta))
    return dest


def vm_hwm_mib(pid: int) -> float:
    """The peak resident memory of process ``pid`` (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")
