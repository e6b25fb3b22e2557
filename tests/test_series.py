"""Whole series and volumes: ``camseg segment`` on DICOM series and NRRD/NIfTI volumes
writes one SEG or mask volume per series, on the source's grid, and its masks are the
pipeline's masks of the windowed slices."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from camseg.bulk import batch
from camseg.data.synth import SynthConfig, generate
from camseg.io import dicom
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel, run
from tests.conftest import TINY_SIZE
from tests.dicomdata import write_series

# stored = 864 + 400 * x puts x in [0, 1] on CT's soft-tissue window (40 +- 200 HU) with
# the intercept -1024: the windowed slices are the ROIs again, to 1/400
STORED_LOW = 864
STORED_SPAN = 400


@pytest.fixture(scope="module")
def rois() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    images, masks, _, _ = generate(SynthConfig(n=6, size=TINY_SIZE, seed=11, tumor_fraction=0.5))
    return images.astype(np.float32), masks.astype(bool)


def stored(images: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    return np.round(STORED_LOW + STORED_SPAN * np.clip(images, 0, 1)).astype(np.uint16)


@pytest.fixture(scope="module")
def archive(rois: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good CT series (one oblique), a series with a missing slice, a truncated DICOM
    file, a README, and an NRRD volume."""
    root = tmp_path_factory.mktemp("archive")
    images, _ = rois
    write_series(root / "a", stored(images[:4]))
    write_series(root / "b", stored(images[2:]), row_cosines=(0.8, 0.6, 0.0), column_cosines=(-0.6, 0.8, 0.0),
                 origin=(10.0, -5.0, 3.0), spacing=(0.5, 0.6, 1.25))
    gap = write_series(root / "gap", stored(images[:4]), prefix="GAP")
    gap_sorted = sorted(gap, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    gap_sorted[1].unlink()  # slices at 0, 5.0 and 7.5 mm: inconsistent spacing
    good = next((root / "a").iterdir()).read_bytes()
    (root / "broken.dcm").write_bytes(good[:400])  # a DICOM preamble, then nothing
    (root / "README.txt").write_text("not DICOM\n")
    vol = np.transpose(stored(images[:3]), (2, 1, 0))  # (i, j, k) order of the file
    nrrd.write(str(root / "vol.nrrd"), vol, {"space": "left-posterior-superior",
                                            "space directions": [[0.0, 0.9, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 3.0]],
                                            "space origin": [1.0, 2.0, 3.0]})
    return root


def camseg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "camseg", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CAMSEG_TORCH_THREADS": "1"})


def read_rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def test_segment_writes_one_seg_per_series_with_the_pipelines_masks(exported: tuple[Path, dict[str, Any]],
                                                                    archive: Path, tmp_path: Path) -> None:
    model_dir = exported[0]
    out = tmp_path / "seg"
    done = camseg("segment", "--model", model_dir, "--data", archive, "--out", out, "--threshold", "otsu",
                  "--heatmaps")
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    summary = json.loads((out / batch.SUMMARY).read_text())
    assert summary["series"] == 4 and summary["segmented"] == 3  # a, b, vol; gap fails alone
    failed = [r for r in rows.values() if r["error"]]
    assert len(failed) == 1 and "inconsistent slice spacing" in failed[0]["error"]
    assert any("broken.dcm" in f["id"] for f in summary["failures"])  # the truncated file, named
    assert "README" not in json.dumps(summary["failures"])

    model = LoadedModel.load(model_dir)
    opts = Options(threshold=Options().threshold)
    for folder in ("a", "b"):
        series = dicom.load_series(sorted((archive / folder).iterdir()))
        row = next(r for r in rows.values() if r["series_uid"] == series.uid)
        assert row["output"].endswith(".dcm") and int(row["slices"]) == 4
        seg = hd.seg.segread(out / row["output"])
        assert seg.Modality == "SEG"
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
        expected = np.stack([np.asarray(r.mask) for r in
                             run(model, list(series.windowed()), opts).items])
        got = np.zeros_like(expected)
        for k, ds in enumerate(series.datasets):
            got[k] = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[ds.SOPInstanceUID], ignore_spatial_locations=True)[0, ..., 0] > 0
        np.testing.assert_array_equal(got, expected)
        assert int(row["mask_voxels"]) == int(expected.sum())
        heat = nib.load(out / row["heatmap"])
        assert isinstance(heat, nib.Nifti1Image) and series.geometry is not None
        np.testing.assert_allclose(heat.affine, series.geometry.ras_affine, atol=1e-6)
        check = subprocess.run(["dciodvfy", out / row["output"]], capture_output=True, text=True)
        errors = [ln for ln in (check.stdout + check.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, check.stderr

    vol_row = rows["vol"]
    assert vol_row["output"] == "outputs/vol.mask.nrrd"
    mask, header = nrrd.read(str(out / vol_row["output"]))
    _, source = nrrd.read(str(archive / "vol.nrrd"))
    np.testing.assert_allclose(header["space directions"], source["space directions"])
    np.testing.assert_allclose(header["space origin"], source["space origin"])
    assert mask.shape == (TINY_SIZE, TINY_SIZE, 3)


def test_series_masks_as_volumes_carry_the_dicom_geometry(exported: tuple[Path, dict[str, Any]], archive: Path,
                                                         tmp_path: Path) -> None:
    one = tmp_path / "in"
    shutil.copytree(archive / "b", one)
    series = dicom.load_series(sorted(one.iterdir()))
    g = series.geometry
    assert g is not None
    for fmt in ("nifti", "nrrd"):
        out = tmp_path / fmt
        done = camseg("segment", "--model", exported[0], "--data", one, "--out", out, "--format", fmt)
        assert done.returncode == 0, done.stderr
        (row,) = read_rows(out).values()
        if fmt == "nifti":
            img = nib.load(out / row["output"])
            assert isinstance(img, nib.Nifti1Image)
            np.testing.assert_allclose(img.affine, g.ras_affine, atol=1e-6)
            assert img.shape == (TINY_SIZE, TINY_SIZE, 4)
        else:
            _, header = nrrd.read(str(out / row["output"]))
            np.testing.assert_allclose(header["space origin"], g.origin, atol=1e-6)
            np.testing.assert_allclose(np.asarray(header["space directions"]),
                                       (np.asarray(g.direction) * np.asarray(g.spacing)).T, atol=1e-6)


def test_a_seg_asked_of_a_volume_file_fails_that_series_with_its_reason(exported: tuple[Path, dict[str, Any]],
                                                                        archive: Path, tmp_path: Path) -> None:
    job = batch.create_series_job(tmp_path, exported[0], archive / "vol.nrrd", output="seg", job_id="seg-of-nrrd")
    summary = batch.run_local(job, LoadedModel.load(exported[0]))
    assert summary["failed"] == 1 and "nifti or nrrd" in summary["failures"][0]["error"]


def test_bad_inputs_are_one_line_errors(exported: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = camseg("segment", "--model", exported[0], "--data", empty, "--out", tmp_path / "o")
    assert done.returncode == 2
    assert "no DICOM series and no NRRD/NIfTI volumes" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = camseg("segment", "--model", exported[0], "--data", empty, "--out", tmp_path / "o", "--window", "wide")
    assert done.returncode == 2 and "wide" in done.stderr
