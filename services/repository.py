"""The model repository: ``DIR/<name>/<version>/`` holding what ``camseg export`` writes.

Every complete version is loaded and warmed up; the latest version of a model serves
by default and a pinned one on request. :meth:`ModelRepository.refresh` picks up
versions that appeared on disk: each is loaded and warmed up off to the side, then
the whole snapshot is replaced in one assignment, so a call sees either the old or
the new set, never a half-loaded model. A version that fails to load is refused (and
retried only once its files change); what was serving keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camseg.cam import compute_cam
from camseg.errors import CamsegError, InvalidInputError, NotFoundError, UnavailableError
from camseg.inference import OnnxModel
from camseg.modeldir import METADATA_FILE, MODEL_FILE, ONNX_FILE, load_model
from camseg.models import Classifier

logger = logging.getLogger(__name__)


def version_key(v: str) -> tuple[int, int, str]:
    """Numeric versions sort numerically and after named ones."""
    return (1, int(v), "") if v.isdigit() else (0, 0, v)


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    path: Path
    onnx: OnnxModel
    torch_model: Classifier
    meta: dict[str, Any]  # ONNX sessions and camseg's hook-free Grad-CAM are safe to call from many threads

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


Snapshot = Mapping[str, Mapping[str, ServedModel]]


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))


class ModelRepository:
    def __init__(self, root: Path | str, *, providers: str = "auto", ort_threads: int = 0,
                 on_load: Callable[[ServedModel], None] | None = None,
                 on_failure: Callable[[str, str, str], None] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFoundError(f"{self.root}: no such model repository")
        self.providers = providers
        self.ort_threads = ort_threads
        self._snapshot: Snapshot = {}
        self._failed: dict[tuple[str, str], tuple[tuple[str, int, int], ...]] = {}
        self._refresh_lock = threading.Lock()
        self._on_load = on_load
        self._on_failure = on_failure

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def on_disk(self) -> dict[str, list[str]]:
        """Complete versions on disk (model.onnx, model.pt and metadata.json present)."""
        found: dict[str, list[str]] = {}
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versions = [v.name for v in model_dir.iterdir() if v.is_dir() and not v.name.startswith(".")
                        and all((v / f).is_file() for f in (ONNX_FILE, MODEL_FILE, METADATA_FILE))]
            if versions:
                found[model_dir.name] = sorted(versions, key=version_key)
        return found

    def refresh(self) -> list[ServedModel]:
        """Load versions new on disk; swap the snapshot once. Returns what was loaded."""
        with self._refresh_lock:
            current = self._snapshot
            loaded: list[ServedModel] = []
            for name, versions in self.on_disk().items():
                for version in versions:
                    if version in current.get(name, {}):
                        continue
                    path = self.root / name / version
                    sig = _signature(path)
                    if self._failed.get((name, version)) == sig:
                        continue
                    try:
                        served = self._load(name, version, path)
                    except Exception as exc:
                        self._failed[(name, version)] = sig
                        reason = exc.message if isinstance(exc, CamsegError) else f"{type(exc).__name__}: {exc}"
                        logger.error("refused model %s version %s: %s", name, version, reason)
                        if self._on_failure:
                            self._on_failure(name, version, reason)
                        continue
                    self._failed.pop((name, version), None)
                    loaded.append(served)
            if loaded:
                merged = {n: dict(vs) for n, vs in current.items()}
                for s in loaded:
                    merged.setdefault(s.name, {})[s.version] = s
                self._snapshot = merged  # one assignment: calls see old or new, never half
                for s in loaded:
                    logger.info("serving model %s version %s from %s", s.name, s.version, s.path)
                    if self._on_load:
                        self._on_load(s)
            return loaded

    def _load(self, name: str, version: str, path: Path) -> ServedModel:
        onnx = OnnxModel(path, providers=self.providers, threads=self.ort_threads)
        model, meta = load_model(path)
        served = ServedModel(name, version, path, onnx, model, meta)
        warm_up(served)
        return served

    def get(self, name: str = "", version: str = "") -> ServedModel:
        """A served model; the only model when ``name`` is empty; the latest version
        when ``version`` is empty."""
        snap = self._snapshot
        if not snap:
            raise UnavailableError("no model is loaded yet")
        if not name:
            if len(snap) != 1:
                raise InvalidInputError(f"name a model: this server serves {', '.join(sorted(snap))}")
            name = next(iter(snap))
        versions = snap.get(name)
        if not versions:
            raise NotFoundError(f"unknown model {name!r}; serving {', '.join(sorted(snap))}")
        if not version:
            version = max(versions, key=version_key)
        served = versions.get(version)
        if served is None:
            have = ", ".join(sorted(versions, key=version_key))
            raise NotFoundError(f"model {name!r} has no version {version!r}; it has {have}")
        return served


def warm_up(served: ServedModel) -> None:
    """One pass of every engine on a blank image: a model that cannot answer is refused
    before it serves, and first calls do not pay for lazy initialisation."""
    size, channels = served.onnx.size, served.onnx.channels
    x = np.zeros((1, channels, size, size), dtype=np.float32)
    probs = served.onnx.classify(x)
    if probs.shape != (1, len(served.classes)) or not np.isfinite(probs).all():
        raise InvalidInputError(f"{served.path}: warm-up gave probabilities of shape {probs.shape}")
    compute_cam(served.torch_model, torch.from_numpy(x))
    if served.onnx.cam_layer is not None:
        served.onnx.explain(x)
