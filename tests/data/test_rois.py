"""camseg.data.rois: ROIs for training cut from small synthetic whole images, NRRD volumes
and a DICOM series with its SEG, all written in the test."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import nrrd
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from camseg.app.cli import main
from camseg.core.errors import InvalidInputError
from camseg.core.scale import Scale
from camseg.data.folder import FolderDataset, Record, write_dataset
from camseg.data.rois import DEFAULT_OFFSET, RoiConfig, dicom_cases, extract_rois, folder_cases, volume_cases
from camseg.data.synth import SynthConfig
from camseg.heat.lesions import label_components
from camseg.heat.tissue import tissue_mask
from tests.dicomdata import write_series

H, W = 300, 400
BACKGROUND = 60  # columns 0..59 are dark background, the rest tissue
DISKS = (((80, 150), 15), ((220, 320), 20))  # (centre, radius) of the two lesions


def whole_image(rng: np.random.Generator, lesions: bool) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.bool_]]:
    """A 300 x 400 16-bit image: a dark strip on the left, textured tissue, two bright disks."""
    image = np.zeros((H, W), dtype=np.uint16)
    image[:, BACKGROUND:] = (rng.uniform(0.35, 0.65, (H, W - BACKGROUND)) * 65535).astype(np.uint16)
    yy, xx = np.mgrid[:H, :W]
    mask = np.zeros((H, W), dtype=bool)
    if lesions:
        for (cy, cx), r in DISKS:
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image[mask] = 60000
    return image, mask


def make_source(root: Path, n: int = 8, splits: list[str] | None = None, seed: int = 0) -> Path:
    """``n`` whole images, every third without lesions (and without a mask file)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        image, mask = whole_image(rng, lesions=i % 3 != 2)
        records.append(Record(f"img{i}", int(mask.any()), splits[i] if splits else None, image,
                              mask if mask.any() else None))
    return write_dataset(root, records, {"classes": ["normal", "tumor"]})


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def meta_of(out: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((out / "dataset.json").read_text())
    return meta


def inside(inner: tuple[int, ...] | list[int], outer: tuple[int, ...] | list[int]) -> bool:
    return inner[0] >= outer[0] and inner[1] >= outer[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("whole") / "src")


@pytest.fixture(scope="module")
def rois(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = RoiConfig(scale=Scale(2.0), size=32, per_lesion=3, seed=5)
    cases, provenance = folder_cases(source, cfg.scale)
    return extract_rois(cases, tmp_path_factory.mktemp("rois") / "rois", cfg, provenance=provenance)


def test_every_lesion_roi_holds_a_whole_lesion_off_centre(rois: Path, source: Path) -> None:
    meta = meta_of(rois)
    truth = FolderDataset.open(source).load(0)[1]
    assert truth is not None
    labels, n = label_components(truth)
    assert n == 2
    boxes = [(int(np.flatnonzero(np.any(labels == k, 1))[0]), int(np.flatnonzero(np.any(labels == k, 0))[0]),
              int(np.flatnonzero(np.any(labels == k, 1))[-1]) + 1, int(np.flatnonzero(np.any(labels == k, 0))[-1]) + 1)
             for k in (1, 2)]
    lesion_rois = {k: v for k, v in meta["rois"].items() if v["kind"] == "lesion"}
    # 2 lesions x 3 ROIs on each of the 6 lesion images
    assert len(lesion_rois) == 6 * 2 * 3
    offsets = []
    for rid, entry in lesion_rois.items():
        y0, x0, y1, x1 = entry["box"]
        assert (y1 - y0, x1 - x0) == (64, 64)  # 2 source pixels per model pixel, 32 model pixels
        assert min(y0, x0) >= 0 and y1 <= H and x1 <= W  # shifted inside the image
        assert any(inside(b, entry["box"]) for b in boxes), (rid, entry["box"])
        mask = np.asarray(Image.open(rois / "masks" / f"{rid}.png")) != 0
        assert mask.shape == (32, 32)
        covered = truth[y0:y1, x0:x1].sum() / 4  # truth pixels in the box, in model pixels
        assert abs(int(mask.sum()) - covered) <= 0.15 * covered + 4
        offsets.extend(entry["offset"])
    offsets_arr = np.abs(np.array(offsets))
    assert offsets_arr.max() <= DEFAULT_OFFSET + 0.02
    assert offsets_arr.std() > 0.03 and (offsets_arr > 0.05).mean() > 0.3  # not centred


def test_normal_rois_keep_clear_of_lesions_and_sit_in_tissue(rois: Path) -> None:
    meta = meta_of(rois)
    _, truth = whole_image(np.random.default_rng(0), lesions=True)
    normals = [v for v in meta["rois"].values() if v["kind"] == "normal"]
    assert len(normals) == meta["normals_wanted"] == 36  # --normal-ratio 1: one per lesion ROI
    assert meta["normal_shortfall"] == 0
    margin = int(np.ceil(0.1 * 64))
    for entry in normals:
        y0, x0, y1, x1 = entry["box"]
        has_lesions = entry["case"] not in ("img2", "img5")
        if has_lesions:
            assert not truth[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin].any()
        tissue = (x1 - max(x0, BACKGROUND)) / (x1 - x0)
        assert tissue >= 0.7
    by_label: dict[str, int] = defaultdict(int)
    for r in rows(rois):
        by_label[r["label"]] += 1
        assert (rois / "masks" / f"{r['id']}.png").is_file() == (r["label"] == "tumor")
    assert by_label == {"tumor": 36, "normal": 36}


def test_rois_of_one_source_share_a_split_and_images_stay_16_bit(rois: Path) -> None:
    meta = meta_of(rois)
    split_of_source: dict[str, set[str]] = defaultdict(set)
    for r in rows(rois):
        split_of_source[meta["rois"][r["id"]]["source"]].add(r["split"])
    assert all(len(s) == 1 for s in split_of_source.values())
    assert {next(iter(s)) for s in split_of_source.values()} >= {"train", "val"}
    recorded = {c["id"]: c["split"] for c in meta["cases"]}
    assert {k: next(iter(v)) for k, v in split_of_source.items()} == recorded
    first = rows(rois)[0]["id"]
    with Image.open(rois / "images" / f"{first}.png") as img:
        assert img.mode.startswith("I;16") and img.size == (32, 32)


def test_dataset_json_records_scale_size_offset_source_and_boxes(rois: Path, source: Path) -> None:
    meta = meta_of(rois)
    assert meta["scale"] == {"source_pixels_per_model_pixel": 2.0}
    assert meta["roi_size"] == 32 and meta["offset"] == DEFAULT_OFFSET == SynthConfig().centre_jitter
    assert meta["source"] == str(source) and meta["split_by"] == "image"
    assert set(meta["rois"]) == {r["id"] for r in rows(rois)}
    assert all(len(v["box"]) == 4 and v["source"] for v in meta["rois"].values())


def test_same_seed_same_rois(source: Path, rois: Path, tmp_path: Path) -> None:
    cfg = RoiConfig(scale=Scale(2.0), size=32, per_lesion=3, seed=5)
    again = extract_rois(folder_cases(source, cfg.scale)[0], tmp_path / "again", cfg)
    assert meta_of(again)["rois"] == meta_of(rois)["rois"]
    assert rows(again) == rows(rois)


def test_existing_split_carries_over(tmp_path: Path) -> None:
    splits = ["train", "train", "train", "val", "val", "test", "test", "train"]
    src = make_source(tmp_path / "src", splits=splits)
    cfg = RoiConfig(scale=Scale(3.0), size=16, per_lesion=1)
    out = extract_rois(folder_cases(src, cfg.scale)[0], tmp_path / "rois", cfg)
    meta = meta_of(out)
    for r in rows(out):
        assert r["split"] == splits[int(meta["rois"][r["id"]]["source"].removeprefix("img"))]


def test_a_lesion_at_the_border_is_kept_inside_and_a_small_image_is_padded(tmp_path: Path) -> None:
    image = np.full((50, 60), 30000, dtype=np.uint16)
    mask = np.zeros((50, 60), dtype=bool)
    mask[0:6, 52:60] = True  # in the top-right corner
    src = write_dataset(tmp_path / "src", [Record("corner", 1, "train", image, mask)], {})
    cfg = RoiConfig(scale=Scale(1.0), size=32, per_lesion=4, normal_ratio=0.0)
    meta = meta_of(extract_rois(folder_cases(src, cfg.scale)[0], tmp_path / "a", cfg))
    for entry in meta["rois"].values():
        assert entry["box"][0] == 0 and entry["box"][3] == 60  # pushed into the corner, lesion inside
    cfg = RoiConfig(scale=Scale(2.0), size=32, per_lesion=2, normal_ratio=1.0)  # 64 px: larger than the image
    out = extract_rois(folder_cases(src, cfg.scale)[0], tmp_path / "b", cfg)
    meta = meta_of(out)
    kinds = [v["kind"] for v in meta["rois"].values()]
    assert kinds == ["lesion", "lesion"] and meta["normal_shortfall"] == 2  # no room for a normal ROI
    for rid, entry in meta["rois"].items():
        y0, x0, y1, x1 = entry["box"]
        assert y0 <= 0 and y1 >= 6 and x0 <= 52 and x1 >= 60
        pixels = np.asarray(Image.open(out / "images" / f"{rid}.png"))
        assert (pixels == 0).any()  # zero padding outside the image


# ---------------------------------------------------------------------------- volumes, DICOM
def test_nrrd_volumes_at_a_scale_in_mm(tmp_path: Path) -> None:
    pairs = []
    for c in range(3):
        rng = np.random.default_rng(c)
        image = rng.integers(100, 1000, size=(60, 50, 4)).astype(np.int16)  # (i, j, k): 60 columns, 50 rows
        label = np.zeros(image.shape, dtype=np.uint8)
        label[20:26, 15:22, 1] = 1
        label[40:44, 30:35, 2] = 2
        header = {"encoding": "gzip", "space": "left-posterior-superior",
                  "space directions": np.diag([0.5, 0.5, 3.0])}
        nrrd.write(str(tmp_path / f"case{c}_image.nrrd"), image, header)
        nrrd.write(str(tmp_path / f"case{c}_label.nrrd"), label, header)
        pairs.append((tmp_path / f"case{c}_image.nrrd", tmp_path / f"case{c}_label.nrrd"))
    cases, provenance = volume_cases(pairs)
    cfg = RoiConfig(scale=Scale(mm_per_model_pixel=1.0), size=16, per_lesion=2)
    out = extract_rois(cases, tmp_path / "rois", cfg, provenance=provenance)
    meta = meta_of(out)
    assert meta["scale"] == {"mm_per_model_pixel": 1.0} and meta["split_by"] == "volume"
    assert [c["id"] for c in meta["cases"]] == ["case0", "case1", "case2"]
    lesions = {k: v for k, v in meta["rois"].items() if v["kind"] == "lesion"}
    assert len(lesions) == 3 * 2 * 2
    for rid, entry in lesions.items():
        y0, x0, y1, x1 = entry["box"]
        assert (y1 - y0, x1 - x0) == (32, 32)  # 1 mm per model pixel over 0.5 mm pixels
        assert entry["source"] in (f"{entry['case']}-s001", f"{entry['case']}-s002")
        assert (np.asarray(Image.open(out / "masks" / f"{rid}.png")) != 0).any()
    split_of_case: dict[str, set[str]] = defaultdict(set)
    for r in rows(out):
        split_of_case[meta["rois"][r["id"]]["case"]].add(r["split"])
    assert all(len(s) == 1 for s in split_of_case.values())


def test_dicom_series_with_its_seg(tmp_path: Path) -> None:
    from camseg.io import dicom

    volume = np.random.default_rng(0).integers(1000, 2000, size=(3, 40, 48))
    mask = np.zeros(volume.shape, dtype=bool)
    mask[1, 10:16, 20:27] = True
    write_series(tmp_path / "ct", volume, spacing=(0.5, 0.5, 2.0))
    series = dicom.load_series(sorted((tmp_path / "ct").iterdir()))
    seg_path = tmp_path / "seg.dcm"
    seg_path.write_bytes(dicom.to_bytes(dicom.segmentation(
        mask, series, dicom.Algorithm(model="m", model_version="1", recipe="r"))))
    cases, provenance = dicom_cases([(tmp_path / "ct", seg_path)])
    cfg = RoiConfig(scale=Scale(mm_per_model_pixel=1.0), size=16, per_lesion=2)
    out = extract_rois(cases, tmp_path / "rois", cfg, provenance=provenance)
    meta = meta_of(out)
    lesions = {k: v for k, v in meta["rois"].items() if v["kind"] == "lesion"}
    assert len(lesions) == 2 and {v["source"] for v in lesions.values()} == {"series001-s001"}
    for rid, entry in lesions.items():
        assert inside((10, 20, 16, 27), entry["box"])
        assert (np.asarray(Image.open(out / "masks" / f"{rid}.png")) != 0).any()
    assert len({r["split"] for r in rows(out)}) == 1


# ---------------------------------------------------------------------------- the model's scale
def test_a_model_trained_on_rois_records_their_scale(tmp_path: Path) -> None:
    from camseg.models.modelconfig import from_metadata, model_scale
    from camseg.models.modeldir import read_metadata
    from camseg.models.training import TrainConfig, train_from_folder

    splits = ["train", "train", "train", "val", "val", "test", "test", "train"]
    src = make_source(tmp_path / "src", splits=splits)
    cfg = RoiConfig(scale=Scale(4.0), size=16, per_lesion=1)
    data = extract_rois(folder_cases(src, cfg.scale)[0], tmp_path / "rois", cfg)
    train_from_folder(data, "densenet", tmp_path / "m", TrainConfig(epochs=1, batch_size=8), width=8)
    meta = read_metadata(tmp_path / "m")
    assert meta["scale"] == {"source_pixels_per_model_pixel": 4.0}
    assert model_scale(meta) == Scale(source_pixels_per_model_pixel=4.0)
    config_scale = from_metadata(meta).scale
    assert config_scale is not None and config_scale.to_scale() == Scale(4.0)
    # trained at twice the ROI size, one model pixel spans half as much
    train_from_folder(data, "densenet", tmp_path / "m32", TrainConfig(epochs=1, batch_size=8), width=8,
                      input_size=32)
    assert read_metadata(tmp_path / "m32")["scale"] == {"source_pixels_per_model_pixel": 2.0}


# ---------------------------------------------------------------------------- errors
def test_errors_are_one_line(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_masks = write_dataset(tmp_path / "plain", [Record("a", 0, None, np.zeros((40, 40), np.uint8), None)], {})
    cases = [
        (["--source", str(no_masks), "--scale", "2"], "no masks"),
        (["--source", str(source), "--mm", "0.5"], "--mm needs the pixel spacing"),
        (["--source", str(source), "--scale", "0"], "must be a positive number"),
        (["--source", str(source), "--scale", "nan"], "must be a positive number"),
        (["--source", str(source), "--scale", "2", "--offset", "0.7"], "--offset must be within"),
        (["--source", str(source), "--scale", "0.001"], "less than one pixel"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["--no-progress", "data", "rois", "--out", str(tmp_path / "out"), *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("camseg: error: ") and message in err and "\n" not in err, (args, err)
        assert not (tmp_path / "out").exists()


def test_a_source_whose_masks_are_empty_is_refused(tmp_path: Path) -> None:
    empty = np.zeros((40, 40), dtype=bool)
    src = write_dataset(tmp_path / "src", [Record("a", 0, None, np.zeros((40, 40), np.uint8), empty)], {})
    with pytest.raises(InvalidInputError, match="no lesion in any truth mask"):
        extract_rois(folder_cases(src, Scale(1.0))[0], tmp_path / "out", RoiConfig(scale=Scale(1.0), size=16))


def test_the_command_writes_a_data_set(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["--no-progress", "data", "rois", "--source", str(source), "--out", str(out), "--scale", "3",
                 "--size", "16", "--per-lesion", "1", "--normal-ratio", "0.5"]) == 0
    assert "ROIs (12 tumor)" in capsys.readouterr().out
    assert meta_of(out)["scale"] == {"source_pixels_per_model_pixel": 3.0}
    assert sum(r["label"] == "normal" for r in rows(out)) == 6


# ---------------------------------------------------------------------------- tissue
def test_tissue_mask_finds_the_dark_background_and_calls_a_bright_image_all_tissue() -> None:
    image, _ = whole_image(np.random.default_rng(1), lesions=True)
    tissue = tissue_mask((image / 65535).astype(np.float32), factor=8)
    assert tissue.shape == (H, W)
    assert not tissue[:, : BACKGROUND - 8].any() and tissue[:, BACKGROUND + 8:].all()
    bright = np.random.default_rng(2).uniform(0.3, 0.9, (37, 53)).astype(np.float32)
    assert tissue_mask(bright, factor=4).all()
    rgb = np.zeros((20, 30, 3), np.float32)
    rgb[:, 10:] = 0.5
    assert tissue_mask(rgb, factor=3)[:, 12:].all() and not tissue_mask(rgb, factor=3)[:, :9].any()
