"""Inverse-frequency class weights (common.data.class_weights) against counts and weights worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.data.class_weights import class_weights_from_datalist, class_weights_from_labels, inverse_frequency_weights
from common.errors import DataError
from common.losses.iad import PrototypeAlignmentLoss

LAB0 = np.array([[0, 0], [0, 1]], dtype=np.uint8)
LAB1 = np.array([[0, 2], [2, 2]], dtype=np.uint8)
# LAB0 + LAB1: counts (4, 1, 3) of 8 voxels, inverse frequencies (2, 8, 8/3), their mean 38/9
BOTH = [2 * 9 / 38, 8 * 9 / 38, 8 / 3 * 9 / 38]  # = (9, 36, 12) / 19


def _dataset(root: Path, lists: dict[str, list[dict]]) -> Path:
    """A dataset folder: one 2×2 image per item, the labels named in ``lists``, and datalist.json."""
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "lab0.npy", LAB0)
    np.save(root / "lab1.npy", LAB1)
    for items in lists.values():
        for item in items:
            np.save(root / item["image"], np.zeros((2, 2), dtype=np.float32))
    (root / "datalist.json").write_text(json.dumps(lists))
    return root


def test_inverse_frequency_weights_by_hand() -> None:
    labels = [np.array([[0, 0, 0, 1]]), torch.tensor([[0, 0, 2, 2]])]
    weights = class_weights_from_labels(labels, num_classes=4)
    # counts (5, 1, 2, 0), total 8: inverse frequencies 8/5, 8, 4; their mean 13.6/3; unseen class 3 → 1
    mean = (8 / 5 + 8 + 4) / 3
    assert weights == pytest.approx([8 / 5 / mean, 8 / mean, 4 / mean, 1.0])
    assert np.mean(weights[:3]) == pytest.approx(1.0)
    sqrt = inverse_frequency_weights([5, 1, 2], power=0.5)
    inv = [math.sqrt(8 / 5), math.sqrt(8), math.sqrt(4)]
    assert sqrt == pytest.approx([v / (sum(inv) / 3) for v in inv])


def test_inverse_frequency_binary_and_out_of_range_values() -> None:
    # K = 1 counts two label regions; 255 is ignored
    weights = class_weights_from_labels([np.array([0, 0, 0, 1, 255])], num_classes=1)
    assert weights == pytest.approx([(4 / 3) / ((4 / 3 + 4) / 2), 4 / ((4 / 3 + 4) / 2)])


def test_inverse_frequency_refuses_bad_counts() -> None:
    with pytest.raises(ValueError, match="every class count is zero"):
        inverse_frequency_weights([0, 0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        inverse_frequency_weights([3, -1])


def test_class_weights_from_datalist(tmp_path) -> None:
    training = [
        {"image": "img0.npy", "label": "lab0.npy"},
        {"image": "img1.npy", "label": "lab1.npy"},
        {"image": "img2.npy"},  # unlabelled item: skipped
    ]
    dataset = _dataset(tmp_path / "ds", {"training": training, "unlabelled": [{"image": "img3.npy"}]})
    weights = class_weights_from_datalist(dataset, num_classes=3)
    assert weights == pytest.approx(BOTH) and weights == pytest.approx([9 / 19, 36 / 19, 12 / 19])
    assert isinstance(weights, list) and all(isinstance(w, float) for w in weights)
    # power 0.5: square roots of (2, 8, 8/3) over their mean
    roots = [math.sqrt(2), math.sqrt(8), math.sqrt(8 / 3)]
    expected = [r / (sum(roots) / 3) for r in roots]
    assert class_weights_from_datalist(dataset, num_classes=3, power=0.5) == pytest.approx(expected)
    # the list is what the loss takes
    loss_fn = PrototypeAlignmentLoss(num_classes=3, class_weights=class_weights_from_datalist(dataset, 3))
    assert loss_fn.class_weights.tolist() == pytest.approx(BOTH)
    with pytest.raises(DataError, match="No 'label' entries"):
        class_weights_from_datalist(dataset, 3, key="unlabelled")


def test_class_weights_from_the_training_folds_only(tmp_path) -> None:
    # 3 folds, fold 0: tests on fold_0, validates on fold_1, trains on fold_2 (LAB1 alone)
    lists = {
        "fold_0": [{"image": "img0.npy", "label": "lab0.npy"}],
        "fold_1": [{"image": "img1.npy", "label": "lab0.npy"}],
        "fold_2": [{"image": "img2.npy", "label": "lab1.npy"}],
    }
    dataset = _dataset(tmp_path / "ds", lists)
    # LAB1: counts (1, 0, 3), inverse frequencies 4 and 4/3 (mean 8/3), unseen class 1 → 1
    assert class_weights_from_datalist(dataset, 3, fold=0) == pytest.approx([1.5, 1.0, 0.5])


def test_config_item_disabled_means_all_ones(tmp_path) -> None:
    """The bundle's form: a class_weights item that is disabled (None → all ones) unless switched on."""
    training = [{"image": "img0.npy", "label": "lab0.npy"}, {"image": "img1.npy", "label": "lab1.npy"}]
    config = {
        "dataset_dir": str(_dataset(tmp_path / "ds", {"training": training})),
        "num_classes": 3,
        "class_weights": {
            "_target_": "common.data.class_weights.class_weights_from_datalist",
            "_disabled_": True,
            "dataset_dir": "@dataset_dir",
            "num_classes": "@num_classes",
        },
        "cpd": {
            "_target_": "common.losses.iad.PrototypeAlignmentLoss",
            "num_classes": "@num_classes",
            "class_weights": "@class_weights",
        },
    }
    assert ConfigParser(config).get_parsed_content("cpd").class_weights.tolist() == [1.0, 1.0, 1.0]
    parser = ConfigParser(config)
    parser["class_weights#_disabled_"] = "false"  # as on the command line: --class_weights#_disabled_ false
    assert parser.get_parsed_content("cpd").class_weights.tolist() == pytest.approx(BOTH)
    parser = ConfigParser(config)
    parser["class_weights"] = [1, 2, 4]  # --class_weights "[1, 2, 4]"
    assert parser.get_parsed_content("cpd").class_weights.tolist() == [1.0, 2.0, 4.0]
