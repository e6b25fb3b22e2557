"""``camseg evaluate-whole``: a model slid over the whole images of a folder data set
(threshold and gate chosen on val, scored on test) by Dice on the images with a lesion,
lesion FROC, image AUC and false area on normals, beside the floor (the better of the
empty and the tissue mask) and, with ``--ceiling``, a supervised U-Net slid the same way."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from camseg.app.console import progress_bars
from camseg.core.errors import InvalidInputError
from camseg.core.outdir import fresh_dir
from camseg.core.settings import Settings
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.whole import Tiling, Whole
from camseg.study.bounds import load_ceiling
from camseg.study.wholeeval import whole_ceiling, whole_study


def add_arguments(ev: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    ev.add_argument("--model", type=Path, required=True)
    ev.add_argument("--data", type=Path, required=True,
                    help="a folder data set of whole images with val and test splits")
    ev.add_argument("--ceiling", type=Path, default=None,
                    help="a saved ceiling (a U-Net trained on the true masks: camseg evaluate --bounds, the demo's "
                         "ceiling/) to slide beside the model")
    ev.add_argument("--scale", type=float, default=None, help="source pixels per model pixel (default: the model's)")
    ev.add_argument("--overlap", type=float, default=0.5, help="share of a tile its neighbour overlaps")
    ev.add_argument("--out", type=Path, default=None, help="write whole.json, whole.md, froc.png and study.json here")
    ev.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    tiling = Tiling(mode=Whole.ALWAYS, scale=args.scale, overlap=args.overlap)
    if args.out is not None and args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise InvalidInputError(f"{args.out}: already exists and is not empty (pass --overwrite to replace it)")
    with progress_bars(progress) as bars:
        model = LoadedModel.load(args.model, max_bytes=settings.max_model_bytes)
        ceiling = None
        if args.ceiling is not None:
            student, _ = load_ceiling(args.ceiling)
            ceiling = whole_ceiling(model, args.data, student, tiling=tiling, on_progress=bars)
        study, _ = whole_study(model, args.data, ceiling=ceiling, tiling=tiling, name=args.model.name,
                               on_progress=bars)
    console = Console()
    s = study.report.summary()
    table = Table(title=f"whole images: {s['images']} test images, {s['with_lesion']} with a lesion "
                        f"({study.choice.label}, chosen on val)")
    for col in ("", "Dice (lesion images)", "FROC @0.25", "@0.5", "@1", "@2", "@4", "image AUC", "false area"):
        table.add_column(col, justify="left" if not col else "right")

    def row(name: str, summ: dict[str, Any]) -> None:
        at = (summ["froc"] or {}).get("at_rates", {})
        table.add_row(name, f"{summ['mean_dice']:.4f}", *(f"{at.get(k, float('nan')):.3f}"
                                                           for k in ("0.25", "0.5", "1", "2", "4")),
                      f"{summ['auc']:.3f}", f"{summ['false_fraction']:.4f}")

    row("camseg", s)
    if study.ceiling is not None:
        row("ceiling", study.ceiling.summary())
    console.print(table)
    b = study.bounds
    console.print(f"floor ({b.floor_label}): {b.floor:.4f}; ceiling: {b.ceiling:.4f}; "
                  f"position: {b.position(study.report.mean_dice):.3f}")
    for note in study.report.notes:
        console.print(f"note: {note}")
    if args.out is not None:
        out = fresh_dir(args.out, "camseg evaluate-whole")
        study.report.write(out)
        (out / "study.json").write_text(json.dumps(study.to_dict(), indent=2, default=str) + "\n")
        console.print(f"report: {out / 'whole.md'}")
    return 0
