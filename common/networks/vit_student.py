"""The TS-KD student: ViT-Tiny (MONAI ``ViT``) + a SAM-style neck to the teacher's embedding width + a light decoder.

METHODS.md §3: patch 16, hidden 192, 12 blocks, 3 heads, MLP 768; the neck (1×1 conv 192→256, LayerNorm2d, 3×3 conv,
LayerNorm2d, as in SAM's image encoder) gives a 256×(s/16)² embedding that feature distillation aligns with the
teacher's image embedding; the decoder upsamples it ×2 per block back to the input size and predicts K logits.
``patch_size`` 8 gives a finer (s/8)² token grid (16×16 at 128 px) and one ×2 decoder block less.
``forward`` returns the logits (inference, validation); ``forward_features`` also returns the embedding and the
blocks' hidden states for the distillation losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.networks.nets import ViT
from torch import nn

from common.checkpoints import load_checked, optional_path
from common.errors import CheckpointError, InputError
from common.networks.tiny_vit import LayerNorm2d

__all__ = ["ViTStudent", "build_vit_student", "DECODER_CHANNELS", "decoder_channels"]

# The decoder's channels at patch 16, by output resolution: s/8, s/4, s/2, s.
DECODER_CHANNELS = (128, 64, 32, 16)


def decoder_channels(patch_size: int) -> tuple[int, ...]:
    """The decoder of a ``patch_size`` student: the last log2(patch_size) entries of :data:`DECODER_CHANNELS`, so each
    output resolution has the channels it has at patch 16 (patch 8: 64, 32, 16 at s/4, s/2, s)."""
    blocks = int(patch_size).bit_length() - 1
    if patch_size < 2 or 2**blocks != patch_size or blocks > len(DECODER_CHANNELS):
        raise InputError(f"patch_size must be a power of two from 2 to 16 (8 or 16 for ViT-Tiny), got {patch_size}.")
    return DECODER_CHANNELS[-blocks:]


def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    """×2 upsampling (transposed conv) then a 3×3 conv, each with LayerNorm2d + GELU."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2),
        LayerNorm2d(c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(c_out),
        nn.GELU(),
    )


class ViTStudent(nn.Module):
    """ViT-Tiny student: image (B, C, s, s) → logits (B, K, s, s).

    Args:
        num_classes: K, background included.
        image_size: s, the input size (fixed: the position embedding is learnt for (s/patch)² tokens).
        in_channels: image channels (1 for CT/MR slices).
        patch_size, hidden_size, num_layers, num_heads, mlp_dim: the ViT (defaults: ViT-Tiny).
        embed_dim: the neck's width, the teacher's embedding width (256 for SAM and LiteMedSAM).
        decoder_channels: one ×2 upsampling block per entry; their count must be log2(patch_size) to reach s.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 128,
        in_channels: int = 1,
        patch_size: int = 16,
        hidden_size: int = 192,
        num_layers: int = 12,
        num_heads: int = 3,
        mlp_dim: int = 768,
        embed_dim: int = 256,
        decoder_channels: Sequence[int] = DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise InputError(f"image_size {image_size} must be a multiple of patch_size {patch_size}.")
        if 2 ** len(decoder_channels) != patch_size:
            raise InputError(
                f"decoder_channels has {len(decoder_channels)} ×2 blocks, which do not undo patch_size {patch_size} "
                f"(need log2(patch_size) = {patch_size.bit_length() - 1} blocks)."
            )
        self.num_classes, self.image_size, self.patch_size = num_classes, image_size, patch_size
        self.grid = image_size // patch_size
        self.vit = ViT(
            in_channels=in_channels,
            img_size=(image_size, image_size),
            patch_size=(patch_size, patch_size),
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            spatial_dims=2,
            classification=False,
            qkv_bias=True,
        )
        self.neck = nn.Sequential(
            nn.Conv2d(hidden_size, embed_dim, kernel_size=1, bias=False),
            LayerNorm2d(embed_dim),
            nn.Conv2d(embed_dim, embed_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(embed_dim),
        )
        channels = [embed_dim, *decoder_channels]
        self.decoder = nn.Sequential(*[_up_block(a, b) for a, b in zip(channels, channels[1:])])
        self.head = nn.Conv2d(channels[-1], num_classes, kernel_size=1)

    def _tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, self.grid, self.grid)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``logits`` (B, K, s, s), ``embedding`` (B, embed_dim, s/p, s/p) and ``hidden_states``: each block's
        tokens as maps (B, hidden, s/p, s/p)."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise InputError(
                f"the ViT student takes {self.image_size}×{self.image_size} inputs (its position embedding is "
                f"learnt for that size), got {tuple(x.shape[-2:])}: resize, or use a sliding-window inferer."
            )
        tokens, hidden = self.vit(x)
        embedding = self.neck(self._tokens_to_map(tokens))
        logits = self.head(self.decoder(embedding))
        return {
            "logits": logits,
            "embedding": embedding,
            "hidden_states": [self._tokens_to_map(h) for h in hidden],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["logits"]


def build_vit_student(
    num_classes: int = 3,
    image_size: int = 128,
    in_channels: int = 1,
    preset: str = "tiny",
    pretrained: str | None = None,
    patch_size: int = 16,
) -> ViTStudent:
    """Build the student: ``preset`` ``tiny`` (ViT-Tiny, METHODS.md §3) or ``test`` (2 blocks of width 32, for tests);
    ``patch_size`` 16 (METHODS.md §3) or 8 (a 4× longer token sequence, the decoder of :func:`decoder_channels`);
    ``pretrained`` loads a TS-KD pre-training checkpoint (``model`` of a training checkpoint, or a plain state dict),
    checked key by key so a checkpoint of another shape (preset, patch size, image size, classes) stops with a clear
    error."""
    presets = {
        "tiny": {},
        "test": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64, "embed_dim": 32},
    }
    if preset not in presets:
        raise InputError(f"student preset must be one of {sorted(presets)}, got '{preset}'.")
    patch_size = int(patch_size)
    model = ViTStudent(
        num_classes,
        image_size,
        in_channels,
        patch_size,
        decoder_channels=decoder_channels(patch_size),
        **presets[preset],
    )
    pretrained = optional_path(pretrained)
    if pretrained:
        if not Path(pretrained).is_file():
            raise CheckpointError(
                f"pre-trained student not found: '{pretrained}'. Run configs/pretrain.json first (same --bundle_root), "
                "point --pretrained at its models/pretrain/pretrained.pt, or pass --pretrained '$None' to train from "
                "scratch."
            )
        load_checked(
            model,
            pretrained,
            "pre-trained student",
            f"pre-trained student '{pretrained}' does not fit this student (preset '{preset}', patch_size "
            f"{patch_size}, image_size {image_size}, {num_classes} classes)",
        )
    return model
