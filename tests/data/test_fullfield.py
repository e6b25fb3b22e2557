"""camseg.data.fullfield: exact masks inside the breast, the ROI generator's masses and
texture statistics, determinism, the written set (PNG and DICOM MG) and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import RLELossless

from camseg.app.cli import main
from camseg.core.errors import InvalidInputError
from camseg.core.progress import Progress
from camseg.data.folder import FolderDataset, read_mask
from camseg.data.fullfield import Breast, FullFieldConfig, local_std, make_image, synthesize_fullfield, tiled_noise
from camseg.data.synth import SynthConfig, draw_mass, generate
from camseg.io.dicom import frames, read_dataset
from camseg.io.inputs import decode_image, decode_pixels

SMALL = FullFieldConfig(n=6, height=256, width=320, roi_size=32, seed=3)


def _breast(cfg: FullFieldConfig, index: int) -> Breast:
    return Breast.draw(np.random.default_rng([cfg.seed, index]), cfg.height, cfg.width)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ff") / "set"
    return synthesize_fullfield(out, SMALL, fmt="both")


# ------------------------------------------------------------------ masses and masks
def test_masks_are_the_masses_inside_the_tissue(written: Path) -> None:
    ds = FolderDataset.open(written)
    meta = json.loads((written / "dataset.json").read_text())
    assert len(ds) == SMALL.n and meta["roi_size"] == 32 and meta["pixel_spacing_mm"] == 0.2
    assert {s.label for s in ds.samples} == {0, 1}
    lo, hi = SMALL.radius_range
    for i, sample in enumerate(ds.samples):
        image, mask = ds.load(i)
        assert image.shape == (SMALL.height, SMALL.width)
        masses = meta["masses"].get(sample.id, [])
        if sample.label == 0:
            assert mask is None and not masses
            continue
        assert mask is not None and 1 <= len(masses) <= SMALL.max_masses
        breast = _breast(SMALL, i)
        assert meta["breasts"][sample.id]["side"] == breast.side
        ys, xs = np.nonzero(mask)
        # every mask pixel lies in the tissue inside the skin-line band, where the weight is 1
        assert breast.radius(ys, xs).max() <= 1.0 - breast.band
        assert breast.weight(ys, xs).min() == 1.0
        union = np.zeros_like(mask)
        for m in masses:
            assert lo * SMALL.roi_size <= m["radius"] <= hi * SMALL.roi_size
            y0, x0, y1, x1 = m["box"]
            assert 0 < y0 < y1 < SMALL.height and 0 < x0 < x1 < SMALL.width
            assert mask[y0:y1, x0:x1].sum() >= m["area"]
            assert not union[y0:y1, x0:x1].any()  # masses do not touch
            union[y0:y1, x0:x1] |= mask[y0:y1, x0:x1]
            # the box is tight: the mass's pixels touch each side
            box = mask[y0:y1, x0:x1]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            assert abs(m["centre_y"] - (y0 + y1 - 1) / 2) < 0.8 * m["radius"] + 1
        assert np.array_equal(union, mask)


def test_the_image_holds_each_mass_at_its_contrast() -> None:
    # no texture nor noise: the tissue is flat, so the masses stand out by their contrast exactly
    cfg = FullFieldConfig(n=2, height=256, width=256, roi_size=32, seed=11, texture_std=0.0, density_std=0.0,
                          quantum_noise=0.0)
    image, mask, info = make_image(cfg, 0, tumor=True)
    breast = _breast(cfg, 0)
    ys, xs = np.nonzero(breast.radius(np.arange(256)[:, None], np.arange(256)[None, :]) <= 1.0 - breast.band)
    base = float(np.median(image[ys, xs]))
    assert info["masses"]
    for m in info["masses"]:
        y0, x0, y1, x1 = m["box"]
        peak = float(image[y0:y1, x0:x1].max()) - base
        assert 0.5 * m["contrast"] < peak <= m["contrast"] + 1e-4  # the core: a soft edge times a dome
        assert image[y0:y1, x0:x1][mask[y0:y1, x0:x1]].min() - base > 0.3 * m["contrast"]
    _, empty, info0 = make_image(cfg, 1, tumor=False)
    assert not empty.any() and info0["masses"] == []


def test_masses_follow_the_roi_generator_distribution() -> None:
    cfg = FullFieldConfig(height=512, width=512, roi_size=64, seed=1)
    roi = cfg.roi_config()
    assert (roi.size, roi.radius_range, roi.contrast_range, roi.beta, roi.texture_std) == (
        64, SynthConfig().radius_range, SynthConfig().contrast_range, SynthConfig().beta, SynthConfig().texture_std)
    masses = [m for i in range(6) for m in make_image(cfg, i, tumor=True)[2]["masses"]]
    assert len(masses) >= 6
    for m in masses:
        assert 0.09 * 64 <= m["radius"] <= 0.22 * 64
        assert 0.07 <= m["contrast"] <= 0.32
        assert 0.6 <= m["edge_width"] <= 3.0
    # the same draws as the ROI generator's, rendered anywhere: a shifted centre on a
    # shifted grid gives the same pixels
    mass = draw_mass(np.random.default_rng(0), roi)
    a_profile, a_mask = mass.render((30.3, 31.7), (0, 64), (0, 64))
    b_profile, b_mask = mass.render((1030.3, 2031.7), (1000, 1064), (2000, 2064))
    np.testing.assert_allclose(a_profile, b_profile, atol=1e-5)
    assert np.array_equal(a_mask, b_mask) and a_mask.any()


def test_roi_generator_output_unchanged() -> None:
    """generate() draws its masses through draw_mass in the order it always did: the
    radii, contrasts and mask areas of seed 0 are those made before draw_mass existed."""
    _, masks, _, infos = generate(SynthConfig(n=6, size=64, seed=0))
    got = [(round(i["radius"], 6), round(i["contrast"], 6), i["spiculated"], int(m.sum()))
           for i, m in zip(infos, masks, strict=True) if i]
    assert got == [(12.116931, 0.16292, 0.0, 462), (11.763975, 0.308449, 0.0, 435), (13.074478, 0.232719, 1.0, 539)]


# ------------------------------------------------------------------ texture
def test_tiled_texture_keeps_the_roi_local_statistics() -> None:
    field = tiled_noise(np.random.default_rng(0), 512, 512, 64, 3.0)
    shifted = local_std(field[32:, 32:], 64)  # windows across the tile seams
    assert 0.9 < float(np.mean(shifted)) < 1.05
    cfg = FullFieldConfig(n=2, height=512, width=512, roi_size=64, seed=2)
    stds = []
    for i in range(2):
        image, _, _ = make_image(cfg, i, tumor=False)
        breast = _breast(cfg, i)
        inside = breast.radius(np.arange(512)[:, None], np.arange(512)[None, :]) <= 1.0 - breast.band
        stds.append(local_std(image, 64, inside))
    rois, _, labels, _ = generate(SynthConfig(n=60, size=64, seed=0))
    roi_std = rois[labels == 0].reshape(-1, 64 * 64).std(1).mean()
    assert abs(np.concatenate(stds).mean() / roi_std - 1.0) < 0.1


def test_background_is_dark_and_the_breast_on_its_side() -> None:
    cfg = FullFieldConfig(n=2, height=256, width=256, roi_size=32, seed=5)
    for i in range(4):
        image, _, info = make_image(cfg, i, tumor=False)
        chest, far = (image[:, :8], image[:, -8:]) if info["breast"]["side"] == "L" else (image[:, -8:], image[:, :8])
        assert chest[120:136].mean() > 0.25 and far.mean() < 0.06


# ------------------------------------------------------------------ determinism, progress
def test_deterministic_from_the_seed(tmp_path: Path) -> None:
    cfg = FullFieldConfig(n=2, height=192, width=160, roi_size=32, seed=9, normal_fraction=0.0)
    a = make_image(cfg, 1, tumor=True)
    b = make_image(cfg, 1, tumor=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    c = make_image(FullFieldConfig(n=2, height=192, width=160, roi_size=32, seed=10), 1, tumor=True)
    assert np.abs(a[0] - c[0]).mean() > 0.01
    seen: list[Progress] = []
    one = synthesize_fullfield(tmp_path / "a", cfg, on_progress=seen.append)
    two = synthesize_fullfield(tmp_path / "b", cfg)
    assert [p.done for p in seen] == [0, 1, 2]
    for name in ("labels.csv", "images/mammo-0000.png", "masks/mammo-0001.png", "dataset.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes()


# ------------------------------------------------------------------ DICOM
def test_dicom_round_trip(written: Path) -> None:
    meta = json.loads((written / "dataset.json").read_text())
    for sid in ("mammo-0000", "mammo-0001"):
        png = decode_pixels(written / "images" / f"{sid}.png")
        ds = read_dataset(written / "dicom" / f"{sid}.dcm", sid)
        assert ds.file_meta.TransferSyntaxUID == RLELossless
        assert (ds.Modality, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored) == (
            "MG", "MONOCHROME1", 16, 16)
        assert [float(v) for v in ds.PixelSpacing] == [0.2, 0.2] == [float(v) for v in ds.ImagerPixelSpacing]
        assert ds.ImageLaterality == meta["breasts"][sid]["side"] and ds.PatientID == sid
        assert np.array_equal(ds.pixel_array, 65535 - png)  # stored high = dark
        assert np.array_equal(frames(ds, sid)[0], png.astype(np.float32))  # camseg mirrors MONOCHROME1 back
        np.testing.assert_allclose(decode_image(written / "dicom" / f"{sid}.dcm"),
                                   decode_image(written / "images" / f"{sid}.png"), atol=1e-6)
    uids = {read_dataset(p, p.name).StudyInstanceUID for p in (written / "dicom").iterdir()}
    assert len(uids) == SMALL.n


def test_dicom_only_set_opens_with_png_masks(tmp_path: Path) -> None:
    cfg = FullFieldConfig(n=2, height=160, width=128, roi_size=32, seed=1, normal_fraction=0.0)
    out = synthesize_fullfield(tmp_path / "d", cfg, fmt="dicom")
    assert sorted(p.name for p in (out / "images").iterdir()) == ["mammo-0000.dcm", "mammo-0001.dcm"]
    ds = FolderDataset.open(out)
    image, mask = ds.load(0)
    assert mask is not None and image.shape == mask.shape == (160, 128)
    assert np.array_equal(mask, read_mask(out / "masks" / "mammo-0000.png"))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(("cfg", "message"), [
    (FullFieldConfig(height=100, width=512), "height must be within 128..5120"),
    (FullFieldConfig(height=512, width=6000), "width must be within 128..5120"),
    (FullFieldConfig(height=5120, width=5120), "more pixels than 4096x5120"),
    (FullFieldConfig(height=128, width=512, roi_size=64), "too small for --roi-size 64"),
    (FullFieldConfig(roi_size=33), "--roi-size must be an even number"),
    (FullFieldConfig(normal_fraction=1.5), "--normal-fraction"),
    (FullFieldConfig(n=1), "--n must be at least 2"),
])
def test_bad_configs_are_refused(cfg: FullFieldConfig, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        cfg.validate()


@pytest.mark.parametrize(("size", "message"), [
    (("64", "512"), "height must be within 128..5120 pixels, got 64"),
    (("5120", "5120"), "5120x5120 is more pixels than 4096x5120"),
])
def test_cli_size_errors_are_one_line(size: tuple[str, str], message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--no-progress", "data", "fullfield", "--out", str(tmp_path / "x"), "--size", *size])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err
    assert not (tmp_path / "x").exists()


def test_cli_writes_a_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--no-progress", "data", "fullfield", "--out", str(tmp_path / "x"), "--n", "2", "--size", "128",
                 "128", "--roi-size", "32", "--dicom", "--normal-fraction", "0.5"])
    assert code == 0 and "2 full-field images (1 tumor)" in capsys.readouterr().out
    assert json.loads((tmp_path / "x" / "dataset.json").read_text())["format"] == "dicom"
