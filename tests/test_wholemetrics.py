"""camseg.study.wholemetrics: Dice, false area, the FROC hit and step rules and the image AUC
on hand-built cases whose numbers are worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from camseg.core.errors import InvalidInputError
from camseg.core.metrics import dice, roc_auc
from camseg.heat.lesions import Lesion, lesions_of
from camseg.study.wholemetrics import (
    FP_RATES,
    Matched,
    WholeReport,
    false_area,
    froc,
    image_auc,
    image_row,
    mask_dice,
    match_candidates,
)


def cand(score: float, y: float, x: float) -> Lesion:
    return Lesion(score, 1, (int(y), int(x), int(y) + 1, int(x) + 1), (y, x))


def two_lesions() -> np.ndarray:
    t = np.zeros((32, 32), bool)
    t[2:6, 2:6] = True  # L1, centroid (3.5, 3.5)
    t[20:24, 20:24] = True  # L2, centroid (21.5, 21.5)
    return t


def test_mask_dice_matches_core_dice() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, t = rng.random((9, 7)) > 0.6, rng.random((9, 7)) > 0.5
        assert mask_dice(p, t) == pytest.approx(float(dice(torch.from_numpy(p), torch.from_numpy(t))))
    empty = np.zeros((4, 4), bool)
    assert mask_dice(empty, empty) == 1.0 and mask_dice(~empty, empty) == 0.0
    with pytest.raises(InvalidInputError, match="differ"):
        mask_dice(empty, np.zeros((4, 5), bool))


def test_false_area_of_image_and_tissue() -> None:
    m = np.zeros((8, 8), bool)
    m[0:2, 0:2] = True
    tissue = np.zeros((8, 8), bool)
    tissue[:, :4] = True
    fa = false_area(m, tissue)
    assert (fa.pixels, fa.image_fraction, fa.tissue_fraction) == (4, 4 / 64, 4 / 32)
    assert math.isnan(false_area(m).tissue_fraction)
    assert math.isnan(false_area(m, np.zeros((8, 8), bool)).tissue_fraction)


def test_hit_rule_inside_duplicate_and_false_positive() -> None:
    got = match_candidates([cand(0.9, 3.5, 3.5), cand(0.8, 3.6, 4.0), cand(0.7, 10, 10), cand(0.3, 21.5, 21.5)],
                           two_lesions())
    assert got == Matched([0.9, 0.3], [0.7], duplicates=1)
    # the best-scoring hit counts whatever the order the candidates come in
    assert match_candidates([cand(0.2, 3, 3), cand(0.6, 4, 4)], two_lesions()).lesion_scores == [0.6, None]


def test_hit_rule_equivalent_radius() -> None:
    yy, xx = np.mgrid[:21, :21]
    r2 = (yy - 10) ** 2 + (xx - 10) ** 2
    ring = (r2 >= 4) & (r2 <= 16)  # centroid (10, 10) in the hole
    radius = math.sqrt(ring.sum() / math.pi)
    assert 3 < radius < 4
    assert match_candidates([cand(0.5, 10, 10)], ring).lesion_scores == [0.5]  # within the radius
    far = match_candidates([cand(0.5, 10, 10 + radius + 1.2)], ring)  # outside the ring and the radius
    assert far.lesion_scores == [None] and far.fp_scores == [0.5]
    assert match_candidates([], np.zeros((5, 5), bool)) == Matched([], [])


def test_froc_by_hand() -> None:
    # image A: L1 hit at 0.9 (and again at 0.8), L2 hit at 0.3, an FP at 0.7; image B: normal, FPs 0.6, 0.2
    a = match_candidates([cand(0.9, 3.5, 3.5), cand(0.8, 3.6, 4.0), cand(0.7, 10, 10), cand(0.3, 21.5, 21.5)],
                         two_lesions())
    b = match_candidates([cand(0.6, 5, 5), cand(0.2, 9, 9)], np.zeros((32, 32), bool))
    f = froc([a, b])
    assert (f.n_images, f.n_lesions) == (2, 2)
    assert f.fp_per_image == [0.0, 0.0, 0.5, 1.0, 1.0, 1.5]
    assert f.sensitivity == [0.0, 0.5, 0.5, 0.5, 1.0, 1.0]
    assert f.thresholds[1:] == [0.9, 0.7, 0.6, 0.3, 0.2]
    assert f.at_rates == {0.25: 0.5, 0.5: 0.5, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0}
    assert f.score == pytest.approx(0.8)
    # fewer FPs than a rate allows: the sensitivity of all candidates, not extended
    assert froc([a]).at_rates[0.25] == 0.5 and froc([a]).at_rates[4.0] == 1.0
    # no lesion anywhere: NaN sensitivities
    assert math.isnan(froc([b]).score)
    with pytest.raises(InvalidInputError):
        froc([])


def test_image_auc_by_hand_and_against_core() -> None:
    scores, pos = [0.9, 0.8, 0.4, 0.4, 0.1], [True, False, True, False, False]
    assert image_auc(scores, pos) == pytest.approx(4.5 / 6)
    assert image_auc(scores, pos) == pytest.approx(roc_auc(torch.tensor(scores), torch.tensor(pos)))
    assert math.isnan(image_auc([0.1, 0.2], [True, True]))
    with pytest.raises(InvalidInputError):
        image_auc([0.1], [True, False])


def test_report_rows_roundtrip_markdown_and_figure(tmp_path: Path) -> None:
    truth = two_lesions()
    pred = np.zeros_like(truth)
    pred[2:6, 2:4] = True  # half of L1: Dice 2*8/(8+32) = 0.4
    score_map = np.full(truth.shape, 0.75, np.float32)
    tissue = np.ones_like(truth)
    normal_pred = np.zeros_like(truth)
    normal_pred[0:4, 0:4] = True
    rows = [image_row("a", pred, truth, lesions_of(pred, score_map), 0.9),
            image_row("b", normal_pred, np.zeros_like(truth), [cand(0.6, 1.5, 1.5)], 0.4, tissue=tissue)]
    assert rows[0].dice == pytest.approx(0.4) and rows[0].lesion_scores == [0.75, None]
    assert (rows[1].false_pixels, rows[1].false_fraction) == (16, 16 / 1024) and math.isnan(rows[1].dice)
    report = WholeReport(rows, "tiny")
    assert report.mean_dice == pytest.approx(0.4) and report.auc == 1.0 and report.false_masks == 1.0
    f = report.froc()
    assert f.at_rates[0.25] == 0.5 and f.at_rates[1.0] == 0.5 and set(f.at_rates) == set(FP_RATES)
    again = WholeReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.summary()["froc"] == report.summary()["froc"] and again.mean_dice == report.mean_dice
    md = report.to_markdown()
    assert "| 0.400 |" in md and "0.25 | 0.5 | 1 | 2 | 4" in md
    out = report.write(tmp_path / "w")
    assert {p.name for p in out.iterdir()} == {"whole.json", "whole.md", "froc.png"}
    with pytest.raises(InvalidInputError):
        WholeReport.from_dict({"rows": [{"id": "x"}]})
