"""Learning-rate schedules named in METHODS.md."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_poly_lr"]


def warmup_poly_lr(optimizer: Optimizer, total_iters: int, warmup_iters: int = 250, power: float = 0.9) -> LambdaLR:
    """Per-iteration schedule of SAMed: linear warm-up to the base lr over ``warmup_iters``, then poly decay
    lr·(1 − t/T)^power to 0 at ``total_iters``. Step it every iteration (``LrScheduleHandler(epoch_level=False)``).

    With fewer iterations than ``warmup_iters`` (short runs), the warm-up is shortened to a tenth of the run.
    """
    total_iters = max(int(total_iters), 1)
    warmup = min(int(warmup_iters), max(total_iters // 10, 0)) if warmup_iters >= total_iters else int(warmup_iters)

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        t = (it - warmup) / max(total_iters - warmup, 1)
        return max(1.0 - t, 0.0) ** power

    return LambdaLR(optimizer, factor)
