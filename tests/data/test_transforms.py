"""Named callables of common.data.transforms that the configs use in place of expressions."""

from __future__ import annotations

import pickle

import torch
from monai.transforms import CropForegroundd

from common.data.transforms import AboveThreshold


def test_above_threshold_crops_to_voxels_above_it_in_any_channel():
    image = torch.zeros(2, 8, 8, 8)
    image[0, 2:4, 3:5, 1:2] = 0.5  # first channel bright in one block
    image[1, 5, 6, 6] = 0.2  # second channel bright in one voxel only
    image[0, 0, 0, 0] = -1.0  # below zero: background
    select = AboveThreshold(0.0)
    out = CropForegroundd(keys="image", source_key="image", select_fn=select, allow_smaller=True)({"image": image})
    assert tuple(out["image"].shape) == (2, 4, 4, 6)  # rows 2..5, cols 3..6, slices 1..6
    high = CropForegroundd(keys="image", source_key="image", select_fn=AboveThreshold(0.3), allow_smaller=True)
    assert tuple(high({"image": image})["image"].shape) == (2, 2, 2, 1)
    assert pickle.loads(pickle.dumps(select)).threshold == 0.0  # DataLoader workers receive it
