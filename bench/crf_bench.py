"""The dense CRF refiner (camseg's mean field over a local window, in torch) against
pydensecrf2 (Krähenbühl & Koltun's permutohedral-lattice CRF), in one run: Dice against
the truth, seconds and peak memory at a few image sizes.

The case is tests/test_refine.py's: bright disks with CAM-like heatmaps that are too
large and offset, thresholded at 0.5; a larger size is the same case upsampled (edges
and heat scale together). Each measurement runs in a forked child, whose peak RSS
(VmHWM) less its RSS before the work is the method's peak memory. camseg's CRF runs at
the image's own size here (``max_pixels`` above it), banded as it is served.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/crf_bench.py [--sizes 64 256 1024]

Prints a table and writes ``bench/results/crf_bench.json``. pydensecrf2 is optional
(``pip install pydensecrf2``, the ``bench`` extra); without it only camseg's CRF runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from camseg.core.metrics import dice
from camseg.heat.refine import RefineParams, calibrate, refine_masks
from tests.test_refine import disks_with_cams

Case = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def case(size: int, n: int = 6) -> Case:
    images, heats, truth = disks_with_cams(n)
    if size != images.shape[-1]:
        def up(t: torch.Tensor, mode: str) -> torch.Tensor:
            return F.interpolate(t[:, None].float(), size=(size, size), mode=mode)[:, 0]
        images, heats, truth = up(images, "bilinear"), up(heats, "bilinear"), up(truth, "nearest") > 0.5
    return images, heats, heats >= 0.5, truth


def camseg_crf(images: torch.Tensor, heats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return refine_masks(images, heats, masks, "crf", params=RefineParams(max_pixels=1 << 30))


def permutohedral_crf(images: torch.Tensor, heats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The same model with pydensecrf2: the calibrated unary, a Gaussian (smoothness)
    and a bilateral (appearance) kernel of camseg's default weights and sigmas, Potts."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    p = RefineParams()
    prob = calibrate(heats, masks, p).clamp(1e-4, 1 - 1e-4).numpy()
    out = []
    for i in range(images.shape[0]):
        h, w = prob.shape[1:]
        crf = dcrf.DenseCRF2D(w, h, 2)
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1 - prob[i], prob[i]]))))
        crf.addPairwiseGaussian(sxy=p.crf_smoothness_xy, compat=p.crf_smoothness_weight)
        gray = np.clip(images[i].numpy() * 255, 0, 255).astype(np.uint8)
        rgb = np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
        crf.addPairwiseBilateral(sxy=p.crf_appearance_xy, srgb=p.crf_appearance_intensity * 255, rgbim=rgb,
                                 compat=p.crf_appearance_weight)
        q = np.array(crf.inference(p.crf_iterations)).reshape(2, h, w)
        out.append(torch.from_numpy(q[1] > q[0]))
    return torch.stack(out) & masks.flatten(1).any(1)[:, None, None]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def measure(method: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], c: Case) -> dict[str, float]:
    """Dice, seconds and peak MiB of ``method`` on ``c``, in a forked child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            images, heats, masks, truth = c
            before = _rss_kib("VmRSS:")
            t0 = time.perf_counter()
            out = method(images, heats, masks)
            seconds = time.perf_counter() - t0
            result = {"dice": float(dice(out, truth).mean()), "seconds": seconds,
                      "peak_mib": (_rss_kib("VmHWM:") - before) / 1024}
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--out", type=Path, default=Path("bench/results/crf_bench.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    methods: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {"camseg": camseg_crf}
    if importlib.util.find_spec("pydensecrf") is not None:
        methods["pydensecrf2"] = permutohedral_crf
    else:
        print("pydensecrf2 is not installed: camseg's CRF only")
    rows = []
    for size in args.sizes:
        c = case(size)
        base = float(dice(c[2], c[3]).mean())
        for name, method in methods.items():
            r = measure(method, c)
            rows.append({"size": size, "images": c[0].shape[0], "method": name, "mask_dice": base, **r})
            print(f"{size:5d} px  {name:12s} Dice {r['dice']:.3f} (mask {base:.3f})  {r['seconds']:7.2f} s  "
                  f"{r['peak_mib']:7.0f} MiB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": 1, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
