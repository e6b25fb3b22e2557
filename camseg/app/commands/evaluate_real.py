"""``camseg evaluate-real``: leave-one-case-out Dice on sliced volumes, each case scored by
a classifier trained and tuned without it: on whole slices resized to its input
(``--method roi``) or, trained on ROIs of the other cases, slid over whole slices
(``--method whole``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from camseg.app.console import progress_bars
from camseg.core.errors import InvalidInputError
from camseg.core.settings import Settings
from camseg.heat.refine import REFINERS
from camseg.models import ARCHITECTURES
from camseg.study.realeval import leave_one_case_out


def add_arguments(lo: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    lo.add_argument("--data", type=Path, required=True, help="a folder data set of sliced volumes (camseg data real)")
    lo.add_argument("--out", type=Path, required=True, help="folds, figures, report.md and report.json")
    lo.add_argument("--base", type=Path, default=None, help="fine-tune each fold from this model directory")
    lo.add_argument("--arch", default=None, choices=sorted(ARCHITECTURES), help="default: resnet, or the base's")
    lo.add_argument("--epochs", type=int, default=15)
    lo.add_argument("--size", type=int, default=None, help="input size (default: 64, or the base's)")
    lo.add_argument("--refiners", nargs="*", default=["crf"], choices=[r for r in REFINERS if r != "none"])
    lo.add_argument("--distill-epochs", type=int, default=0, help="0 skips distillation")
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--overwrite", action="store_true")
    lo.add_argument("--method", choices=("roi", "whole"), default="roi",
                    help="roi: each slice resized to the classifier's input; whole: trained on ROIs cut from the "
                         "other cases, slid over the held-out case's whole slices, beside a floor and a ceiling")
    whole = lo.add_argument_group("--method whole")
    whole.add_argument("--scale", type=float, default=1.0, help="ROIs: source pixels per model pixel")
    whole.add_argument("--per-lesion", type=int, default=8, help="ROIs per lesion")
    whole.add_argument("--normal-ratio", type=float, default=2.0, help="normal ROIs per lesion ROI")
    whole.add_argument("--ceiling-epochs", type=int, default=None, help="the ceiling U-Net's (default: --epochs)")


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    if args.method == "whole":
        return _whole(args, progress)
    with progress_bars(progress) as bars:
        report = leave_one_case_out(args.data, args.out, base_model=args.base, arch=args.arch, epochs=args.epochs,
                                    size=args.size, refiners=tuple(args.refiners),
                                    distill_epochs=args.distill_epochs, seed=args.seed, overwrite=args.overwrite,
                                    on_progress=bars)
    for c in report.cases:
        print(f"{c.case}: {c.n_lesion} lesion slices, Dice {c.recipe.all_tumors:.3f} "
              f"(paper setting {c.paper.all_tumors:.3f}, label-free {c.label_free.all_tumors:.3f})")
    m = report.means["recipe"]
    print(f"mean Dice {m.over_slices:.3f} over {m.n_slices} lesion slices, {m.over_cases:.3f} over {m.n_cases} "
          f"cases; report: {args.out / 'report.md'}")
    return 0


def _whole(args: argparse.Namespace, progress: bool) -> int:
    from camseg.study.realwhole import leave_one_case_out_whole

    if args.base is not None or args.distill_epochs:
        raise InvalidInputError("--base and --distill-epochs are for --method roi")
    with progress_bars(progress) as bars:
        report = leave_one_case_out_whole(args.data, args.out, arch=args.arch, epochs=args.epochs,
                                          scale=args.scale, size=args.size or 64, per_lesion=args.per_lesion,
                                          normal_ratio=args.normal_ratio, ceiling_epochs=args.ceiling_epochs,
                                          seed=args.seed, overwrite=args.overwrite, on_progress=bars)
    for f in report.folds:
        b = f.bounds
        print(f"{f.case}: {f.n_lesion} lesion slices, whole-slice Dice {f.camseg.mean_dice:.3f} (floor "
              f"{b.floor:.3f}, ceiling {b.ceiling:.3f})")
    s = report.summary()
    print(f"pooled whole-slice Dice {s['camseg']['mean_dice']:.3f} over {s['camseg']['with_lesion']} lesion slices "
          f"(floor {s['bounds']['floor']:.3f}, ceiling {s['bounds']['ceiling']:.3f}, position {s['position']:.3f}); "
          f"report: {args.out / 'report.md'}")
    return 0
