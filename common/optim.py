"""Learning-rate schedules named in METHODS.md, the iteration budget that sizes a run, and layer-wise lr decay for a
ViT's parameter groups, as named components a config references instead of computing them in JSON."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence, Sized

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from common.engines.distillation import Stage, stage_boundaries, total_iterations

__all__ = ["IterationBudget", "warmup_poly_lr", "warmup_poly_schedule", "layer_decay_param_groups"]


def warmup_poly_lr(
    optimizer: Optimizer,
    total_iters: int,
    warmup_iters: int = 250,
    power: float = 0.9,
    restarts: Sequence[int] = (),
) -> LambdaLR:
    """Per-iteration schedule of SAMed: linear warm-up to the base lr over ``warmup_iters``, then poly decay
    lr·(1 − t/T)^power to 0 at the end. Step it every iteration (``LrScheduleHandler(epoch_level=False)``).

    ``restarts``: iterations where the schedule starts again (one per training stage after the first), each segment
    with its own warm-up and decay. A warm-up at least as long as a segment is shortened to a tenth of it.

    One ``LambdaLR`` rather than torch's ``SequentialLR(LinearLR, PolynomialLR)``: the restarts, the shortened
    warm-up and SAMed's (t + 1)/warm-up factor are not what those give, and their chained multiplicative updates
    would not reproduce earlier runs bit for bit.
    """
    bounds = [0] + sorted(int(r) for r in restarts if 0 < int(r) < int(total_iters)) + [max(int(total_iters), 1)]

    def factor(it: int) -> float:
        start = max(b for b in bounds[:-1] if b <= it) if it >= 0 else 0
        end = min(b for b in bounds[1:] if b > start)
        length, t = end - start, it - start
        warmup = int(warmup_iters) if warmup_iters < length else length // 10
        if t < warmup:
            return (t + 1) / warmup
        return max(1.0 - (t - warmup) / max(length - warmup, 1), 0.0) ** power

    return LambdaLR(optimizer, factor)


def warmup_poly_schedule(
    optimizer: Optimizer,
    loader: Sized,
    epochs: int | None = None,
    stages: Sequence[Stage | Mapping] | None = None,
    warmup_iters: int = 250,
    power: float = 0.9,
    restart_at_stages: bool = False,
) -> LambdaLR:
    """:func:`warmup_poly_lr` over a whole run of ``epochs`` epochs, or of ``stages`` (their epochs summed), of
    ``len(loader)`` iterations each; ``restart_at_stages`` gives every stage after the first its own warm-up and
    decay (IAD's KAS starts again from the KIS student)."""
    if (epochs is None) == (stages is None):
        raise ValueError("warmup_poly_schedule takes epochs or stages, not both.")
    per_epoch = len(loader)
    total = int(epochs) * per_epoch if stages is None else total_iterations(stages, per_epoch)
    restarts = stage_boundaries(stages, per_epoch) if stages is not None and restart_at_stages else ()
    return warmup_poly_lr(optimizer, total, warmup_iters, power, restarts)


class IterationBudget:
    """A run sized in iterations rather than epochs, so that every label budget and transfer-set size trains for the
    same number of optimiser steps: ``epochs`` and ``val_interval`` (epochs between validations) for ``iterations``
    iterations of ``len(loader)`` each, validating about every ``val_every`` iterations.

    ``val_interval`` = max(1, min(round(val_every / n), ceil(iterations / n))) epochs (at least one validation),
    ``epochs`` = val_interval · max(1, round(iterations / (val_interval · n))) (a whole number of validation
    intervals, so the last epoch is validated), with n = ``len(loader)``.
    """

    def __init__(self, iterations: int, loader: Sized, val_every: int) -> None:
        n = len(loader)
        if n < 1 or int(iterations) < 1 or int(val_every) < 1:
            raise ValueError(f"an iteration budget needs iterations, val_every and batches >= 1, got "
                             f"{iterations}, {val_every}, {n}.")  # fmt: skip
        self.iterations, self.iters_per_epoch = int(iterations), n
        self.val_interval = max(1, min(round(int(val_every) / n), math.ceil(self.iterations / n)))
        self.epochs = self.val_interval * max(1, round(self.iterations / (self.val_interval * n)))


def layer_decay_param_groups(
    network: nn.Module, lr: float, decay: float = 1.0, encoder: str = "vit", neck: Sequence[str] = ("neck",)
) -> list[dict]:
    """Optimiser parameter groups with layer-wise lr decay (BEiT, MAE fine-tuning) for a network with a ViT
    ``encoder`` (MONAI ``ViT``: ``patch_embedding``, ``blocks``, ``norm``).

    With L blocks: block i (0-based, the input side first) gets lr·decay^(L − i), the embeddings (patch and position)
    lr·decay^(L + 1), and everything after the blocks (the encoder's final norm, the ``neck`` modules, the decoder and
    head) the full lr. Each group is ``{"params", "lr", "lr_scale", "name"}``; an lr schedule then scales every group
    alike (``LambdaLR`` multiplies each group's initial lr). The groups are ``embeddings``, ``block_0`` …, ``neck``
    (encoder norm + neck) and ``decoder`` (the rest), so the encoder side can be frozen group by group.

    ``decay`` 1 is no decay: one group of all parameters, in ``network.parameters()`` order, exactly the plain
    optimiser (and its checkpoints) of before.
    """
    decay = float(decay)
    if not 0 < decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1: off), got {decay}.")
    if decay == 1:
        return [{"params": list(network.parameters()), "lr": float(lr), "lr_scale": 1.0, "name": "all"}]
    block = re.compile(rf"^{re.escape(encoder)}\.blocks\.(\d+)\.")
    named = list(network.named_parameters())
    depths = {int(m.group(1)) for name, _ in named if (m := block.match(name))}
    if not depths:
        raise ValueError(
            f"layer decay needs a ViT under '{encoder}' with blocks ('{encoder}.blocks.<i>.'); none found."
        )
    layers = max(depths) + 1
    groups: dict[str, dict] = {}

    def add(key: str, scale: float, param: nn.Parameter) -> None:
        group = groups.setdefault(key, {"params": [], "lr": float(lr) * scale, "lr_scale": scale, "name": key})
        group["params"].append(param)

    heads = tuple(f"{n}." for n in (f"{encoder}.norm", *neck))
    for name, param in named:
        match = block.match(name)
        if match:
            i = int(match.group(1))
            add(f"block_{i}", decay ** (layers - i), param)
        elif name.startswith(f"{encoder}.patch_embedding."):
            add("embeddings", decay ** (layers + 1), param)
        elif name.startswith(heads):
            add("neck", 1.0, param)
        else:
            add("decoder", 1.0, param)
    order = ["embeddings", *(f"block_{i}" for i in range(layers)), "neck", "decoder"]
    return [groups[k] for k in order if k in groups]
