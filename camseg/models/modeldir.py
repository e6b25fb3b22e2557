"""A model directory: ``model.pt``, ``metadata.json`` and, after export, ``model.onnx``."""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from camseg.core.errors import InvalidInputError, NotFoundError, UnsupportedError
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES
from camseg.models import Classifier, ModelSpec, build
from camseg.models.modelfiles import check_file

MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def read_metadata(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        if (Path(model_dir) / "camseg-model.json").is_file():
            raise UnsupportedError(f"{model_dir}: an imported ONNX classifier (camseg-model.json); this needs a "
                                   f"camseg-trained model (model.pt, {METADATA_FILE})")
        raise NotFoundError(f"{model_dir}: not a model directory (no {METADATA_FILE})")
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from exc
    return meta


def save_model(model_dir: Path, model: Classifier, metadata: dict[str, Any]) -> None:
    """Write weights and metadata (weights first, so metadata always describes them)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"spec": asdict(model.spec), "state_dict": model.state_dict()}, buf)
    atomic_write_bytes(model_dir / MODEL_FILE, buf.getvalue())
    write_json(model_dir / METADATA_FILE, metadata)


def load_model(model_dir: Path, *, map_location: str | torch.device = "cpu",
               max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> tuple[Classifier, dict[str, Any]]:
    """The classifier in eval mode and its metadata. ``model.pt`` must resolve inside
    ``model_dir`` and hold at most ``max_bytes`` (:func:`camseg.models.modelfiles.check_file`)."""
    model_dir = Path(model_dir)
    meta = read_metadata(model_dir)
    path = model_dir / MODEL_FILE
    if not path.is_file() and not path.is_symlink():
        raise NotFoundError(f"{model_dir}: no {MODEL_FILE}")
    check_file(path, model_dir, max_bytes=max_bytes)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        model = build(ModelSpec(**ckpt["spec"]))
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise InvalidInputError(f"{path}: unreadable checkpoint ({exc})") from exc
    model.eval()
    return model, meta
