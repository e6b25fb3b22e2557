"""Explain throughput of an imported ONNX classifier against the same network served as
a camseg model, measured in the same run.

What is measured
----------------
One camseg classifier is trained briefly on synthetic ROIs (or taken from ``--weights
MODEL_DIR``, a camseg model directory) and exported to ONNX. Its ``model.onnx`` is then
copied into a second folder with a ``camseg-model.json`` and no ``model.pt``, so camseg
loads it as an imported model: ONNX Runtime classifies, and the graph converted node
by node into torch (``camseg.models.onnxgraph``) gives Grad-CAM real gradients. Both load
through ``camseg.pipeline.run.LoadedModel.load`` and explain through
``camseg.pipeline.run.run(..., Options(threshold=None))``: the work of one Explain call
(prepare, heatmaps at each image's size), without the transport.

Rows (images per second, ``--batch`` images per call):

* camseg, one ONNX pass (baseline): the default Explain path of a camseg model: its
  export carries the last stage's activations and the head weight, so Grad-CAM comes
  from one ONNX Runtime pass in closed form;
* camseg, torch: the same model's torch path (closed-form gradient at the last stage);
* imported, Grad-CAM: the converted graph, forward to the layer, backward from the
  score (the only path a foreign graph has);
* imported, Score-CAM: gradient-free, one ONNX Runtime pass per channel (``--scorecam
  0`` skips it).

Each sample runs a call enough times to last ``--min-sample-ms``; the number is the
median over ``--repeats`` samples, taken in ``--rounds`` interleaved rounds so a drift
in clock speed hits every row alike. Equality: max |difference| of the imported
model's Grad-CAM maps against the camseg model's on the same images.

How to run
----------
From the repository root: ``python bench/imported_bench.py`` (resnet, 64 px, batch 16,
2 threads; under two minutes on two idle cores). It prints a table and writes
``bench/results/imported_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from camseg.data.folder import FolderDataset
from camseg.data.synth import SynthConfig, synthesize
from camseg.heat.methods import CamMethod
from camseg.models.export import export_model
from camseg.models.modelconfig import CONFIG_FILE, from_metadata
from camseg.models.modeldir import ONNX_FILE, read_metadata
from camseg.models.training import TrainConfig, train_from_folder
from camseg.pipeline.options import Engine, Options
from camseg.pipeline.run import LoadedModel, run

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "imported_bench.json"


def make_models(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path]:
    """A camseg model directory, its imported twin and a data set."""
    if args.weights is not None:
        camseg_dir = Path(args.weights)
        data = Path(read_metadata(camseg_dir).get("data", {}).get("path", ""))
    else:
        data = synthesize(work / "data", SynthConfig(n=args.train_images, size=args.size, seed=0))
        camseg_dir = work / "camseg"
        train_from_folder(data, args.arch, camseg_dir, TrainConfig(epochs=1, batch_size=32, seed=0),
                          input_size=args.size, channels=1, width=args.width)
    if not (camseg_dir / ONNX_FILE).is_file():
        export_model(camseg_dir, n_images=8, providers="CPUExecutionProvider")
    imported = work / "imported"
    imported.mkdir()
    shutil.copy(camseg_dir / ONNX_FILE, imported / ONNX_FILE)
    cfg = from_metadata(read_metadata(camseg_dir))  # the same facts, as a config file; its default layer
    (imported / CONFIG_FILE).write_text(cfg.model_copy(update={"cam": cfg.cam.model_copy(
        update={"layer": None})}).to_json())
    return camseg_dir, imported, data


def timed(fn: Callable[[], object], min_ms: float) -> float:
    """Seconds per call over enough calls to last ``min_ms``."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed * 1000 >= min_ms:
            return elapsed / calls


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--arch", default="resnet")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--weights", type=Path, default=None, help="a camseg model directory instead of training one")
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="samples per row and round")
    p.add_argument("--min-sample-ms", type=float, default=400.0)
    p.add_argument("--scorecam", type=int, default=1, help="0 skips the Score-CAM row")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="camseg-imported-bench-") as tmp:
        camseg_dir, imported_dir, data = make_models(args, Path(tmp))
        own = LoadedModel.load(camseg_dir, providers="CPUExecutionProvider", threads=args.threads)
        imp = LoadedModel.load(imported_dir, providers="CPUExecutionProvider", threads=args.threads)
        if imp.network is None:
            raise SystemExit(f"the imported graph has no gradient path: {imp.unavailable}")
        ds = FolderDataset.open(data)
        idx = (ds.subset("test") or list(range(len(ds))))[: args.batch]
        images = [ds.load(i)[0] for i in idx]
        rows: dict[str, Callable[[], object]] = {
            "camseg, one ONNX pass (baseline)": lambda: run(own, images, Options(threshold=None, engine=Engine.ONNX)),
            "camseg, torch": lambda: run(own, images, Options(threshold=None, engine=Engine.TORCH)),
            "imported, Grad-CAM (converted graph)": lambda: run(imp, images, Options(threshold=None)),
        }
        if args.scorecam:
            rows["imported, Score-CAM (ONNX Runtime)"] = lambda: run(
                imp, images, Options(method=CamMethod.SCORECAM, threshold=None))
        a = run(own, images, Options(threshold=None, engine=Engine.TORCH))
        b = run(imp, images, Options(threshold=None))
        max_diff = max(float((x.heatmap - y.heatmap).abs().max()) for x, y in zip(a.items, b.items, strict=True))
        for fn in rows.values():  # warm-up
            fn()
        samples: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, fn in rows.items():
                for _ in range(args.repeats):
                    samples[name].append(timed(fn, args.min_sample_ms))
        per_s = {name: args.batch / statistics.median(s) for name, s in samples.items()}
        base = per_s["camseg, one ONNX pass (baseline)"]
        table = Table(title=f"Explain, {args.batch} images per call ({own.meta.get('architecture')}, "
                            f"{args.size} px, {args.threads} threads)")
        for col in ("path", "images/s", "vs baseline"):
            table.add_column(col, justify="left" if col == "path" else "right")
        for name, v in per_s.items():
            table.add_row(name, f"{v:.1f}", f"{v / base:.2f}x")
        console.print(table)
        console.print(f"max |Grad-CAM imported - camseg| = {max_diff:.2e}; layers {b.layers} vs {a.layers}")
        report: dict[str, Any] = {
            "environment": {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0]},
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "architecture": own.meta.get("architecture"),
            "imported_layer": b.layers[0], "camseg_layer": a.layers[0],
            "images_per_second": per_s,
            "ratio_to_baseline": {k: v / base for k, v in per_s.items()},
            "samples_seconds_per_call": samples,
            "max_abs_diff_gradcam": max_diff,
            "parity_at_load": imp.meta.get("parity"),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    console.print(f"wrote {args.out}")
    return 0 if np.isfinite(max_diff) else 1


if __name__ == "__main__":
    raise SystemExit(main())
