"""Log the scale of every weighted distillation term beside the weighted ground-truth loss when a stage starts, and
warn when one swamps it (METHODS.md §4, "Logit scale": raw SAM logits made L_sld ≈ 640 against L_gt ≈ 1.6)."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

from common.engines.distillation import DistillationTrainer, loss_terms

__all__ = ["LossScaleGuard"]


class LossScaleGuard:
    """Trainer handler for :class:`~common.engines.distillation.DistillationTrainer`: at the first iteration of each
    stage, log ``weight · term`` for every term and ``gt_weight · L_gt``, and warn (one line per term: the term, the
    ratio, the option that fixes it) when a weighted term exceeds ``ratio`` times the weighted L_gt. It changes
    nothing; the warnings are also kept in ``warnings`` for tests and reports."""

    def __init__(self, ratio: float = 10.0) -> None:
        self.ratio = float(ratio)
        self.logger = logging.getLogger(__name__)
        self.warnings: list[str] = []
        self._seen: set[str] = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: DistillationTrainer) -> None:
        stage = engine.stage
        if stage.name in self._seen:
            return
        self._seen.add(stage.name)
        values = loss_terms(engine.state.output)
        epoch, epochs = engine.epoch_in_stage(engine.state.epoch), int(stage.epochs)
        gt = stage.gt_weight * values["gt"] if "gt" in values else None
        parts = []
        for name, term in stage.terms.items():
            weight = term.weight_at(epoch, epochs)
            for key, value in values.items():
                if key != name and not key.startswith(f"{name}_"):
                    continue
                weighted = weight * value
                parts.append(f"{key} {weight:g}×{value:.4g} = {weighted:.4g}")
                if gt is not None and gt > 0 and weighted > self.ratio * gt:
                    message = (
                        f"loss term '{key}' of stage '{stage.name}' is {weighted:.4g} weighted, "
                        f"{weighted / gt:.0f}× the weighted L_gt ({gt:.4g}): it will swamp the labels; normalise the "
                        "logits it matches (logit_norm 'auto' or 'zscore') or lower its weight."
                    )
                    self.warnings.append(message)
                    self.logger.warning(message)
        gt_text = (
            f"gt {stage.gt_weight:g}×{values.get('gt', float('nan')):.4g} = {gt:.4g}" if gt is not None else "no L_gt"
        )
        self.logger.info("Stage '%s' loss scale at its first iteration: %s; %s.", stage.name, gt_text, "; ".join(parts))
