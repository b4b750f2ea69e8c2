"""A progress bar that MONAI's handler lists can attach with ``handler.attach(engine)`` alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ignite.engine import Engine
from ignite.handlers import ProgressBar as _IgniteProgressBar

__all__ = ["ProgressBar"]


def _loss_of(output) -> dict:
    item = output[0] if isinstance(output, list) and output else output
    if not (isinstance(item, dict) and "loss" in item):
        return {}
    loss = item["loss"]
    return {"loss": float(loss.detach() if hasattr(loss, "detach") else loss)}


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
