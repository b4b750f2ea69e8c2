"""A training handler that samples a fixed set of images every few epochs and saves them as a PNG grid, so a user
can watch a diffusion model learn (``samples/epoch_<n>.png``, and the newest as ``samples/latest.png``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Engine, Events

from common.generative.sampling import initial_noise, sample, save_grid, to_intensity

__all__ = ["SampleGrid"]


class SampleGrid:
    """Every ``interval`` epochs (and when training completes) draw ``num_images`` samples from the same seeded
    noise with ``scheduler`` (DDIM, ``num_inference_steps``) and write them to ``output_dir``.

    The noise is fixed, so successive grids show the same samples getting better rather than new random ones.
    """

    def __init__(
        self,
        scheduler,
        output_dir: str | Path,
        image_shape: Sequence[int],
        interval: int = 10,
        num_images: int = 16,
        num_inference_steps: int = 50,
        in_channels: int = 1,
        intensity_range: Sequence[float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self.scheduler = scheduler
        self.output_dir = Path(output_dir)
        self.shape = (int(in_channels), *[int(s) for s in image_shape])
        self.interval = max(1, int(interval))
        self.num_images = int(num_images)
        self.num_inference_steps = int(num_inference_steps)
        self.intensity_range = intensity_range
        self.seed = int(seed)
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _final(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval:  # not already written at this epoch
            self(engine)

    def __call__(self, engine: Engine) -> Path:
        noise = initial_noise(0, self.num_images, self.shape, self.seed).to(engine.state.device)
        images = to_intensity(
            sample(engine.network, self.scheduler, noise, self.num_inference_steps), self.intensity_range
        )
        path = save_grid(images, self.output_dir / f"epoch_{engine.state.epoch:04d}.png", self.intensity_range)
        save_grid(images, self.output_dir / "latest.png", self.intensity_range)
        self.logger.info("Epoch %d: sample grid %s", engine.state.epoch, path)
        return path
