"""Reading a task's ``datalist.json`` and refusing bad input before training starts.

A dataset folder holds ``datalist.json`` in the MONAI Decathlon layout (``{"training": [{"image": ..., "label":
...}], "validation": [...], "test": [...]}``, paths relative to the folder). Problems are named with the file and
the fix, instead of surfacing as a traceback from a DataLoader worker hours later.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

from common.errors import DataError

__all__ = ["DataError", "load_datalist", "load_images", "check_items"]


def load_datalist(
    dataset_dir: str | Path,
    key: str | Sequence[str] = "training",
    num_classes: int | None = None,
    check: bool = True,
    limit: int | None = None,
    limit_mode: str = "first",
) -> list[dict]:
    """Items of split ``key`` of ``dataset_dir/datalist.json`` with absolute paths, checked with :func:`check_items`.

    Args:
        dataset_dir: folder with ``datalist.json``.
        key: split name (``training``, ``validation``, ``test``, ...), or a list of names whose items are joined
            (e.g. labelled plus unlabelled images for a model that needs no labels).
        num_classes: K; with ``check``, every label value must lie in [0, K) (K = 1: binary labels {0, 1}).
        check: read every file once to check it (shapes, label values); False only checks that files exist.
        limit: keep ``limit`` items (label-budget experiments, quick runs); None keeps all.
        limit_mode: ``first`` keeps the first items; ``even`` keeps items evenly spaced over the list (for slices
            in order, a label budget that spans the organ instead of one end of it).
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DataError(
            f"dataset_dir '{dataset_dir}' does not exist. Prepare the sample data with "
            "'python scripts/prepare_data.py --out data' and pass --dataset_dir data/lits_liver, or point "
            "--dataset_dir at a folder holding your datalist.json."
        )
    datalist_path = dataset_dir / "datalist.json"
    if not datalist_path.is_file():
        raise DataError(f"'{datalist_path}' not found: dataset_dir must hold a datalist.json (MONAI Decathlon layout).")
    items = []
    for k in [key] if isinstance(key, str) else list(key):
        try:
            items += load_decathlon_datalist(str(datalist_path), is_segmentation=True, data_list_key=k)
        except ValueError as e:
            raise DataError(f"'{datalist_path}' has no '{k}' list: {e}") from None
    if limit is not None:
        items = _limit(items, int(limit), limit_mode)
    if not items:
        raise DataError(f"The '{key}' split of '{datalist_path}' is empty.")
    check_items(items, num_classes=num_classes, read=check)
    return items


def _limit(items: list[dict], limit: int, mode: str) -> list[dict]:
    if limit < 1:
        raise DataError(f"limit (num_labels) must be >= 1 or null for all items, got {limit}.")
    if mode == "first" or limit >= len(items):
        return items[:limit]
    if mode == "even":
        return [items[int(i)] for i in np.round(np.linspace(0, len(items) - 1, limit))]
    raise DataError(f"limit_mode must be 'first' or 'even', got '{mode}'.")


def load_images(
    dataset_dirs: str | Path | Sequence[str | Path], key: str | Sequence[str] = "training", check: bool = True
) -> list[dict]:
    """Unlabelled items ``{"image": path}`` of split ``key`` of each folder's ``datalist.json``, joined: a transfer
    set (the diffusion bundle's output folder), real unlabelled images, or both. Labels, when present, are dropped."""
    dirs = [dataset_dirs] if isinstance(dataset_dirs, (str, Path)) else list(dataset_dirs)
    if not dirs:
        raise DataError("no image folder given (transfer_dirs is empty).")
    return [{"image": item["image"]} for d in dirs for item in load_datalist(d, key, check=check)]


def check_items(items: list[dict], num_classes: int | None = None, read: bool = True) -> None:
    """Raise :class:`DataError` for a missing or unreadable image or label, an image with NaN or Inf values, an
    image/label shape mismatch, or a label value outside [0, num_classes)."""
    loader = LoadImage(image_only=True)
    for item in items:
        for k in ("image", "label"):
            if k in item and not Path(item[k]).is_file():
                raise DataError(f"{k} file not found: '{item[k]}'.")
        if not read:
            continue
        arrays = {}
        for k in ("image", "label"):
            if k not in item:
                continue
            try:
                arrays[k] = np.asarray(loader(item[k]))
            except Exception as e:  # any reader failure means the same thing to the user
                raise DataError(f"cannot read {k} '{item[k]}': {e}") from None
        image = arrays.get("image")
        if image is not None and np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            bad = int((~np.isfinite(image)).sum())
            raise DataError(f"image '{item['image']}' has {bad} NaN or Inf values: it would make every loss NaN.")
        if "label" not in arrays:
            continue
        label = arrays["label"]
        if "image" in arrays and arrays["image"].shape[:2] != label.shape[:2]:
            raise DataError(
                f"image/label shape mismatch: '{item['image']}' is {arrays['image'].shape}, "
                f"'{item['label']}' is {label.shape}."
            )
        if num_classes is not None:
            top = max(num_classes, 2)  # K = 1 is a binary {0, 1} label
            values = np.unique(label)
            bad = values[(values < 0) | (values >= top) | (values != np.round(values))]
            if bad.size:
                shown = [int(v) if float(v).is_integer() else float(v) for v in bad[:5]]
                raise DataError(
                    f"label '{item['label']}' has values {shown} outside 0..{top - 1} "
                    f"(num_classes={num_classes}). Set num_classes, or remap the labels."
                )
