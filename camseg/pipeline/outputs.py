"""Idempotent outputs: every core function that writes keys its output by its inputs.

A key is the SHA-256 of what the output was computed from: the model's files, the data
set's listing (labels, and each file's size and modification time), the options and
the camseg version. An output directory is built in a temporary sibling and renamed
into place (:func:`camseg.data.folder.atomic_directory`), with the key recorded in its
completion file, written last. A rerun with the same key reuses the complete output;
with another key it replaces the output atomically when asked to (``overwrite``) and
otherwise refuses; never half a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import camseg
from camseg.core.errors import InvalidInputError
from camseg.data.folder import FolderDataset
from camseg.models.modelconfig import CONFIG_FILE
from camseg.models.modeldir import METADATA_FILE, MODEL_FILE, ONNX_FILE

_CHUNK = 1 << 20


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model_dir: Path) -> dict[str, str]:
    """SHA-256 of each file of a model directory that exists."""
    return {name: _file_digest(Path(model_dir) / name) for name in (MODEL_FILE, METADATA_FILE, ONNX_FILE, CONFIG_FILE)
            if (Path(model_dir) / name).is_file()}


def data_fingerprint(ds: FolderDataset, indices: Iterable[int]) -> str:
    """SHA-256 of a data set's labels and the size and modification time of each file of
    ``indices``: cheap for large sets, and changed by any rewrite of a file."""
    h = hashlib.sha256()
    for name in ("labels.csv", "dataset.json"):
        path = ds.root / name
        if path.is_file():
            h.update(path.read_bytes())
    for i in indices:
        s = ds.samples[i]
        for p in (s.image_path, s.mask_path):
            if p is not None:
                st = p.stat()
                h.update(f"{p.relative_to(ds.root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def output_key(**parts: Any) -> str:
    """The key of an output computed from ``parts`` (JSON-serialisable) by this camseg."""
    text = json.dumps({"camseg": camseg.__version__, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def reusable(out: Path, marker: str, key: str, *, overwrite: bool) -> dict[str, Any] | None:
    """The completion record of ``out`` when it was made from the same inputs; None when
    ``out`` is to be (re)built. Refuses to replace a non-empty ``out`` made from other
    inputs (or not by camseg) unless ``overwrite``."""
    out = Path(out)
    done = out / marker
    if done.is_file():
        try:
            record = json.loads(done.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            record = None
        if isinstance(record, dict) and record.get("key") == key:
            return record
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"{out}: already holds other results (pass --overwrite to replace them)")
    return None
