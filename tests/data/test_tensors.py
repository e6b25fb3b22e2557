"""camseg.data.tensors: shapes, resizing, channel conversion, the data digest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camseg.core.errors import InvalidInputError
from camseg.data.folder import FolderDataset
from camseg.data.tensors import load_arrays, resize_mask, to_channels


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Three ROIs of different sizes: gray 40x40 with a mask, RGB 20x30, gray 16x16."""
    root = tmp_path / "mixed"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    gray = np.zeros((40, 40), np.uint8)
    gray[:, 20:] = 200
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    (root / "images" / "g.png").write_bytes(_png(gray))
    (root / "masks" / "g.png").write_bytes(_png(mask))
    (root / "images" / "c.png").write_bytes(_png(rgb))
    (root / "images" / "s.png").write_bytes(_png(np.full((16, 16), 51, np.uint8)))
    (root / "labels.csv").write_text(
        "id,label,split\ng,tumor,train\nc,normal,train\ns,normal,val\n"
    )
    return root


def test_load_arrays_shapes_and_resizing(mixed_folder: Path) -> None:
    ds = FolderDataset.open(mixed_folder)
    a = load_arrays(ds, [0, 1, 2], 32, 1)
    assert a.ids == ["g", "c", "s"]
    assert a.images.shape == (3, 1, 32, 32) and a.images.dtype == torch.float32
    assert a.masks.shape == (3, 32, 32) and a.masks.dtype == torch.bool
    assert a.labels.tolist() == [1, 0, 0] and a.has_mask.tolist() == [True, False, False]
    assert a.sizes == [(40, 40), (20, 30), (16, 16)]
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
    # the step edge of the gray image stays at the middle after 40 -> 32
    assert torch.allclose(a.images[0, 0, :, :14], torch.zeros(32, 14))
    assert torch.allclose(a.images[0, 0, :, 18:], torch.full((32, 14), 200 / 255))
    # the mask square 10..30 of 40 becomes 8..24 of 32
    assert int(a.masks[0].sum()) == 16 * 16 and bool(a.masks[0, 8:24, 8:24].all())
    assert not a.masks[1:].any()
    # a constant image stays constant when upsampled 16 -> 32
    assert torch.allclose(a.images[2], torch.full((1, 32, 32), 0.2), atol=1e-6)


def test_rgb_to_one_channel_is_luminance(mixed_folder: Path) -> None:
    ds = FolderDataset.open(mixed_folder)
    a = load_arrays(ds, [1], 24, 1)
    expected = 0.299 * 1.0 + 0.587 * (128 / 255)
    assert torch.allclose(a.images[0], torch.full((1, 24, 24), expected), atol=1e-5)


def test_gray_to_three_channels_replicates(mixed_folder: Path) -> None:
    ds = FolderDataset.open(mixed_folder)
    a = load_arrays(ds, [0, 1], 32, 3)
    assert a.images.shape == (2, 3, 32, 32)
    assert torch.equal(a.images[0, 0], a.images[0, 1]) and torch.equal(
        a.images[0, 0], a.images[0, 2]
    )
    # RGB stays RGB
    assert torch.allclose(a.images[1, :, 5, 5], torch.tensor([1.0, 128 / 255, 0.0]), atol=1e-6)


def test_to_channels_direct() -> None:
    gray = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert to_channels(gray, 1).shape == (1, 2, 3)
    np.testing.assert_array_equal(to_channels(gray, 3), np.stack([gray] * 3))
    rgb = np.zeros((2, 3, 3), np.float32)
    rgb[..., 2] = 1.0
    np.testing.assert_allclose(to_channels(rgb, 1), np.full((1, 2, 3), 0.114), rtol=1e-6)


def test_resize_mask_nearest() -> None:
    m = torch.zeros(4, 4, dtype=torch.bool)
    m[:2, :2] = True
    r = resize_mask(m, 8)
    assert r.dtype == torch.bool and int(r.sum()) == 16 and bool(r[:4, :4].all())


def test_select_keeps_rows_aligned(mixed_folder: Path) -> None:
    a = load_arrays(FolderDataset.open(mixed_folder), [0, 1, 2], 16, 1)
    b = a.select([2, 0])
    assert b.ids == ["s", "g"] and b.labels.tolist() == [0, 1] and b.sizes == [(16, 16), (40, 40)]
    assert torch.equal(b.images[1], a.images[0]) and torch.equal(b.masks[1], a.masks[0])


def test_digest_changes_with_data(mixed_folder: Path, tiny_folder: Path) -> None:
    ds = FolderDataset.open(mixed_folder)
    a = load_arrays(ds, [0, 1, 2], 16, 1)
    d = a.digest()
    assert len(d) == 64 and d == load_arrays(ds, [0, 1, 2], 16, 1).digest()
    assert load_arrays(ds, [0, 1], 16, 1).digest() != d
    a.images[0, 0, 0, 0] += 1e-3
    assert a.digest() != d
    b = load_arrays(ds, [0, 1, 2], 16, 1)
    b.labels[0] = 0
    assert b.digest() != d


def test_empty_indices_error(mixed_folder: Path) -> None:
    with pytest.raises(InvalidInputError, match="no samples"):
        load_arrays(FolderDataset.open(mixed_folder), [], 16, 1)
