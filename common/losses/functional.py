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

__all__ = ["class_probabilities", "resize_spatial", "match_grid", "resize_label", "num_label_classes"]


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
