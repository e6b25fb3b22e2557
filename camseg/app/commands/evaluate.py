"""``camseg evaluate``: Dice over methods, layers and thresholds, chosen on one split and
reported on another."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from camseg.app.console import progress_bars
from camseg.core.settings import Settings
from camseg.data.folder import SPLITS
from camseg.heat.cam import METHODS
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


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    with progress_bars(progress) as bars:
        report = evaluate_dice(args.model, args.data, select=args.select, report=args.report, methods=args.methods,
                               layers=args.layers, rules=args.rules, out=args.out, overwrite=args.overwrite,
                               on_progress=bars)
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
    if args.out:
        console.print(f"report: {args.out / 'report.md'}")
    return 0
