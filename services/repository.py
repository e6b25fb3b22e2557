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

from camseg.errors import CamsegError, InvalidInputError, NotFoundError, UnavailableError
from camseg.pipeline import LoadedModel
from camseg.repository import ModelStore, Signature, signature, version_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A loaded version. ONNX sessions and camseg's hook-free Grad-CAM are safe to call
    from many threads."""

    name: str
    version: str
    model: LoadedModel

    @property
    def path(self) -> Path:
        return self.model.path

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes


Snapshot = Mapping[str, Mapping[str, ServedModel]]


class ModelRepository:
    """The served snapshot of a :class:`camseg.repository.ModelStore`, refreshed by polling."""

    def __init__(self, root: Path | str, *, providers: str = "auto", ort_threads: int = 0,
                 on_load: Callable[[ServedModel], None] | None = None,
                 on_failure: Callable[[str, str, str], None] | None = None):
        self.store = ModelStore(root)
        self.root = self.store.root
        self.providers = providers
        self.ort_threads = ort_threads
        self._snapshot: Snapshot = {}
        self._failed: dict[tuple[str, str], Signature] = {}
        self._refresh_lock = threading.Lock()
        self._on_load = on_load
        self._on_failure = on_failure

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def on_disk(self) -> dict[str, list[str]]:
        """Complete versions on disk (model.onnx, model.pt and metadata.json present)."""
        return self.store.scan()

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
                    try:
                        sig = signature(path)
                    except OSError:
                        continue  # removed while scanning
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
        model = LoadedModel.load(path, onnx=True, providers=self.providers, threads=self.ort_threads)
        model.warm_up()
        return ServedModel(name, version, model)

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
