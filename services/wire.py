"""The contract's vocabulary, without the method's libraries: CAM methods and segmenters as
``camseg.v1.CamMethod`` values and threshold rules as ``camseg.v1.ThresholdRule``. The
client uses it alone, so calling a service loads no torch; :mod:`services.codec` builds
on it for the server."""

from __future__ import annotations

from typing import cast

from camseg.core.errors import InvalidInputError
from camseg.heat.methods import CamMethod, Method, Segmenter, as_method
from camseg.heat.rules import ThresholdRule
from services.gen.camseg.v1 import camseg_pb2 as pb

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
