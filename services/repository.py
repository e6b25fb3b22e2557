"""The model repository: ``DIR/<name>/<version>/`` holding what ``camseg export`` writes.

Every complete version is loaded and warmed up; the latest version of a model serves
by default and a pinned one on request. :meth:`ModelRepository.refresh` picks up
versions that appeared on disk: each is loaded and warmed up off to the side, then
the whole snapshot is replaced in one assignment, so a call sees either the old or
the new set, never a half-loaded model. A version that fails to load is refused (and
retried only once its files change); what was serving keeps serving. That includes a
version whose files leave its folder or declare more than ``max_model_bytes``
(:mod:`camseg.models.modelfiles`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from camseg.core.errors import CamsegError, InvalidInputError, NotFoundError, UnavailableError, shown
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES
from camseg.models.repository import ModelStore, Signature, signature, version_key
from camseg.pipeline.run import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A loaded version. ONNX sessions and camseg's hook-free Grad-CAM are safe to call
    from many threads."""

    name: str
    version: str
    model: LoadedModel
    signature: Signature = ()

    @property
    def path(self) -> Path:
        return self.model.path

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes


Snapshot = Mapping[str, Mapping[str, ServedModel]]


class ModelRepository:
    """The served snapshot of a :class:`camseg.models.repository.ModelStore`, refreshed by polling."""

    def __init__(self, root: Path | str, *, providers: str = "auto", ort_threads: int = 0, ort_spinning: bool = True,
                 max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
                 on_load: Callable[[ServedModel], None] | None = None,
                 on_failure: Callable[[str, str, str], None] | None = None,
                 on_unload: Callable[[ServedModel], None] | None = None):
        self.store = ModelStore(root)
        self.root = self.store.root
        self.providers = providers
        self.ort_threads = ort_threads
        self.ort_spinning = ort_spinning
        self.max_model_bytes = max_model_bytes
        self._snapshot: Snapshot = {}
        self._failed: dict[tuple[str, str], Signature] = {}
        self._refresh_lock = threading.Lock()
        self._on_load = on_load
        self._on_failure = on_failure
        self._on_unload = on_unload

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def on_disk(self) -> dict[str, list[str]]:
        """Complete versions on disk (model.onnx, model.pt and metadata.json present)."""
        return self.store.scan()

    def refresh(self) -> list[ServedModel]:
        """Bring the snapshot in line with the disk, entry by entry, and swap it once.

        New versions are loaded and warmed up; a version whose files changed is loaded
        again and replaces the old one only once it loads (else the old one keeps
        serving); a version gone from disk is unloaded. A version that fails to load is
        refused and retried only once its files change. Returns what was loaded.
        """
        with self._refresh_lock:
            current = self._snapshot
            on_disk = self.on_disk()
            loaded: list[ServedModel] = []
            for name, versions in on_disk.items():
                for version in versions:
                    served = self._refresh_one(name, version, current.get(name, {}).get(version))
                    if served is not None:
                        loaded.append(served)
            gone = [s for vs in current.values() for s in vs.values()
                    if s.version not in on_disk.get(s.name, [])]
            replaced = [current[s.name][s.version] for s in loaded if s.version in current.get(s.name, {})]
            if loaded or gone:
                merged = {n: dict(vs) for n, vs in current.items()}
                for s in gone:
                    del merged[s.name][s.version]
                for s in loaded:
                    merged.setdefault(s.name, {})[s.version] = s
                self._snapshot = {n: vs for n, vs in merged.items() if vs}  # one assignment: old or new, never half
                for s in gone:
                    logger.warning("model %s version %s left %s; unloaded", s.name, s.version, self.root)
                for s in gone + replaced:
                    if self._on_unload:
                        self._on_unload(s)
                for s in loaded:
                    logger.info("serving model %s version %s from %s", s.name, s.version, s.path)
                    if self._on_load:
                        self._on_load(s)
            return loaded

    def _refresh_one(self, name: str, version: str, serving: ServedModel | None) -> ServedModel | None:
        """The newly loaded model of one version on disk, or None when nothing changes."""
        path = self.root / name / version
        try:
            sig = signature(path)
        except OSError:
            return None  # removed while scanning
        if serving is not None and serving.signature == sig:
            return None
        if self._failed.get((name, version)) == sig:
            return None
        try:
            served = self._load(name, version, path, sig)
        except Exception as exc:
            self._failed[(name, version)] = sig
            reason = exc.message if isinstance(exc, CamsegError) else f"{type(exc).__name__}: {exc}"
            keep = "; the loaded one keeps serving" if serving is not None else ""
            logger.error("refused model %s version %s: %s%s", name, version, reason, keep)
            if self._on_failure:
                self._on_failure(name, version, reason)
            return None
        self._failed.pop((name, version), None)
        if serving is not None:
            logger.info("model %s version %s changed on disk; reloaded", name, version)
        return served

    def _load(self, name: str, version: str, path: Path, sig: Signature) -> ServedModel:
        model = LoadedModel.load(path, onnx=True, providers=self.providers, threads=self.ort_threads,
                                 spinning=self.ort_spinning, max_bytes=self.max_model_bytes)
        model.warm_up()
        if signature(path) != sig:
            raise InvalidInputError(f"{path}: files changed while loading; trying again at the next scan")
        return ServedModel(name, version, model, sig)

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
            raise NotFoundError(f"unknown model {shown(name)}; serving {', '.join(sorted(snap))}")
        if not version:
            version = max(versions, key=version_key)
        served = versions.get(version)
        if served is None:
            have = ", ".join(sorted(versions, key=version_key))
            raise NotFoundError(f"model {shown(name)} has no version {shown(version)}; it has {have}")
        return served
