"""camseg.pipeline.options: the one rule by which a caller's choices and a model's recipe
make the options of a run (:func:`resolve`), and the choices' own checks."""

from __future__ import annotations

import pytest

from camseg.core.errors import InvalidInputError
from camseg.heat.methods import METHOD_CHOICES, CamMethod, Segmenter, as_method
from camseg.heat.refine import Refiner
from camseg.heat.rules import ThresholdRule
from camseg.pipeline.options import Choices, Options, resolve

RECIPE = Options(method=CamMethod.LAYERCAM, layer="stage3", threshold=ThresholdRule("percentile", 85), tta=4,
                 refine=Refiner.CRF, decision_threshold=0.3, gate=True, largest=False, fill_holes=False)


def test_nothing_chosen_runs_the_recipe_else_the_defaults() -> None:
    assert resolve(RECIPE) == (RECIPE, True)
    assert resolve(RECIPE, Choices()) == (RECIPE, True)
    assert resolve(None) == (Options(), False)
    assert resolve(None, default_method=CamMethod.SCORECAM) == (Options(method=CamMethod.SCORECAM), False)


def test_modifiers_only_add_to_the_recipe() -> None:
    o, used = resolve(RECIPE, Choices(largest=True, fill_holes=True, gate=False))
    assert used and (o.largest, o.fill_holes, o.gate) == (True, True, False)
    assert (o.method, o.layer, o.threshold, o.tta, o.refine, o.decision_threshold) == (
        CamMethod.LAYERCAM, "stage3", ThresholdRule("percentile", 85), 4, Refiner.CRF, 0.3)
    # False largest and True gate leave the recipe's own step in place
    steps = Options(method=CamMethod.FUSED, largest=True, fill_holes=True, gate=False)
    assert resolve(steps, Choices(largest=False, fill_holes=False, gate=True)) == (steps, True)


@pytest.mark.parametrize("pick", [
    Choices(method=CamMethod.GRADCAM_PP), Choices(layer="stage2"), Choices(target=0),
    Choices(threshold=ThresholdRule("percentile", 90)), Choices(tta=8), Choices(refine=Refiner.WATERSHED),
    Choices(decision_threshold=0.4), Choices(no_recipe=True),
])
def test_any_pick_sets_the_recipe_aside(pick: Choices) -> None:
    o, used = resolve(RECIPE, pick, default_method=CamMethod.HIRESCAM)
    assert not used
    expected = Options(method=pick.method or CamMethod.HIRESCAM, layer=pick.layer, target=pick.target,
                       threshold=pick.threshold or ThresholdRule("otsu"), tta=pick.tta or 1,
                       refine=pick.refine or Refiner.NONE, decision_threshold=pick.decision_threshold)
    assert o == expected, pick


def test_own_options_take_the_modifiers_as_given() -> None:
    o, used = resolve(RECIPE, Choices(threshold=ThresholdRule("fixed", 0.5), largest=True, gate=False,
                                      fill_holes=True))
    assert not used and (o.largest, o.gate, o.fill_holes, o.threshold) == (True, False, True,
                                                                          ThresholdRule("fixed", 0.5))
    assert o.method is CamMethod.GRADCAM and o.tta == 1 and o.refine is Refiner.NONE  # defaults, not the recipe's
    o, _ = resolve(None, Choices(gate=True, largest=False))
    assert (o.gate, o.largest) == (True, False)


def test_choices_parse_strings_and_refuse_bad_values_before_any_model() -> None:
    c = Choices(method="LayerCAM", threshold="p85", refine="crf", layer="")  # type: ignore[arg-type]
    assert (c.method, c.threshold, c.refine, c.layer) == (CamMethod.LAYERCAM, ThresholdRule("percentile", 85),
                                                          Refiner.CRF, None)
    assert not Choices(largest=True, gate=False, fill_holes=True, no_recipe=True).picks
    for bad, match in [({"method": "nope"}, "unknown CAM method"), ({"threshold": "p101"}, "threshold"),
                       ({"tta": 3}, "tta"), ({"refine": "blur"}, "refiner"), ({"decision_threshold": 1.0}, "decision")]:
        with pytest.raises(InvalidInputError, match=match):
            Choices(**bad)  # type: ignore[arg-type]


def test_a_method_is_a_cam_method_or_the_student_and_saved_records_stay_readable() -> None:
    assert METHOD_CHOICES == ("gradcam", "gradcam++", "hirescam", "layercam", "fused", "scorecam", "distilled")
    assert as_method("Distilled") is Segmenter.DISTILLED and as_method("scorecam") is CamMethod.SCORECAM
    assert Options.from_record({"method": "distilled", "threshold": "0.5"}).method is Segmenter.DISTILLED
    assert Options(method=Segmenter.DISTILLED).to_record()["method"] == "distilled"
    with pytest.raises(InvalidInputError, match=r"choose one of gradcam, .*, distilled"):
        as_method("eigencam")
