"""Losses of ReCo-KD, region- and context-aware distillation for 3D segmentation (METHODS.md §5).

Applied at every encoder stage k (bottleneck excluded) of a DynUNet teacher and a narrower student:

- MS-SARD, multi-scale structure-aware region distillation: :func:`region_masks` (class-aware masks at the stage's
  resolution), :func:`attention_maps` (spatial and channel attention of |F|), :func:`region_loss` (L_fg, L_bg) and
  :func:`attention_loss` (L_att);
- MS-CA, multi-scale context alignment: :class:`GlobalContextBlock` (one per network and stage) and
  :func:`relation_loss` (L_rel; MSE, or the C×C cosine-affinity option);
- :func:`stage_weights` (w_k) and :class:`LinearWarmupWeight` (λ(e)).

:class:`ReCoKDLoss` owns the trainable distiller modules (1×1×1 alignment convolutions, the global-context blocks)
and returns ``{"fg", "bg", "att", "rel"}``, each already summed over stages with w_k; the engine multiplies every
entry by λ(e) (a :class:`LinearWarmupWeight` as the term's weight), giving
L = L_seg + λ(e)·Σ_k w_k·(L_fg + L_bg + L_att + L_rel).

Conventions (as in ``common.losses.iad``): the student comes first, the teacher second; teacher tensors are
``.detach()``-ed inside the loss, so no gradient reaches the teacher; 3D (B,C,D,H,W) and 2D (B,C,H,W) both work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.losses.functional import resize_label

__all__ = [
    "stage_weights",
    "LinearWarmupWeight",
    "attention_maps",
    "region_masks",
    "region_loss",
    "attention_loss",
    "GlobalContextBlock",
    "relation_loss",
    "ReCoKDLoss",
]

RELATIONS = ("mse", "affinity")
PARTS = ("sard", "ca")  # MS-SARD: the fg, bg and att terms; MS-CA: the rel term


def stage_weights(num_stages: int, alpha: float = 0.4) -> list[float]:
    """Stage weights w_k = r^k / Σ_j r^j, r = 2^(−3α), k = 0 the highest-resolution stage (METHODS.md §5).

    r^k = (2^(−3k))^α is the stage's share of voxels to the power α: with α = 0.4 the weights fall by 0.435 per
    stage, so the full-resolution stage counts most without the deepest stages vanishing as their voxel share would.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be ≥ 1, got {num_stages}")
    r = 2.0 ** (-3.0 * alpha)
    powers = [r**k for k in range(num_stages)]
    return [p / sum(powers) for p in powers]


class LinearWarmupWeight:
    """λ(e) = λ_max · min(1, e / (f·E)): linear warm-up over the first fraction f of the E epochs (METHODS.md §5).

    ``e`` is the 1-based epoch within the training stage, so the first epoch already distils (λ_max/(f·E)) and
    λ reaches λ_max at epoch f·E. ``warmup_fraction=0`` gives a constant λ_max. Used as a ``LossTerm`` weight: the
    distillation engine calls it with (epoch, epochs) of the current stage.
    """

    def __init__(self, max_value: float = 0.01, warmup_fraction: float = 0.6) -> None:
        if max_value < 0 or not 0 <= warmup_fraction <= 1:
            raise ValueError(f"need max_value ≥ 0 and 0 ≤ warmup_fraction ≤ 1, got {max_value}, {warmup_fraction}")
        self.max_value = float(max_value)
        self.warmup_fraction = float(warmup_fraction)

    def __call__(self, epoch: int, epochs: int) -> float:
        span = self.warmup_fraction * epochs
        return self.max_value if span <= 0 else self.max_value * min(1.0, epoch / span)

    def __repr__(self) -> str:
        return f"LinearWarmupWeight(max_value={self.max_value}, warmup_fraction={self.warmup_fraction})"


def _view_channels(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(B, C) → (B, C, 1, ..., 1) for broadcasting over the spatial axes."""
    return x.view(*x.shape, *([1] * spatial_dims))


def attention_maps(features: torch.Tensor, temperature: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial and channel attention of a feature map (METHODS.md §5, MS-SARD).

    A = |F|;  S = N · softmax_vox(mean_c A / T), shape (B,1,*spatial), N = number of voxels (mean 1);
              Cw = C · softmax_c(mean_vox A / T), shape (B,C,1,...,1) (mean 1).
    """
    b, c = features.shape[:2]
    spatial = features.shape[2:]
    a = features.abs()
    s = math.prod(spatial) * torch.softmax(a.mean(1).flatten(1) / temperature, dim=1)
    cw = c * torch.softmax(a.flatten(2).mean(-1) / temperature, dim=1)
    return s.view(b, 1, *spatial), _view_channels(cw, len(spatial))


def region_masks(label: torch.Tensor, size: Sequence[int], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-aware foreground and background masks at a stage's resolution (METHODS.md §5, MS-SARD).

    The label (B,1,*spatial) or (B,*spatial) is resized to ``size`` with nearest-neighbour, then per sample b:
        M_fg = Σ_{c≥1} 1[Y=c] / |Ω_c|   (each class present sums to 1; a class absent from the patch adds nothing),
        M_bg = 1[M_fg = 0] / |Ω_bg|     (sums to 1 when the sample has background voxels).
    Label values outside 1..K−1 count as background. Returns (M_fg, M_bg), each (B,1,*size).
    """
    y = resize_label(label, size)  # (B,*size)
    onehot = F.one_hot(y.clamp(0, num_classes - 1), num_classes).movedim(-1, 1).float()  # (B,K,*size)
    onehot = onehot * ((y >= 0) & (y < num_classes)).unsqueeze(1)
    dims = tuple(range(2, onehot.ndim))
    counts = onehot.sum(dims, keepdim=True)  # (B,K,1,...)
    fg = (onehot[:, 1:] / counts[:, 1:].clamp_min(1.0)).sum(1, keepdim=True)
    background = (fg == 0).float()
    bg = background / background.sum(dims, keepdim=True).clamp_min(1.0)
    return fg, bg


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, or 0 (still attached to num's graph) when den is 0."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(num.dtype).tiny), num * 0.0)


def region_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, spatial: torch.Tensor, channel: torch.Tensor
) -> torch.Tensor:
    """Attention-weighted region loss (METHODS.md §5, MS-SARD):

        L_R(M) = Σ M·((F_s − F_t)·√S_t·√Cw_t)² / (Σ M · C)

    sums over batch, channels and voxels; S_t, Cw_t the teacher's attention (:func:`attention_maps`). 0 when the
    mask is empty (no voxel of the region in the batch). The teacher is detached.
    """
    teacher = teacher.detach()
    diff2 = (student - teacher).pow(2) * spatial.detach() * channel.detach()
    return _safe_ratio((mask * diff2).sum(), mask.sum() * student.shape[1])


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """L_att = L1(Cw_s, Cw_t) + L1(S_s, S_t), each the mean absolute difference of the attention maps of
    :func:`attention_maps` (METHODS.md §5, MS-SARD). The teacher is detached."""
    s_s, c_s = attention_maps(student, temperature)
    s_t, c_t = attention_maps(teacher.detach(), temperature)
    return F.l1_loss(c_s, c_t) + F.l1_loss(s_s, s_t)


class GlobalContextBlock(nn.Module):
    """Global-context block (GCNet, as in FGD's global distillation; METHODS.md §5, MS-CA):

        context = Σ_vox softmax_vox(W_k F) · F          (W_k: 1×1×1 conv C → 1)
        out     = F + W_2 ReLU(LN(W_1 context))         (W_1: C → ⌈ratio·C⌉, W_2 back to C, zero-initialised)

    W_2 starts at zero, so at first ``out = F``. One block per network (student, teacher) and stage; they are
    trainable distiller modules.
    """

    def __init__(self, channels: int, ratio: float = 0.5, spatial_dims: int = 3) -> None:
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        hidden = max(1, int(math.ceil(channels * ratio)))
        self.attend = conv(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            conv(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden] + [1] * spatial_dims),
            nn.ReLU(inplace=True),
            conv(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.attend.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.attend.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def context(self, features: torch.Tensor) -> torch.Tensor:
        """Σ_vox softmax_vox(W_k F)·F, shape (B,C,1,...,1)."""
        b, c = features.shape[:2]
        weights = torch.softmax(self.attend(features).flatten(2), dim=-1)  # (B,1,N)
        ctx = (features.flatten(2) * weights).sum(-1)  # (B,C)
        return _view_channels(ctx, features.ndim - 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.transform(self.context(features))


def relation_loss(student: torch.Tensor, teacher: torch.Tensor, relation: str = "mse") -> torch.Tensor:
    """L_rel between the context-enhanced maps (METHODS.md §5, MS-CA).

    ``"mse"``: mean over elements of (out_s − out_t)². ``"affinity"``: MSE between the C×C cosine affinities
    A = F̂·F̂ᵀ of each sample, F̂ the (C, N) map with every channel's row L2-normalised over the N voxels.
    """
    if relation == "mse":
        return F.mse_loss(student, teacher)
    if relation == "affinity":
        fs, ft = F.normalize(student.flatten(2), dim=-1), F.normalize(teacher.flatten(2), dim=-1)
        return F.mse_loss(fs @ fs.transpose(1, 2), ft @ ft.transpose(1, 2))
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


class ReCoKDLoss(nn.Module):
    """ReCo-KD (METHODS.md §5): MS-SARD + MS-CA over the encoder stages, weighted by w_k.

    For each stage k, with F_s the student's feature mapped to the teacher's channels by a 1×1×1 convolution (when
    the widths differ) and F_t the detached teacher feature:

        L_fg,k = L_R(M_fg), L_bg,k = L_R(M_bg)             (:func:`region_loss`, :func:`region_masks`)
        L_att,k = L1(Cw_s, Cw_t) + L1(S_s, S_t)           (:func:`attention_loss`)
        L_rel,k = relation(GC_s,k(F_s), GC_t,k(F_t))      (:class:`GlobalContextBlock`, :func:`relation_loss`)

    and returns ``{"fg": Σ_k w_k L_fg,k, "bg": ..., "att": ..., "rel": ...}`` (λ(e) is the engine's term weight).
    ``parts`` keeps MS-SARD (``"sard"``: fg, bg, att) and/or MS-CA (``"ca"``: rel) for the ablations; a dropped part
    is neither computed nor returned, and without MS-CA no global-context block is built.

    Args:
        student_channels: the student's channels per stage (``network.feature_channels``).
        teacher_channels: the teacher's channels per stage.
        num_classes: K, background included.
        temperature: T of the attention maps (0.5).
        alpha: α of the stage weights (0.4).
        context_ratio: hidden width of the global-context transform, as a fraction of the channels (0.5).
        relation: ``"mse"`` or ``"affinity"`` (C×C cosine-affinity MSE).
        spatial_dims: 3 or 2.
        parts: the parts of the method kept, a non-empty subset of ``("sard", "ca")`` (both by default).

    The alignment convolutions and the two global-context blocks of each stage are trainable: give this module's
    parameters to the optimiser and save them with the student (``collect_loss_modules`` does both in the configs).
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        temperature: float = 0.5,
        alpha: float = 0.4,
        context_ratio: float = 0.5,
        relation: str = "mse",
        spatial_dims: int = 3,
        parts: Sequence[str] = PARTS,
    ) -> None:
        super().__init__()
        self.parts = tuple(dict.fromkeys(parts))
        if not self.parts or any(p not in PARTS for p in self.parts):
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {list(parts)!r}")
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"student has {len(student_channels)} stages, teacher {len(teacher_channels)}")
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.align = nn.ModuleList(
            conv(cs, ct, kernel_size=1) if cs != ct else nn.Identity()
            for cs, ct in zip(student_channels, teacher_channels)
        )
        context = teacher_channels if "ca" in self.parts else []
        self.context_student = nn.ModuleList(GlobalContextBlock(c, context_ratio, spatial_dims) for c in context)
        self.context_teacher = nn.ModuleList(GlobalContextBlock(c, context_ratio, spatial_dims) for c in context)
        self.num_classes = int(num_classes)
        self.temperature = float(temperature)
        self.relation = relation
        self.register_buffer(
            "stage_weights", torch.tensor(stage_weights(len(teacher_channels), alpha)), persistent=False
        )

    def forward(
        self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor], label: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        n = len(self.align)
        if len(student_features) != n or len(teacher_features) != n:
            raise ValueError(
                f"ReCoKDLoss was built for {n} stages, got {len(student_features)} student and "
                f"{len(teacher_features)} teacher feature maps"
            )
        terms: dict[str, torch.Tensor] = {}
        for k in range(n):
            fs = self.align[k](student_features[k])
            ft = teacher_features[k].detach().to(fs.dtype)
            if fs.shape != ft.shape:
                raise ValueError(f"stage {k}: student {tuple(fs.shape)} (aligned) vs teacher {tuple(ft.shape)}")
            stage = {}
            if "sard" in self.parts:
                s_t, c_t = attention_maps(ft, self.temperature)
                fg, bg = region_masks(label, ft.shape[2:], self.num_classes)
                stage["fg"] = region_loss(fs, ft, fg.to(fs.dtype), s_t, c_t)
                stage["bg"] = region_loss(fs, ft, bg.to(fs.dtype), s_t, c_t)
                stage["att"] = attention_loss(fs, ft, self.temperature)
            if "ca" in self.parts:
                stage["rel"] = relation_loss(self.context_student[k](fs), self.context_teacher[k](ft), self.relation)
            w = self.stage_weights[k].to(fs.dtype)
            for key, value in stage.items():
                terms[key] = terms[key] + w * value if key in terms else w * value
        return terms
