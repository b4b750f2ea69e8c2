"""``dataset.json``: what a prepared dataset folder holds, read by every bundle so that ``--dataset_dir`` is enough.

A dataset folder (written by ``scripts/prepare_dataset.py``, or by hand) holds ``datalist.json`` (the items of each
split) and ``dataset.json`` (this module), in the spirit of the Medical Segmentation Decathlon's ``dataset.json``::

    {
      "name": "hc18",                                   task name
      "description": "...",
      "modality": "US",                                 CT, MR, US, fundus, ...
      "dim": 2,                                         2: images / slices; 3: volumes
      "channel_names": ["US"],                          one per input channel (in_channels = its length)
      "labels": {"0": "background", "1": "fetal head"}, label value -> class name; values 0..K-1
      "spacing": [1.0, 1.0] | null,                     mm per spatial axis (null: unknown, pixels)
      "normalisation": {"method": "range", "range": [0, 255]},
      "source": {...}, "licence": "...", "split": {...}
    }

``normalisation`` says how the stored intensities become the [0, 1] every 2D bundle takes (the SAM teacher's input
contract); :class:`common.data.transforms.NormaliseIntensityd` applies it in every bundle's transforms, at training,
evaluation and inference alike:

- ``range``: values in ``range = [a, b]`` are mapped linearly to [0, 1] (8-bit images: [0, 255]; data already in
  [0, 1]: [0, 1]). Values outside ``[a, b]`` are bad input (checked), not clipped.
- ``window``: CT in HU, clipped to the window ``range`` (e.g. abdomen [-125, 275]) and mapped to [0, 1].
- ``zscore``: MR: each volume is z-scored over its non-zero voxels (the body/brain), then ``range`` (e.g. [-5, 5])
  is clipped and mapped to [0, 1]. The z-score needs a whole volume, so ``prepare_dataset`` applies it before cutting
  slices; a 2D slice is therefore only clipped and mapped, a 3D volume is z-scored first.

K = ``len(labels)`` classes, background included: a binary task has K = 2 (softmax). A bundle may be run with
``--num_classes 1`` (one sigmoid channel) on a binary dataset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import DataError

__all__ = ["DatasetInfo", "load_dataset_info", "write_dataset_info", "NORMALISATION_METHODS", "DATASET_JSON"]

DATASET_JSON = "dataset.json"
NORMALISATION_METHODS = ("range", "window", "zscore")


def check_normalisation(spec: Mapping[str, Any], where: str = "normalisation") -> dict[str, Any]:
    """The normalisation spec as a plain dict, or :class:`DataError` naming what is wrong."""
    if not isinstance(spec, Mapping):
        raise DataError(f"{where} must be a dict like {{'method': 'range', 'range': [0, 255]}}, got {spec!r}.")
    method = spec.get("method")
    if method not in NORMALISATION_METHODS:
        raise DataError(f"{where}: method must be one of {NORMALISATION_METHODS}, got {method!r}.")
    rng = spec.get("range")
    if not (isinstance(rng, Sequence) and len(rng) == 2 and float(rng[0]) < float(rng[1])):
        raise DataError(f"{where}: range must be two increasing numbers [a, b], got {rng!r}.")
    return {**dict(spec), "method": method, "range": [float(rng[0]), float(rng[1])]}


@dataclass
class DatasetInfo:
    """The contents of ``dataset.json`` (see the module docstring), with the values the bundles read."""

    name: str
    dim: int
    channel_names: list[str]
    labels: dict[str, str]
    normalisation: dict[str, Any]
    modality: str = ""
    description: str = ""
    spacing: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim not in (2, 3):
            raise DataError(f"dataset dim must be 2 or 3, got {self.dim!r}.")
        if not self.channel_names:
            raise DataError("dataset channel_names is empty: name one channel per input channel.")
        if not self.labels:
            raise DataError("dataset labels are empty: give {'0': 'background', '1': '<class>', ...}.")
        self.labels = {str(k): str(v) for k, v in self.labels.items()}
        try:
            values = sorted(int(k) for k in self.labels)
        except (TypeError, ValueError):
            raise DataError(f"dataset label values must be integers, got {list(self.labels)}.") from None
        if values != list(range(len(values))):
            raise DataError(f"dataset label values must be 0..K-1 without gaps, got {values}.")
        self.labels = {str(v): self.labels[str(v)] for v in values}
        self.normalisation = check_normalisation(self.normalisation)

    @property
    def num_classes(self) -> int:
        """K, background included (2 for a binary task)."""
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        """Foreground class names in label-value order (the classes that metrics score)."""
        return [self.labels[str(v)] for v in range(1, self.num_classes)]

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def regions(self) -> dict[str, list[int]]:
        """Named unions of classes scored beside the classes (``regions`` in dataset.json, e.g. BraTS
        ``{"whole tumour": [1, 2, 3, 4], "tumour core": [1, 3, 4], "enhancing tumour": [4]}``); {} when none."""
        return {str(k): [int(v) for v in vs] for k, vs in dict(self.extra.get("regions") or {}).items()}

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        out.update(self.extra)
        out["num_classes"] = self.num_classes  # derived, written for readers of the file
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | Path = DATASET_JSON) -> DatasetInfo:
        missing = [k for k in ("dim", "channel_names", "labels", "normalisation") if k not in data]
        if missing:
            raise DataError(
                f"'{path}' lacks {missing}: a dataset.json names the dim, channel_names, labels (value -> name, "
                "background 0) and normalisation; scripts/prepare_dataset.py writes one."
            )
        known = {"name", "dim", "channel_names", "labels", "normalisation", "modality", "description", "spacing"}
        extra = {k: v for k, v in data.items() if k not in known and k != "num_classes"}
        try:
            labels = data["labels"]
            if not isinstance(labels, Mapping):
                raise DataError(f"labels must be a dict of value -> name, got {labels!r}.")
            return cls(
                name=str(data.get("name", Path(path).parent.name)),
                dim=int(data["dim"]),
                channel_names=[str(c) for c in data["channel_names"]],
                labels={str(k): str(v) for k, v in labels.items()},
                normalisation=dict(data["normalisation"]) if isinstance(data["normalisation"], Mapping) else {},
                modality=str(data.get("modality", "")),
                description=str(data.get("description", "")),
                spacing=None if data.get("spacing") is None else [float(s) for s in data["spacing"]],
                extra=extra,
            )
        except DataError as err:
            raise DataError(f"'{path}': {err}") from None


def require_dataset_dir(dataset_dir: str | Path) -> Path:
    """``dataset_dir`` as a Path, or one clear :class:`DataError` saying how to make it."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DataError(
            f"dataset_dir '{dataset_dir}' does not exist. Prepare your data with 'python scripts/prepare_dataset.py "
            "FORMAT --src ... --out DIR' (or the sample with 'python scripts/prepare_data.py --out data', then "
            "--dataset_dir data/lits_liver) and pass --dataset_dir DIR."
        )
    return dataset_dir


def load_dataset_info(dataset_dir: str | Path) -> DatasetInfo:
    """Read ``dataset_dir/dataset.json``; a missing or malformed file is one clear :class:`DataError`."""
    path = require_dataset_dir(dataset_dir) / DATASET_JSON
    if not path.is_file():
        raise DataError(
            f"'{path}' not found: prepare the folder with 'python scripts/prepare_dataset.py FORMAT --src ... --out "
            f"{dataset_dir}', or pass --num_classes, --class_names, --in_channels and --normalisation on the command "
            "line."
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"'{path}' is not readable JSON: {err}") from None
    if not isinstance(data, Mapping):
        raise DataError(f"'{path}' must hold a JSON object.")
    return DatasetInfo.from_json(data, path)


def write_dataset_info(dataset_dir: str | Path, info: DatasetInfo) -> Path:
    """Write ``dataset_dir/dataset.json`` (atomically)."""
    path = Path(dataset_dir) / DATASET_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    tmp.replace(path)
    return path
