"""What a request may name to make its heatmaps: the CAM methods of
:data:`camseg.heat.cam.CAMS` and the segmenters beside them. Names only, with no torch,
so that clients and the command line can list and check them without loading a network.
"""

from __future__ import annotations

from enum import StrEnum

from camseg.core.errors import InvalidInputError


class CamMethod(StrEnum):
    """The names of the CAM methods of :data:`CAMS` (the wire and the command line use them)."""

    GRADCAM = "gradcam"
    GRADCAM_PP = "gradcam++"
    HIRESCAM = "hirescam"
    LAYERCAM = "layercam"
    FUSED = "fused"
    SCORECAM = "scorecam"


class Segmenter(StrEnum):
    """What a request may run instead of a CAM method: a network that segments by itself,
    served beside the classifier whose CAMs it learnt from."""

    DISTILLED = "distilled"  # the student of camseg.study.distill (camseg.pipeline.student)


Method = CamMethod | Segmenter  # what Options.method names: a CAM method of the classifier, or a segmenter
METHOD_CHOICES: tuple[str, ...] = (*(m.value for m in CamMethod), *(s.value for s in Segmenter))
"""Every name a request may give, CAM methods first (:data:`camseg.heat.cam.CAMS` holds one
class per CAM method; a test keeps the two in step)."""


def parse_method(method: str | CamMethod) -> CamMethod:
    """A CAM method by name (any case); InvalidInputError naming the choices otherwise."""
    try:
        return CamMethod(str(method).lower())
    except ValueError:
        raise InvalidInputError(f"unknown CAM method {method!r}; choose one of "
                                f"{', '.join(m.value for m in CamMethod)}") from None


def as_method(name: str | Method) -> Method:
    """A CAM method or a segmenter by name (any case); InvalidInputError naming the choices."""
    key = str(name).lower()
    try:
        return Segmenter(key) if key in {s.value for s in Segmenter} else CamMethod(key)
    except ValueError:
        raise InvalidInputError(f"unknown CAM method {name!r}; choose one of {', '.join(METHOD_CHOICES)}") from None
