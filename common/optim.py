"""Learning-rate schedules named in METHODS.md, and the iteration budget that sizes a run, as named components a
config references instead of computing them in JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Sized

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from common.engines.distillation import Stage, stage_boundaries, total_iterations

__all__ = ["IterationBudget", "warmup_poly_lr", "warmup_poly_schedule"]


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
