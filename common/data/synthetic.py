"""A tiny synthetic segmentation task (2D slices or 3D volumes as NIfTI + datalist.json) for tests and smoke runs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["make_synthetic_dataset"]


def make_synthetic_dataset(
    out_dir: str | Path,
    num_items: tuple[int, int, int] = (4, 2, 2),
    size: int = 32,
    num_classes: int = 3,
    ndim: int = 2,
    seed: int = 0,
) -> Path:
    """Write images with a bright disc (class 1) holding a smaller darker disc (class 2, ...) and a datalist with
    ``training``/``validation``/``test`` splits of ``num_items`` items. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * ndim, indexing="ij"), 0).astype(np.float32)
    datalist: dict[str, list] = {}
    n = 0
    for split, count in zip(("training", "validation", "test"), num_items):
        datalist[split] = []
        for _ in range(count):
            centre = rng.uniform(0.35, 0.65, size=(ndim,) + (1,) * ndim) * size
            dist = np.sqrt(((grid - centre) ** 2).sum(0))
            radius = rng.uniform(0.2, 0.3) * size
            label = np.zeros((size,) * ndim, np.uint8)
            image = rng.normal(0.1, 0.05, label.shape).astype(np.float32)
            for c in range(1, max(num_classes, 2)):
                r = radius * (1 - (c - 1) / max(num_classes, 2))
                label[dist < r] = c
                image[dist < r] = 0.4 + 0.25 * (c % 2) + rng.normal(0, 0.05, int((dist < r).sum()))
            affine = np.diag([0.8] * ndim + [1.0] * (4 - ndim))
            names = {k: f"images/{k}_{n:03d}.nii.gz" for k in ("image", "label")}
            nib.save(nib.Nifti1Image(np.clip(image, 0, 1), affine), out_dir / names["image"])
            nib.save(nib.Nifti1Image(label, affine), out_dir / names["label"])
            datalist[split].append(names)
            n += 1
    (out_dir / "datalist.json").write_text(json.dumps(datalist, indent=2))
    return out_dir
