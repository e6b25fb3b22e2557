"""``camseg segment`` on the largest image the pixel limit admits (16-bit, 4096 x 4096),
with the heaviest options and with a recipe of TTA and the dense CRF: the command's peak
RSS stays under the ceiling SECURITY.md states."""

from __future__ import annotations

import os
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
    peak = 0.0
    for name, flags in runs.items():
        out = tmp_path / f"out-{name}"
        with open(tmp_path / f"{name}.err", "w+") as err:
            proc = subprocess.Popen([sys.executable, "-m", "camseg", "segment", "--no-progress", "--model", str(model),
                                     "--data", str(data), "--out", str(out), *flags],
                                    stdout=subprocess.DEVNULL, stderr=err, env=_env())
            _, status, usage = os.wait4(proc.pid, 0)  # this command's own peak, not any other child's
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            assert proc.returncode == 0, (name, err.read()[-2000:])
        assert (out / "masks" / "big.png").is_file(), name
        peak = max(peak, usage.ru_maxrss / 1024)
    print(f"camseg segment peak RSS {peak:.0f} MiB")
    assert peak < CEILING_MIB, f"camseg segment peak RSS {peak:.0f} MiB"


def _env() -> dict[str, str]:
    return {**os.environ, "CAMSEG_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
