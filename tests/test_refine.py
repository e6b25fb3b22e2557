"""camseg.heat.refine: mask refinement from the image (dense CRF, random walker, watershed, GrabCut)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from camseg.core.errors import InvalidInputError
from camseg.core.metrics import dice
from camseg.heat.refine import (
    REFINERS,
    WORKING_PIXELS,
    RefineParams,
    Refiner,
    calibrate,
    parse_refiner,
    refine_bytes,
    refine_masks,
    seeds,
    working_size,
)

SEEDED = (Refiner.RANDOM_WALK, Refiner.WATERSHED, Refiner.GRABCUT)
REFINING = (Refiner.CRF, *SEEDED)
SIZE = 64


def disks_with_cams(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bright disks (radius 8-12 px, contrast 0.25) on a smooth field plus noise, and CAMs
    that are too large (Gaussian sigma 1.1 r, so heat >= 0.5 reaches about 1.3 r), shifted by
    3-4 px and made at 8x8 then upsampled bilinearly, like a last-stage CAM.

    Returns ``(images, heatmaps, truth)``, each ``(n, 64, 64)``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cells = (np.arange(8) + 0.5) * SIZE / 8
    images, heats, truths = [], [], []
    for _ in range(n):
        r = rng.uniform(8, 12)
        cy, cx = rng.uniform(24, 40, 2)
        truth = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        field = ndimage.gaussian_filter(rng.normal(0, 1, (SIZE, SIZE)), 8)
        image = 0.35 + 0.08 * field / field.std() + 0.25 * truth + rng.normal(0, 0.04, (SIZE, SIZE))
        angle, shift = rng.uniform(0, 2 * np.pi), rng.uniform(3, 4)
        hy, hx = cy + shift * np.sin(angle), cx + shift * np.cos(angle)
        low = np.exp(-((cells[:, None] - hy) ** 2 + (cells[None, :] - hx) ** 2) / (2 * (1.1 * r) ** 2))
        up = F.interpolate(torch.tensor(low, dtype=torch.float32)[None, None], size=(SIZE, SIZE), mode="bilinear")
        heat = up[0, 0]
        heats.append((heat - heat.min()) / (heat.max() - heat.min()))
        images.append(torch.from_numpy(np.clip(image, 0, 1).astype(np.float32)))
        truths.append(torch.from_numpy(truth))
    return torch.stack(images), torch.stack(heats), torch.stack(truths)


@pytest.fixture(scope="module")
def case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, heats, truth = disks_with_cams()
    return images, heats, heats >= 0.5, truth


# ------------------------------------------------------------------ the refiners help where the edge is known
def test_constructed_case_is_what_it_claims(case: tuple[torch.Tensor, ...]) -> None:
    _, _, masks, truth = case
    # too large (covers the disk, 1.5x its area or more) and offset: a mediocre mask
    assert bool(((masks & truth).sum((1, 2)) > 0.9 * truth.sum((1, 2))).all())
    assert bool((masks.sum((1, 2)) > 1.5 * truth.sum((1, 2))).all())
    assert 0.68 < float(dice(masks, truth).mean()) < 0.76  # measured 0.724


# measured mean Dice on this case (mask 0.724): crf 0.885, randomwalk 0.963,
# watershed 0.988, grabcut 0.978; the smallest per-image gain is 0.106 (crf)
@pytest.mark.parametrize("method", REFINING)
def test_refiners_move_the_edge_to_the_intensity_edge(case: tuple[torch.Tensor, ...], method: Refiner) -> None:
    images, heats, masks, truth = case
    before = dice(masks, truth)
    after = dice(refine_masks(images, heats, masks, method), truth)
    assert float(after.mean()) > float(before.mean()) + 0.1
    assert bool((after > before + 0.05).all()), (before, after)


@pytest.mark.parametrize("method", REFINING)
def test_refiners_are_deterministic(case: tuple[torch.Tensor, ...], method: Refiner) -> None:
    images, heats, masks, _ = case
    first = refine_masks(images[:2], heats[:2], masks[:2], method)
    assert torch.equal(first, refine_masks(images[:2], heats[:2], masks[:2], method))


# ------------------------------------------------------------------ edge cases
@pytest.mark.parametrize("method", REFINERS)
def test_empty_masks_stay_empty_and_output_is_bool_of_input_shape(case: tuple[torch.Tensor, ...], method: str) -> None:
    images, heats, masks, _ = case
    gated = masks[:3].clone()
    gated[1] = False  # the classifier gate emptied this one
    out = refine_masks(images[:3], heats[:3], gated, method)
    assert out.dtype == torch.bool
    assert out.shape == gated.shape
    assert not bool(out[1].any())
    assert bool(out[0].any()) and bool(out[2].any())
    all_gated = torch.zeros_like(gated)
    assert not bool(refine_masks(images[:3], heats[:3], all_gated, method).any())


def test_none_is_identity(case: tuple[torch.Tensor, ...]) -> None:
    images, heats, masks, _ = case
    assert refine_masks(images, heats, masks, Refiner.NONE) is masks
    assert torch.equal(refine_masks(images, heats, masks, "none"), masks)


def test_no_images_give_no_masks() -> None:
    empty = torch.zeros(0, 16, 16)
    for method in REFINERS:
        out = refine_masks(empty, empty, empty.bool(), method)
        assert out.shape == (0, 16, 16) and out.dtype == torch.bool


@pytest.mark.parametrize("method", SEEDED)
def test_mask_without_background_seeds_is_unchanged(method: Refiner) -> None:
    images = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    heats = torch.linspace(0.5, 1.0, 32 * 32).reshape(1, 32, 32)
    masks = torch.ones(1, 32, 32, dtype=torch.bool)  # covers everything: no background seed
    assert torch.equal(refine_masks(images, heats, masks, method), masks)


def test_grabcut_too_small_a_mask_for_its_colour_model_is_unchanged() -> None:
    images = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    heats = torch.zeros(1, 32, 32)
    heats[0, 15:17, 15:17] = 1.0
    masks = heats >= 0.5  # 4 pixels, fewer than GrabCut's 5 GMM components
    assert torch.equal(refine_masks(images, heats, masks, Refiner.GRABCUT), masks)


def test_importing_refine_stays_light() -> None:
    code = "import sys, camseg.heat.refine; print(sorted({'cv2', 'skimage.segmentation'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("images", "heats", "masks"),
    [
        ((2, 8, 8), (2, 8, 8), (1, 8, 8)),
        ((2, 8, 8), (2, 8, 9), (2, 8, 8)),
        ((8, 8), (8, 8), (8, 8)),
        ((2, 1, 8, 8), (2, 1, 8, 8), (2, 1, 8, 8)),
    ],
)
def test_bad_shapes_raise(images: tuple[int, ...], heats: tuple[int, ...], masks: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInputError, match="shape"):
        refine_masks(torch.zeros(images), torch.zeros(heats), torch.zeros(masks, dtype=torch.bool), "crf")


def test_non_bool_masks_raise() -> None:
    x = torch.zeros(1, 8, 8)
    with pytest.raises(InvalidInputError, match="bool"):
        refine_masks(x, x, x, "watershed")


@pytest.mark.parametrize("name", ["", "dense-crf", "grab cut", "random_walk", "otsu"])
def test_bad_names_raise_naming_the_choices(name: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_refiner(name)
    assert all(choice in info.value.message for choice in REFINERS)
    x = torch.zeros(1, 8, 8)
    with pytest.raises(InvalidInputError):
        refine_masks(x, x, x.bool(), name)


def test_parse_refiner() -> None:
    assert REFINERS == ("none", "crf", "randomwalk", "watershed", "grabcut")
    assert parse_refiner(" CRF ") is Refiner.CRF
    assert parse_refiner("RandomWalk") is Refiner.RANDOM_WALK
    assert parse_refiner(Refiner.GRABCUT) is Refiner.GRABCUT
    assert all(parse_refiner(name).value == name for name in REFINERS)


@pytest.mark.parametrize(
    "bad",
    [
        {"fg": 0.0},
        {"bg": 1.0},
        {"band": 0.0},
        {"crf_centre": 1.5},
        {"crf_radius": 0},
        {"crf_appearance_intensity": 0.0},
        {"crf_iterations": 0},
        {"rw_beta": -1.0},
        {"rw_mode": "cg_mg"},
        {"grabcut_iterations": 0},
    ],
)
def test_bad_params_raise(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError, match=next(iter(bad))):
        RefineParams(**bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the parts
def test_seeds_known_values() -> None:
    heat = torch.zeros(1, 20, 20)
    heat[0, 5:15, 5:15] = 0.6
    heat[0, 8:12, 8:12] = 0.9  # the peak inside the mask
    heat[0, 0, 19] = 0.5  # warm but far: background, the mask is far away
    mask = heat >= 0.5
    mask[0, 0, 19] = False
    fg, bg = seeds(heat, mask, RefineParams(fg=0.8, bg=0.15, band=0.1))
    # foreground: heat >= 0.8 * 0.9 = 0.72 inside the mask, i.e. the 4x4 peak
    assert int(fg.sum()) == 16 and bool(fg[0, 8:12, 8:12].all())
    assert not bool((fg & ~mask).any()) and not bool((bg & mask).any()) and not bool((fg & bg).any())
    # background: the cold outside (heat 0 <= 0.15) and the warm pixel 2 px (band) beyond the mask
    assert int(bg.sum()) == 400 - 100 and bool(bg[0, 0, 19])
    # an empty mask has no seeds at all
    fg0, bg0 = seeds(heat, torch.zeros_like(mask))
    assert not bool(fg0.any()) and not bool(bg0.any())


def test_calibration_is_one_half_at_the_centre() -> None:
    heat = torch.tensor([[[0.2, 0.35, 0.5, 0.9]]])
    mask = heat >= 0.5
    fixed = calibrate(heat, mask, RefineParams(crf_centre=0.35, crf_slope=10.0))[0, 0]
    assert fixed.tolist() == pytest.approx([1 / (1 + np.exp(1.5)), 0.5, 1 / (1 + np.exp(-1.5)), 1 / (1 + np.exp(-5.5))])
    own = calibrate(heat, mask, RefineParams(crf_slope=10.0))[0, 0]  # centred on the mask's lowest heat, 0.5
    assert own[2].item() == pytest.approx(0.5) and own[1].item() < 0.5 < own[3].item()


def test_crf_without_pairwise_terms_is_its_calibrated_unary(case: tuple[torch.Tensor, ...]) -> None:
    images, heats, masks, _ = case
    no_pairwise = RefineParams(crf_appearance_weight=0.0, crf_smoothness_weight=0.0)
    # p(fg) = 1/2 at the mask's own threshold: the mask comes back exactly
    assert torch.equal(refine_masks(images, heats, masks, Refiner.CRF, params=no_pairwise), masks)
    at_035 = RefineParams(crf_centre=0.35, crf_appearance_weight=0.0, crf_smoothness_weight=0.0)
    assert torch.equal(refine_masks(images, heats, masks, Refiner.CRF, params=at_035), heats >= 0.35)


def test_crf_chunks_agree_with_one_batch(case: tuple[torch.Tensor, ...]) -> None:
    images, heats, masks, _ = case
    # 30 maps of 64 px take two chunks (24 + 6); each must match its own one-image run
    together = refine_masks(images.repeat(5, 1, 1), heats.repeat(5, 1, 1), masks.repeat(5, 1, 1), Refiner.CRF)
    alone = refine_masks(images, heats, masks, Refiner.CRF)
    assert torch.equal(together, alone.repeat(5, 1, 1))
    assert torch.equal(alone[2:3], refine_masks(images[2:3], heats[2:3], masks[2:3], "crf"))


def test_crf_in_row_bands_equals_the_whole_image(case: tuple[torch.Tensor, ...],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import camseg.heat.refine as refine

    images, heats, masks, _ = case
    tall = (torch.cat([images[:1]] * 3, 1), torch.cat([heats[:1]] * 3, 1), torch.cat([masks[:1]] * 3, 1))
    whole = refine_masks(*tall, Refiner.CRF)
    # a kernel bound of a few rows: bands of 3 rows, each solved with its 48-row margins
    k = (2 * RefineParams().crf_radius + 1) ** 2 - 1
    monkeypatch.setattr(refine, "CRF_KERNEL_BYTES", 4 * k * tall[0].shape[2] * (2 * 48 + 3))
    banded = refine_masks(*tall, Refiner.CRF)
    assert whole.any() and torch.equal(banded, whole)


@pytest.mark.parametrize("method", ["crf", "watershed", "randomwalk"])
def test_a_large_image_is_refined_at_the_working_resolution(case: tuple[torch.Tensor, ...], method: str) -> None:
    images, heats, masks, _ = case
    # the ROIs at 4x their size: refined at their own 64 px (max_pixels) and brought back
    up = [F.interpolate(t[:4, None].float(), scale_factor=4, mode="nearest")[:, 0] for t in (images, heats, masks)]
    small = refine_masks(images[:4], heats[:4], masks[:4], method)
    big = refine_masks(up[0], up[1], up[2] > 0.5, method, params=RefineParams(max_pixels=64 * 64))
    assert big.shape == up[2].shape and big.dtype == torch.bool
    back = F.interpolate(small[:, None].float(), scale_factor=4, mode="nearest")[:, 0] > 0.5
    assert torch.equal(big, back)


def test_a_wide_image_is_banded_across_its_short_side(case: tuple[torch.Tensor, ...],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands run along the longer side: a wide image is cut into bands of columns of its
    full height (not one-row bands each solved with its 96 rows of margin), each band's
    kernel within the bound, and the result equals the whole image's."""
    import camseg.heat.refine as refine

    images, heats, masks, _ = case
    wide = (torch.cat([images[:1]] * 3, 2), torch.cat([heats[:1]] * 3, 2), torch.cat([masks[:1]] * 3, 2))
    whole = refine_masks(*wide, Refiner.CRF)
    k = (2 * RefineParams().crf_radius + 1) ** 2 - 1
    bound = 4 * k * wide[0].shape[1] * (2 * 48 + 3)
    monkeypatch.setattr(refine, "CRF_KERNEL_BYTES", bound)
    shapes: list[tuple[int, ...]] = []
    solve = refine._crf_band

    def recorded(images: torch.Tensor, prob: torch.Tensor, p: RefineParams) -> torch.Tensor:
        shapes.append(tuple(images.shape))
        return solve(images, prob, p)

    monkeypatch.setattr(refine, "_crf_band", recorded)
    banded = refine_masks(*wide, Refiner.CRF)
    assert whole.any() and torch.equal(banded, whole)
    assert len(shapes) == 64 and all(s[1] == 64 and s[2] <= 2 * 48 + 3 for s in shapes), shapes
    assert max(4 * k * s[1] * s[2] for s in shapes) <= bound
    # what the budgets charge does not depend on the orientation
    assert refine_bytes("crf", (64, 192)) == refine_bytes("crf", (192, 64))


def test_the_working_resolution_holds_for_any_aspect() -> None:
    for shape in [(4096, 4096), (4432, 2864), (2, 8 * 1024 * 1024), (8 * 1024 * 1024, 2), (3, 5_000_001)]:
        h, w = working_size(shape)
        assert 1 <= h <= shape[0] and 1 <= w <= shape[1] and h * w <= WORKING_PIXELS, (shape, h, w)
