"""Conversions between the ``camseg.v1`` messages and the core's values, used by both
the servicer and :mod:`camseg.client`."""

from __future__ import annotations

from camseg.cam import CamMethod, parse_method
from camseg.errors import InvalidInputError
from camseg.masks import ThresholdRule
from services.gen.camseg.v1 import camseg_pb2 as pb

METHOD_FROM_PB: dict[int, CamMethod] = {
    pb.CAM_METHOD_UNSPECIFIED: CamMethod.GRADCAM,
    pb.CAM_METHOD_GRADCAM: CamMethod.GRADCAM,
    pb.CAM_METHOD_GRADCAM_PP: CamMethod.GRADCAM_PP,
    pb.CAM_METHOD_HIRESCAM: CamMethod.HIRESCAM,
    pb.CAM_METHOD_LAYERCAM: CamMethod.LAYERCAM,
    pb.CAM_METHOD_FUSED: CamMethod.FUSED,
}
METHOD_TO_PB: dict[CamMethod, int] = {m: v for v, m in METHOD_FROM_PB.items() if v != pb.CAM_METHOD_UNSPECIFIED}
RULE_KIND_TO_PB = {"fixed": pb.THRESHOLD_KIND_FIXED, "percentile": pb.THRESHOLD_KIND_PERCENTILE,
                   "otsu": pb.THRESHOLD_KIND_OTSU}


def method_from_pb(value: int) -> CamMethod:
    try:
        return METHOD_FROM_PB[value]
    except KeyError:
        raise InvalidInputError(f"unknown CAM method {value}") from None


def method_to_pb(method: str | CamMethod) -> int:
    return METHOD_TO_PB[parse_method(method)]


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
