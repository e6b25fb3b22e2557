"""ONNX Runtime inference over an exported model directory.

:class:`OnnxModel` classifies and, for the methods that have a one-pass form at the
exported Grad-CAM layer, computes heatmaps from the same pass: the ``activations``
output and the head weight in metadata give ``dy_c/dA`` in closed form
(:func:`camseg.heat.cam.cam_from_activations`), so the heatmaps equal
:func:`camseg.heat.cam.compute_cam`'s at that layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES
from camseg.heat.cam import CamResult, Targets, cam_from_activations, cam_of, resolve_targets
from camseg.heat.methods import CamMethod
from camseg.models.modelconfig import ModelConfig, OutputKind, from_metadata, is_identity, preprocess
from camseg.models.modeldir import ONNX_FILE, read_metadata
from camseg.models.runtime import make_session

if TYPE_CHECKING:
    import onnx


class OnnxModel:
    """A loaded ONNX classifier: camseg's own export (``OnnxModel(model_dir)``) or an
    imported graph (:meth:`imported`). Inputs are prepared batches ``(N, C, H, W)`` in
    [0, 1]; the model's declared scaling and layout are applied here. Thread-safe: ONNX
    Runtime sessions may be run concurrently."""

    def __init__(self, model_dir: Path | str, *, providers: str = "auto", threads: int = 0, spinning: bool = True,
                 max_bytes: int = DEFAULT_MAX_MODEL_BYTES):
        self.dir = Path(model_dir)
        self.meta: dict[str, Any] = read_metadata(self.dir)
        onnx_meta = self.meta.get("onnx")
        if not onnx_meta or not (self.dir / ONNX_FILE).is_file():
            raise UnsupportedError(f"{self.dir}: not exported to ONNX (run camseg export)")
        one_pass = onnx_meta.get("one_pass_cam")
        self._setup(make_session(self.dir / ONNX_FILE, providers, threads=threads, spinning=spinning,
                                 max_bytes=max_bytes),
                    from_metadata(self.meta),
                    input_name=onnx_meta["input"], output_name="probabilities",
                    cam_layer=one_pass["layer"] if one_pass else None,
                    acts_name="activations" if one_pass else None)
        self.head_weight: Tensor | None = (
            torch.tensor(one_pass["head_weight"], dtype=torch.float32) if one_pass else None)

    @classmethod
    def imported(cls, model: bytes | Path | onnx.ModelProto, cfg: ModelConfig, *, input_name: str,
                 output_name: str, cam_layer: str | None, providers: str = "auto", threads: int = 0,
                 spinning: bool = True, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> OnnxModel:
        """An imported classifier; ``model`` must output ``cam_layer``'s activations
        where one is given (:func:`camseg.models.imported.with_outputs`)."""
        self = cls.__new__(cls)
        self.dir = Path(model).parent if isinstance(model, Path) else Path(".")
        self.meta = {}
        session = make_session(model, providers, threads=threads, spinning=spinning, max_bytes=max_bytes)
        self._setup(session, cfg, input_name=input_name,
                    output_name=output_name, cam_layer=cam_layer, acts_name=cam_layer)
        self.head_weight = None
        return self

    def _setup(self, session: ort.InferenceSession, cfg: ModelConfig, *, input_name: str, output_name: str,
               cam_layer: str | None, acts_name: str | None) -> None:
        self.session = session
        self.config = cfg
        self.input_name = input_name
        self.output_name = output_name
        self.cam_layer: str | None = cam_layer
        self._acts_name = acts_name
        self.classes: list[str] = list(cfg.classes)
        self.channels: int = cfg.input.channels
        self.size: tuple[int, int] = cfg.size
        self._logits = cfg.output.kind is OutputKind.LOGITS
        self._plain = is_identity(cfg)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if images.ndim != 4 or images.shape[1] != self.channels or images.shape[0] == 0:
            raise InvalidInputError(
                f"images must be shaped (N>0, {self.channels}, H, W), got {tuple(images.shape)}"
            )
        x = np.ascontiguousarray(images, dtype=np.float32)
        return {self.input_name: x if self._plain else preprocess(x, self.config)}

    def _probabilities(self, out: np.ndarray) -> np.ndarray:
        out = out.reshape(out.shape[0], -1)
        if not self._logits:
            return out
        e = np.exp(out - out.max(axis=1, keepdims=True))
        probs: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return probs

    def raw_output(self, images: np.ndarray) -> np.ndarray:
        """The output tensor as the graph computes it (logits or probabilities)."""
        return self.raw_outputs(images, [self.output_name])[0]

    def raw_outputs(self, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """Outputs of the session by name (the declared output, the CAM layer), one pass."""
        out: list[np.ndarray] = self.session.run(names, self._feed(images))
        return out

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, classes)`` for images ``(N, C, H, W)`` in [0, 1]."""
        return self._probabilities(self.raw_output(images))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and the CAM layer's activations of one pass."""
        if self._acts_name is None:
            raise UnsupportedError(f"{self.dir}: the ONNX file exports no activations")
        out, acts = self.session.run([self.output_name, self._acts_name], self._feed(images))
        return self._probabilities(out), acts

    def explain(self, images: np.ndarray, *, method: str | CamMethod = CamMethod.GRADCAM,
                targets: Targets = None, size: tuple[int, int] | None = None) -> CamResult:
        """Heatmaps from one pass at the exported layer; FAILED_PRECONDITION where the
        method has no one-pass form."""
        cam = cam_of(method)
        m = cam.method
        if self.head_weight is None or self.cam_layer is None or not cam.one_pass:
            raise UnsupportedError(f"{m.value} has no one-pass ONNX form for this model")
        t = resolve_targets(targets, images.shape[0], len(self.classes))
        probs, acts = self.run(images)
        maps = cam_from_activations(torch.from_numpy(acts), self.head_weight, t, method=m,
                                    size=size or (images.shape[2], images.shape[3]))
        # the logits are not exported; log-probabilities differ from them by a per-row constant
        logits = torch.from_numpy(np.log(np.clip(probs, 1e-30, None)))
        return CamResult(maps, logits, t, (self.cam_layer,))
