"""What a caller asks of the pipeline: the options of one run, the engine and the mask
encodings, and the one rule (:func:`resolve`) by which a caller's choices and a model's
recipe make those options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from camseg.core.errors import InvalidInputError
from camseg.heat.cam import CAMS, TTA_SIZES
from camseg.heat.methods import CamMethod, Method, as_method
from camseg.heat.refine import Refiner, parse_refiner
from camseg.heat.rules import ThresholdRule, parse_rule
from camseg.pipeline.whole import Tiling, Whole


class Engine(StrEnum):
    AUTO = "auto"  # one ONNX pass where the method allows it, else torch
    ONNX = "onnx"
    TORCH = "torch"


class Encoding(StrEnum):
    """Encodings of a mask a caller may ask for; none is made unasked."""

    MASK_PNG = "mask_png"
    MASK_BITS = "mask_bits"
    MASK_RLE = "mask_rle"
    OVERLAY_PNG = "overlay_png"


class HeatResolution(StrEnum):
    """The resolution of the heatmaps a run returns (a call's choice, never a recipe's)."""

    IMAGE = "image"  # at each image's own size
    # at the CAM layer's own grid, with the grid's place in the image (camseg.heat.cam.HeatGrid);
    # masks and overlays are still made at the image's size
    LAYER = "layer"


@dataclass(frozen=True)
class Options:
    """What to compute. ``threshold=None`` stops at heatmaps (no masks).

    ``method`` is a CAM method of the classifier (:data:`camseg.heat.cam.CAMS`) or a
    :class:`Segmenter` (the distilled student); a plain name is parsed.

    ``target`` None means the positive class (with several positive classes, the most
    probable of them for each image). ``tta`` averages heatmaps (and logits) over 1, 4
    or 8 flips and quarter turns. ``refine`` refines each thresholded mask from its
    image (:mod:`camseg.heat.refine`), before the largest component is taken.
    ``decision_threshold`` is the probability of the positive class(es) from which an
    image is called tumor (the label and the gate); None takes the most probable class.
    ``chunk`` images go through the network at a time; ``should_stop`` is polled
    between chunks. ``heat_resolution`` LAYER returns each heatmap at the CAM layer's
    own resolution with its :class:`~camseg.heat.cam.HeatGrid` (ROIs only: not with a
    fused method, test-time augmentation or whole images, whose maps exist only at an
    image's size).
    """

    method: Method = CamMethod.GRADCAM
    layer: str | None = None
    target: int | None = None
    threshold: ThresholdRule | None = field(default_factory=lambda: ThresholdRule("otsu"))
    gate: bool = True
    largest: bool = False
    fill_holes: bool = False
    encodings: frozenset[Encoding] = frozenset()
    engine: Engine = Engine.AUTO
    chunk: int = 16
    tta: int = 1
    refine: Refiner = Refiner.NONE
    decision_threshold: float | None = None
    tiling: Tiling = field(default_factory=Tiling)  # whole images: a call's choice, never a recipe's
    heat_resolution: HeatResolution = HeatResolution.IMAGE  # a call's choice, never a recipe's

    def __post_init__(self) -> None:
        # accept the plain strings of configuration files and command lines
        object.__setattr__(self, "method", as_method(self.method))
        object.__setattr__(self, "refine", parse_refiner(self.refine))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", parse_rule(self.threshold))
        _check_tta(self.tta)
        _check_decision_threshold(self.decision_threshold)
        try:
            object.__setattr__(self, "engine", Engine(self.engine))
            object.__setattr__(self, "encodings", frozenset(Encoding(e) for e in self.encodings))
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        if self.chunk < 1:
            raise InvalidInputError("chunk must be at least 1 image")
        try:
            object.__setattr__(self, "heat_resolution", HeatResolution(self.heat_resolution))
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        if self.heat_resolution is HeatResolution.LAYER:
            _check_layer_resolution(self)
        if self.layer == "":
            object.__setattr__(self, "layer", None)

    def to_record(self, *, tiling: bool = False) -> dict[str, Any]:
        """The options as plain JSON values (no encodings: those are per call). The tiling
        is a call's choice, so only a call's record (a job's, an output's key) asks for it
        with ``tiling``; a recipe never records one."""
        rec: dict[str, Any] = {"method": self.method.value, "layer": self.layer, "target": self.target,
                               "threshold": str(self.threshold) if self.threshold is not None else None,
                               "gate": self.gate, "largest": self.largest, "fill_holes": self.fill_holes,
                               "chunk": self.chunk, "tta": self.tta, "refine": self.refine.value,
                               "decision_threshold": self.decision_threshold}
        if tiling:
            rec["tiling"] = {**asdict(self.tiling), "mode": self.tiling.mode.value}
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any], *, tiling: bool = False) -> Options:
        """Options from :meth:`to_record`'s values; absent keys take their defaults. A
        ``tiling`` is read only from a call's record (``tiling``): a recipe has none."""
        known = {f.name for f in fields(cls)} - {"encodings", "engine", "heat_resolution"} - (
            set() if tiling else {"tiling"})
        unknown = set(rec) - known
        if unknown:
            raise InvalidInputError(f"unknown options {', '.join(sorted(unknown))}")
        if isinstance(rec.get("tiling"), dict):
            tiling_known = {f.name for f in fields(Tiling)}
            bad = set(rec["tiling"]) - tiling_known
            if bad:
                raise InvalidInputError(f"unknown tiling options {', '.join(sorted(bad))}")
            rec = {**rec, "tiling": Tiling(**rec["tiling"])}
        return cls(**rec)


def _check_layer_resolution(o: Options) -> None:
    """Heatmaps at the layer's resolution exist for one layer's map of an ROI only."""
    cam = CAMS.get(o.method) if isinstance(o.method, CamMethod) else None
    if cam is not None and cam.layers > 1:
        raise InvalidInputError(f"{o.method.value} fuses layers of different resolutions: its heatmap exists only "
                                "at the image's resolution")
    if o.tta != 1:
        raise InvalidInputError("test-time augmentation averages heatmaps at the model's input size: layer-"
                                "resolution heatmaps need tta 1")
    if o.tiling.mode is Whole.ALWAYS:
        raise InvalidInputError("whole images' heatmaps are stitched from tiles at the image's resolution: "
                                "layer-resolution heatmaps are for ROIs (tiling mode never or auto)")


def _check_tta(tta: int) -> None:
    if tta not in TTA_SIZES:
        raise InvalidInputError(f"tta must be one of {', '.join(map(str, TTA_SIZES))}, got {tta}")


def _check_decision_threshold(value: float | None) -> None:
    if value is not None and not 0.0 < value < 1.0:
        raise InvalidInputError(f"decision threshold must be within (0, 1), got {value}")


@dataclass(frozen=True)
class Choices:
    """What a caller chose explicitly, each field None where it chose nothing; the plain
    strings of a command line are parsed, and bad values refused, on construction.

    Two kinds of field (see :func:`resolve`): *picks* (``method``, ``layer``,
    ``target``, ``threshold``, ``tta``, ``refine``, ``decision_threshold``) say how the
    heatmaps and masks are made, and any one of them sets the recipe aside;
    *modifiers* (``gate``, ``largest``, ``fill_holes``) adjust whatever options are
    run. ``no_recipe`` sets the recipe aside whatever else is chosen.
    """

    method: Method | None = None
    layer: str | None = None
    target: int | None = None
    threshold: ThresholdRule | None = None
    tta: int | None = None
    refine: Refiner | None = None
    decision_threshold: float | None = None
    gate: bool | None = None
    largest: bool | None = None
    fill_holes: bool | None = None
    no_recipe: bool = False

    def __post_init__(self) -> None:
        if self.method is not None:
            object.__setattr__(self, "method", as_method(self.method))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", parse_rule(self.threshold))
        if self.refine is not None:
            object.__setattr__(self, "refine", parse_refiner(self.refine))
        if self.layer == "":
            object.__setattr__(self, "layer", None)
        if self.tta is not None:
            _check_tta(self.tta)
        _check_decision_threshold(self.decision_threshold)

    @property
    def picks(self) -> bool:
        """Whether any pick is chosen (so the recipe is set aside)."""
        return any(v is not None for v in (self.method, self.layer, self.target, self.threshold, self.tta,
                                           self.refine, self.decision_threshold))


def tiling_of(mode: str | None = None, scale: float | None = None, overlap: float | None = None) -> Tiling:
    """A caller's whole-image choices (:class:`~camseg.pipeline.whole.Tiling`): each None
    (a flag or a wire field left unset) takes its default; bad values are refused in one
    line. The command line, the jobs and the gRPC service call this."""
    given: dict[str, Any] = {"mode": mode or None, "scale": scale, "overlap": overlap}
    return Tiling(**{k: v for k, v in given.items() if v is not None})


def resolve(recipe: Options | None, choices: Choices = Choices(), *,
            default_method: CamMethod = CamMethod.GRADCAM) -> tuple[Options, bool]:
    """The options to run for a caller's ``choices`` on a model whose recipe (its chosen
    options, :mod:`camseg.pipeline.recipe_record`) is ``recipe`` (None: it has none), and
    whether they are the recipe's. Every adapter (command line, gRPC, jobs) asks this.

    The rule:

    * nothing picked (modifiers alone, or nothing at all), a recipe, no ``no_recipe``:
      the recipe, with the modifiers applied. Modifiers only add to it: ``largest``
      and ``fill_holes`` True switch those on, ``gate`` False switches the gate off;
      ``largest`` False or ``gate`` True leave the recipe's own choice (a wire request
      cannot tell an unset flag from False, so False never undoes a recipe's step);
    * otherwise the caller's own options: the picks, and for every pick not made the
      default (``default_method``, the model's configured method; Otsu; no TTA, no
      refinement, the most probable class decides); the modifiers as given (unset:
      gate on, no largest component, no hole filling).

    Encodings, engine, chunk size and tiling belong to a call, not to this choice: a caller
    ``dataclasses.replace``-s them into the result.

    >>> recipe = Options(method="layercam", threshold="p85", tta=4)
    >>> resolve(recipe, Choices(largest=True))[0].method, resolve(recipe, Choices(largest=True))[1]
    (<CamMethod.LAYERCAM: 'layercam'>, True)
    >>> resolve(recipe, Choices(threshold="p90"))[0].tta
    1
    """
    if recipe is not None and not choices.no_recipe and not choices.picks:
        return replace(recipe, gate=recipe.gate and choices.gate is not False,
                       largest=recipe.largest or bool(choices.largest),
                       fill_holes=recipe.fill_holes or bool(choices.fill_holes)), True
    c = choices
    own = Options(method=c.method if c.method is not None else default_method, layer=c.layer, target=c.target,
                  threshold=c.threshold if c.threshold is not None else ThresholdRule("otsu"), tta=c.tta or 1,
                  refine=c.refine if c.refine is not None else Refiner.NONE,
                  decision_threshold=c.decision_threshold, gate=c.gate is not False, largest=bool(c.largest),
                  fill_holes=bool(c.fill_holes))
    return own, False
