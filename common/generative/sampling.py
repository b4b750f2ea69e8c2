"""DDPM training batches and DDIM sampling for the synthetic transfer set (METHODS.md §2).

The network, schedulers and inferer are MONAI's (``DiffusionModelUNet``, ``DDPMScheduler``, ``DDIMScheduler``,
``DiffusionInferer``); this module adds what a bundle needs around them:

- :class:`SeededDiffusionPrepareBatch`: MONAI's ``DiffusionPrepareBatch`` with its own seeded generator, reset at
  every validation run, so the validation noise-prediction MSE compares epochs on the same noise and timesteps.
- :func:`initial_noise`: the starting noise of sample ``i`` comes from ``seed + i`` alone, so a set is
  reproducible and sample ``i`` does not depend on the batch size or on how many samples are drawn.
- :func:`sample`: DDIM (or any MONAI scheduler) from that noise, in the network's [-1, 1] intensity space.
- :class:`TransferSetGenerator`: ``num_samples`` images written as NIfTI plus ``datalist.json`` (``{"training":
  [{"image": ...}]}``, the unlabelled transfer set the students read) and a PNG grid beside them.
- :func:`save_grid`: a PNG contact sheet, used here and by the training handler :class:`common.handlers.sample_grid.SampleGrid`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import DiffusionPrepareBatch
from monai.inferers import DiffusionInferer
from torch import nn
from tqdm import tqdm

from common.data.dataset_info import DatasetInfo, write_dataset_info

__all__ = [
    "SeededDiffusionPrepareBatch",
    "initial_noise",
    "sample",
    "to_intensity",
    "save_grid",
    "TransferSetGenerator",
]

logger = logging.getLogger(__name__)


class SeededDiffusionPrepareBatch(DiffusionPrepareBatch):
    """``DiffusionPrepareBatch`` drawing noise and timesteps from a generator seeded with ``seed``.

    Listed also among an evaluator's handlers, it re-seeds at every ``EPOCH_STARTED``, so each validation run sees
    the same noise and timesteps and the validation MSE of two epochs is comparable.
    """

    def __init__(self, num_train_timesteps: int, seed: int = 0, condition_name: str | None = None) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def reset(self, engine: Engine | None = None) -> None:
        self.generator.manual_seed(self.seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn(images.shape, generator=self.generator).to(images.device)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        t = torch.randint(0, self.num_train_timesteps, (images.shape[0],), generator=self.generator)
        return t.to(images.device)


def initial_noise(start: int, count: int, shape: Sequence[int], seed: int) -> torch.Tensor:
    """Gaussian noise (count, *shape) whose item ``j`` is drawn from a generator seeded with ``seed + start + j``."""
    gen = torch.Generator()
    items = []
    for i in range(start, start + count):
        gen.manual_seed(int(seed) + i)
        items.append(torch.randn(tuple(shape), generator=gen))
    return torch.stack(items)


@torch.no_grad()
def sample(network: nn.Module, scheduler, noise: torch.Tensor, num_inference_steps: int | None = None) -> torch.Tensor:
    """Denoise ``noise`` with ``scheduler`` (DDIM: deterministic for ``eta = 0``); returns images in [-1, 1]."""
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps=int(num_inference_steps), device=noise.device)
    was_training = network.training
    network.eval()
    try:
        images = DiffusionInferer(scheduler).sample(noise, diffusion_model=network, scheduler=scheduler, verbose=False)
    finally:
        network.train(was_training)
    return images.clamp(-1.0, 1.0)


def to_intensity(images: torch.Tensor, intensity_range: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """Map the network's [-1, 1] back to the data's ``intensity_range`` (the inverse of the training scaling)."""
    lo, hi = float(intensity_range[0]), float(intensity_range[1])
    return (images.clamp(-1.0, 1.0) + 1.0) / 2.0 * (hi - lo) + lo


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, value_range: Sequence[float] = (0.0, 1.0)) -> Path:
    """Write a PNG contact sheet of (N, 1, H, W) images (3D: the middle slice of the last axis), ``value_range``
    mapped to black..white, in a near-square grid with 2-pixel gaps."""
    from PIL import Image

    arr = images.detach().cpu().float().numpy() if torch.is_tensor(images) else np.asarray(images, np.float32)
    if arr.ndim == 5:
        arr = arr[..., arr.shape[-1] // 2]
    if arr.ndim != 4:
        raise ValueError(f"save_grid takes (N, C, H, W) or (N, C, H, W, D) images, got shape {arr.shape}.")
    arr = arr[:, 0]
    lo, hi = float(value_range[0]), float(value_range[1])
    arr = np.clip((arr - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    n, h, w = arr.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    gap = 2
    sheet = np.zeros((rows * (h + gap) + gap, cols * (w + gap) + gap), np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        sheet[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = arr[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    Image.fromarray((sheet * 255).round().astype(np.uint8)).save(tmp)
    tmp.replace(path)
    return path


class TransferSetGenerator:
    """Sample ``num_samples`` images and write the transfer set the students read.

    ``output_dir`` receives ``images/synth_<i>.nii.gz`` (float32 in ``intensity_range``, unit spacing; with C > 1
    channels one file per channel, ``synth_<i>_<c>.nii.gz``, as prepared multi-channel datasets store them),
    ``datalist.json`` (``{"training": [{"image": "images/synth_<i>.nii.gz"}, ...]}``, paths relative to the
    folder, so the folder is a ``dataset_dir``), ``dataset.json`` (``dataset_info``'s channels, classes and
    normalisation: the images are stored like the real ones), ``samples.png`` (the first ``grid_size`` images) and
    ``generation.json`` (the settings). Files already written by an interrupted run with the same settings are
    kept, so a re-run only samples what is missing.
    """

    def __init__(
        self,
        network: nn.Module,
        scheduler,
        output_dir: str | Path,
        num_samples: int,
        image_shape: Sequence[int],
        num_inference_steps: int = 50,
        batch_size: int = 16,
        seed: int = 0,
        in_channels: int = 1,
        intensity_range: Sequence[float] = (0.0, 1.0),
        grid_size: int = 64,
        device: torch.device | str = "cpu",
        progress: bool = True,
        dataset_info: DatasetInfo | None = None,
    ) -> None:
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
        self.network = network
        self.scheduler = scheduler
        self.output_dir = Path(output_dir)
        self.num_samples = int(num_samples)
        self.shape = (int(in_channels), *[int(s) for s in image_shape])
        self.num_inference_steps = int(num_inference_steps)
        self.batch_size = max(1, int(batch_size))
        self.seed = int(seed)
        self.intensity_range = [float(v) for v in intensity_range]
        self.grid_size = int(grid_size)
        self.device = torch.device(device)
        self.progress = progress
        self.dataset_info = dataset_info

    def _settings(self) -> dict:
        return {
            "num_inference_steps": self.num_inference_steps,
            "seed": self.seed,
            "shape": list(self.shape),
            "intensity_range": self.intensity_range,
            "scheduler": type(self.scheduler).__name__,
        }

    def image_path(self, i: int) -> Path:
        """The file of image ``i`` (of its first channel when there are several)."""
        return self.channel_paths(i)[0]

    def channel_paths(self, i: int) -> list[Path]:
        """The files of image ``i``: one, or one per channel."""
        if self.shape[0] == 1:
            return [self.output_dir / "images" / f"synth_{i:05d}.nii.gz"]
        return [self.output_dir / "images" / f"synth_{i:05d}_{c:04d}.nii.gz" for c in range(self.shape[0])]

    def _item(self, i: int) -> dict:
        paths = [str(p.relative_to(self.output_dir)) for p in self.channel_paths(i)]
        return {"image": paths[0] if len(paths) == 1 else paths}

    def run(self) -> Path:
        """Generate what is missing, then write ``datalist.json`` and the grid; returns the datalist path."""
        (self.output_dir / "images").mkdir(parents=True, exist_ok=True)
        record = self.output_dir / "generation.json"
        settings = self._settings()
        if record.is_file() and json.loads(record.read_text()).get("settings") != settings:
            logger.warning("%s was generated with other settings: regenerating every image.", self.output_dir)
            for p in (self.output_dir / "images").glob("synth_*.nii.gz"):
                p.unlink()
        record.write_text(json.dumps({"settings": settings, "num_samples": self.num_samples}, indent=2))
        todo = [i for i in range(self.num_samples) if not all(p.is_file() for p in self.channel_paths(i))]
        if len(todo) < self.num_samples:
            logger.info(
                "%d of %d images already written; sampling the rest.", self.num_samples - len(todo), self.num_samples
            )
        batches = [todo[k : k + self.batch_size] for k in range(0, len(todo), self.batch_size)]
        affine = np.eye(4)
        for batch in tqdm(batches, desc="sampling", unit="batch", disable=not self.progress):
            noise = torch.cat([initial_noise(i, 1, self.shape, self.seed) for i in batch]).to(self.device)
            images = to_intensity(
                sample(self.network, self.scheduler, noise, self.num_inference_steps), self.intensity_range
            )
            for i, img in zip(batch, images.cpu().numpy().astype(np.float32)):
                # each channel without a channel axis, as the real slices are stored
                for path, channel in zip(self.channel_paths(i), img):
                    tmp = path.with_name(path.name.replace(".nii.gz", ".tmp.nii.gz"))
                    nib.save(nib.Nifti1Image(channel, affine), tmp)
                    tmp.replace(path)
        datalist = {"training": [self._item(i) for i in range(self.num_samples)]}
        path = self.output_dir / "datalist.json"
        path.write_text(json.dumps(datalist, indent=1))
        if self.dataset_info is not None:
            info = copy.deepcopy(self.dataset_info)
            info.description = f"synthetic transfer set of {info.name} (no labels): {self.num_samples} images"
            write_dataset_info(self.output_dir, info)
        grid = np.stack(
            [
                np.stack([np.asarray(nib.load(p).dataobj, np.float32) for p in self.channel_paths(i)])
                for i in range(min(self.grid_size, self.num_samples))
            ]
        )
        save_grid(grid, self.output_dir / "samples.png", self.intensity_range)
        logger.info(
            "Transfer set: %d images, datalist %s, grid %s", self.num_samples, path, self.output_dir / "samples.png"
        )
        return path
