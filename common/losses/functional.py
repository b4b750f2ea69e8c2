"""Tensor helpers shared by every loss module: class probabilities and resizing of maps and labels.

Each loss in :mod:`common.losses` compares maps that may come at different spatial sizes (a teacher run at another
resolution, a label at the image's size, a deep feature at a coarser grid). The rules for bringing them together live
here once, so that the formulas in the loss modules read the same way and resize the same way.

- :func:`class_probabilities`: S(·), softmax over the class axis, sigmoid for a single channel.
- :func:`resize_spatial`: (bi/tri)linear resize of a (B,C,*spatial) map, ``align_corners=False``.
- :func:`match_grid`: a teacher embedding brought to the student's token grid (area average when finer).
- :func:`resize_label`: nearest-neighbour resize of an integer class map to (B,*spatial).
- :func:`num_label_classes`: how many label values a K-channel head distinguishes (2 when K = 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "class_probabilities",
    "resize_spatial",
    "match_grid",
    "resize_label",
    "num_label_classes",
    "LOGIT_NORMS",
    "resolve_logit_norm",
    "normalise_logits",
]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """S(·): softmax over the class axis (dim 1), sigmoid when there is a single channel (K = 1)."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def resize_spatial(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (B,C,*spatial) map to ``size`` with (bi/tri)linear interpolation, ``align_corners=False``.

    Returns ``x`` unchanged when its spatial size already equals ``size``.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def match_grid(teacher: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``teacher`` (B,C,*grid) brought to spatial ``size``: area average when it is finer, bilinear when coarser.

    Area averaging matches each student token with the mean of the teacher pixels it covers (LiteMedSAM's 4× finer
    embedding against a ViT's 16-pixel tokens); 2D only, as the image embeddings it serves.
    """
    if tuple(teacher.shape[2:]) == tuple(size):
        return teacher
    if all(t >= s for t, s in zip(teacher.shape[2:], size)):
        return F.adaptive_avg_pool2d(teacher, size)
    return F.interpolate(teacher, size=size, mode="bilinear", align_corners=False)


def resize_label(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bring an integer label map to shape (B,*size), resizing it with nearest-neighbour when needed.

    Args:
        label: (B,1,*spatial) or (B,*spatial) class indices (any dtype holding integers).
        size: the target spatial size (that of the logits / feature maps).
    """
    size = tuple(int(s) for s in size)
    if label.ndim == len(size) + 2:
        if label.shape[1] != 1:
            raise ValueError(f"label must be a class-index map with one channel, got shape {tuple(label.shape)}.")
        label = label[:, 0]
    elif label.ndim != len(size) + 1:
        raise ValueError(f"label of shape {tuple(label.shape)} does not match a spatial size {size}.")
    if tuple(label.shape[1:]) != size:
        label = F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0]
    return label.round().long()


def num_label_classes(num_classes: int) -> int:
    """Label values per channel count: K = 1 (one sigmoid logit) still has two label regions, 0 and 1."""
    return 2 if num_classes == 1 else num_classes


LOGIT_NORMS = ("none", "center", "zscore", "image", "auto")


def resolve_logit_norm(mode: str, num_channels: int) -> str:
    """``auto`` → ``zscore`` for K ≥ 3 classes, ``image`` for K ≤ 2 (where a per-pixel z-score over two values is
    ±1 everywhere and over one value undefined); any other mode as it is."""
    if mode not in LOGIT_NORMS:
        raise ValueError(f"logit_norm must be one of {LOGIT_NORMS}, got '{mode}'.")
    if mode == "auto":
        return "zscore" if num_channels >= 3 else "image"
    return mode


def normalise_logits(logits: torch.Tensor, mode: str = "none", tau: float = 1.0, eps: float = 1e-3) -> torch.Tensor:
    """Logits (B,K,*spatial) brought to a common scale before they are matched (METHODS.md §4, "Logit scale").

    SAM-family mask logits are tens in magnitude, so raw-logit L2 terms swamp the ground-truth loss. Modes:

    - ``none``: as they are (paper and released code).
    - ``center``: z − mean_k z, per pixel (removes the per-pixel shift softmax ignores).
    - ``zscore``: (z − mean_k z) / (std_k z + eps) / τ per pixel over the class axis, population std (Sun et al.,
      "Logit Standardization in Knowledge Distillation", CVPR 2024). The MSE of two z-scored K-vectors is
      2(1 − ρ), bounded; invariant to a positive scale and a shift of either side.
    - ``image``: for K ≤ 2, where ``zscore`` degenerates (two values z-score to ±1): per pixel centred as ``center``,
      then divided by the root mean square of the centred logits over the whole image (classes and pixels) + eps,
      and by τ. Invariant to a positive scale and a per-pixel shift; keeps each pixel's confidence relative to the
      image's. With K = 1 (one sigmoid logit) the map is z-scored over the image's pixels instead.
    - ``auto``: ``zscore`` for K ≥ 3, ``image`` for K ≤ 2 (:func:`resolve_logit_norm`).
    """
    mode = resolve_logit_norm(mode, logits.shape[1])
    if mode == "none":
        return logits
    spatial = tuple(range(2, logits.ndim))
    if mode == "image" and logits.shape[1] == 1:
        centred = logits - logits.mean(dim=spatial, keepdim=True)
        return centred / (centred.pow(2).mean(dim=spatial, keepdim=True).sqrt() + eps) / tau
    centred = logits - logits.mean(dim=1, keepdim=True)
    if mode == "center":
        return centred
    if mode == "zscore":
        return centred / (centred.pow(2).mean(dim=1, keepdim=True).sqrt() + eps) / tau
    rms = centred.pow(2).mean(dim=(1, *spatial), keepdim=True).sqrt()
    return centred / (rms + eps) / tau
