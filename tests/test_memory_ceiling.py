"""``camseg segment`` on the largest image the pixel limit admits (16-bit, 4096 x 4096),
with the heaviest options and with a recipe of TTA and the dense CRF: the command's peak
RSS stays under the ceiling SECURITY.md states."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.memory import CEILING_MIB, big_image16, with_recipe


def _folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "images" / "big.png").write_bytes(big_image16())
    (root / "labels.csv").write_text("id,label\nbig,tumor\n")
    return root


def test_segment_command_stays_under_the_ceiling(exported: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    model = with_recipe(exported[0], tmp_path / "model")
    data = _folder(tmp_path / "data")
    runs = {
        "ROI": ["--tta", "8", "--refine", "crf", "--no-gate", "--overlays", "--whole", "never"],
        "whole": ["--tta", "8", "--refine", "crf", "--no-gate", "--overlays", "--whole", "always"],
        "recipe": [],
    }
    for name, flags in runs.items():
        out = tmp_path / f"out-{name}"
        done = subprocess.run([sys.executable, "-m", "camseg", "segment", "--no-progress", "--model", str(model),
                               "--data", str(data), "--out", str(out), *flags],
                              capture_output=True, text=True, timeout=240, env=_env())
        assert done.returncode == 0, (name, done.stderr[-2000:])
        assert (out / "masks" / "big.png").is_file(), name
    # the largest peak of the children waited for so far: the three commands
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"camseg segment peak RSS {peak:.0f} MiB")
    assert peak < CEILING_MIB, f"camseg segment peak RSS {peak:.0f} MiB"


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "CAMSEG_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
