"""Stop training at the first NaN or Inf loss, naming the term that went bad, before it reaches the weights."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from common.engines.distillation import loss_terms
from common.errors import NonFiniteLossError

__all__ = ["NonFiniteLossGuard"]


def _batch_files(batch, key: str = "image") -> list[str]:
    item = batch.get(key) if isinstance(batch, Mapping) else None
    names = (getattr(item, "meta", None) or {}).get("filename_or_obj", [])
    return [os.path.basename(str(n)) for n in ([names] if isinstance(names, str) else names)]


class NonFiniteLossGuard:
    """Trainer handler: when the loss or one of its named terms (``DistillationTrainer``'s ``term_<name>``) is NaN
    or Inf, raise :class:`NonFiniteLossError` naming the term, epoch, iteration, the batch's image files and the
    last good checkpoint (``engine.state.last_checkpoint``, kept by
    :class:`common.handlers.resume.ResumableCheckpoint`).

    It runs on ``LOSS_COMPLETED``, i.e. before the backward pass and the optimiser step, so the bad step never
    changes the weights and no checkpoint is written after it: ``last.pt`` stays the last good state.
    """

    def attach(self, engine: Engine) -> None:
        has_loss_event = engine.has_registered_events(IterationEvents.LOSS_COMPLETED)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED if has_loss_event else Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        item = output[0] if isinstance(output, list) else output
        if not isinstance(item, Mapping) or Keys.LOSS not in item:
            return
        terms = loss_terms(output)
        total = terms.pop("loss")
        bad = [name for name, v in terms.items() if not math.isfinite(v)]
        if not bad and math.isfinite(total):
            return
        shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        if bad:
            what = f"loss term '{bad[0]}' is {terms[bad[0]]}" + (f" (also {bad[1:]})" if len(bad) > 1 else "")
        elif terms:
            what = f"the total loss is {total} though every term is finite ({shown}): check the term weights"
        else:
            what = f"the loss is {total}"
        files = _batch_files(engine.state.batch)
        where = f"at epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        where += f" (batch: {', '.join(files)})" if files else ""
        last = getattr(engine.state, "last_checkpoint", None)
        kept = (
            f"The last good checkpoint is '{last['path']}' (iteration {last['iteration']}): fix the cause (a lower "
            "learning_rate, the batch's inputs) and continue with --resume true."
            if last
            else "No checkpoint had been written yet."
        )
        terms_note = f" Terms: {shown}." if bad and shown else ""
        raise NonFiniteLossError(f"{what} {where}; training stopped before the optimiser step.{terms_note} {kept}")
