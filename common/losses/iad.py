"""Losses of IAD, infusion → assimilation distillation (METHODS.md §4).

Stage 1, Knowledge Infusion (KIS), teacher frozen:

- :class:`SoftLabelDistillationLoss`: L_sld, L2 between teacher and student logits (also TS-KD's prediction term,
  with ``resize="student_to_teacher"``).
- :class:`PrototypeAlignmentLoss`: L_cpd, class-weighted alignment of per-image class prototypes. The per-class
  weights arrive as a list (``None``: all ones); weights counted from the training labels ("auto", inverse class
  frequency) come from :func:`common.data.class_weights.class_weights_from_datalist`, a data component.

Stage 2, Knowledge Assimilation (KAS), from the stage-1 student:

- :class:`KnowledgeAssimilationLoss`: a module owning the two trainable projections and returning
  ``{"rfc": L_rfc, "css": L_css}``; the formulas are the pure functions :func:`reverse_feature_constraint` and
  :func:`contrastive_semantic_loss`.

Conventions shared by every loss here:

- ``forward(student, teacher, ...)``: the student comes first, the teacher second; teacher tensors are
  ``.detach()``-ed inside the loss, so no gradient ever reaches the teacher.
- S(·) is the softmax over the class axis (dim 1), or the sigmoid when that axis has one channel (K = 1).
- 2D (B,C,H,W) and 3D (B,C,D,H,W) tensors are both accepted; "bilinear" below means trilinear in 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.losses.functional import (
    class_probabilities,
    normalise_logits,
    num_label_classes,
    resize_label,
    resize_spatial,
    resolve_logit_norm,
)

__all__ = [
    "SoftLabelDistillationLoss",
    "PrototypeAlignmentLoss",
    "reverse_feature_constraint",
    "contrastive_semantic_loss",
    "KnowledgeAssimilationLoss",
]

RESIZE_DIRECTIONS = ("teacher_to_student", "student_to_teacher")


# ----------------------------------------------------------------------------------------------------------------------
# stage 1: knowledge infusion
# ----------------------------------------------------------------------------------------------------------------------
class SoftLabelDistillationLoss(nn.Module):
    """Soft-label distillation: L2 between teacher and student logits, IAD's L_sld and TS-KD's prediction term.

    IAD stage 1 (METHODS.md §4, KIS):  L_sld = (1/B) · Σ_b ||O_t^b − O_s^b||²
    TS-KD pre-training (METHODS.md §3): the λ_p·MSE(O_s, O_t) term of L = λ_f·MSE(neck(h_s), E_t) + λ_p·MSE(O_s, O_t)
    Implemented:  mean over all B·K·H·W elements of (O_t − O_s)²  (``F.mse_loss``)
                  = paper's L_sld / (K·H·W)   (K·D·H·W in 3D).

    The two differ by the constant factor K·H·W, which the stage weight α absorbs; the element mean keeps the
    value independent of image size and class count ("mean squared error on logits", as METHODS states).
    Teacher logits are detached. When the two spatial sizes differ, one map is resized (bilinear, trilinear in 3D,
    ``align_corners=False``) to the other's size, chosen by ``resize``:

    - ``"teacher_to_student"`` (IAD, the default): the teacher's logits to the student's size; the mean runs over the
      student's pixels.
    - ``"student_to_teacher"`` (TS-KD): the student's logits to the teacher's size (the teacher's full-resolution
      output); the mean runs over the teacher's pixels and the gradient flows back through the interpolation.

    ``logit_norm`` (:func:`~common.losses.functional.normalise_logits`, both sides, after resizing): ``none`` (paper,
    released code), ``center``, ``zscore``, ``image`` or ``auto``; ``tau`` divides the normalised logits.
    """

    def __init__(self, resize: str = "teacher_to_student", logit_norm: str = "none", tau: float = 1.0) -> None:
        super().__init__()
        if resize not in RESIZE_DIRECTIONS:
            raise ValueError(f"resize must be one of {RESIZE_DIRECTIONS}, got '{resize}'.")
        resolve_logit_norm(logit_norm, 3)  # validates the name
        self.resize, self.logit_norm, self.tau = resize, logit_norm, float(tau)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        teacher_logits = teacher_logits.detach()
        if self.resize == "teacher_to_student":
            teacher_logits = resize_spatial(teacher_logits, student_logits.shape[2:])
        else:
            student_logits = resize_spatial(student_logits, teacher_logits.shape[2:])
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"Teacher {tuple(teacher_logits.shape)} vs student {tuple(student_logits.shape)}.")
        teacher_logits = normalise_logits(teacher_logits.to(student_logits.dtype), self.logit_norm, self.tau)
        return F.mse_loss(normalise_logits(student_logits, self.logit_norm, self.tau), teacher_logits)


class PrototypeAlignmentLoss(nn.Module):
    """Class-weighted prototype alignment, IAD stage 1 (METHODS.md §4, KIS).

    For each image b and class n present in Y^b (Ω_b^n = {pixels with Y^b = n}, |Ω_b^n| > 0):

        P^{b,n} = (1/|Ω_b^n|) · Σ_{p ∈ Ω_b^n} O^b[:, p]                   (a C-vector; C = K for logits)
        L_cpd   = Σ_{(b,n) present} w_n · ||P_t^{b,n} − P_s^{b,n}||²  /  #{(b,n) present}      (reduction "present")

    ||·||² is the plain sum of squares over the C channels (no division by C). Absent (b, n) pairs contribute
    nothing and are not counted; if no pair is present (every label value outside [0, N)) the loss is 0, still
    attached to the student's graph. Prototypes are computed with a one-hot einsum (no loop over B×N).

    The released code's choices as options: ``reduction="released"`` takes the mean over all B·N·C prototype entries,
    absent classes included (their prototypes are 0 on both sides), i.e. Σ_{b,n} w_n·Σ_c (·)² / (B·N·C), about
    C·N/#present times smaller; ``norm="l1"`` uses |·| instead of (·)² (a compiled version of the released code).
    ``logit_norm``/``tau`` normalise the logits before the prototypes are taken (not with ``use_features``).

    Inputs:
        - ``use_features=False`` (default, as the released code): the logits (B,K,*spatial). The teacher logits
          are resized (bilinear) to the student's size, and the label to that size with nearest-neighbour.
        - ``use_features=True``: any pair of feature maps with the same channel count C, each resized (bilinear)
          to the label's spatial size.

    Label: (B,1,*spatial) or (B,*spatial) integer classes in [0, N), N = num_classes (N = 2 when num_classes = 1:
    a single sigmoid logit still has a background and a foreground region). Other values are ignored.

    Args:
        num_classes: K, the number of classes including background.
        class_weights: w_n, N floats (paper, Synapse: gallbladder 2, pancreas 4, the rest 1), or ``None`` for all
            ones (the paper's default). Weights from the inverse class frequency of the training labels are computed
            from the data beforehand: :func:`common.data.class_weights.class_weights_from_datalist`.
        use_features: prototypes of feature maps instead of logits (see above).
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Sequence[float] | None = None,
        use_features: bool = False,
        logit_norm: str = "none",
        tau: float = 1.0,
        reduction: str = "present",
        norm: str = "l2",
    ) -> None:
        super().__init__()
        if reduction not in ("present", "released") or norm not in ("l2", "l1"):
            raise ValueError(
                f"reduction must be 'present' or 'released' and norm 'l2' or 'l1', got {reduction}, {norm}."
            )
        resolve_logit_norm(logit_norm, 3)
        self.logit_norm, self.tau, self.reduction, self.norm = logit_norm, float(tau), reduction, norm
        self.num_classes = int(num_classes)
        self.num_label_classes = num_label_classes(self.num_classes)
        self.use_features = use_features
        n = self.num_label_classes
        if class_weights is None:
            weights = [1.0] * n
        elif isinstance(class_weights, str):
            raise ValueError(
                f"class_weights must be None or a list of {n} floats, got '{class_weights}': compute weights from the "
                "labels with common.data.class_weights.class_weights_from_datalist and pass the list."
            )
        else:
            weights = [float(w) for w in class_weights]
        if len(weights) != n:
            raise ValueError(f"Expected {n} class weights, got {len(weights)}.")
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def prototypes(self, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Masked means: (B,C,*spatial) map and (B,N,*spatial) one-hot → (B,N,C) prototypes (0 where absent)."""
        sums = torch.einsum("bnp,bcp->bnc", onehot.flatten(2), x.flatten(2))
        counts = onehot.flatten(2).sum(-1, keepdim=True)
        return sums / counts.clamp_min(1.0)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        teacher = teacher.detach()
        if self.use_features:
            size = label.shape[2:] if label.ndim == student.ndim else label.shape[1:]
            student, teacher = resize_spatial(student, size), resize_spatial(teacher, size)
        else:
            teacher = resize_spatial(teacher, student.shape[2:])
        if teacher.shape != student.shape:
            raise ValueError(f"Teacher {tuple(teacher.shape)} vs student {tuple(student.shape)}.")
        teacher = teacher.to(student.dtype)
        if not self.use_features:
            student = normalise_logits(student, self.logit_norm, self.tau)
            teacher = normalise_logits(teacher, self.logit_norm, self.tau)
        label = resize_label(label, student.shape[2:])
        n = self.num_label_classes
        valid = (label >= 0) & (label < n)
        onehot = F.one_hot(label.clamp(0, n - 1), n).movedim(-1, 1).to(student.dtype)
        onehot = onehot * valid.unsqueeze(1).to(student.dtype)
        present = onehot.flatten(2).sum(-1) > 0  # (B,N)
        diff = self.prototypes(teacher, onehot) - self.prototypes(student, onehot)  # (B,N,C)
        dist = (diff.abs() if self.norm == "l1" else diff.pow(2)).sum(-1)  # (B,N)
        weighted = self.class_weights.to(student.dtype)[None] * dist * present.to(student.dtype)
        if self.reduction == "released":
            return weighted.sum() / diff.numel()
        return weighted.sum() / present.sum().clamp_min(1).to(student.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# stage 2: knowledge assimilation
# ----------------------------------------------------------------------------------------------------------------------
def reverse_feature_constraint(
    x: torch.Tensor, logits: torch.Tensor, eps: float = 1e-6, logit_norm: str = "none", tau: float = 1.0
) -> torch.Tensor:
    """Reverse feature constraint L_rfc, IAD stage 2 (METHODS.md §4, KAS).

    Paper:  L_rfc = (1/B)·Σ_b ||X^b − O_s^b||²
                    + 1 − mean_{b,c} (2·Σ_hw S(X)·S(O_s) + ε) / (Σ_hw S(X) + Σ_hw S(O_s) + ε)
    Implemented with the first term as the mean over all B·K·H·W elements of (X − O_s)² (``F.mse_loss``), i.e.
    the paper's term divided by the constant K·H·W (absorbed by the stage weight γ). The second term is a soft
    Dice between S(X) and S(O_s), per sample and class, averaged. Both inputs receive gradients.

    Args:
        x: X, the projected deep feature, same shape as ``logits``.
        logits: O_s, the student logits (B,K,*spatial).
        eps: ε, smoothing of the Dice ratio.
        logit_norm: normalisation of X and O_s before the MSE (:func:`~common.losses.functional.normalise_logits`);
            the Dice part uses the raw maps.
        tau: τ of that normalisation.
    """
    if x.shape != logits.shape:
        raise ValueError(f"X {tuple(x.shape)} vs logits {tuple(logits.shape)}.")
    mse = F.mse_loss(normalise_logits(x, logit_norm, tau), normalise_logits(logits, logit_norm, tau))
    px, ps = class_probabilities(x).flatten(2), class_probabilities(logits).flatten(2)
    dice = (2.0 * (px * ps).sum(-1) + eps) / (px.sum(-1) + ps.sum(-1) + eps)
    return mse + 1.0 - dice.mean()


def contrastive_semantic_loss(
    logits: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, temperature: float = 1.0, per: str = "sample"
) -> torch.Tensor:
    """Contrastive semantic self-optimisation L_css, IAD stage 2 (METHODS.md §4, KAS).

    L_css = mean_b −log( e^{sim(O_s,F₊)/t} / (e^{sim(O_s,F₊)/t} + e^{sim(O_s,F₋)/t}) ),
    sim(a, b) = cosine similarity of the flattened (K·H·W) maps of one sample; computed as a log-sum-exp.
    ``per="batch"`` (the released code): one cosine over the whole flattened batch tensor, B = 1 in the formula.

    Args:
        logits: O_s (B,K,*spatial).
        positive: F₊ (same shape).
        negative: F₋ (same shape).
        temperature: t.
        per: ``sample`` or ``batch``.
    """
    if per not in ("sample", "batch"):
        raise ValueError(f"per must be 'sample' or 'batch', got '{per}'.")
    flat = (lambda t: t.flatten(1)) if per == "sample" else (lambda t: t.reshape(1, -1))  # noqa: E731
    o = flat(logits)
    sim_pos = F.cosine_similarity(o, flat(positive), dim=1) / temperature
    sim_neg = F.cosine_similarity(o, flat(negative), dim=1) / temperature
    return (torch.logsumexp(torch.stack([sim_pos, sim_neg], dim=1), dim=1) - sim_pos).mean()


class KnowledgeAssimilationLoss(nn.Module):
    """Knowledge assimilation, IAD stage 2 (METHODS.md §4, KAS): reverse feature constraint + contrastive term.

        X   = resize(Conv1×1(F_l)) to O_s's spatial size (bilinear, align_corners=False)
        L_rfc = :func:`reverse_feature_constraint` (X, O_s, ε)
        F₊  = X,   F₋ = Conv3×3((1 − S(F₊)) + (1 − S(O_s)))
        L_css = :func:`contrastive_semantic_loss` (O_s, F₊, F₋, t)

    The two projections (``project``: C_l→K 1×1, ``negative``: K→K 3×3, padding 1) are trainable sub-modules:
    register this loss's parameters with the optimiser and save them in checkpoints. No teacher is involved, so
    KAS can follow any other distillation stage. 2D and 3D (``spatial_dims=3``: 1×1×1 and 3×3×3 convs).

    Args:
        feature_channels: C_l, channels of the deepest encoder feature F_l.
        num_classes: K (K = 1: S is the sigmoid).
        temperature: t of L_css.
        eps: ε of the Dice term in L_rfc.
        spatial_dims: 2 or 3.
        logit_norm: normalisation of X and O_s in L_rfc's MSE (``none`` as the paper; ``auto`` in the bundle).
        tau: τ of that normalisation.
        css: ``per_sample`` (paper) or ``batch`` (released code: one cosine over the batch tensor).

    Returns from ``forward(student_logits, deep_feature)``: ``{"rfc": L_rfc, "css": L_css}``.
    """

    def __init__(
        self,
        feature_channels: int,
        num_classes: int,
        temperature: float = 1.0,
        eps: float = 1e-6,
        spatial_dims: int = 2,
        logit_norm: str = "none",
        tau: float = 1.0,
        css: str = "per_sample",
    ) -> None:
        super().__init__()
        if css not in ("per_sample", "batch"):
            raise ValueError(f"css must be 'per_sample' or 'batch', got '{css}'.")
        resolve_logit_norm(logit_norm, 3)
        self.logit_norm, self.tau, self.css = logit_norm, float(tau), css
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.project = conv(feature_channels, num_classes, kernel_size=1)
        self.negative = conv(num_classes, num_classes, kernel_size=3, padding=1)
        self.temperature = temperature
        self.eps = eps

    def forward(self, student_logits: torch.Tensor, deep_feature: torch.Tensor) -> dict[str, torch.Tensor]:
        x = resize_spatial(self.project(deep_feature), student_logits.shape[2:])
        rfc = reverse_feature_constraint(x, student_logits, self.eps, self.logit_norm, self.tau)
        negative = self.negative((1.0 - class_probabilities(x)) + (1.0 - class_probabilities(student_logits)))
        per = "sample" if self.css == "per_sample" else "batch"
        css = contrastive_semantic_loss(student_logits, x, negative, self.temperature, per)
        return {"rfc": rfc, "css": css}
