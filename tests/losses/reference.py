"""Numpy reference utilities shared by the loss tests (the expected values are computed with explicit loops)."""

from __future__ import annotations

import numpy as np
import torch


def np64(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def block_mean(x: np.ndarray) -> np.ndarray:
    """2× downsampling by 2×2 block means (= bilinear, align_corners=False, for an exact factor 2)."""
    return 0.25 * (x[..., ::2, ::2] + x[..., 1::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, 1::2])
