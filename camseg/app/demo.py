"""The main job: the whole method on the embedded synthetic data, with a report.

Generate ROIs, measure what a Dice is worth on them (a centred-disk floor and a U-Net
trained on the true masks as the ceiling), train the chosen architectures, export them to ONNX, evaluate Dice over
methods, layers and thresholds (chosen on val, reported on test), segment the test
split, run filtered retraining at one threshold and write ``report.md`` with PNG
figures. Steps of other layers (the gRPC round trip) are handed in by the entry point
as :data:`DemoStep` callables, so this module imports no adapter.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from camseg import __version__
from camseg.bulk.segment import segment_folder
from camseg.core.errors import CamsegError
from camseg.core.outdir import fresh_dir
from camseg.core.progress import OnProgress
from camseg.data.folder import FolderDataset
from camseg.data.fullfield import FullFieldConfig, synthesize_fullfield
from camseg.data.real import build_real_dataset
from camseg.data.synth import SynthConfig, synthesize
from camseg.models import PAPER_NAMES
from camseg.models.export import export_model
from camseg.models.modeldir import write_json
from camseg.models.training import TrainConfig, train_from_folder
from camseg.pipeline.recipe_record import Recipe, describe, save_recipe
from camseg.pipeline.run import LoadedModel, run
from camseg.pipeline.student import DistillConfig
from camseg.study import figures
from camseg.study.bounds import Bounds, ceiling_config, dataset_bounds, load_ceiling
from camseg.study.evaluation import DiceReport, evaluate_dice
from camseg.study.location import LocationRow, evaluate_location, finding_markdown
from camseg.study.realeval import leave_one_case_out
from camseg.study.recipe import RecipeConfig, choose_recipe, make_distiller
from camseg.study.retraining import filtered_retrain
from camseg.study.wholeeval import whole_ceiling, whole_study

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo-out")
    n: int = 2000
    size: int = 64
    epochs: int = 20
    archs: tuple[str, ...] = ("resnet", "inception", "densenet", "mobilenet")
    seed: int = 0
    filter_threshold: float = 0.5
    filter_arch: str | None = None  # default: the first architecture
    filter_archs: tuple[str, ...] = ()  # retrain these instead of the one filter_arch (the paper's table: all)
    location: bool = True  # where each model's heatmaps sit: inside the mass or along the ROI border
    dilated: bool = False  # dilation instead of stride in the last stage: a finer CAM layer, 2-4x the compute
    recipe: bool = True  # choose each model's recipe (TTA, gate, refinement, distillation) on val
    # the dense CRF alone: watershed, GrabCut and the random walk (the slowest, about a minute per model
    # here) are measured by the quality run; the demo's minutes go to the floor, the ceiling and whole images
    refiners: tuple[str, ...] = ("crf",)
    refine_rules: tuple[str, ...] = ("0.4", "p85", "p90", "otsu")  # the threshold rules tried with each refiner
    tta: tuple[int, ...] = ()  # the test-time augmentations tried: none in the demo (the quality run tries 4 and 8)
    distill_epochs: int = 6  # 0 skips distillation
    distill_base: int = 8  # the student U-Net's first width
    seeds: tuple[int, ...] = ()  # more seeds for the final row: the whole run again per seed, recipe only
    real: bool = False  # leave-one-case-out Dice on pyradiomics' real cases (fetched with pip)
    real_cache: Path = Path.home() / ".cache" / "camseg"
    bounds: bool = True  # floor (centred disk) and ceiling (a U-Net on the true masks, ``epochs`` epochs)
    # the ceiling U-Net's first width: on the demo's data base 8 reaches base 16's Dice in a fraction of the time
    ceiling_base: int = 8
    # whole images: synthetic full-field images at the ROIs' pixel scale (0 skips), the classifiers slid over
    # them with their recipes (TTA off: the window already averages overlapping tiles)
    whole_images: int = 30
    whole_size: tuple[int, int] = (640, 512)
    whole_archs: tuple[str, ...] = ()  # default: the two whose recipes are best on val (every one without recipes)


# ``camseg demo --profile``: the demo within 15 minutes on two cores; the quality run
# (``make quality``) with more ROIs, more epochs and two more seeds
ALL_ARCHS = ("resnet", "inception", "densenet", "mobilenet", "xception", "nasnet")
"""The paper's six families, in camseg's order."""

PROFILES: dict[str, DemoConfig] = {
    "demo": DemoConfig(),
    "quality": DemoConfig(out=Path("quality-out"), n=4000, epochs=25, distill_epochs=10, seeds=(1, 2), real=True,
                          refiners=("crf", "randomwalk", "watershed", "grabcut"), tta=(4, 8), archs=ALL_ARCHS,
                          whole_images=120, whole_size=(1024, 832), whole_archs=ALL_ARCHS,
                          filter_archs=ALL_ARCHS),
    # the paper's comparison alone: all six classifiers, where their heatmaps sit, and the filtered
    # retraining of each; no recipes
    "paper": DemoConfig(out=Path("paper-out"), archs=ALL_ARCHS, filter_archs=ALL_ARCHS, recipe=False, whole_images=0),
}


@dataclass(frozen=True)
class DemoContext:
    """What a step handed in by an entry point can use: the data, the exported model
    directories and the Dice reports (whose ``best`` is each model's chosen setting)."""

    cfg: DemoConfig
    out: Path
    data: Path
    models: dict[str, Path]
    dice: dict[str, DiceReport]
    segments: dict[str, dict[str, Any]]  # the in-process segmentation of the report split, per model
    recipes: dict[str, Recipe] = field(default_factory=dict)  # each model's recipe, where chosen


@dataclass(frozen=True)
class StepResult:
    """A step's section of the report (``markdown`` under ``## title``) and its numbers
    for ``results.json``."""

    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)


DemoStep = Callable[[DemoContext], StepResult]


def run_demo(cfg: DemoConfig, *, on_progress: OnProgress | None = None, say: Callable[[str], None] | None = None,
             steps: Sequence[tuple[str, DemoStep]] = ()) -> Path:
    """Run every step; return the path of ``report.md``. ``say`` reports each step
    (default: print to stdout); ``steps`` are (description, step) pairs run last."""
    if say is None:
        def say(msg: str) -> None:
            print(msg, flush=True)
    total = 6 + len(steps)
    t0 = time.perf_counter()
    out = fresh_dir(Path(cfg.out), "camseg demo")
    (out / "figures").mkdir()
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 1)

    say(f"[1/{total}] synthetic data: {cfg.n} ROIs of {cfg.size}x{cfg.size}")
    data = synthesize(out / "data", SynthConfig(n=cfg.n, size=cfg.size, seed=cfg.seed))
    step("data")

    bounds: Bounds | None = None
    if cfg.bounds:
        say(f"[1/{total}] floor and ceiling: a centred disk chosen on val, a U-Net trained on the true masks "
            f"({cfg.epochs} epochs)")
        bounds = dataset_bounds(data, cfg.size, 1, cfg=ceiling_config(cfg.epochs, base=cfg.ceiling_base, seed=cfg.seed),
                                out=out / "ceiling", on_progress=on_progress)
        step("bounds")

    train_cfg = TrainConfig(epochs=cfg.epochs, seed=cfg.seed, dilated=cfg.dilated)
    models: dict[str, dict[str, Any]] = {}
    dirs = {arch: out / "models" / arch for arch in cfg.archs}
    for arch in cfg.archs:
        say(f"[2/{total}] train {arch} ({PAPER_NAMES[arch]}-style) and export it to ONNX")
        train_from_folder(data, arch, dirs[arch], train_cfg, on_progress=on_progress)
        models[arch] = export_model(dirs[arch])
    step("train+export")

    say(f"[3/{total}] heatmaps, masks and Dice: settings chosen on val, Dice reported on test")
    loaded = {arch: LoadedModel.load(dirs[arch]) for arch in cfg.archs}
    reports: dict[str, DiceReport] = {}
    for arch in cfg.archs:
        reports[arch] = evaluate_dice(loaded[arch], data, out=out / "dice" / arch, bounds=bounds,
                                      on_progress=on_progress)
        shutil.copy(out / "dice" / arch / "dice_vs_threshold.png", out / "figures" / f"dice_vs_threshold_{arch}.png")
        _overlays(out, arch, loaded[arch], data, reports[arch])
    step("dice")

    locations: dict[str, list[LocationRow]] = {}
    if cfg.location:
        say(f"[3/{total}] where the heatmaps sit: heat inside the mass and along the ROI border, on the test "
            "split's tumor ROIs")
        for arch in cfg.archs:
            locations[arch] = evaluate_location(loaded[arch], data, split="test", on_progress=on_progress)
        figures.heat_location(out / "figures" / "heat_location.png", locations)
        step("location")

    recipes: dict[str, Recipe] = {}
    if cfg.recipe:
        say(f"[3/{total}] recipes: test-time augmentation, gate, refinement and distillation, each kept where it "
            "raises the val Dice")
        for arch in cfg.archs:
            recipes[arch] = _choose_recipe(cfg, data, loaded[arch], reports[arch], on_progress)
            save_recipe(dirs[arch], recipes[arch])
            loaded[arch] = LoadedModel.load(dirs[arch])
            _recipe_overlays(out, arch, loaded[arch], data, reports[arch])
        step("recipe")

    say(f"[4/{total}] segment the test split with each model's recipe (else its chosen setting)")
    segments = {arch: segment_folder(loaded[arch], data, out / "segment" / arch,
                                     None if arch in recipes else reports[arch].best.options,
                                     split="test", overlays=True, on_progress=on_progress) for arch in cfg.archs}
    step("segment")

    farchs = cfg.filter_archs or (cfg.filter_arch or cfg.archs[0],)
    filtered: dict[str, list[dict[str, Any]]] = {}
    for k, farch in enumerate(farchs):
        say(f"[5/{total}] filtered retraining of {farch} at t={cfg.filter_threshold}"
            + (f" ({k + 1}/{len(farchs)})" if len(farchs) > 1 else ""))
        fout = out / "filtered" if len(farchs) == 1 else out / "filtered" / farch
        fres = filtered_retrain(dirs[farch], data, fout, thresholds=[cfg.filter_threshold],
                                cfg=replace(train_cfg), seed=cfg.seed, on_progress=on_progress)
        filtered[farch] = [asdict(r) for r in fres]
        name = "filtered_retraining.png" if k == 0 else f"filtered_retraining_{farch}.png"
        shutil.copy(fout / "filtered_retraining.png", out / "figures" / name)
    figures.training_curves(out / "figures" / "training.png", {a: m["history"] for a, m in models.items()})
    step("filtered")

    whole: dict[str, Any] | None = None
    if cfg.whole_images > 0:
        say(f"[5/{total}] whole images: {cfg.whole_images} synthetic full-field images of "
            f"{cfg.whole_size[0]}x{cfg.whole_size[1]}, the classifiers slid over them")
        whole = _whole_images(cfg, out, loaded, recipes, on_progress)
        step("whole images")

    seeds: dict[int, dict[str, dict[str, Any]]] = {}
    if cfg.seeds and recipes:
        # the spread of the final row: the architecture whose recipe is best on val, again per seed
        best_arch = max(recipes, key=lambda a: _final_val(recipes[a]))
        for k, seed in enumerate(cfg.seeds):
            say(f"[5/{total}] seed {seed} ({k + 1}/{len(cfg.seeds)}): data, {best_arch} and its recipe again")
            seeds[seed] = _another_seed(cfg, seed, out / "seeds" / str(seed), (best_arch,), on_progress)
    if cfg.seeds:
        step("seeds")

    real: dict[str, Any] | None = None
    if cfg.real:
        say(f"[5/{total}] real slices: leave-one-case-out on pyradiomics' five cases")
        real = _real_slices(cfg, out, on_progress)
        step("real slices")

    ctx = DemoContext(cfg, out, data, dirs, reports, segments, recipes)
    extra: list[StepResult] = []
    for k, (description, extra_step) in enumerate(steps, start=6):
        say(f"[{k}/{total}] {description}")
        extra.append(extra_step(ctx))
        step(description)
    say(f"[{total}/{total}] report")
    results = {"config": {**asdict(cfg), "out": str(cfg.out)},
               "models": {a: _model_summary(m) for a, m in models.items()},
               "dice": {a: r.to_dict() for a, r in reports.items()}, "segment": segments,
               "filtered": filtered[farchs[0]], "filtered_by_arch": filtered,
               "location": {a: [asdict(r) for r in rows] for a, rows in locations.items()},
               "steps": {s.title: s.data for s in extra},
               "recipes": {a: r.to_dict() for a, r in recipes.items()},
               "seeds": {str(k): v for k, v in seeds.items()}, "real": real, "whole": whole,
               "bounds": bounds.to_dict() if bounds is not None else None,
               "timings_seconds": timings, "camseg_version": __version__}
    write_json(out / "results.json", results)
    report = out / "report.md"
    report.write_text(_report(results, extra, locations))
    say(f"done in {time.perf_counter() - t0:.0f} s")
    return report


def _choose_recipe(cfg: DemoConfig, data: Path, model: LoadedModel, report: DiceReport,
                   on_progress: OnProgress | None) -> Recipe:
    distiller = None
    if cfg.distill_epochs > 0:
        distiller = make_distiller(data, DistillConfig(epochs=cfg.distill_epochs, base=cfg.distill_base,
                                                       seed=cfg.seed), on_progress=on_progress)
    return choose_recipe(model, data, report.best.options, paper=report.paper.options,
                         cfg=RecipeConfig(tta=cfg.tta, refiners=cfg.refiners, refine_rules=cfg.refine_rules),
                         distiller=distiller,
                         on_progress=on_progress)


def _real_slices(cfg: DemoConfig, out: Path, on_progress: OnProgress | None) -> dict[str, Any]:
    """Leave-one-case-out on the real cases; a fetch that fails is reported, not fatal."""

    from camseg.study.realwhole import leave_one_case_out_whole

    try:
        data = build_real_dataset(out / "real-data", cfg.real_cache, overwrite=True)
        report = leave_one_case_out(data, out / "real", epochs=15, seed=cfg.seed, on_progress=on_progress)
    except CamsegError as exc:
        logger.warning("real slices skipped: %s", exc.message)
        return {"error": exc.message}
    try:  # the same folds, trained on ROIs and run on whole slices
        whole = leave_one_case_out_whole(data, out / "real-whole", epochs=15, seed=cfg.seed, overwrite=True,
                                         on_progress=on_progress)
        whole_part: dict[str, Any] = {"report": whole.to_dict(), "markdown": whole.to_markdown()}
    except CamsegError as exc:
        logger.warning("real slices, whole: skipped: %s", exc.message)
        whole_part = {"error": exc.message}
    return {"report": report.to_dict(), "markdown": report.to_markdown(), "whole": whole_part}


def _whole_images(cfg: DemoConfig, out: Path, loaded: dict[str, LoadedModel], recipes: dict[str, Recipe],
                  on_progress: OnProgress | None) -> dict[str, Any]:
    """The ROI classifiers slid over synthetic full-field images (val to choose the
    threshold and gate, test to report), beside the floor and the ROI ceiling slid the
    same way; FROC curves and overlays as figures."""
    wdir = out / "whole"
    data = synthesize_fullfield(wdir / "data", FullFieldConfig(
        n=cfg.whole_images, height=cfg.whole_size[0], width=cfg.whole_size[1], roi_size=cfg.size,
        seed=cfg.seed, split=(0.0, 0.4, 0.6)), on_progress=on_progress)
    ranked = sorted(recipes, key=lambda a: -_final_val(recipes[a]))
    archs = cfg.whole_archs or tuple(ranked[:2]) or tuple(loaded)
    ceiling = None
    if (out / "ceiling").is_dir():
        student, _ = load_ceiling(out / "ceiling")
        ceiling = whole_ceiling(loaded[archs[0]], data, student, on_progress=on_progress)
    res: dict[str, Any] = {"data": str(data), "images": cfg.whole_images, "size": list(cfg.whole_size), "models": {}}
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for arch in archs:
        model = loaded[arch]
        opts = replace(recipes[arch].options, tta=1) if arch in recipes else None
        study, kept = whole_study(model, data, ceiling=ceiling, options=opts, name=arch, keep=4,
                                  on_progress=on_progress)
        res["models"][arch] = study.to_dict()
        f = study.report.froc()
        curves[arch] = (f.fp_per_image, f.sensitivity)
        figures.whole_overlays(out / "figures" / f"whole_{arch}.png", kept)
    if ceiling is not None:
        f = ceiling[0].froc()
        curves["ceiling (U-Net on the true masks)"] = (f.fp_per_image, f.sensitivity)
    figures.froc_curve(out / "figures" / "whole_froc.png", curves, "Whole images: lesion FROC (test)")
    return res


def _whole_section(whole: dict[str, Any]) -> list[str]:
    """The report's whole-image table: Dice on lesion images, FROC, AUC, false area, with
    the floor, the ceiling and the position."""
    h, w = whole["size"]
    lines = ["", "## Whole images", "",
             f"{whole['images']} synthetic full-field images of {h}x{w} at the ROIs' pixel scale (breast on a dark "
             "background, 0-3 masses anywhere in the tissue, drawn like the ROIs' masses); each classifier slid "
             "over them (tiles of its input size, half overlap, tiles without tissue skipped), its recipe's method "
             "with the threshold and gate chosen on the val images, scored on the test images. FROC: lesion "
             "sensitivity at 0.25, 0.5, 1, 2 and 4 false positives per image (a candidate hits a lesion when its "
             "centroid lies in it or within its equivalent radius of its centre).", "",
             "| model | setting | Dice (lesion images) | FROC @0.25 | @0.5 | @1 | @2 | @4 | image AUC "
             "| false area on normals | floor | ceiling | position |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ceiling_row = floor_row = None
    for arch, m in whole["models"].items():
        s = m["camseg"]["summary"]
        at = (s["froc"] or {}).get("at_rates", {})
        b = Bounds.from_dict(m["bounds"])
        lines.append(f"| {arch} | {m['choice']['label']} | {_fmt(s['mean_dice'])} | "
                     + " | ".join(_fmt(at.get(k, float('nan'))) for k in ("0.25", "0.5", "1", "2", "4"))
                     + f" | {_fmt(s['auc'])} | {_fmt(s['false_fraction'])} | {b.cells(s['mean_dice'])} |")
        if m.get("ceiling") and ceiling_row is None:
            c = m["ceiling"]["summary"]
            cat = (c["froc"] or {}).get("at_rates", {})
            ceiling_row = (f"| ceiling | {m['ceiling_choice']['label']} | {_fmt(c['mean_dice'])} | "
                           + " | ".join(_fmt(cat.get(k, float('nan'))) for k in ("0.25", "0.5", "1", "2", "4"))
                           + f" | {_fmt(c['auc'])} | {_fmt(c['false_fraction'])} | | | |")
        if floor_row is None:
            floor = m["floor"]
            floor_row = (f"| floor | {floor['choice']} mask (chosen on val) | {_fmt(floor['dice'])} | | | | | | "
                           f"| {_fmt(floor['false_fraction'])} | | | |")
    lines += [row for row in (ceiling_row, floor_row) if row is not None]
    lines += ["", "The ceiling is the U-Net trained on the ROIs' true masks (the Dice tables' ceiling), slid by "
              "the same window, its threshold and gate chosen on val like camseg's. *position* = "
              "(Dice - floor) / (ceiling - floor).", "",
              "![FROC](figures/whole_froc.png)", ""]
    lines += [f"![{arch}](figures/whole_{arch}.png)" for arch in whole["models"]]
    return lines


def _final_val(recipe: Recipe) -> float:
    final = recipe.final
    return -1.0 if final is None or final.select.all_tumors != final.select.all_tumors else final.select.all_tumors


def _another_seed(cfg: DemoConfig, seed: int, out: Path, archs: Sequence[str],
                  on_progress: OnProgress | None) -> dict[str, dict[str, Any]]:
    """Data, classifiers, the protocol and the recipe of ``archs`` at ``seed``: the
    final row's spread over seeds."""
    fresh_dir(out, "camseg demo (another seed)")
    data = synthesize(out / "data", SynthConfig(n=cfg.n, size=cfg.size, seed=seed))
    rows: dict[str, dict[str, Any]] = {}
    for arch in archs:
        model_dir = out / "models" / arch
        meta = train_from_folder(data, arch, model_dir, TrainConfig(epochs=cfg.epochs, seed=seed, dilated=cfg.dilated),
                                 on_progress=on_progress)
        export_model(model_dir)
        model = LoadedModel.load(model_dir)
        report = evaluate_dice(model, data, out=out / "dice" / arch, on_progress=on_progress)
        recipe = _choose_recipe(replace(cfg, seed=seed), data, model, report, on_progress)
        save_recipe(model_dir, recipe)
        final = recipe.final
        assert final is not None
        rows[arch] = {"test": meta["metrics"].get("test", {}), "paper": report.paper.mean_dice,
                      "final": asdict(final.report), "label_free": asdict(recipe.label_free_report)
                      if recipe.label_free_report else None, "options": recipe.options.to_record()}
    return rows


def _recipe_overlays(out: Path, arch: str, model: LoadedModel, data: Path, report: DiceReport, k: int = 6) -> None:
    """Overlay grid of the first ``k`` tumor test ROIs under the model's recipe."""
    ds = FolderDataset.open(data)
    idx = [i for i in ds.subset(report.report_split) if ds.samples[i].mask_path is not None][:k]
    pairs = [ds.load(i) for i in idx]
    res = run(model, [p[0] for p in pairs], model.default_options(), truths=[p[1] for p in pairs])
    rows = []
    for i, (image, truth), r in zip(idx, pairs, res.items, strict=True):
        assert r.mask is not None and r.dice is not None
        rows.append((f"{ds.samples[i].id}\np={r.probabilities[model.positive]:.2f} Dice={r.dice:.2f}", image, truth,
                     r.heatmap.numpy(), r.mask))
    figures.overlay_grid(out / "figures" / f"overlays_{arch}_recipe.png", rows, f"{arch}: recipe")


def _model_summary(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "architecture": meta["architecture"],
        "parameters": meta["parameters"],
        "best_epoch": meta["metrics"]["best_epoch"],
        "val": meta["metrics"]["val"],
        "test": meta["metrics"].get("test", {}),
        "onnx_parity": meta["onnx"]["parity"]["max_abs_diff_probabilities"],
        "gradcam_layer": meta["gradcam_layer"],
    }


def _overlays(out: Path, arch: str, model: LoadedModel, data: Path, report: DiceReport, k: int = 6) -> None:
    """Overlay grids of the first ``k`` tumor test ROIs, at the paper setting and the best."""
    ds = FolderDataset.open(data)
    idx = [i for i in ds.subset(report.report_split) if ds.samples[i].mask_path is not None][:k]
    pairs = [ds.load(i) for i in idx]
    images = [p[0] for p in pairs]
    truths = [p[1] for p in pairs]
    for tag, choice in (("paper", report.paper), ("best", report.best)):
        res = run(model, images, choice.options, truths=truths)
        rows = []
        for j, (i, r) in enumerate(zip(idx, res.items, strict=True)):
            assert r.mask is not None and r.dice is not None
            rows.append((f"{ds.samples[i].id}\np={r.probabilities[model.positive]:.2f} Dice={r.dice:.2f}",
                         images[j], truths[j], r.heatmap.numpy(), r.mask))
        figures.overlay_grid(out / "figures" / f"overlays_{arch}_{tag}.png", rows,
                             f"{arch}: {choice.label}")


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def _bounds(res: dict[str, Any]) -> Bounds | None:
    return Bounds.from_dict(res["bounds"]) if res.get("bounds") else None


def _bound_cells(bounds: Bounds | None, dice: float) -> str:
    """`` floor | ceiling | position |`` cells (empty where there are no bounds)."""
    return f" {bounds.cells(dice)} |" if bounds is not None else ""


def _recipe_section(res: dict[str, Any]) -> list[str]:
    recipes = res.get("recipes") or {}
    if not recipes:
        return []
    bounds = _bounds(res)
    bcols, bsep = (" floor | ceiling | position |", "---:|---:|---:|") if bounds is not None else ("", "")
    lines = ["", "## Recipes: each step chosen on val, reported on test", "",
             "Each model's recipe starts from the protocol's choice above and tries test-time augmentation of the "
             "heatmaps, a lower gate threshold (val sensitivity >= 0.9), refinement from the image and a "
             "segmentation network distilled from the heatmaps (trained on the train split's pseudo-labels, never "
             "on a truth mask). A step is kept only where it raises the mean Dice on val; the threshold rule is "
             "chosen again after each. Three views on test: mean Dice over **all** tumor ROIs (gated: a missed "
             "tumor counts 0), over the **detected** tumors only, and the **false** mask area on normal ROIs "
             "(mean fraction of the ROI; the share of normal ROIs given any mask in brackets). The *label-free* "
             "row is fixed without any truth mask; the gap to the recipe is what the val masks bought."
             + (" *floor*, *ceiling* and *position* place the recipe's Dice (all tumors) between the centred disk and "
                "the U-Net trained on the true masks." if bounds is not None else ""), "",
             "| architecture | paper setting | recipe: all tumors | detected | false area on normals | sensitivity | "
             f"specificity | label-free: all tumors | recipe |{bcols}",
             f"|---|---:|---:|---:|---:|---:|---:|---:|---|{bsep}"]
    for arch, r in recipes.items():
        final = [st for st in r["steps"] if st["kept"]][-1]["report"]
        lf = r["label_free_report"] or {}
        lines.append(f"| {arch} | {_fmt(res['dice'][arch]['paper']['mean_dice'])} | **{_fmt(final['all_tumors'])}** "
                     f"| {_fmt(final['detected'])} | {_fmt(final['false_area'])} ({_fmt(final['false_masks'])}) | "
                     f"{_fmt(final['sensitivity'])} | {_fmt(final['specificity'])} | "
                     f"{_fmt(lf.get('all_tumors', float('nan')))} | {describe(r['options'])} |"
                     + _bound_cells(bounds, final["all_tumors"]))
    seeds = res.get("seeds") or {}
    if seeds:
        lines += ["", f"The architecture whose recipe is best on val, over seeds {res['config']['seed']}, "
                  f"{', '.join(seeds)} (data, classifier and recipe made again per seed): mean ± standard deviation "
                  "of the test Dice (all tumors).", "",
                  "| architecture | paper setting | recipe | label-free | test accuracy |", "|---|---:|---:|---:|---:|"]
        for arch, r in recipes.items():
            if not any(arch in v for v in seeds.values()):
                continue
            final = [st for st in r["steps"] if st["kept"]][-1]["report"]
            rows = [{"paper": res["dice"][arch]["paper"]["mean_dice"], "final": final,
                     "label_free": r["label_free_report"], "test": res["models"][arch]["test"]}]
            rows += [v[arch] for v in seeds.values() if arch in v]

            def ms(xs: list[float]) -> str:
                a = np.asarray([x for x in xs if x == x], dtype=float)
                return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f} (n={len(a)})" if len(a) else "n/a"

            final_ms = ms([x["final"]["all_tumors"] for x in rows])
            lf_ms = ms([(x["label_free"] or {}).get("all_tumors", float("nan")) for x in rows])
            lines.append(f"| {arch} | {ms([x['paper'] for x in rows])} | **{final_ms}** | {lf_ms} | "
                         f"{ms([x['test'].get('accuracy', float('nan')) for x in rows])} |")
    for arch, r in recipes.items():
        lines += ["", f"### Ablation: {arch}", "",
                  "| step | kept | val Dice | test: all tumors | detected | false area | sensitivity | specificity |",
                  "|---|:---:|---:|---:|---:|---:|---:|---:|"]
        for st in r["steps"]:
            v, t = st["select"], st["report"]
            lines.append(f"| {st['name']} ({describe(st['options'])}) | {'yes' if st['kept'] else ''} | "
                         f"{_fmt(v['all_tumors'])} | {_fmt(t['all_tumors'])} | {_fmt(t['detected'])} | "
                         f"{_fmt(t['false_area'])} | {_fmt(t['sensitivity'])} | {_fmt(t['specificity'])} |")
        lf = r["label_free_report"]
        if lf:
            lf_val = r["label_free_select"]["all_tumors"]
            lines.append(f"| label-free ({describe(r['label_free'])}) |  | {_fmt(lf_val)} | "
                         f"{_fmt(lf['all_tumors'])} | {_fmt(lf['detected'])} | {_fmt(lf['false_area'])} | "
                         f"{_fmt(lf['sensitivity'])} | {_fmt(lf['specificity'])} |")
        lines += ["", f"![recipe overlays](figures/overlays_{arch}_recipe.png)"]
    return lines


def _report(res: dict[str, Any], extra: Sequence[StepResult],
            locations: Mapping[str, Sequence[LocationRow]] | None = None) -> str:
    cfg = res["config"]
    lines = [
        "# camseg demo report",
        "",
        f"camseg {res['camseg_version']}; {cfg['n']} synthetic mammogram ROIs of {cfg['size']}x{cfg['size']} "
        f"(seed {cfg['seed']}); train/val/test 70/15/15.",
        "",
        "## Classifiers",
        "",
        "| architecture | parameters | best epoch | val acc | val AUC | test acc | test AUC | ONNX max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, m in res["models"].items():
        lines.append(
            f"| {arch} ({PAPER_NAMES[arch]}-style) | {m['parameters']:,} | {m['best_epoch']} | "
            f"{_fmt(m['val']['val_accuracy'])} | {_fmt(m['val']['val_auc'])} | "
            f"{_fmt(m['test'].get('accuracy', float('nan')))} | "
            f"{_fmt(m['test'].get('auc', float('nan')))} | {m['onnx_parity']:.1e} |"
        )
    lines += ["", "![training](figures/training.png)", "", "## Mean Dice on the tumor ROIs of the test split", "",
              "Masks are gated by the classifier (an ROI predicted normal gets an empty mask), so a missed tumor "
              "counts as Dice 0. *Otsu* and *best fixed t* are at the default (last) layer; *best* searches the last "
              "three layers, fixed/percentile/Otsu thresholds and largest-component refinement. Every choice (the "
              "fixed t, the best setting) is made on the validation split; the Dice shown is on the test split.", "",
              "| architecture | method | Otsu | best fixed t | best | best setting |", "|---|---|---:|---:|---:|---|"]
    for arch, d in res["dice"].items():
        for m, v in d["by_method"].items():
            fixed = v["best_default_layer"]["mean_dice"] if v["best_default_layer"] else float("nan")
            b = v["best"]
            setting = f"{b['layer']}, {b['rule']}{', largest CC' if b['largest'] else ''}"
            lines.append(f"| {arch} | {m} | {_fmt(v['otsu_default_layer'])} | {_fmt(fixed)} | "
                         f"{_fmt(b['mean_dice'])} | {setting} |")
    bounds = _bounds(res)
    bcols, bsep = (" floor | ceiling | position of the best |", "---:|---:|---:|") if bounds is not None else ("", "")
    lines += ["", "| architecture | paper setting (Grad-CAM, last layer, fixed t chosen on val) | camseg best (chosen "
              f"on val) | gain |{bcols}",
              f"|---|---|---|---:|{bsep}"]
    for arch, d in res["dice"].items():
        p, b = d["paper"], d["best"]
        lines.append(f"| {arch} | {_fmt(p['mean_dice'])} (t={p['rule']}) | {_fmt(b['mean_dice'])} ({b['method']}@"
                     f"{b['layer']}, {b['rule']}{', largest CC' if b['largest'] else ''}) | "
                     f"{b['mean_dice'] - p['mean_dice']:+.3f} |" + _bound_cells(bounds, b["mean_dice"]))
    if bounds is not None:
        lines += ["", bounds.note() + " The camseg Dice is gated (a missed tumor counts 0); the floor and the "
                  "ceiling are not. The ceiling network is in `ceiling/`."]
    lines += _recipe_section(res)
    for arch in res["dice"]:
        lines += ["", f"### {arch}", "", f"![Dice against threshold](figures/dice_vs_threshold_{arch}.png)", "",
                  f"Paper setting:\n\n![overlays](figures/overlays_{arch}_paper.png)", "",
                  f"camseg best:\n\n![overlays](figures/overlays_{arch}_best.png)"]
        s = res["segment"][arch]
        lines += ["", f"`camseg segment` with the best setting on the test split: {s['images']} images, accuracy "
                  f"{_fmt(s['accuracy'])}, mean Dice {_fmt(s['mean_dice'])} over {s['with_truth']} truth masks "
                  f"(masks and overlays in `segment/{arch}/`)."]
    if res.get("whole"):
        lines += _whole_section(res["whole"])
    real = res.get("real")
    if real:
        lines += ["", "## Real slices", ""]
        if "error" in real:
            lines.append(f"Not run: {real['error']}")
        else:  # the LOCO report, its headings one level down
            lines += [("#" + ln if ln.startswith("#") else ln).replace("](figures/", "](real/figures/")
                      for ln in real["markdown"].splitlines()[1:]]
            lines += ["", "Figures and folds: `real/`."]
            whole = real.get("whole") or {}
            lines += ["", "### Whole slices, trained on ROIs", ""]
            if "error" in whole:
                lines.append(f"Not run: {whole['error']}")
            elif whole:  # its headings two levels down, its figures under real-whole/
                lines += [("##" + ln if ln.startswith("#") else ln).replace("](figures/", "](real-whole/figures/")
                          for ln in whole["markdown"].splitlines()[1:]]
                lines += ["", "Figures and folds: `real-whole/`."]
    if locations:
        lines += ["", "## The paper's finding", "", finding_markdown(locations), "",
                  "![where the heatmaps sit](figures/heat_location.png)"]
    for step_result in extra:
        lines += ["", f"## {step_result.title}", "", step_result.markdown]
    lines += _filtered_by_arch(res)
    lines += ["", "## Filtered retraining", "",
              "A fresh classifier of the same architecture is trained on heatmap-filtered train/val images and "
              "tested on filtered test images (Guan & Loew, Sec. III-C). *random* removes as many pixels as the hot "
              "area, at random (the ROAR control).", "",
              "| filter | threshold | hot fraction (test) | test accuracy | test AUC |", "|---|---:|---:|---:|---:|"]
    for r in res["filtered"]:
        t = "" if r["threshold"] is None else f"{r['threshold']:g}"
        name = "none (original model)" if r["filter"] == "none" else r["filter"]
        lines.append(f"| {name} | {t} | {r['hot_fraction']:.3f} | {_fmt(r['accuracy'])} | {_fmt(r['auc'])} |")
    lines += ["", "![filtered retraining](figures/filtered_retraining.png)", "",
              "## Timings (seconds)", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in res["timings_seconds"].items()]
    lines += ["", "All numbers: `results.json`.", ""]
    return "\n".join(lines)


def _filtered_by_arch(res: dict[str, Any]) -> list[str]:
    """The paper's filtered-retraining table across architectures: test accuracy of a fresh
    classifier per filter, the unfiltered model beside it."""
    by_arch = res.get("filtered_by_arch") or {}
    if len(by_arch) < 2:
        return []
    filters = list(dict.fromkeys(r["filter"] for rows in by_arch.values() for r in rows if r["filter"] != "none"))
    t = next((r["threshold"] for rows in by_arch.values() for r in rows if r["threshold"] is not None), None)
    lines = ["", "## Filtered retraining, every architecture", "",
             f"Test accuracy of a fresh classifier trained and tested on heatmap-filtered images (t={t:g}); "
             "*none* is the original model on the plain test set, *random* the ROAR control (as many pixels as the "
             "hot area, removed at random).", "",
             "| architecture | none | " + " | ".join(filters) + " |", "|---|" + "---:|" * (len(filters) + 1)]
    for arch, rows in by_arch.items():
        acc = {r["filter"]: r["accuracy"] for r in rows}
        lines.append(f"| {arch} ({PAPER_NAMES[arch]}-style) | {_fmt(acc.get('none', float('nan')))} | "
                     + " | ".join(_fmt(acc.get(f, float("nan"))) for f in filters) + " |")
    return lines


__all__: Sequence[str] = ["ALL_ARCHS", "PROFILES", "DemoConfig", "DemoContext", "DemoStep", "StepResult",
                          "run_demo"]
