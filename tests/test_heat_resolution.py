"""Heatmaps at the CAM layer's own resolution: the grid that places their cells in the
image (:class:`camseg.heat.cam.HeatGrid`) reproduces the image-resolution map, and the
option combinations without a single layer grid are refused before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from camseg.core.errors import InvalidInputError
from camseg.data.folder import decode_image
from camseg.heat.cam import HeatGrid, RawCam, normalise_maps
from camseg.pipeline.options import HeatResolution, Options
from camseg.pipeline.run import LoadedModel, run
from camseg.pipeline.whole import Tiling, Whole


def reference(cells: np.ndarray, grid: HeatGrid, size: tuple[int, int]) -> np.ndarray:
    """The documented mapping, written out pixel by pixel: pixel (y, x) samples the grid
    bilinearly at ((y + 0.5 - offset) / scale - 0.5), clamped to the edge cells."""
    h, w = cells.shape
    out = np.empty(size)
    for y in range(size[0]):
        v = min(max((y + 0.5 - grid.offset_y) / grid.scale_y - 0.5, 0.0), h - 1.0)
        r0 = int(np.floor(v))
        r1, fy = min(r0 + 1, h - 1), v - r0
        for x in range(size[1]):
            u = min(max((x + 0.5 - grid.offset_x) / grid.scale_x - 0.5, 0.0), w - 1.0)
            c0 = int(np.floor(u))
            c1, fx = min(c0 + 1, w - 1), u - c0
            out[y, x] = ((1 - fy) * ((1 - fx) * cells[r0, c0] + fx * cells[r0, c1])
                         + fy * ((1 - fx) * cells[r1, c0] + fx * cells[r1, c1]))
    return out


def test_grid_follows_the_documented_mapping_with_offsets() -> None:
    cells = torch.rand(1, 3, 5, generator=torch.Generator().manual_seed(0))
    grid = HeatGrid(scale_y=7.5, scale_x=4.0, offset_y=3.0, offset_x=-2.0)
    got = grid.to_image(cells, (29, 17))[0].numpy()
    np.testing.assert_allclose(got, reference(cells[0].numpy(), grid, (29, 17)), atol=1e-6)


@pytest.mark.parametrize("size", [(128, 128), (37, 23), (4, 6)])
def test_cells_laid_over_the_image_give_the_rendered_map(size: tuple[int, int]) -> None:
    parts = torch.relu(torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(1)))
    raw = RawCam((parts,), torch.zeros(3, 2), torch.ones(3, dtype=torch.long), ("layer4",))
    cells = raw.cells()
    assert cells.shape == (3, 4, 6) and float(cells.min()) == 0.0 and float(cells.max()) == 1.0
    grid = HeatGrid.covering((4, 6), size)
    assert (grid.scale_y, grid.scale_x, grid.offset_y, grid.offset_x) == (size[0] / 4, size[1] / 6, 0.0, 0.0)
    torch.testing.assert_close(normalise_maps(grid.to_image(cells, size)), raw.render(size), atol=1e-5, rtol=0)
    # a caller that does not renormalise is off by what the pixel centres miss of the cells' extremes
    assert float((grid.to_image(cells, size) - raw.render(size)).abs().max()) < 0.35


def test_a_fused_map_has_no_layer_resolution() -> None:
    raw = RawCam((torch.rand(1, 4, 4), torch.rand(1, 8, 8)), torch.zeros(1, 2), torch.ones(1, dtype=torch.long),
                 ("a", "b"))
    with pytest.raises(InvalidInputError, match="fused from 2 layers"):
        raw.cells()


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "fused"}, "fuses layers"),
    ({"tta": 4}, "tta 1"),
    ({"tiling": Tiling(mode=Whole.ALWAYS)}, "ROIs"),
    ({"heat_resolution": "cells"}, "cells"),
])
def test_bad_combinations_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        Options(**{"heat_resolution": HeatResolution.LAYER, **kwargs})


def test_layer_resolution_is_a_calls_choice_never_recorded() -> None:
    o = Options(heat_resolution=HeatResolution.LAYER)
    assert "heat_resolution" not in o.to_record()
    with pytest.raises(InvalidInputError, match="unknown options"):
        Options.from_record({"heat_resolution": "layer"})


def test_run_at_layer_resolution_matches_image_resolution(trained_dir: Path, tiny_folder: Path) -> None:
    model = LoadedModel.load(trained_dir, onnx=False)
    first = sorted((tiny_folder / "images").glob("*.png"))[:3]
    images = [decode_image(p) for p in first]
    images.append(np.ascontiguousarray(np.resize(images[0], (45, 27))))  # another size, another aspect
    at_image = run(model, images, Options(threshold=None))
    at_layer = run(model, images, Options(threshold=None, heat_resolution=HeatResolution.LAYER))
    assert any(float(b.heatmap.max() - b.heatmap.min()) == 1.0 for b in at_layer.items)  # not flat maps
    for a, b, img in zip(at_image.items, at_layer.items, images, strict=True):
        assert a.grid is None and b.grid is not None
        h, w = b.heatmap.shape
        assert (h, w) != img.shape[:2] and h * w < img.shape[0] * img.shape[1]
        assert (b.grid.scale_y * h, b.grid.scale_x * w) == pytest.approx(img.shape[:2])
        laid = normalise_maps(b.grid.to_image(b.heatmap[None], img.shape[:2]))[0]
        torch.testing.assert_close(laid, a.heatmap, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_run_refuses_an_image_that_goes_whole_at_layer_resolution(trained_dir: Path) -> None:
    model = LoadedModel.load(trained_dir, onnx=False)
    big = np.zeros((400, 400), np.float32)
    with pytest.raises(InvalidInputError, match="goes whole"):
        run(model, [big], Options(threshold=None, heat_resolution=HeatResolution.LAYER,
                                  tiling=Tiling(scale=1.0)))
