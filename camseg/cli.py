"""The ``camseg`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camseg import __version__
from camseg.cam import parse_method
from camseg.errors import CamsegError
from camseg.settings import Settings

logger = logging.getLogger("camseg")


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
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


def _parser() -> argparse.ArgumentParser:
    from camseg.cam import METHODS
    from camseg.data.folder import SPLITS
    from camseg.evaluation import DEFAULT_RULES
    from camseg.models import ARCHITECTURES
    from camseg.retraining import FILTERS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p = argparse.ArgumentParser(prog="camseg", description="Tumor segmentation from CNN classifier heatmaps.",
                                parents=[common])
    p.add_argument("--version", action="version", version=f"camseg {__version__}")
    sub = _Sub(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)

    data = _Sub(sub.add_parser("data", help="make, fetch or convert data sets").add_subparsers(
        dest="data_cmd", required=True, metavar="SOURCE"), common)
    s = data.add_parser("synth", help="synthetic mammogram ROIs with exact masks")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bit-depth", type=int, default=8, choices=(8, 16))
    s.add_argument("--overwrite", action="store_true")
    r = data.add_parser("real", help="pyradiomics' five real test cases, sliced to the folder layout")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--overwrite", action="store_true")
    v = data.add_parser("volumes", help="NRRD/NIfTI image+label pairs, sliced to the folder layout")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "LABEL"), required=True, type=Path)
    v.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    v.add_argument("--overwrite", action="store_true")

    t = sub.add_parser("train", help="train a classifier")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--patience", type=int, default=4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--size", type=int, default=None, help="input size (default: the images' size)")
    t.add_argument("--channels", type=int, default=1, choices=(1, 3))
    t.add_argument("--width", type=int, default=16)

    e = sub.add_parser("export", help="export a trained model to ONNX with a parity check")
    e.add_argument("model_dir", type=Path)
    e.add_argument("--data", type=Path, default=None, help="images for the parity check (default: training data)")

    g = sub.add_parser("segment", help="heatmap masks for every image of a data set")
    g.add_argument("--model", type=Path, required=True)
    g.add_argument("--data", type=Path, required=True)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--method", default="gradcam", choices=METHODS)
    g.add_argument("--threshold", default="otsu", help="otsu, a percentile like p90, or a number in [0, 1]")
    g.add_argument("--layer", default=None)
    g.add_argument("--split", default=None, choices=("train", "val", "test"))
    g.add_argument("--no-gate", action="store_true", help="segment ROIs the classifier calls normal too")
    g.add_argument("--largest", action="store_true", help="keep the largest connected component")
    g.add_argument("--fill-holes", action="store_true")
    g.add_argument("--overlays", action="store_true", help="write heatmap overlays")
    g.add_argument("--overwrite", action="store_true")

    ev = sub.add_parser("evaluate", help="Dice over methods, layers and thresholds: chosen on one split, "
                                         "reported on another")
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

    f = sub.add_parser("filtered-retrain", help="retrain on heatmap-filtered images (the paper's evaluation)")
    f.add_argument("--model", type=Path, required=True)
    f.add_argument("--data", type=Path, required=True)
    f.add_argument("--out", type=Path, default=None, help="keep each run and results.json here (resumable)")
    f.add_argument("--thresholds", nargs="+", type=float, default=[0.5])
    f.add_argument("--filters", nargs="+", default=list(FILTERS), choices=FILTERS)
    f.add_argument("--method", default="gradcam", choices=METHODS)
    f.add_argument("--epochs", type=int, default=None)
    f.add_argument("--json", type=Path, default=None)

    d = sub.add_parser("demo", help="the whole method on synthetic data, with a report")
    d.add_argument("--out", type=Path, default=Path("demo-out"))
    d.add_argument("--n", type=int, default=2000)
    d.add_argument("--size", type=int, default=64)
    d.add_argument("--epochs", type=int, default=20)
    d.add_argument("--archs", nargs="+", default=["resnet", "inception", "densenet", "mobilenet"],
                   choices=sorted(ARCHITECTURES))
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-service", action="store_true", help="skip the steps that start the service and workers")
    for module in _adapters():
        module.register(sub)
    return p


ADAPTER_MODULES = ("services.cli", "jobs.cli")


def _adapters() -> list[Any]:
    """The adapter packages' command modules that are installed (``camseg[serve]``,
    ``camseg[jobs]``); each adds its subcommands and hands ``demo`` its steps."""
    import importlib

    found = []
    for name in ADAPTER_MODULES:
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            logger.debug("%s not available: %s", name, exc)
    return found


class _Sub:
    """Adds the common options to every sub-command, so they work after it too.
    Adapters receive one to add their own commands (``register(sub)``)."""

    def __init__(self, action: argparse._SubParsersAction, common: argparse.ArgumentParser):
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.action.add_parser(name, parents=[self.common], **kwargs)
        return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    _configure(settings, args.verbose)
    progress = not args.no_progress
    try:
        if hasattr(args, "handler"):  # an adapter's command
            code: int = args.handler(args, settings)
            return code
        return _dispatch(args, settings, progress)
    except CamsegError as exc:
        print(f"camseg: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camseg: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    from camseg.console import progress_bars

    if args.command == "data":
        return _data(args, settings)
    if args.command == "train":
        from camseg.training import TrainConfig, train_from_folder

        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                          seed=args.seed)
        with progress_bars(progress) as bars:
            meta = train_from_folder(args.data, args.arch, args.out, cfg, input_size=args.size,
                                     channels=args.channels, width=args.width, on_progress=bars,
                                     device=settings.device)
        m = meta["metrics"]
        print(f"{args.out}: best epoch {m['best_epoch']}, val accuracy {m['val']['val_accuracy']:.4f}, "
              f"val AUC {m['val']['val_auc']:.4f}"
              + (f", test accuracy {m['test']['accuracy']:.4f}, test AUC {m['test']['auc']:.4f}"
                 if "test" in m else ""))
        return 0
    if args.command == "export":
        from camseg.export import export_model

        meta = export_model(args.model_dir, data_dir=args.data, providers=settings.ort_providers)
        par = meta["onnx"]["parity"]
        print(f"{args.model_dir / 'model.onnx'}: parity max |dp| {par['max_abs_diff_probabilities']:.2e} "
              f"on {par['images']} images")
        return 0
    if args.command == "segment":
        from camseg.masks import parse_rule
        from camseg.pipeline import LoadedModel, Options
        from camseg.segment import segment_folder

        opts = Options(method=parse_method(args.method), threshold=parse_rule(args.threshold), layer=args.layer,
                       gate=not args.no_gate, largest=args.largest, fill_holes=args.fill_holes)
        model = LoadedModel.load(args.model, providers=settings.ort_providers, threads=settings.torch_threads)
        with progress_bars(progress) as bars:
            summary = segment_folder(model, args.data, args.out, opts, split=args.split, overlays=args.overlays,
                                     overwrite=args.overwrite, on_progress=bars)
        print(f"{args.out / 'results.csv'}: {summary['images']} images, accuracy {summary['accuracy']:.4f}, "
              f"mean Dice {summary['mean_dice']:.4f} over {summary['with_truth']} truth masks"
              + (" (reused: same inputs)" if summary["reused"] else ""))
        return 0
    if args.command == "evaluate":
        return _evaluate(args, progress)
    if args.command == "filtered-retrain":
        return _filtered(args, progress)
    if args.command == "demo":
        from camseg.demo import DemoConfig, run_demo

        steps = [] if args.no_service else [s for m in _adapters() for s in m.demo_steps(settings)]
        with progress_bars(progress) as bars:
            report = run_demo(DemoConfig(out=args.out, n=args.n, size=args.size, epochs=args.epochs,
                                         archs=tuple(args.archs), seed=args.seed), on_progress=bars, steps=steps)
        print(f"report: {report}")
        return 0
    raise AssertionError(args.command)  # pragma: no cover


def _data(args: argparse.Namespace, settings: Settings) -> int:
    if args.data_cmd == "synth":
        from camseg.data.synth import SynthConfig, synthesize

        out = synthesize(args.out, SynthConfig(n=args.n, size=args.size, seed=args.seed, bit_depth=args.bit_depth),
                         overwrite=args.overwrite)
    elif args.data_cmd == "real":
        from camseg.data.real import build_real_dataset

        out = build_real_dataset(args.out, settings.data_cache, overwrite=args.overwrite)
    else:
        from camseg.data.volumes import convert_volumes

        out = convert_volumes([tuple(p) for p in args.pair], args.out, axis=args.axis, overwrite=args.overwrite)
    from camseg.data.folder import FolderDataset

    ds = FolderDataset.open(out)
    tumor = sum(s.label == len(ds.classes) - 1 for s in ds.samples)
    print(f"{out}: {len(ds)} ROIs ({tumor} {ds.classes[-1]})")
    return 0


def _evaluate(args: argparse.Namespace, progress: bool) -> int:
    from rich.console import Console
    from rich.table import Table

    from camseg.console import progress_bars
    from camseg.evaluation import evaluate_dice

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


def _filtered(args: argparse.Namespace, progress: bool) -> int:
    from dataclasses import asdict, replace

    from rich.console import Console
    from rich.table import Table

    from camseg.console import progress_bars
    from camseg.modeldir import read_metadata, write_json
    from camseg.retraining import filtered_retrain
    from camseg.training import TrainConfig

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
