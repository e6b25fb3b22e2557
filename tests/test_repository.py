"""camseg.models.repository: version order, the scan of a model repository and name resolution."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.models.repository import REQUIRED_FILES, ModelStore, VersionRef, signature, valid_name, version_key


def _version(root: Path, name: str, version: str, files: tuple[str, ...] = REQUIRED_FILES) -> Path:
    d = root / name / version
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        (d / f).write_bytes(b"x")
    return d


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for v in ("1", "2", "10", "beta", "alpha"):
        _version(root, "resnet", v)
    _version(root, "resnet", "3", ("model.pt", "metadata.json"))  # no model.onnx: incomplete
    _version(root, "resnet", "4", ("model.onnx", "model.pt"))  # no metadata: incomplete
    (root / "resnet" / "5" / "model.onnx").mkdir(parents=True)  # a directory, not a file
    for f in ("model.pt", "metadata.json"):
        (root / "resnet" / "5" / f).write_bytes(b"x")
    _version(root, "resnet", ".staging-11")  # hidden: never a version
    _version(root, "resnet", "bad version")  # invalid name: skipped
    (root / "resnet" / "12").write_bytes(b"a file, not a directory")
    _version(root, "densenet", "7")
    _version(root, "empty-model", "1", ("model.pt",))  # no complete version at all
    _version(root, ".hidden", "1")
    _version(root, "bad model", "1")
    _version(root, "²", "1")
    (root / "README").write_text("not a model")
    return root


def test_version_key_order() -> None:
    assert sorted(["10", "beta", "2", "alpha", "1"], key=version_key) == ["alpha", "beta", "1", "2", "10"]
    assert version_key("beta") < version_key("2") < version_key("10")
    assert version_key("9") < version_key("10")  # numeric, not lexicographic


@pytest.mark.parametrize("name", ["²", "١٢", "v²", "³4"])
def test_version_key_of_non_ascii_digits_does_not_crash(name: str) -> None:
    key = version_key(name)
    assert key[0] == 0  # sorts as a named version, before every number
    assert key < version_key("0")


def test_valid_name() -> None:
    assert valid_name("resnet-1.2_b")
    for bad in ("", ".hidden", "../x", "a/b", "a b", "²", "x" * 129):
        assert not valid_name(bad), bad


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        ModelStore(tmp_path / "nope")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotFoundError):
        ModelStore(tmp_path / "f")


def test_scan_finds_complete_versions_only(store_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="camseg.models.repository"):
        found = ModelStore(store_root).scan()
    assert found == {"densenet": ["7"], "resnet": ["alpha", "beta", "1", "2", "10"]}
    warned = caplog.text
    assert "bad version" in warned and "bad model" in warned and "²" in warned
    assert ".hidden" not in warned and ".staging" not in warned


def test_scan_of_an_empty_root(tmp_path: Path) -> None:
    assert ModelStore(tmp_path).scan() == {}


def test_versions(store_root: Path) -> None:
    store = ModelStore(store_root)
    assert store.versions("resnet") == ["alpha", "beta", "1", "2", "10"]
    with pytest.raises(NotFoundError):
        store.versions("empty-model")
    with pytest.raises(NotFoundError):
        store.versions("unknown")
    with pytest.raises(NotFoundError):
        store.versions("README")  # a file, not a model directory


@pytest.mark.parametrize("version", ["", "latest"])
def test_resolve_latest(store_root: Path, version: str) -> None:
    ref = ModelStore(store_root).resolve("resnet", version)
    assert ref == VersionRef("resnet", "10", store_root / "resnet" / "10")


def test_resolve_default_is_latest(store_root: Path) -> None:
    assert ModelStore(store_root).resolve("densenet").version == "7"


def test_resolve_named_versions(store_root: Path) -> None:
    store = ModelStore(store_root)
    assert store.resolve("resnet", "beta").path == store_root / "resnet" / "beta"
    assert store.resolve("resnet", "2").version == "2"


@pytest.mark.parametrize("version", ["3", "4", "5", "11", "12", "99"])
def test_resolve_unknown_version(store_root: Path, version: str) -> None:
    with pytest.raises(NotFoundError, match="no version"):
        ModelStore(store_root).resolve("resnet", version)


def test_resolve_unknown_model(store_root: Path) -> None:
    with pytest.raises(NotFoundError, match="unknown model"):
        ModelStore(store_root).resolve("vgg")


@pytest.mark.parametrize("name", ["../x", "..", ".hidden", "a/b", "bad model", "", "/etc"])
def test_resolve_bad_model_names(store_root: Path, name: str) -> None:
    with pytest.raises(InvalidInputError, match="bad model name"):
        ModelStore(store_root).resolve(name)


@pytest.mark.parametrize("version", ["../x", "..", ".staging-11", "bad version", "1/../2"])
def test_resolve_bad_version_names(store_root: Path, version: str) -> None:
    with pytest.raises(InvalidInputError, match="bad version name"):
        ModelStore(store_root).resolve("resnet", version)


def test_signature_changes_when_a_file_is_rewritten(tmp_path: Path) -> None:
    d = _version(tmp_path, "m", "1")
    before = signature(d)
    assert [s[0] for s in before] == list(REQUIRED_FILES)
    (d / "model.pt").write_bytes(b"longer contents")
    after = signature(d)
    assert after != before
    assert after[1][1] == len(b"longer contents")


def test_signature_covers_every_visible_file_in_subfolders_too(tmp_path: Path) -> None:
    """External data may live in a subfolder (``weights/w.bin``): rewriting it, adding a
    file beside the required ones or breaking a symlink changes the signature; a hidden
    file being written does not."""
    d = _version(tmp_path, "m", "1")
    (d / "weights").mkdir()
    (d / "weights" / "w.bin").write_bytes(b"1234")
    base = signature(d)
    assert [s[0] for s in base] == [*REQUIRED_FILES, "weights/w.bin"]
    (d / "weights" / "w.bin").write_bytes(b"123456")
    rewritten = signature(d)
    assert rewritten != base and rewritten[-1][:2] == ("weights/w.bin", 6)
    (d / "weights" / ".w.bin.tmp").write_bytes(b"partial")
    (d / ".staging").mkdir()
    (d / ".staging" / "x").write_bytes(b"x")
    assert signature(d) == rewritten
    (d / "weights" / "alias.bin").symlink_to(tmp_path / "gone.bin")
    assert signature(d)[-2] == ("weights/alias.bin", -1, -1)
