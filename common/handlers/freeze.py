"""Keep the encoder of a pre-trained student fixed for the first iterations of fine-tuning, so the randomly started
decoder does not pull the pre-trained features around before it fits them (a remedy for TS-KD's fine-tuning
collapse; the ViT + neck of :class:`~common.networks.vit_student.ViTStudent` by default)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ignite.engine import Engine, Events
from torch import nn
from torch.optim import Optimizer

__all__ = ["FreezeEncoder"]


class FreezeEncoder:
    """Trainer handler: the parameters of ``network``'s ``modules`` get no gradient and no optimiser update during
    the first ``iterations`` iterations of the run, then train like the rest.

    During each iteration up to ``iterations`` (1-based, so a resumed run stays frozen exactly as long) they have
    ``requires_grad`` False (no backward through the frozen part either) and ``grad`` None, which every torch optimiser
    skips (AdamW's decoupled weight decay too); an optimiser group holding only frozen parameters also gets lr 0 for
    the step (the lr schedule sets it again after the step). ``requires_grad`` is True again when the iteration
    completes, so checkpoints, which leave out parameters that do not require a gradient
    (:func:`common.handlers.resume.module_state`), always hold the whole network. ``iterations`` 0: nothing is
    frozen.
    """

    def __init__(
        self,
        network: nn.Module,
        iterations: int = 0,
        optimizer: Optimizer | None = None,
        modules: Sequence[str] = ("vit", "neck"),
    ) -> None:
        if int(iterations) < 0:
            raise ValueError(f"freeze_encoder_iters must be >= 0, got {iterations}.")
        missing = [m for m in modules if not isinstance(getattr(network, m, None), nn.Module)]
        if missing:
            children = [n for n, _ in network.named_children()]
            raise ValueError(f"the network has no module {missing} to freeze (it has {children}).")
        self.iterations, self.optimizer = int(iterations), optimizer
        self.modules = list(modules)
        self.params = [p for m in self.modules for p in getattr(network, m).parameters()]
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if self.iterations > 0:
            engine.add_event_handler(Events.ITERATION_STARTED, self.freeze)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.release)

    def frozen(self, engine: Engine) -> bool:
        """Whether the engine's current iteration is one of the first ``iterations``."""
        return engine.state.iteration <= self.iterations

    def freeze(self, engine: Engine) -> None:
        if not self.frozen(engine):
            if engine.state.iteration == self.iterations + 1:
                self.logger.info(
                    "Iteration %d: %s train from now on.", engine.state.iteration, " + ".join(self.modules)
                )
            return
        if engine.state.iteration == 1:
            self.logger.info("%s frozen for iterations 1-%d.", " + ".join(self.modules), self.iterations)
        for p in self.params:
            p.requires_grad_(False)
            p.grad = None
        if self.optimizer is not None:
            ids = {id(p) for p in self.params}
            for group in self.optimizer.param_groups:
                if all(id(p) in ids for p in group["params"]):
                    group["lr"] = 0.0

    def release(self, engine: Engine) -> None:
        if self.frozen(engine):
            for p in self.params:
                p.requires_grad_(True)
