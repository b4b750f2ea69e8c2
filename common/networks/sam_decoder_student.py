"""The IAD released code's student: an EfficientNet encoder feeding a SAM mask decoder taken from the teacher (§4).

METHODS.md §4 (released code, github hjklearn/IAD): instead of a U-Net, the student is an EfficientNet-B1 encoder
(frozen there), a 1×1 convolution from its deepest map to the SAM prompt width (256), and the teacher's SAM mask
decoder with its mask tokens and output heads re-initialised. Teacher and student then produce logits of the same
kind (the dot products of K mask-token hypernetwork outputs with an upscaled image embedding), which is what the
logit-matching terms of IAD compare.

The student runs prompt-free exactly as the teacher (:class:`~common.networks.sam_teacher.SamTeacher`): no points,
boxes or masks, the dense prompt is the prompt encoder's ``no_mask_embed`` and the image positional encoding is its
random-Fourier ``pe_layer`` evaluated on the student's embedding grid. Only those two pieces of the prompt encoder are
kept: the point and mask embeddings would be parameters that never receive a gradient.

Facts from the released code that this module follows, and where it differs:

* the released student projects B1's 1280-channel classifier-head map (``_conv_head``) to 256 channels and upsamples
  the embedding ×2 (bilinear) so that the decoder works on a stride-16 grid, as SAM's ViT gives; here the 1×1
  convolution reads the deepest block map (320 channels for B1, the map ``EfficientUNetStudent`` exposes as
  ``features``; the classifier head is not built), and ``embedding_scale`` (default 2) keeps the ×2 upsampling, so
  the logits come out at stride 4 before the final bilinear resize, as the teacher's ViT logits do;
* the released code freezes the encoder's parameters but leaves its BatchNorm layers in training mode; here a frozen
  encoder stays entirely in eval mode (running statistics fixed, no stochastic depth);
* the released code re-initialises ``mask_tokens``, ``output_hypernetworks_mlps`` and ``iou_prediction_head`` and
  loads the rest of the decoder (``iou_token`` included) and the prompt encoder from the SAM checkpoint.

The IoU head is kept so that the decoder's state dict mirrors the teacher's, but it does not train: its output is
not part of the logits, so it would never receive a gradient (DDP would need ``find_unused_parameters``).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoints import load_checked, mismatch_report, optional_path, read_state_dict
from common.errors import CheckpointError, InputError
from common.networks.sam_teacher import TEACHER_ARCHS, TeacherArch, build_mask_decoder, sam_modeling
from common.networks.students import EfficientUNetStudent

__all__ = ["SamDecoderStudent", "PromptFreeEmbedding", "teacher_decoder_state_dict", "REINITIALISED_HEADS"]

# Decoder parts that the released code re-initialises: they encode which mask each token stands for.
REINITIALISED_HEADS = (
    "mask_decoder.mask_tokens.",
    "mask_decoder.output_hypernetworks_mlps.",
    "mask_decoder.iou_prediction_head.",
)
# What the student takes from a teacher checkpoint (state-dict prefixes, the same in teacher and student).
_TEACHER_PARTS = ("mask_decoder.", "prompt_encoder.no_mask_embed.", "prompt_encoder.pe_layer.")


class PromptFreeEmbedding(nn.Module):
    """The two pieces of SAM's prompt encoder that a prompt-free decoder call uses.

    Names match ``segment_anything``'s ``PromptEncoder`` (``no_mask_embed``, ``pe_layer``), so the teacher's tensors
    load under the same keys.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.pe_layer = sam_modeling().prompt_encoder.PositionEmbeddingRandom(embed_dim // 2)

    def dense(self) -> torch.Tensor:
        """The dense prompt for "no mask" (1, C, 1, 1); it broadcasts over the batch and the grid."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def image_pe(self, height: int, width: int) -> torch.Tensor:
        """Positional encoding (1, C, height, width) of an embedding grid of that size."""
        return self.pe_layer((height, width)).unsqueeze(0)


def teacher_decoder_state_dict(
    checkpoint: str | os.PathLike[str], adapter: str | os.PathLike[str] | None = None
) -> dict[str, torch.Tensor]:
    """The teacher tensors the student reuses (mask decoder, ``no_mask_embed``, ``pe_layer``), under teacher keys.

    ``checkpoint`` is an official SAM / LiteMedSAM file or a merged fine-tuned teacher (``model_merged.pt``).
    ``adapter`` is a teacher_lora ``adapter.pt`` (or training checkpoint) for that base: the fine-tuned decoder and
    ``no_mask_embed`` train in full and are saved there, so they replace the base's (the whole decoder at once, as
    the base may hold another number of mask tokens); the ``pe_layer`` matrix is a frozen buffer and stays the
    base's. An adapter with LoRA on the decoder holds only low-rank updates: merge it first (``model_merged.pt``).
    """
    state = {k: v for k, v in read_state_dict(checkpoint, "teacher_ckpt").items() if k.startswith(_TEACHER_PARTS)}
    if adapter is None:
        return state
    tuned = {k: v for k, v in read_state_dict(adapter, "teacher_adapter").items() if k.startswith(_TEACHER_PARTS)}
    lora = [k for k in tuned if "lora_" in k or ".base_layer." in k]
    if lora:
        raise CheckpointError(
            f"teacher_adapter {adapter} puts LoRA on the mask decoder ({lora[0]}): give the merged teacher "
            "(teacher_lora's models/model_merged.pt) as teacher_ckpt and teacher_adapter null instead."
        )
    if any(k.startswith("mask_decoder.") for k in tuned):
        state = {k: v for k, v in state.items() if not k.startswith("mask_decoder.")}
    return {**state, **tuned}


class SamDecoderStudent(nn.Module):
    """EfficientNet encoder → 1×1 conv → teacher's SAM mask decoder: images (B, C, H, W) → logits (B, K, H, W).

    Args:
        num_classes: K, background included; the decoder has K mask tokens, as the teacher.
        in_channels: input channels (the encoder's stem is built for them).
        teacher_arch: key of ``TEACHER_ARCHS``; its prompt width, decoder depth, heads and MLP sizes shape the decoder
            (``test``: the tiny preset for tests).
        teacher_ckpt: teacher weights to start the decoder from (:func:`teacher_decoder_state_dict`); None: random.
        teacher_adapter: the fine-tuned teacher's adapter on top of ``teacher_ckpt`` (None: the base decoder).
        backbone: EfficientNet variant (``efficientnet-b1`` in the paper), built as ``EfficientUNetStudent`` builds it.
        pretrained_path: local ImageNet weights for the encoder, or None.
        freeze_encoder: the encoder does not train and stays in eval mode (BatchNorm statistics fixed), as in the
            released code; sensible only with ``pretrained_path``.
        reinit_heads: re-initialise the mask tokens, hypernetwork MLPs and IoU head (the released code); False keeps
            the teacher's, which then must have K mask tokens.
        embedding_scale: bilinear upsampling of the projected embedding before the decoder (2: the released code's
            stride-16 grid; 1: the encoder's stride-32 grid).
        encoder_bn_momentum: running-statistics momentum of the encoder's BatchNorm layers (``EfficientUNetStudent``).
        checkpoint: a whole trained student of this shape (its ``model.pt`` or a training checkpoint) to start from,
            loaded strictly after the teacher's decoder: the released code warm-starts KIS from the student trained
            alone.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        teacher_arch: str = "litemedsam",
        teacher_ckpt: str | os.PathLike[str] | None = None,
        teacher_adapter: str | os.PathLike[str] | None = None,
        backbone: str = "efficientnet-b1",
        pretrained_path: str | os.PathLike[str] | None = None,
        freeze_encoder: bool = False,
        reinit_heads: bool = True,
        embedding_scale: int = 2,
        encoder_bn_momentum: float = 0.1,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if teacher_arch not in TEACHER_ARCHS:
            raise InputError(f"teacher_arch must be one of {sorted(TEACHER_ARCHS)}, got '{teacher_arch}'.")
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}.")
        if embedding_scale < 1:
            raise InputError(f"embedding_scale must be >= 1, got {embedding_scale}.")
        arch = TEACHER_ARCHS[teacher_arch]
        unet = EfficientUNetStudent(
            num_classes=num_classes,
            in_channels=in_channels,
            backbone=backbone,
            pretrained_path=pretrained_path,
            encoder_bn_momentum=encoder_bn_momentum,
        )
        self.encoder = unet.encoder  # the U-Net decoder is dropped
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_channels: int = unet.feature_channels
        self.size_divisor: int = unet.size_divisor
        self.embedding_scale = embedding_scale
        self.teacher_arch = teacher_arch
        self.embed = nn.Conv2d(self.feature_channels, arch.prompt_dim, kernel_size=1)
        self.prompt_encoder = PromptFreeEmbedding(arch.prompt_dim)
        self.mask_decoder = build_mask_decoder(arch, num_classes)

        teacher_ckpt, teacher_adapter = optional_path(teacher_ckpt), optional_path(teacher_adapter)
        if teacher_adapter is not None and teacher_ckpt is None:
            raise InputError("teacher_adapter needs the teacher_ckpt it was trained on.")
        if teacher_ckpt is not None:
            self._load_teacher(teacher_decoder_state_dict(teacher_ckpt, teacher_adapter), teacher_ckpt, reinit_heads)
        checkpoint = optional_path(checkpoint)
        if checkpoint is not None:
            load_checked(self, checkpoint, "pretrained student", f"'{checkpoint}' does not fit this SamDecoderStudent")
        self.mask_decoder.iou_prediction_head.requires_grad_(False)  # not part of the logits (module docstring)

        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            if optional_path(pretrained_path) is None and checkpoint is None:
                warnings.warn(
                    "SamDecoderStudent: freeze_encoder=True with a randomly initialised encoder (no pretrained_path or "
                    "checkpoint); its features will never learn. Give ImageNet weights or set freeze_encoder false.",
                    stacklevel=2,
                )
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def _load_teacher(self, state: dict[str, torch.Tensor], path: str | os.PathLike[str], reinit_heads: bool) -> None:
        """Load the teacher's tensors strictly into the decoder and prompt pieces, skipping re-initialised heads."""
        if reinit_heads:
            state = {k: v for k, v in state.items() if not k.startswith(REINITIALISED_HEADS)}
        own = {k: v for k, v in self.state_dict().items() if k.startswith(_TEACHER_PARTS)}
        if reinit_heads:
            own = {k: v for k, v in own.items() if not k.startswith(REINITIALISED_HEADS)}
        problem = mismatch_report(own, state)
        if problem:
            hint = "" if reinit_heads else " (with reinit_heads false the teacher must have num_classes mask tokens)"
            raise CheckpointError(
                f"teacher_ckpt {path} does not fit a SAM decoder of teacher_arch='{self.teacher_arch}' with "
                f"num_classes={self.num_classes}: {problem}{hint}. Is it the checkpoint of another architecture?"
            )
        self.load_state_dict(state, strict=False)

    def train(self, mode: bool = True) -> SamDecoderStudent:
        """Train mode, except for a frozen encoder, which stays in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def _check_spatial_size(self, x: torch.Tensor) -> None:
        """Reject inputs that are not (B, C, H, W) with H and W multiples of ``size_divisor``."""
        if x.ndim != 4 or any(s % self.size_divisor for s in x.shape[2:]):
            raise InputError(
                f"student input must be (B, C, H, W) with H and W multiples of {self.size_divisor}, got "
                f"{list(x.shape)} (pad with DivisiblePad(k={self.size_divisor}) or use a roi_size of multiples of "
                f"{self.size_divisor})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for images (B, in_channels, H, W), H and W multiples of 32."""
        return self.forward_features(x)["logits"]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (B, K, H, W) and ``features``, the deepest encoder map (B, feature_channels, H/32, W/32)."""
        if not torch.jit.is_tracing():
            self._check_spatial_size(x)
        features = self.encoder(x)[-1]
        embedding = self.embed(features)
        if self.embedding_scale != 1:
            embedding = F.interpolate(
                embedding, scale_factor=float(self.embedding_scale), mode="bilinear", align_corners=False
            )
        # Prompt-free as the teacher: an empty sparse prompt of batch 1, so the tokens broadcast over the B images.
        sparse = embedding.new_zeros(1, 0, embedding.shape[1])
        low_res, _ = self.mask_decoder.predict_masks(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.image_pe(embedding.shape[-2], embedding.shape[-1]),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=self.prompt_encoder.dense(),
        )
        logits = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "features": features}
