"""The teacher: Segment Anything (ViT-B/L/H, LiteMedSAM, or a tiny test preset) as a prompt-free K-class segmenter.

METHODS.md §1 (the SAMed recipe): the prompt encoder is called with no points, boxes or masks; the mask decoder
has K mask tokens (K = classes including background) and all K masks are returned as logits (B, K, s/4, s/4 for
ViT), upsampled bilinearly to the input size. LoRA (``peft``) goes on the image encoder's fused ``qkv`` Linears;
the image encoder's own weights are frozen, the prompt encoder and mask decoder train.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoints import atomic_save, mismatch_report, optional_path, read_state_dict
from common.errors import CheckpointError, InputError
from common.networks.lora import inject_lora, load_adapter

__all__ = [
    "SamTeacher",
    "TeacherArch",
    "TEACHER_ARCHS",
    "CHANNEL_MODES",
    "build_mask_decoder",
    "build_teacher",
    "load_teacher_checkpoint",
    "sam_modeling",
]

# How C input channels become the 3 the SAM encoder was trained on (see SamTeacher).
CHANNEL_MODES = ("auto", "repeat", "composite", "conv")

# SAM's ImageNet pixel statistics, for inputs scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sam_modeling() -> types.ModuleType:
    """``segment_anything.modeling`` without running the package ``__init__``, which imports torchvision.

    When torchvision is missing (the CPU torch here), ``segment_anything`` is registered as a bare package whose
    ``__path__`` points at the installed one, so only the modeling code (pure torch) is imported.
    """
    if "segment_anything" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("segment_anything is not installed: pip install segment-anything")
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling")


@dataclass(frozen=True)
class TeacherArch:
    """Shape of one teacher architecture (SAM's ``sam_model_registry`` values for the ViTs)."""

    encoder: str  # "vit" or "tiny_vit"
    image_size: int  # native input size
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    normalize: bool = True  # SAM checkpoints expect ImageNet-normalised pixels; LiteMedSAM takes [0, 1]
    trained_mask_tokens: int = 4  # SAM trains all 4 mask tokens; MedSAM/LiteMedSAM only token 0 (one mask per box)
    lora_rank: int = 4  # METHODS.md §1 default for this backbone

    @property
    def stride(self) -> int:
        """Input pixels per image-embedding pixel."""
        return 16 if self.encoder == "vit" else 4


TEACHER_ARCHS: dict[str, TeacherArch] = {
    "vit_b": TeacherArch("vit", 1024, 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": TeacherArch("vit", 1024, 1024, 24, 16, (5, 11, 17, 23), lora_rank=8),
    "vit_h": TeacherArch("vit", 1024, 1280, 32, 16, (7, 15, 23, 31)),
    "litemedsam": TeacherArch("tiny_vit", 256, normalize=False, trained_mask_tokens=1),
    # a few layers and a small width so that tests run in seconds
    "test": TeacherArch(
        "vit", 64, 32, 2, 2, (1,), window_size=2, prompt_dim=32, decoder_depth=1, decoder_mlp_dim=64,
        decoder_heads=2, iou_head_hidden_dim=32, mask_in_chans=4,
    ),
}  # fmt: skip


class EmbeddingCache:
    """Image embeddings of a frozen image encoder on disk (``cache_dir/<encoder fingerprint>/<image hash>.pt``,
    float16), so that a teacher whose encoder does not train (``encoder="frozen"``) runs it once per image: decoder
    fine-tuning then costs a decoder pass per step (about 35× less than LoRA through LiteMedSAM's encoder at 256 px on
    a CPU), and the students' teacher-logit cache reuses the same embeddings. Keyed by the preprocessed 3-channel
    input's content and the encoder's weights, so a changed image or encoder never serves a stale entry."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        self._root: Path | None = None

    def _fingerprint(self, encoder: nn.Module, size: int) -> str:
        h = hashlib.sha256(f"embedding size={size}".encode())
        for name, tensor in sorted(encoder.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()[:24]

    def __call__(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The embeddings of the preprocessed batch ``x`` (B,3,S,S): read when stored, else computed and stored."""
        if self._root is None:
            self._root = self.cache_dir / self._fingerprint(encoder, int(x.shape[-1]))
        out: list[torch.Tensor | None] = []
        paths = []
        for image in x:
            data = image.detach().float().cpu().contiguous().as_subclass(torch.Tensor).numpy()
            paths.append(
                self._root / f"{hashlib.sha256(str(data.shape).encode() + data.tobytes()).hexdigest()[:32]}.pt"
            )
            out.append(
                torch.load(paths[-1], map_location=x.device, weights_only=True).float() if paths[-1].is_file() else None
            )
        missing = [i for i, e in enumerate(out) if e is None]
        if missing:
            with torch.no_grad():
                computed = encoder(x[missing])
            for i, embedding in zip(missing, computed):
                stored = embedding.detach().half().as_subclass(torch.Tensor)  # no MetaTensor metadata on disk
                atomic_save(stored.cpu(), paths[i])
                out[i] = stored.float()  # as later reads will give it
        return torch.stack(out)


class SamTeacher(nn.Module):
    """Prompt-free multi-class SAM: image (B, C, H, W) in [0, 1] → logits (B, K, H, W).

    ``forward_features`` also returns the image embedding (B, C, s/stride, s/stride) for feature distillation.
    Inputs whose size differs from ``image_size`` are resized to it, and the logits back to the input size.

    The frozen encoder takes 3 channels; ``channel_mode`` maps the C input channels to them:

    - ``repeat`` (``auto`` for C = 1): a grey image copied into R, G and B, as SAM / MedSAM see grey scans;
    - RGB (C = 3) goes in as it is (``auto``);
    - ``composite`` (``auto`` for C = 2, e.g. FLAIR + T1c): (c0, c1, (c0 + c1) / 2), a false-colour image whose
      channels all stay in [0, 1] and whose third channel is the grey average, so every encoder input channel sees
      an image of the usual statistics;
    - ``conv`` (``auto`` for C > 3): a trainable 1×1 convolution C → 3 initialised to the channel mean (the grey
      image at first), trained with the LoRA weights and saved in the adapter.

    ``in_channels`` None keeps the original behaviour: 1 or 3 channels, whichever is given.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        image_size: int,
        normalize: bool = True,
        in_channels: int | None = None,
        channel_mode: str = "auto",
        embedding_cache: EmbeddingCache | None = None,
    ) -> None:
        super().__init__()
        self.embedding_cache = embedding_cache  # used only while the encoder is frozen (see forward_features)
        if channel_mode not in CHANNEL_MODES:
            raise InputError(f"channel_mode must be one of {CHANNEL_MODES}, got '{channel_mode}'.")
        if in_channels is not None and in_channels < 1:
            raise InputError(f"in_channels must be >= 1, got {in_channels}.")
        if channel_mode == "auto" and in_channels is not None:
            channel_mode = {1: "repeat", 2: "composite", 3: "auto"}.get(in_channels, "conv")
        if channel_mode == "composite" and in_channels != 2:
            raise InputError(f"channel_mode 'composite' maps 2 channels to 3, got in_channels={in_channels}.")
        if channel_mode == "repeat" and in_channels not in (None, 1):
            raise InputError(f"channel_mode 'repeat' copies one grey channel, got in_channels={in_channels}.")
        if channel_mode == "conv" and in_channels is None:
            raise InputError("channel_mode 'conv' needs in_channels.")
        self.in_channels, self.channel_mode = in_channels, channel_mode
        if channel_mode == "conv":
            self.channel_adapter = nn.Conv2d(in_channels, 3, kernel_size=1)
            nn.init.constant_(self.channel_adapter.weight, 1.0 / in_channels)
            nn.init.zeros_(self.channel_adapter.bias)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size
        self.num_classes = mask_decoder.num_mask_tokens
        mean = IMAGENET_MEAN if normalize else (0.0, 0.0, 0.0)
        std = IMAGENET_STD if normalize else (1.0, 1.0, 1.0)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> SamTeacher:
        """Train mode, except for frozen normalisation layers: a frozen encoder's BatchNorm statistics (LiteMedSAM's
        TinyViT) keep their pretrained values instead of drifting with the fine-tuning data, so the base
        checkpoint plus ``adapter.pt`` rebuilds exactly the network that ``model_merged.pt`` holds. A wholly frozen
        encoder stays in eval mode (no stochastic depth: its embedding of an image is one, as a cache needs)."""
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
            if self.encoder_frozen:
                self.image_encoder.eval()
        return self

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.image_encoder.parameters())

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """C input channels → the encoder's 3 (see the class docstring)."""
        c = x.shape[1]
        if self.in_channels is not None and c != self.in_channels:
            raise InputError(f"the teacher takes {self.in_channels}-channel images, got {c} channels.")
        if self.channel_mode == "conv":
            return self.channel_adapter(x)
        if self.channel_mode == "composite":
            return torch.cat([x, x.mean(dim=1, keepdim=True)], dim=1)
        if c == 1:
            return x.expand(-1, 3, -1, -1)
        if c != 3:
            raise InputError(f"The teacher takes 1- or 3-channel images, got {c} channels (set in_channels).")
        return x

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """C channels → 3, resize to ``image_size``, pixel normalisation."""
        x = self.to_rgb(x)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - self.pixel_mean) / self.pixel_std

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits at the input size and the image embedding."""
        size = x.shape[-2:]
        x = self.preprocess(x)
        if self.embedding_cache is not None and self.encoder_frozen:
            embedding = self.embedding_cache(self.image_encoder, x)
        else:
            embedding = self.image_encoder(x)
        # Prompt-free: no points, boxes or masks. Batch 1 sparse/dense prompts broadcast over the B images.
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        low_res, _ = self.mask_decoder.predict_masks(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        logits = F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
        return {"logits": logits, "embedding": embedding}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["logits"]


def build_mask_decoder(arch: TeacherArch, num_classes: int) -> nn.Module:
    """SAM's ``MaskDecoder`` with K mask tokens, shaped for ``arch``: the teacher's, and the SAM-decoder student's
    (which loads the teacher's weights into it)."""
    modeling = sam_modeling()
    return modeling.MaskDecoder(
        num_multimask_outputs=num_classes - 1,  # K mask tokens in all
        transformer=modeling.TwoWayTransformer(
            depth=arch.decoder_depth,
            embedding_dim=arch.prompt_dim,
            mlp_dim=arch.decoder_mlp_dim,
            num_heads=arch.decoder_heads,
        ),
        transformer_dim=arch.prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=arch.iou_head_hidden_dim,
    )


def _build_modules(
    arch: TeacherArch, image_size: int, num_classes: int, in_channels: int | None = None, channel_mode: str = "auto"
) -> SamTeacher:
    modeling = sam_modeling()
    if image_size % 16:
        raise InputError(f"image_size must be a multiple of 16, got {image_size}.")
    if arch.encoder == "vit":
        image_encoder = modeling.ImageEncoderViT(
            depth=arch.depth,
            embed_dim=arch.embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=arch.num_heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_dim,
        )
    else:
        from common.networks.tiny_vit import build_litemedsam_image_encoder

        image_encoder = build_litemedsam_image_encoder(img_size=image_size)
    embed = image_size // arch.stride
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=arch.prompt_dim,
        image_embedding_size=(embed, embed),
        input_image_size=(image_size, image_size),
        mask_in_chans=arch.mask_in_chans,
    )
    mask_decoder = build_mask_decoder(arch, num_classes)
    return SamTeacher(
        image_encoder,
        prompt_encoder,
        mask_decoder,
        image_size,
        normalize=arch.normalize,
        in_channels=in_channels,
        channel_mode=channel_mode,
    )


OFFICIAL_MASK_TOKENS = 4  # SAM's and (Lite)MedSAM's released decoders: 3 multimask outputs + 1


def _adapt_state_dict(
    state: dict[str, torch.Tensor], model: SamTeacher, arch: TeacherArch, fine_tuned: bool | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Make a SAM checkpoint fit the model's input size and class count; return the new dict and what changed.

    - absolute position embedding (1, g, g, C): bilinear resize to the model's grid (image_size / 16);
    - relative position tables of the global-attention blocks (selected by index): linear resize to 2·g − 1;
    - mask tokens, their hyper-network MLPs and the IoU head's last layer: token i starts from pretrained token
      i mod n, n the number of tokens the checkpoint actually trained (SAM: 4; MedSAM/LiteMedSAM: 1, its tokens
      1-3 are untrained and give near-constant masks), so every class starts from a trained mask token.

    A fine-tuned teacher (``model_merged.pt``: K tokens, every one trained for its class) is loaded as it is:
    ``fine_tuned`` True, or None to recognise it by its K ≠ 4 tokens matching the model's K (a fine-tuned 4-class
    teacher cannot be told from an official checkpoint: pass ``fine_tuned=True``). Replicating token 0 over such a
    checkpoint would erase every class but the first.
    """
    own = model.state_dict()
    out = dict(state)
    notes = []
    adapter = [k for k in own if k.startswith("channel_adapter.") and k not in state]
    for key in adapter:  # a SAM checkpoint has no C -> 3 adapter: it starts from its own initialisation
        out[key] = own[key]
    if adapter:
        notes.append("channel_adapter initialised to the channel mean")
    key = "image_encoder.pos_embed"
    if key in state and key in own and state[key].shape != own[key].shape:
        pos = state[key].permute(0, 3, 1, 2).float()
        pos = F.interpolate(pos, size=own[key].shape[1:3], mode="bilinear", align_corners=False)
        out[key] = pos.permute(0, 2, 3, 1).to(state[key].dtype)
        notes.append(f"pos_embed {tuple(state[key].shape)} -> {tuple(own[key].shape)}")
    if arch.encoder == "vit":
        for i in arch.global_attn_indexes:
            for axis in ("h", "w"):
                key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
                if key in state and key in own and state[key].shape != own[key].shape:
                    table = state[key].float().t().unsqueeze(0)  # (1, head_dim, L)
                    table = F.interpolate(table, size=own[key].shape[0], mode="linear", align_corners=False)
                    out[key] = table[0].t().to(state[key].dtype)
                    notes.append(f"{key} {tuple(state[key].shape)} -> {tuple(own[key].shape)}")
    n_ckpt = state["mask_decoder.mask_tokens.weight"].shape[0] if "mask_decoder.mask_tokens.weight" in state else 0
    k = model.num_classes
    if fine_tuned is None:
        fine_tuned = n_ckpt == k and n_ckpt != OFFICIAL_MASK_TOKENS
    n_trained = n_ckpt if fine_tuned else min(n_ckpt, arch.trained_mask_tokens)
    if n_ckpt and (n_ckpt != k or n_trained < n_ckpt):
        rows = torch.arange(k) % n_trained
        out["mask_decoder.mask_tokens.weight"] = state["mask_decoder.mask_tokens.weight"][rows]
        last = max(
            int(m.group(1)) for s in state if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", s))
        )
        for p in ("weight", "bias"):
            name = f"mask_decoder.iou_prediction_head.layers.{last}.{p}"
            out[name] = state[name][rows]
        hyper = re.compile(r"mask_decoder\.output_hypernetworks_mlps\.(\d+)\.(.+)")
        for s in list(out):
            if (m := hyper.match(s)) and int(m.group(1)) >= k:
                del out[s]
        for i in range(k):
            for s in state:
                if (m := hyper.match(s)) and int(m.group(1)) == i % n_trained:
                    out[f"mask_decoder.output_hypernetworks_mlps.{i}.{m.group(2)}"] = state[s]
        notes.append(f"mask tokens {n_ckpt} -> {k} (from the first {n_trained})")
    return out, notes


def load_teacher_checkpoint(
    model: SamTeacher, path: str | Path, arch_name: str, fine_tuned: bool | None = None
) -> list[str]:
    """Load an official ``sam_vit_*.pth`` / ``lite_medsam.pth`` or a fine-tuned ``model_merged.pt`` into ``model``
    (before LoRA), strictly after :func:`_adapt_state_dict`; a checkpoint of another architecture gets a short,
    clear error."""
    state = read_state_dict(path, "teacher_ckpt")
    state, notes = _adapt_state_dict(state, model, TEACHER_ARCHS[arch_name], fine_tuned)
    problem = mismatch_report(model.state_dict(), state)
    if problem:
        raise CheckpointError(
            f"Checkpoint {path} does not fit teacher_arch='{arch_name}': {problem}. "
            "Is it the checkpoint of another architecture?"
        )
    model.load_state_dict(state, strict=True)
    return notes


def build_teacher(
    arch: str = "litemedsam",
    checkpoint: str | Path | None = None,
    image_size: int | None = None,
    num_classes: int = 3,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    lora_targets: Sequence[str] = ("qkv",),
    lora_dropout: float = 0.0,
    lora_decoder: bool = False,
    adapter: str | Path | None = None,
    in_channels: int | None = None,
    channel_mode: str = "auto",
    encoder: str = "lora",
    embedding_cache_dir: str | Path | None = None,
    fine_tuned_checkpoint: bool | None = None,
) -> SamTeacher:
    """Build the teacher: base weights from ``checkpoint`` (None: random init), LoRA on the image encoder.

    Args:
        arch: ``vit_b``, ``vit_l``, ``vit_h``, ``litemedsam`` or ``test`` (a few small layers, for tests).
        checkpoint: local path of the official SAM / LiteMedSAM weights; None builds randomly initialised.
        image_size: input size (default: the architecture's native size); position embeddings are resized.
        num_classes: K, background included (K = 1: one binary mask).
        lora_rank: LoRA rank r (None: METHODS.md default of the backbone, 4, or 8 for ViT-L; 0: no LoRA and
            every weight trainable, the layout of a merged export).
        lora_alpha: LoRA alpha (None: equal to the rank, i.e. scale 1).
        lora_targets: names of the image encoder's Linears that get LoRA.
        lora_decoder: also put LoRA on the mask decoder's attention projections (the decoder's own weights then
            freeze; only its LoRA trains).
        adapter: a trained adapter (``adapter.pt``) or training checkpoint of this teacher to load on top.
        in_channels: the images' channel count (None: 1 or 3 as given).
        channel_mode: how C channels become the encoder's 3 (:class:`SamTeacher`): ``auto``, ``repeat``,
            ``composite`` or ``conv``.
        encoder: ``lora`` (LoRA on the image encoder, METHODS.md §1) or ``frozen`` (no LoRA: the encoder stays as
            the checkpoint has it, the prompt encoder and mask decoder train; with ``embedding_cache_dir`` the
            encoder then runs once per image, :class:`EmbeddingCache`).
        fine_tuned_checkpoint: ``checkpoint`` is a fine-tuned teacher whose K mask tokens all load as they are
            (None: recognised by its token count, see :func:`_adapt_state_dict`).
        embedding_cache_dir: where the encoder's embeddings are kept while it is frozen (``encoder="frozen"``, or
            the teacher of a student, whose weights never train); None: no cache.
    """
    if arch not in TEACHER_ARCHS:
        raise InputError(f"teacher_arch must be one of {sorted(TEACHER_ARCHS)}, got '{arch}'.")
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}.")
    spec = TEACHER_ARCHS[arch]
    checkpoint, adapter = optional_path(checkpoint), optional_path(adapter)
    model = _build_modules(spec, image_size or spec.image_size, num_classes, in_channels, channel_mode)
    if checkpoint:
        load_teacher_checkpoint(model, checkpoint, arch, fine_tuned_checkpoint)
    if encoder not in ("lora", "frozen"):
        raise InputError(f"teacher encoder must be 'lora' or 'frozen', got '{encoder}'.")
    rank = spec.lora_rank if lora_rank is None else lora_rank
    if encoder == "frozen" and rank > 0:
        if lora_decoder:
            inject_lora(model.mask_decoder, rank, lora_alpha, ("q_proj", "k_proj", "v_proj", "out_proj"), lora_dropout)
        for name, p in model.named_parameters():
            trainable = not name.startswith("image_encoder.") and (
                "lora_" in name or not (lora_decoder and name.startswith("mask_decoder."))
            )
            p.requires_grad_(trainable)
    elif rank > 0:
        inject_lora(model.image_encoder, rank, lora_alpha, lora_targets, lora_dropout)
        if lora_decoder:
            inject_lora(model.mask_decoder, rank, lora_alpha, ("q_proj", "k_proj", "v_proj", "out_proj"), lora_dropout)
        for name, p in model.named_parameters():
            lora = "lora_" in name
            if name.startswith("image_encoder."):
                p.requires_grad_(lora)
            elif name.startswith("mask_decoder.") and lora_decoder:
                p.requires_grad_(lora)
            else:
                p.requires_grad_(True)
    if adapter:
        load_adapter(model, adapter)
    if optional_path(embedding_cache_dir):  # used whenever the encoder is frozen: here, or as a student's teacher
        model.embedding_cache = EmbeddingCache(embedding_cache_dir)
    return model.train()  # train mode as SamTeacher defines it: frozen BatchNorm layers stay in eval mode
