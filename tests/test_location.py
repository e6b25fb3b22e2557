"""camseg.study.location: where the heat sits, on heatmaps whose answers are known by hand.

Every expected number below is computed here from the construction (rectangle
centroids, ring areas, Euclidean distances), never by calling the code under test.
"""

from __future__ import annotations

import dataclasses
import doctest
import json
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from camseg.core.errors import CancelledError, InvalidInputError, NotFoundError
from camseg.core.progress import Progress
from camseg.data.tensors import ArraySet
from camseg.heat.cam import METHODS, TorchNetwork, compute_cam
from camseg.models import Classifier
from camseg.study import figures, location
from camseg.study.location import (
    BORDER_BAND,
    PAPER_CLAIMS,
    ImageLocation,
    LocationRow,
    border_band,
    finding_markdown,
    locate,
    locate_batch,
    location_sweep,
    summarize,
    verdict,
)

ModelFactory = Callable[..., Classifier]
NAN = math.nan


def rect(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> Tensor:
    """A boolean mask, True on rows r0..r1-1 and columns c0..c1-1."""
    m = torch.zeros(shape, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def same(a: object, b: object) -> bool:
    """NaN-aware equality of two dataclasses (to 1e-12)."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)  # type: ignore[call-overload]
    assert da.keys() == db.keys()
    for k in da:
        x, y = da[k], db[k]
        if isinstance(x, float) and isinstance(y, float):
            if not (math.isnan(x) and math.isnan(y)) and x != pytest.approx(y, abs=1e-12):
                return False
        elif x != y:
            return False
    return True


# ------------------------------------------------------------------- one heatmap
def test_heatmap_equal_to_mask() -> None:
    mask = rect((10, 10), 2, 5, 3, 7)  # rows 2..4, columns 3..6: centroid (3, 4.5), 12 pixels
    loc = locate(mask.float(), mask)
    assert loc.inside == 1.0 and loc.chance_inside == pytest.approx(12 / 100)
    assert loc.inside_enrichment == pytest.approx(100 / 12)
    # the peak is a tie over the whole mask: the first pixel in row-major order, (2, 3)
    assert loc.peak_px == pytest.approx(math.hypot(3 - 2, 4.5 - 3))
    assert loc.peak_frac == pytest.approx(math.hypot(1, 1.5) / 10)
    assert loc.centroid_px == pytest.approx(0.0, abs=1e-12) and loc.centroid_frac == pytest.approx(0.0, abs=1e-12)
    assert loc.hit and not loc.flat and not loc.peak_border


def test_heatmap_on_the_border_band() -> None:
    ring = torch.zeros(20, 20, dtype=torch.bool)
    ring[:2], ring[-2:], ring[:, :2], ring[:, -2:] = True, True, True, True  # 2 px = 0.1 x 20
    mask = rect((20, 20), 8, 12, 8, 12)
    loc = locate(ring.double(), mask, band=0.1)
    assert loc.border == 1.0 and loc.inside == 0.0 and not loc.hit
    assert loc.peak_border  # its peak is on the ring
    assert loc.chance_border == 144 / 400  # 400 - 16 x 16, exactly
    assert loc.border_enrichment == pytest.approx(400 / 144)
    assert torch.equal(border_band((20, 20), 0.1), ring)


@pytest.mark.parametrize(("shape", "band", "area"), [
    ((20, 20), 0.1, 400 - 16 * 16),
    ((20, 20), 0.15, 400 - 14 * 14),  # 3 px
    ((30, 30), 0.1, 900 - 24 * 24),  # 3 px
    ((100, 100), 0.07, 10000 - 86 * 86),  # 0.07 x 100 = 7.000000000000001 in floating point: still 7 px
    ((16, 24), 0.1, 16 * 24 - 10 * 18),  # side 24: 2.4 -> 3 px on every edge
    ((20, 20), 0.5, 400),  # the whole image
])
def test_band_widths(shape: tuple[int, int], band: float, area: int) -> None:
    assert int(border_band(shape, band).sum()) == area


def test_uniform_heatmap_sits_at_chance() -> None:
    mask = rect((20, 20), 5, 10, 6, 12)  # 30 pixels
    loc = locate(torch.ones(20, 20), mask)
    assert loc.inside == pytest.approx(30 / 400) and loc.chance_inside == pytest.approx(30 / 400)
    assert loc.border == pytest.approx(144 / 400) and loc.chance_border == pytest.approx(144 / 400)
    assert loc.inside_enrichment == pytest.approx(1.0) and loc.border_enrichment == pytest.approx(1.0)
    row = summarize("gradcam", "stage4", [loc])
    assert row.inside_enrichment == pytest.approx(1.0) and row.border_enrichment == pytest.approx(1.0)
    assert row.sits_on == "neither"


def test_single_hot_pixel_on_a_non_square_roi() -> None:
    heat = np.zeros((16, 24), np.float32)
    heat[3, 21] = 0.7
    mask = rect((16, 24), 8, 12, 4, 8).numpy()  # centroid (9.5, 5.5)
    loc = locate(heat, mask)
    d = math.hypot(9.5 - 3, 5.5 - 21)
    assert loc.peak_px == pytest.approx(d) and loc.centroid_px == pytest.approx(d)
    assert loc.peak_frac == pytest.approx(d / 24) and loc.centroid_frac == pytest.approx(d / 24)  # side = max(H, W)
    assert not loc.hit and loc.inside == 0.0
    # side 24: the band is 2.4 px, so column 21 (2 px from the right edge) is in it and column 20 is not
    assert loc.border == 1.0 and loc.chance_border == 204 / 384
    band = border_band((16, 24), 0.1)
    assert bool(band[3, 21]) and not bool(band[3, 20])


def test_tied_peaks_take_the_first_in_row_major_order() -> None:
    heat = torch.zeros(12, 12)
    heat[5, 2] = heat[3, 9] = 1.0
    mask = rect((12, 12), 3, 4, 9, 10)  # the single pixel (3, 9)
    loc = locate(heat, mask)
    assert loc.hit and loc.peak_px == 0.0  # (3, 9) precedes (5, 2)
    assert loc.centroid_px == pytest.approx(math.hypot(4 - 3, 5.5 - 9))  # the midpoint of the two
    assert loc.inside == pytest.approx(0.5)


def test_zero_heatmap_is_flat_and_left_out_of_the_means() -> None:
    mask = rect((20, 20), 8, 12, 8, 12)
    flat = locate(torch.zeros(20, 20), mask)
    assert flat.flat and not flat.hit
    assert all(math.isnan(v) for v in (flat.inside, flat.border, flat.peak_px, flat.peak_frac,
                                       flat.centroid_px, flat.centroid_frac))
    assert flat.chance_inside == pytest.approx(16 / 400) and flat.chance_border == pytest.approx(144 / 400)
    live = locate(mask.float(), mask)
    row, without = summarize("gradcam", "s", [flat, live]), summarize("gradcam", "s", [live])
    # n counts the flat map, the means do not see it
    assert (row.n, row.flat, row.used) == (2, 1, 1) and (without.n, without.flat) == (1, 0)
    assert same(dataclasses.replace(row, n=1, flat=0), without)
    assert row.inside == 1.0 and row.pointing == 1.0
    # a flat map has no peak: no hit even where its first pixel (the argmax of zeros) is in the mask
    assert not locate(torch.zeros(20, 20), rect((20, 20), 0, 4, 0, 4)).hit


def test_empty_mask() -> None:
    heat = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    loc = locate(heat, torch.zeros(16, 16, dtype=torch.bool))
    assert loc.inside == 0.0 and loc.chance_inside == 0.0 and not loc.hit and not loc.flat
    assert math.isnan(loc.peak_px) and math.isnan(loc.centroid_px) and math.isnan(loc.inside_enrichment)


def test_locate_batch_equals_locate_image_by_image() -> None:
    gen = torch.Generator().manual_seed(3)
    heat = torch.rand(6, 20, 24, generator=gen) ** 4
    heat[2] = 0  # a flat map
    masks = torch.zeros(6, 20, 24, dtype=torch.bool)
    for i in range(6):
        r, c = int(torch.randint(0, 12, (1,), generator=gen)), int(torch.randint(0, 16, (1,), generator=gen))
        masks[i, r : r + 3 + i, c : c + 2 + i] = True
    masks[4] = False  # an empty mask
    batch = locate_batch(heat, masks, band=0.15)
    assert len(batch) == 6
    for i in range(6):
        assert same(batch[i], locate(heat[i], masks[i], band=0.15)), i
        assert same(batch[i], locate(heat[i].numpy(), masks[i].numpy().astype(np.uint8), band=0.15)), i
    assert [b.flat for b in batch] == [False, False, True, False, False, False]
    assert locate_batch(torch.zeros(0, 8, 8), torch.zeros(0, 8, 8, dtype=torch.bool)) == []


@pytest.mark.parametrize(("heat", "mask", "kwargs", "error"), [
    (-torch.ones(8, 8), torch.ones(8, 8), {}, InvalidInputError),
    (torch.full((8, 8), math.nan), torch.ones(8, 8), {}, InvalidInputError),
    (torch.ones(8, 8), torch.ones(8, 9), {}, InvalidInputError),
    (torch.ones(8), torch.ones(8), {}, InvalidInputError),
    (torch.ones(8, 8), torch.ones(8, 8), {"band": 0.0}, InvalidInputError),
    (torch.ones(8, 8), torch.ones(8, 8), {"band": 0.6}, InvalidInputError),
    ([[1.0]], torch.ones(1, 1), {}, TypeError),
])
def test_bad_inputs(heat: object, mask: object, kwargs: dict[str, float], error: type[Exception]) -> None:
    with pytest.raises(error):
        locate(heat, mask, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ summarize
A = ImageLocation(0.6, 0.1, 0.2, 0.36, 2.0, 0.1, 1.0, 0.05, True, False)
B = ImageLocation(0.3, 0.4, 0.1, 0.36, 6.0, 0.3, 3.0, 0.15, False, False)
FLAT = ImageLocation(NAN, NAN, 0.5, 0.36, NAN, NAN, NAN, NAN, False, True)
EMPTY = ImageLocation(0.0, 0.5, 0.0, 0.36, NAN, NAN, NAN, NAN, False, False)  # a tumor ROI with an empty mask


def test_summarize_means_by_hand() -> None:
    row = summarize("layercam", "stage3", [A, FLAT, B])
    assert (row.method, row.layer, row.n, row.flat) == ("layercam", "stage3", 3, 1)
    assert row.inside == pytest.approx(0.45) and row.border == pytest.approx(0.25)
    assert row.chance_inside == pytest.approx(0.15)  # the flat map's 0.5 is left out too
    assert row.chance_border == pytest.approx(0.36)
    assert row.inside_enrichment == pytest.approx(3.0) and row.border_enrichment == pytest.approx(0.25 / 0.36)
    assert row.peak_px == pytest.approx(4.0) and row.peak_frac == pytest.approx(0.2)
    assert row.centroid_px == pytest.approx(2.0) and row.centroid_frac == pytest.approx(0.1)
    assert row.pointing == pytest.approx(0.5) and row.sits_on == "mass"
    # an empty mask counts in the shares but not in the distances or the pointing game
    with_empty = summarize("layercam", "stage3", [A, B, EMPTY])
    assert with_empty.inside == pytest.approx(0.3) and with_empty.border == pytest.approx(1 / 3)
    assert with_empty.peak_px == pytest.approx(4.0) and with_empty.pointing == pytest.approx(0.5)
    assert json.loads(json.dumps(dataclasses.asdict(row)))["pointing"] == pytest.approx(0.5)


def test_summarize_all_flat_or_nothing_is_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for items in ([FLAT, FLAT], []):
            row = summarize("gradcam", "s", items)
            assert row.n == len(items) and row.flat == len(items)
            assert all(math.isnan(getattr(row, f)) for f in ("inside", "border", "inside_enrichment", "peak_px",
                                                             "centroid_px", "pointing"))
            assert row.sits_on == "neither"


# ------------------------------------------------------------- verdict and report
def row_with(inside_e: float, border_e: float, method: str = "gradcam", **kw: float) -> LocationRow:
    """A row whose enrichments are ``inside_e`` and ``border_e`` (chance levels 0.1 and 0.4)."""
    base = dict(method=method, layer="stage4", n=10, flat=0, inside=0.1 * inside_e, border=0.4 * border_e,
                chance_inside=0.1, chance_border=0.4, inside_enrichment=inside_e, border_enrichment=border_e,
                peak_px=3.0, peak_frac=0.1, centroid_px=2.0, centroid_frac=0.0625, pointing=0.7, peak_on_border=0.2)
    base.update(kw)
    return LocationRow(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("inside_e", "border_e", "sits"), [
    (3.0, 0.5, "mass"), (3.0, 2.0, "mass"), (0.5, 2.0, "border"), (1.5, 2.0, "border"),
    (1.0, 1.0, "neither"), (0.8, 0.9, "neither"), (2.0, 2.0, "neither"), (1.0, 0.5, "neither"),
    (NAN, 2.0, "neither"), (2.0, NAN, "neither"),
])
def test_sits_on_and_verdict(inside_e: float, border_e: float, sits: str) -> None:
    row = row_with(inside_e, border_e)
    assert row.sits_on == sits
    assert verdict("mass", row) == ("holds" if sits == "mass" else "does not hold")
    assert verdict("border", row) == ("holds" if sits == "border" else "does not hold")
    assert verdict(None, row) == "no claim"


def test_verdict_rejects_unknown_claims() -> None:
    with pytest.raises(InvalidInputError):
        verdict("edge", row_with(2.0, 1.0))


def test_finding_markdown() -> None:
    rows = {
        "resnet": [row_with(0.5, 2.0), row_with(3.0, 1.0, method="layercam")],  # border: holds
        "inception": [row_with(0.9, 0.8)],  # claimed mass, sits on neither
        "xception": [row_with(2.0, 1.0, peak_px=NAN, peak_frac=NAN)],
        "densenet": [row_with(0.5, 3.0, method="layercam")],  # no Grad-CAM row: not measured, not counted
    }
    md = finding_markdown(rows)
    assert not md.startswith("#")
    claim = md.splitlines()[0]
    for name in ("InceptionV3", "NASNetMobile", "DenseNet121", "ResNet50V2", "MobileNetV2", "Xception"):
        assert name in claim
    first_table = md.split("Every method:")[0]
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in first_table.splitlines() if ln.startswith("| ")}
    assert lines["ResNet50V2"].endswith("| border | holds |")
    assert ("| 0.050 (0.100) | 0.800 (0.400) | 0.500 / 2.000 | 3.000 px (10.0%) | 2.000 px (6.2%) | 0.700 (0.100) | "
            "0.200 (0.400) | border | holds |") in lines["ResNet50V2"]
    assert lines["InceptionV3"].endswith("| neither | does not hold |")
    assert lines["Xception"].endswith("| mass | no claim |")
    assert "| 2.000 / 1.000 | - | 2.000 px (6.2%) |" in lines["Xception"]  # NaN peak distance
    assert lines["DenseNet121"].endswith("| not measured |")
    # the second table has every method
    assert "| ResNet50V2 | layercam | stage4 | 0.300 | 0.400 | 0.700 | 0.200 | mass |" in md
    assert "| DenseNet121 | layercam | stage4 | 0.050 | 1.200 | 0.700 | 0.200 | border |" in md
    assert "The claim holds for 1 of 2 architectures with a claim (gradcam)." in md


def test_finding_markdown_at_another_method() -> None:
    rows = {"resnet": [row_with(0.5, 2.0, method="layercam")], "densenet": [row_with(0.5, 3.0, method="layercam")],
            "inception": [row_with(2.0, 1.0, method="layercam")], "xception": [row_with(2.0, 1.0, method="layercam")]}
    md = finding_markdown(rows, method="layercam", names={"resnet": "R"})
    # names replace the paper names; an architecture without one keeps its key (NASNet its paper name)
    assert "| R | border | 10 (0) |" in md and "| inception | mass | 10 (0) |" in md
    assert "R" in md.splitlines()[0] and "NASNetMobile" in md.splitlines()[0]
    assert "The claim holds for 3 of 3 architectures with a claim (layercam)." in md


# ------------------------------------------------------------------ the sweep
SIZE = 32
RING_32 = (1024 - 24 * 24) / 1024  # band 0.1 x 32 = 3.2 px -> a 4 px ring


def tiny_set(images: Tensor, masks: Tensor, has_mask: list[bool]) -> ArraySet:
    n = len(images)
    return ArraySet([f"r{i}" for i in range(n)], images, torch.tensor(has_mask, dtype=torch.long),
                    masks, torch.tensor(has_mask), [(SIZE, SIZE)] * n)


@pytest.fixture(scope="module")
def resnet(make_model: ModelFactory) -> Classifier:
    return make_model("resnet", size=SIZE, seed=2)


@pytest.fixture(scope="module")
def random_set() -> ArraySet:
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(5, 1, SIZE, SIZE, generator=gen)
    masks = torch.zeros(5, SIZE, SIZE, dtype=torch.bool)
    masks[0, 4:12, 6:20] = True  # 112 px
    masks[2, 10:26, 10:26] = True  # 256 px
    masks[3, 20:28, 2:10] = True  # 64 px
    masks[4, 0:4, 0:4] = True  # no has_mask: must be left out even though a mask is drawn
    return tiny_set(images, masks, [True, False, True, True, False])


def test_location_sweep_on_a_real_model(resnet: Classifier, random_set: ArraySet) -> None:
    seen: list[Progress] = []
    rows = location_sweep(resnet, random_set, on_progress=seen.append)
    assert [r.method for r in rows] == list(METHODS)
    assert all(r.layer == resnet.cam_layer for r in rows)
    assert seen[-1].done == seen[-1].total == len(METHODS) * 3
    for r in rows:
        assert r.n == 3 and 0 <= r.flat <= 3
        if r.used:
            assert r.chance_inside == pytest.approx(sum(a / 1024 for a in (112, 256, 64)) / 3) or r.flat
            assert r.chance_border == pytest.approx(RING_32)
            assert 0 <= r.inside <= 1 and 0 <= r.border <= 1 and 0 <= r.pointing <= 1
            assert 0 <= r.peak_frac <= math.sqrt(2) and 0 <= r.centroid_frac <= math.sqrt(2)
            assert r.peak_px == pytest.approx(r.peak_frac * SIZE)
    assert sum(r.used for r in rows) > 0, "every map flat: the ranges above checked nothing"
    # the Grad-CAM row is the summary of compute_cam's maps of the tumor ROIs, in order
    tumor = [0, 2, 3]
    heat = compute_cam(resnet, random_set.images[tumor], targets=1).heatmaps
    expected = summarize("gradcam", resnet.cam_layer, locate_batch(heat, random_set.masks[tumor]))
    assert same(rows[0], expected)


def test_location_sweep_layer_targets_and_errors(make_model: ModelFactory, random_set: ArraySet) -> None:
    model = make_model("resnet", size=SIZE, num_classes=3, seed=6)
    shallow = model.layer_names[-2]
    rows = location_sweep(model, random_set, methods=["hirescam", "fused"], layer=shallow, positives=[1, 2])
    # the fused map runs at the model's Grad-CAM layer, as in the Dice sweep
    assert [(r.method, r.layer) for r in rows] == [("hirescam", shallow), ("fused", model.cam_layer)]
    tumor = [0, 2, 3]
    with torch.inference_mode():
        probs = torch.softmax(model(random_set.images[tumor]), 1)
    targets = 1 + probs[:, 1:].argmax(1)  # the most probable lesion class of each image
    heat = compute_cam(model, random_set.images[tumor], method="hirescam", layer=shallow, targets=targets).heatmaps
    assert same(rows[0], summarize("hirescam", shallow, locate_batch(heat, random_set.masks[tumor])))

    no_tumor = tiny_set(random_set.images[:2], random_set.masks[:2], [False, False])
    with pytest.raises(InvalidInputError):
        location_sweep(model, no_tumor)
    for bad in ("scorecam", "distilled", "nope"):
        with pytest.raises(InvalidInputError):
            location_sweep(model, random_set, methods=[bad])
    with pytest.raises(NotFoundError):
        location_sweep(model, random_set, layer="nope")
    with pytest.raises(CancelledError):
        location_sweep(model, random_set, methods=["gradcam"], should_stop=lambda: True)


class _Identity(nn.Module):
    """A stage that passes its input on (a fresh tensor, so the hook sees its own output)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 1.0


def analytic_network() -> TorchNetwork:
    """Both CAM layers output the image itself and the head is GAP + linear with a
    positive tumor weight, so dy/dA is a positive constant and every method's heatmap is
    the min-max-normalised image: the image itself when it spans [0, 1]."""
    fc = nn.Linear(1, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[-1.0], [2.0]]))
        fc.bias.zero_()
    module = nn.Sequential(OrderedDict(feat=_Identity(), act=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
                                       flat=nn.Flatten(), fc=fc))
    return TorchNetwork(module.eval(), ["feat", "act"], in_channels=1, num_classes=2)


def test_location_sweep_on_heatmaps_known_in_closed_form() -> None:
    net = analytic_network()
    ring = border_band((SIZE, SIZE), BORDER_BAND)
    m0, m1 = rect((SIZE, SIZE), 10, 20, 12, 22), rect((SIZE, SIZE), 4, 8, 20, 28)  # 100 and 32 px
    images = torch.stack([m0.float() + 0.25 * ring.float(), m1.float(), torch.rand(SIZE, SIZE)])[:, None]
    data = tiny_set(images, torch.stack([m0, m1, m0]), [True, True, False])
    assert int(ring.sum()) == 448 and not bool((m1 & ring).any())
    # image 0: heat 1 on the 100-px mass, 0.25 on the 448-px ring (disjoint): total 212
    total = 100 + 0.25 * 448
    mass0, mass1 = (14.5, 16.5), (5.5, 23.5)
    ring_centre = (15.5, 15.5)
    heat_centre0 = tuple((100 * a + 112 * b) / total for a, b in zip(mass0, ring_centre, strict=True))
    expect = dict(
        inside=(100 / total + 1) / 2,
        border=(112 / total + 0) / 2,
        chance_inside=(100 + 32) / 2 / 1024,
        chance_border=448 / 1024,
        # peaks: the first pixels of the masses, (10, 12) and (4, 20)
        peak_px=(math.dist(mass0, (10, 12)) + math.dist(mass1, (4, 20))) / 2,
        centroid_px=(math.dist(heat_centre0, mass0) + 0) / 2,
        pointing=1.0,
    )
    assert math.dist(heat_centre0, mass0) == pytest.approx(112 / total * math.sqrt(2))
    for method in METHODS:
        torch.testing.assert_close(compute_cam(net, images[:2], method=method).heatmaps, images[:2, 0],
                                   atol=1e-6, rtol=0)
    rows = location_sweep(net, data)
    assert [r.method for r in rows] == list(METHODS)
    for r in rows:
        assert (r.n, r.flat, r.layer) == (2, 0, "act")
        for name, value in expect.items():
            assert getattr(r, name) == pytest.approx(value, abs=1e-6), (r.method, name)
        assert r.peak_frac == pytest.approx(expect["peak_px"] / SIZE, abs=1e-6)
        assert r.inside_enrichment == pytest.approx(expect["inside"] / expect["chance_inside"], rel=1e-5)
        assert r.sits_on == "mass"
    net.remove()


# ------------------------------------------------------------------ the figure
def test_heat_location_writes_a_png(tmp_path: Path) -> None:
    rows = {"resnet": [row_with(0.5, 2.0), row_with(3.0, 1.0, method="layercam")],
            "inception": [row_with(2.0, 0.5), row_with(NAN, NAN, method="layercam", inside=NAN, border=NAN)],
            "nasnet": [row_with(1.0, 1.0)]}
    path = tmp_path / "where.png"
    figures.heat_location(path, rows)
    assert path.stat().st_size > 10_000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 300
        # not a blank canvas: the scatter's colours are there
        assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 50


def test_module_examples_and_claims() -> None:
    result = doctest.testmod(location)
    assert result.attempted >= 2 and result.failed == 0
    assert PAPER_CLAIMS == {"inception": "mass", "nasnet": "mass", "densenet": "border", "resnet": "border",
                            "mobilenet": "border", "xception": None}
    assert BORDER_BAND == 0.1


def test_peaks_on_the_border_are_counted_against_the_bands_chance() -> None:
    """Two 20x20 maps: one peaks on the 2-px ring, one in the middle; half the peaks are
    on the border, whose chance is the ring's area, 144/400."""
    ring, middle = torch.zeros(20, 20), torch.zeros(20, 20)
    ring[0, 7] = 1.0
    middle[10, 10] = 1.0
    mask = torch.zeros(2, 20, 20, dtype=torch.bool)
    mask[:, 8:12, 8:12] = True
    items = locate_batch(torch.stack([ring, middle]), mask)
    assert [it.peak_border for it in items] == [True, False]
    row = summarize("gradcam", "stage4", items)
    assert row.peak_on_border == 0.5 and row.chance_border == 144 / 400
