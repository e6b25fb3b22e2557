"""camseg.data.real on the real pyradiomics 3.0.1 cases.

The archive is fetched once into the settings' data cache (``CAMSEG_DATA_CACHE``,
default ``~/.cache/camseg``) and reused by later runs; this needs pip to reach PyPI
(or the configured index) the first time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nrrd
import numpy as np
import pytest

from camseg.core.errors import UnavailableError
from camseg.core.settings import Settings
from camseg.data import real
from camseg.data.folder import FolderDataset
from camseg.data.real import CASES, build_real_dataset, case_files, fetch_pyradiomics

# Observed once from the archive, sliced axially: (slices, slices with lesion) per case.
EXPECTED = {
    "brain1": (25, 7),
    "brain2": (23, 3),
    "lung1": (48, 3),
    "lung2": (61, 11),
    "breast1": (21, 3),
}
SLICE_SHAPE = {
    "brain1": (256, 256),
    "brain2": (256, 256),
    "lung1": (512, 512),
    "lung2": (512, 512),
    "breast1": (120, 45),
}


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Settings().data_cache


@pytest.fixture(scope="session")
def data_dir(cache_dir: Path) -> Path:
    return fetch_pyradiomics(cache_dir)


@pytest.fixture(scope="module")
def real_set(data_dir: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_real_dataset(tmp_path_factory.mktemp("real") / "pyradiomics", cache_dir)


def test_fetch_gives_all_ten_case_files(data_dir: Path) -> None:
    assert data_dir.name == "data" and data_dir.parent.name == "pyradiomics-3.0.1"
    for case in CASES:
        for path in case_files(data_dir, case):
            assert path.is_file() and path.stat().st_size > 0


def test_fetch_is_cached_and_runs_no_subprocess(
    data_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*args, **kwargs):
        raise AssertionError("a cached fetch must not run pip")

    monkeypatch.setattr(real.subprocess, "run", no_subprocess)
    assert fetch_pyradiomics(cache_dir) == data_dir


def test_real_set_has_five_cases_and_the_observed_slice_counts(real_set: Path) -> None:
    ds = FolderDataset.open(real_set)
    assert ds.classes == ("normal", "tumor")
    per_case: dict[str, list[int]] = {}
    for s in ds.samples:
        per_case.setdefault(s.id.split("-s")[0], []).append(s.label)
    assert set(per_case) == set(CASES)
    assert {c: (len(v), sum(v)) for c, v in per_case.items()} == EXPECTED
    assert len(ds) == 178 and sum(s.label for s in ds.samples) == 27
    # masks exist for exactly the tumor slices
    assert all((s.mask_path is not None) == (s.label == 1) for s in ds.samples)


def test_real_set_tumor_masks_are_non_empty_and_fit_their_images(real_set: Path) -> None:
    ds = FolderDataset.open(real_set)
    for i, s in enumerate(ds.samples):
        if s.label == 0 and not s.id.endswith("-s000"):
            continue  # one normal slice per case is enough to check the images
        image, mask = ds.load(i)
        case = s.id.split("-s")[0]
        assert image.shape == SLICE_SHAPE[case]
        assert 0.0 <= image.min() < image.max() <= 1.0
        if s.label == 1:
            assert mask is not None and mask.shape == image.shape and mask.sum() > 0


def test_real_set_is_split_by_volume_and_records_its_sources(
    real_set: Path, data_dir: Path
) -> None:
    ds = FolderDataset.open(real_set)
    splits: dict[str, set[str | None]] = {}
    for s in ds.samples:
        splits.setdefault(s.id.split("-s")[0], set()).add(s.split)
    assert all(len(v) == 1 for v in splits.values())
    assert sorted(next(iter(v)) or "" for v in splits.values()) == [
        "test",
        "train",
        "train",
        "train",
        "val",
    ]
    meta = json.loads((real_set / "dataset.json").read_text())
    assert meta["classes"] == ["normal", "tumor"] and meta["axis"] == 2
    assert [v["id"] for v in meta["volumes"]] == list(CASES)
    assert meta["volumes"][0]["image"] == str(data_dir / "brain1_image.nrrd")
    assert meta["archive_sha256"] == real.ARCHIVE_SHA256


def test_brain_cases_are_flipped_to_anterior_up(real_set: Path, data_dir: Path) -> None:
    """brain1 has a negative y spacing: its slices are the stored rows reversed."""
    label, header = nrrd.read(str(data_dir / "brain1_label.nrrd"))
    assert header["space directions"][1][1] < 0
    ds = FolderDataset.open(real_set)
    index = {s.id: i for i, s in enumerate(ds.samples)}
    tumor_slices = [k for k in range(label.shape[2]) if label[:, :, k].any()]
    for k in tumor_slices:
        _, mask = ds.load(index[f"brain1-s{k:03d}"])
        np.testing.assert_array_equal(mask, (label[:, :, k].T != 0)[::-1])


def test_failed_command_is_a_one_line_unavailable_error() -> None:
    with pytest.raises(UnavailableError, match=r"probe: failed with exit 1: boom$") as info:
        real._run([sys.executable, "-c", "import sys; sys.exit('boom')"], timeout=30, what="probe")
    assert "\n" not in info.value.message
    with pytest.raises(UnavailableError, match=r"probe: timed out after 0 s"):
        real._run([sys.executable, "-c", "import time; time.sleep(10)"], timeout=0.2, what="probe")


def test_fetch_failure_raises_unavailable_and_leaves_no_partial_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(real.sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(UnavailableError, match="creating a download venv"):
        fetch_pyradiomics(tmp_path / "cache")
    assert list((tmp_path / "cache" / "pyradiomics-3.0.1").iterdir()) == []
