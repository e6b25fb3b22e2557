"""camseg.pipeline.outputs: output keys, model and data fingerprints, and reuse of complete outputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import camseg
from camseg.core.errors import InvalidInputError
from camseg.data.folder import FolderDataset
from camseg.pipeline.outputs import data_fingerprint, model_fingerprint, output_key, reusable

MARKER = "DONE.json"


# ---------------------------------------------------------------- output_key


def test_output_key_is_stable_and_order_free() -> None:
    a = output_key(model={"model.pt": "abc"}, data="d1", options={"threshold": "otsu", "largest": False})
    b = output_key(options={"largest": False, "threshold": "otsu"}, data="d1", model={"model.pt": "abc"})
    assert a == b
    assert len(a) == 64 and int(a, 16) >= 0


@pytest.mark.parametrize(
    "changed",
    [
        {"model": {"model.pt": "abd"}},
        {"data": "d2"},
        {"options": {"threshold": "p90", "largest": False}},
        {"options": {"threshold": "otsu", "largest": True}},
        {"options": {"threshold": "otsu"}},
        {"extra": 1},
        {"data": None},
    ],
)
def test_output_key_changes_with_any_part(changed: dict[str, object]) -> None:
    parts: dict[str, object] = {"model": {"model.pt": "abc"}, "data": "d1",
                                "options": {"threshold": "otsu", "largest": False}}
    assert output_key(**parts) != output_key(**{**parts, **changed})


def test_output_key_distinguishes_types() -> None:
    assert output_key(n=1) != output_key(n="1")
    assert output_key(n=[1, 2]) != output_key(n=[2, 1])


def test_output_key_depends_on_the_camseg_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = output_key(a=1)
    monkeypatch.setattr(camseg, "__version__", "999.0")
    assert output_key(a=1) != before


def test_output_key_accepts_paths() -> None:
    assert output_key(path=Path("/a/b")) != output_key(path=Path("/a/c"))


# ---------------------------------------------------------------- model_fingerprint


def test_model_fingerprint(trained_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(trained_dir, d)
    fp = model_fingerprint(d)
    assert set(fp) == {"model.pt", "metadata.json"}  # no model.onnx yet
    assert fp["model.pt"] == hashlib.sha256((d / "model.pt").read_bytes()).hexdigest()
    assert model_fingerprint(d) == fp

    meta = json.loads((d / "metadata.json").read_text())
    meta["positive_class"] = "normal"
    (d / "metadata.json").write_text(json.dumps(meta))
    changed = model_fingerprint(d)
    assert changed["metadata.json"] != fp["metadata.json"]
    assert changed["model.pt"] == fp["model.pt"]

    (d / "model.onnx").write_bytes(b"onnx bytes")
    with_onnx = model_fingerprint(d)
    assert with_onnx["model.onnx"] == hashlib.sha256(b"onnx bytes").hexdigest()
    (d / "model.onnx").write_bytes(b"onnx bytes 2")
    assert model_fingerprint(d)["model.onnx"] != with_onnx["model.onnx"]


def test_model_fingerprint_of_an_empty_dir(tmp_path: Path) -> None:
    assert model_fingerprint(tmp_path) == {}


# ---------------------------------------------------------------- data_fingerprint


@pytest.fixture
def data_copy(tiny_folder: Path, tmp_path: Path) -> Path:
    d = tmp_path / "data"
    shutil.copytree(tiny_folder, d)
    return d


def test_data_fingerprint_is_stable(data_copy: Path) -> None:
    ds = FolderDataset.open(data_copy)
    a = data_fingerprint(ds, range(len(ds)))
    assert a == data_fingerprint(FolderDataset.open(data_copy), range(len(ds)))
    assert len(a) == 64
    assert data_fingerprint(ds, range(3)) != a


def test_data_fingerprint_changes_when_an_image_is_rewritten(data_copy: Path) -> None:
    ds = FolderDataset.open(data_copy)
    everything = data_fingerprint(ds, range(len(ds)))
    others = data_fingerprint(ds, range(1, len(ds)))
    path = ds.samples[0].image_path
    st = path.stat()
    path.write_bytes(path.read_bytes())  # same bytes, rewritten
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert data_fingerprint(ds, range(len(ds))) != everything
    assert data_fingerprint(ds, range(1, len(ds))) == others  # only the files of ``indices`` count


def test_data_fingerprint_changes_when_a_mask_or_the_labels_change(data_copy: Path) -> None:
    ds = FolderDataset.open(data_copy)
    with_mask = next(i for i, s in enumerate(ds.samples) if s.mask_path is not None)
    before = data_fingerprint(ds, [with_mask])
    mask_path = ds.samples[with_mask].mask_path
    assert mask_path is not None
    st = mask_path.stat()
    os.utime(mask_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    after_mask = data_fingerprint(ds, [with_mask])
    assert after_mask != before
    labels = data_copy / "labels.csv"
    labels.write_text(labels.read_text() + "\n")
    assert data_fingerprint(ds, [with_mask]) != after_mask


# ---------------------------------------------------------------- reusable


def _complete(out: Path, key: str) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.csv").write_text("id,dice\n")
    record: dict[str, object] = {"key": key, "n": 3}
    (out / MARKER).write_text(json.dumps(record))
    return record


def test_reusable_same_key_returns_the_record(tmp_path: Path) -> None:
    record = _complete(tmp_path / "out", "k1")
    assert reusable(tmp_path / "out", MARKER, "k1", overwrite=False) == record
    assert reusable(tmp_path / "out", MARKER, "k1", overwrite=True) == record


def test_reusable_missing_or_empty_dir(tmp_path: Path) -> None:
    assert reusable(tmp_path / "missing", MARKER, "k1", overwrite=False) is None
    (tmp_path / "empty").mkdir()
    assert reusable(tmp_path / "empty", MARKER, "k1", overwrite=False) is None


def test_reusable_refuses_other_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _complete(out, "k1")
    with pytest.raises(InvalidInputError, match="overwrite"):
        reusable(out, MARKER, "k2", overwrite=False)
    assert reusable(out, MARKER, "k2", overwrite=True) is None
    assert (out / MARKER).is_file()  # deciding does not delete anything


def test_reusable_refuses_a_dir_not_made_by_camseg(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError):
        reusable(out, MARKER, "k1", overwrite=False)
    assert reusable(out, MARKER, "k1", overwrite=True) is None




@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00",
        b'{"n": 1}',
        b'{"key": null}',
        b"[]",
        b"null",
        b'"k1"',
    ],
)
def test_reusable_with_a_broken_marker(tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_bytes(content)
    with pytest.raises(InvalidInputError):
        reusable(out, MARKER, "k1", overwrite=False)
    assert reusable(out, MARKER, "k1", overwrite=True) is None
