"""camseg.data.folder: the reader's errors, decode_image's formats, atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.data.folder import (
    FolderDataset,
    Record,
    array_to_float,
    decode_image,
    read_mask,
    write_dataset,
)

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)


def png_bytes(arr: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def make_folder(
    root: Path, labels_csv: str, images: dict[str, bytes], masks: dict[str, bytes] | None = None
) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "labels.csv").write_text(labels_csv)
    for name, data in images.items():
        (root / "images" / name).write_bytes(data)
    for name, data in (masks or {}).items():
        (root / "masks" / name).write_bytes(data)
    return root


def valid_folder(root: Path) -> Path:
    mask = np.zeros((12, 10), dtype=np.uint8)
    mask[3:6, 2:5] = 255
    return make_folder(
        root,
        "id,label,split\na,normal,train\nb,tumor,val\nc,1,test\n",
        {"a.png": png_bytes(GRAY8), "b.png": png_bytes(GRAY16), "c.png": png_bytes(RGB8)},
        {"b.png": png_bytes(mask)},
    )


# ------------------------------------------------------------------ reading a valid set
def test_open_and_load_valid_folder(tmp_path: Path) -> None:
    ds = FolderDataset.open(valid_folder(tmp_path / "ds"))
    assert [s.id for s in ds.samples] == ["a", "b", "c"]
    assert [s.label for s in ds.samples] == [0, 1, 1]  # "c" is labelled by index
    assert [s.split for s in ds.samples] == ["train", "val", "test"]
    assert ds.subset("val") == [1] and ds.subset(None) == [0, 1, 2]
    image, mask = ds.load(1)
    np.testing.assert_allclose(image, GRAY16 / 65535.0, atol=1e-6)
    assert mask is not None and mask.sum() == 9 and mask[3:6, 2:5].all()
    image, mask = ds.load(2)
    assert image.shape == (12, 10, 3) and mask is None


def test_subset_without_split_column_is_everything(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "ds",
        "id,label\na,0\nb,1\n",
        {"a.png": png_bytes(GRAY8), "b.png": png_bytes(GRAY8)},
    )
    ds = FolderDataset.open(root)
    assert ds.subset("train") == [0, 1]


# ------------------------------------------------------------------ reader errors
def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", "id,label\na,normal\n", {"a.png": b"\x89PNG garbage" * 10})
    ds = FolderDataset.open(root)  # open does not read pixels
    with pytest.raises(InvalidInputError, match=r"a\.png: not a readable image"):
        ds.load(0)


def test_unreadable_tiff_names_the_file(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "ds", "id,label\na,normal\n", {"a.tif": b"II*\x00" + b"\x07" * 40}
    )
    ds = FolderDataset.open(root)
    # tifffile reads some corrupt files as an empty array; either way one clear error
    with pytest.raises(
        InvalidInputError, match=r"images/a\.tif: (not a readable TIFF|expected a 2-D)"
    ):
        ds.load(0)


def test_mask_shape_mismatch_names_the_mask(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "ds",
        "id,label\na,tumor\n",
        {"a.png": png_bytes(GRAY8)},
        {"a.png": png_bytes(np.full((12, 11), 255, np.uint8))},
    )
    ds = FolderDataset.open(root)
    with pytest.raises(InvalidInputError) as info:
        ds.load(0)
    assert str(root / "masks" / "a.png") in str(info.value)
    assert "(12, 11)" in str(info.value) and "(12, 10)" in str(info.value)


def test_unknown_label_names_csv_and_line(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "ds",
        "id,label\na,normal\nb,benign\n",
        {"a.png": png_bytes(GRAY8), "b.png": png_bytes(GRAY8)},
    )
    with pytest.raises(InvalidInputError) as info:
        FolderDataset.open(root)
    msg = str(info.value)
    assert f"{root / 'labels.csv'}:3" in msg and "'benign'" in msg and "normal, tumor" in msg


def test_label_index_out_of_range(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", "id,label\na,2\n", {"a.png": png_bytes(GRAY8)})
    with pytest.raises(InvalidInputError, match=r"labels\.csv:2: label '2'"):
        FolderDataset.open(root)


def test_classes_from_dataset_json(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "ds",
        "id,label\na,benign\nb,malignant\n",
        {"a.png": png_bytes(GRAY8), "b.png": png_bytes(GRAY8)},
    )
    (root / "dataset.json").write_text('{"classes": ["normal", "benign", "malignant"]}')
    ds = FolderDataset.open(root)
    assert ds.classes == ("normal", "benign", "malignant")
    assert [s.label for s in ds.samples] == [1, 2]


def test_empty_labels_csv(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", "id,label,split\n", {})
    with pytest.raises(InvalidInputError, match=r"labels\.csv: the data set is empty"):
        FolderDataset.open(root)


def test_zero_byte_labels_csv(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", "", {})
    with pytest.raises(InvalidInputError, match=r"labels\.csv: header must have"):
        FolderDataset.open(root)


def test_missing_labels_csv(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", "", {})
    (root / "labels.csv").unlink()
    with pytest.raises(InvalidInputError, match=r"labels\.csv: missing"):
        FolderDataset.open(root)


def test_missing_root_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        FolderDataset.open(tmp_path / "nope")


def test_bad_dataset_json(tmp_path: Path) -> None:
    root = valid_folder(tmp_path / "ds")
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match=r"dataset\.json: not valid JSON"):
        FolderDataset.open(root)


def test_missing_image_names_the_id(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "ds", "id,label\na,normal\nghost,tumor\n", {"a.png": png_bytes(GRAY8)}
    )
    with pytest.raises(InvalidInputError, match=r"no image for id 'ghost'"):
        FolderDataset.open(root)


def test_duplicate_id(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "ds", "id,label\na,normal\na,tumor\n", {"a.png": png_bytes(GRAY8)}
    )
    with pytest.raises(InvalidInputError, match=r"labels\.csv:3: duplicate id 'a'"):
        FolderDataset.open(root)


def test_empty_id(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", "id,label\n ,normal\n", {})
    with pytest.raises(InvalidInputError, match=r"labels\.csv:2: empty id"):
        FolderDataset.open(root)


def test_bad_split(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "ds",
        "id,label,split\na,normal,train\nb,normal,holdout\n",
        {"a.png": png_bytes(GRAY8), "b.png": png_bytes(GRAY8)},
    )
    with pytest.raises(InvalidInputError, match=r"labels\.csv:3: split 'holdout'"):
        FolderDataset.open(root)


def test_non_text_labels_csv(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", "", {})
    (root / "labels.csv").write_bytes(b"id,label\n\xff\xfe\xfa,normal\n")
    with pytest.raises(InvalidInputError, match=r"labels\.csv: not a text CSV"):
        FolderDataset.open(root)


# ------------------------------------------------------------------ decode_image
def test_decode_png_8_bit_bytes_and_path(tmp_path: Path) -> None:
    data = png_bytes(GRAY8)
    out = decode_image(data)
    assert out.dtype == np.float32 and out.shape == (12, 10)
    np.testing.assert_allclose(out, GRAY8 / 255.0, atol=1e-7)
    (tmp_path / "x.png").write_bytes(data)
    np.testing.assert_array_equal(decode_image(tmp_path / "x.png"), out)


def test_decode_png_16_bit() -> None:
    out = decode_image(png_bytes(GRAY16))
    np.testing.assert_allclose(out, GRAY16 / 65535.0, atol=1e-7)


def test_decode_dark_png_16_bit_is_not_rescaled() -> None:
    dark = np.array([[0, 100], [200, 255]], dtype=np.uint16)  # all values fit in 8 bits
    np.testing.assert_allclose(decode_image(png_bytes(dark)), dark / 65535.0, atol=1e-8)


def test_decode_png_rgb() -> None:
    out = decode_image(png_bytes(RGB8))
    assert out.shape == (12, 10, 3)
    np.testing.assert_allclose(out, RGB8 / 255.0, atol=1e-7)


def test_decode_png_rgba_drops_alpha() -> None:
    rgba = np.concatenate([RGB8, np.full((12, 10, 1), 7, np.uint8)], axis=-1)
    out = decode_image(png_bytes(rgba))
    assert out.shape == (12, 10, 3)
    np.testing.assert_allclose(out, RGB8 / 255.0, atol=1e-7)


def test_decode_jpeg() -> None:
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.float64), (32, 1)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format="JPEG", quality=95)
    out = decode_image(buf.getvalue())
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert np.abs(out - smooth / 255.0).max() < 0.03


@pytest.mark.parametrize("arr", [GRAY8, GRAY16], ids=["uint8", "uint16"])
def test_decode_tiff_gray(tmp_path: Path, arr: np.ndarray) -> None:
    scale = 255.0 if arr.dtype == np.uint8 else 65535.0
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, arr)
    np.testing.assert_allclose(decode_image(path), arr / scale, atol=1e-7)
    np.testing.assert_allclose(decode_image(path.read_bytes()), arr / scale, atol=1e-7)


def test_decode_tiff_rgb_and_float(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "rgb.tiff", RGB8, photometric="rgb")
    np.testing.assert_allclose(decode_image(tmp_path / "rgb.tiff"), RGB8 / 255.0, atol=1e-7)
    f = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    np.testing.assert_array_equal(decode_image(tmp_path / "f.tif"), f)


def test_decode_garbage_bytes() -> None:
    with pytest.raises(InvalidInputError, match="upload: not a readable image"):
        decode_image(b"definitely not an image", name="upload")


def test_array_to_float_rules() -> None:
    np.testing.assert_allclose(
        array_to_float(np.array([[-2.0, 0.0], [2.0, 6.0]])), [[0.0, 0.25], [0.5, 1.0]]
    )
    np.testing.assert_array_equal(array_to_float(np.full((3, 3), 4, np.int32)), np.zeros((3, 3)))
    planar = np.stack([GRAY8, GRAY8 // 2, GRAY8 // 3])  # (3, H, W) channels first
    np.testing.assert_allclose(array_to_float(planar)[..., 1], (GRAY8 // 2) / 255.0, atol=1e-7)
    with pytest.raises(InvalidInputError, match="NaN"):
        array_to_float(np.array([[np.nan, 1.0]]))
    with pytest.raises(InvalidInputError, match="2-D"):
        array_to_float(np.zeros(5))
    with pytest.raises(InvalidInputError, match="unsupported pixel type"):
        array_to_float(np.zeros((2, 2), dtype=np.complex64))


def test_float32_in_range_is_kept_as_sent_and_the_rest_is_checked_as_before() -> None:
    sent = RNG.random((12, 10), dtype=np.float32)
    sent.flags.writeable = False  # as np.frombuffer gives it
    out = array_to_float(sent)
    assert out.dtype == np.float32 and out.flags.writeable and not np.shares_memory(out, sent)
    np.testing.assert_array_equal(out, sent)
    np.testing.assert_allclose(array_to_float(np.array([[-2.0, 0.0], [2.0, 6.0]], np.float32)),
                               [[0.0, 0.25], [0.5, 1.0]])
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(InvalidInputError, match="NaN"):
            array_to_float(np.array([[0.5, bad]], np.float32))


def test_read_mask_any_channel(tmp_path: Path) -> None:
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[1, 2, 2] = 1
    rgb[4, 4, 0] = 255
    (tmp_path / "m.png").write_bytes(png_bytes(rgb))
    mask = read_mask(tmp_path / "m.png")
    assert mask.shape == (6, 6) and mask.sum() == 2 and mask[1, 2] and mask[4, 4]


# ------------------------------------------------------------------ write_dataset
def _records(bad_at: int | None = None) -> list[Record]:
    out = []
    for i in range(4):
        image: np.ndarray = GRAY8 if i != bad_at else np.zeros((12, 10), np.complex128)
        mask = (GRAY8 > 128) if i % 2 else None
        out.append(Record(f"r{i}", i % 2, "train", image, mask))
    return out


def test_write_dataset_round_trip(tmp_path: Path) -> None:
    out = write_dataset(tmp_path / "set", _records(), {"classes": ["normal", "tumor"]})
    ds = FolderDataset.open(out)
    assert [s.label for s in ds.samples] == [0, 1, 0, 1]
    image, mask = ds.load(1)
    np.testing.assert_allclose(image, GRAY8 / 255.0, atol=1e-7)
    assert mask is not None
    np.testing.assert_array_equal(mask, GRAY8 > 128)


def test_write_dataset_is_atomic_on_failure(tmp_path: Path) -> None:
    with pytest.raises(TypeError):  # Pillow cannot encode complex128
        write_dataset(tmp_path / "set", _records(bad_at=2), {"classes": ["normal", "tumor"]})
    assert not (tmp_path / "set").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind


def test_write_dataset_failed_overwrite_keeps_old_set(tmp_path: Path) -> None:
    out = write_dataset(tmp_path / "set", _records(), {"classes": ["normal", "tumor"]})
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(TypeError):
        write_dataset(out, _records(bad_at=3), {"classes": ["normal", "tumor"]}, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    assert len(FolderDataset.open(out)) == 4


def test_write_dataset_refuses_non_empty_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "x").write_text("x")
    with pytest.raises(InvalidInputError, match="not empty"):
        write_dataset(tmp_path / "set", _records(), {})


def test_write_dataset_writes_a_records_files_and_refuses_escapes(tmp_path: Path) -> None:
    png = tmp_path / "g.png"
    Image.fromarray(GRAY8).save(png)
    files = (("images/a.png", png.read_bytes()), ("extra/a.txt", b"x"))
    # png=False: the image is one of the files, not the array (which would differ)
    records = [Record("a", 0, "train", GRAY8 // 2, None, files=files, png=False),
               Record("b", 1, "train", GRAY8, GRAY8 > 128)]
    out = write_dataset(tmp_path / "set", records, {})
    assert (out / "extra" / "a.txt").read_bytes() == b"x"
    np.testing.assert_allclose(FolderDataset.open(out).load(0)[0], GRAY8 / 255.0, atol=1e-7)
    escape = [Record("c", 0, "train", GRAY8, None, files=(("../outside.txt", b"x"),))]
    with pytest.raises(InvalidInputError, match="resolves outside"):
        write_dataset(tmp_path / "set2", escape, {})
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "set2").exists()
