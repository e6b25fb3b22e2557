"""``camseg recipe``: choose a model's recipe on val, report it on test and record it in
the model directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from camseg.app.console import progress_bars
from camseg.core.settings import Settings
from camseg.heat.refine import REFINERS
from camseg.pipeline.recipe_record import save_recipe
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.student import DistillConfig
from camseg.study.evaluation import evaluate_dice
from camseg.study.recipe import RecipeConfig, choose_recipe, make_distiller


def add_arguments(rc: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    rc.add_argument("--model", type=Path, required=True)
    rc.add_argument("--data", type=Path, required=True)
    rc.add_argument("--refiners", nargs="*", default=[r for r in REFINERS if r != "none"],
                    choices=[r for r in REFINERS if r != "none"])
    rc.add_argument("--distill-epochs", type=int, default=25, help="0 skips distillation")
    rc.add_argument("--dry-run", action="store_true", help="report only; leave the model directory as it is")


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    model = LoadedModel.load(args.model, providers=settings.ort_providers, threads=settings.torch_threads,
                             max_bytes=settings.max_model_bytes)
    model.require_trained("camseg recipe")
    with progress_bars(progress) as bars:
        report = evaluate_dice(model, args.data, on_progress=bars)
        distiller = None
        if args.distill_epochs > 0 and not args.dry_run:
            distiller = make_distiller(args.data, DistillConfig(epochs=args.distill_epochs), on_progress=bars)
        recipe = choose_recipe(model, args.data, report.best.options, paper=report.paper.options,
                               cfg=RecipeConfig(refiners=tuple(args.refiners)), distiller=distiller,
                               on_progress=bars)
    table = Table(title=f"chosen on {recipe.select_split}, reported on {recipe.report_split} "
                        "(Dice over all tumor ROIs, gated)")
    for col in ("step", "kept", "val Dice", "test Dice", "detected", "false area"):
        table.add_column(col)
    for st in recipe.steps:
        table.add_row(st.name, "yes" if st.kept else "", f"{st.select.all_tumors:.4f}",
                      f"{st.report.all_tumors:.4f}", f"{st.report.detected:.4f}", f"{st.report.false_area:.4f}")
    if recipe.label_free_report is not None:
        table.add_row("label-free", "", f"{recipe.label_free_select.all_tumors:.4f}" if recipe.label_free_select
                      else "", f"{recipe.label_free_report.all_tumors:.4f}",
                      f"{recipe.label_free_report.detected:.4f}", f"{recipe.label_free_report.false_area:.4f}")
    Console().print(table)
    if not args.dry_run:
        print(f"recipe: {save_recipe(args.model, recipe)}")
    return 0
