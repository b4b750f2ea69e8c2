"""Write the network's weights when training completes, and only then (a crash leaves no 'final' file behind)."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite.engine import Engine, Events
from torch import nn

from common.checkpoints import atomic_save

__all__ = ["FinalModel"]


class FinalModel:
    """On ``COMPLETED``, save ``network``'s state dict atomically to ``path`` (MONAI's ``CheckpointSaver`` with
    ``save_final`` also writes it when training fails, so a later step could mistake a crashed run for a finished
    one). Frozen or not, every weight is saved: the file loads strictly into the same network."""

    def __init__(self, path: str | Path, network: nn.Module) -> None:
        self.path, self.network = Path(path), network
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        atomic_save(self.network.state_dict(), self.path)
        self.logger.info("Wrote the final weights to %s.", self.path)
