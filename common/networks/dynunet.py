"""3D nnU-Net-style teacher and students (MONAI ``DynUNet``) for ReCo-KD (METHODS.md §5).

:class:`DynUNetSegmenter` is a :class:`monai.networks.nets.DynUNet` (same modules, same state-dict keys) that

* always returns the main logits from ``forward`` (MONAI's DynUNet returns a stacked tensor of all deep-supervision
  outputs in training mode, which sliding-window inferers, metrics and the engine's ``student_logits`` cannot use);
* exposes, through :meth:`~DynUNetSegmenter.forward_features`, in one forward pass:
  ``logits``, ``features`` (the output of each encoder stage, bottleneck excluded, highest resolution first) and
  ``deep_supervision`` (the deep-supervision heads at their own resolutions, highest first; empty in eval mode).
  The network knows nothing about losses: the loss picks what it needs.

The teacher is the full-width network (``width_divisor=1``); a student is the same topology with every stage's
channels divided by ``width_divisor`` = 2^t, t ∈ {1, 2, 3}, and at least ``min_channels`` (8), see
:func:`divided_filters`. Kernels are 3 (3×3×3) at every stage; strides 1 at the input stage and 2 at each other stage
(isotropic nnU-Net topology), so every spatial input size must be a multiple of 2^(stages − 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet
from torch import nn

from common.checkpoints import load_checked, optional_path
from common.errors import InputError

__all__ = ["DynUNetSegmenter", "divided_filters", "build_dynunet"]

NNUNET_FILTERS = (32, 64, 128, 256)


def divided_filters(filters: Sequence[int], width_divisor: int = 1, min_channels: int = 8) -> list[int]:
    """Stage widths of a student: ``max(min_channels, f // width_divisor)`` for each teacher width ``f``.

    ``width_divisor`` must be a power of two (1 is the teacher itself): METHODS.md §5 divides by 2^t.
    """
    divisor = int(width_divisor)
    if divisor < 1 or divisor & (divisor - 1):
        raise InputError(f"width_divisor must be a power of two (1, 2, 4, 8), got {width_divisor}")
    return [max(int(min_channels), int(f) // divisor) for f in filters]


class DynUNetSegmenter(DynUNet):
    """MONAI DynUNet with plain-logit ``forward`` and a ``forward_features`` for feature distillation.

    Args:
        num_classes: output channels K (background included).
        in_channels: input channels.
        filters: channels of each stage, input stage first, bottleneck last (len ≥ 3); the number of stages.
        spatial_dims: 3 (2 works too).
        deep_supervision: add deep-supervision heads (nnU-Net does).
        deep_supr_num: number of deep-supervision heads (< stages − 1); None: min(2, stages − 2).
        norm_name: normalisation (nnU-Net: instance norm with affine).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        filters: Sequence[int] = NNUNET_FILTERS,
        spatial_dims: int = 3,
        deep_supervision: bool = True,
        deep_supr_num: int | None = None,
        norm_name: str | tuple = ("INSTANCE", {"affine": True}),
    ) -> None:
        filters = [int(f) for f in filters]
        if len(filters) < 3:
            raise InputError(f"filters needs at least 3 stages (input, ..., bottleneck), got {filters}")
        n = len(filters)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_classes,
            kernel_size=[3] * n,
            strides=[1] + [2] * (n - 1),
            upsample_kernel_size=[2] * (n - 1),
            filters=filters,
            norm_name=tuple(norm_name) if isinstance(norm_name, list) else norm_name,
            deep_supervision=deep_supervision,
            deep_supr_num=min(2, n - 2) if deep_supr_num is None else int(deep_supr_num),
        )
        self.num_classes = int(num_classes)
        self.feature_channels: list[int] = filters[:-1]
        self.size_divisor: int = 2 ** (n - 1)

    @property
    def encoder_stages(self) -> list[nn.Module]:
        """The encoder stages whose outputs are distilled: the input block and every downsampling block (the
        bottleneck is excluded, METHODS.md §5)."""
        return [self.input_block, *self.downsamples]

    def _check_spatial_size(self, x: torch.Tensor) -> None:
        size = x.shape[2:]
        if len(size) != self.spatial_dims or any(s % self.size_divisor for s in size):
            raise InputError(
                f"DynUNet input must be (B, C, *spatial) with {self.spatial_dims} spatial sizes, each a multiple of "
                f"{self.size_divisor}, got {list(x.shape)} (use a patch / roi_size of multiples of {self.size_divisor})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main logits (B, K, *spatial), in training and in eval mode."""
        self._check_spatial_size(x)
        return self.output_block(self.skip_layers(x))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """One forward pass returning ``logits``, ``features`` (encoder-stage outputs, highest resolution first,
        ``feature_channels`` channels, size input / 2^k) and ``deep_supervision`` (in training mode with deep
        supervision: the heads' logits at 1/2, 1/4, ... of the input size; else an empty list)."""
        features: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: features.append(out)) for m in self.encoder_stages]
        try:
            logits = self.forward(x)
        finally:
            for h in hooks:
                h.remove()
        heads = list(self.heads) if (self.training and self.deep_supervision) else []
        return {"logits": logits, "features": features, "deep_supervision": heads}


def build_dynunet(
    num_classes: int,
    in_channels: int = 1,
    filters: Sequence[int] = NNUNET_FILTERS,
    width_divisor: int = 1,
    min_channels: int = 8,
    deep_supervision: bool = True,
    deep_supr_num: int | None = None,
    spatial_dims: int = 3,
    checkpoint: str | os.PathLike[str] | None = None,
) -> DynUNetSegmenter:
    """The teacher (``width_divisor=1``) or a student (2, 4, 8) of width ``filters // width_divisor`` (≥ ``min_channels``).

    ``checkpoint``: a saved state dict (or an ignite checkpoint with a ``model`` entry, e.g. ``models/model.pt``) loaded
    strictly; a file of another width or class count raises :class:`CheckpointError` saying so.
    """
    network = DynUNetSegmenter(
        num_classes=num_classes,
        in_channels=in_channels,
        filters=divided_filters(filters, width_divisor, min_channels),
        spatial_dims=spatial_dims,
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
    )
    checkpoint = optional_path(checkpoint)
    if checkpoint is not None:
        misfit = (
            f"'{checkpoint}' does not fit a DynUNet with filters {network.filters} and {num_classes} classes "
            f"(width_divisor {width_divisor})"
        )
        load_checked(network, checkpoint, "DynUNet checkpoint", misfit)
    return network
