"""The contract's vocabulary, without the method's libraries: CAM methods and segmenters as
``camseg.v1.CamMethod`` values, threshold rules as ``camseg.v1.ThresholdRule``, and whole
images' tiling (``camseg.v1.Tiling``) and what the sliding window did
(``camseg.v1.WholeImage``). The client uses it alone, so calling a service loads no
torch; :mod:`services.codec` builds on it for the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from camseg.core.errors import InvalidInputError
from camseg.heat.lesions import Lesion
from camseg.heat.methods import CamMethod, Method, Segmenter, as_method
from camseg.heat.rules import ThresholdRule
from services.gen.camseg.v1 import camseg_pb2 as pb

if TYPE_CHECKING:
    from camseg.pipeline.whole import Tiling, WholeInfo

# every CAM method and every segmenter, as the proto's CAM_METHOD_<NAME>; a method the proto
# does not name fails here, at import, not in a request
METHOD_TO_PB: dict[Method, pb.CamMethod] = {
    m: cast(pb.CamMethod, pb.CamMethod.Value(f"CAM_METHOD_{m.name}")) for m in (*CamMethod, *Segmenter)}
METHOD_FROM_PB: dict[int, Method] = {v: m for m, v in METHOD_TO_PB.items()}
RULE_KIND_TO_PB = {"fixed": pb.THRESHOLD_KIND_FIXED, "percentile": pb.THRESHOLD_KIND_PERCENTILE,
                   "otsu": pb.THRESHOLD_KIND_OTSU}


def method_from_pb(value: int, default: Method = CamMethod.GRADCAM) -> Method:
    """The method of a request; UNSPECIFIED is the model's ``default``."""
    if value == pb.CAM_METHOD_UNSPECIFIED:
        return default
    try:
        return METHOD_FROM_PB[value]
    except KeyError:
        raise InvalidInputError(f"unknown CAM method {value}") from None


def method_to_pb(method: str | Method) -> pb.CamMethod:
    return METHOD_TO_PB[as_method(method)]


def rule_from_pb(r: pb.ThresholdRule) -> ThresholdRule:
    """UNSPECIFIED means Otsu; values outside a kind's range are INVALID_ARGUMENT."""
    if r.kind in (pb.THRESHOLD_KIND_UNSPECIFIED, pb.THRESHOLD_KIND_OTSU):
        return ThresholdRule("otsu")
    if r.kind == pb.THRESHOLD_KIND_FIXED:
        if not 0.0 <= r.value <= 1.0:
            raise InvalidInputError(f"fixed threshold {r.value} is outside [0, 1]")
        return ThresholdRule("fixed", r.value)
    if r.kind == pb.THRESHOLD_KIND_PERCENTILE:
        if not 0.0 <= r.value <= 100.0:
            raise InvalidInputError(f"percentile {r.value} is outside [0, 100]")
        return ThresholdRule("percentile", r.value)
    raise InvalidInputError(f"unknown threshold kind {r.kind}")


def rule_to_pb(rule: ThresholdRule) -> pb.ThresholdRule:
    return pb.ThresholdRule(kind=RULE_KIND_TO_PB[rule.kind], value=rule.value)


# ------------------------------------------------------------------ whole images
WHOLE_MODES = {pb.WHOLE_MODE_UNSPECIFIED: "auto", pb.WHOLE_MODE_AUTO: "auto", pb.WHOLE_MODE_ALWAYS: "always",
               pb.WHOLE_MODE_NEVER: "never"}
WHOLE_MODE_TO_PB = {"auto": pb.WHOLE_MODE_AUTO, "always": pb.WHOLE_MODE_ALWAYS, "never": pb.WHOLE_MODE_NEVER}


def tiling_from_pb(t: pb.Tiling) -> Tiling:
    """The core's :class:`~camseg.pipeline.whole.Tiling` of a request: UNSPECIFIED is auto,
    a scale of 0 the model's, an unset overlap 0.5, a spacing of 0 none; values out of
    range are INVALID_ARGUMENT with the core's message."""
    from camseg.pipeline.whole import Tiling, Whole  # the server's side only: it brings torch

    if t.mode not in WHOLE_MODES:
        raise InvalidInputError(f"unknown whole-image mode {t.mode}")
    return Tiling(mode=Whole(WHOLE_MODES[t.mode]), scale=t.scale if t.scale != 0 else None,
                  overlap=t.overlap if t.HasField("overlap") else Tiling.overlap, min_area=t.min_area,
                  spacing_mm=t.spacing_mm if t.spacing_mm != 0 else None)


def tiling_to_pb(mode: str = "auto", *, scale: float | None = None, overlap: float | None = None,
                 min_area: int = 0, spacing_mm: float | None = None) -> pb.Tiling:
    """A request's tiling from plain values (the client's)."""
    if mode not in WHOLE_MODE_TO_PB:
        raise InvalidInputError(f"whole-image mode must be one of {', '.join(WHOLE_MODE_TO_PB)}, got {mode!r}")
    t = pb.Tiling(mode=WHOLE_MODE_TO_PB[mode], scale=scale or 0.0, min_area=min_area, spacing_mm=spacing_mm or 0.0)
    if overlap is not None:
        t.overlap = overlap
    return t


def whole_to_pb(info: WholeInfo) -> pb.WholeImage:
    return pb.WholeImage(
        scale=info.scale, tiles=info.tiles, skipped=info.skipped, tissue_fraction=info.tissue_fraction,
        padded=info.padded, score=info.score, note=info.note,
        lesions=[pb.Lesion(score=c.score, area=c.area, y0=c.box[0], x0=c.box[1], y1=c.box[2], x1=c.box[3],
                           centroid_y=c.centroid[0], centroid_x=c.centroid[1]) for c in info.lesions])


@dataclass(frozen=True)
class WholeImage:
    """What the sliding window did for an image, as a reply carries it."""

    scale: float
    tiles: int
    skipped: int
    tissue_fraction: float
    padded: bool
    score: float
    lesions: list[Lesion] = field(default_factory=list)
    note: str = ""


def whole_from_pb(msg: pb.Mask | pb.Heatmap) -> WholeImage | None:
    """A reply item's whole-image info; None where the image was not segmented whole."""
    if not msg.HasField("whole"):
        return None
    w = msg.whole
    return WholeImage(w.scale, w.tiles, w.skipped, w.tissue_fraction, w.padded, w.score,
                      [Lesion(c.score, c.area, (c.y0, c.x0, c.y1, c.x1), (c.centroid_y, c.centroid_x))
                       for c in w.lesions], w.note)
