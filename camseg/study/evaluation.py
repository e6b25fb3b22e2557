"""Heatmap evaluation by Dice: the sweep and the one evaluation protocol.

**Dice sweep** (:func:`dice_sweep`) — every CAM method at every layer, every threshold
rule, with and without largest-component refinement, with the classifier gate: mean
Dice over the tumor ROIs of a split. The paper's setting (Guan & Loew,
arXiv:2201.02771) is Grad-CAM at the last stage with a fixed threshold; the sweep
measures whether other layers, methods, fused maps and refinement beat it.

**The protocol** (:func:`evaluate_dice`) — settings are *chosen* on one split (val) and
their Dice is *reported* on another (test), so no number is selected on the data it
reports. It returns a :class:`DiceReport` that writes itself as JSON, markdown and a
PNG of Dice against the threshold. ``camseg evaluate``, the demo and the workers all
call it.

Dice is :func:`camseg.core.metrics.dice` (both masks empty -> 1; a tumor ROI the gate
empties scores 0). Rows are at the model's input size, where the masks were resized by
nearest neighbour. Where the report holds :class:`~camseg.study.bounds.Bounds` (a floor
and a ceiling of the same split), its markdown shows each headline Dice beside them.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from camseg.core.errors import InvalidInputError
from camseg.core.metrics import mean_dice
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.data.folder import FolderDataset, atomic_directory
from camseg.data.tensors import ArraySet, load_arrays
from camseg.heat.cam import METHODS, CamNetwork, cam_batches, cam_of, lesion_targets
from camseg.heat.masks import segment_maps
from camseg.heat.methods import parse_method
from camseg.heat.rules import parse_rule
from camseg.models import Classifier
from camseg.pipeline.options import Options
from camseg.pipeline.outputs import data_fingerprint, model_fingerprint, output_key, reusable
from camseg.pipeline.run import LoadedModel
from camseg.study import figures
from camseg.study.bounds import Bounds

DEFAULT_RULES: tuple[str, ...] = ("0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "p80", "p90", "p95", "otsu")
REPORT_FILE = "report.json"


# ------------------------------------------------------------------- Dice sweep
@dataclass(frozen=True)
class SweepRow:
    method: str
    layer: str
    rule: str
    largest: bool
    mean_dice: float
    n: int

    @property
    def setting(self) -> tuple[str, str, str, bool]:
        return (self.method, self.layer, self.rule, self.largest)

    @property
    def label(self) -> str:
        return f"{self.method}@{self.layer}, {self.rule}{', largest CC' if self.largest else ''}"


def dice_sweep(
    model: CamNetwork,
    data: ArraySet,
    *,
    methods: Sequence[str] = METHODS,
    layers: Sequence[str] | None = None,
    rules: Sequence[str] = DEFAULT_RULES,
    largest: Sequence[bool] = (False, True),
    gate: bool = True,
    positives: Sequence[int] | None = None,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    task: str = "Dice sweep",
) -> list[SweepRow]:
    """Mean Dice over the tumor ROIs of ``data`` for every combination.

    ``layers`` defaults to the last three stages; the fused method is evaluated once,
    at the model's Grad-CAM layer. ``positives`` (default: the last class) are the
    lesion classes: each heatmap explains the most probable of them, and the gate
    keeps any of them.
    Rows come in a stable order.
    """
    layer_names = list(layers) if layers else model.layer_names[-3:]
    for name in layer_names:
        model.check_layer(name)
    parsed = [parse_rule(r) for r in rules]
    pos = tuple(positives) if positives else (model.num_classes - 1,)
    if not bool(data.has_mask.any()):
        raise InvalidInputError("the Dice sweep needs tumor ROIs with truth masks in the split")
    # the mean is over tumor ROIs and each mask depends on its own image only
    data = data.select(torch.nonzero(data.has_mask).flatten())
    targets = lesion_targets(model, data.images, pos)
    combos = [(m, lay) for m in methods for lay in (layer_names if cam_of(m).layers == 1 else [model.cam_layer])]
    rows: list[SweepRow] = []
    tracker = Tracker(task, len(combos) * len(data), on_progress=on_progress, should_stop=should_stop)
    for method, layer in combos:
        heat_parts, pred_parts = [], []
        for res in cam_batches(model, data.images, method=method, layer=layer, targets=targets):
            heat_parts.append(res.heatmaps)
            pred_parts.append(res.probabilities.argmax(1))
            tracker.advance(len(res.heatmaps))
        heat, pred = torch.cat(heat_parts), torch.cat(pred_parts)
        for rule, lcc in itertools.product(parsed, largest):
            seg = segment_maps(heat, rule, predicted=pred if gate else None, positive_class=pos, largest=lcc)
            rows.append(SweepRow(method, layer, str(rule), lcc, mean_dice(seg.masks, data.masks), len(data)))
    return rows


def best_row(rows: Iterable[SweepRow]) -> SweepRow:
    """The row of the highest mean Dice (NaN counts as lowest)."""
    return max(rows, key=lambda r: (-math.inf if math.isnan(r.mean_dice) else r.mean_dice))


def paper_rows(rows: Iterable[SweepRow], default_layer: str) -> list[SweepRow]:
    """The paper's setting: Grad-CAM at the last stage, a fixed threshold, no refinement."""
    return [r for r in rows if r.method == "gradcam" and r.layer == default_layer and not r.largest
            and parse_rule(r.rule).kind == "fixed"]


# ------------------------------------------------------------------ the protocol
@dataclass(frozen=True)
class Choice:
    """A setting chosen on the selection split, with its Dice there and on the report split."""

    method: str
    layer: str
    rule: str
    largest: bool
    selected_dice: float
    mean_dice: float

    @property
    def label(self) -> str:
        return f"{self.method}@{self.layer}, {self.rule}{', largest CC' if self.largest else ''}"

    @property
    def options(self) -> Options:
        """The pipeline options of this setting."""
        return Options(method=parse_method(self.method), layer=self.layer, threshold=parse_rule(self.rule),
                       largest=self.largest)


@dataclass(frozen=True)
class MethodSummary:
    """One CAM method: Otsu at the default layer (no choice to make), the best fixed
    threshold at the default layer and the best setting overall (both chosen)."""

    otsu_default_layer: float
    best_default_layer: Choice | None
    best: Choice


@dataclass(frozen=True)
class DiceReport:
    model: str
    architecture: str
    data: str
    select_split: str
    report_split: str
    n_select: int
    n_report: int
    default_layer: str
    select_rows: list[SweepRow]
    report_rows: list[SweepRow]
    best: Choice
    paper: Choice
    by_method: dict[str, MethodSummary]
    key: str = ""
    notes: list[str] = field(default_factory=list)
    bounds: Bounds | None = None

    @property
    def same_split(self) -> bool:
        return self.select_split == self.report_split

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiceReport:
        def choice(c: dict[str, Any] | None) -> Choice | None:
            return Choice(**c) if c else None

        by_method = {}
        for m, v in d["by_method"].items():
            best = choice(v["best"])
            assert best is not None
            by_method[m] = MethodSummary(v["otsu_default_layer"], choice(v["best_default_layer"]), best)
        best, paper = choice(d["best"]), choice(d["paper"])
        assert best is not None and paper is not None
        bounds = Bounds.from_dict(d["bounds"]) if d.get("bounds") else None
        return cls(**{**d, "select_rows": [SweepRow(**r) for r in d["select_rows"]],
                      "report_rows": [SweepRow(**r) for r in d["report_rows"]], "best": best, "paper": paper,
                      "by_method": by_method, "bounds": bounds})

    def curves(self) -> dict[str, tuple[list[float], list[float]]]:
        """Report-split Dice against the fixed threshold, per method, at the default layer
        and the best layer (no refinement)."""
        fixed = [r for r in self.report_rows if parse_rule(r.rule).kind == "fixed" and not r.largest]
        out: dict[str, tuple[list[float], list[float]]] = {}
        for m in dict.fromkeys(r.method for r in self.report_rows):
            for layer in sorted({self.default_layer, self.best.layer}):
                pts = sorted((parse_rule(r.rule).value, r.mean_dice) for r in fixed
                             if r.method == m and r.layer == layer)
                if pts:
                    out[f"{m}@{layer}"] = ([p[0] for p in pts], [p[1] for p in pts])
        return out

    def write_curves(self, path: Path) -> None:
        figures.dice_curves(path, self.curves(),
                            f"{self.architecture}: mean Dice on {self.n_report} tumor {self.report_split} ROIs")

    def to_markdown(self, top: int = 10) -> str:
        lines = [f"# Dice evaluation of {self.model}", "",
                 f"Settings chosen on the {self.select_split} split ({self.n_select} tumor ROIs); mean Dice reported "
                 f"on the {self.report_split} split ({self.n_report} tumor ROIs). Masks are gated by the classifier.",
                 ""]
        lines += [f"> {n}" for n in self.notes]
        lines += ["| method | Otsu, default layer | best fixed t, default layer | best | best setting |",
                  "|---|---:|---:|---:|---|"]
        for m, s in self.by_method.items():
            fixed = _fmt(s.best_default_layer.mean_dice) if s.best_default_layer else "n/a"
            lines.append(f"| {m} | {_fmt(s.otsu_default_layer)} | {fixed} | {_fmt(s.best.mean_dice)} | "
                         f"{s.best.label} |")
        lines += ["", f"Paper setting (Grad-CAM@{self.paper.layer}, t={self.paper.rule}): "
                  f"{_fmt(self.paper.mean_dice)}; best ({self.best.label}): {_fmt(self.best.mean_dice)}; gain "
                  f"{self.best.mean_dice - self.paper.mean_dice:+.3f}.", ""]
        lines += self.bounds_markdown()
        lines += [
                  f"Top {top} settings on the {self.report_split} split (for reading, not for choosing):", "",
                  "| method | layer | threshold | largest CC | mean Dice |", "|---|---|---|---|---:|"]
        for r in sorted(self.report_rows, key=lambda r: -r.mean_dice)[:top]:
            lines.append(f"| {r.method} | {r.layer} | {r.rule} | {'yes' if r.largest else 'no'} | "
                         f"{_fmt(r.mean_dice)} |")
        return "\n".join(lines) + "\n"

    def bounds_markdown(self) -> list[str]:
        """The paper setting, the best and each method's best beside the floor and the
        ceiling (lines ending with a blank one); none without bounds."""
        b = self.bounds
        if b is None:
            return []
        lines = ["What the Dice is worth: " + b.note(), "", Bounds.HEADER,
                 b.row(f"paper setting (Grad-CAM@{self.paper.layer}, t={self.paper.rule})", self.paper.mean_dice),
                 b.row(f"best ({self.best.label})", self.best.mean_dice)]
        lines += [b.row(f"{m}, best ({s.best.label})", s.best.mean_dice) for m, s in self.by_method.items()]
        return [*lines, ""]

    def write(self, out: Path, *, overwrite: bool = False) -> Path:
        """``out/report.json`` (written last), ``out/report.md`` and
        ``out/dice_vs_threshold.png``, atomically."""
        with atomic_directory(out, overwrite=overwrite) as tmp:
            (tmp / "report.md").write_text(self.to_markdown())
            self.write_curves(tmp / "dice_vs_threshold.png")
            (tmp / REPORT_FILE).write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return Path(out)


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def split_arrays(data_dir: Path | FolderDataset, model: Classifier, split: str | None = "test") -> ArraySet:
    """The images and masks of one split at the model's input size."""
    ds = data_dir if isinstance(data_dir, FolderDataset) else FolderDataset.open(data_dir)
    return load_arrays(ds, ds.subset(split), model.spec.input_size, model.spec.in_channels)


def evaluate_dice(
    model: LoadedModel | Path,
    data_dir: Path,
    *,
    select: str = "val",
    report: str = "test",
    methods: Sequence[str] = METHODS,
    layers: Sequence[str] | None = None,
    rules: Sequence[str] = DEFAULT_RULES,
    largest: Sequence[bool] = (False, True),
    gate: bool = True,
    out: Path | None = None,
    overwrite: bool = False,
    bounds: Bounds | None = None,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> DiceReport:
    """Sweep on ``select``, sweep on ``report``, choose on the first, report the second.

    With ``out``, the report is written there (:meth:`DiceReport.write`) and a complete
    report of the same inputs found there is returned instead of recomputed. A data set
    without splits is selected and reported on as a whole, and the report says so.
    ``bounds`` (:func:`camseg.study.bounds.dataset_bounds` of the same data and report
    split) are attached to the report, a reused one included, and shown in its markdown.
    """
    loaded = model if isinstance(model, LoadedModel) else LoadedModel.load(model, onnx=False)
    net = loaded.gradients()
    ds = FolderDataset.open(data_dir)
    sel_idx, rep_idx = ds.subset(select), ds.subset(report)
    key = output_key(model=model_fingerprint(loaded.path), data=data_fingerprint(ds, sorted(set(sel_idx + rep_idx))),
                     select=select, report=report, methods=list(methods), layers=list(layers or []),
                     rules=list(rules), largest=list(largest), gate=gate)
    if out is not None:
        done = reusable(out, REPORT_FILE, key, overwrite=overwrite)
        if done is not None:
            found = DiceReport.from_dict(done)
            if bounds is None or found.bounds == bounds:
                return found
            found = replace(found, bounds=bounds)
            found.write(out, overwrite=True)
            return found
    notes = []
    if sel_idx == rep_idx:
        notes.append(f"{data_dir} has no {select}/{report} splits: settings were chosen on the data they are "
                     "reported on, so the best Dice is optimistic.")
    kwargs: dict[str, Any] = {"methods": methods, "layers": layers, "rules": rules, "largest": largest, "gate": gate,
                              "positives": loaded.positives, "on_progress": on_progress, "should_stop": should_stop}
    sel_data = load_arrays(ds, sel_idx, loaded.input_hw, loaded.channels)
    select_rows = dice_sweep(net, sel_data, task=f"Dice sweep ({select})", **kwargs)
    if sel_idx == rep_idx:
        rep_data, report_rows = sel_data, select_rows
    else:
        rep_data = load_arrays(ds, rep_idx, loaded.input_hw, loaded.channels)
        report_rows = dice_sweep(net, rep_data, task=f"Dice sweep ({report})", **kwargs)
    on_report = {r.setting: r for r in report_rows}

    def chosen(cands: list[SweepRow]) -> Choice:
        s = best_row(cands)
        return Choice(s.method, s.layer, s.rule, s.largest, s.mean_dice, on_report[s.setting].mean_dice)

    default = net.cam_layer
    paper = paper_rows(select_rows, default)
    if not paper:
        paper = [r for r in select_rows if r.layer == default and not r.largest] or select_rows
    by_method = {}
    for m in dict.fromkeys(r.method for r in select_rows):
        at_default = [r for r in select_rows if r.method == m and r.layer == default and not r.largest
                      and parse_rule(r.rule).kind == "fixed"]
        otsu = [r for r in report_rows if r.method == m and r.layer == default and not r.largest and r.rule == "otsu"]
        by_method[m] = MethodSummary(otsu[0].mean_dice if otsu else math.nan,
                                     chosen(at_default) if at_default else None,
                                     chosen([r for r in select_rows if r.method == m]))
    result = DiceReport(
        str(loaded.path), str(loaded.meta.get("architecture", "")), str(data_dir), select, report,
        int(sel_data.has_mask.sum()), int(rep_data.has_mask.sum()), default, select_rows, report_rows,
        chosen(select_rows), chosen(paper), by_method, key, notes, bounds)
    if out is not None:
        result.write(out, overwrite=True)
    return result
