"""``camseg evaluate``: Dice over methods, layers and thresholds, chosen on one split and
reported on another; with ``--bounds``, beside a floor (a centred disk chosen on the
select split) and a ceiling (a U-Net trained on the true masks with the classifier's
epoch budget). The ceiling costs a training run, so it is off by default; the demo
always shows both."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from camseg.app.console import progress_bars
from camseg.core.settings import Settings
from camseg.data.folder import SPLITS
from camseg.heat.cam import METHODS
from camseg.pipeline.run import LoadedModel
from camseg.study.bounds import ceiling_config, dataset_bounds
from camseg.study.evaluation import DEFAULT_RULES, evaluate_dice


def add_arguments(ev: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    ev.add_argument("--model", type=Path, required=True)
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--select", default="val", choices=SPLITS, help="split the settings are chosen on")
    ev.add_argument("--report", default="test", choices=SPLITS, help="split the Dice is reported on")
    ev.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ev.add_argument("--layers", nargs="+", default=None)
    ev.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES))
    ev.add_argument("--out", type=Path, default=None, help="write report.json, report.md and the Dice curves here")
    ev.add_argument("--overwrite", action="store_true")
    ev.add_argument("--top", type=int, default=15, help="rows to print")
    ev.add_argument("--bounds", action=argparse.BooleanOptionalAction, default=False,
                    help="show the Dice beside a floor (centred disk) and a ceiling (a U-Net trained on the true "
                         "masks: a training run)")
    ev.add_argument("--ceiling-epochs", type=int, default=None,
                    help="the ceiling's epochs (default: the classifier's)")
    ev.add_argument("--ceiling-base", type=int, default=16, help="the ceiling U-Net's first width")


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    with progress_bars(progress) as bars:
        model = LoadedModel.load(args.model, onnx=False, max_bytes=settings.max_model_bytes)
        bounds = None
        if args.bounds:
            epochs = args.ceiling_epochs or int(model.meta.get("training", {}).get("epochs") or 20)
            bounds = dataset_bounds(args.data, model.input_hw, model.channels, select=args.select, report=args.report,
                                    cfg=ceiling_config(epochs, base=args.ceiling_base), on_progress=bars)
        report = evaluate_dice(model, args.data, select=args.select, report=args.report, methods=args.methods,
                               layers=args.layers, rules=args.rules, out=args.out, overwrite=args.overwrite,
                               bounds=bounds, on_progress=bars)
    console = Console()
    for note in report.notes:
        console.print(f"note: {note}")
    table = Table(title=f"mean Dice over {report.n_report} tumor ROIs ({report.report_split} split, gated); "
                        f"for reading: choices are made on {report.select_split}")
    for col in ("method", "layer", "threshold", "largest CC", "mean Dice"):
        table.add_column(col, justify="right" if col == "mean Dice" else "left")
    for r in sorted(report.report_rows, key=lambda r: -r.mean_dice)[: args.top]:
        table.add_row(r.method, r.layer, r.rule, "yes" if r.largest else "no", f"{r.mean_dice:.4f}")
    console.print(table)
    base, best = report.paper, report.best
    console.print(f"paper baseline (Grad-CAM@{base.layer}, t={base.rule} chosen on {report.select_split}): "
                  f"{base.mean_dice:.4f}; best ({best.label}, chosen on {report.select_split}): "
                  f"{best.mean_dice:.4f} on {report.report_split}")
    if report.bounds is not None:
        b = report.bounds
        console.print(f"floor ({b.floor_label}): {b.floor:.4f}; ceiling ({b.ceiling_label}): {b.ceiling:.4f}; "
                      f"position of the best: {b.position(best.mean_dice):.3f}")
    if args.out:
        console.print(f"report: {args.out / 'report.md'}")
    return 0
