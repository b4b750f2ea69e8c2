"""A tiny synthetic segmentation task (2D images or 3D volumes, with ``datalist.json`` and ``dataset.json``) for
tests and smoke runs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from common.data.dataset_info import DatasetInfo, write_dataset_info

__all__ = ["make_synthetic_dataset"]


def make_synthetic_dataset(
    out_dir: str | Path,
    num_items: tuple[int, int, int] = (4, 2, 2),
    size: int = 32,
    num_classes: int = 3,
    ndim: int = 2,
    seed: int = 0,
    in_channels: int = 1,
    file_format: str = "nifti",
) -> Path:
    """Write images with a bright disc (class 1) holding a smaller darker disc (class 2, ...), a datalist with
    ``training``/``validation``/``test`` splits of ``num_items`` items (one subject each) and a ``dataset.json``.

    ``in_channels`` > 1: channel c is the image scaled by 1 − 0.2·c; NIfTI images are then one file per channel
    (``"image": [...]``), PNG images RGB (``in_channels`` 3). ``file_format`` ``png`` (2D only) writes 8-bit PNG
    images and label maps (normalisation range [0, 255]); ``nifti`` writes float images in [0, 1]."""
    if file_format not in ("nifti", "png") or (file_format == "png" and (ndim != 2 or in_channels not in (1, 3))):
        raise ValueError(f"unsupported synthetic format {file_format} with ndim={ndim}, in_channels={in_channels}")
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
            channels = [np.clip(image * (1 - 0.2 * c), 0, 1) for c in range(in_channels)]
            item = {"subject": f"case{n:03d}", "label": f"images/label_{n:03d}"}
            if file_format == "png":
                item["label"] += ".png"
                item["image"] = f"images/image_{n:03d}.png"
                pixels = np.round(np.stack(channels, -1) * 255).astype(np.uint8)
                Image.fromarray(pixels[..., 0] if in_channels == 1 else pixels).save(out_dir / item["image"])
                Image.fromarray(label).save(out_dir / item["label"])
            else:
                affine = np.diag([0.8] * ndim + [1.0] * (4 - ndim))
                item["label"] += ".nii.gz"
                names = [f"images/image_{n:03d}" + (f"_{c:04d}" if in_channels > 1 else "") + ".nii.gz"
                         for c in range(in_channels)]  # fmt: skip
                for name, channel in zip(names, channels):
                    nib.save(nib.Nifti1Image(channel, affine), out_dir / name)
                nib.save(nib.Nifti1Image(label, affine), out_dir / item["label"])
                item["image"] = names[0] if in_channels == 1 else names
            datalist[split].append({"image": item["image"], "label": item["label"], "subject": item["subject"]})
            n += 1
    (out_dir / "datalist.json").write_text(json.dumps(datalist, indent=2))
    labels = {"0": "background", **{str(c): f"class{c}" for c in range(1, max(num_classes, 2))}}
    info = DatasetInfo(
        name="synthetic",
        dim=ndim,
        channel_names=[f"channel{c}" for c in range(in_channels)],
        labels=labels,
        normalisation={"method": "range", "range": [0, 255] if file_format == "png" else [0, 1]},
        modality="synthetic",
        spacing=None if file_format == "png" else [0.8] * ndim,
    )
    write_dataset_info(out_dir, info)
    return out_dir
