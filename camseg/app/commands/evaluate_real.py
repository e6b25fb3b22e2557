"""``camseg evaluate-real``: leave-one-case-out Dice on sliced volumes, each case scored by
a classifier trained and tuned without it."""

from __future__ import annotations

import argparse
from pathlib import Path

from camseg.app.console import progress_bars
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


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
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
