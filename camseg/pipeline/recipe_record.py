"""A model's recipe as a saved thing: the options chosen, how they were chosen, and reading
and writing recipe.json (choosing one is :mod:`camseg.study.recipe`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from camseg.core.errors import InvalidInputError
from camseg.models.modeldir import write_json
from camseg.pipeline.options import Options

RECIPE_FILE = "recipe.json"


# -------------------------------------------------------------------------- views
@dataclass(frozen=True)
class Views:
    """Three views of one recipe's masks on one split.

    ``all_tumors``: mean Dice over every tumor ROI, the gate on (a tumor called normal
    scores 0). ``detected``: mean Dice over the tumor ROIs the classifier called tumor.
    ``false_area``: mean fraction of an ROI's pixels masked on normal ROIs;
    ``false_masks``: the share of normal ROIs given any mask. ``sensitivity`` and
    ``specificity`` are the gate's. NaN where a group is empty.
    """

    all_tumors: float
    detected: float
    false_area: float
    false_masks: float
    sensitivity: float
    specificity: float
    n_tumor: int
    n_normal: int


@dataclass(frozen=True)
class Step:
    """One step of the ablation: its options, whether it was kept (it raised the val
    Dice) and its views on the selection and report splits."""

    name: str
    options: dict[str, Any]
    kept: bool
    select: Views
    report: Views


@dataclass(frozen=True)
class Recipe:
    """A model's chosen options and how they were chosen."""

    options: Options
    label_free: Options
    select_split: str = "val"
    report_split: str = "test"
    steps: list[Step] = field(default_factory=list)
    label_free_select: Views | None = None
    label_free_report: Views | None = None
    data: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> Step | None:
        kept = [s for s in self.steps if s.kept]
        return kept[-1] if kept else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = self.options.to_record()
        d["label_free"] = self.label_free.to_record()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        def v(x: dict[str, Any] | None) -> Views | None:
            return Views(**x) if x else None

        steps = [Step(s["name"], s["options"], s["kept"], Views(**s["select"]), Views(**s["report"]))
                 for s in d.get("steps", [])]
        return cls(Options.from_record(d["options"]), Options.from_record(d["label_free"]),
                   d.get("select_split", "val"), d.get("report_split", "test"), steps,
                   v(d.get("label_free_select")), v(d.get("label_free_report")), d.get("data", ""),
                   list(d.get("notes", [])))


def save_recipe(model_dir: Path, recipe: Recipe) -> Path:
    path = Path(model_dir) / RECIPE_FILE
    write_json(path, recipe.to_dict())
    return path


def load_recipe(model_dir: Path) -> Recipe | None:
    """The recipe recorded in ``model_dir``; None where there is none."""
    path = Path(model_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        return Recipe.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{path}: not a recipe ({exc})") from None


def describe(o: dict[str, Any]) -> str:
    """A recipe's options in one line."""
    parts = [o["method"] + (f"@{o['layer']}" if o.get("layer") else ""), f"t={o['threshold']}"]
    if o.get("tta", 1) > 1:
        parts.append(f"TTA x{o['tta']}")
    if o.get("decision_threshold") is not None:
        parts.append(f"gate p>={o['decision_threshold']:g}")
    if o.get("refine", "none") != "none":
        parts.append(o["refine"])
    if o.get("largest"):
        parts.append("largest CC")
    return ", ".join(parts)
