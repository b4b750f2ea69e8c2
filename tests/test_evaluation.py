"""Per-class Dice / HD95 and their summary, against values computed by hand."""

from __future__ import annotations

import math

import torch

from common.evaluation import case_metrics, summarize


def _onehot(label: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(label.long(), k).movedim(-1, 0)


def test_dice_by_hand_and_empty_conventions():
    gt = torch.zeros(10, 10, dtype=torch.long)
    gt[2:6, 2:6] = 1  # 16 px of class 1; class 2 absent
    pred = torch.zeros(10, 10, dtype=torch.long)
    pred[2:6, 3:7] = 1  # 16 px, 12 overlap
    m = case_metrics(_onehot(pred, 4), _onehot(gt, 4), spacing=[1.0, 1.0])
    assert math.isclose(m["dice"][0], 2 * 12 / 32)
    assert math.isnan(m["dice"][1]) and math.isnan(m["hd95"][1])  # class 2: both empty
    pred[8, 8] = 3  # class 3 predicted, absent from the ground truth
    m = case_metrics(_onehot(pred, 4), _onehot(gt, 4), spacing=[2.0, 1.0])
    assert m["dice"][2] == 0.0 and math.isclose(m["hd95"][2], math.sqrt(20**2 + 10**2))


def test_hd95_uses_spacing():
    gt = torch.zeros(20, 20, dtype=torch.long)
    gt[5:12, 5:12] = 1
    pred = torch.roll(gt, shifts=3, dims=0)
    iso = case_metrics(_onehot(pred, 2), _onehot(gt, 2), spacing=[1.0, 1.0])["hd95"][0]
    aniso = case_metrics(_onehot(pred, 2), _onehot(gt, 2), spacing=[2.0, 1.0])["hd95"][0]
    assert math.isclose(iso, 3.0) and math.isclose(aniso, 6.0)


def test_summary_means_and_global_dice():
    cases = [
        {"dice": [0.5, math.nan], "hd95": [2.0, math.nan], "tp": [1, 0], "pred_sum": [2, 0], "label_sum": [2, 0]},
        {"dice": [1.0, 0.0], "hd95": [0.0, 9.0], "tp": [3, 0], "pred_sum": [3, 1], "label_sum": [3, 0]},
    ]
    s = summarize(cases, ["a", "b"])
    assert math.isclose(s["classes"]["a"]["dice_mean"], 0.75) and s["classes"]["b"]["cases_scored"] == 1
    assert math.isclose(s["classes"]["a"]["global_dice"], 2 * 4 / 10)
    assert s["classes"]["b"]["global_dice"] == 0.0
    assert math.isclose(s["mean_dice"], (0.5 + 0.5) / 2)  # mean over classes per case, then over cases
    assert math.isclose(s["mean_hd95"], (2.0 + 4.5) / 2)
