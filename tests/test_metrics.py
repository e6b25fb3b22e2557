"""camseg.core.metrics: Dice with its edge cases, mean Dice, ROC AUC, accuracy, confusion."""

from __future__ import annotations

import math

import pytest
import torch

from camseg.core.metrics import accuracy, confusion, dice, mean_dice, roc_auc


def m(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# ------------------------------------------------------------------ Dice
def test_dice_identical_is_one() -> None:
    a = m([[1, 1, 0], [0, 1, 0]])
    assert float(dice(a, a)) == 1.0


def test_dice_disjoint_is_zero() -> None:
    assert float(dice(m([[1, 1, 0, 0]]), m([[0, 0, 1, 1]]))) == 0.0


def test_dice_known_values() -> None:
    # 2x2 square vs the same square shifted by one column: |P∩T| = 2, |P| = |T| = 4
    p = torch.zeros(4, 4, dtype=torch.bool)
    t = torch.zeros(4, 4, dtype=torch.bool)
    p[0:2, 0:2] = True
    t[0:2, 1:3] = True
    assert float(dice(p, t)) == pytest.approx(2 * 2 / (4 + 4))
    # |P| = 3, |T| = 1, inside: 2 * 1 / 4
    assert float(dice(m([[1, 1, 1, 0]]), m([[0, 1, 0, 0]]))) == pytest.approx(0.5)
    # |P| = 2, |T| = 1 (the module's doctest)
    assert float(dice(m([[1, 1, 0, 0]]), m([[1, 0, 0, 0]]))) == pytest.approx(2 / 3)


def test_dice_empty_cases() -> None:
    empty = torch.zeros(3, 3, dtype=torch.bool)
    some = empty.clone()
    some[1, 1] = True
    assert float(dice(empty, empty)) == 1.0
    assert float(dice(some, empty)) == 0.0
    assert float(dice(empty, some)) == 0.0


def test_dice_batched() -> None:
    pred = torch.zeros(4, 5, 5, dtype=torch.bool)
    truth = torch.zeros(4, 5, 5, dtype=torch.bool)
    pred[0, :2] = truth[0, :2] = True  # identical -> 1
    pred[1, 0] = True  # one empty -> 0
    pred[2, 0, :4] = True
    truth[2, 0, 2:] = True  # inter 2, sizes 4 + 3 -> 4/7
    # sample 3: both empty -> 1
    d = dice(pred, truth)
    assert d.shape == (4,) and d.dtype == torch.float64
    torch.testing.assert_close(d, torch.tensor([1.0, 0.0, 4 / 7, 1.0], dtype=torch.float64))
    # channels or depth: flattened per sample
    assert dice(pred[:, None], truth[:, None]).shape == (4,)
    # integer masks count non-zero as true
    torch.testing.assert_close(dice(pred.long() * 3, truth.to(torch.uint8)), d)


def test_dice_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        dice(torch.zeros(2, 3, 3, dtype=torch.bool), torch.zeros(2, 3, 4, dtype=torch.bool))


def test_mean_dice_with_selection() -> None:
    pred = torch.zeros(3, 2, 2, dtype=torch.bool)
    truth = torch.zeros(3, 2, 2, dtype=torch.bool)
    pred[0, 0, 0] = truth[0, 0, 0] = True  # 1.0
    pred[1, 0] = True
    truth[1, 0, 0] = True  # 2/3
    # sample 2: both empty -> 1.0
    assert mean_dice(pred, truth) == pytest.approx((1 + 2 / 3 + 1) / 3)
    select = torch.tensor([True, True, False])
    assert mean_dice(pred, truth, select) == pytest.approx((1 + 2 / 3) / 2)
    assert mean_dice(pred, truth, torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)
    assert math.isnan(mean_dice(pred, truth, torch.zeros(3, dtype=torch.bool)))


# ------------------------------------------------------------------ ROC AUC
def test_roc_auc_known_values() -> None:
    pos = torch.tensor([0, 0, 1, 1])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), pos) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), pos) == 0.0
    assert roc_auc(torch.full((4,), 0.5), pos) == 0.5
    # pairs (pos, neg): (0.8 vs 0.1, 0.7) win, (0.4 vs 0.1) win, (0.4 vs 0.7) lose -> 3/4
    assert roc_auc(torch.tensor([0.1, 0.7, 0.8, 0.4]), pos) == pytest.approx(0.75)
    # one tie counts half: 0.5 vs 0.5 ties, 0.5 vs 0.1 wins -> (1 + 0.5) / 2
    assert roc_auc(torch.tensor([0.1, 0.5, 0.5]), torch.tensor([0, 0, 1])) == pytest.approx(0.75)


def test_roc_auc_one_class_is_nan() -> None:
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1])))
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([False, False])))


def test_roc_auc_accepts_grad_tensors() -> None:
    s = torch.tensor([0.2, 0.9], requires_grad=True)
    assert roc_auc(s, torch.tensor([0, 1])) == 1.0


# ------------------------------------------------------------------ accuracy, confusion
def test_accuracy() -> None:
    assert accuracy(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0])) == 0.75
    assert accuracy(torch.tensor([2, 2]), torch.tensor([2, 2])) == 1.0
    assert math.isnan(
        accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    )


def test_confusion() -> None:
    c = confusion(torch.tensor([0, 1, 1, 0, 1]), torch.tensor([0, 1, 0, 0, 1]))
    assert c.tolist() == [[2, 1], [0, 2]]  # rows: truth, columns: prediction
    c3 = confusion(torch.tensor([2, 0]), torch.tensor([1, 2]), num_classes=3)
    assert c3.tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0]]
