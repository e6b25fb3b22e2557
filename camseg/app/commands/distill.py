"""``camseg distill``: train a segmentation network on the model's heatmap pseudo-labels
(the train split's images only) and save it with the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from camseg.app.console import progress_bars
from camseg.core.settings import Settings
from camseg.heat.methods import Segmenter
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.student import DistillConfig
from camseg.study.recipe import make_distiller


def add_arguments(ds: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    ds.add_argument("--model", type=Path, required=True)
    ds.add_argument("--data", type=Path, required=True)
    ds.add_argument("--epochs", type=int, default=25)
    ds.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    model = LoadedModel.load(args.model, providers=settings.ort_providers, threads=settings.torch_threads,
                             max_bytes=settings.max_model_bytes)
    model.require_trained("camseg distill")
    heat = model.default_options()  # the recipe's heatmaps, or the defaults
    if heat.method is Segmenter.DISTILLED:  # a student learns from the CAMs its predecessor learnt from
        recorded = model.student.meta.get("heat_options") if model.student is not None else None
        heat = Options.from_record(recorded) if recorded else Options()
    with progress_bars(progress) as bars:
        distiller = make_distiller(args.data, DistillConfig(epochs=args.epochs, seed=args.seed), on_progress=bars)
        loaded = distiller(model, heat)
    assert loaded is not None and loaded.student is not None
    par = loaded.student.meta["onnx"]["parity"]["max_abs_diff_probabilities"]
    print(f"{args.model}: student.pt, student.onnx (parity {par:.1e}), student.json; "
          "segment with --method distilled")
    return 0
