"""Experiment tracking for configs that are not an ignite engine: :class:`ReportEngine`.

MONAI's ``--tracking mlflow`` attaches an ``MLFlowHandler`` to the config's ``train#trainer``, ``validate#evaluator``
and ``evaluator`` (adding it to ``train#handlers``, ``validate#handlers`` and ``handlers``); it logs the engines'
``state.metrics``, the loss and the executed config. A standalone report (e.g. the transfer-set quality report, an
object with ``run() -> dict``) has no engine, so nothing would be logged: :class:`ReportEngine` runs it as the single
iteration of an engine and puts its numbers in ``state.metrics``, so any handler — MLflow's included — sees them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ignite.engine import Engine

__all__ = ["ReportEngine", "numeric_items"]


class Report(Protocol):
    def run(self) -> Mapping[str, Any]: ...


def numeric_items(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested report as one flat dict, keys joined with ``_`` (``generated_psnr``);
    strings, lists and booleans are left out."""
    out: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric_items(value, f"{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class ReportEngine(Engine):
    """An engine of one iteration that runs ``report.run()``, keeps the result in ``state.output`` and its numbers
    in ``state.metrics`` (see :func:`numeric_items`), so the handlers of ``handlers`` (and MONAI's tracking, when
    the config names this engine ``evaluator`` with a ``handlers`` list) log them."""

    def __init__(self, report: Report, handlers: Sequence[Any] | None = None) -> None:
        super().__init__(self._step)
        self.report = report
        for handler in handlers or []:
            handler.attach(self)

    def _step(self, engine: Engine, batch: Any) -> Mapping[str, Any]:
        result = self.report.run()
        engine.state.metrics.update(numeric_items(result))
        return result

    def run(self, data: Any = None, max_epochs: int | None = None, **kwargs: Any):  # type: ignore[override]
        """Run the report once."""
        return super().run([0], max_epochs=1)
