"""The resolution ceiling: the oracle at an S x S output grid, on labels whose answer is known by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scripts import resolution_ceiling


def _onehot(label: np.ndarray, k: int = 2) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(label).long(), k).permute(2, 0, 1).bool()


def test_the_oracle_keeps_what_the_grid_resolves_and_loses_what_it_does_not():
    half = np.zeros((8, 8), dtype=np.int64)
    half[:, :4] = 1  # the left half: cells of a 4 x 4 grid are all or nothing, and bilinear splits at the middle
    assert torch.equal(resolution_ceiling.oracle_at_size(_onehot(half), 4), _onehot(half))
    line = np.zeros((16, 16), dtype=np.int64)
    line[:, 5] = 1  # a 1-pixel line: a quarter of each 4-pixel cell of a 4 x 4 grid, so background wins everywhere
    assert not resolution_ceiling.oracle_at_size(_onehot(line), 4)[1].any()
    assert torch.equal(resolution_ceiling.oracle_at_size(_onehot(line), 16), _onehot(line))  # its own grid


def test_ceiling_scores_the_oracle_per_size_inside_the_roi(tmp_path: Path):
    line = np.zeros((16, 16), dtype=np.uint8)
    line[:, 5] = 1
    line[:, 12:] = 1  # a 4-pixel band, which a 4 x 4 grid keeps
    roi = np.zeros((16, 16), dtype=np.uint8)
    roi[:, 8:] = 1  # only the band is scored
    for name, array in (("label.png", line), ("roi.png", roi * 255)):
        Image.fromarray(array).save(tmp_path / name)
    item = {"label": str(tmp_path / "label.png"), "roi": str(tmp_path / "roi.png")}
    table = resolution_ceiling.ceiling([item], 2, ["vessel"], [4, 16])
    assert table[4]["classes"]["vessel"]["dice_mean"] == pytest.approx(1.0)  # inside the roi: the band only
    without_roi = resolution_ceiling.ceiling([{"label": item["label"]}], 2, ["vessel"], [4, 16])
    # by hand: at 4 x 4 the line (16 pixels) is lost and the band (64) kept: Dice = 2 * 64 / (64 + 80)
    assert without_roi[4]["classes"]["vessel"]["dice_mean"] == pytest.approx(128 / 144)
    assert without_roi[16]["classes"]["vessel"]["dice_mean"] == pytest.approx(1.0)
    json.dumps(table)  # what --out writes
