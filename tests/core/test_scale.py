"""camseg.core.scale.Scale and the scale in a model's metadata and camseg-model.json."""

from __future__ import annotations

import math

import pytest

from camseg.core.errors import InvalidInputError
from camseg.core.scale import Scale
from camseg.models.modelconfig import ModelConfig, model_scale


def test_pixels_from_a_pixel_scale_ignores_the_spacing_and_from_mm_divides_by_it() -> None:
    assert Scale(source_pixels_per_model_pixel=3).pixels(None) == 3.0
    assert Scale(source_pixels_per_model_pixel=3).pixels(0.1) == 3.0
    assert Scale(mm_per_model_pixel=0.5).pixels(0.1) == pytest.approx(5.0)
    assert Scale(mm_per_model_pixel=0.5).resized(2.0) == Scale(mm_per_model_pixel=1.0)


def test_mm_without_a_spacing_is_one_line() -> None:
    with pytest.raises(InvalidInputError, match="records no pixel spacing") as info:
        Scale(mm_per_model_pixel=0.5).pixels(None)
    assert "\n" not in info.value.message


@pytest.mark.parametrize(("px", "mm"), [(None, None), (1.0, 1.0), (0.0, None), (-2.0, None), (math.nan, None),
                                        (None, math.inf), (True, None), ("2", None)])
def test_bad_scales_are_refused(px: object, mm: object) -> None:
    with pytest.raises(InvalidInputError, match="scale"):
        Scale(px, mm)  # type: ignore[arg-type]


def test_dict_round_trip_and_model_scale() -> None:
    for scale in (Scale(2.5), Scale(mm_per_model_pixel=0.2)):
        assert Scale.from_dict(scale.to_dict()) == scale
        assert model_scale({"scale": scale.to_dict()}) == scale
    assert model_scale({}) is None
    with pytest.raises(InvalidInputError, match=r"metadata\.json: scale: unknown key\(s\) inches"):
        model_scale({"scale": {"inches": 1}})
    with pytest.raises(InvalidInputError, match=r"metadata\.json: scale: source_pixels_per_model_pixel must be"):
        model_scale({"scale": {"source_pixels_per_model_pixel": -1}})


def test_an_imported_model_config_may_state_its_scale() -> None:
    base = {"input": {"height": 64, "width": 64}, "classes": ["normal", "tumor"], "lesion_classes": ["tumor"]}
    assert ModelConfig.model_validate(base).scale is None
    cfg = ModelConfig.model_validate({**base, "scale": {"mm_per_model_pixel": 0.4}})
    assert cfg.scale is not None and cfg.scale.to_scale() == Scale(mm_per_model_pixel=0.4)
    for bad in ({}, {"mm_per_model_pixel": 0}, {"mm_per_model_pixel": 1, "source_pixels_per_model_pixel": 1}):
        with pytest.raises(ValueError):
            ModelConfig.model_validate({**base, "scale": bad})
