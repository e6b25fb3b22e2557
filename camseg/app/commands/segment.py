"""``camseg segment``: heatmap masks for every image of a data set, or for every DICOM
series and NRRD/NIfTI volume under a path. Images larger than the model's field of view
by the whole-image factor (whole mammograms) are segmented whole unless ``--whole``
says otherwise."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from camseg.app.console import progress_bars
from camseg.app.parsing import add_tiling_arguments
from camseg.bulk import batch
from camseg.bulk.segment import segment_folder
from camseg.core.errors import InvalidInputError
from camseg.core.settings import Settings
from camseg.heat.methods import METHOD_CHOICES
from camseg.heat.refine import REFINERS
from camseg.pipeline.options import Choices, tiling_of
from camseg.pipeline.recipe_record import RECIPE_FILE
from camseg.pipeline.run import LoadedModel


def add_arguments(g: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    g.add_argument("--model", type=Path, required=True)
    g.add_argument("--data", type=Path, required=True,
                   help="a folder data set (labels.csv), or DICOM files / NRRD / NIfTI volumes (a file or a folder)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--method", default=None, choices=METHOD_CHOICES,
                   help="default: the model's recipe (recipe.json), else its config's method, else gradcam")
    g.add_argument("--threshold", default=None, help="otsu, a percentile like p90, or a number in [0, 1] "
                                                     "(default: the recipe's, else otsu)")
    g.add_argument("--layer", default=None)
    g.add_argument("--tta", type=int, default=None, choices=(1, 4, 8),
                   help="average heatmaps over 1, 4 or 8 flips and quarter turns")
    g.add_argument("--refine", default=None, choices=REFINERS, help="refine masks from the image")
    g.add_argument("--decision-threshold", type=float, default=None,
                   help="tumor probability from which the gate calls an ROI tumor (default: the most probable class)")
    g.add_argument("--no-recipe", action="store_true", help="ignore the model's recipe: the defaults and flags only")
    g.add_argument("--split", default=None, choices=("train", "val", "test"))
    g.add_argument("--no-gate", action="store_true", help="segment ROIs the classifier calls normal too")
    g.add_argument("--largest", action="store_true", help="keep the largest connected component")
    g.add_argument("--fill-holes", action="store_true")
    g.add_argument("--overlays", action="store_true", help="write heatmap overlays")
    g.add_argument("--format", default="auto", choices=("auto", "seg", "nifti", "nrrd"),
                   help="series: DICOM SEG or a mask volume with the source's geometry (auto: SEG for DICOM, the "
                        "source's format for volumes)")
    g.add_argument("--window", default=None, help="series: DICOM windowing (default: CAMSEG_DICOM_WINDOW, auto)")
    g.add_argument("--heatmaps", action="store_true", help="series: the heatmaps as a float volume beside the mask")
    g.add_argument("--overwrite", action="store_true")
    add_tiling_arguments(g)


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    model = LoadedModel.load(args.model, providers=settings.ort_providers, threads=settings.torch_threads,
                             max_bytes=settings.max_model_bytes)
    # flags left off are not choices: False, not None, would be a choice
    opts, from_recipe = model.options_for(Choices(
        method=args.method, threshold=args.threshold, layer=args.layer, tta=args.tta, refine=args.refine,
        decision_threshold=args.decision_threshold, gate=False if args.no_gate else None,
        largest=args.largest or None, fill_holes=args.fill_holes or None, no_recipe=args.no_recipe))
    opts = replace(opts, tiling=tiling_of(args.whole, args.scale, args.overlap))
    if from_recipe:
        print(f"{args.model}: the model's recipe ({RECIPE_FILE})")
    if not (args.data / "labels.csv").is_file():
        return _segment_series(args, model, opts, settings, progress)
    with progress_bars(progress) as bars:
        summary = segment_folder(model, args.data, args.out, opts, split=args.split, overlays=args.overlays,
                                 overwrite=args.overwrite, on_progress=bars, max_pixels=settings.max_pixels,
                                 max_whole_pixels=settings.max_whole_pixels)
    whole = (f", {summary['whole_images']} whole ({summary['lesions']} lesion candidates)"
             if summary.get("whole_images") else "")
    print(f"{args.out / 'results.csv'}: {summary['images']} images{whole}, accuracy {summary['accuracy']:.4f}, "
          f"mean Dice {summary['mean_dice']:.4f} over {summary['with_truth']} truth masks"
          + (" (reused: same inputs)" if summary["reused"] else ""))
    return 0


def _segment_series(args: argparse.Namespace, model: Any, opts: Any, settings: Settings, progress: bool) -> int:
    """DICOM series and volumes: the bulk job's plan and parts, run here."""
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        if not (args.overwrite and (out / batch.MANIFEST).is_file()):
            raise InvalidInputError(f"{out}: already exists and is not empty"
                                    + (" (pass --overwrite to replace it)" if (out / batch.MANIFEST).is_file()
                                       else ""))
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    job = batch.create_series_job(out.parent, args.model, args.data, options=opts, output=args.format,
                                  heatmaps=args.heatmaps, windowing=args.window or settings.dicom_window,
                                  job_id=out.name, max_pixels=settings.max_pixels,
                                  max_whole_pixels=settings.max_whole_pixels)
    with progress_bars(progress) as bars:
        summary = batch.run_local(job, model, on_progress=bars)
    print(f"{out / batch.RESULTS}: {summary['segmented']} of {summary['series']} series segmented "
          f"({summary['images']} slices, {summary['tumor_series']} with tumor"
          + (f", {summary['whole_slices']} whole, {summary['lesions']} lesion candidates"
             if summary.get("whole_slices") else "") + f"), {summary['failed']} failed")
    for f in summary["failures"][:20]:
        print(f"  {f['id']}: {f['error']}")
    return 0
