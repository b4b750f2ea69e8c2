"""TS-KD pre-training losses (METHODS.md §3): L = λ_f·MSE(neck(h_s), E_t) + λ_p·MSE(O_s, O_t).

The feature term is :class:`FeatureAlignmentLoss`, below. The prediction term MSE(O_s, O_t) is IAD's soft-label
distillation with the student's logits resized to the teacher's size:
``common.losses.iad.SoftLabelDistillationLoss(resize="student_to_teacher")``.

The teacher's image embedding E_t is 256×(s/16)² for SAM's ViTs, like the student's neck output, but LiteMedSAM's
TinyViT gives 256×(s/4)². The feature term then average-pools E_t to the student's grid (area averaging: each student
token is matched with the mean of the teacher pixels it covers); a teacher grid coarser than the student's is upsampled
bilinearly instead. Both terms are plain means over every element; the teacher side is detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.losses.functional import match_grid

__all__ = ["FeatureAlignmentLoss"]


class FeatureAlignmentLoss(nn.Module):
    """TS-KD's feature term (METHODS.md §3): L_f = MSE(neck(h_s), match_grid(E_t)), a mean over every element.

    ``match_grid`` brings E_t to the student's token grid (area average when finer, bilinear when coarser). Batch and
    channel counts must agree (the neck's ``embed_dim`` is the teacher's embedding width).
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[:2] != teacher.shape[:2]:
            raise ValueError(
                f"student embedding {tuple(student.shape)} and teacher embedding {tuple(teacher.shape)} differ in "
                "batch or channels: set the student's embed_dim to the teacher's embedding width."
            )
        return F.mse_loss(student, match_grid(teacher.detach().to(student.dtype), student.shape[2:]))
