"""Write the teacher's two deliverables when training ends: the adapter alone and the merged plain network."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite.engine import Engine, Events

from common.checkpoints import read_state_dict
from common.networks.lora import save_adapter, save_merged

__all__ = ["TeacherExport"]


class TeacherExport:
    """On trainer completion, load the best checkpoint (if given and present) into the network and write
    ``adapter.pt`` (LoRA + trained decoder, small) and ``model_merged.pt`` (LoRA folded in; loads strictly into
    ``build_teacher(..., lora_rank=0)`` with ``torch.load(weights_only=True)``) to ``output_dir``."""

    def __init__(self, output_dir: str | Path, best_ckpt: str | Path | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.best_ckpt = Path(best_ckpt) if best_ckpt else None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        network = engine.network
        if self.best_ckpt is not None and self.best_ckpt.is_file():
            network.load_state_dict(read_state_dict(self.best_ckpt, "best teacher checkpoint"))
            self.logger.info("Loaded the best checkpoint %s for export.", self.best_ckpt)
        adapter = save_adapter(network, self.output_dir / "adapter.pt")
        merged = save_merged(network, self.output_dir / "model_merged.pt")
        for p in (adapter, merged):
            self.logger.info("Wrote %s (%.1f MB)", p, p.stat().st_size / 1e6)
