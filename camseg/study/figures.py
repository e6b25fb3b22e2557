"""PNG figures: overlays, Dice curves, FROC curves, filtered-retraining accuracies, training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.lines import Line2D

from camseg.heat.overlay import gray_rgb, overlay

if TYPE_CHECKING:  # camseg.study.location imports torch; figures needs it for the annotation only
    from camseg.study.location import LocationRow


def overlay_grid(
    path: Path,
    rows: Sequence[tuple[str, npt.NDArray[np.float32], npt.NDArray[np.bool_] | None,
                         npt.NDArray[np.float32], npt.NDArray[np.bool_]]],
    title: str = "",
) -> None:
    """One row per ROI: image, truth, heatmap, mask over image (red) with truth (green)."""
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for r, (label, image, truth, heat, mask) in enumerate(rows):
        gray = gray_rgb(image)
        axes[r, 0].imshow(gray)
        axes[r, 0].set_ylabel(label, fontsize=7)
        axes[r, 1].imshow(truth if truth is not None else np.zeros(gray.shape[:2]), cmap="gray", vmin=0, vmax=1)
        axes[r, 2].imshow(overlay(image, heat, alpha=0.55))
        axes[r, 3].imshow(overlay(image, None, mask, truth))
    for c, name in enumerate(("image", "truth", "heatmap", "mask (red) / truth (green)")):
        axes[0, c].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dice_curves(path: Path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str) -> None:
    """Mean Dice against the fixed threshold, one line per method/layer."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (ts, ds) in curves.items():
        ax.plot(ts, ds, marker="o", ms=3, label=name)
    ax.set_xlabel("heatmap threshold")
    ax.set_ylabel("mean Dice (tumor ROIs)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def froc_curve(path: Path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, *,
               rates: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> None:
    """Lesion sensitivity against false positives per image (log x), one step line per
    curve (:func:`camseg.study.wholemetrics.froc`'s points), the reading rates dotted."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (fpi, sens) in curves.items():
        x = np.maximum(np.asarray(fpi, dtype=float), min(rates) / 4)  # the (0, 0) start on a log axis
        ax.step(x, sens, where="post", marker="o", ms=3, label=name)
    for r in rates:
        ax.axvline(r, color="gray", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def filter_bars(path: Path, rows: Sequence[Mapping[str, object]], title: str) -> None:
    """Test accuracy and AUC per filter (one group per filter)."""
    names = [f"{r['filter']}" + (f"\n t={r['threshold']}" if r.get("threshold") not in (None, "") else "")
             for r in rows]
    acc = [float(r["accuracy"]) for r in rows]  # type: ignore[arg-type]
    auc = [float(r["auc"]) for r in rows]  # type: ignore[arg-type]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2, 3.6))
    ax.bar(x - 0.2, acc, 0.4, label="accuracy")
    ax.bar(x + 0.2, auc, 0.4, label="ROC AUC")
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xticks(x, names, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(path: Path, histories: Mapping[str, Sequence[Mapping[str, float]]]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        axes[0].plot(ep, [h["val_loss"] for h in hist], label=f"{name} val")
        axes[0].plot(ep, [h["train_loss"] for h in hist], ls="--", label=f"{name} train")
        axes[1].plot(ep, [h["val_auc"] for h in hist], label=name)
    axes[0].set_title("loss", fontsize=9)
    axes[1].set_title("validation ROC AUC", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------- heat location
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def heat_location(path: Path, rows: Mapping[str, Sequence[LocationRow]], *,
                  names: Mapping[str, str] | None = None) -> None:
    """Share of heat on the ROI border (x) against share inside the mass (y), one point
    per architecture (colour) and CAM method (marker), with the mean chance levels of a
    uniform heatmap dashed (:mod:`camseg.study.location`). ``names`` maps architecture keys to
    paper names (default :data:`camseg.models.PAPER_NAMES`); a row with a NaN share
    (every map flat) is left out."""
    if names is None:
        from camseg.models import PAPER_NAMES  # lazily: figures stays free of torch

        names = PAPER_NAMES
    methods = list(dict.fromkeys(r.method for arch_rows in rows.values() for r in arch_rows))
    marker = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(methods)}
    colours = matplotlib.colormaps["tab10"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    arch_handles = []
    for i, (arch, arch_rows) in enumerate(rows.items()):
        colour = colours(i % 10)
        label = names.get(arch, arch)
        arch_handles.append(Line2D([], [], color=colour, marker="o", ls="", label=label))
        for r in arch_rows:
            if np.isfinite(r.border) and np.isfinite(r.inside):
                ax.scatter(r.border, r.inside, color=colour, marker=marker[r.method], s=36, edgecolors="black",
                           linewidths=0.4, zorder=3)
    every = [r for arch_rows in rows.values() for r in arch_rows]
    chance_border = [r.chance_border for r in every if np.isfinite(r.chance_border)]
    chance_inside = [r.chance_inside for r in every if np.isfinite(r.chance_inside)]
    if chance_border:
        ax.axvline(float(np.mean(chance_border)), color="gray", lw=0.9, ls="--")
    if chance_inside:
        ax.axhline(float(np.mean(chance_inside)), color="gray", lw=0.9, ls="--")
    method_handles = [Line2D([], [], color="gray", marker=marker[m], ls="", label=m) for m in methods]
    chance_handle = [Line2D([], [], color="gray", lw=0.9, ls="--", label="chance (uniform heatmap)")]
    ax.legend(handles=arch_handles + method_handles + chance_handle, fontsize=7, loc="center left",
              bbox_to_anchor=(1.02, 0.5))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("share of heat on the ROI border")
    ax.set_ylabel("share of heat inside the mass")
    ax.grid(alpha=0.3)
    ax.set_title("Where the heatmaps sit (tumor ROIs, test split)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mask_pairs(
    path: Path,
    rows: Sequence[tuple[str, npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.bool_],
                         npt.NDArray[np.bool_] | None]],
    title: str = "",
    names: tuple[str, str] = ("camseg", "ceiling"),
) -> None:
    """One row per image: its first mask, then its second (where given), each outlined in
    red over the image with the truth outlined in green."""
    both = any(r[4] is not None for r in rows)
    cols = 2 if both else 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 3.0 * len(rows)), squeeze=False)
    for r, (label, image, truth, first, second) in enumerate(rows):
        axes[r, 0].imshow(overlay(image, None, first, truth))
        axes[r, 0].set_ylabel(label, fontsize=7)
        if both:
            axes[r, 1].imshow(overlay(image, None, second, truth) if second is not None else gray_rgb(image))
    for c in range(cols):
        axes[0, c].set_title(f"{names[c]} (red) / truth (green)", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.35 / (3.0 * len(rows))) if title else None)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def whole_overlays(path: Path, items: Sequence[tuple[str, Any, Any, Any]], *, side: int = 480) -> None:
    """Whole images downsampled to about ``side`` pixels, the mask outlined in yellow
    and the truth in red, one panel per ``(id, image, truth, mask)``."""
    n = max(1, len(items))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 4), squeeze=False)
    for ax, (sid, image, truth, mask) in zip(axes[0], items, strict=False):
        step = max(1, int(np.ceil(max(image.shape[:2]) / side)))
        ax.imshow(np.asarray(image)[::step, ::step], cmap="gray", vmin=0, vmax=1)
        for m, colour in ((truth, "red"), (mask, "yellow")):
            small = np.asarray(m, dtype=bool)[::step, ::step]
            if small.any():
                ax.contour(small, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(sid, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
