"""camseg.data.synth: determinism, mask truth, the 1/f^beta background, the written set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from camseg.core.errors import InvalidInputError
from camseg.data.folder import CLASSES, FolderDataset
from camseg.data.synth import SynthConfig, generate, power_law_noise, split_ids, synthesize


# ------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_arrays() -> None:
    cfg = SynthConfig(n=12, size=32, seed=5)
    a_img, a_mask, a_lab, a_info = generate(cfg)
    b_img, b_mask, b_lab, b_info = generate(cfg)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert a_info == b_info


def test_different_seed_gives_different_arrays() -> None:
    a_img, a_mask, _, _ = generate(SynthConfig(n=12, size=32, seed=5))
    b_img, b_mask, _, _ = generate(SynthConfig(n=12, size=32, seed=6))
    assert np.abs(a_img - b_img).mean() > 0.01
    assert not np.array_equal(a_mask, b_mask)


def test_shapes_ranges_and_label_balance() -> None:
    images, masks, labels, infos = generate(SynthConfig(n=20, size=48, seed=0, tumor_fraction=0.25))
    assert images.shape == (20, 48, 48) and images.dtype == np.float32
    assert masks.shape == (20, 48, 48) and masks.dtype == np.bool_
    assert labels.shape == (20,) and int(labels.sum()) == 5
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert len(infos) == 20


# ------------------------------------------------------------------ mask truth
def test_tumors_have_masks_and_normals_none() -> None:
    _, masks, labels, infos = generate(SynthConfig(n=40, size=64, seed=2))
    area = masks.reshape(len(masks), -1).sum(1)
    assert labels.sum() == 20
    assert (area[labels == 1] > 0).all()
    assert (area[labels == 0] == 0).all()
    assert all(bool(info) == bool(lab) for info, lab in zip(infos, labels, strict=True))


def test_mask_is_centred_on_the_recorded_mass() -> None:
    _, masks, labels, infos = generate(SynthConfig(n=40, size=64, seed=2))
    for i in np.flatnonzero(labels):
        cy, cx = ndimage.center_of_mass(masks[i])
        # a lobulated boundary moves the centroid a little, never by a radius
        assert abs(cy - infos[i]["centre_y"]) < 0.5 * infos[i]["radius"] + 1
        assert abs(cx - infos[i]["centre_x"]) < 0.5 * infos[i]["radius"] + 1
        assert (
            np.pi * (0.6 * infos[i]["radius"]) ** 2
            < masks[i].sum()
            < np.pi * (1.6 * infos[i]["radius"]) ** 2
        )


def test_mask_marks_the_mass() -> None:
    """Inside the mask is brighter than a ring just outside it (the mass adds intensity)."""
    images, masks, labels, infos = generate(SynthConfig(n=120, size=64, seed=1))
    diffs, contrasts = [], []
    for i in np.flatnonzero(labels):
        m = masks[i]
        ring = ndimage.binary_dilation(m, iterations=5) & ~ndimage.binary_dilation(m, iterations=2)
        assert ring.sum() > 0
        diffs.append(images[i][m].mean() - images[i][ring].mean())
        contrasts.append(infos[i]["contrast"])
    d = np.array(diffs)
    assert d.mean() > 0.3 * np.mean(contrasts)  # observed ~0.58 of the mean contrast
    assert (d > 0).mean() > 0.9


# ------------------------------------------------------------------ the background
@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_power_law_noise_spectrum_slope(beta: float) -> None:
    size = 128
    fields = power_law_noise(np.random.default_rng(0), 16, size, beta)
    power = (np.abs(np.fft.fft2(fields)) ** 2).mean(0).ravel()
    radial = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]).ravel()
    edges = np.linspace(0.03, 0.4, 30)
    which = np.digitize(radial, edges)
    f = [radial[which == b].mean() for b in range(1, len(edges))]
    p = [power[which == b].mean() for b in range(1, len(edges))]
    slope = np.polyfit(np.log(f), np.log(p), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.3)


def test_power_law_noise_zero_mean_unit_std() -> None:
    fields = power_law_noise(np.random.default_rng(1), 5, 64, 3.0, chunk=2)  # crosses chunks
    assert fields.shape == (5, 64, 64) and fields.dtype == np.float32
    np.testing.assert_allclose(fields.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(fields.std(axis=(1, 2)), 1.0, atol=1e-4)
    assert not np.allclose(fields[0], fields[1])


# ------------------------------------------------------------------ splits
def test_split_ids_stratified_with_fractions() -> None:
    labels = np.array([0] * 60 + [1] * 40, dtype=np.int64)
    splits = np.array(split_ids(labels, (0.7, 0.15, 0.15), seed=0))
    assert set(splits) == {"train", "val", "test"}
    for cls, n in ((0, 60), (1, 40)):
        s = splits[labels == cls]
        assert (s == "train").sum() == round(n * 0.7)
        assert (s == "val").sum() == round(n * 0.15)
        assert (s == "test").sum() == n - round(n * 0.7) - round(n * 0.15)


def test_split_ids_deterministic_by_seed() -> None:
    labels = np.array([0, 1] * 30, dtype=np.int64)
    assert split_ids(labels, (0.6, 0.2, 0.2), 4) == split_ids(labels, (0.6, 0.2, 0.2), 4)
    assert split_ids(labels, (0.6, 0.2, 0.2), 4) != split_ids(labels, (0.6, 0.2, 0.2), 5)


# ------------------------------------------------------------------ synthesize
@pytest.mark.parametrize("bits", [8, 16])
def test_synthesize_round_trips_pixel_exactly(tmp_path: Path, bits: int) -> None:
    cfg = SynthConfig(n=10, size=32, seed=9, bit_depth=bits)
    out = synthesize(tmp_path / "set", cfg)
    assert out == tmp_path / "set"
    assert (out / "images").is_dir() and (out / "masks").is_dir()
    assert (out / "labels.csv").is_file() and (out / "dataset.json").is_file()

    images, masks, labels, _ = generate(cfg)
    splits = split_ids(labels, cfg.split, cfg.seed)
    scale, dtype = (255, np.uint8) if bits == 8 else (65535, np.uint16)
    ds = FolderDataset.open(out)
    assert len(ds) == cfg.n and ds.classes == CLASSES
    assert len(list((out / "masks").iterdir())) == int(labels.sum())
    for i, s in enumerate(ds.samples):
        assert s.label == labels[i] and s.split == splits[i]
        image, mask = ds.load(i)
        assert image.shape == (32, 32)
        stored = np.round(image.astype(np.float64) * scale).astype(dtype)
        np.testing.assert_array_equal(stored, np.round(images[i] * scale).astype(dtype))
        assert np.abs(image - images[i]).max() <= 0.5 / scale + 1e-6
        if labels[i]:
            assert mask is not None
            np.testing.assert_array_equal(mask, masks[i])
        else:
            assert mask is None

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == list(CLASSES)
    assert meta["parameters"]["n"] == 10 and meta["parameters"]["bit_depth"] == bits
    tumor_ids = {s.id for s in ds.samples if s.label == 1}
    assert set(meta["masses"]) == tumor_ids


def test_synthesize_16_bit_keeps_more_levels(tmp_path: Path) -> None:
    cfg = SynthConfig(n=4, size=32, seed=1, bit_depth=16)
    ds = FolderDataset.open(synthesize(tmp_path / "s16", cfg))
    image, _ = ds.load(0)
    assert len(np.unique(image)) > 256


def test_synthesize_refuses_non_empty_dir(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(InvalidInputError, match="not empty"):
        synthesize(out, SynthConfig(n=4, size=32))
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temp dir left

    # --overwrite replaces only a folder camseg wrote: this one it did not
    with pytest.raises(InvalidInputError, match="is not a camseg output"):
        synthesize(out, SynthConfig(n=4, size=32), overwrite=True)
    assert (out / "keep.txt").read_text() == "precious"

    (out / "keep.txt").unlink()
    synthesize(out, SynthConfig(n=4, size=32))
    synthesize(out, SynthConfig(n=6, size=32), overwrite=True)
    assert len(FolderDataset.open(out)) == 6


def test_synthesize_into_existing_empty_dir(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    synthesize(out, SynthConfig(n=4, size=32))
    assert len(FolderDataset.open(out)) == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 1}, "--n"),
        ({"n": 0}, "--n"),
        ({"size": 8}, "--size"),
        ({"size": 2048}, "--size"),
        ({"bit_depth": 12}, "--bit-depth"),
        ({"tumor_fraction": 1.0}, "tumor_fraction"),
        ({"tumor_fraction": 0.0}, "tumor_fraction"),
    ],
)
def test_validation_errors(tmp_path: Path, kwargs: dict[str, float], match: str) -> None:
    cfg = SynthConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=match):
        generate(cfg)
    with pytest.raises(InvalidInputError, match=match):
        synthesize(tmp_path / "bad", cfg)
    assert not (tmp_path / "bad").exists()
