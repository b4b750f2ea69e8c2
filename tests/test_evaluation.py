"""Per-class Dice / HD95 and their summary, against values computed by hand."""

from __future__ import annotations

import math

import torch

from common.evaluation import case_metrics, summarize
from common.handlers.segmentation_report import region_channels


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


BRATS_REGIONS = {"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}


def test_brats_regions_by_hand():
    """Classes 1..4 in slabs of known size, a prediction that confuses some of them: Dice of whole tumour, tumour
    core and enhancing tumour from the voxel counts, and ET's HD95 with an anisotropic spacing."""
    gt = torch.zeros(8, 6, 6, dtype=torch.long)
    gt[0:2, :4, :5] = 2  # oedema, 40 voxels
    gt[2, :4, :5] = 1  # necrosis, 20
    gt[3, :4, :5] = 3  # non-enhancing, 20
    gt[4, :4, :5] = 4  # enhancing, 20: WT 100, TC 60, ET 20
    pred = torch.zeros_like(gt)
    pred[0:2, :4, :5] = 2  # oedema right
    pred[2:4, :4, :5] = 3  # necrosis called non-enhancing: still core
    pred[4, :4, :2] = 4  # 8 of the 20 enhancing voxels ...
    pred[4, :4, 2:5] = 2  # ... the other 12 called oedema (whole tumour, not core)
    pred[5, :4, :5] = 4  # 20 enhancing voxels beyond the tumour, next to the enhancing slab
    m = case_metrics(region_channels(_onehot(pred, 5), BRATS_REGIONS), region_channels(_onehot(gt, 5), BRATS_REGIONS),
                     spacing=[2.0, 1.0, 1.0], include_background=True)  # fmt: skip
    # WT: |P| = 120, |G| = 100, overlap 100; TC: |P| = 20 + 20 + 8 + 20 = 68, |G| = 60, overlap 48; ET: 28, 20, 8
    assert m["dice"] == [2 * 100 / 220, 2 * 48 / 128, 2 * 8 / 48]
    assert m["label_sum"] == [100.0, 60.0, 20.0] and m["pred_sum"] == [120.0, 68.0, 28.0]
    # ET: every voxel of either mask is at most one slab (2 mm along the first axis) from the other
    assert math.isclose(m["hd95"][2], 2.0)
    classes = case_metrics(_onehot(pred, 5), _onehot(gt, 5))["dice"]  # the four classes, for contrast
    assert classes == [0.0, 2 * 40 / 92, 2 * 20 / 60, 2 * 8 / 48]


def test_region_channels_are_unions_of_classes():
    label = torch.tensor([0, 1, 2, 3, 4, 4])
    regions = region_channels(_onehot(label, 5), BRATS_REGIONS)
    assert regions.tolist() == [[0, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    assert region_channels(_onehot(label, 5), {}).shape == (0, 6)
