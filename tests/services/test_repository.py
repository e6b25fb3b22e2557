"""services.repository.ModelRepository over real exported models copied into temporary repositories."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camseg.core.errors import InvalidInputError, NotFoundError, StatusCode, UnavailableError
from camseg.models.repository import REQUIRED_FILES
from services.repository import ModelRepository, ServedModel

Exported = tuple[Path, dict[str, Any]]


class Events:
    """Records the repository's callbacks."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str, str]] = []

    def on_load(self, s: ServedModel) -> None:
        self.loaded.append((s.name, s.version))

    def on_failure(self, name: str, version: str, reason: str) -> None:
        self.failed.append((name, version, reason))

    def repo(self, root: Path) -> ModelRepository:
        return ModelRepository(root, providers="CPUExecutionProvider", ort_threads=1,
                               on_load=self.on_load, on_failure=self.on_failure)


def add(exported: Exported, root: Path, name: str, version: str) -> Path:
    dest = root / name / version
    shutil.copytree(exported[0], dest)
    return dest


def names(loaded: list[ServedModel]) -> list[tuple[str, str]]:
    return sorted((s.name, s.version) for s in loaded)


def test_refresh_loads_new_versions_and_swaps_the_snapshot(exported: Exported, tmp_path: Path) -> None:
    ev = Events()
    add(exported, tmp_path, "tiny", "1")
    repo = ev.repo(tmp_path)
    assert repo.snapshot == {}
    assert repo.on_disk() == {"tiny": ["1"]}
    first = repo.refresh()
    assert names(first) == [("tiny", "1")]
    assert ev.loaded == [("tiny", "1")]
    snap1 = repo.snapshot
    v1 = repo.get()
    assert (v1.name, v1.version, v1.path) == ("tiny", "1", tmp_path / "tiny" / "1")
    assert v1.classes == v1.model.classes and len(v1.classes) == 2
    probs = v1.model.classify_prepared(np.zeros((2, v1.model.channels, v1.model.size, v1.model.size),
                                                dtype=np.float32))
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)

    assert repo.refresh() == []  # nothing new: no reload, no swap
    assert repo.snapshot is snap1
    assert ev.loaded == [("tiny", "1")]

    add(exported, tmp_path, "tiny", "2")
    add(exported, tmp_path, "other", "7")
    assert names(repo.refresh()) == [("other", "7"), ("tiny", "2")]
    snap2 = repo.snapshot
    assert snap2 is not snap1
    assert {n: sorted(vs) for n, vs in snap1.items()} == {"tiny": ["1"]}  # the old snapshot is untouched
    assert {n: sorted(vs) for n, vs in snap2.items()} == {"other": ["7"], "tiny": ["1", "2"]}
    assert snap2["tiny"]["1"] is v1  # versions already served are kept, not reloaded
    assert sorted(ev.loaded) == [("other", "7"), ("tiny", "1"), ("tiny", "2")]
    assert ev.failed == []


def test_get_latest_pinned_and_only_model(exported: Exported, tmp_path: Path) -> None:
    for v in ("9", "10", "beta"):
        add(exported, tmp_path, "tiny", v)
    repo = ModelRepository(tmp_path, providers="CPUExecutionProvider", ort_threads=1)
    with pytest.raises(UnavailableError, match="no model is loaded yet") as unavailable:
        repo.get()
    assert unavailable.value.code is StatusCode.UNAVAILABLE
    repo.refresh()
    assert repo.get().version == "10"  # numeric order, after named versions
    assert repo.get("tiny").version == "10"
    assert repo.get("tiny", "9").version == "9"
    assert repo.get("", "beta").version == "beta"  # the only model, pinned
    with pytest.raises(NotFoundError, match=r"model 'tiny' has no version '11'; it has beta, 9, 10") as missing:
        repo.get("tiny", "11")
    assert missing.value.code is StatusCode.NOT_FOUND
    with pytest.raises(NotFoundError, match=r"unknown model 'huge'; serving tiny"):
        repo.get("huge")

    add(exported, tmp_path, "other", "1")
    repo.refresh()
    with pytest.raises(InvalidInputError, match="name a model: this server serves other, tiny") as ambiguous:
        repo.get()
    assert ambiguous.value.code is StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidInputError):
        repo.get("", "9")
    assert repo.get("other").version == "1"
    assert repo.get("tiny", "beta").name == "tiny"


def test_missing_root_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such model repository"):
        ModelRepository(tmp_path / "absent")


def test_a_broken_version_is_refused_once_and_retried_when_it_changes(exported: Exported, tmp_path: Path) -> None:
    ev = Events()
    add(exported, tmp_path, "tiny", "1")
    broken = add(exported, tmp_path, "tiny", "2")
    meta = broken / "metadata.json"
    good_text = meta.read_text()
    meta.write_text(good_text[: len(good_text) // 2])  # truncated JSON
    repo = ev.repo(tmp_path)

    assert names(repo.refresh()) == [("tiny", "1")]
    assert [(n, v) for n, v, _ in ev.failed] == [("tiny", "2")]
    assert "metadata.json" in ev.failed[0][2]  # the reason names the broken file
    assert repo.get().version == "1"  # the good version serves, and is the latest served
    with pytest.raises(NotFoundError, match=r"it has 1$"):
        repo.get("tiny", "2")

    snap = repo.snapshot
    for _ in range(3):
        assert repo.refresh() == []
    assert len(ev.failed) == 1  # not retried while its files are unchanged
    assert repo.snapshot is snap

    meta.write_text(good_text[:10])  # changed, still broken: tried again, refused again
    assert repo.refresh() == []
    assert [(n, v) for n, v, _ in ev.failed] == [("tiny", "2"), ("tiny", "2")]
    assert repo.get().version == "1"

    meta.write_text(good_text)
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a distinct mtime on coarse clocks
    assert names(repo.refresh()) == [("tiny", "2")]
    assert repo.get().version == "2"
    assert repo.get("tiny", "1").version == "1"
    assert len(ev.failed) == 2
    assert ev.loaded == [("tiny", "1"), ("tiny", "2")]


def test_a_version_whose_onnx_model_is_garbage_is_refused(exported: Exported, tmp_path: Path) -> None:
    ev = Events()
    add(exported, tmp_path, "tiny", "1")
    bad = add(exported, tmp_path, "tiny", "3")
    (bad / "model.onnx").write_bytes(b"not an onnx model")
    repo = ev.repo(tmp_path)
    assert names(repo.refresh()) == [("tiny", "1")]
    assert [(n, v) for n, v, _ in ev.failed] == [("tiny", "3")]
    assert repo.get().version == "1"


def test_odd_names_are_skipped(exported: Exported, tmp_path: Path) -> None:
    """Entries that are not valid names hold files that would fail to load; the scan must
    skip them (no failure reported) and still find the good model."""
    ev = Events()
    add(exported, tmp_path, "tiny", "1")
    junk_versions = [tmp_path / "tiny" / v for v in (".hidden", "²", "a b", "-x")]
    junk_models = [tmp_path / m / "1" for m in (".hidden", "²", "a b")]
    for d in junk_versions + junk_models:
        d.mkdir(parents=True)
        for f in REQUIRED_FILES:
            (d / f).write_text("junk")
    (tmp_path / "stray-file").write_text("not a model")
    (tmp_path / "tiny" / "notes.txt").write_text("not a version")
    (tmp_path / "empty" / "1").mkdir(parents=True)  # incomplete: no files

    repo = ev.repo(tmp_path)
    assert repo.on_disk() == {"tiny": ["1"]}
    assert names(repo.refresh()) == [("tiny", "1")]
    assert ev.failed == []
    assert {n: list(vs) for n, vs in repo.snapshot.items()} == {"tiny": ["1"]}
    assert repo.get().version == "1"
