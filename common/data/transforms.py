"""Transforms shared by the bundles that a plain MONAI transform list cannot say for every dataset and class count."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import Activationsd, AsDiscreted, Compose, MapTransform, SaveImage, SaveImaged, Spacingd

from common.data.dataset_info import check_normalisation
from common.errors import DataError

__all__ = [
    "AboveThreshold",
    "discretize",
    "NormaliseIntensityd",
    "PseudoLabeld",
    "ResampleToSpacingd",
    "SavePredictiond",
    "source_name",
]

# 2D image files written back in their own format; anything else (NIfTI, DICOM folders, ...) is written as NIfTI.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


def source_name(tensor: Any) -> str:
    """The file a loaded tensor came from (MONAI metadata), for error messages; '?' when unknown."""
    meta = getattr(tensor, "meta", None) or {}
    name = meta.get("filename_or_obj", "?")
    return str(name[0] if isinstance(name, (list, tuple)) and name else name)


class AboveThreshold:
    """``x > threshold`` as a named, picklable callable: CropForegroundd's ``select_fn`` in the 3D configs (the body or
    brain is every voxel above the threshold in any channel after normalisation), where a config lambda would be
    untestable logic in JSON."""

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: Any) -> Any:
        return x > self.threshold


def discretize(
    num_classes: int, pred_key: str = "pred", label_key: str | None = "label", onehot: bool = True
) -> Compose:
    """Logits → one-hot prediction (softmax + argmax for K ≥ 2, sigmoid + 0.5 threshold for K = 1), and the label
    to one-hot, as MONAI's metrics and handlers expect. ``onehot=False``: a label map (1, ...) for saving."""
    keys: Sequence[str] = [pred_key] + ([label_key] if label_key else [])
    if not onehot and num_classes > 1:
        return Compose([AsDiscreted(keys=pred_key, argmax=True)])
    if num_classes == 1:
        return Compose(
            [Activationsd(keys=pred_key, sigmoid=True), AsDiscreted(keys=pred_key, threshold=0.5)]
            + ([AsDiscreted(keys=label_key, threshold=0.5)] if label_key else [])
        )
    return Compose(
        [
            Activationsd(keys=pred_key, softmax=True),
            AsDiscreted(keys=keys, argmax=[True] + [False] * (len(keys) - 1), to_onehot=[num_classes] * len(keys)),
        ]
    )


class NormaliseIntensityd(MapTransform):
    """Bring images to [0, 1] by the dataset's ``normalisation`` (``dataset.json``, see
    :mod:`common.data.dataset_info`), the input contract of the 2D bundles (the SAM teacher expects [0, 1]).

    - ``range`` [a, b]: (x − a) / (b − a). A value outside [a, b] (beyond a 1e-3 tolerance of the width) is bad input:
      one :class:`DataError` naming the file, its value range and the fix, instead of silently training on 0–255 or
      HU values.
    - ``window`` [a, b]: clip to the window, then as ``range`` (CT in HU).
    - ``zscore`` [a, b]: a volume (3 spatial axes) is first z-scored per channel over its non-zero voxels (the body
      or brain; a 2D slice of a prepared dataset was z-scored over its whole volume already), then clipped to [a, b]
      and mapped as ``range``. Voxels outside the body stay at the lowest value, 0.
    """

    def __init__(self, keys: KeysCollection, normalisation: Mapping[str, Any], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spec = check_normalisation(normalisation)
        self.low, self.high = self.spec["range"]

    def _apply(self, image: torch.Tensor) -> torch.Tensor:
        method, low, high = self.spec["method"], self.low, self.high
        x = image.float()
        if method == "range":
            lo, hi = float(x.min()), float(x.max())
            slack = 1e-3 * (high - low)
            if lo < low - slack or hi > high + slack:
                raise DataError(
                    f"image '{source_name(image)}' has values in [{lo:g}, {hi:g}], outside the dataset's "
                    f"normalisation range [{low:g}, {high:g}]: the bundles take images mapped to [0, 1]. Prepare the "
                    "data with scripts/prepare_dataset.py, or set normalisation in dataset.json (e.g. "
                    "{'method': 'range', 'range': [0, 255]} for 8-bit images, {'method': 'window', 'range': [-125, "
                    "275]} for CT in HU)."
                )
        if method == "zscore" and x.ndim == 4:
            out = torch.zeros_like(x)
            for c in range(x.shape[0]):
                inside = x[c] != 0
                if inside.any():
                    values = x[c][inside]
                    out[c][inside] = (values - values.mean()) / values.std(unbiased=False).clamp_min(1e-6)
            x = out
            # outside the body: the lowest value, as in the prepared 2D slices
            x = torch.where(image.float() != 0, x, torch.full_like(x, low))
        if method != "range":
            x = x.clamp(low, high)
        return (x - low) / (high - low)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._apply(d[key])
        return d


class SavePredictiond(SaveImaged):
    """``SaveImaged`` that writes each prediction in its input's own format: a PNG/TIF/JPG/BMP/GIF input gives a PNG
    label image of the input's size (class values as pixel values), anything else (NIfTI, a DICOM series folder) a
    NIfTI label volume with the input's shape, affine and orientation. Files are ``<input stem>_<postfix>`` in
    ``output_dir``. Being a ``SaveImaged``, MONAI Label drops it from the post-processing as it drops any saver."""

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        output_postfix: str = "seg",
        output_dtype: torch.dtype = torch.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        common = dict(
            output_dir=str(output_dir),
            output_postfix=output_postfix,
            output_dtype=output_dtype,
            resample=False,
            separate_folder=False,
            print_log=False,
        )
        super().__init__(keys, output_ext=".nii.gz", allow_missing_keys=allow_missing_keys, **common)
        self.image_saver = SaveImage(output_ext=".png", scale=None, **common)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            name = source_name(d[key]).lower()
            image = name.endswith(_IMAGE_SUFFIXES) and d[key].ndim == 3
            (self.image_saver if image else self.saver)(d[key])
        return d


class ResampleToSpacingd(Spacingd):
    """MONAI's ``Spacingd`` (resample to ``pixdim`` mm, invertible), safe beside entries such as MONAI Label's
    ``image_path``: ``Spacingd`` treats every key that starts with ``<key>_`` as a metadata dict and updates it, which
    fails on a string. Such non-dict entries are set aside during the call and put back unchanged."""

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)
        }
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out


class PseudoLabeld(MapTransform):
    """Mark each item as labelled or not (``labelled``: 1.0 / 0.0, collated to a (B,) tensor the trainer reads to
    take L_gt on labelled images only) and give an unlabelled image the teacher's prediction as its ``label``
    (argmax of ``teacher_logits`` over classes; logit > 0 for one sigmoid channel), so that terms that need a label
    map (L_cpd's prototypes) work on unlabelled images too — our extension of IAD to unlabelled data. Place it after
    the teacher's logits are loaded and brought to the image's size, before spatial augmentation."""

    def __init__(self, label_key: str = "label", logits_key: str = "teacher_logits", flag_key: str = "labelled"):
        super().__init__(keys=[label_key])
        self.label_key, self.logits_key, self.flag_key = label_key, logits_key, flag_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.label_key in d:
            d[self.flag_key] = torch.tensor(1.0)
            return d
        logits = d.get(self.logits_key)
        if logits is None:
            raise DataError(
                f"image '{source_name(d.get('image'))}' has no label and no cached teacher logits: unlabelled images "
                "need the teacher's predictions (teacher_mode 'cache')."
            )
        logits = torch.as_tensor(logits)
        label = (logits > 0) if logits.shape[0] == 1 else logits.argmax(dim=0, keepdim=True)
        d[self.label_key] = label.float()
        d[self.flag_key] = torch.tensor(0.0)
        return d
