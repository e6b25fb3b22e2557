"""camseg.data.volumes on small synthetic NRRD and NIfTI volumes written in tmp_path."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import numpy.typing as npt
import pytest

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.data.folder import FolderDataset
from camseg.data.volumes import PERCENTILES, convert_volumes, display_flip, slice_pair
from camseg.io.volume import read_volume

LPS = "left-posterior-superior"


def write_nrrd(path: Path, arr: npt.NDArray, directions: list[list[float]] | None = None) -> Path:
    header: dict = {"encoding": "gzip"}
    if directions is not None:
        header.update({"space": LPS, "space directions": np.asarray(directions, dtype=float)})
    nrrd.write(str(path), arr, header)
    return path


def write_nifti(path: Path, arr: npt.NDArray, affine: npt.NDArray | None = None) -> Path:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


def make_pair(
    rng: np.random.Generator, shape: tuple[int, int, int], tumor_slices: list[int]
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8]]:
    """A random image and a label with a small blob on each of ``tumor_slices`` (axis 2)."""
    image = rng.integers(-100, 1000, size=shape).astype(np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    for k in tumor_slices:
        i, j = rng.integers(0, shape[0] - 1), rng.integers(0, shape[1] - 1)
        label[i : i + 2, j : j + 2, k] = 1
    return image, label


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --- read_volume ---------------------------------------------------------------------------


def test_read_nrrd_returns_array_spacing_and_lps_directions(tmp_path: Path, rng) -> None:
    arr = rng.integers(0, 500, size=(6, 5, 4)).astype(np.int16)
    dirs = [[0.5, 0, 0], [0, -0.7, 0], [0, 0, 2.0]]
    out, info = read_volume(write_nrrd(tmp_path / "v.nrrd", arr, dirs))
    np.testing.assert_array_equal(out, arr)
    assert info["format"] == "nrrd"
    assert info["shape"] == [6, 5, 4]
    assert info["spacing"] == pytest.approx([0.5, 0.7, 2.0])
    np.testing.assert_allclose(info["directions"], dirs)
    json.dumps(info)  # the summary is JSON-friendly


def test_read_nrrd_in_ras_space_is_converted_to_lps(tmp_path: Path) -> None:
    arr = np.zeros((3, 3, 3), dtype=np.uint8)
    header = {"space": "right-anterior-superior", "space directions": np.diag([1.0, 2.0, 3.0])}
    nrrd.write(str(tmp_path / "ras.nrrd"), arr, header)
    _, info = read_volume(tmp_path / "ras.nrrd")
    np.testing.assert_allclose(info["directions"], np.diag([-1.0, -2.0, 3.0]))


def test_read_nifti_keeps_integer_labels_and_converts_ras_to_lps(tmp_path: Path) -> None:
    arr = np.zeros((4, 5, 6), dtype=np.int16)
    arr[1, 2, 3] = 4
    out, info = read_volume(write_nifti(tmp_path / "v.nii.gz", arr, np.diag([0.5, 0.7, 2.0, 1.0])))
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, arr)
    assert info["format"] == "nifti"
    assert info["spacing"] == pytest.approx([0.5, 0.7, 2.0])
    np.testing.assert_allclose(info["directions"], np.diag([-0.5, -0.7, 2.0]))


def test_read_volume_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nothere\.nrrd"):
        read_volume(tmp_path / "nothere.nrrd")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.nrrd", b"this is not a volume\n"),
        ("garbage.nii.gz", b"this is not a volume\n"),
        ("garbage.nii", bytes(range(256)) * 2),
        # a valid header whose gzip payload is not gzip
        (
            "badgz.nrrd",
            b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nendian: little\n"
            b"encoding: gzip\n\nnot gzip at all",
        ),
        # a raw payload shorter than the header's sizes
        (
            "short.nrrd",
            b"NRRD0004\ntype: short\ndimension: 3\nsizes: 40 40 40\nendian: little\n"
            b"encoding: raw\n\nshort",
        ),
    ],
)
def test_read_volume_unreadable_file_is_one_line_invalid_input(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidInputError) as info:
        read_volume(path)
    assert name in info.value.message
    assert "\n" not in info.value.message


def test_read_volume_truncated_nifti(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "ok.nii", np.zeros((10, 10, 10), dtype=np.float32))
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(path.read_bytes()[:600]))
    with pytest.raises(InvalidInputError, match=r"cut\.nii\.gz"):
        read_volume(tmp_path / "cut.nii.gz")


def test_read_volume_unsupported_suffix_and_wrong_dimensions(tmp_path: Path) -> None:
    (tmp_path / "v.mha").write_bytes(b"ObjectType = Image\n")
    with pytest.raises(InvalidInputError, match=r"v\.mha: unsupported volume format"):
        read_volume(tmp_path / "v.mha")
    write_nrrd(tmp_path / "flat.nrrd", np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(
        InvalidInputError, match=r"flat\.nrrd: expected a 3-D volume, got shape \(4, 5\)"
    ):
        read_volume(tmp_path / "flat.nrrd")


# --- slice_pair ----------------------------------------------------------------------------


def test_slice_pair_labels_masks_and_ids_per_slice(tmp_path: Path, rng) -> None:
    image, label = make_pair(rng, (8, 6, 5), tumor_slices=[1, 3])
    records = slice_pair(
        write_nrrd(tmp_path / "im.nrrd", image),
        write_nrrd(tmp_path / "lb.nrrd", label),
        axis=2,
        id_prefix="case7",
    )
    assert [r.id for r in records] == [f"case7-s{k:03d}" for k in range(5)]
    assert [r.label for r in records] == [0, 1, 0, 1, 0]
    assert all(r.split is None for r in records)
    for k, r in enumerate(records):
        assert r.image.dtype == np.uint16
        assert r.image.shape == (6, 8)  # rows = the later in-plane axis
        if r.label:
            assert r.mask is not None and r.mask.dtype == np.bool_
            np.testing.assert_array_equal(r.mask, label[:, :, k].T != 0)
            assert r.mask.sum() == 4
        else:
            assert r.mask is None


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_pair_along_each_axis_matches_numpy_take(tmp_path: Path, rng, axis: int) -> None:
    shape = (7, 6, 5)
    image = rng.integers(0, 100, size=shape).astype(np.int16)
    label = np.zeros(shape, dtype=np.int32)
    label[2, 1, 3] = 2  # any non-zero value is tumor
    label[5, 4, 0] = 1
    records = slice_pair(
        write_nifti(tmp_path / "im.nii", image),
        write_nifti(tmp_path / "lb.nii", label),
        axis=axis,
        id_prefix="v",
        flip_rows=False,
    )
    assert len(records) == shape[axis]
    tumor = {k for k in range(shape[axis]) if np.take(label, k, axis=axis).any()}
    assert {k for k, r in enumerate(records) if r.label == 1} == tumor
    assert len(tumor) == 2
    for k in tumor:
        np.testing.assert_array_equal(records[k].mask, np.take(label, k, axis=axis).T != 0)


def test_nrrd_and_nifti_give_the_same_slices(tmp_path: Path, rng) -> None:
    image, label = make_pair(rng, (9, 7, 6), tumor_slices=[0, 2, 5])
    from_nrrd = slice_pair(
        write_nrrd(tmp_path / "im.nrrd", image),
        write_nrrd(tmp_path / "lb.nrrd", label),
        axis=2,
        id_prefix="a",
        flip_rows=False,
    )
    from_nifti = slice_pair(
        write_nifti(tmp_path / "im.nii.gz", image),
        write_nifti(tmp_path / "lb.nii.gz", label),
        axis=2,
        id_prefix="a",
        flip_rows=False,
    )
    assert [r.label for r in from_nrrd] == [r.label for r in from_nifti] == [1, 0, 1, 0, 0, 1]
    for a, b in zip(from_nrrd, from_nifti, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert (a.mask is None) == (b.mask is None)
        if a.mask is not None:
            np.testing.assert_array_equal(a.mask, b.mask)


def test_percentile_window_ignores_outliers(tmp_path: Path) -> None:
    image = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    image[9, 9, 9] = 1e6  # one hot voxel must not crush the contrast of the rest
    label = np.zeros(image.shape, dtype=np.uint8)
    records = slice_pair(
        write_nrrd(tmp_path / "im.nrrd", image),
        write_nrrd(tmp_path / "lb.nrrd", label),
        axis=2,
        id_prefix="w",
    )
    lo, hi = np.percentile(image, PERCENTILES)
    stack = np.stack([r.image for r in records], axis=-1).transpose(1, 0, 2)  # back to (i, j, k)
    expected = np.round(np.clip((image.astype(np.float64) - lo) / (hi - lo), 0, 1) * 65535)
    np.testing.assert_array_equal(stack, expected.astype(np.uint16))
    assert stack.min() == 0 and stack.max() == 65535
    assert stack[9, 9, 9] == 65535
    assert 30000 < stack[5, 0, 0] < 35000  # value 500 sits mid-range, not near 0


def test_explicit_window_maps_low_high_to_0_65535(tmp_path: Path) -> None:
    image = np.array([100, 200, 300, 400, 500], dtype=np.int16).reshape(5, 1, 1)
    label = np.zeros_like(image)
    (rec,) = slice_pair(
        write_nrrd(tmp_path / "im.nrrd", image),
        write_nrrd(tmp_path / "lb.nrrd", label),
        axis=2,
        id_prefix="w",
        window=(200.0, 400.0),
    )
    assert rec.image.tolist() == [[0, 0, 32768, 65535, 65535]]
    with pytest.raises(InvalidInputError, match="high > low"):
        slice_pair(
            tmp_path / "im.nrrd", tmp_path / "lb.nrrd", axis=2, id_prefix="w", window=(4.0, 4.0)
        )


def test_constant_volume_gives_black_slices(tmp_path: Path) -> None:
    image = np.full((4, 4, 2), 7, dtype=np.int16)
    records = slice_pair(
        write_nrrd(tmp_path / "im.nrrd", image),
        write_nrrd(tmp_path / "lb.nrrd", image * 0),
        axis=2,
        id_prefix="c",
    )
    assert [int(r.image.max()) for r in records] == [0, 0]


def test_negative_y_direction_flips_rows_to_match_positive_y(tmp_path: Path, rng) -> None:
    """The same anatomy stored with -y and with +y spacing gives the same slices."""
    image, label = make_pair(rng, (8, 6, 4), tumor_slices=[1, 2])
    neg = [[0.8, 0, 0], [0, -0.8, 0], [0, 0, 3.0]]
    pos = [[0.8, 0, 0], [0, 0.8, 0], [0, 0, 3.0]]
    a = slice_pair(
        write_nrrd(tmp_path / "neg_im.nrrd", image, neg),
        write_nrrd(tmp_path / "neg_lb.nrrd", label, neg),
        axis=2,
        id_prefix="n",
    )
    b = slice_pair(
        write_nrrd(tmp_path / "pos_im.nrrd", image[:, ::-1, :].copy(), pos),
        write_nrrd(tmp_path / "pos_lb.nrrd", label[:, ::-1, :].copy(), pos),
        axis=2,
        id_prefix="p",
    )
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ra.image, rb.image)
        if ra.mask is not None:
            np.testing.assert_array_equal(ra.mask, rb.mask)
            np.testing.assert_array_equal(ra.mask, (label[:, :, int(ra.id[-3:])].T != 0)[::-1])
    # forcing no flip gives the stored order back
    raw = slice_pair(
        tmp_path / "neg_im.nrrd", tmp_path / "neg_lb.nrrd", axis=2, id_prefix="n", flip_rows=False
    )
    np.testing.assert_array_equal(raw[0].image, a[0].image[::-1])


@pytest.mark.parametrize(
    ("directions", "axis", "expected"),
    [
        (None, 2, False),  # no orientation: never flipped
        (np.diag([0.5, 0.5, 2.0]), 2, False),  # LPS, +y rows: anterior already on top
        (np.diag([0.5, -0.5, 2.0]), 2, True),  # the pyradiomics brain cases
        (np.diag([-1.0, -1.0, 1.0]), 2, True),  # a NIfTI with an identity RAS affine
        (np.diag([1.0, 1.0, 1.0]), 0, True),  # sagittal: rows along +z (S) put inferior on top
        (np.diag([1.0, 1.0, -1.0]), 1, False),  # coronal, z stored superior to inferior
    ],
)
def test_display_flip(directions, axis: int, expected: bool) -> None:
    info = {"directions": None if directions is None else directions.tolist()}
    assert display_flip(info, axis) is expected


def test_slice_pair_shape_mismatch_names_both_files(tmp_path: Path) -> None:
    write_nrrd(tmp_path / "scan_image.nrrd", np.zeros((4, 4, 3), dtype=np.int16))
    write_nrrd(tmp_path / "scan_label.nrrd", np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(InvalidInputError) as info:
        slice_pair(
            tmp_path / "scan_image.nrrd", tmp_path / "scan_label.nrrd", axis=2, id_prefix="x"
        )
    msg = info.value.message
    assert "scan_image.nrrd" in msg and "scan_label.nrrd" in msg
    assert "(4, 4, 3)" in msg and "(4, 4, 2)" in msg


def test_normal_stride_keeps_every_tumor_slice(tmp_path: Path, rng) -> None:
    image, label = make_pair(rng, (5, 5, 10), tumor_slices=[3, 4])
    records = slice_pair(
        write_nrrd(tmp_path / "im.nrrd", image),
        write_nrrd(tmp_path / "lb.nrrd", label),
        axis=2,
        id_prefix="s",
        normal_stride=3,
    )
    assert [r.id for r in records] == ["s-s000", "s-s003", "s-s004", "s-s006", "s-s009"]
    assert [r.label for r in records] == [0, 1, 1, 0, 0]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"axis": 3, "id_prefix": "ok"}, "axis must be 0, 1 or 2"),
        ({"axis": 2, "id_prefix": "../evil"}, "id_prefix"),
        ({"axis": 2, "id_prefix": "ok", "normal_stride": 0}, "normal_stride"),
    ],
)
def test_slice_pair_rejects_bad_arguments(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    write_nrrd(tmp_path / "im.nrrd", np.zeros((2, 2, 2), dtype=np.int16))
    with pytest.raises(InvalidInputError, match=pattern):
        slice_pair(tmp_path / "im.nrrd", tmp_path / "im.nrrd", **kwargs)


# --- convert_volumes -----------------------------------------------------------------------


def make_cases(tmp_path: Path, rng, n: int) -> list[tuple[Path, Path]]:
    pairs = []
    for c in range(n):
        image, label = make_pair(rng, (12, 10, 6), tumor_slices=[1, 4])
        pairs.append(
            (
                write_nrrd(tmp_path / f"case{c}_image.nrrd", image),
                write_nrrd(tmp_path / f"case{c}_label.nrrd", label),
            )
        )
    return pairs


def test_convert_volumes_splits_by_volume_and_round_trips(tmp_path: Path, rng) -> None:
    (tmp_path / "src").mkdir()
    pairs = make_cases(tmp_path / "src", rng, 5)
    out = convert_volumes(pairs, tmp_path / "ds", axis=2, seed=3)
    ds = FolderDataset.open(out)
    assert len(ds) == 5 * 6
    assert sum(s.label for s in ds.samples) == 5 * 2
    assert ds.classes == ("normal", "tumor")
    # slices of one volume never straddle splits; 5 volumes -> 3 train, 1 val, 1 test
    split_of: dict[str, set[str]] = {}
    for s in ds.samples:
        split_of.setdefault(s.id.split("-s")[0], set()).add(str(s.split))
    assert set(split_of) == {f"case{c}" for c in range(5)}
    assert all(len(v) == 1 for v in split_of.values())
    assert sorted(next(iter(v)) for v in split_of.values()) == [
        "test",
        "train",
        "train",
        "train",
        "val",
    ]
    assert len(ds.subset("train")) == 18 and len(ds.subset("val")) == len(ds.subset("test")) == 6

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == ["normal", "tumor"]
    assert meta["axis"] == 2 and meta["split_by"] == "volume"
    assert [v["image"] for v in meta["volumes"]] == [str(p[0]) for p in pairs]
    assert [v["label"] for v in meta["volumes"]] == [str(p[1]) for p in pairs]
    assert {v["id"]: v["split"] for v in meta["volumes"]} == {
        k: next(iter(v)) for k, v in split_of.items()
    }

    # pixels survive the PNG round trip exactly
    expected = {
        r.id: r for c, p in enumerate(pairs) for r in slice_pair(*p, axis=2, id_prefix=f"case{c}")
    }
    for i, s in enumerate(ds.samples):
        image, mask = ds.load(i)
        np.testing.assert_array_equal(
            np.round(image * 65535).astype(np.uint16), expected[s.id].image
        )
        if s.label:
            np.testing.assert_array_equal(mask, expected[s.id].mask)
        else:
            assert mask is None and s.mask_path is None


def test_convert_volumes_split_is_deterministic_from_seed(tmp_path: Path, rng) -> None:
    pairs = make_cases(tmp_path, rng, 6)
    a = json.loads((convert_volumes(pairs, tmp_path / "a", seed=7) / "dataset.json").read_text())
    b = json.loads((convert_volumes(pairs, tmp_path / "b", seed=7) / "dataset.json").read_text())
    assert [v["split"] for v in a["volumes"]] == [v["split"] for v in b["volumes"]]
    splits = [v["split"] for v in a["volumes"]]
    assert splits.count("val") == 1 and splits.count("test") == 1 and splits.count("train") == 4


def test_convert_few_volumes_splits_by_slice(tmp_path: Path, rng) -> None:
    pairs = make_cases(tmp_path, rng, 2)
    out = convert_volumes(pairs, tmp_path / "ds", split=(0.5, 0.25, 0.25))
    ds = FolderDataset.open(out)
    assert json.loads((out / "dataset.json").read_text())["split_by"] == "slice"
    assert {s.split for s in ds.samples} == {"train", "val", "test"}
    # stratified: tumor slices in train too
    assert any(s.label == 1 and s.split == "train" for s in ds.samples)


def test_convert_volumes_missing_file_writes_nothing(tmp_path: Path, rng) -> None:
    pairs = make_cases(tmp_path, rng, 3)
    pairs[2] = (pairs[2][0], tmp_path / "lost_label.nrrd")
    with pytest.raises(NotFoundError, match=r"lost_label\.nrrd"):
        convert_volumes(pairs, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_convert_volumes_bad_volume_leaves_no_half_written_set(tmp_path: Path, rng) -> None:
    pairs = make_cases(tmp_path, rng, 3)
    write_nrrd(pairs[2][1], np.zeros((3, 3, 3), dtype=np.uint8))  # last label has the wrong shape
    with pytest.raises(InvalidInputError, match=r"case2_label\.nrrd"):
        convert_volumes(pairs, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")] == []


def test_convert_volumes_refuses_to_overwrite_unless_asked(tmp_path: Path, rng) -> None:
    pairs = make_cases(tmp_path, rng, 3)
    convert_volumes(pairs, tmp_path / "ds")
    with pytest.raises(InvalidInputError, match="already exists"):
        convert_volumes(pairs, tmp_path / "ds")
    convert_volumes(pairs[:2] + pairs[:1], tmp_path / "ds", ids=["x", "y", "z"], overwrite=True)
    assert {s.id.split("-s")[0] for s in FolderDataset.open(tmp_path / "ds").samples} == {
        "x",
        "y",
        "z",
    }


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"split": (0.5, 0.5, 0.5)}, "sum to 1"),
        ({"split": (0.0, 0.5, 0.5)}, "train > 0"),
        ({"ids": ["a", "a", "b"]}, "unique"),
        ({"ids": ["a"]}, "1 ids for 3"),
        ({"ids": ["a", "b", "c/d"]}, "letters, digits"),
        ({"axis": -1}, "axis"),
    ],
)
def test_convert_volumes_rejects_bad_arguments(
    tmp_path: Path, rng, kwargs: dict, pattern: str
) -> None:
    pairs = make_cases(tmp_path, rng, 3)
    with pytest.raises(InvalidInputError, match=pattern):
        convert_volumes(pairs, tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()
    with pytest.raises(InvalidInputError, match="no volume pairs"):
        convert_volumes([], tmp_path / "ds")
