"""Baseline distillation losses for the comparison tables (METHODS.md §6): KD, AT, CWD, DIST.

The "student only" row needs no class here: the engine trains with the ground-truth loss alone.

Conventions (as in :mod:`common.losses.iad`): ``forward(student, teacher)``, the student first; teacher tensors
are ``.detach()``-ed inside the loss. When the teacher's logits have another spatial size than the student's,
KD, CWD and DIST resize the teacher logits to the student's size (bilinear, ``align_corners=False``; trilinear in
3D). AT resizes the student's attention map to the teacher's, as the brief for AT asks. 2D and 3D inputs work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.losses.functional import normalise_logits, resize_spatial, resolve_logit_norm

__all__ = [
    "KnowledgeDistillationLoss",
    "AttentionTransferLoss",
    "ChannelWiseDistillationLoss",
    "DISTLoss",
    "attention_map",
    "pearson_correlation",
]


def _class_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log S(·) over the class axis; for K = 1 the two-class [log(1 − σ), log σ] (binary case), via logsigmoid."""
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return F.log_softmax(logits, dim=1)


def _teacher_like(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Detach the teacher map, resize it to the student's spatial size and check the shapes match."""
    teacher = resize_spatial(teacher.detach(), student.shape[2:]).to(student.dtype)
    if teacher.shape != student.shape:
        raise ValueError(f"Teacher {tuple(teacher.shape)} vs student {tuple(student.shape)}.")
    return teacher


class KnowledgeDistillationLoss(nn.Module):
    """Pixel-wise knowledge distillation (Hinton et al., 2015), METHODS.md §6 "KD".

        L_kd = T² · mean_{b,pixel} Σ_k S(O_t/T)_k · (log S(O_t/T)_k − log S(O_s/T)_k)

    i.e. KL(S(O_t/T) ‖ S(O_s/T)) summed over classes and averaged over the B·H·W pixels. K = 1: the binary KL
    between Bernoulli(σ(O_t/T)) and Bernoulli(σ(O_s/T)). Default T = 4.

    ``logit_norm`` standardises both sides first (:func:`~common.losses.functional.normalise_logits`; ``zscore`` is
    Sun et al.'s logit-standardised KD, where T then acts on z-scores, so a smaller T than on raw logits).
    """

    def __init__(self, temperature: float = 4.0, logit_norm: str = "none") -> None:
        super().__init__()
        resolve_logit_norm(logit_norm, 3)
        self.temperature, self.logit_norm = temperature, logit_norm

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        teacher_logits = normalise_logits(_teacher_like(teacher_logits, student_logits), self.logit_norm)
        student_logits = normalise_logits(student_logits, self.logit_norm)
        log_ps = _class_log_probs(student_logits / t)
        log_pt = _class_log_probs(teacher_logits / t)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
        return kl.mean() * t**2


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of Zagoruyko & Komodakis: mean over channels of |F|^p, shape (B,*spatial)."""
    return feature.abs().pow(p).mean(dim=1)


class AttentionTransferLoss(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis, 2017), METHODS.md §6 "AT", p = 2.

        at(F)  = vec(mean_c |F_c|^p) / ||vec(mean_c |F_c|^p)||₂        (per sample)
        L_at   = (1/J) · Σ_j mean_{b,i} (at(F_s^j) − at(F_t^j))²_{b,i}     over the J matched stages

    Per stage this is the released code's ``(at(x) - at(y)).pow(2).mean()``; the released code sums the stages
    with weight β/2 (β = 1000), we average them (a factor J) and leave the weight to the config. Channel counts
    may differ (the map is a channel mean); when spatial sizes differ the student's map is resized (bilinear) to
    the teacher's before normalisation.

    ``forward(student_features, teacher_features)`` takes one tensor or matching sequences of tensors.
    """

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = p

    def forward(
        self,
        student_features: torch.Tensor | Sequence[torch.Tensor],
        teacher_features: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        if isinstance(student_features, torch.Tensor):
            student_features = [student_features]
        if isinstance(teacher_features, torch.Tensor):
            teacher_features = [teacher_features]
        if len(student_features) != len(teacher_features) or len(student_features) == 0:
            raise ValueError(f"Got {len(student_features)} student and {len(teacher_features)} teacher stages.")
        losses = []
        for fs, ft in zip(student_features, teacher_features):
            a_t = attention_map(ft.detach(), self.p).to(fs.dtype)
            a_s = attention_map(fs, self.p)
            a_s = resize_spatial(a_s.unsqueeze(1), a_t.shape[1:]).squeeze(1)
            diff = F.normalize(a_s.flatten(1), dim=1) - F.normalize(a_t.flatten(1), dim=1)
            losses.append(diff.pow(2).mean())
        return torch.stack(losses).mean()


class ChannelWiseDistillationLoss(nn.Module):
    """Channel-wise distillation (Shu et al., ICCV 2021), METHODS.md §6 "CWD".

        φ(y_c) = softmax over the H·W positions of y_c / T                 (per sample b, channel c)
        L_cwd  = T² / (B·C) · Σ_{b,c} Σ_i φ(t_{b,c})_i · (log φ(t_{b,c})_i − log φ(s_{b,c})_i)

    Default T = 4. Works on logits (C = K, also K = 1) or on any feature maps with equal channel counts.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        teacher = _teacher_like(teacher, student)
        b, c = student.shape[:2]
        log_ps = F.log_softmax(student.flatten(2) / t, dim=-1)
        log_pt = F.log_softmax(teacher.flatten(2) / t, dim=-1)
        return (log_pt.exp() * (log_pt - log_ps)).sum() * t**2 / (b * c)


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation of two (N,M) tensors, as in the DIST code (ε added to the norm product)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DISTLoss(nn.Module):
    """DIST (Huang et al., NeurIPS 2022) for segmentation, pixels as instances, METHODS.md §6 "DIST".

    With Y_s = S(O_s/τ), Y_t = S(O_t/τ) reshaped to (N, K), N = B·H·W pixels of the whole batch
    (as the DIST segmentation code does):

        inter = 1 − (1/N) · Σ_i ρ(Y_s[i, :], Y_t[i, :])      (per pixel, across classes)
        intra = 1 − (1/K) · Σ_k ρ(Y_s[:, k], Y_t[:, k])      (per class, across pixels)
        L_dist = τ² · (β · inter + γ · intra)

    ρ is the Pearson correlation with ε = 1e-8 in the denominator. Defaults β = γ = τ = 1. K = 1: the
    probabilities are the two-class [1 − σ, σ]. Note that for two classes the inter term is ±1 per pixel
    (two-point correlation), so the intra term carries the signal.
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        tau = self.temperature
        teacher_logits = _teacher_like(teacher_logits, student_logits)
        y_s = _class_log_probs(student_logits / tau).exp()
        y_t = _class_log_probs(teacher_logits / tau).exp()
        k = y_s.shape[1]
        y_s, y_t = y_s.movedim(1, -1).reshape(-1, k), y_t.movedim(1, -1).reshape(-1, k)
        inter = 1.0 - pearson_correlation(y_s, y_t).mean()
        intra = 1.0 - pearson_correlation(y_s.t(), y_t.t()).mean()
        return tau**2 * (self.beta * inter + self.gamma * intra)
