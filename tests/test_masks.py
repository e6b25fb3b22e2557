"""camseg.heat.masks: threshold rules, the classifier gate, connected components."""

from __future__ import annotations

import pytest
import torch

from camseg.core.errors import InvalidInputError
from camseg.heat.masks import largest_component, thresholds, to_masks
from camseg.heat.rules import ThresholdRule, parse_rule


# ------------------------------------------------------------------ parse_rule
@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("otsu", "otsu", 0.0),
        (" OTSU ", "otsu", 0.0),
        ("p90", "percentile", 90.0),
        ("p0", "percentile", 0.0),
        ("P99.5", "percentile", 99.5),
        ("0.5", "fixed", 0.5),
        ("1", "fixed", 1.0),
        (0.25, "fixed", 0.25),
    ],
)
def test_parse_rule(text: str | float, kind: str, value: float) -> None:
    rule = parse_rule(text)
    assert rule == ThresholdRule(kind, value)  # type: ignore[arg-type]
    assert parse_rule(str(rule)) == rule  # str() round-trips
    assert parse_rule(rule) is rule


@pytest.mark.parametrize("text", ["p120", "p-1", "1.5", "-0.1", "abc", "", "p", "pten", "nan"])
def test_parse_rule_errors(text: str) -> None:
    with pytest.raises(InvalidInputError, match="bad threshold"):
        parse_rule(text)


# ------------------------------------------------------------------ the rules
def test_fixed_threshold_exact_counts() -> None:
    ramp = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10) / 99.0  # 0, 1/99, ..., 1
    for t, expected in ((0.5, 50), (0.0, 100), (1.0, 1), (0.25, 75)):
        m = to_masks(ramp, str(t))
        assert m.dtype == torch.bool and m.shape == (1, 10, 10)
        assert int(m.sum()) == expected, t
        assert bool((ramp[m] >= t).all()) and bool((ramp[~m] < t).all())


def test_percentile_keeps_the_top_fraction() -> None:
    ramp = torch.linspace(0, 1, 64 * 64).reshape(1, 64, 64)
    m = to_masks(ramp, "p90")
    assert int(m.sum()) == pytest.approx(0.1 * 64 * 64, abs=2)
    assert float(ramp[m].min()) >= float(ramp[~m].max())
    # each map gets its own percentile
    two = torch.stack([ramp[0], ramp[0] ** 3])
    counts = to_masks(two, "p75").flatten(1).sum(1)
    assert counts.tolist() == [pytest.approx(0.25 * 4096, abs=2)] * 2


def test_percentile_never_keeps_a_flat_zero_region() -> None:
    heat = torch.zeros(1, 10, 10)
    heat[0, :2, :2] = 1.0  # 96% zeros: the 50th percentile is 0
    m = to_masks(heat, "p50")
    assert int(m.sum()) == 4


def bimodal() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    heat = 0.2 + 0.03 * torch.randn(1, 40, 40, generator=gen)
    high = torch.zeros(1, 40, 40, dtype=torch.bool)
    high[0, 10:25, 5:30] = True
    heat[high] = 0.8 + 0.03 * torch.randn(int(high.sum()), generator=gen)
    return heat.clamp(0, 1), high


def test_otsu_threshold_lies_between_the_modes() -> None:
    heat, high = bimodal()
    t = float(thresholds(heat, parse_rule("otsu"))[0])
    assert 0.3 < t < 0.7  # the modes sit at 0.2 and 0.8, 3 sigma = 0.09
    assert float(heat[high].min()) > t


def test_otsu_mask_is_the_high_mode() -> None:
    """Every pixel of the low mode stays out: the threshold must not fall inside the
    histogram bin that holds the low mode's brightest pixel."""
    heat, high = bimodal()
    mask = to_masks(heat, "otsu")
    assert torch.equal(mask, high), (
        f"{int((mask & ~high).sum())} low-mode pixels leaked into the mask"
    )


def test_otsu_on_a_constant_map_is_empty() -> None:
    assert not to_masks(torch.full((2, 8, 8), 0.7), "otsu").any()


def test_heatmaps_must_be_3d() -> None:
    with pytest.raises(InvalidInputError, match=r"\(N, H, W\)"):
        to_masks(torch.rand(8, 8), "0.5")


# ------------------------------------------------------------------ gate and components
def test_gate_gives_predicted_normal_an_empty_mask() -> None:
    hot = torch.ones(3, 8, 8)
    m = to_masks(hot, "0.5", predicted=torch.tensor([0, 1, 0]))
    assert m.flatten(1).sum(1).tolist() == [0, 64, 0]
    m = to_masks(hot, "0.5", predicted=torch.tensor([2, 1, 0]), positive_class=2)
    assert m.flatten(1).sum(1).tolist() == [64, 0, 0]


def two_blobs() -> torch.Tensor:
    heat = torch.zeros(1, 20, 20)
    heat[0, 2:5, 2:5] = 1.0  # 9 pixels
    heat[0, 10:16, 8:14] = 0.9  # 36 pixels
    return heat


def test_largest_component_keeps_the_biggest_blob() -> None:
    heat = two_blobs()
    assert int(to_masks(heat, "0.5").sum()) == 45
    m = to_masks(heat, "0.5", largest=True)
    assert int(m.sum()) == 36 and bool(m[0, 10:16, 8:14].all())
    # the largest by area, not the hottest
    assert not m[0, 2:5, 2:5].any()


def test_largest_component_uses_8_connectivity() -> None:
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal: one 8-connected blob
    mask[4:6, 4:6] = True  # 4 pixels: the largest under 4-connectivity, not 8
    out = largest_component(mask.numpy())
    assert out.sum() == 4
    mask[3, 3] = True
    out = largest_component(mask.numpy())
    assert out.sum() == 8


def test_largest_component_on_empty_and_single() -> None:
    empty = torch.zeros(1, 5, 5)
    assert not to_masks(empty, "0.5", largest=True).any()
    one = torch.zeros(1, 5, 5)
    one[0, 1:3, 1:3] = 1
    assert int(to_masks(one, "0.5", largest=True).sum()) == 4


def test_fill_holes() -> None:
    heat = torch.zeros(1, 9, 9)
    heat[0, 1:8, 1:8] = 1.0
    heat[0, 3:6, 3:6] = 0.0  # a 3x3 hole
    assert int(to_masks(heat, "0.5").sum()) == 49 - 9
    filled = to_masks(heat, "0.5", fill_holes=True)
    assert int(filled.sum()) == 49 and bool(filled[0, 1:8, 1:8].all())
    # a notch open to the border is not a hole
    heat[0, 3:6, 0:4] = 0.0
    assert int(to_masks(heat, "0.5", fill_holes=True).sum()) == int(to_masks(heat, "0.5").sum())


def test_largest_then_fill() -> None:
    heat = two_blobs()
    heat[0, 12:14, 10:12] = 0.0  # a hole in the big blob
    m = to_masks(heat, "0.5", largest=True, fill_holes=True)
    assert int(m.sum()) == 36
