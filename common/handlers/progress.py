"""A progress bar that MONAI's handler lists can attach with ``handler.attach(engine)`` alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ignite.engine import Engine
from ignite.handlers import ProgressBar as _IgniteProgressBar

from common.engines.distillation import iteration_loss

__all__ = ["ProgressBar"]


def _loss_of(output) -> dict:
    """``{"loss": value}`` of an iteration's output (its first item when decollated); {} when it has no loss."""
    try:
        return {"loss": iteration_loss(output)}
    except (KeyError, TypeError, IndexError):
        return {}


class ProgressBar(_IgniteProgressBar):
    """ignite's tqdm progress bar showing the iteration loss (and any named metrics) of the engine it is attached to."""

    def __init__(
        self, metric_names: Sequence[str] | str | None = None, output_transform: Callable | None = _loss_of, **kwargs
    ) -> None:
        kwargs.setdefault("persist", True)
        super().__init__(**kwargs)
        self._metric_names = metric_names
        self._output_transform = output_transform

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # type: ignore[override]
        kwargs.setdefault("metric_names", self._metric_names)
        kwargs.setdefault("output_transform", self._output_transform)
        super().attach(engine, *args, **kwargs)
