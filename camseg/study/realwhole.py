"""Leave-one-case-out on sliced volumes, whole slices: a classifier trained on ROIs cut
from the other cases, slid over every slice of the held-out case.

The folds are :mod:`camseg.study.realeval`'s: for each case of a folder data set of
slices (ids ``<case>-s<slice>``) in turn, that case is ``test``, the next case with lesion
slices is ``val`` (:func:`~camseg.study.realeval.val_case`) and the rest ``train``. Then,
per fold:

1. **ROIs** (:func:`camseg.data.rois.extract_rois`) are cut from the train and val
   cases' slices only, each slice keeping its case's split; the held-out case gives none.
2. A **classifier** is trained on those ROIs (classes balanced by inverse frequency,
   early stopping on the val ROIs); it records the ROIs' scale.
3. It is **slid over whole slices** (:mod:`camseg.pipeline.whole`): the threshold rule and
   decision threshold are chosen on the val case's slices
   (:func:`camseg.study.wholeeval.choose_whole`) and scored on the held-out case's
   (:func:`~camseg.study.wholeeval.evaluate_whole`): Dice per lesion slice, false area on
   normal slices, lesion FROC and image AUC (:mod:`camseg.study.wholemetrics`).
4. The **ceiling**: a U-Net trained on the true masks of the same train ROIs with the
   same epoch budget (:func:`camseg.study.bounds.fit_ceiling`), slid the same way, its
   threshold and gate (none, or the classifier's) chosen on the val slices, as
   :func:`camseg.study.wholeeval.whole_ceiling` chooses them. The **floor**: the better on the val slices of the
   empty and the tissue mask (:func:`~camseg.study.wholeeval.whole_floor_of`).

Pooled numbers are over all held-out lesion slices (each fold's own models); the
pooled FROC and image AUC pool the held-out slices of every fold.
``position = (Dice - floor) / (ceiling - floor)``.

Memory: one fold's ROIs as tensors while training, one slice at a time while sliding
(:mod:`camseg.pipeline.whole`), plus the held-out case's slices and masks for its figure.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from camseg import __version__
from camseg.core.errors import InvalidInputError
from camseg.core.outdir import fresh_dir
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.scale import Scale
from camseg.data.folder import FolderDataset
from camseg.data.rois import RoiConfig, extract_rois, folder_cases
from camseg.data.tensors import load_arrays
from camseg.models.export import export_model
from camseg.models.modeldir import atomic_write_bytes, write_json
from camseg.models.training import TrainConfig, train_from_folder
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.whole import Tiling
from camseg.study import figures
from camseg.study.bounds import Bounds, ceiling_config, fit_ceiling
from camseg.study.realeval import DEFAULT_ARCH, cases_of, val_case, write_fold
from camseg.study.wholeeval import (
    CEILING_RULES,
    ceiling_options,
    choose_whole,
    evaluate_whole,
    whole_floor_of,
    with_ceiling,
)
from camseg.study.wholemetrics import FP_RATES, WholeReport, WholeRow

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
EARLIER: dict[str, tuple[float, str]] = {
    "pyradiomics-3.0.1-cases": (0.034, "the ROI-resize method (each whole slice resized to the classifier's input), "
                                       "its recipe's Dice over the 27 lesion slices, measured earlier"),
}
"""Earlier measured Dice per data set name (``dataset.json`` ``name``), shown beside."""
MAX_FIGURE_ROWS = 12


@dataclass(frozen=True)
class WholeFold:
    """One fold: the held-out case, its val and train cases, the ROIs trained on, the
    classifier's val metrics, camseg's whole-slice report and setting, the ceiling's, the
    floor (None where the held-out case has no lesion slice) and the fold's seconds."""

    case: str
    n_lesion: int
    n_normal: int
    val_case: str
    train_cases: list[str]
    rois: dict[str, Any]
    classifier: dict[str, Any]
    camseg: WholeReport
    choice: dict[str, Any]
    ceiling: WholeReport
    ceiling_choice: dict[str, Any]
    ceiling_roi: dict[str, Any]
    floor: dict[str, Any] | None
    seconds: float
    figure: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def bounds(self) -> Bounds:
        f = self.floor["dice"] if self.floor else math.nan
        return Bounds(f, self.ceiling.mean_dice, self.floor["choice"] + " mask" if self.floor else "",
                      "U-Net on the true masks of the train ROIs, slid the same way", "test", self.n_lesion)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("camseg", "ceiling")}
        return {**d, "camseg": self.camseg.to_dict(), "ceiling": self.ceiling.to_dict(),
                "position": self.bounds.position(self.camseg.mean_dice)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WholeFold:
        rest = {k: v for k, v in d.items() if k != "position"}
        return cls(**{**rest, "camseg": WholeReport.from_dict(d["camseg"]),
                      "ceiling": WholeReport.from_dict(d["ceiling"])})


def _rows(folds: Sequence[WholeFold], key: str) -> list[WholeRow]:
    return [r for f in folds for r in getattr(f, key).rows]


@dataclass(frozen=True)
class WholeLocoReport:
    """The folds and their pooled numbers (over all held-out slices)."""

    data: str
    config: dict[str, Any]
    folds: list[WholeFold]
    seconds: float
    earlier: dict[str, Any] | None = None  # {"dice": ..., "label": ...}
    camseg_version: str = __version__

    @property
    def pooled(self) -> WholeReport:
        return WholeReport(_rows(self.folds, "camseg"), "camseg, pooled")

    @property
    def pooled_ceiling(self) -> WholeReport:
        return WholeReport(_rows(self.folds, "ceiling"), "ceiling, pooled")

    @property
    def pooled_bounds(self) -> Bounds:
        n = [f.n_lesion for f in self.folds if f.floor]
        floor = sum(f.floor["dice"] * f.n_lesion for f in self.folds if f.floor) / sum(n) if sum(n) else math.nan
        return Bounds(floor, self.pooled_ceiling.mean_dice, "per fold: the better on val of the empty and the "
                      "tissue mask", "U-Net on the true masks of each fold's train ROIs", "test", sum(n))

    def summary(self) -> dict[str, Any]:
        p, c, b = self.pooled.summary(), self.pooled_ceiling.summary(), self.pooled_bounds
        return {"camseg": p, "ceiling": c, "bounds": b.to_dict(), "position": b.position(p["mean_dice"])}

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "config": self.config, "folds": [f.to_dict() for f in self.folds],
                "seconds": self.seconds, "earlier": self.earlier, "pooled": self.summary(),
                "camseg_version": self.camseg_version}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WholeLocoReport:
        return cls(d["data"], d["config"], [WholeFold.from_dict(f) for f in d["folds"]], d["seconds"],
                   d.get("earlier"), d.get("camseg_version", ""))

    def to_markdown(self) -> str:
        cfg, s = self.config, self.summary()
        n_slices = sum(f.n_lesion + f.n_normal for f in self.folds)
        n_lesion = sum(f.n_lesion for f in self.folds)
        lines = [
            "# Leave-one-case-out, whole slices", "",
            f"Data: `{self.data}`: {len(self.folds)} cases, {n_slices} slices, **{n_lesion} with lesion**. For each "
            f"case, ROIs ({cfg['size']} px at {cfg['scale']:g} source pixels per model pixel, {cfg['per_lesion']} per "
            f"lesion, {cfg['normal_ratio']:g} normal per lesion ROI) are cut from the other cases' slices only; a "
            f"{cfg['arch']} classifier ({cfg['epochs']} epochs, classes balanced) trained on them is slid over every "
            "slice of the held-out case. The threshold and the decision threshold are chosen on the val case's "
            "slices. Dice is the mean over lesion slices; a lesion slice given no mask scores 0. "
            f"Ceiling: a U-Net trained on the true masks of the same train ROIs ({cfg['ceiling_epochs']} epochs), "
            "slid the same way, its threshold and gate chosen on val. Floor: the better on val of the empty and the "
            "tissue mask. *position* = (Dice - floor) / (ceiling - floor).", "",
            f"> Small numbers: {n_lesion} lesion slices in all. Read them as a check of the method on held-out real "
            "slices, not a precise estimate.", "",
            "| held-out case | lesion / normal slices | val case | train ROIs (lesion / normal) | "
            "classifier val AUC (epoch) | **camseg Dice** | floor | ceiling | position | false area on normals | "
            "FROC sens. at 1 FP/slice | "
            "image AUC | setting (chosen on val) | seconds |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for f in self.folds:
            r, b = f.camseg.summary(), f.bounds
            sens1 = r["froc"]["at_rates"].get("1", math.nan) if r["froc"] else math.nan
            lines.append(
                f"| {f.case} | {f.n_lesion} / {f.n_normal} | {f.val_case} | {f.rois['train_lesion']} / "
                f"{f.rois['train_normal']} | {_fmt(f.classifier.get('auc', math.nan))} "
                f"({f.classifier.get('best_epoch')}) | "
                f"**{_fmt(r['mean_dice'])}** | {b.cells(r['mean_dice'])} | {_fmt(r['false_fraction'])} | "
                f"{_fmt(sens1)} | {_fmt(r['auc'])} | {f.choice['label']} | {f.seconds:.0f} |")
        p, c = s["camseg"], s["ceiling"]
        b = self.pooled_bounds
        lines += [
            "", "| pooled over lesion slices | lesion slices | **camseg Dice** | floor | ceiling | position | "
            "false area on normals | image AUC |", "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| whole slices (this run) | {p['with_lesion']} | **{_fmt(p['mean_dice'])}** | "
            f"{b.cells(p['mean_dice'])} | {_fmt(p['false_fraction'])} | {_fmt(p['auc'])} |",
        ]
        if self.earlier:
            lines.append(f"| ROI-resize recipe (earlier measured) | {n_lesion} | {_fmt(self.earlier['dice'])} | | | "
                         f"{_fmt(b.position(self.earlier['dice']))} | | |")
        if self.earlier:
            lines += ["", f"Earlier: {self.earlier['label']}."]
        rates = [f"{r:g}" for r in FP_RATES]
        lines += ["", f"Lesion FROC, pooled over the held-out slices of every fold ({p['froc']['n_lesions']} lesions "
                  "in all; a hit: a candidate's centroid inside the lesion or within its equivalent radius of its "
                  "centre): sensitivity at false positives per slice", "",
                  "| | " + " | ".join(rates) + " | FROC score |", "|---|" + "---:|" * (len(rates) + 1)]
        for name, summ in (("camseg", p), ("ceiling", c)):
            fr = summ["froc"]
            lines.append(f"| {name} | " + " | ".join(_fmt(fr["at_rates"][k]) for k in rates) +
                         f" | {_fmt(fr['score'])} |")
        lines += ["", f"Ceiling pooled: image AUC {_fmt(c['auc'])}, false area on normals "
                  f"{_fmt(c['false_fraction'])}. Time: {self.seconds:.0f} s for all folds."]
        notes = [f"- {f.case}: {n}" for f in self.folds for n in f.notes]
        if notes:
            lines += ["", "Notes:", "", *notes]
        figs = [f for f in self.folds if f.figure]
        if figs:
            lines += ["", "## Held-out slices, camseg and the ceiling", ""]
            lines += [f"### {f.case}\n\n![{f.case}]({f.figure})\n" for f in figs]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> Path:
        """``out/report.md`` and ``out/report.json`` (written last)."""
        atomic_write_bytes(Path(out) / "report.md", self.to_markdown().encode())
        write_json(Path(out) / REPORT_FILE, self.to_dict())
        return Path(out) / REPORT_FILE


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


# -------------------------------------------------------------------------- the run
def leave_one_case_out_whole(
    data_dir: Path,
    out: Path,
    *,
    arch: str | None = None,
    epochs: int = 15,
    scale: float = 1.0,
    size: int = 64,
    per_lesion: int = 8,
    normal_ratio: float = 2.0,
    ceiling_epochs: int | None = None,
    tiling: Tiling | None = None,
    seed: int = 0,
    overwrite: bool = False,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> WholeLocoReport:
    """Leave each case of ``data_dir`` out in turn, train on ROIs of the others, segment
    its whole slices; return (and write to ``out``) the report.

    Args:
        data_dir: a folder data set whose ids are ``<case>-s<slice>``, at least 3 cases;
            its own splits are ignored.
        out: ``folds/<case>/{data,rois,model}``, ``figures/<case>.png``, ``report.md``
            and ``report.json``.
        arch, epochs: the classifier (default resnet) and its epochs.
        scale, size, per_lesion, normal_ratio: the ROIs (:class:`~camseg.data.rois.RoiConfig`):
            source pixels per model pixel, side in model pixels, ROIs per lesion, normal
            ROIs per lesion ROI.
        ceiling_epochs: the ceiling U-Net's epochs (default: ``epochs``).
        tiling: the sliding window (default :class:`~camseg.pipeline.whole.Tiling`; its scale
            defaults to the model's, i.e. ``scale``).
        overwrite: replace a non-empty ``out``.

    Raises:
        InvalidInputError: ids not ``<case>-s<n>``, fewer than 3 cases, a fold without a
            val case with lesions or without lesion ROIs to train on, bad ROI settings,
            ``out`` not empty without ``overwrite`` or holding ``data_dir``.
    """
    started = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out)
    ds = FolderDataset.open(data_dir)
    by_case = cases_of(ds)
    if out.resolve() == data_dir.resolve() or out.resolve() in data_dir.resolve().parents:
        raise InvalidInputError(f"{out}: holds the data set {data_dir}; choose another output folder")
    if epochs < 1 or (ceiling_epochs is not None and ceiling_epochs < 1):
        raise InvalidInputError("epochs must be at least 1")
    roi_cfg = RoiConfig(Scale(source_pixels_per_model_pixel=scale), size=size, per_lesion=per_lesion,
                        normal_ratio=normal_ratio, seed=seed)
    roi_cfg.validate()
    arch = arch or DEFAULT_ARCH
    tiling = tiling or Tiling()
    ceiling_epochs = ceiling_epochs or epochs
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    fresh_dir(out, "camseg evaluate-real --method whole")
    (out / "figures").mkdir()
    cases = list(by_case)
    n_lesion = {c: sum(ds.samples[i].mask_path is not None for i in idx) for c, idx in by_case.items()}
    config = {"method": "whole", "arch": arch, "epochs": epochs, "scale": scale, "size": size,
              "per_lesion": per_lesion, "normal_ratio": normal_ratio, "ceiling_epochs": ceiling_epochs,
              "tiling": {**asdict(tiling), "mode": tiling.mode.value}, "seed": seed, "balanced": True}
    tracker = Tracker("leave one case out (whole slices)", len(cases), on_progress=on_progress,
                      should_stop=should_stop)
    folds: list[WholeFold] = []
    for case in cases:
        val = val_case(cases, case, {c: n_lesion[c] > 0 for c in cases})
        if n_lesion[val] == 0:
            raise InvalidInputError(f"{data_dir}: holding out {case} leaves no other case with lesion slices to "
                                    "choose the setting on")
        train_cases = [c for c in cases if c not in (case, val)]
        fold = out / "folds" / case
        data = write_fold(ds, fold / "data", {case: "test", val: "val", **{c: "train" for c in train_cases}}, {
            **ds.meta, "name": f"{ds.meta.get('name', data_dir.name)} without {case}",
            "fold": {"source": str(data_dir.resolve()), "test": case, "val": val, "train": train_cases}})
        logger.info("fold %s (whole slices): val %s, train %s", case, val, ", ".join(train_cases))
        folds.append(_fold(data, fold, case, val, train_cases, out, arch=arch, epochs=epochs, roi_cfg=roi_cfg,
                           ceiling_epochs=ceiling_epochs, tiling=tiling, seed=seed, on_progress=on_progress,
                           should_stop=should_stop))
        tracker.advance(1, f"{case}: whole-slice Dice {_fmt(folds[-1].camseg.mean_dice)}")
    earlier = EARLIER.get(str(ds.meta.get("name", "")))
    report = WholeLocoReport(str(data_dir.resolve()), config, folds, round(time.perf_counter() - started, 1),
                             {"dice": earlier[0], "label": earlier[1]} if earlier else None)
    report.write(out)
    tracker.finish(f"pooled whole-slice Dice {_fmt(report.pooled.mean_dice)} over "
                   f"{sum(f.n_lesion for f in folds)} lesion slices")
    return report


def fold_rois(data: Path, out: Path, cfg: RoiConfig, *, on_progress: OnProgress | None = None,
              should_stop: ShouldStop | None = None) -> tuple[Path, dict[str, Any]]:
    """ROIs of a fold's train and val slices (the test slices give none), each slice's
    ROIs in its split; returns the ROI data set and its counts per split and kind.

    Raises:
        InvalidInputError: no lesion ROI in the train or the val split.
    """
    cases, provenance = folder_cases(data, cfg.scale)
    kept = [c for c in cases if c.split in ("train", "val")]
    rois = extract_rois(kept, out, cfg, provenance={**provenance, "splits": ["train", "val"]},
                        on_progress=on_progress, should_stop=should_stop)
    ds = FolderDataset.open(rois)
    counts: dict[str, Any] = {f"{split}_{kind}": sum(ds.samples[i].label == label for i in ds.subset(split))
                              for split in ("train", "val") for kind, label in (("lesion", 1), ("normal", 0))}
    counts["normal_shortfall"] = json.loads((rois / "dataset.json").read_text()).get("normal_shortfall", 0)
    for split in ("train", "val"):
        if not counts[f"{split}_lesion"]:
            raise InvalidInputError(f"{data}: no lesion ROI in the {split} slices to train the classifier on")
    return rois, counts


def _fold(data: Path, fold: Path, case: str, val: str, train_cases: list[str], out: Path, *, arch: str,
          epochs: int, roi_cfg: RoiConfig, ceiling_epochs: int, tiling: Tiling, seed: int,
          on_progress: OnProgress | None, should_stop: ShouldStop | None) -> WholeFold:
    """ROIs, classifier, ceiling, choices on val and scores on the held-out case of one fold."""
    started = time.perf_counter()
    rois, counts = fold_rois(data, fold / "rois", roi_cfg, on_progress=on_progress, should_stop=should_stop)
    model_dir = fold / "model"
    meta = train_from_folder(rois, arch, model_dir, TrainConfig(epochs=epochs, seed=seed, balanced=True),
                             input_size=roi_cfg.size, on_progress=on_progress, should_stop=should_stop)
    export_model(model_dir)
    model = LoadedModel.load(model_dir)

    rds = FolderDataset.open(rois)
    train = load_arrays(rds, rds.subset("train"), roi_cfg.size, model.channels)
    select = load_arrays(rds, rds.subset("val"), roi_cfg.size, model.channels)
    ceiling = fit_ceiling(train, select, select, ceiling_config(ceiling_epochs, seed=seed), on_progress=on_progress,
                          should_stop=should_stop)
    del train, select

    ds = FolderDataset.open(data)
    test_idx = ds.subset("test")
    held_lesion = sum(ds.samples[i].mask_path is not None for i in test_idx)
    choice = choose_whole(model, ds, tiling=tiling, on_progress=on_progress, should_stop=should_stop)
    report, kept = evaluate_whole(model, ds, choice.options, tiling=tiling, name=case, keep=len(test_idx),
                                  on_progress=on_progress, should_stop=should_stop)
    ceiled = with_ceiling(model, ceiling.student)
    # as camseg.study.wholeeval.whole_ceiling: threshold and gate (none, or the classifier's) chosen on val
    c_choice = choose_whole(ceiled, ds, ceiling_options(), tiling=tiling, rules=CEILING_RULES,
                            on_progress=on_progress, should_stop=should_stop)
    c_report, c_kept = evaluate_whole(ceiled, ds, c_choice.options, tiling=tiling, name=f"{case} ceiling",
                                      keep=len(test_idx), on_progress=on_progress, should_stop=should_stop)
    notes = list(report.notes)
    if not counts["val_normal"]:
        notes.append(f"the val case {val} gives no normal ROI: the classifier's early stopping saw lesion ROIs only")
    if not choice.val_dice > 0:
        notes.append("every setting tried scored Dice 0 on the val slices: the first was kept")
    floor = None
    if held_lesion:
        floor = asdict(whole_floor_of(ds))
    else:
        notes.append("no lesion slices: only its false area is measured")
    figure: str | None = f"figures/{case}.png"
    if not _figure(out / str(figure), kept, c_kept, report, c_report, case):
        figure = None
    val_metrics = meta["metrics"]["val"]
    return WholeFold(
        case, held_lesion, len(test_idx) - held_lesion, val, train_cases, counts,
        {"accuracy": val_metrics.get("val_accuracy", math.nan), "auc": val_metrics.get("val_auc", math.nan),
         "best_epoch": meta["metrics"]["best_epoch"], "scale": meta.get("scale")},
        report, _choice(choice), c_report, _choice(c_choice), ceiling.record(), floor,
        round(time.perf_counter() - started, 1), figure, notes)


def _choice(choice: Any) -> dict[str, Any]:
    return {"label": choice.label, "val_dice": choice.val_dice, "tried": choice.tried,
            "options": choice.options.to_record()}


def _figure(path: Path, kept: list[Any], c_kept: list[Any], report: WholeReport, c_report: WholeReport,
            case: str) -> bool:
    """The held-out lesion slices (else the normal slices given the largest false mask),
    at most :data:`MAX_FIGURE_ROWS`: camseg's mask and the ceiling's, truth outlined."""
    dice = {r.id: r for r in report.rows}
    c_dice = {r.id: r for r in c_report.rows}
    lesion = [k for k, (_, _, truth, _) in enumerate(kept) if truth.any()]
    if not lesion:
        lesion = sorted(range(len(kept)), key=lambda k: -int(kept[k][3].sum()))
    rows = []
    for k in lesion[:MAX_FIGURE_ROWS]:
        sid, image, truth, mask = kept[k]
        r, c = dice[sid], c_dice[sid]
        what = (f"Dice {r.dice:.2f} / {c.dice:.2f}" if r.has_lesion else
                f"false area {r.false_fraction:.3f} / {c.false_fraction:.3f}")
        rows.append((f"{sid}  p={r.score:.2f}\n{what}", image, truth, mask, c_kept[k][3]))
    if rows:
        figures.mask_pairs(path, rows, f"held-out {case}: whole slices (camseg / ceiling)")
    return bool(rows)


__all__ = ["EARLIER", "WholeFold", "WholeLocoReport", "fold_rois", "leave_one_case_out_whole"]
