"""``camseg filtered-retrain``: retrain on heatmap-filtered images (the paper's evaluation)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from camseg.app.console import progress_bars
from camseg.core.settings import Settings
from camseg.heat.cam import METHODS
from camseg.models.modeldir import read_metadata, write_json
from camseg.models.training import TrainConfig
from camseg.study.retraining import FILTERS, filtered_retrain


def add_arguments(f: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    f.add_argument("--model", type=Path, required=True)
    f.add_argument("--data", type=Path, required=True)
    f.add_argument("--out", type=Path, default=None, help="keep each run and results.json here (resumable)")
    f.add_argument("--thresholds", nargs="+", type=float, default=[0.5])
    f.add_argument("--filters", nargs="+", default=list(FILTERS), choices=FILTERS)
    f.add_argument("--method", default="gradcam", choices=METHODS)
    f.add_argument("--epochs", type=int, default=None)
    f.add_argument("--json", type=Path, default=None)


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    cfg = TrainConfig(**read_metadata(args.model).get("training", {}))
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)
    with progress_bars(progress) as bars:
        results = filtered_retrain(args.model, args.data, args.out, thresholds=args.thresholds,
                                   filters=args.filters, method=args.method, cfg=cfg, on_progress=bars)
    table = Table(title="filtered retraining: test accuracy and ROC AUC")
    for col in ("filter", "threshold", "hot fraction", "accuracy", "AUC"):
        table.add_column(col)
    for r in results:
        table.add_row(r.filter, "" if r.threshold is None else f"{r.threshold:g}", f"{r.hot_fraction:.3f}",
                      f"{r.accuracy:.4f}", f"{r.auc:.4f}")
    Console().print(table)
    if args.json:
        write_json(args.json, [asdict(r) for r in results])
    return 0
