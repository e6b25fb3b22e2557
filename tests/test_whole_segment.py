"""``camseg segment`` on whole images: a folder data set of 300x400 mammograms and a
DICOM MG instance, through the command line, against the core's :func:`run`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from camseg.app.cli import main
from camseg.app.parsing import WHOLE_MODES
from camseg.bulk.kinds.common import pipeline_record, read_pipeline
from camseg.core.errors import InvalidInputError
from camseg.data.folder import FolderDataset, read_mask
from camseg.heat.rules import parse_rule
from camseg.io import dicom
from camseg.pipeline.options import Options, tiling_of
from camseg.pipeline.run import LoadedModel, run
from camseg.pipeline.whole import Tiling, Whole
from tests.test_dicom import dciodvfy_errors
from tests.wholedata import mammogram, whole_folder, write_mammogram

FLAGS = ["--threshold", "p90", "--no-gate", "--no-progress"]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return whole_folder(tmp_path_factory.mktemp("whole") / "data")


def test_a_folder_of_whole_images_gets_masks_at_their_size_and_lesion_rows(trained_dir: Path, folder: Path,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "seg"
    assert main(["segment", "--model", str(trained_dir), "--data", str(folder), "--out", str(out),
                 "--scale", "1", "--overlap", "0.25", *FLAGS]) == 0
    rows = {r["id"]: r for r in _csv(out / "results.csv")}
    lesions = _csv(out / "lesions.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["whole_images"] == 3 and summary["lesions"] == len(lesions) > 0
    assert summary["options"]["tiling"]["scale"] == 1.0 and summary["options"]["tiling"]["overlap"] == 0.25
    model = LoadedModel.load(trained_dir)
    ds = FolderDataset.open(folder)
    expected = run(model, [ds.load(i)[0] for i in range(len(ds))],
                   Options(threshold=parse_rule("p90"), gate=False, tiling=Tiling(scale=1.0, overlap=0.25)))
    for s, item in zip(ds.samples, expected.items, strict=True):
        r, mask = rows[s.id], read_mask(out / "masks" / f"{s.id}.png")
        np.testing.assert_array_equal(mask, item.mask)  # the core's mask, at the image's own size
        assert int(r["mask_area"]) == int(mask.sum())
        if s.id == "roi":
            assert mask.shape == (32, 32) and r["whole"] == "0" and r["lesions"] == ""
            continue
        assert mask.shape == (300, 400) and r["whole"] == "1" and item.whole is not None
        assert int(r["tiles"]) == item.whole.tiles and float(r["image_score"]) == pytest.approx(item.whole.score)
        mine = [c for c in lesions if c["id"] == s.id]
        assert int(r["lesions"]) == len(mine) == len(item.whole.lesions)
        # the candidates are the mask's components: their areas add up to it, each box holds its centroid
        assert sum(int(c["area"]) for c in mine) == int(mask.sum())
        assert [int(c["rank"]) for c in mine] == list(range(1, len(mine) + 1))
        assert [float(c["score"]) for c in mine] == sorted((float(c["score"]) for c in mine), reverse=True)
        for c in mine:
            y0, x0, y1, x1 = (int(c[k]) for k in ("y0", "x0", "y1", "x1"))
            assert 0 <= y0 < y1 <= 300 and 0 <= x0 < x1 <= 400
            assert y0 <= float(c["cy"]) <= y1 and x0 <= float(c["cx"]) <= x1
            assert mask[y0:y1, x0:x1].sum() >= int(c["area"])
    assert rows["mg-empty"]["note"] == "no tissue found: empty mask" and rows["mg-empty"]["mask_area"] == "0"
    assert rows["mg-empty"]["tiles"] == "0" and rows["mg-a"]["note"] == ""


def test_whole_never_keeps_the_roi_behaviour(trained_dir: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    assert main(["segment", "--model", str(trained_dir), "--data", str(folder), "--out", str(out),
                 "--whole", "never", *FLAGS]) == 0
    rows = _csv(out / "results.csv")
    assert {r["whole"] for r in rows} == {"0"} and _csv(out / "lesions.csv") == []
    model = LoadedModel.load(trained_dir)
    ds = FolderDataset.open(folder)
    expected = run(model, [ds.load(i)[0] for i in range(len(ds))], Options(
        threshold=parse_rule("p90"), gate=False, tiling=Tiling(mode=Whole.NEVER)))
    for s, item in zip(ds.samples, expected.items, strict=True):
        assert item.whole is None
        np.testing.assert_array_equal(read_mask(out / "masks" / f"{s.id}.png"), item.mask)


def test_a_model_without_a_scale_is_a_one_line_error_naming_the_fix(trained_dir: Path, folder: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    unscaled = tmp_path / "unscaled"
    shutil.copytree(trained_dir, unscaled)
    meta = json.loads((unscaled / "metadata.json").read_text())
    assert meta.pop("scale") == {"source_pixels_per_model_pixel": 1.0}  # synthetic ROIs record scale 1
    (unscaled / "metadata.json").write_text(json.dumps(meta))
    assert "scale" not in LoadedModel.load(unscaled).meta
    assert main(["segment", "--model", str(unscaled), "--data", str(folder), "--out", str(tmp_path / "seg"),
                 *FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no recorded scale" in err and "--scale" in err
    assert not (tmp_path / "seg").exists()  # nothing half-written
    assert main(["segment", "--model", str(unscaled), "--data", str(folder), "--out", str(tmp_path / "s2"),
                 "--overlap", "0.95", *FLAGS]) == 2
    assert "overlap must be within 0..0.9" in capsys.readouterr().err


def test_a_dicom_mammogram_gets_a_valid_seg_on_its_own_grid(trained_dir: Path, tmp_path: Path) -> None:
    """One 16-bit MONOCHROME1 MG instance, RLE Lossless: segmented whole at scale 1, its SEG
    passes dciodvfy and holds the core's mask; the row and lesions.csv say how."""
    values = mammogram(seed=1)
    src = write_mammogram(tmp_path / "mg" / "left.dcm", values)
    out = tmp_path / "seg"
    assert main(["segment", "--model", str(trained_dir), "--data", str(src), "--out", str(out), "--scale", "1",
                 *FLAGS]) == 0
    (row,) = _csv(out / "results.csv")
    assert row["error"] == "" and row["modality"] == "MG" and (row["rows"], row["columns"]) == ("300", "400")
    assert row["whole_slices"] == "1" and int(row["tiles"]) > 0
    series = dicom.load_series([src])
    expected = run(LoadedModel.load(trained_dir), list(series.windowed()),
                   Options(threshold=parse_rule("p90"), gate=False, tiling=Tiling(scale=1.0))).items[0]
    assert expected.whole is not None and expected.mask is not None
    seg_path = out / row["output"]
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=[series.datasets[0].SOPInstanceUID],
                                            ignore_spatial_locations=True)[0, ..., 0] > 0
    assert got.shape == (300, 400)
    np.testing.assert_array_equal(got, expected.mask)
    assert int(row["mask_voxels"]) == int(expected.mask.sum())
    lesions = _csv(out / row["lesion_file"])
    assert int(row["lesions"]) == len(lesions) == len(expected.whole.lesions)
    assert {c["slice"] for c in lesions} == {"0"} and sum(int(c["area"]) for c in lesions) == int(got.sum())


def test_a_scale_in_millimetres_reads_the_instances_pixel_spacing(trained_dir: Path, tmp_path: Path) -> None:
    """A model trained at 0.2 mm per model pixel on an MG instance of 0.1 mm pixels: two
    image pixels per model pixel, from the instance's own ImagerPixelSpacing."""
    in_mm = tmp_path / "mm-model"
    shutil.copytree(trained_dir, in_mm)
    meta = json.loads((in_mm / "metadata.json").read_text())
    meta["scale"] = {"mm_per_model_pixel": 0.2}
    (in_mm / "metadata.json").write_text(json.dumps(meta))
    src = write_mammogram(tmp_path / "mg" / "left.dcm", mammogram(seed=1))
    rows = {}
    for name, model, extra in (("mm", in_mm, []), ("px2", trained_dir, ["--scale", "2"])):
        out = tmp_path / name
        assert main(["segment", "--model", str(model), "--data", str(src), "--out", str(out), "--whole", "always",
                     *extra, *FLAGS]) == 0
        (rows[name],) = _csv(out / "results.csv")
    assert rows["mm"]["error"] == "" and rows["mm"]["tiles"] == rows["px2"]["tiles"]
    assert rows["mm"]["mask_voxels"] == rows["px2"]["mask_voxels"]


def test_the_tiling_and_the_pixel_limit_travel_in_a_jobs_record() -> None:
    opts = Options(threshold=parse_rule("p90"), tiling=tiling_of("always", 2.0, 0.25))
    rec = json.loads(json.dumps(pipeline_record(opts, max_pixels=100, max_whole_pixels=400)))
    back, limit = read_pipeline(rec)
    assert back == opts and limit == 400
    assert read_pipeline(pipeline_record(Options(tiling=Tiling(mode=Whole.NEVER)), max_pixels=100,
                                         max_whole_pixels=400))[1] == 100
    assert read_pipeline(Options().to_record()) == (Options(), 16777216)  # a job planned before either
    assert "tiling" not in Options().to_record()  # a recipe records none, and reads none
    with pytest.raises(InvalidInputError, match="unknown options tiling"):
        Options.from_record({"tiling": {}})
    with pytest.raises(InvalidInputError, match="whole-image mode"):
        tiling_of("sometimes")
    assert tuple(w.value for w in Whole) == WHOLE_MODES


def test_whole_images_are_decoded_up_to_their_own_limit(trained_dir: Path, folder: Path, tmp_path: Path) -> None:
    from camseg.bulk.segment import segment_folder

    opts = Options(threshold=parse_rule("p90"), gate=False, tiling=Tiling(scale=1.0))
    with pytest.raises(InvalidInputError, match="exceed the limit of 1000"):
        segment_folder(trained_dir, folder, tmp_path / "a", opts, max_pixels=1000, max_whole_pixels=1000)
    summary = segment_folder(trained_dir, folder, tmp_path / "b", opts, max_pixels=1000, max_whole_pixels=120_000)
    assert summary["whole_images"] == 3
    with pytest.raises(InvalidInputError, match="exceed the limit of 1000"):  # never whole: the ROI limit
        segment_folder(trained_dir, folder, tmp_path / "c", Options(tiling=Tiling(mode=Whole.NEVER)),
                       max_pixels=1000, max_whole_pixels=120_000)
    src = write_mammogram(tmp_path / "mg" / "a.dcm", mammogram())
    with pytest.raises(InvalidInputError, match="exceed the limit of 1000"):
        dicom.load_series([src], max_pixels=1000)

