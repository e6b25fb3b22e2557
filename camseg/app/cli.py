"""The ``camseg`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from camseg import __version__
from camseg.core.errors import CamsegError
from camseg.core.settings import Settings

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
    from camseg.data.folder import SPLITS
    from camseg.heat.cam import METHODS
    from camseg.heat.refine import REFINERS
    from camseg.models import ARCHITECTURES
    from camseg.pipeline.options import METHOD_CHOICES
    from camseg.study.evaluation import DEFAULT_RULES
    from camseg.study.retraining import FILTERS

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

    ins = sub.add_parser("inspect", help="an ONNX classifier's inputs, outputs and CAM layers, and a proposed "
                                         "camseg-model.json (bring your own model)")
    ins.add_argument("onnx_file", type=Path, metavar="MODEL.onnx")
    ins.add_argument("--write", action="store_true", help="write the proposed camseg-model.json beside the model")
    ins.add_argument("--overwrite", action="store_true", help="with --write, replace an existing config")
    ins.add_argument("--json", action="store_true", help="print the inspection as JSON")

    g = sub.add_parser("segment", help="heatmap masks for every image of a data set, or for every DICOM series "
                                       "and NRRD/NIfTI volume under a path")
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

    rc = sub.add_parser("recipe", help="choose a model's recipe on val (TTA, gate, refinement, distillation), "
                                       "report it on test and record it in the model directory")
    rc.add_argument("--model", type=Path, required=True)
    rc.add_argument("--data", type=Path, required=True)
    rc.add_argument("--refiners", nargs="*", default=[r for r in REFINERS if r != "none"],
                    choices=[r for r in REFINERS if r != "none"])
    rc.add_argument("--distill-epochs", type=int, default=25, help="0 skips distillation")
    rc.add_argument("--dry-run", action="store_true", help="report only; leave the model directory as it is")

    ds = sub.add_parser("distill", help="train a segmentation network on the model's heatmap pseudo-labels "
                                        "(the train split's images only) and save it with the model")
    ds.add_argument("--model", type=Path, required=True)
    ds.add_argument("--data", type=Path, required=True)
    ds.add_argument("--epochs", type=int, default=25)
    ds.add_argument("--seed", type=int, default=0)

    lo = sub.add_parser("evaluate-real", help="leave-one-case-out Dice on sliced volumes (ids <case>-s<n>): "
                                              "each case scored by a classifier trained and tuned without it")
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

    d = sub.add_parser("demo", help="the whole method on synthetic data, with a report")
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


def _segment_series(args: argparse.Namespace, model: Any, opts: Any, settings: Settings, progress: bool) -> int:
    """``camseg segment`` of DICOM series and volumes: the bulk job's plan and parts, run here."""
    import shutil

    from camseg.app.console import progress_bars
    from camseg.bulk import batch
    from camseg.core.errors import InvalidInputError

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
                                  job_id=out.name)
    with progress_bars(progress) as bars:
        summary = batch.run_local(job, model, on_progress=bars)
    print(f"{out / batch.RESULTS}: {summary['segmented']} of {summary['series']} series segmented "
          f"({summary['images']} slices, {summary['tumor_series']} with tumor), {summary['failed']} failed")
    for f in summary["failures"][:20]:
        print(f"  {f['id']}: {f['error']}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from camseg.models.imported import inspect_model, write_proposal

    found = inspect_model(args.onnx_file)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
    else:
        print(f"{found.path}")
        print("inputs:")
        for i in found.inputs:
            print(f"  {i.describe()}")
        print("outputs:")
        for o in found.outputs:
            print(f"  {o.describe()}")
        print("candidate CAM layers (last first):")
        for name, op, shape in found.layers:
            dims = "x".join(map(str, shape[1:])) if shape else "?"
            print(f"  {name:40s} {op:20s} {dims}")
        if found.unsupported:
            print(f"operators without a gradient path: {', '.join(found.unsupported)} "
                  "(Classify and Score-CAM still work)")
        print("proposed camseg-model.json:")
        print(found.proposal.to_json(), end="")
        for note in found.notes:
            print(f"note: {note}")
    if args.write:
        print(f"wrote {write_proposal(found, overwrite=args.overwrite)}")
    return 0


def _dispatch(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    from camseg.app.console import progress_bars

    if args.command == "data":
        return _data(args, settings)
    if args.command == "train":
        from camseg.models.training import TrainConfig, train_from_folder

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
        from camseg.models.export import export_model

        meta = export_model(args.model_dir, data_dir=args.data, providers=settings.ort_providers)
        par = meta["onnx"]["parity"]
        print(f"{args.model_dir / 'model.onnx'}: parity max |dp| {par['max_abs_diff_probabilities']:.2e} "
              f"on {par['images']} images")
        return 0
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "segment":
        from camseg.bulk.segment import segment_folder
        from camseg.pipeline.options import Choices
        from camseg.pipeline.recipe_record import RECIPE_FILE
        from camseg.pipeline.run import LoadedModel

        model = LoadedModel.load(args.model, providers=settings.ort_providers, threads=settings.torch_threads)
        # flags left off are not choices: False, not None, would be a choice
        opts, from_recipe = model.options_for(Choices(
            method=args.method, threshold=args.threshold, layer=args.layer, tta=args.tta, refine=args.refine,
            decision_threshold=args.decision_threshold, gate=False if args.no_gate else None,
            largest=args.largest or None, fill_holes=args.fill_holes or None, no_recipe=args.no_recipe))
        if from_recipe:
            print(f"{args.model}: the model's recipe ({RECIPE_FILE})")
        if not (args.data / "labels.csv").is_file():
            return _segment_series(args, model, opts, settings, progress)
        with progress_bars(progress) as bars:
            summary = segment_folder(model, args.data, args.out, opts, split=args.split, overlays=args.overlays,
                                     overwrite=args.overwrite, on_progress=bars)
        print(f"{args.out / 'results.csv'}: {summary['images']} images, accuracy {summary['accuracy']:.4f}, "
              f"mean Dice {summary['mean_dice']:.4f} over {summary['with_truth']} truth masks"
              + (" (reused: same inputs)" if summary["reused"] else ""))
        return 0
    if args.command == "evaluate":
        return _evaluate(args, progress)
    if args.command == "recipe":
        return _recipe(args, progress, settings)
    if args.command == "evaluate-real":
        return _evaluate_real(args, progress)
    if args.command == "distill":
        from camseg.app.console import progress_bars
        from camseg.pipeline.options import Options, Segmenter
        from camseg.pipeline.run import LoadedModel
        from camseg.pipeline.student import DistillConfig
        from camseg.study.recipe import make_distiller

        model = LoadedModel.load(args.model, providers=settings.ort_providers, threads=settings.torch_threads)
        model.require_trained("camseg distill")
        heat = model.default_options()  # the recipe's heatmaps, or the defaults
        if heat.method is Segmenter.DISTILLED:  # a student learns from the CAMs its predecessor learnt from
            recorded = model.student.meta.get("heat_options") if model.student is not None else None
            heat = Options.from_record(recorded) if recorded else Options()
        with progress_bars(progress) as bars:
            distiller = make_distiller(args.data, DistillConfig(epochs=args.epochs, seed=args.seed), on_progress=bars)
            loaded = distiller(model, heat)
        assert loaded is not None and loaded.student is not None
        par = loaded.student.meta["onnx"]["parity"]["max_abs_diff_probabilities"]
        print(f"{args.model}: student.pt, student.onnx (parity {par:.1e}), student.json; "
              "segment with --method distilled")
        return 0
    if args.command == "filtered-retrain":
        return _filtered(args, progress)
    if args.command == "demo":
        from camseg.app.demo import PROFILES, run_demo

        demo_cfg = PROFILES[args.profile]
        given = {"out": args.out, "n": args.n, "size": args.size, "epochs": args.epochs, "seed": args.seed,
                 "archs": tuple(args.archs) if args.archs else None,
                 "seeds": tuple(args.seeds) if args.seeds is not None else None,
                 "distill_epochs": args.distill_epochs, "real_cache": settings.data_cache}
        demo_cfg = replace(demo_cfg, **{k: v for k, v in given.items() if v is not None})
        if args.no_recipe or args.no_dilation:
            demo_cfg = replace(demo_cfg, recipe=demo_cfg.recipe and not args.no_recipe,
                               dilated=demo_cfg.dilated and not args.no_dilation)
        steps = [] if args.no_service else [s for m in _adapters() for s in m.demo_steps(settings)]
        with progress_bars(progress) as bars:
            report = run_demo(demo_cfg, on_progress=bars, steps=steps)
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

    from camseg.app.console import progress_bars
    from camseg.study.evaluation import evaluate_dice

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


def _evaluate_real(args: argparse.Namespace, progress: bool) -> int:
    from camseg.app.console import progress_bars
    from camseg.study.realeval import leave_one_case_out

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


def _recipe(args: argparse.Namespace, progress: bool, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from camseg.app.console import progress_bars
    from camseg.pipeline.recipe_record import save_recipe
    from camseg.pipeline.run import LoadedModel
    from camseg.pipeline.student import DistillConfig
    from camseg.study.evaluation import evaluate_dice
    from camseg.study.recipe import RecipeConfig, choose_recipe, make_distiller

    model = LoadedModel.load(args.model, providers=settings.ort_providers, threads=settings.torch_threads)
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


def _filtered(args: argparse.Namespace, progress: bool) -> int:
    from dataclasses import asdict, replace

    from rich.console import Console
    from rich.table import Table

    from camseg.app.console import progress_bars
    from camseg.models.modeldir import read_metadata, write_json
    from camseg.models.training import TrainConfig
    from camseg.study.retraining import filtered_retrain

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
