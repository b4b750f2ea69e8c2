"""Student networks: an EfficientNet encoder with a U-Net decoder (MONAI ``FlexibleUNet``), the IAD student (§4).

:class:`EfficientUNetStudent` is a :class:`monai.networks.nets.FlexibleUNet` (state-dict keys ``encoder.*``,
``decoder.*``, ``segmentation_head.*``) that

* never downloads weights (``pretrained=False``); ImageNet weights come only from a local file
  (``pretrained_path``, see :func:`load_imagenet_encoder_weights`);
* drops the encoder's unused classification head (``_conv_head``, ``_bn1``, ``_fc``: 1.69 M parameters for B1 that
  the U-Net never runs), so parameter counts are honest, optimisers hold no dead tensors and DDP needs no
  ``find_unused_parameters``. A plain ``FlexibleUNet`` checkpoint therefore loads only with ``strict=False``;
* exposes the deepest encoder feature map for feature distillation through
  :meth:`~EfficientUNetStudent.forward_features` (one forward pass, no hooks) and its width as ``feature_channels``;
* stays TorchScript-able for bundle export once ``student.encoder.set_swish(memory_efficient=False)`` is called (as for
  any MONAI EfficientNet: the memory-efficient swish is a custom autograd function).

Input size: every spatial size must be a multiple of ``size_divisor`` (32). The five encoder stages each halve the
size, and the encoder's TensorFlow-style "same" paddings are fixed at build time for the backbone's ImageNet size
(240 for B1), so other sizes can make the decoder's skip shapes disagree: with MONAI 1.6, 80x80 raises inside the
decoder and 65x65 silently returns 64x64 logits. ``forward`` therefore rejects such inputs with a clear error; pad
with ``DivisiblePad(k=32)`` or pick a sliding-window ``roi_size`` made of multiples of 32.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from common.checkpoints import load_checked, optional_path, read_state_dict
from common.errors import CheckpointError, InputError

__all__ = [
    "EfficientUNetStudent",
    "TrainedStudentTeacher",
    "trained_student",
    "load_imagenet_encoder_weights",
    "adapt_stem_weight",
]

# Encoder modules that only the ImageNet classifier uses; FlexibleUNet never runs them.
_UNUSED_ENCODER_HEAD = ("_conv_head", "_conv_head_padding", "_bn1", "_avg_pooling", "_dropout", "_fc")
# MONAI nests blocks by stage (_blocks.<stage>.<block>.); the efficientnet-pytorch release is flat (_blocks.<block>.).
_STAGE_INDEX = re.compile(r"^_blocks\.\d+\.(\d+\..+)$")
_STEM_KEY = "_conv_stem.weight"


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt RGB stem filters ``(C_out, 3, ...)`` to ``in_channels`` inputs.

    One channel: the sum of the RGB filters, so a grey image gives the same response as the grey image copied into
    R, G and B. Other counts: the RGB filters repeated cyclically and scaled by ``3 / in_channels`` (the timm and
    segmentation_models.pytorch convention), which keeps the expected activation size.
    """
    if weight.shape[1] != 3 or in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / 3)
    return weight.repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :in_channels] * (3.0 / in_channels)


def load_imagenet_encoder_weights(encoder: torch.nn.Module, path: str | os.PathLike[str]) -> int:
    """Load EfficientNet ImageNet weights from a local file into ``encoder``; return how many tensors were loaded.

    Accepts the efficientnet-pytorch release files (flat ``_blocks.<i>.`` keys) and MONAI ``EfficientNetBN`` state
    dicts (``_blocks.<stage>.<i>.``). The stem is adapted to the encoder's input channels (:func:`adapt_stem_weight`);
    file entries the encoder lacks (the classifier ``_fc``, ``_conv_head``, ``_bn1``) are ignored; a missing
    ``num_batches_tracked`` is tolerated. Any other missing key or shape mismatch raises :class:`CheckpointError`,
    and nothing is loaded.
    """
    if not os.path.isfile(path):
        raise CheckpointError(
            f"ImageNet encoder weights not found: {path} (give a local efficientnet-pytorch file such as "
            "efficientnet-b1-f1951068.pth, or pretrained_path=null for random initialisation)"
        )
    source = read_state_dict(path, "ImageNet encoder weights")
    target = encoder.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    for key, value in target.items():
        src_key = key if key in source else _STAGE_INDEX.sub(r"_blocks.\1", key)
        if src_key not in source:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        weight = source[src_key]
        if key == _STEM_KEY and weight.ndim == value.ndim:
            weight = adapt_stem_weight(weight, value.shape[1])
        if weight.shape != value.shape:
            mismatched.append(f"{key} {tuple(weight.shape)} vs {tuple(value.shape)}")
            continue
        loaded[key] = weight.to(dtype=value.dtype)
    if missing or mismatched:
        raise CheckpointError(
            f"{path} does not fit this encoder: {len(missing)} missing keys {missing[:3]}, {len(mismatched)} shape "
            f"mismatches {mismatched[:3]} (expected ImageNet weights of the same EfficientNet variant, 2D)"
        )
    target.update(loaded)
    encoder.load_state_dict(target)
    return len(loaded)


class EfficientUNetStudent(FlexibleUNet):
    """EfficientNet encoder + U-Net decoder student (MONAI ``FlexibleUNet``, never downloading weights).

    Args:
        num_classes: output channels K (logits; K=1 for binary tasks with a sigmoid).
        in_channels: input channels (1 for CT/MRI slices, 3 for endoscopy RGB).
        backbone: ``efficientnet-b0`` ... ``efficientnet-l2``; B1 in the IAD paper.
        spatial_dims: 2, or 3 (3D works but has no ImageNet weights).
        pretrained_path: local ImageNet weights for the encoder (:func:`load_imagenet_encoder_weights`), or None.
        decoder_channels: decoder widths, deepest first (FlexibleUNet default).
        norm: decoder normalisation (FlexibleUNet default); the encoder always uses BatchNorm(eps=1e-3) to match
            the ImageNet weights.
        encoder_bn_momentum: running-statistics momentum of the encoder's BatchNorm layers. MONAI's EfficientNet
            keeps the TensorFlow value 0.01, whose running statistics need thousands of iterations to settle; with
            the few hundred of a small task they stay near their initial values and eval-mode predictions are
            wrong (seen on LiTS: validation Dice jumping between 0.29 and 0.0). 0.1 is PyTorch's default.
        checkpoint: a whole trained student (its ``model.pt``, or a training checkpoint with a ``model`` entry) to
            start from, loaded strictly: the released IAD code warm-starts KIS from the student trained alone.
        freeze_encoder: the encoder does not train (its parameters get no gradient and its BatchNorm layers stay in
            eval mode), as in the released IAD code; the decoder and head do.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        backbone: str = "efficientnet-b1",
        spatial_dims: int = 2,
        pretrained_path: str | os.PathLike[str] | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        norm: str | Sequence = ("batch", {"eps": 1e-3, "momentum": 0.1}),
        encoder_bn_momentum: float = 0.1,
        checkpoint: str | os.PathLike[str] | None = None,
        freeze_encoder: bool = False,
    ) -> None:
        if not backbone.startswith("efficientnet-"):
            raise InputError(
                f"backbone must be an EfficientNet (efficientnet-b0 ... efficientnet-l2), got {backbone!r}"
            )
        super().__init__(
            in_channels=in_channels,
            out_channels=num_classes,
            backbone=backbone,
            pretrained=False,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=spatial_dims,
            norm=norm if isinstance(norm, str) else tuple(norm),
        )
        for name in _UNUSED_ENCODER_HEAD:
            delattr(self.encoder, name)
        for module in self.encoder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = encoder_bn_momentum
        feature_channel = FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"]
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_channels: int = feature_channel[-1]
        self.size_divisor: int = 2 ** len(feature_channel)
        pretrained_path = optional_path(pretrained_path)
        if pretrained_path is not None:
            if spatial_dims != 2:
                raise CheckpointError(
                    f"ImageNet weights are 2D; pretrained_path={pretrained_path} needs spatial_dims=2"
                )
            load_imagenet_encoder_weights(self.encoder, pretrained_path)
        checkpoint = optional_path(checkpoint)
        if checkpoint is not None:
            load_checked(self, checkpoint, "pretrained student", f"'{checkpoint}' does not fit this student")
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            for parameter in self.encoder.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> EfficientUNetStudent:
        """Train mode, except for a frozen encoder, whose BatchNorm statistics keep their values."""
        super().train(mode)
        if mode and self.freeze_encoder:
            self.encoder.eval()
        return self

    def _check_spatial_size(self, x: torch.Tensor) -> None:
        """Reject inputs the encoder/decoder cannot round-trip (see the module docstring)."""
        size = x.shape[2:]
        if len(size) != self.spatial_dims or any(s % self.size_divisor != 0 for s in size):
            raise InputError(
                f"student input must be (B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W) with every spatial "
                f"size a multiple of {self.size_divisor}, got {list(x.shape)} (pad with DivisiblePad(k="
                f"{self.size_divisor}) or use a roi_size of multiples of {self.size_divisor})"
            )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, *spatial)`` for inputs ``(B, in_channels, *spatial)``, spatial sizes multiples of 32.

        Same computation as ``FlexibleUNet.forward`` (no ``super()`` call, so the model stays TorchScript-able).
        """
        return self.forward_features(inputs)["logits"]

    def forward_features(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass returning ``logits`` (as :meth:`forward`) and ``features``, the deepest encoder map.

        ``features`` is the decoder's first input: ``(B, feature_channels, H/32, W/32)``, 320 channels for B1.
        """
        self._check_spatial_size(inputs)
        encoded = self.encoder(inputs)
        logits = self.segmentation_head(self.decoder(encoded, self.skip_connect))
        return {"logits": logits, "features": encoded[-1]}


class TrainedStudentTeacher(torch.nn.Module):
    """A trained student used as a teacher: it sees an image as the student sees its training images (resized,
    bilinear as MONAI's ``Resized``, to ``image_size`` per spatial axis) and returns its logits at that size.

    The teacher cache stores the images as loaded, before the training preprocessing resizes them (HC18: 800 x 540,
    not a multiple of 32), so the plain student cannot run on them; the cache resizes the returned logits to the
    training size, which here is already their size, so the cached logits are exactly the student's.
    """

    def __init__(self, student: EfficientUNetStudent, image_size: int) -> None:
        super().__init__()
        self.student, self.image_size = student, int(image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.image_size,) * (x.ndim - 2)
        if tuple(x.shape[2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear" if x.ndim == 4 else "trilinear")
        return self.student(x)


def trained_student(
    num_classes: int,
    in_channels: int,
    checkpoint: str | os.PathLike[str] | None,
    image_size: int,
    **kwargs: object,
) -> TrainedStudentTeacher:
    """A student loaded from a trained run's ``model.pt``, to serve as the teacher of the self-distillation control
    (``self_kd.json``) on images of any size (:class:`TrainedStudentTeacher`): a missing path is one clear error, not
    a silently random teacher."""
    if optional_path(checkpoint) is None:
        raise CheckpointError(
            "self_kd.json needs --self_teacher_ckpt: the models/model.pt of a trained student of this task "
            "(e.g. a student_only run)."
        )
    return TrainedStudentTeacher(
        EfficientUNetStudent(num_classes, in_channels, checkpoint=checkpoint, **kwargs), image_size
    )
