"""Per-class weights from the training labels: inverse class frequency ("auto" weights of IAD's L_cpd, METHODS.md §4).

The paper weights rare classes by hand (Synapse: gallbladder 2, pancreas 4) and names the manual choice a limitation;
here the weights are counted from the label files instead. Counting reads data, so it lives with the data and runs as
its own config item; the loss (``common.losses.iad.PrototypeAlignmentLoss``) only receives the list of floats.

:func:`class_weights_from_datalist` → :func:`class_weights_from_labels` → :func:`inverse_frequency_weights`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import LoadImage

from common.data.datalist import load_datalist
from common.errors import DataError
from common.losses.functional import num_label_classes

__all__ = ["inverse_frequency_weights", "class_weights_from_labels", "class_weights_from_datalist"]


def inverse_frequency_weights(counts: Sequence[float] | np.ndarray, power: float = 1.0) -> list[float]:
    """Per-class weights from voxel counts: w_n ∝ (1/freq_n)^power, normalised to mean 1 over the present classes.

    freq_n = counts_n / Σ_m counts_m. Classes with a zero count (never seen in the labels) get weight 1.0, the
    neutral default of the loss, rather than 0 (which would silently switch a class off) or infinity.

    Args:
        counts: one non-negative count per class, background included.
        power: exponent of the inverse frequency (1: plain inverse frequency, 0.5: its square root).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError("counts must be a 1D sequence of non-negative numbers.")
    present = counts > 0
    if not present.any():
        raise ValueError("inverse_frequency_weights: every class count is zero.")
    weights = np.ones_like(counts)
    inv = (counts[present] / counts.sum()) ** (-power)
    weights[present] = inv / inv.mean()
    return [float(w) for w in weights]


def class_weights_from_labels(
    labels: Iterable[np.ndarray | torch.Tensor], num_classes: int, power: float = 1.0
) -> list[float]:
    """Inverse-frequency class weights (see :func:`inverse_frequency_weights`) from integer label arrays.

    Values outside [0, N) are ignored, N = num_classes (N = 2 when num_classes = 1: a binary label map
    still holds background 0 and foreground 1).
    """
    n = num_label_classes(num_classes)
    counts = np.zeros(n, dtype=np.float64)
    for label in labels:
        arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        arr = np.rint(arr).astype(np.int64).ravel()
        arr = arr[(arr >= 0) & (arr < n)]
        counts += np.bincount(arr, minlength=n)[:n]
    return inverse_frequency_weights(counts, power=power)


def class_weights_from_datalist(
    dataset_dir: str | Path,
    num_classes: int,
    key: str | Sequence[str] = "training",
    power: float = 1.0,
    fold: int | None = None,
    label_key: str = "label",
) -> list[float]:
    """Inverse-frequency class weights from the label files of split ``key`` of ``dataset_dir/datalist.json``.

    The split is read as training reads it (:func:`common.data.datalist.load_datalist`, ``fold`` included), each
    ``item[label_key]`` is loaded with ``monai.transforms.LoadImage`` and the voxels of each class are counted; items
    without a label (an unlabelled transfer set) are skipped. Returns N floats (N = num_classes, 2 when it is 1),
    normalised to mean 1 over the classes present, for ``PrototypeAlignmentLoss(class_weights=...)``.
    """
    items = load_datalist(dataset_dir, key, check=False, fold=fold)
    paths = [item[label_key] for item in items if item.get(label_key)]
    if not paths:
        raise DataError(f"No '{label_key}' entries in the '{key}' split of '{dataset_dir}': no labels to count.")
    loader = LoadImage(image_only=True)
    return class_weights_from_labels((np.asarray(loader(p)) for p in paths), num_classes, power=power)
