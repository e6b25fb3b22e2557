"""The distilled student as a saved thing: its config, its network's heatmaps, and loading
it from a model folder (training it is :mod:`camseg.study.distill`).
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES
from camseg.heat.methods import Segmenter, as_method, parse_method
from camseg.models.modelfiles import check_file
from camseg.models.runtime import make_session
from camseg.models.unet import UNet

STUDENT_FILE = "student.pt"
STUDENT_ONNX_FILE = "student.onnx"
STUDENT_META_FILE = "student.json"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
OPSET = 18
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class DistillConfig:
    """How pseudo-labels are made and the student is trained.

    ``fg``/``bg``: heat thresholds of confident foreground and background; ``margin``:
    the dilation (pixels) around a refined mask that is ignored. ``dice_weight`` adds a
    soft Dice term to the BCE (0 turns it off). ``augment``: random flips and quarter
    turns, the same for image and label. ``flip_tta``: average the student's
    probabilities over flips at inference. ``cam_method``/``cam_layer``: the
    classifier's heatmap when no ``heat_fn`` is given.
    """

    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    base: int = 16
    depth: int = 3
    seed: int = 0
    fg: float = 0.6
    bg: float = 0.2
    margin: int = 2
    dice_weight: float = 0.5
    augment: bool = True
    flip_tta: bool = True
    cam_method: str = "gradcam"
    cam_layer: str | None = None

    def __post_init__(self) -> None:
        _check_thresholds(self.fg, self.bg)
        if self.epochs < 1 or self.batch_size < 2:
            raise InvalidInputError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.dice_weight >= 0):
            raise InvalidInputError("lr must be > 0, weight_decay and dice_weight >= 0")
        if self.base < 1 or self.depth < 1 or self.margin < 0:
            raise InvalidInputError(f"base and depth must be >= 1 and margin >= 0, got {self.base}, {self.depth}, "
                                    f"{self.margin}")
        if as_method(self.cam_method) is Segmenter.DISTILLED:
            raise InvalidInputError("a student learns from the classifier's CAMs, not from another student")
        object.__setattr__(self, "cam_method", parse_method(self.cam_method).value)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        """From :func:`dataclasses.asdict` output; unknown keys (a newer writer) are dropped."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_thresholds(fg: float, bg: float) -> None:
    if not 0.0 <= bg < fg <= 1.0:
        raise InvalidInputError(f"pseudo-label thresholds need 0 <= bg < fg <= 1, got bg={bg}, fg={fg}")


# ---------------------------------------------------------------------- inference
def _flips(x: Tensor) -> Tensor:
    """The batch under the four flips (identity, horizontal, vertical, both), stacked."""
    return torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-2, -1)])


def _unflip_mean(p: Tensor, n: int) -> Tensor:
    """Inverse of :func:`_flips` on maps ``(4n, H, W)``, averaged: ``(n, H, W)``."""
    a, h, v, hv = p[:n], p[n : 2 * n], p[2 * n : 3 * n], p[3 * n :]
    return (a + h.flip(-1) + v.flip(-2) + hv.flip(-2, -1)) / 4.0


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode for the block; the caller's mode is restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def student_heatmaps(student: UNet, x: Tensor, *, tta: bool = True, chunk: int = 64) -> Tensor:
    """Tumor probabilities ``(N, H, W)`` of images ``(N, C, H, W)`` in [0, 1].

    With ``tta`` the probabilities (after the sigmoid) are averaged over the four flips
    (identity, horizontal, vertical, both), each flipped back, so the result is
    flip-equivariant. The student runs in eval mode; its mode is restored afterwards.
    """
    student.check_input(x)
    out = []
    with eval_mode(student), torch.inference_mode():
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk].float()
            if tta:
                out.append(_unflip_mean(torch.sigmoid(student(_flips(part)))[:, 0], part.shape[0]))
            else:
                out.append(torch.sigmoid(student(part))[:, 0])
    return torch.cat(out)


@dataclass(frozen=True)
class Student:
    """A distilled student: the U-Net, its ONNX Runtime session (``onnx``) where loaded,
    its config and metadata (``student.json``). Safe to share between threads once
    loaded: ONNX Runtime sessions run concurrently and the torch network stays in eval
    mode."""

    network: UNet
    onnx: ort.InferenceSession | None
    config: DistillConfig
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int | None:
        """The input size the ONNX graph was exported at (None before saving)."""
        size = self.meta.get("input", {}).get("size")
        return int(size) if size is not None else None

    def heatmaps(self, x: Tensor, *, onnx: bool | None = None, tta: bool | None = None, chunk: int = 64) -> Tensor:
        """Tumor probabilities ``(N, S, S)`` of images ``(N, C, S, S)`` in [0, 1].

        ``onnx`` None runs ONNX Runtime where loaded, else torch; True requires the
        session (FAILED_PRECONDITION otherwise); False runs torch. ``tta`` None follows
        the config's ``flip_tta``; on ONNX the flipped copies go through in the same
        batch as the images.
        """
        use_tta = self.config.flip_tta if tta is None else tta
        if onnx and self.onnx is None:
            raise UnsupportedError("the student has no ONNX session (not exported, or loaded with onnx=False)")
        if self.onnx is None or onnx is False:
            return student_heatmaps(self.network, x, tta=use_tta, chunk=chunk)
        self.network.check_input(x)
        if self.size is not None and tuple(x.shape[2:]) != (self.size, self.size):
            raise InvalidInputError(f"images must be {self.size}x{self.size} for the exported student, got "
                                    f"{x.shape[2]}x{x.shape[3]}")
        out = []
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk].float()
            batch = _flips(part) if use_tta else part
            (probs,) = self.onnx.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch.numpy())})
            p = torch.from_numpy(probs)[:, 0]
            out.append(_unflip_mean(p, part.shape[0]) if use_tta else p)
        return torch.cat(out)


def load_student(model_dir: Path, *, providers: str = "auto", threads: int = 0,
                 onnx: bool | None = None, spinning: bool = True,
                 max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> Student | None:
    """The student saved with the model at ``model_dir``; None where there is none.

    ``onnx`` True requires ``student.onnx`` (FAILED_PRECONDITION otherwise), False skips
    it, None loads it where present and recorded in ``student.json``. Its files must stay
    in ``model_dir`` and fit ``max_bytes`` (:mod:`camseg.models.modelfiles`).
    """
    model_dir = Path(model_dir)
    path = model_dir / STUDENT_FILE
    if not path.is_file():
        return None
    check_file(path, model_dir, max_bytes=max_bytes)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        arch = ckpt["architecture"]
        net = UNet(int(arch["in_channels"]), int(arch["base"]), int(arch["depth"]))
        net.load_state_dict(ckpt["state_dict"])
        cfg = DistillConfig.from_dict(ckpt["config"])
    except (RuntimeError, KeyError, TypeError, EOFError, ValueError, pickle.UnpicklingError,
            InvalidInputError) as exc:
        raise InvalidInputError(f"{path}: unreadable student checkpoint ({exc})") from exc
    net.eval()
    meta_path = model_dir / STUDENT_META_FILE
    meta: dict[str, Any] = {"config": ckpt["config"], "input": {"size": ckpt.get("input_size")}}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{meta_path}: not valid JSON ({exc})") from exc
    onnx_path = model_dir / STUDENT_ONNX_FILE
    session = None
    if onnx and not onnx_path.is_file():
        raise UnsupportedError(f"{model_dir}: the student is not exported ({STUDENT_ONNX_FILE} missing)")
    if onnx or (onnx is None and onnx_path.is_file() and meta.get("onnx")):
        session = make_session(onnx_path, providers, threads=threads, spinning=spinning, max_bytes=max_bytes)
    return Student(net, session, cfg, meta)
