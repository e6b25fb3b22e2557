"""ONNX export with a dynamic batch axis and a parity check against torch.

The exported graph takes ``input`` ``(N, C, S, S)`` floats in [0, 1] (normalisation
is inside the graph) and returns ``probabilities`` ``(N, classes)`` and, because every
camseg classifier ends in global average pooling + linear, ``activations`` of the
Grad-CAM layer ``(N, K, h, w)``: with the head's weight (kept in metadata) a heatmap
comes from one ONNX pass (:func:`camseg.heat.cam.cam_from_activations`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camseg.core.errors import CamsegError, InvalidInputError
from camseg.data.folder import FolderDataset
from camseg.data.tensors import load_arrays
from camseg.models import Classifier
from camseg.models.modeldir import METADATA_FILE, ONNX_FILE, atomic_write_bytes, load_model, write_json
from camseg.models.runtime import make_session

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAMES = ("probabilities", "activations")


class ExportParityError(CamsegError):
    """ONNX Runtime and torch disagree beyond the tolerance."""


class _OnePass(nn.Module):
    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model
        self.last = len(model.stages) - 1

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        acts = self.model.run_until(x, self.last)
        return F.softmax(self.model.head(acts), dim=1), acts


def onnx_bytes(module: nn.Module, example: Tensor, input_name: str, output_names: Sequence[str],
               opset: int = 18) -> bytes:
    """Serialise ``module`` (as it is: the caller sets eval mode) to ONNX bytes with a
    dynamic batch axis on its one input, quietly (the exporter's logs and warnings are
    dropped)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
        program = torch.onnx.export(
            module, (example,), None, input_names=[input_name], output_names=list(output_names),
            dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False,
        )
    assert program is not None
    buf = io.BytesIO()
    program.save(buf)  # type: ignore[arg-type]
    return buf.getvalue()


def to_onnx(model: Classifier, opset: int = 18) -> bytes:
    """Serialise ``model`` (eval mode) to ONNX bytes with a dynamic batch axis."""
    size = model.spec.input_size
    example = torch.rand(2, model.spec.in_channels, size, size)
    return onnx_bytes(_OnePass(model).eval(), example, INPUT_NAME, OUTPUT_NAMES, opset)


def parity(model: Classifier, onnx_path: Path, images: Tensor, providers: str = "auto") -> dict[str, float]:
    """Max absolute differences of probabilities and activations, ONNX Runtime vs torch."""
    session = make_session(onnx_path, providers)
    with torch.inference_mode():
        ref_p, ref_a = _OnePass(model).eval()(images)
    got_p, got_a = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
    single = session.run([OUTPUT_NAMES[0]], {INPUT_NAME: images[:1].numpy()})[0]
    return {
        "max_abs_diff_probabilities": float(np.abs(got_p - ref_p.numpy()).max()),
        "max_abs_diff_probabilities_batch1": float(np.abs(single - ref_p[:1].numpy()).max()),
        "max_abs_diff_activations": float(np.abs(got_a - ref_a.numpy()).max()),
        "images": int(images.shape[0]),
    }


def parity_images(meta: dict[str, Any], data_dir: Path | None, n: int) -> Tensor:
    """Real images for the parity check: from ``data_dir`` or the training data."""
    src = Path(data_dir or meta.get("data", {}).get("path", ""))
    if not (src / "labels.csv").is_file():
        raise InvalidInputError(
            f"{src}: no data set for the parity check (pass --data DIR with labels.csv)"
        )
    ds = FolderDataset.open(src)
    idx = ds.subset("test") or list(range(len(ds)))
    spec = meta["spec"]
    return load_arrays(ds, idx[:n], spec["input_size"], spec["in_channels"]).images


def export_model(model_dir: Path, *, data_dir: Path | None = None, n_images: int = 32,
                 tolerance: float = PARITY_TOLERANCE, providers: str = "auto") -> dict[str, Any]:
    """Export ``model_dir/model.pt`` to ``model_dir/model.onnx`` and record parity.

    The ONNX file is written only when parity holds; otherwise ExportParityError.
    """
    model_dir = Path(model_dir)
    model, meta = load_model(model_dir)
    images = parity_images(meta, data_dir, n_images)
    data = to_onnx(model)
    tmp = model_dir / f".{ONNX_FILE}.candidate"
    atomic_write_bytes(tmp, data)
    try:
        report = parity(model, tmp, images, providers)
        worst = max(report["max_abs_diff_probabilities"], report["max_abs_diff_probabilities_batch1"])
        if not worst <= tolerance:
            raise ExportParityError(
                f"{model_dir}: ONNX probabilities differ from torch by {worst:.3g} (> {tolerance:g})"
            )
        tmp.replace(model_dir / ONNX_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    meta["onnx"] = {
        "file": ONNX_FILE,
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
        "dynamic_batch": True,
        "opset": 18,
        "parity": report,
        "tolerance": tolerance,
        "one_pass_cam": {"layer": model.layer_names[-1],
                         "head_weight": model.fc.weight.detach().tolist()},
    }
    write_json(model_dir / METADATA_FILE, meta)
    logger.info("exported %s (parity %.2e)", model_dir, worst)
    return meta
