"""The ``camseg`` command.

Each command is a module of :mod:`camseg.app.commands` (``add_arguments`` and ``run``),
imported only when that command runs or its help is asked: ``camseg --help`` parses with
the names and one-line helps of :data:`COMMANDS` alone. The adapters add theirs
(:mod:`camseg.app.adapters`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from camseg import __version__
from camseg.app.adapters import adapters
from camseg.app.parsing import Subcommands
from camseg.core.errors import CamsegError
from camseg.core.settings import Settings

logger = logging.getLogger("camseg")

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("data", "make, fetch or convert data sets"),
    "train": ("train", "train a classifier"),
    "export": ("export", "export a trained model to ONNX with a parity check"),
    "inspect": ("inspect", "an ONNX classifier's inputs, outputs and CAM layers, and a proposed camseg-model.json "
                           "(bring your own model)"),
    "segment": ("segment", "heatmap masks for every image of a data set, or for every DICOM series and NRRD/NIfTI "
                           "volume under a path"),
    "evaluate": ("evaluate", "Dice over methods, layers and thresholds: chosen on one split, reported on another"),
    "filtered-retrain": ("filtered_retrain", "retrain on heatmap-filtered images (the paper's evaluation)"),
    "recipe": ("recipe", "choose a model's recipe on val (TTA, gate, refinement, distillation), report it on test "
                         "and record it in the model directory"),
    "distill": ("distill", "train a segmentation network on the model's heatmap pseudo-labels (the train split's "
                           "images only) and save it with the model"),
    "evaluate-whole": ("evaluate_whole", "whole images: the classifier slid over them, scored by Dice, lesion FROC "
                                         "and image AUC beside the floor and a ceiling"),
    "evaluate-real": ("evaluate_real", "leave-one-case-out Dice on sliced volumes (ids <case>-s<n>): each case "
                                       "scored by a classifier trained and tuned without it"),
    "demo": ("demo", "the whole method on synthetic data, with a report"),
}
"""Command name -> (module under camseg.app.commands, one-line help)."""


def _configure(settings: Settings, verbose: int) -> None:
    default = getattr(logging, settings.log_level.upper(), logging.WARNING)
    level = {0: default, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("onnx_ir").setLevel(max(level, logging.WARNING))  # pass-manager chatter
    # tifffile logs what it finds wrong in a file: the service sees hostile files daily, and
    # each one is already answered with INVALID_ARGUMENT
    logging.getLogger("tifffile").setLevel(max(level, logging.ERROR))
    if settings.torch_threads:
        # torch reads OMP_NUM_THREADS when it loads: a command that never imports torch
        # (help, health, client) does not pay for importing it to set its threads
        os.environ["OMP_NUM_THREADS"] = str(settings.torch_threads)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(settings.torch_threads)


def _command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``: its first word that is not an option (the common
    options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``camseg`` parser; ``command``'s own arguments are added (and its module
    imported) only for that one command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p = argparse.ArgumentParser(prog="camseg", description="Tumor segmentation from CNN classifier heatmaps.",
                                parents=[common])
    p.add_argument("--version", action="version", version=f"camseg {__version__}")
    sub = Subcommands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)
    for name, (module_name, help_text) in COMMANDS.items():
        parser = sub.add_parser(name, help=help_text)
        if name == command:
            module = importlib.import_module(f"camseg.app.commands.{module_name}")
            module.add_arguments(parser, common)
            parser.set_defaults(run=module.run)
    for module in adapters():
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        settings = Settings.load()  # the one settings tree of this process, passed down
    except CamsegError as exc:  # an unknown CAMSEG_* variable or a bad value, named
        print(f"camseg: error: {exc.message}", file=sys.stderr)
        return 2
    _configure(settings, args.verbose)
    progress = not args.no_progress
    try:
        if hasattr(args, "handler"):  # an adapter's command
            code: int = args.handler(args, settings)
            return code
        code = args.run(args, settings, progress)
        return code
    except CamsegError as exc:
        print(f"camseg: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
