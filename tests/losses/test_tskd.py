"""TS-KD pre-training losses (METHODS.md §3) against values computed by hand with numpy loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from common.losses.functional import match_grid
from common.losses.iad import SoftLabelDistillationLoss
from common.losses.tskd import FeatureAlignmentLoss


def test_feature_alignment_pools_a_finer_teacher_grid_by_area_then_takes_the_mse() -> None:
    student = torch.randn(2, 3, 2, 2)
    teacher = torch.randn(2, 3, 4, 4)  # LiteMedSAM-like: 4x finer than the student's tokens (here 2x)
    s, t = student.numpy().astype(np.float64), teacher.numpy().astype(np.float64)
    total = 0.0
    for b in range(2):
        for c in range(3):
            for i in range(2):
                for j in range(2):
                    pooled = t[
                        b, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2
                    ].mean()  # the teacher pixels token (i,j) covers
                    total += (s[b, c, i, j] - pooled) ** 2
    expected = total / (2 * 3 * 2 * 2)
    assert FeatureAlignmentLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_feature_alignment_on_equal_grids_is_the_plain_mse() -> None:
    student, teacher = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    expected = ((student.double() - teacher.double()) ** 2).sum().item() / student.numel()
    assert FeatureAlignmentLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert FeatureAlignmentLoss()(teacher, teacher).item() == 0.0


def test_a_coarser_teacher_is_upsampled_and_channel_mismatch_is_named() -> None:
    teacher = torch.arange(4.0).view(1, 1, 2, 2)
    up = match_grid(teacher, (4, 4))
    assert up.shape == (1, 1, 4, 4) and up.mean().item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="set the student's embed_dim"):
        FeatureAlignmentLoss()(torch.randn(1, 8, 2, 2), torch.randn(1, 4, 2, 2))


def test_prediction_alignment_is_the_mse_of_logits_resizing_the_student() -> None:
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    expected = sum(
        (float(student[b, k, i, j]) - float(teacher[b, k, i, j])) ** 2
        for b in range(2) for k in range(3) for i in range(4) for j in range(4)
    ) / 96  # fmt: skip
    assert SoftLabelDistillationLoss(resize="student_to_teacher")(student, teacher).item() == pytest.approx(
        expected, rel=1e-5
    )
    # a constant student map resized to the teacher's size stays constant: the MSE to a constant teacher is exact
    const = SoftLabelDistillationLoss(resize="student_to_teacher")(
        torch.full((1, 2, 2, 2), 3.0), torch.full((1, 2, 8, 8), 1.0)
    )
    assert const.item() == pytest.approx(4.0)


def test_gradcheck_and_teacher_detached() -> None:
    s = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: FeatureAlignmentLoss()(x, t), (s,))
    t2 = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: SoftLabelDistillationLoss(resize="student_to_teacher")(x, t2), (s,))
    (FeatureAlignmentLoss()(s, t) + SoftLabelDistillationLoss(resize="student_to_teacher")(s, t2)).backward()
    assert s.grad is not None and t.grad is None and t2.grad is None
