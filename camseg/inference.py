"""ONNX Runtime inference over an exported model directory.

:class:`OnnxModel` classifies and, for the methods that have a one-pass form at the
exported Grad-CAM layer, computes heatmaps from the same pass: the ``activations``
output and the head weight in metadata give ``dy_c/dA`` in closed form
(:func:`camseg.cam.cam_from_activations`), so the heatmaps equal
:func:`camseg.cam.compute_cam`'s at that layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camseg.cam import CamMethod, CamResult, Targets, cam_from_activations, parse_method, resolve_targets
from camseg.errors import InvalidInputError, UnsupportedError
from camseg.modeldir import ONNX_FILE, read_metadata
from camseg.runtime import make_session

ONE_PASS_METHODS = frozenset({CamMethod.GRADCAM, CamMethod.GRADCAM_PP, CamMethod.HIRESCAM, CamMethod.LAYERCAM})


class OnnxModel:
    """A loaded ``model.onnx`` with its metadata. Thread-safe: ONNX Runtime sessions
    may be run concurrently."""

    def __init__(self, model_dir: Path | str, *, providers: str = "auto", threads: int = 0):
        self.dir = Path(model_dir)
        self.meta: dict[str, Any] = read_metadata(self.dir)
        onnx_meta = self.meta.get("onnx")
        if not onnx_meta or not (self.dir / ONNX_FILE).is_file():
            raise UnsupportedError(f"{self.dir}: not exported to ONNX (run camseg export)")
        self.session = make_session(self.dir / ONNX_FILE, providers, threads=threads)
        self.input_name: str = onnx_meta["input"]
        self.classes: list[str] = list(self.meta["classes"])
        spec = self.meta["spec"]
        self.channels: int = spec["in_channels"]
        self.size: int = spec["input_size"]
        one_pass = onnx_meta.get("one_pass_cam")
        self.cam_layer: str | None = one_pass["layer"] if one_pass else None
        self.head_weight: Tensor | None = (
            torch.tensor(one_pass["head_weight"], dtype=torch.float32) if one_pass else None
        )

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _check(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1] != self.channels or images.shape[0] == 0:
            raise InvalidInputError(
                f"images must be shaped (N>0, {self.channels}, H, W), got {tuple(images.shape)}"
            )
        return np.ascontiguousarray(images, dtype=np.float32)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, classes)`` for images ``(N, C, S, S)`` in [0, 1]."""
        out: np.ndarray = self.session.run(["probabilities"], {self.input_name: self._check(images)})[0]
        return out

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and the exported layer's activations of one pass."""
        if self.cam_layer is None:
            raise UnsupportedError(f"{self.dir}: the ONNX file exports no activations")
        probs, acts = self.session.run(["probabilities", "activations"], {self.input_name: self._check(images)})
        return probs, acts

    def explain(self, images: np.ndarray, *, method: str | CamMethod = CamMethod.GRADCAM,
                targets: Targets = None, size: tuple[int, int] | None = None) -> CamResult:
        """Heatmaps from one pass at the exported layer; FAILED_PRECONDITION where the
        method has no one-pass form."""
        m = parse_method(method)
        if self.head_weight is None or self.cam_layer is None or m not in ONE_PASS_METHODS:
            raise UnsupportedError(f"{m.value} has no one-pass ONNX form for this model")
        t = resolve_targets(targets, images.shape[0], len(self.classes))
        probs, acts = self.run(images)
        maps = cam_from_activations(torch.from_numpy(acts), self.head_weight, t, method=m,
                                    size=size or (images.shape[2], images.shape[3]))
        # the logits are not exported; log-probabilities differ from them by a per-row constant
        logits = torch.from_numpy(np.log(np.clip(probs, 1e-30, None)))
        return CamResult(maps, logits, t, (self.cam_layer,))
