"""TinyViT image encoder of LiteMedSAM, re-written without timm.

Source: the TinyViT variant of MobileSAM (``ChaoningZhang/MobileSAM``, ``mobile_sam/modeling/tiny_vit_sam.py``,
Apache-2.0; TinyViT itself is Copyright (c) 2022 Microsoft, MIT, adapted from LeViT and Swin Transformer) as modified
by LiteMedSAM (``bowang-lab/MedSAM``, branch ``LiteMedSAM``, ``tiny_vit_sam.py``, Apache-2.0). LiteMedSAM's patch
embedding uses 1x1 convolutions with stride 1 (no 4x downsampling) and the last patch merging keeps the resolution, so
a 256x256 image gives a (256, 64, 64) embedding, the same grid as SAM's 1024x1024 -> 64x64.

Changes with respect to the source (module and attribute names are unchanged, so the ``image_encoder.*`` entries of
the LiteMedSAM checkpoint load with ``strict=True``):

* no timm: ``DropPath`` is MONAI's, ``to_2tuple`` is local and ``torch.nn.init.trunc_normal_`` is used;
* the eval-mode attention-bias cache (``ab``) is gone: the bias is gathered from ``attention_biases`` on every forward
  (negligible cost). The upstream cache went stale when weights were loaded or updated after ``eval()``, and
  ``train(True)`` without a cache re-registered it;
* the hard-coded 64x64 output grid and the ``out_dim in (320, 448, 576)`` stride rule are replaced by resolutions
  computed from ``img_size`` (the last patch merging has stride 1), so other image sizes divisible by 4 work;
* training-only code is dropped: layer-wise lr decay bookkeeping (``layer_lr_decay``), ``Conv2d_BN.fuse`` and the
  timm registry; gradient checkpointing uses ``use_reentrant=False``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from monai.networks.layers import DropPath
from torch import nn

__all__ = [
    "TinyViT",
    "build_litemedsam_image_encoder",
    "load_litemedsam_image_encoder_state_dict",
    "LITEMEDSAM_IMG_SIZE",
    "LITEMEDSAM_EMBED_DIM",
]

LITEMEDSAM_IMG_SIZE = 256
LITEMEDSAM_EMBED_DIM = 256


def to_2tuple(x: int | Sequence[int]) -> tuple[int, int]:
    """Return ``(x, x)`` for an int, or the two values of a length-2 sequence."""
    if isinstance(x, Sequence):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


class Conv2dBN(nn.Sequential):
    """Bias-free convolution ``c`` followed by batch norm ``bn`` (the source's ``Conv2d_BN``)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, dilation, groups, bias=False))
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0.0)
        self.add_module("bn", bn)


class PatchEmbed(nn.Module):
    """LiteMedSAM patch embedding: two pointwise Conv-BN layers, no downsampling."""

    def __init__(self, in_chans: int, embed_dim: int, resolution: tuple[int, int], activation: type[nn.Module]) -> None:
        super().__init__()
        self.patches_resolution = resolution
        self.num_patches = resolution[0] * resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 1, 1, 0),
            activation(),
            Conv2dBN(embed_dim // 2, embed_dim, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (pointwise expand, depthwise 3x3, pointwise project) on (B, C, H, W)."""

    def __init__(
        self, in_chans: int, out_chans: int, expand_ratio: float, activation: type[nn.Module], drop_path: float
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.hidden_chans = int(in_chans * expand_ratio)
        self.out_chans = out_chans
        self.conv1 = Conv2dBN(in_chans, self.hidden_chans, kernel_size=1)
        self.act1 = activation()
        self.conv2 = Conv2dBN(
            self.hidden_chans, self.hidden_chans, kernel_size=3, stride=1, padding=1, groups=self.hidden_chans
        )
        self.act2 = activation()
        self.conv3 = Conv2dBN(self.hidden_chans, out_chans, kernel_size=1, bn_weight_init=0.0)
        self.act3 = activation()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.drop_path(self.conv3(x))
        return self.act3(x + shortcut)


class PatchMerging(nn.Module):
    """Conv downsampling between stages; returns tokens (B, L, C_out).

    ``stride`` replaces the source's ``out_dim in (320, 448, 576)`` rule: LiteMedSAM's last merging has stride 1.
    """

    def __init__(
        self, input_resolution: tuple[int, int], dim: int, out_dim: int, activation: type[nn.Module], stride: int = 2
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.out_dim = out_dim
        self.stride = stride
        self.act = activation()
        self.conv1 = Conv2dBN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens (B, L, C) -> (B, C, H, W)
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Pre-norm two-layer MLP."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(self.norm(x))))
        return self.drop(self.fc2(x))


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over a window with a learned relative-position bias (LeViT style).

    The fused projection stays a single ``nn.Linear`` named ``qkv`` (LoRA targets it); its output is laid out per head
    as ``[q, k, v]``, as in the checkpoint.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        resolution: tuple[int, int] = (14, 14),
    ) -> None:
        super().__init__()
        if not (isinstance(resolution, tuple) and len(resolution) == 2):
            raise ValueError(f"resolution must be a (h, w) tuple, got {resolution!r}")
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.attn_ratio = attn_ratio

        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + 2 * self.nh_kd)
        self.proj = nn.Linear(self.dh, dim)

        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        n = len(points)
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                if offset not in offsets:
                    offsets[offset] = len(offsets)
                idxs.append(offsets[offset])
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        # derived from the window size, not stored in checkpoints
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(n, n), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        # gathered on every call (no eval-mode cache) so the bias always reflects the current parameter
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.dh)
        return self.proj(x)


class TinyViTBlock(nn.Module):
    """Windowed attention + depthwise local conv + MLP, on tokens (B, H*W, C) of a fixed resolution."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        local_conv_size: int = 3,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if window_size <= 0:
            raise ValueError("window_size must be greater than 0")
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.attn = Attention(dim, dim // num_heads, num_heads, attn_ratio=1, resolution=(window_size, window_size))
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=activation, drop=drop)
        self.local_conv = Conv2dBN(
            dim, dim, kernel_size=local_conv_size, stride=1, padding=local_conv_size // 2, groups=dim
        )

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention inside non-overlapping windows, zero-padding the grid to a multiple of the window size."""
        h, w = self.input_resolution
        b, length, c = x.shape
        ws = self.window_size
        if h == ws and w == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad_b = (ws - h % ws) % ws
        pad_r = (ws - w % ws) % ws
        if pad_b > 0 or pad_r > 0:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b > 0 or pad_r > 0:
            x = x[:, :h, :w].contiguous()
        return x.view(b, length, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"expected {h}x{w}={h * w} tokens, got {length}")
        x = x + self.drop_path(self._window_attention(x))
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.view(b, c, length).transpose(1, 2)
        return x + self.drop_path(self.mlp(x))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, "
            f"window_size={self.window_size}, mlp_ratio={self.mlp_ratio}"
        )


class _Stage(nn.Module):
    """Blocks of one stage followed by an optional patch merging (shared forward of ConvLayer/BasicLayer)."""

    blocks: nn.ModuleList
    downsample: PatchMerging | None
    use_checkpoint: bool

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        drop_path: float | Sequence[float],
        downsample: PatchMerging | None,
        use_checkpoint: bool,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.downsample = downsample
        self.drop_path_rates = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class ConvLayer(_Stage):
    """First stage: MBConv blocks on (B, C, H, W)."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        activation: type[nn.Module],
        drop_path: float | Sequence[float] = 0.0,
        downsample: PatchMerging | None = None,
        use_checkpoint: bool = False,
        conv_expand_ratio: float = 4.0,
    ) -> None:
        super().__init__(dim, input_resolution, depth, drop_path, downsample, use_checkpoint)
        self.blocks = nn.ModuleList([MBConv(dim, dim, conv_expand_ratio, activation, r) for r in self.drop_path_rates])


class BasicLayer(_Stage):
    """Transformer stage: TinyViT blocks on tokens (B, H*W, C)."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        downsample: PatchMerging | None = None,
        use_checkpoint: bool = False,
        local_conv_size: int = 3,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__(dim, input_resolution, depth, drop_path, downsample, use_checkpoint)
        self.blocks = nn.ModuleList(
            [
                TinyViTBlock(
                    dim=dim,
                    input_resolution=input_resolution,
                    num_heads=num_heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    drop=drop,
                    drop_path=rate,
                    local_conv_size=local_conv_size,
                    activation=activation,
                )
                for rate in self.drop_path_rates
            ]
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, input_resolution={self.input_resolution}, depth={self.depth}"


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of (B, C, H, W), as in SAM's neck."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck: (B, in_chans, H, W) -> (B, out_chans, H/4, W/4) for LiteMedSAM.

    The input size is fixed at construction (``img_size``, both sides divisible by 4) because the stages work on
    fixed token grids. The four stages run at 1, 1/2, 1/4 and 1/4 of the input resolution.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = LITEMEDSAM_EMBED_DIM,
    ) -> None:
        super().__init__()
        img_hw = to_2tuple(img_size)
        if min(img_hw) <= 0 or img_hw[0] % 4 or img_hw[1] % 4:
            raise ValueError(
                f"TinyViT supports image sizes whose sides are positive multiples of 4 (e.g. 256 or 512), got {img_size}"
            )
        num_layers = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(window_sizes) == num_layers) or num_layers < 2:
            raise ValueError("embed_dims, depths, num_heads and window_sizes must have the same length (>= 2)")
        self.img_size = img_hw
        self.in_chans = in_chans
        self.depths = list(depths)
        self.num_layers = num_layers
        self.mlp_ratio = mlp_ratio
        activation = nn.GELU

        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], img_hw, activation)
        self.patches_resolution = self.patch_embed.patches_resolution

        # stochastic depth decay rule
        dpr = [float(x) for x in torch.linspace(0, drop_path_rate, sum(depths))]

        self.layers = nn.ModuleList()
        res = img_hw
        for i in range(num_layers):
            downsample = None
            next_res = res
            if i < num_layers - 1:
                # LiteMedSAM/MobileSAM: stride 2 except for the last merging, which keeps the resolution
                stride = 1 if i == num_layers - 2 else 2
                downsample = PatchMerging(res, embed_dims[i], embed_dims[i + 1], activation, stride=stride)
                next_res = (res[0] // stride, res[1] // stride)
            stage_dpr = dpr[sum(depths[:i]) : sum(depths[: i + 1])]
            layer: nn.Module
            if i == 0:
                layer = ConvLayer(
                    dim=embed_dims[i],
                    input_resolution=res,
                    depth=depths[i],
                    activation=activation,
                    drop_path=stage_dpr,
                    downsample=downsample,
                    use_checkpoint=use_checkpoint,
                    conv_expand_ratio=mbconv_expand_ratio,
                )
            else:
                layer = BasicLayer(
                    dim=embed_dims[i],
                    input_resolution=res,
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_sizes[i],
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    drop_path=stage_dpr,
                    downsample=downsample,
                    use_checkpoint=use_checkpoint,
                    local_conv_size=local_conv_size,
                    activation=activation,
                )
            self.layers.append(layer)
            res = next_res
        self.output_resolution: tuple[int, int] = res

        self.apply(self._init_weights)

        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Truncated-normal Linear weights, zero biases, unit LayerNorms (as the source)."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0.0)
            nn.init.constant_(m.weight, 1.0)

    def no_weight_decay_keywords(self) -> set[str]:
        """Parameter-name keywords to exclude from weight decay."""
        return {"attention_biases"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> embedding (B, out_chans, H', W')."""
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.img_size or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected input (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), got {tuple(x.shape)}; "
                "build the encoder with a matching img_size"
            )
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        h, w = self.output_resolution
        x = x.view(b, h, w, c).permute(0, 3, 1, 2)
        return self.neck(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def build_litemedsam_image_encoder(img_size: int = LITEMEDSAM_IMG_SIZE) -> TinyViT:
    """TinyViT-5M with LiteMedSAM's hyper-parameters; 256x256 input -> (256, 64, 64) embedding.

    Load pretrained weights from the ``image_encoder.`` entries of ``lite_medsam.pth`` (strict). Other sizes
    (multiples of 4, e.g. 512 -> 128x128) reuse the same weights but were not what LiteMedSAM was trained on.
    """
    return TinyViT(
        img_size=img_size,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
    )


def load_litemedsam_image_encoder_state_dict(
    checkpoint_path: str | os.PathLike[str], prefix: str = "image_encoder."
) -> dict[str, torch.Tensor]:
    """Read a LiteMedSAM checkpoint (plain or under ``model``/``state_dict``) and return its image-encoder entries.

    Keys are stripped of ``prefix`` so the result loads into :func:`build_litemedsam_image_encoder` with ``strict=True``.
    """
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise KeyError(f"no '{prefix}*' entries in {checkpoint_path}")
    return encoder_state
