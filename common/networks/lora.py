"""LoRA for the teacher through ``peft``: inject, freeze, export the adapter, merge into a plain network.

We inject adapters into sub-modules of a plain ``nn.Module`` (``peft.inject_adapter_in_model``) instead of
wrapping the whole network in a ``PeftModel``: the network keeps its own forward and state-dict names, so
MONAI inferers, checkpoint handlers and ``load_state_dict`` work on it unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from common.checkpoints import atomic_save, mismatch_report, read_state_dict
from common.errors import CheckpointError

__all__ = [
    "inject_lora",
    "merge_lora",
    "trainable_parameters",
    "adapter_state_dict",
    "load_adapter",
    "save_adapter",
    "merged_state_dict",
    "save_merged",
]


def inject_lora(
    module: nn.Module, rank: int, alpha: float | None = None, targets: Sequence[str] = ("qkv",), dropout: float = 0.0
) -> nn.Module:
    """Add LoRA (rank ``rank``, scale ``alpha / rank``) to every Linear of ``module`` whose name ends with a target.

    peft marks everything in ``module`` except the LoRA matrices as frozen; the caller decides what else trains.
    """
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}.")
    config = LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout, target_modules=list(targets)
    )
    inject_adapter_in_model(config, module)
    if not any(isinstance(m, LoraLayer) for m in module.modules()):
        raise ValueError(f"No module of {type(module).__name__} matches the LoRA targets {list(targets)}.")
    return module


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA layer of ``module`` into its base Linear (W ← W + B·A·scale) and remove the wrapper, in place."""
    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge(safe_merge=True)
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())
    return module


def trainable_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimiser should see: those with ``requires_grad``."""
    return [p for p in network.parameters() if p.requires_grad]


def adapter_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """The trained part only (LoRA matrices and the trainable decoder): small, and enough to rebuild the teacher
    from its base checkpoint."""
    names = {n for n, p in network.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in network.state_dict().items() if k in names}


def save_adapter(network: nn.Module, path: str | Path) -> Path:
    """Write :func:`adapter_state_dict` as a plain tensor dict (loads with ``weights_only=True``)."""
    return atomic_save(adapter_state_dict(network), path)


def load_adapter(network: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter written by :func:`save_adapter` (or a training checkpoint of the same teacher) into a network
    built with the same LoRA settings."""
    state = read_state_dict(path, "teacher adapter")
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    problem = mismatch_report(network.state_dict(), state, required=trainable)
    if problem:
        raise CheckpointError(
            f"Adapter {path} does not fit this teacher (check teacher_arch, num_classes, lora_rank, lora_targets): "
            f"{problem}."
        )
    network.load_state_dict(state, strict=False)
    return network


def merged_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of a copy of ``network`` with LoRA merged: it loads strictly into the same network built without
    LoRA (``lora_rank=0``)."""
    merged = merge_lora(copy.deepcopy(network).cpu())
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def save_merged(network: nn.Module, path: str | Path) -> Path:
    """Write :func:`merged_state_dict` as a plain tensor dict (loads with ``weights_only=True``)."""
    return atomic_save(merged_state_dict(network), path)
