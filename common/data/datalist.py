"""Reading a task's ``datalist.json`` and refusing bad input before training starts.

A dataset folder holds ``datalist.json`` in the MONAI Decathlon layout (``{"training": [{"image": ..., "label":
...}], "validation": [...], "test": [...]}``, paths relative to the folder). Problems are named with the file and
the fix, instead of surfacing as a traceback from a DataLoader worker hours later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

from common.data.dataset_info import require_dataset_dir
from common.errors import DataError

__all__ = [
    "DataError",
    "load_datalist",
    "load_images",
    "check_items",
    "detect_folds",
    "fold_split",
    "inference_items",
    "subject_budget",
    "training_items",
]


def load_datalist(
    dataset_dir: str | Path,
    key: str | Sequence[str] = "training",
    num_classes: int | None = None,
    check: bool = True,
    limit: int | None = None,
    limit_mode: str = "first",
    fold: int | None = None,
    dim: int | None = None,
    in_channels: int | None = None,
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
        fold: for a datalist of ``fold_0`` … ``fold_{K-1}`` lists (``prepare_dataset.py --folds K``), the fold
            whose split ``key`` is read (:func:`fold_split`); None reads ``key`` as it is.
        dim: with ``check``, the spatial dimensions every image must have (2 for the 2D bundles).
        in_channels: with ``check``, the channel count every image must have (the network's input).
    """
    dataset_dir = require_dataset_dir(dataset_dir)
    datalist_path = dataset_dir / "datalist.json"
    if not datalist_path.is_file():
        raise DataError(f"'{datalist_path}' not found: dataset_dir must hold a datalist.json (MONAI Decathlon layout).")
    items = []
    for k in [key] if isinstance(key, str) else list(key):
        for list_key in fold_split(datalist_path, k, fold):
            try:
                items += load_decathlon_datalist(str(datalist_path), is_segmentation=True, data_list_key=list_key)
            except ValueError as e:
                raise DataError(f"'{datalist_path}' has no '{list_key}' list: {e}") from None
    if limit is not None:
        items = _limit(items, int(limit), limit_mode)
    if not items:
        raise DataError(f"The '{key}' split of '{datalist_path}' is empty.")
    check_items(items, num_classes=num_classes, read=check, dim=dim, in_channels=in_channels)
    return items


def detect_folds(dataset_dir: str | Path) -> list[int]:
    """The fold indices of a datalist with ``fold_0`` … ``fold_{K-1}`` lists (at least 3, as :func:`fold_split`
    needs), else [] (a datalist with its own training / validation / test split, or none)."""
    path = Path(dataset_dir) / "datalist.json"
    if not path.is_file():
        return []
    found = sorted(int(k.split("_")[1]) for k in _read_json(path) if re.fullmatch(r"fold_\d+", k))
    return found if len(found) >= 3 else []


def fold_split(datalist_path: str | Path, key: str, fold: int | None) -> list[str]:
    """The lists of ``datalist.json`` that make split ``key`` of fold ``fold`` (cross-validation by subject).

    With K folds (``fold_0`` … ``fold_{K-1}``, subject-disjoint), fold k tests on ``fold_k``, validates on
    ``fold_{(k+1) mod K}`` and trains on the other K − 2 folds, so every subject is tested exactly once over the K
    runs and no subject is in two roles within a run. ``fold`` None: ``[key]``.
    """
    if fold is None:
        return [key]
    folds = sorted(
        (k for k in _read_json(datalist_path) if re.fullmatch(r"fold_\d+", k)), key=lambda k: int(k.split("_")[1])
    )
    if len(folds) < 3:
        raise DataError(
            f"'{datalist_path}' has {len(folds)} fold lists (fold_0 ...): cross-validation needs at least 3 "
            "(scripts/prepare_dataset.py --folds K)."
        )
    if not 0 <= int(fold) < len(folds):
        raise DataError(f"fold must be in 0..{len(folds) - 1} for '{datalist_path}', got {fold}.")
    k = int(fold)
    test, validation = folds[k], folds[(k + 1) % len(folds)]
    roles = {"test": [test], "validation": [validation], "training": [f for f in folds if f not in (test, validation)]}
    if key not in roles:
        raise DataError(f"with fold={fold}, the split must be one of {sorted(roles)}, got '{key}'.")
    return roles[key]


def _read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"'{path}' is not readable JSON: {err}") from None


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


def check_items(
    items: list[dict],
    num_classes: int | None = None,
    read: bool = True,
    dim: int | None = None,
    in_channels: int | None = None,
) -> None:
    """Raise :class:`DataError` for a missing or unreadable image or label, an image with NaN or Inf values, an
    image of the wrong dimension (a 3D volume given to a 2D bundle) or channel count, a label with channels (RGB),
    an image/label mismatch in shape (any axis) or, for volumes, in affine, or a label value outside [0, K)."""
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    for item in items:
        for k in ("image", "label"):
            for path in _paths(item.get(k)):
                if not Path(path).exists():
                    raise DataError(f"{k} file not found: '{path}'.")
        if not read:
            continue
        arrays = {}
        for k in ("image", "label"):
            if k not in item:
                continue
            try:
                arrays[k] = loader(item[k])
            except Exception as e:  # any reader failure means the same thing to the user
                raise DataError(f"cannot read {k} '{item[k]}': {e}") from None
        image = arrays.get("image")
        if image is not None:
            _check_image(item["image"], np.asarray(image), dim, in_channels)
        if "label" not in arrays:
            continue
        label = arrays["label"]
        if label.shape[0] != 1:
            raise DataError(
                f"label '{item['label']}' has {label.shape[0]} channels (an RGB/RGBA mask?): labels are one integer "
                "class map; save masks as grey or palette PNG (scripts/prepare_dataset.py folder converts them)."
            )
        if image is not None:
            _check_pair(item, image, label)
        if num_classes is not None:
            _check_values(item["label"], np.asarray(label), num_classes)


def _paths(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _check_image(name, image: np.ndarray, dim: int | None, in_channels: int | None) -> None:
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise DataError(f"image '{name}' has {bad} NaN or Inf values: it would make every loss NaN.")
    spatial = image.shape[1:]
    if dim is not None and len(spatial) != dim:
        if dim == 2 and len(spatial) == 3:
            raise DataError(
                f"image '{name}' is a 3D volume {tuple(spatial)} but this bundle trains on 2D images: cut the volumes "
                "into slices with 'python scripts/prepare_dataset.py decathlon --src ... --out ... --dim 2' (whole "
                "volumes are segmented slice by slice with inference.json --image)."
            )
        raise DataError(f"image '{name}' has {len(spatial)} spatial axes {tuple(spatial)}; this bundle takes {dim}.")
    if in_channels is not None and image.shape[0] != in_channels:
        raise DataError(
            f"image '{name}' has {image.shape[0]} channels but the network takes {in_channels}: set in_channels (or "
            "channel_names in dataset.json) to the images' channel count."
        )


def _check_pair(item: dict, image, label) -> None:
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise DataError(
            f"image/label shape mismatch: '{item['image']}' is {tuple(image.shape[1:])}, "
            f"'{item['label']}' is {tuple(label.shape[1:])}."
        )
    if len(image.shape) == 4:  # volumes: the same voxels in the same place
        a, b = np.asarray(image.affine, float), np.asarray(label.affine, float)
        if not np.allclose(a, b, atol=1e-3):
            raise DataError(
                f"image/label affine mismatch: '{item['image']}' and '{item['label']}' place their voxels "
                f"differently (max difference {np.abs(a - b).max():.4g} mm): resample the label onto its image."
            )


def _check_values(name, label: np.ndarray, num_classes: int) -> None:
    top = max(num_classes, 2)  # K = 1 is a binary {0, 1} label
    values = np.unique(label)
    bad = values[(values < 0) | (values >= top) | (values != np.round(values))]
    if bad.size:
        shown = [int(v) if float(v).is_integer() else float(v) for v in bad[:5]]
        raise DataError(
            f"label '{name}' has values {shown} outside 0..{top - 1} "
            f"(num_classes={num_classes}). Set num_classes, or remap the labels."
        )


def inference_items(
    image: str | Sequence[str] | None = None,
    dataset_dir: str | Path | None = None,
    key: str = "test",
    fold: int | None = None,
) -> list[dict]:
    """What ``inference.json`` segments: ``image`` (a file, a DICOM series folder, or a list of one file per channel)
    when given, else split ``key`` of ``dataset_dir/datalist.json`` (of cross-validation fold ``fold`` when given;
    labels, if any, are not read)."""
    if image is None or image == "":
        if dataset_dir is None:
            raise DataError("nothing to segment: give --image PATH, or --dataset_dir with a datalist.json.")
        return [
            {k: v for k, v in item.items() if k != "label"}
            for item in load_datalist(dataset_dir, key, check=False, fold=fold)
        ]
    for path in _paths(image):
        if not Path(path).exists():
            raise DataError(
                f"--image '{path}' not found: give an image file, a DICOM folder or a list of channel files."
            )
    return [{"image": image if isinstance(image, str) else [str(p) for p in image]}]


def subject_budget(items: list[dict], budget: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split ``items`` into the items of ``budget`` labelled subjects and the rest (METHODS.md §8: label budgets count
    labelled training subjects). Subjects are drawn in a seeded random order, so budgets are nested (the 8 subjects of
    budget 8 are among the 32 of budget 32) and every method of a table sees the same ones. Items without a
    ``subject`` are their own subject."""
    subjects = sorted({str(item.get("subject", item["image"])) for item in items})
    if not 1 <= int(budget) <= len(subjects):
        raise DataError(f"label_budget must be between 1 and the {len(subjects)} training subjects, got {budget}.")
    order = [subjects[i] for i in np.random.default_rng(int(seed)).permutation(len(subjects))]
    chosen = set(order[: int(budget)])
    labelled = [item for item in items if str(item.get("subject", item["image"])) in chosen]
    return labelled, [item for item in items if str(item.get("subject", item["image"])) not in chosen]


def training_items(
    dataset_dir: str | Path,
    num_classes: int | None = None,
    dim: int | None = None,
    in_channels: int | None = None,
    label_budget: int | None = None,
    budget_seed: int = 0,
    unlabelled: str = "none",
    unlabelled_dirs: Sequence[str | Path] = (),
    labelled_fraction: float = 0.5,
    fold: int | None = None,
    check: bool = True,
) -> list[dict]:
    """The training items of a student or teacher: the labelled items of ``label_budget`` subjects (None: all; see
    :func:`subject_budget`) and, for distillation with unlabelled images, images without labels (``{"image"}``):
    ``unlabelled="rest"`` adds the other training subjects' images, ``unlabelled_dirs`` the training images of other
    folders (a transfer set, real unlabelled scans). With unlabelled images, the labelled items are repeated so that
    they make about ``labelled_fraction`` of the list (each batch then holds labelled images for L_gt); the teacher's
    prediction stands in for the label of an unlabelled image (:class:`common.data.transforms.PseudoLabeld`)."""
    if unlabelled not in ("none", "rest"):
        raise DataError(f"unlabelled must be 'none' or 'rest', got '{unlabelled}'.")
    items = load_datalist(dataset_dir, "training", num_classes, check, dim=dim, in_channels=in_channels, fold=fold)
    labelled, rest = (items, []) if label_budget is None else subject_budget(items, label_budget, budget_seed)
    extra = (
        [{"image": item["image"], "subject": str(item.get("subject", ""))} for item in rest]
        if unlabelled == "rest"
        else []
    )
    if unlabelled_dirs:
        extra += [{**item, "subject": "unlabelled"} for item in load_images(list(unlabelled_dirs), check=False)]
    if not extra:
        return labelled
    # one key set, so that labelled and unlabelled items collate into one batch
    labelled = [{"image": i["image"], "label": i["label"], "subject": str(i.get("subject", ""))} for i in labelled]
    if not 0 < labelled_fraction < 1:
        raise DataError(f"labelled_fraction must be in (0, 1), got {labelled_fraction}.")
    repeats = max(1, round(labelled_fraction * len(extra) / ((1 - labelled_fraction) * len(labelled))))
    return labelled * repeats + extra
