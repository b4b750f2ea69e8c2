"""Learning-rate schedules named in METHODS.md."""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_poly_lr"]


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
