"""Inference of a 2D network on 2D images of any size and on 3D volumes, slice by slice (MONAI ``SliceInferer``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SliceInferer

from common.data.transforms import source_name
from common.errors import InputError

__all__ = ["PlaneInferer"]


class PlaneInferer(Inferer):
    """Run a 2D network on (B, C, H, W) images or, slice by slice along the last axis, on (B, C, H, W, D) volumes.

    Each plane is resized to ``image_size`` (the size the network was trained at: the 2D bundles resize their
    training images) and the logits are resized back to the plane's own size, so predictions have the input's shape
    and a whole CT volume is segmented with the same in-plane scale as the training slices. Volumes go through
    MONAI's :class:`~monai.inferers.SliceInferer` (whole slices, ``sw_batch_size`` slices per forward pass).

    Args:
        image_size: the network's input size (an int for square inputs, or (H, W)).
        in_channels: the network's input channels; another count is one clear error naming the file.
        sw_batch_size: slices per forward pass for volumes.
        progress: show a progress bar over the slices of a volume.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        in_channels: int | None = None,
        sw_batch_size: int = 8,
        progress: bool = False,
    ) -> None:
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_size = tuple(int(s) for s in size)
        self.in_channels = in_channels
        self.slices = SliceInferer(roi_size=(-1, -1), spatial_dim=2, sw_batch_size=sw_batch_size, progress=progress)

    def _plane(self, x: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        if size != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        out = network(x, *args, **kwargs)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        if self.in_channels is not None and inputs.shape[1] != self.in_channels:
            raise InputError(
                f"image '{source_name(inputs)}' has {inputs.shape[1]} channels but the network takes "
                f"{self.in_channels}: give images of the training data's channels (dataset.json channel_names), or "
                "set in_channels."
            )
        if inputs.ndim == 4:
            return self._plane(inputs, network, *args, **kwargs)
        if inputs.ndim == 5:
            return self.slices(inputs, partial(self._plane, network=network), *args, **kwargs)
        raise InputError(
            f"image '{source_name(inputs)}' has shape {tuple(inputs.shape[1:])}: a 2D network segments (C, H, W) "
            "images and (C, H, W, D) volumes."
        )
