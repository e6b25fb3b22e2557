"""The main job: the whole method on the embedded synthetic data, with a report.

Generate ROIs, train the chosen architectures, export them to ONNX, compute heatmaps
and masks, sweep Dice over methods, layers and thresholds, segment the test split,
run filtered retraining at one threshold and write ``report.md`` with PNG figures.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from camseg import __version__, figures
from camseg.cam import METHODS
from camseg.data.synth import SynthConfig, synthesize
from camseg.evaluation import best_row, dice_sweep, filtered_retrain, paper_row, split_arrays
from camseg.export import export_model
from camseg.masks import parse_rule, to_masks
from camseg.metrics import dice
from camseg.modeldir import load_model, write_json
from camseg.models import PAPER_NAMES
from camseg.segment import SegmentOptions, heatmaps, segment_folder
from camseg.training import TrainConfig, train_from_folder

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


def run_demo(cfg: DemoConfig, *, progress: bool = True, say: Any = None) -> Path:
    """Run every step; return the path of ``report.md``. ``say`` reports each step
    (default: print to stdout)."""
    if say is None:
        def say(msg: str) -> None:
            print(msg, flush=True)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 1)

    say(f"[1/7] synthetic data: {cfg.n} ROIs of {cfg.size}x{cfg.size}")
    data = synthesize(out / "data", SynthConfig(n=cfg.n, size=cfg.size, seed=cfg.seed))
    step("data")

    train_cfg = TrainConfig(epochs=cfg.epochs, seed=cfg.seed)
    models: dict[str, dict[str, Any]] = {}
    for arch in cfg.archs:
        say(f"[2/7] train {arch} ({PAPER_NAMES[arch]}-style)")
        meta = train_from_folder(data, arch, out / "models" / arch, train_cfg, progress=progress)
        say(f"[3/7] export {arch} to ONNX")
        meta = export_model(out / "models" / arch)
        models[arch] = meta
    step("train+export")

    say("[4/7] heatmaps, masks and the Dice sweep")
    sweeps: dict[str, Any] = {}
    for arch in cfg.archs:
        sweeps[arch] = _sweep_arch(out, arch, data, progress)
    step("dice")

    say("[5/7] segment the test split (paper setting and camseg's best)")
    segments: dict[str, Any] = {}
    for arch in cfg.archs:
        best = sweeps[arch]["best"]
        opts = SegmentOptions(method=best["method"], threshold=best["rule"], layer=best["layer"],
                              largest=best["largest"], overlays=True)
        segments[arch] = segment_folder(out / "models" / arch, data, out / "segment" / arch, opts, split="test",
                                        progress=progress)
    step("segment")

    farch = cfg.filter_arch or cfg.archs[0]
    say(f"[6/7] filtered retraining of {farch} at t={cfg.filter_threshold}")
    fres = filtered_retrain(out / "models" / farch, data, thresholds=[cfg.filter_threshold],
                            cfg=replace(train_cfg), progress=progress, seed=cfg.seed)
    frows = [asdict(r) for r in fres]
    figures.filter_bars(out / "figures" / "filtered_retraining.png", frows,
                        f"filtered retraining ({farch}, Grad-CAM, t={cfg.filter_threshold})")
    figures.training_curves(out / "figures" / "training.png", {a: m["history"] for a, m in models.items()})
    step("filtered")
    say("[7/7] serve the exported models over gRPC and segment the test split through the service")
    served = _through_service(out, data, cfg.archs, sweeps)
    step("service")
    results = {"config": {**asdict(cfg), "out": str(cfg.out)},
               "models": {a: _model_summary(m) for a, m in models.items()},
               "dice": sweeps, "segment": segments, "filtered": frows, "service": served, "timings_seconds": timings,
               "camseg_version": __version__}
    write_json(out / "results.json", results)
    report = out / "report.md"
    report.write_text(_report(results))
    say(f"done in {time.perf_counter() - t0:.0f} s")
    return report


def _through_service(out: Path, data: Path, archs: Sequence[str], sweeps: dict[str, Any]) -> dict[str, Any]:
    """Start ``camseg serve`` on the exported models, segment the tumor ROIs of the test
    split through the real service with each model's best setting, and compare the
    mean Dice with the in-process number."""
    from camseg.client import SegmentationClient
    from camseg.data.folder import FolderDataset
    from services.process import spawn

    repo = out / "repo"
    for arch in archs:
        shutil.copytree(out / "models" / arch, repo / arch / "1")
    ds = FolderDataset.open(data)
    tumor = [s for s in (ds.samples[i] for i in ds.subset("test")) if s.mask_path is not None]
    server = spawn(repo)
    result: dict[str, Any] = {}
    try:
        for arch in archs:
            best = sweeps[arch]["best"]
            t0 = time.perf_counter()
            with SegmentationClient(server.address, plaintext=True, model=arch) as client:
                masks = []
                for i in range(0, len(tumor), 64):
                    chunk = tumor[i : i + 64]
                    masks += client.segment([s.image_path for s in chunk], method=best["method"], layer=best["layer"],
                                            threshold=best["rule"], largest=best["largest"],
                                            truth=[s.mask_path for s in chunk if s.mask_path is not None])
            dices = [r.dice for r in masks if r.dice is not None]
            result[arch] = {"images": len(masks), "mean_dice": sum(dices) / len(dices),
                            "in_process_mean_dice": best["mean_dice"], "seconds": round(time.perf_counter() - t0, 2)}
        with urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics", timeout=10) as r:
            result["metrics_sample"] = [line for line in r.read().decode().splitlines()
                                        if line.startswith("camseg_grpc_requests_total")]
    finally:
        server.stop(timeout=60)
    return result


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


def _sweep_arch(out: Path, arch: str, data: Path, progress: bool) -> dict[str, Any]:
    """Settings (layer, threshold, refinement) are chosen on the validation split and
    their Dice is reported on the test split, so no number is selected on the data it
    reports."""
    model, _ = load_model(out / "models" / arch)
    test = split_arrays(data, model, "test")
    rows = dice_sweep(model, test, progress=progress)
    val_rows = dice_sweep(model, split_arrays(data, model, "val"), progress=progress)

    def key(r: Any) -> tuple[str, str, str, bool]:
        return (r.method, r.layer, r.rule, r.largest)

    on_test = {key(r): r for r in rows}

    def chosen(cands: list[Any]) -> Any:
        """The test row of the candidate with the best validation Dice."""
        return on_test[key(best_row(cands))]

    paper, best = on_test[key(paper_row(val_rows, model))], chosen(val_rows)
    by_method: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        at_default = [r for r in val_rows if r.method == m and r.layer == model.cam_layer and not r.largest
                      and parse_rule(r.rule).kind == "fixed"]
        otsu = [r for r in rows if r.method == m and r.layer == model.cam_layer and not r.largest
                and r.rule == "otsu"]
        b = chosen([r for r in val_rows if r.method == m])
        by_method[m] = {
            "otsu_default_layer": otsu[0].mean_dice if otsu else float("nan"),
            "best_default_layer": chosen(at_default).mean_dice if at_default else float("nan"),
            "best": b.mean_dice,
            "best_setting": f"{b.layer}, {b.rule}{', largest CC' if b.largest else ''}",
        }
    # Dice against threshold at the default layer and at the best layer
    fixed = [r for r in rows if parse_rule(r.rule).kind == "fixed" and not r.largest]
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for m in METHODS:
        for layer in sorted({model.cam_layer, best.layer}):
            pts = sorted((parse_rule(r.rule).value, r.mean_dice) for r in fixed if r.method == m and r.layer == layer)
            if pts:
                curves[f"{m}@{layer}"] = ([p[0] for p in pts], [p[1] for p in pts])
    figures.dice_curves(out / "figures" / f"dice_vs_threshold_{arch}.png", curves,
                        f"{arch}: mean Dice on {test.has_mask.sum().item()} tumor test ROIs")
    _overlays(out, arch, model, test, paper, best)
    return {
        "n_tumor": int(test.has_mask.sum()),
        "paper_baseline": asdict(paper),
        "best": asdict(best),
        "by_method": by_method,
        "rows": [asdict(r) for r in rows],
    }


def _overlays(out: Path, arch: str, model: Any, test: Any, paper: Any, best: Any, k: int = 6) -> None:
    idx = torch.nonzero(test.has_mask).flatten()[:k]
    sub = test.select(idx)
    for tag, row in (("paper", paper), ("best", best)):
        heat, probs = heatmaps(model, sub.images, method=row.method, layer=row.layer)
        masks = to_masks(heat, row.rule, predicted=probs.argmax(1), largest=row.largest)
        d = dice(masks, sub.masks)
        rows = [(f"{sub.ids[i]}\np={probs[i, -1]:.2f} Dice={d[i]:.2f}", sub.images[i, 0].numpy(),
                 sub.masks[i].numpy(), heat[i].numpy(), masks[i].numpy()) for i in range(len(sub))]
        figures.overlay_grid(out / "figures" / f"overlays_{arch}_{tag}.png", rows,
                             f"{arch}: {row.method}@{row.layer}, threshold {row.rule}"
                             f"{', largest CC' if row.largest else ''}")


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def _report(res: dict[str, Any]) -> str:
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
            lines.append(f"| {arch} | {m} | {_fmt(v['otsu_default_layer'])} | {_fmt(v['best_default_layer'])} | "
                         f"{_fmt(v['best'])} | {v['best_setting']} |")
    lines += ["", "| architecture | paper setting (Grad-CAM, last layer, fixed t chosen on val) | camseg best (chosen "
              "on val) | gain |",
              "|---|---|---|---:|"]
    for arch, d in res["dice"].items():
        p, b = d["paper_baseline"], d["best"]
        lines.append(f"| {arch} | {_fmt(p['mean_dice'])} (t={p['rule']}) | {_fmt(b['mean_dice'])} ({b['method']}@"
                     f"{b['layer']}, {b['rule']}{', largest CC' if b['largest'] else ''}) | "
                     f"{b['mean_dice'] - p['mean_dice']:+.3f} |")
    for arch in res["dice"]:
        lines += ["", f"### {arch}", "", f"![Dice against threshold](figures/dice_vs_threshold_{arch}.png)", "",
                  f"Paper setting:\n\n![overlays](figures/overlays_{arch}_paper.png)", "",
                  f"camseg best:\n\n![overlays](figures/overlays_{arch}_best.png)"]
        s = res["segment"][arch]
        lines += ["", f"`camseg segment` with the best setting on the test split: {s['images']} images, accuracy "
                  f"{_fmt(s['accuracy'])}, mean Dice {_fmt(s['mean_dice'])} over {s['with_truth']} truth masks "
                  f"(masks and overlays in `segment/{arch}/`)."]
    lines += ["", "## Through the gRPC service", "",
              "`camseg serve` on the exported models; the tumor ROIs of the test split sent as PNG files through "
              "`camseg.client` (`Segment` with each model's best setting and the truth masks).", "",
              "| architecture | images | mean Dice (service) | mean Dice (in process) | seconds |",
              "|---|---:|---:|---:|---:|"]
    for arch, s in res["service"].items():
        if arch == "metrics_sample":
            continue
        lines.append(f"| {arch} | {s['images']} | {_fmt(s['mean_dice'])} | {_fmt(s['in_process_mean_dice'])} | "
                     f"{s['seconds']} |")
    lines += ["", "```", *res["service"].get("metrics_sample", []), "```"]
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


def load_results(out: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads((Path(out) / "results.json").read_text())
    return results


__all__: Sequence[str] = ["DemoConfig", "load_results", "run_demo"]
