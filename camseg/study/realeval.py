"""Leave-one-case-out Dice on sliced volumes: every lesion slice scored by a model that
never saw its case.

A folder data set of sliced volumes (ids ``<case>-s<slice>``, as written by
:mod:`camseg.data.volumes` and :func:`camseg.data.real.build_real_dataset`) is split by
case: for each case in turn a *fold* holds that case out as ``test``, takes one other
case as ``val`` and trains a classifier on the rest (from scratch, or fine-tuned from a
base model). The fold's protocol (:func:`camseg.study.evaluation.evaluate_dice`) and recipe
(:func:`camseg.study.recipe.choose_recipe`) are chosen on the val case only and scored on the
held-out case, so no number is chosen on the slices it reports.

Dice is :func:`camseg.core.metrics.dice` at each slice's own size (:func:`camseg.study.recipe.score`);
a lesion slice the classifier calls normal scores 0. A case's Dice is the mean over its
lesion slices; the report gives two means over cases: weighted by lesion slices (the
mean over every lesion slice of the data set) and unweighted over the cases that have
lesion slices. A case without lesion slices has no Dice (NaN) and counts in neither, but
its false mask area and specificity are reported.

>>> report = leave_one_case_out(Path("data/real"), Path("real-out"))  # doctest: +SKIP
>>> report.means["recipe"].over_slices  # doctest: +SKIP
0.31
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camseg import __version__
from camseg.core.errors import InvalidInputError
from camseg.core.outdir import fresh_dir
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.data.folder import FolderDataset, Sample, atomic_directory, decode_image, read_mask
from camseg.models.export import export_model
from camseg.models.modeldir import atomic_write_bytes, read_metadata, write_json
from camseg.models.training import TrainConfig, train_from_folder
from camseg.pipeline.recipe_record import Recipe, Views, describe, save_recipe
from camseg.pipeline.run import LoadedModel, run
from camseg.pipeline.student import DistillConfig
from camseg.study import figures
from camseg.study.evaluation import evaluate_dice
from camseg.study.recipe import RecipeConfig, choose_recipe, make_distiller

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
CASE_ID = re.compile(r"(?P<case>.+)-s(?P<slice>\d+)")
"""A slice id: the case, ``-s`` and the slice number (the last ``-s<digits>`` ends it)."""
DEFAULT_ARCH = "resnet"
DEFAULT_SIZE = 64
MIN_CASES = 3  # a held-out case, a val case and at least one case to train on


# -------------------------------------------------------------------------- cases
def case_of(sample_id: str) -> str | None:
    """The case of a slice id (``brain1-s012`` -> ``brain1``); None when the id is not
    ``<case>-s<n>``."""
    m = CASE_ID.fullmatch(sample_id)
    return m.group("case") if m else None


def cases_of(ds: FolderDataset) -> dict[str, list[int]]:
    """Sample indices per case, cases in order of first appearance in ``labels.csv``.

    Raises:
        InvalidInputError: an id is not ``<case>-s<n>``, or there are fewer than 3 cases.
    """
    out: dict[str, list[int]] = {}
    bad = []
    for i, s in enumerate(ds.samples):
        case = case_of(s.id)
        if case is None:
            bad.append(s.id)
        else:
            out.setdefault(case, []).append(i)
    if bad:
        shown = ", ".join(repr(b) for b in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise InvalidInputError(f"{ds.root}/labels.csv: ids must be <case>-s<slice> (like brain1-s012) for "
                                f"leave-one-case-out; {shown} {'is' if len(bad) == 1 else 'are'} not")
    if len(out) < MIN_CASES:
        raise InvalidInputError(f"{ds.root}: leave-one-case-out needs at least {MIN_CASES} cases (one held out, "
                                f"one for val, the rest to train on); found {len(out)}: {', '.join(out) or 'none'}")
    return out


def val_case(cases: Sequence[str], held_out: str, has_lesion: dict[str, bool]) -> str:
    """The val case of the fold holding ``held_out`` out: the next case after it (in
    ``cases``' order, wrapping round) that has lesion slices, so the val case rotates
    with the held-out one; the next case at all where no other case has lesions."""
    i = list(cases).index(held_out)
    rest = [cases[(i + k) % len(cases)] for k in range(1, len(cases))]
    return next((c for c in rest if has_lesion[c]), rest[0])


def write_fold(ds: FolderDataset, out: Path, split_of: dict[str, str], meta: dict[str, Any]) -> Path:
    """A folder data set at ``out`` holding ``ds``'s samples of the cases in
    ``split_of`` (case -> split), its image and mask files hard-linked (copied across
    file systems), its ``labels.csv`` re-split by case. Written atomically."""

    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        with (tmp / "labels.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "label", "split"])
            for s in ds.samples:
                split = split_of.get(case_of(s.id) or "")
                if split is None:
                    continue
                _link(s.image_path, tmp / "images" / s.image_path.name)
                if s.mask_path is not None:
                    _link(s.mask_path, tmp / "masks" / s.mask_path.name)
                writer.writerow([s.id, ds.classes[s.label], split])
        (tmp / "dataset.json").write_text(json.dumps({**meta, "classes": list(ds.classes)}, indent=2,
                                                     default=str) + "\n")
    return out


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


# -------------------------------------------------------------------------- results
@dataclass(frozen=True)
class CaseResult:
    """One fold: the held-out case's slice counts, which cases trained and chose, and the
    held-out case's views (:class:`~camseg.pipeline.recipe_record.Views`, at each slice's size) under the
    paper's setting, the chosen recipe and the label-free recipe."""

    case: str
    n_lesion: int
    n_normal: int
    val_case: str
    train_cases: list[str]
    paper: Views
    recipe: Views
    label_free: Views
    options: dict[str, Any]
    label_free_options: dict[str, Any]
    classifier: dict[str, Any]  # the held-out case's accuracy and AUC, the best epoch
    steps: list[dict[str, Any]]  # the recipe's ablation: name, kept, val and held-out Dice
    model_dir: str
    figure: str | None  # relative to the report; None without lesion slices
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseResult:
        return cls(**{**d, "paper": Views(**d["paper"]), "recipe": Views(**d["recipe"]),
                      "label_free": Views(**d["label_free"])})


@dataclass(frozen=True)
class Means:
    """A Dice over cases: ``over_slices`` weights each case by its lesion slices (the
    mean over all lesion slices), ``over_cases`` is the plain mean over the cases with
    lesion slices. NaN where no case has lesion slices."""

    over_slices: float
    over_cases: float
    n_slices: int
    n_cases: int


def means_of(dice: Sequence[float], n_lesion: Sequence[int]) -> Means:
    """:class:`Means` of per-case Dice values and lesion-slice counts.

    >>> means_of([0.5, 1.0, float("nan")], [1, 3, 0])
    Means(over_slices=0.875, over_cases=0.75, n_slices=4, n_cases=2)
    """
    pairs = [(d, n) for d, n in zip(dice, n_lesion, strict=True) if n > 0]
    if not pairs:
        return Means(math.nan, math.nan, 0, 0)
    total = sum(n for _, n in pairs)
    return Means(sum(d * n for d, n in pairs) / total, float(np.mean([d for d, _ in pairs])), total, len(pairs))


def _pooled(values: Sequence[float], weights: Sequence[int]) -> float:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if w > 0 and not math.isnan(v)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else math.nan


@dataclass(frozen=True)
class LocoReport:
    """The leave-one-case-out report: one :class:`CaseResult` per case, the
    :class:`Means` of the paper setting, the recipe and the label-free recipe, and the
    recipe's pooled sensitivity (over lesion slices), specificity and false area (over
    normal slices)."""

    data: str
    config: dict[str, Any]
    cases: list[CaseResult]
    means: dict[str, Means]
    pooled: dict[str, float]
    camseg_version: str = __version__

    @classmethod
    def build(cls, data: str, config: dict[str, Any], cases: list[CaseResult]) -> LocoReport:
        n = [c.n_lesion for c in cases]
        normal = [c.n_normal for c in cases]
        means = {key: means_of([getattr(c, key).all_tumors for c in cases], n)
                 for key in ("paper", "recipe", "label_free")}
        pooled = {"sensitivity": _pooled([c.recipe.sensitivity for c in cases], n),
                  "specificity": _pooled([c.recipe.specificity for c in cases], normal),
                  "false_area": _pooled([c.recipe.false_area for c in cases], normal)}
        return cls(data, config, cases, means, pooled)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocoReport:
        return cls(d["data"], d["config"], [CaseResult.from_dict(c) for c in d["cases"]],
                   {k: Means(**v) for k, v in d["means"].items()}, d["pooled"], d.get("camseg_version", ""))

    def to_markdown(self) -> str:
        cfg = self.config
        n_slices = sum(c.n_lesion + c.n_normal for c in self.cases)
        n_lesion = sum(c.n_lesion for c in self.cases)
        start = f"fine-tuned from `{cfg['base_model']}`" if cfg.get("base_model") else "trained from scratch"
        per_case = {c.case: c.n_lesion + c.n_normal for c in self.cases}
        n_train = [sum(per_case[t] for t in c.train_cases) for c in self.cases]
        lines = [
            "# Leave-one-case-out Dice", "",
            f"Data: `{self.data}`: {len(self.cases)} cases, {n_slices} slices, **{n_lesion} with lesion**. "
            f"For each case a {cfg['arch']} classifier ({cfg['size']} px, at most {cfg['epochs']} epochs, {start}) is "
            "trained on the other cases but one, which is the val case: the CAM setting and the recipe are chosen "
            "on the val case alone and scored on the held-out case, which no step has seen. Dice is at each slice's "
            "own size; a lesion slice the classifier calls normal scores 0.", "",
            f"> These are small numbers: {n_lesion} lesion slices in all, {min(c.n_lesion for c in self.cases)} to "
            f"{max(c.n_lesion for c in self.cases)} per case. One lesion slice moves a case's Dice by up to 1/n of "
            f"its n lesion slices, and each fold's classifier trains on {min(n_train)} to {max(n_train)} slices. "
            "Read them as they are: a check of the method on held-out real images, not a precise estimate of its "
            "accuracy.", "",
            "| held-out case | lesion slices | normal slices | val case | classifier acc / AUC | paper setting | "
            "recipe: all lesions | detected | false area on normals | sensitivity | specificity | label-free | "
            "recipe |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in self.cases:
            r, clf = c.recipe, c.classifier
            lines.append(
                f"| {c.case} | {c.n_lesion} | {c.n_normal} | {c.val_case} | {_fmt(clf.get('accuracy', math.nan))} / "
                f"{_fmt(clf.get('auc', math.nan))} | {_fmt(c.paper.all_tumors)} | **{_fmt(r.all_tumors)}** | "
                f"{_fmt(r.detected)} | {_fmt(r.false_area)} ({_fmt(r.false_masks)}) | {_fmt(r.sensitivity)} | "
                f"{_fmt(r.specificity)} | {_fmt(c.label_free.all_tumors)} | {describe(c.options)} |")
        m = self.means
        lines += [
            "", "| mean | lesion slices | cases | paper setting | recipe | label-free |",
            "|---|---:|---:|---:|---:|---:|",
            f"| over all lesion slices (cases weighted by lesion slices) | {m['recipe'].n_slices} | "
            f"{m['recipe'].n_cases} | {_fmt(m['paper'].over_slices)} | **{_fmt(m['recipe'].over_slices)}** | "
            f"{_fmt(m['label_free'].over_slices)} |",
            f"| over cases with lesion slices (unweighted) | {m['recipe'].n_slices} | {m['recipe'].n_cases} | "
            f"{_fmt(m['paper'].over_cases)} | **{_fmt(m['recipe'].over_cases)}** | "
            f"{_fmt(m['label_free'].over_cases)} |", "",
            f"Recipe, pooled over all held-out slices: sensitivity {_fmt(self.pooled['sensitivity'])}, specificity "
            f"{_fmt(self.pooled['specificity'])}, false mask area on normal slices "
            f"{_fmt(self.pooled['false_area'])} of the slice.", "",
            "*paper setting*: Grad-CAM at the last layer, a fixed threshold chosen on the val case. *recipe*: the "
            "CAM method, layer and threshold rule, test-time augmentation, gate threshold and refinement, each kept "
            "only where it raised the val case's Dice. *label-free*: fixed without any truth mask. False area: mean "
            "fraction of a normal slice masked (in brackets: the share of normal slices given any mask).",
        ]
        notes = [f"- {c.case}: {n}" for c in self.cases for n in c.notes]
        if notes:
            lines += ["", "Notes:", "", *notes]
        figs = [c for c in self.cases if c.figure]
        if figs:
            lines += ["", "## Held-out lesion slices under each fold's recipe", ""]
            lines += [f"### {c.case}\n\n![{c.case}]({c.figure})\n" for c in figs]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> Path:
        """``out/report.md`` and ``out/report.json`` (written last)."""
        atomic_write_bytes(Path(out) / "report.md", self.to_markdown().encode())
        write_json(Path(out) / REPORT_FILE, self.to_dict())
        return Path(out) / REPORT_FILE


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


# -------------------------------------------------------------------------- the run
def leave_one_case_out(
    data_dir: Path,
    out: Path,
    *,
    base_model: Path | None = None,
    arch: str | None = None,
    epochs: int = 15,
    size: int | None = None,
    refiners: tuple[str, ...] = ("crf",),
    distill_epochs: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> LocoReport:
    """Leave each case of ``data_dir`` out in turn; return (and write to ``out``) the
    per-case and mean Dice of the recipe chosen without it.

    Args:
        data_dir: a folder data set whose ids are ``<case>-s<slice>``, at least 3 cases.
            Its own splits are ignored: every fold re-splits by case.
        out: ``folds/<case>/{data,model,dice}``, ``figures/<case>.png``, ``report.md``
            and ``report.json``.
        base_model: fine-tune each fold's classifier from this model directory instead
            of training from scratch; the folds take its architecture, input size, width,
            channels and dilation.
        arch, size: the classifier (default: resnet at 64 px, or the base model's). With
            ``base_model`` a value that differs from the base model's is refused.
        epochs: training epochs per fold (early stopping on the val case's loss).
        refiners: refinements the recipe tries (:class:`~camseg.study.recipe.RecipeConfig`).
        distill_epochs: > 0 lets the recipe try a student distilled from the fold's
            train cases' heatmaps (no truth masks).
        overwrite: replace a non-empty ``out``; otherwise it is refused.
        on_progress / should_stop: see :mod:`camseg.core.progress`.

    Training weighs the classes by inverse frequency (``TrainConfig.balanced``): lesion
    slices are few. A fold without a lesion case to choose on is refused, as is a
    fold whose train cases hold a single class.

    Raises:
        InvalidInputError: ids not ``<case>-s<n>``, fewer than 3 cases, a base model of
            another spec, ``out`` not empty without ``overwrite``, or ``out`` holding
            ``data_dir``.
    """
    data_dir, out = Path(data_dir), Path(out)
    ds = FolderDataset.open(data_dir)
    by_case = cases_of(ds)
    if out.resolve() == data_dir.resolve() or out.resolve() in data_dir.resolve().parents:
        raise InvalidInputError(f"{out}: holds the data set {data_dir}; choose another output folder")
    arch, size, width, channels, dilated = _classifier(base_model, arch, size)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    fresh_dir(out, "camseg evaluate-real")  # only a folder camseg wrote is replaced
    (out / "figures").mkdir()
    cases = list(by_case)
    n_lesion = {c: sum(ds.samples[i].mask_path is not None for i in idx) for c, idx in by_case.items()}
    config = {"arch": arch, "size": size, "width": width, "channels": channels, "dilated": dilated,
              "epochs": epochs, "refiners": list(refiners), "distill_epochs": distill_epochs, "seed": seed,
              "base_model": str(Path(base_model).resolve()) if base_model else None, "balanced": True}
    train_cfg = TrainConfig(epochs=epochs, seed=seed, dilated=dilated, balanced=True)
    tracker = Tracker("leave one case out", len(cases), on_progress=on_progress, should_stop=should_stop)
    results: list[CaseResult] = []
    for case in cases:
        val = val_case(cases, case, {c: n_lesion[c] > 0 for c in cases})
        if n_lesion[val] == 0:
            raise InvalidInputError(f"{data_dir}: holding out {case} leaves no other case with lesion slices to "
                                    "choose the setting on")
        train_cases = [c for c in cases if c not in (case, val)]
        fold = out / "folds" / case
        split_of = {case: "test", val: "val", **{c: "train" for c in train_cases}}
        data = write_fold(ds, fold / "data", split_of, {
            **ds.meta, "name": f"{ds.meta.get('name', data_dir.name)} without {case}",
            "fold": {"source": str(data_dir.resolve()), "test": case, "val": val, "train": train_cases}})
        logger.info("fold %s: val %s, train %s", case, val, ", ".join(train_cases))
        results.append(_fold(data, fold, case, val, train_cases, [ds.samples[i] for i in by_case[case]],
                             out / "figures", arch=arch, size=size, width=width, channels=channels,
                             cfg=train_cfg, base_model=base_model, refiners=refiners, distill_epochs=distill_epochs,
                             seed=seed, on_progress=on_progress, should_stop=should_stop))
        r = results[-1]
        tracker.advance(1, f"{case}: Dice {_fmt(r.recipe.all_tumors)} over {r.n_lesion} lesion slices")
    report = LocoReport.build(str(data_dir.resolve()), config, results)
    report.write(out)
    tracker.finish(f"mean Dice {_fmt(report.means['recipe'].over_slices)} over "
                   f"{report.means['recipe'].n_slices} lesion slices")
    return report


def _classifier(base_model: Path | None, arch: str | None,
                size: int | None) -> tuple[str, int, int, int, bool]:
    """Architecture, input size, width, channels and dilation of the folds' classifiers."""
    if base_model is None:
        return arch or DEFAULT_ARCH, size or DEFAULT_SIZE, 16, 1, False  # strided, as the demo trains
    spec = read_metadata(Path(base_model)).get("spec") or {}
    try:
        base = (str(spec["arch"]), int(spec["input_size"]), int(spec["width"]), int(spec["in_channels"]),
                bool(spec.get("extra", {}).get("dilated", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{base_model}: its metadata has no usable spec ({exc})") from None
    for name, given, theirs in (("arch", arch, base[0]), ("size", size, base[1])):
        if given is not None and given != theirs:
            raise InvalidInputError(f"{base_model}: the base model's {name} is {theirs!r}, not {given!r}; "
                                    f"omit {name} to fine-tune it")
    return base


def _fold(data: Path, fold: Path, case: str, val: str, train_cases: list[str], held_out: list[Sample],
          figures_dir: Path, *, arch: str, size: int, width: int, channels: int, cfg: TrainConfig,
          base_model: Path | None, refiners: tuple[str, ...], distill_epochs: int, seed: int,
          on_progress: OnProgress | None, should_stop: ShouldStop | None) -> CaseResult:
    """Train, export, choose and score one fold."""
    model_dir = fold / "model"
    meta = train_from_folder(data, arch, model_dir, cfg, input_size=size, channels=channels, width=width,
                             on_progress=on_progress, should_stop=should_stop, init_from=base_model)
    export_model(model_dir)
    model = LoadedModel.load(model_dir)
    n_lesion = sum(s.mask_path is not None for s in held_out)
    notes = []
    # the protocol's sweep needs lesion slices in the split it reports on; without any in
    # the held-out case, it chooses on val and reports val (unused: only its choice is)
    report_split = "test" if n_lesion else "val"
    if not n_lesion:
        notes.append("no lesion slices: only its false area and specificity are measured")
    protocol = evaluate_dice(model, data, select="val", report=report_split, out=fold / "dice",
                             on_progress=on_progress, should_stop=should_stop)
    distiller = None
    if distill_epochs > 0:
        distiller = make_distiller(data, DistillConfig(epochs=distill_epochs, seed=seed), on_progress=on_progress,
                                   should_stop=should_stop)
    recipe = choose_recipe(model, data, protocol.best.options, paper=protocol.paper.options,
                           cfg=RecipeConfig(tta=(4,), refiners=refiners), distiller=distiller,
                           on_progress=on_progress, should_stop=should_stop)
    save_recipe(model_dir, recipe)
    final, paper = recipe.final, recipe.steps[0]
    assert final is not None and recipe.label_free_report is not None
    figure = None
    if n_lesion:
        figure = f"figures/{case}.png"
        _overlays(figures_dir.parent / figure, LoadedModel.load(model_dir), recipe, held_out, case)
    test = meta["metrics"].get("test", {})
    return CaseResult(
        case, n_lesion, len(held_out) - n_lesion, val, train_cases, paper.report, final.report,
        recipe.label_free_report, recipe.options.to_record(), recipe.label_free.to_record(),
        {"accuracy": test.get("accuracy", math.nan), "auc": test.get("auc", math.nan),
         "best_epoch": meta["metrics"]["best_epoch"]},
        _steps(recipe), str(model_dir), figure, notes)


def _steps(recipe: Recipe) -> list[dict[str, Any]]:
    return [{"name": s.name, "kept": s.kept, "val_dice": s.select.all_tumors, "test_dice": s.report.all_tumors}
            for s in recipe.steps]


MAX_FIGURE_ROWS = 24


def _overlays(path: Path, model: LoadedModel, recipe: Recipe, held_out: list[Sample], case: str) -> None:
    """Overlay grid of the held-out case's lesion slices under the fold's recipe (the
    first :data:`MAX_FIGURE_ROWS`)."""

    lesion = [s for s in held_out if s.mask_path is not None][:MAX_FIGURE_ROWS]
    images = [decode_image(s.image_path, name=str(s.image_path)) for s in lesion]
    truths = [read_mask(s.mask_path) for s in lesion if s.mask_path is not None]
    res = run(model, images, recipe.options, truths=truths)
    rows = []
    for s, image, truth, r in zip(lesion, images, truths, res.items, strict=True):
        assert r.mask is not None and r.dice is not None
        rows.append((f"{s.id}\np={r.probabilities[model.positive]:.2f} Dice={r.dice:.2f}", image, truth,
                     r.heatmap.numpy(), r.mask))
    figures.overlay_grid(path, rows, f"held-out {case}: {describe(recipe.options.to_record())}")


__all__ = ["CaseResult", "LocoReport", "Means", "case_of", "cases_of", "leave_one_case_out", "means_of", "val_case",
           "write_fold"]
