"""camseg.io.codecs: PNG, packed-bit, run-length and raw-array encodings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp
from PIL import Image

from camseg.core.errors import InvalidInputError
from camseg.io.codecs import (
    encode_png,
    from_run_lengths,
    packed_bits,
    raw_to_image,
    run_lengths,
    unpack_bits,
    write_png,
)

masks = hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24))


def _read_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# ---------------------------------------------------------------- PNG


def test_png_uint8_round_trip() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (7, 11), dtype=np.uint8)
    img = _read_png(encode_png(arr))
    assert img.format == "PNG" and img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), arr)


def test_png_uint16_is_16_bit_gray() -> None:
    arr = np.array([[0, 1, 255], [256, 40000, 65535]], dtype=np.uint16)
    img = _read_png(encode_png(arr))
    assert img.mode == "I;16"
    back = np.asarray(img)
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back.astype(np.uint16), arr)


def test_png_bool_is_0_and_255() -> None:
    mask = np.array([[True, False, True], [False, False, True]])
    img = _read_png(encode_png(mask))
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), np.where(mask, 255, 0).astype(np.uint8))


def test_png_rgb_round_trip() -> None:
    arr = np.random.default_rng(1).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    img = _read_png(encode_png(arr))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), arr)


def test_png_of_a_non_contiguous_view() -> None:
    arr = np.arange(48, dtype=np.uint8).reshape(6, 8)
    view = arr[:, ::2]  # strided: needs the contiguous copy
    np.testing.assert_array_equal(np.asarray(_read_png(encode_png(view))), view)
    view_t = arr.T
    np.testing.assert_array_equal(np.asarray(_read_png(encode_png(view_t))), view_t)


def test_write_png(tmp_path: Path) -> None:
    arr = np.array([[3, 4], [5, 6]], dtype=np.uint8)
    write_png(tmp_path / "a.png", arr)
    assert (tmp_path / "a.png").read_bytes() == encode_png(arr)


# ---------------------------------------------------------------- packed bits


def test_packed_bits_layout_is_msb_first_row_major() -> None:
    mask = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1, 1]], dtype=bool)
    data = packed_bits(mask)
    # 18 bits -> 3 bytes: 10000000 10000000 11 (padded with zeros)
    assert data == bytes([0b10000000, 0b10000000, 0b11000000])


@settings(max_examples=60, deadline=None, database=None)
@given(masks)
def test_packed_bits_round_trip(mask: npt.NDArray[np.bool_]) -> None:
    data = packed_bits(mask)
    assert len(data) == (mask.size + 7) // 8
    back = unpack_bits(data, mask.shape)
    assert back.dtype == np.bool_
    np.testing.assert_array_equal(back, mask)


def test_unpack_bits_too_short() -> None:
    mask = np.ones((5, 5), dtype=bool)  # 25 bits -> 4 bytes
    data = packed_bits(mask)
    with pytest.raises(InvalidInputError, match="25"):
        unpack_bits(data[:3], (5, 5))
    with pytest.raises(InvalidInputError):
        unpack_bits(b"", (1, 1))


def test_unpack_bits_ignores_padding() -> None:
    np.testing.assert_array_equal(unpack_bits(b"\xff\xff", (3, 3)), np.ones((3, 3), dtype=bool))


# ---------------------------------------------------------------- run lengths


def test_run_lengths_examples() -> None:
    assert run_lengths(np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)) == [0, 2, 2, 2]
    assert run_lengths(np.array([[0, 0, 1], [1, 0, 0]], dtype=bool)) == [2, 2, 2]
    assert run_lengths(np.zeros((2, 3), dtype=bool)) == [6]
    assert run_lengths(np.ones((2, 3), dtype=bool)) == [0, 6]


@settings(max_examples=60, deadline=None, database=None)
@given(masks)
def test_run_lengths_round_trip(mask: npt.NDArray[np.bool_]) -> None:
    runs = run_lengths(mask)
    assert all(isinstance(r, int) for r in runs)
    assert sum(runs) == mask.size
    assert runs[0] >= 0 and all(r > 0 for r in runs[1:])
    assert (runs[0] == 0) == bool(mask.flat[0])
    assert sum(runs[1::2]) == int(mask.sum())
    shape = (int(mask.shape[0]), int(mask.shape[1]))
    np.testing.assert_array_equal(from_run_lengths(runs, shape), mask)


# ---------------------------------------------------------------- raw arrays


@pytest.mark.parametrize("dtype", ["int8", "uint32", "bool", "complex64", ""])
def test_raw_bad_dtype(dtype: str) -> None:
    with pytest.raises(InvalidInputError, match="dtype"):
        raw_to_image(dtype, (2, 2), b"\0" * 4, max_pixels=100)


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2), (2, 2, 4), (0, 3), (3, 0), (1, 2, 3, 1), ()])
def test_raw_bad_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInputError, match="shape"):
        raw_to_image("uint8", shape, b"\0" * 16, max_pixels=100)


def test_raw_wrong_byte_count() -> None:
    with pytest.raises(InvalidInputError, match="7 bytes"):
        raw_to_image("uint16", (2, 2), b"\0" * 7, max_pixels=100)
    with pytest.raises(InvalidInputError, match="need 24"):
        raw_to_image("uint16", (2, 2, 3), b"\0" * 8, max_pixels=100)


def test_raw_over_max_pixels() -> None:
    data = b"\0" * 12
    with pytest.raises(InvalidInputError, match="limit of 11"):
        raw_to_image("uint8", (3, 4), data, max_pixels=11)
    assert raw_to_image("uint8", (3, 4), data, max_pixels=12).shape == (3, 4)


def test_raw_uint16_decodes_to_unit_range() -> None:
    arr = np.array([[0, 65535], [32768, 13107]], dtype=np.uint16)
    out = raw_to_image("uint16", arr.shape, arr.tobytes(), max_pixels=4)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_allclose(out, arr / 65535.0, atol=1e-7)
    assert out.min() == 0.0 and out.max() == 1.0


def test_raw_single_channel_and_rgb() -> None:
    arr = np.array([[[0], [255]], [[51], [102]]], dtype=np.uint8)
    out = raw_to_image("uint8", (2, 2, 1), arr.tobytes(), max_pixels=4)
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, arr[..., 0] / 255.0, atol=1e-7)
    rgb = np.random.default_rng(2).integers(0, 256, (3, 2, 3), dtype=np.uint8)
    out_rgb = raw_to_image("uint8", (3, 2, 3), rgb.tobytes(), max_pixels=6)
    assert out_rgb.shape == (3, 2, 3)
    np.testing.assert_allclose(out_rgb, rgb / 255.0, atol=1e-7)


def test_raw_float_in_unit_range_is_kept() -> None:
    arr = np.array([[0.25, 0.5], [0.75, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(raw_to_image("float32", (2, 2), arr.tobytes(), max_pixels=4), arr)


def test_raw_float_with_nan_is_refused() -> None:
    arr = np.array([[0.25, np.nan]], dtype=np.float64)
    with pytest.raises(InvalidInputError, match="NaN"):
        raw_to_image("float64", (1, 2), arr.tobytes(), max_pixels=4)
