"""Classifier architectures and their registry."""

from camseg.models.archs import ARCHITECTURES, PAPER_NAMES, build
from camseg.models.base import Classifier, ModelSpec, count_parameters

__all__ = ["ARCHITECTURES", "PAPER_NAMES", "Classifier", "ModelSpec", "build", "count_parameters"]
