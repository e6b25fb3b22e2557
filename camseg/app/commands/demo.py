"""``camseg demo``: the whole method on synthetic data, with a report."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from camseg.app.adapters import adapters
from camseg.app.console import progress_bars
from camseg.app.demo import PROFILES, run_demo
from camseg.core.settings import Settings
from camseg.models import ARCHITECTURES


def add_arguments(d: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    d.add_argument("--profile", default="demo", choices=("demo", "quality", "paper"),
                   help="quality: all six architectures, more ROIs and epochs and three seeds (make quality); paper: "
                        "the paper's comparison alone, all six with no recipes (make paper); flags below override")
    d.add_argument("--out", type=Path, default=None, help="default: demo-out, quality-out or paper-out")
    d.add_argument("--n", type=int, default=None)
    d.add_argument("--size", type=int, default=None)
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--archs", nargs="+", default=None, choices=sorted(ARCHITECTURES))
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--seeds", type=int, nargs="*", default=None, help="more seeds for the final row")
    d.add_argument("--distill-epochs", type=int, default=None, help="0 skips distillation")
    d.add_argument("--no-recipe", action="store_true", help="skip the recipe step")
    d.add_argument("--no-dilation", action="store_true", help="keep the last stage strided (a coarser CAM layer)")
    d.add_argument("--no-service", action="store_true", help="skip the steps that start the service and workers")


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    demo_cfg = PROFILES[args.profile]
    given = {"out": args.out, "n": args.n, "size": args.size, "epochs": args.epochs, "seed": args.seed,
             "archs": tuple(args.archs) if args.archs else None,
             "seeds": tuple(args.seeds) if args.seeds is not None else None,
             "distill_epochs": args.distill_epochs, "real_cache": settings.data_cache}
    demo_cfg = replace(demo_cfg, **{k: v for k, v in given.items() if v is not None})
    if args.no_recipe or args.no_dilation:
        demo_cfg = replace(demo_cfg, recipe=demo_cfg.recipe and not args.no_recipe,
                           dilated=demo_cfg.dilated and not args.no_dilation)
    steps = [] if args.no_service else [s for m in adapters() for s in m.demo_steps(settings)]
    with progress_bars(progress) as bars:
        report = run_demo(demo_cfg, on_progress=bars, steps=steps)
    print(f"report: {report}")
    return 0
