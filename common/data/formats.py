"""Readers of public dataset layouts, one per format, for ``scripts/prepare_dataset.py``.

A reader lists the cases of a source folder in its publisher's layout (cheaply: file names only, so that an
up-to-date output is recognised without reading any pixel) and loads one case at a time when the writer
(:mod:`common.data.prepare`) asks for it. A loaded case is either

- an :class:`ImageCase`, a 2D picture (8/16-bit grey or RGB) with its label map and optional evaluation ROI, written
  as PNG files; or
- a :class:`VolumeCase`, a 3D volume (one float32 array per channel, already z-scored for MR, in HU for CT) with its
  label volume and affine, written as NIfTI volumes (``--dim 3``) or as 2D axial slices (``--dim 2``).

Every problem with the input is a :class:`~common.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from common.errors import DataError

__all__ = [
    "ImageCase",
    "VolumeCase",
    "CaseRef",
    "Description",
    "Reader",
    "FORMATS",
    "CT_WINDOWS",
    "fill_outline",
    "zscore",
    "voxel_spacing",
]

# Named CT windows (HU), as radiologists read them; the default is the abdominal soft-tissue window.
CT_WINDOWS = {
    "abdomen": (-125.0, 275.0),
    "lung": (-1000.0, 400.0),
    "brain": (0.0, 80.0),
    "bone": (-450.0, 1050.0),
}
ZSCORE_RANGE = (-5.0, 5.0)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = ("", "_mask", "_seg", "_label", "_gt")  # mask stem = image stem + one of these


@dataclass
class ImageCase:
    """A 2D picture: ``image`` (H, W) or (H, W, 3) uint8 / uint16, ``label`` (H, W) uint8 class ids, ``roi`` (H, W)
    {0, 1} uint8 restricting evaluation (DRIVE's field of view) or None."""

    image: np.ndarray
    label: np.ndarray
    roi: np.ndarray | None = None


@dataclass
class VolumeCase:
    """A 3D case: one float32 volume per channel (z-scored MR, or CT in HU), its uint8 label volume, the affine
    shared by all of them, and ``body`` (where the brain / body is; slices without any are dropped; None: all)."""

    channels: list[np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    body: np.ndarray | None = None


@dataclass(frozen=True)
class CaseRef:
    """A case found in the source: its id (unique, used in output names), its subject (the unit of the split), the
    files it is read from, how to load it (None when the case has to be skipped), and a fixed split (``group``)
    when the publisher fixes one (DRIVE's test images, the LiTS sample's slabs)."""

    case_id: str
    subject: str
    sources: tuple[Path, ...]
    load: Callable[[], ImageCase | VolumeCase | None] = field(compare=False, repr=False)
    group: str | None = None


@dataclass
class Description:
    """What ``dataset.json`` says about a source (see :class:`common.data.dataset_info.DatasetInfo`), plus where it
    comes from, its licence, and the split rule its publisher implies (``random``, ``official`` or ``fixed``)."""

    name: str
    description: str
    modality: str
    channel_names: list[str]
    labels: dict[str, str]
    normalisation: dict[str, Any]
    url: str
    licence: str
    spacing: list[float] | None = None
    split_rule: str = "random"
    extra: dict[str, Any] = field(default_factory=dict)


def voxel_spacing(affine: np.ndarray) -> list[float]:
    """mm per voxel axis: the lengths of the affine's first three columns."""
    return [round(float(s), 6) for s in np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))]


def zscore(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``volume`` z-scored over the voxels of ``mask`` (mean 0, std 1 there) and set to 0 outside it (float32)."""
    volume = np.asarray(volume, np.float32)
    inside = mask & np.isfinite(volume)
    if inside.sum() < 2:
        return np.zeros_like(volume)
    values = volume[inside]
    mean, std = float(values.mean()), float(values.std())
    out = (volume - mean) / (std if std > 0 else 1.0)
    return np.where(inside, out, 0.0).astype(np.float32)


def fill_outline(outline: np.ndarray, max_closing: int = 3) -> tuple[np.ndarray | None, str]:
    """The region an outline encloses (outline included) and how it was found: ``filled`` (the outline closes),
    ``closed`` (it closed after a morphological closing of 1..``max_closing`` iterations of a 3x3 square, i.e. a gap
    of up to about 2 x ``max_closing`` pixels), or ``open`` (still encloses nothing: None)."""
    outline = np.asarray(outline, bool)
    filled = ndi.binary_fill_holes(outline)
    if filled.sum() > outline.sum():
        return filled, "filled"
    square = ndi.generate_binary_structure(2, 2)
    for iterations in range(1, max_closing + 1):
        closed = ndi.binary_closing(outline, structure=square, iterations=iterations)
        filled = ndi.binary_fill_holes(closed)
        if filled.sum() > closed.sum():
            return filled, "closed"
    return None, "open"


def _grey8(path: Path) -> np.ndarray:
    """An 8-bit grey image as (H, W) uint8."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.uint8)


def _binary(path: Path) -> np.ndarray:
    """A 0/255 mask (GIF or PNG) as {0, 1} uint8 (values > 127 are foreground)."""
    return (_grey8(path) > 127).astype(np.uint8)


def _safe_id(text: str) -> str:
    """``text`` with anything but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_`` (a file-name stem)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _nifti_stem(path: Path) -> str:
    name = path.name
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return path.stem


def _load_nifti(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except Exception as err:  # any reader failure means the same thing to the user
        raise DataError(f"cannot read '{path}' as NIfTI ({err}): re-export it as .nii.gz.") from None


def _check_same_grid(image_path: Path, image: Any, other_path: Path, other: Any, what: str = "label") -> None:
    """DataError naming both files when ``other`` (a label, a mask, another channel) does not share the image's
    voxel grid: shape, or affine beyond 1e-3 mm."""
    if tuple(image.shape[:3]) != tuple(other.shape[:3]):
        raise DataError(
            f"{what} '{other_path}' is {tuple(other.shape)} but its image '{image_path}' is {tuple(image.shape)}: "
            f"they must share one voxel grid (resample the {what} onto the image)."
        )
    if not np.allclose(image.affine, other.affine, atol=1e-3):
        raise DataError(
            f"{what} '{other_path}' and its image '{image_path}' have different affines (beyond 1e-3 mm): they must "
            f"share one voxel grid (resample the {what} onto the image, or fix its header)."
        )


def _label_volume(path: Path, img: Any, num_classes: int) -> np.ndarray:
    """The label volume as uint8 class ids; DataError for non-integer values or values outside 0..K-1."""
    data = np.asarray(img.dataobj)
    rounded = np.rint(data)
    values = np.unique(rounded)
    if not np.allclose(data, rounded, atol=1e-3) or values.min() < 0 or values.max() >= num_classes:
        shown = [float(v) for v in np.unique(data)[:8]]
        raise DataError(
            f"label '{path}' has values {shown}, expected integers 0..{num_classes - 1} (the labels of the "
            "dataset): fix the label file or the labels of the source's dataset.json."
        )
    return rounded.astype(np.uint8)


class Reader:
    """One source format: :meth:`cases` lists the cases (file names only); :meth:`describe` says what the dataset is
    (it may read the files it needs, e.g. every mask of a ``folder`` source). ``notes`` collects what loading found
    (outlines that needed closing, skipped cases) for the summary and ``dataset.json``."""

    format: ClassVar[str] = ""
    dims: ClassVar[tuple[int, ...]] = (2,)
    url: ClassVar[str] = ""

    def __init__(self, src: Path, dim: int = 2, window: tuple[float, float] | None = None) -> None:
        self.src = Path(src)
        self.dim = dim
        self.window = window
        self.notes: dict[str, Any] = {}
        self.meta_files: list[Path] = []  # files besides the cases' own that the output depends on
        if not self.src.is_dir():
            raise DataError(f"--src '{self.src}' is not a folder: point it at the {self.format} data ({self.url}).")
        if dim not in self.dims:
            raise DataError(f"{self.format} is {'/'.join(map(str, self.dims))}D only: drop --dim {dim}.")

    def cases(self) -> list[CaseRef]:
        raise NotImplementedError

    def describe(self, cases: Sequence[CaseRef]) -> Description:
        raise NotImplementedError

    def _no_window(self) -> None:
        if self.window is not None:
            raise DataError(f"--window applies to CT only; {self.format} images are not CT: drop --window.")

    def _ct_normalisation(self) -> dict[str, Any]:
        return {"method": "window", "range": list(self.window or CT_WINDOWS["abdomen"])}


class HC18Reader(Reader):
    """HC18 fetal head circumference: ``NNN_HC.png`` (and a subject's further frames ``NNN_2HC.png``, ...) with the
    sonographer's ellipse outline ``<stem>_Annotation.png``, filled into the head mask (:func:`fill_outline`)."""

    format = "hc18"
    url = "https://zenodo.org/record/1327317"
    stem_pattern = re.compile(r"^(\d+)_(\d*)HC$")

    def cases(self) -> list[CaseRef]:
        self._no_window()
        refs = []
        for image in sorted(self.src.glob("*HC.png")):
            match = self.stem_pattern.match(image.stem)
            if match is None:
                continue
            annotation = image.with_name(f"{image.stem}_Annotation.png")
            if not annotation.is_file():
                raise DataError(
                    f"'{annotation}' not found: every HC18 image needs its _Annotation.png outline (the HC18 test_set "
                    "has none: use --src .../hc18/training_set)."
                )
            refs.append(
                CaseRef(image.stem, match.group(1), (image, annotation), partial(self._load, image, annotation))
            )
        if not refs:
            raise DataError(
                f"no HC18 images (NNN_HC.png with NNN_HC_Annotation.png) in '{self.src}': pass --src "
                ".../hc18/training_set."
            )
        return refs

    def _load(self, image_path: Path, annotation_path: Path) -> ImageCase | None:
        image = _grey8(image_path)
        outline = _grey8(annotation_path) > 127
        if outline.shape != image.shape:
            raise DataError(
                f"'{annotation_path}' is {outline.shape[::-1]} px but '{image_path}' is {image.shape[::-1]} px: an "
                "annotation must have its image's size."
            )
        mask, how = fill_outline(outline)
        if how == "closed":
            self.notes.setdefault("outlines_closed", []).append(image_path.name)
        if mask is None:
            edge = outline[0].any() or outline[-1].any() or outline[:, 0].any() or outline[:, -1].any()
            reason = (
                "the outline runs off the image edge, so it encloses nothing and closing cannot complete it"
                if edge
                else "the outline does not close, even after a morphological closing"
            )
            self.notes.setdefault("outlines_skipped", []).append({"image": image_path.name, "reason": reason})
            return None
        return ImageCase(image, mask.astype(np.uint8))

    def describe(self, cases: Sequence[CaseRef]) -> Description:
        return Description(
            name="hc18",
            description=(
                "HC18 fetal head in 2D ultrasound: the sonographer's ellipse outline filled into a binary mask; split "
                "by subject (all frames NNN_HC, NNN_2HC, ... of subject NNN in one split)."
            ),
            modality="US",
            channel_names=["US"],
            labels={"0": "background", "1": "fetal head"},
            normalisation={"method": "range", "range": [0, 255]},
            url=self.url,
            licence=(
                "CC BY 4.0 (HC18 challenge, van den Heuvel et al. 2018, Zenodo record 1327317): attribution required"
            ),
            extra={"spacing_note": "the per-image pixel-size CSV is not part of the source: spacing unknown (pixels)"},
        )


class DriveReader(Reader):
    """DRIVE retinal vessels: ``training|test/images/NN_*.tif`` (RGB), ``1st_manual/NN_manual1.gif`` (vessels of
    the first observer), ``mask/NN_*_mask.gif`` (field of view, kept as the evaluation ROI)."""

    format = "drive"
    url = "https://drive.grand-challenge.org/"

    def cases(self) -> list[CaseRef]:
        self._no_window()
        refs = []
        for group in ("training", "test"):
            folder = self.src / group
            if not (folder / "images").is_dir():
                raise DataError(
                    f"'{folder / 'images'}' not found: --src must be the DRIVE folder holding training/ and test/ "
                    "(each with images/, 1st_manual/, mask/)."
                )
            for image in sorted((folder / "images").glob("*.tif")):
                number = image.stem.split("_")[0]
                manual = folder / "1st_manual" / f"{number}_manual1.gif"
                fov = folder / "mask" / f"{image.stem}_mask.gif"
                for needed in (manual, fov):
                    if not needed.is_file():
                        raise DataError(f"'{needed}' not found: DRIVE image '{image}' needs it (publisher's layout).")
                refs.append(
                    CaseRef(image.stem, number, (image, manual, fov), partial(self._load, image, manual, fov), group)
                )
        if not refs:
            raise DataError(f"no DRIVE images (*.tif) under '{self.src}/training/images' or '{self.src}/test/images'.")
        return refs

    def _load(self, image_path: Path, manual_path: Path, fov_path: Path) -> ImageCase:
        with Image.open(image_path) as img:
            image = np.asarray(img.convert("RGB"), dtype=np.uint8)
        label, roi = _binary(manual_path), _binary(fov_path)
        for path, array in ((manual_path, label), (fov_path, roi)):
            if array.shape != image.shape[:2]:
                raise DataError(f"'{path}' is {array.shape[::-1]} px but '{image_path}' is {image.shape[1::-1]} px.")
        return ImageCase(image, label, roi)

    def describe(self, cases: Sequence[CaseRef]) -> Description:
        return Description(
            name="drive",
            description=(
                "DRIVE retinal vessels in RGB fundus photographs (first observer's manual segmentation); 'roi' is the "
                "field-of-view mask, inside which metrics are computed."
            ),
            modality="fundus",
            channel_names=["R", "G", "B"],
            labels={"0": "background", "1": "vessel"},
            normalisation={"method": "range", "range": [0, 255]},
            url=self.url,
            licence=(
                "DRIVE research-use terms: free for research, no redistribution "
                "(see https://drive.grand-challenge.org/)"
            ),
            split_rule="official",
            extra={"roi_key": "roi"},
        )


class BratsReader(Reader):
    """BraTS (DeepMedic example package): ``brats_2013_pat000N_1/`` with FLAIR and T1c (already z-scored inside the
    brain by the packager; z-scored again here so the rule is the same for every MR source), ``brainmask`` and
    ``OTMultiClass`` (0 background, 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing tumour)."""

    format = "brats"
    dims = (2, 3)
    url = "https://www.med.upenn.edu/cbica/brats/ (as re-packaged in the DeepMedic examples, github.com/deepmedic)"
    channels = {"FLAIR": "Flair_subtrMeanDivStd.nii.gz", "T1c": "T1c_subtrMeanDivStd.nii.gz"}
    labels = {"0": "background", "1": "necrosis", "2": "oedema", "3": "non-enhancing tumour", "4": "enhancing tumour"}

    def cases(self) -> list[CaseRef]:
        self._no_window()
        refs = []
        for folder in sorted(p for p in self.src.iterdir() if p.is_dir() and (p / "OTMultiClass.nii.gz").exists()):
            files = [folder / name for name in self.channels.values()]
            files += [folder / "brainmask.nii.gz", folder / "OTMultiClass.nii.gz"]
            for path in files:
                if not path.is_file():
                    raise DataError(f"'{path}' not found: every BraTS case folder needs {[p.name for p in files]}.")
            match = re.search(r"pat(\d+)", folder.name)
            subject = f"pat{match.group(1)}" if match else folder.name
            refs.append(CaseRef(folder.name, subject, tuple(files), partial(self._load, *files)))
        if not refs:
            raise DataError(
                f"no BraTS case folders (holding OTMultiClass.nii.gz) in '{self.src}': pass --src .../brats2013."
            )
        licence = sorted(self.src.glob("License*.txt"))
        self.meta_files += licence
        return refs

    def _load(self, flair: Path, t1c: Path, brainmask: Path, label_path: Path) -> VolumeCase:
        ref = _load_nifti(flair)
        images = {path: _load_nifti(path) for path in (t1c, brainmask, label_path)}
        for path, img in images.items():
            _check_same_grid(flair, ref, path, img, "label" if path == label_path else "volume")
        brain = np.asarray(images[brainmask].dataobj) > 0.5
        channels = [zscore(ref.get_fdata(dtype=np.float32), brain)]
        channels.append(zscore(images[t1c].get_fdata(dtype=np.float32), brain))
        label = _label_volume(label_path, images[label_path], len(self.labels))
        return VolumeCase(channels, label, ref.affine, body=brain)

    def describe(self, cases: Sequence[CaseRef]) -> Description:
        licence_files = sorted(self.src.glob("License*.txt"))
        return Description(
            name="brats2013",
            description=(
                "BraTS brain tumour MRI (FLAIR, T1c), 4 tumour classes; each channel z-scored over the brain mask, 0 "
                "outside the brain; split by patient."
                + (" Axial slices with tumour plus a share of brain slices without." if self.dim == 2 else "")
            ),
            modality="MR",
            channel_names=list(self.channels),
            labels=dict(self.labels),
            normalisation={"method": "zscore", "range": list(ZSCORE_RANGE)},
            url=self.url,
            licence="CC BY-NC-SA 3.0 CH (BraTS; non-commercial, share-alike, attribution)",
            extra={
                # the BraTS evaluation regions (scored beside the classes): WT whole tumour, TC tumour core, ET
                # enhancing tumour (BraTS names; "enhancing tumour" is also class 4)
                "regions": {"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]},
                **({"licence_file": licence_files[0].name} if licence_files else {}),
            },
        )


class DecathlonReader(Reader):
    """A Medical Segmentation Decathlon task (``imagesTr/<case>.nii.gz``, 4D when multi-modal, ``modality`` and
    ``labels`` value -> name in ``dataset.json``) or an nnU-Net v2 raw dataset (``imagesTr/<case>_0000.nii.gz`` one
    file per channel, ``channel_names`` and ``labels`` name -> value)."""

    format = "decathlon"
    dims = (2, 3)
    url = "http://medicaldecathlon.com/"

    def cases(self) -> list[CaseRef]:
        path = self.src / "dataset.json"
        if not path.is_file():
            raise DataError(
                f"'{path}' not found: --src must be a Decathlon task folder or an nnU-Net raw dataset folder (with "
                "imagesTr/, labelsTr/ and dataset.json)."
            )
        self.meta_files.append(path)
        try:
            self.meta = json.loads(path.read_text())
        except ValueError as err:
            raise DataError(f"'{path}' is not readable JSON ({err}).") from None
        self.labels = self._labels(path)
        self.nnunet = "channel_names" in self.meta
        names = self.meta.get("channel_names") if self.nnunet else self.meta.get("modality")
        if not isinstance(names, Mapping) or not names:
            raise DataError(
                f'\'{path}\' names no channels: add "channel_names": {{"0": "CT"}} (nnU-Net v2) or "modality": '
                '{"0": "CT"} (Decathlon).'
            )
        self.channel_names = [str(names[k]) for k in sorted(names, key=int)]
        is_ct = [c.upper() == "CT" for c in self.channel_names]
        if any(is_ct) and not all(is_ct):
            raise DataError(
                f"'{path}' mixes CT and non-CT channels {self.channel_names}: not supported (one normalisation per "
                "dataset)."
            )
        self.is_ct = all(is_ct)
        if not self.is_ct:
            self._no_window()
        images, labels = self.src / "imagesTr", self.src / "labelsTr"
        for folder in (images, labels):
            if not folder.is_dir():
                raise DataError(f"'{folder}' not found: a Decathlon / nnU-Net source holds imagesTr/ and labelsTr/.")
        ending = str(self.meta.get("file_ending", ".nii.gz"))
        if ending not in (".nii.gz", ".nii"):
            raise DataError(
                f"'{path}' has file_ending {ending!r}: only NIfTI is read here (PNG / JPG sources: use the 'folder' "
                "format)."
            )
        files = sorted(p for p in images.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))
        refs = []
        if self.nnunet:
            grouped: dict[str, dict[int, Path]] = {}
            for file in files:
                match = re.fullmatch(r"(.+)_(\d{4})", file.name[: -len(ending)])
                if match is None:
                    raise DataError(
                        f"'{file}' is not named <case>_XXXX{ending} (nnU-Net v2 channel suffix): rename it."
                    )
                grouped.setdefault(match.group(1), {})[int(match.group(2))] = file
            for case, channel_files in grouped.items():
                missing = [c for c in range(len(self.channel_names)) if c not in channel_files]
                if missing:
                    raise DataError(
                        f"case '{case}' in '{images}' lacks channel file(s) "
                        f"{[f'{case}_{c:04d}{ending}' for c in missing]} "
                        f"(dataset.json names {len(self.channel_names)} channels)."
                    )
                label = self._label_file(labels / f"{case}{ending}", channel_files[0])
                sources = tuple(channel_files[c] for c in range(len(self.channel_names))) + (label,)
                refs.append(CaseRef(case, case, sources, partial(self._load, sources[:-1], label)))
        else:
            for file in files:
                case = _nifti_stem(file)
                label = self._label_file(labels / file.name, file)
                refs.append(CaseRef(case, case, (file, label), partial(self._load, (file,), label)))
        if not refs:
            raise DataError(f"no {ending} images in '{images}'.")
        return refs

    @staticmethod
    def _label_file(label: Path, image: Path) -> Path:
        if not label.is_file():
            raise DataError(f"label '{label}' not found for image '{image}': every training image needs its label.")
        return label

    def _labels(self, path: Path) -> dict[str, str]:
        """value -> name from MSD (``{"0": "background"}``) or nnU-Net v2 (``{"background": 0}``) labels."""
        labels = self.meta.get("labels")
        if not isinstance(labels, Mapping) or not labels:
            raise DataError(
                f'\'{path}\' has no labels: add "labels": {{"0": "background", "1": "<class>"}} (Decathlon) or '
                '{"background": 0, "<class>": 1} (nnU-Net v2).'
            )
        if all(str(k).isdigit() for k in labels):
            out = {str(int(k)): str(v) for k, v in labels.items()}
        else:
            out = {}
            for name, value in labels.items():
                if isinstance(value, (list, tuple)):
                    raise DataError(
                        f"'{path}': label '{name}' is a region {list(value)} (nnU-Net region-based training): not "
                        "supported; give each class one value, or convert the regions to classes first."
                    )
                out[str(int(value))] = str(name)
        values = sorted(int(v) for v in out)
        if values != list(range(len(values))):
            raise DataError(f"'{path}': label values must be 0..K-1 without gaps (0 background), got {values}.")
        return {str(v): out[str(v)] for v in values}

    def _load(self, image_paths: tuple[Path, ...], label_path: Path) -> VolumeCase:
        first = _load_nifti(image_paths[0])
        label_img = _load_nifti(label_path)
        channels = []
        for path in image_paths:
            img = first if path == image_paths[0] else _load_nifti(path)
            if path != image_paths[0]:
                _check_same_grid(image_paths[0], first, path, img, "channel")
            data = img.get_fdata(dtype=np.float32)
            if data.ndim == 4:
                channels += [np.ascontiguousarray(data[..., c]) for c in range(data.shape[-1])]
            elif data.ndim == 3:
                channels.append(data)
            else:
                raise DataError(f"'{path}' is {data.ndim}D: expected a 3D volume (or 4D, channels last).")
        if len(channels) != len(self.channel_names):
            raise DataError(
                f"'{image_paths[0]}' holds {len(channels)} channel(s) but dataset.json names {len(self.channel_names)} "
                f"({self.channel_names})."
            )
        _check_same_grid(image_paths[0], first, label_path, label_img)
        label = _label_volume(label_path, label_img, len(self.labels))
        if label.ndim == 4 and label.shape[-1] == 1:
            label = label[..., 0]
        if self.is_ct:
            return VolumeCase(channels, label, first.affine)  # HU; a CT body is everything
        body = np.zeros(channels[0].shape, bool)
        for channel in channels:
            body |= channel != 0
        return VolumeCase([zscore(c, body) for c in channels], label, first.affine, body=body)

    def describe(self, cases: Sequence[CaseRef]) -> Description:
        name = str(self.meta.get("name") or self.src.name)
        licence = str(self.meta.get("licence") or self.meta.get("license") or "see the publisher's terms")
        layout = "nnU-Net v2 raw dataset" if self.nnunet else "Medical Segmentation Decathlon task"
        if self.is_ct:
            rule = "CT in HU, windowed to the normalisation range"
        else:
            rule = "each channel z-scored over the non-zero voxels (the body), 0 outside"
        return Description(
            name=_safe_id(name),
            description=f"{name} ({layout}: {self.meta.get('description', '')}). {rule}.".replace(": )", ")"),
            modality="CT" if self.is_ct else "/".join(self.channel_names),
            channel_names=list(self.channel_names),
            labels=dict(self.labels),
            normalisation=self._ct_normalisation() if self.is_ct else {"method": "zscore", "range": list(ZSCORE_RANGE)},
            url=str(self.meta.get("reference") or self.url),
            licence=licence,
            extra={"layout": "nnunet_v2" if self.nnunet else "msd"},
        )


class FolderReader(Reader):
    """A plain folder: ``images/`` and ``masks/`` of PNG / JPG / TIF, paired by stem (mask stem = image stem, or the
    image stem + ``_mask``, ``_seg``, ``_label`` or ``_gt``). :meth:`describe` reads every mask once to choose one
    value -> class rule for the whole dataset (see :func:`_label_rule`)."""

    format = "folder"
    url = "(user data)"

    def cases(self) -> list[CaseRef]:
        self._no_window()
        images_dir, masks_dir = self.src / "images", self.src / "masks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DataError(f"'{folder}' not found: a folder source holds images/ and masks/ (PNG, JPG or TIF).")
        masks: dict[str, Path] = {}
        for mask in sorted(masks_dir.iterdir()):
            if mask.suffix.lower() in IMAGE_SUFFIXES:
                masks.setdefault(mask.stem, mask)
        refs = []
        self.pairs: list[tuple[Path, Path]] = []
        for image in sorted(images_dir.iterdir()):
            if image.suffix.lower() not in IMAGE_SUFFIXES or image.name.startswith("."):
                continue
            found = [masks[image.stem + s] for s in MASK_SUFFIXES if image.stem + s in masks]
            if not found:
                raise DataError(
                    f"no mask for image '{image}': put '{image.stem}.png' (or {image.stem}_mask.png, _seg, _label, "
                    f"_gt) in '{masks_dir}'."
                )
            if len(found) > 1:
                raise DataError(f"image '{image}' matches several masks {[m.name for m in found]}: keep one.")
            self.pairs.append((image, found[0]))
            refs.append(
                CaseRef(_safe_id(image.stem), image.stem, (image, found[0]), partial(self._load, image, found[0]))
            )
        if not refs:
            raise DataError(f"no images (PNG, JPG, TIF) in '{images_dir}'.")
        return refs

    def describe(self, cases: Sequence[CaseRef]) -> Description:
        channels, depth, odd = None, None, None
        palette, grey, values = [], [], set()
        for image, mask in self.pairs:
            with Image.open(image) as img:
                mode, size = img.mode, img.size
            n, bits = _image_kind(image, mode)
            if channels is None:
                channels, depth = n, bits
            elif (n, bits) != (channels, depth) and odd is None:
                odd = (image, n, bits)
            mask_values, is_palette, mask_size = _mask_values(mask)
            if mask_size != size:
                raise DataError(
                    f"mask '{mask}' is {mask_size[0]}x{mask_size[1]} px but image '{image}' is {size[0]}x{size[1]} "
                    "px: they must have one size."
                )
            (palette if is_palette else grey).append(mask)
            values |= mask_values
        if odd is not None:
            raise DataError(
                f"image '{odd[0]}' has {odd[1]} channel(s) at {odd[2]} bits but the first image has {channels} at "
                f"{depth} bits: all images of a dataset must have the same channel count and depth (convert it)."
            )
        if palette and grey:
            raise DataError(
                f"mask '{(grey if len(grey) < len(palette) else palette)[0]}' is "
                f"{'grey' if len(grey) < len(palette) else 'a palette PNG'} while others are not: save all masks one "
                "way (grey or palette PNG)."
            )
        self.mapping, rule = _label_rule(values, palette=bool(palette), bits=16 if max(values, default=0) > 255 else 8)
        num_classes = max(self.mapping.values()) + 1 if self.mapping else 2
        num_classes = max(num_classes, 2)
        if num_classes == 2:
            labels = {"0": "background", "1": "foreground"}
        else:
            labels = {"0": "background", **{str(k): f"class_{k}" for k in range(1, num_classes)}}
        extra: dict[str, Any] = {"label_rule": rule}
        if rule in ("binarised", "sorted values"):
            extra["label_mapping"] = {str(k): v for k, v in sorted(self.mapping.items())}
        licence_files = sorted(p for p in self.src.iterdir() if p.name.upper().startswith(("LICENSE", "LICENCE")))
        licence = "unknown (user data): state your data's licence"
        if licence_files:
            licence = licence_files[0].read_text(errors="replace").strip().splitlines()[0][:200] or licence
        self.depth = depth
        return Description(
            name=_safe_id(self.src.name),
            description=f"{self.src.name}: images with masks from a plain folder (images/, masks/).",
            modality="",
            channel_names=["grey"] if channels == 1 else ["R", "G", "B"],
            labels=labels,
            normalisation={"method": "range", "range": [0, 255 if depth == 8 else 65535]},
            url=self.url,
            licence=licence,
            extra=extra,
        )

    def _load(self, image_path: Path, mask_path: Path) -> ImageCase:
        image = _read_picture(image_path)
        with Image.open(mask_path) as img:
            raw = np.asarray(img.convert("L") if img.mode == "1" else img)
        lookup = np.zeros(int(raw.max()) + 1, np.uint8)
        for value, cls in self.mapping.items():
            if value < lookup.size:
                lookup[value] = cls
        return ImageCase(image, lookup[raw.astype(np.int64)])


def _image_kind(path: Path, mode: str) -> tuple[int, int]:
    """(channels, bits) an image of PIL ``mode`` is written with; DataError for modes that cannot be."""
    if mode in ("1", "L", "LA"):
        return 1, 8
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return 1, 16
    if mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        return 3, 8
    raise DataError(f"image '{path}' has PIL mode {mode!r}: save it as 8/16-bit grey or 8-bit RGB (PNG or TIF).")


def _read_picture(path: Path) -> np.ndarray:
    """An image as (H, W) uint8/uint16 or (H, W, 3) uint8; an alpha channel must be fully opaque."""
    with Image.open(path) as img:
        mode = img.mode
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            rgba = np.asarray(img.convert("RGBA" if mode != "LA" else "LA"))
            if (rgba[..., -1] != 255).any():
                raise DataError(f"image '{path}' has a transparent alpha channel: save it without alpha (grey or RGB).")
            return np.ascontiguousarray(rgba[..., :-1] if mode != "LA" else rgba[..., 0])
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            data = np.asarray(img)
            if data.min() < 0 or data.max() > 65535:
                raise DataError(f"image '{path}' has values outside 0..65535: save it as 16-bit grey.")
            return data.astype(np.uint16)
        if mode in ("1", "L"):
            return np.asarray(img.convert("L"), dtype=np.uint8)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _mask_values(path: Path) -> tuple[set[int], bool, tuple[int, int]]:
    """(values present, palette?, size) of a mask; DataError for colour masks and noisy JPEG masks."""
    with Image.open(path) as img:
        mode, fmt, size = img.mode, img.format, img.size
        if mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            raise DataError(
                f"mask '{path}' is {mode}: save masks as grey or palette PNG (one class id or level per pixel)."
            )
        if mode not in ("1", "L", "P", "I;16", "I;16B", "I;16L", "I"):
            raise DataError(f"mask '{path}' has PIL mode {mode!r}: save masks as grey or palette PNG.")
        data = np.asarray(img.convert("L") if mode == "1" else img)
    values = {int(v) for v in np.unique(data)}
    if fmt == "JPEG" and len(values) > 2:
        raise DataError(
            f"mask '{path}' is a JPEG with {len(values)} distinct values (JPEG compression adds noise to the edges): "
            "save masks as PNG."
        )
    if min(values) < 0:
        raise DataError(f"mask '{path}' has negative values: save masks as grey or palette PNG.")
    return values, mode == "P", size


def _label_rule(values: set[int], palette: bool, bits: int = 8) -> tuple[dict[int, int], str]:
    """One value -> class mapping for all masks of a dataset, and its name:

    - palette PNGs: the palette index is the class (``palette index``);
    - at most two grey values, not already {0, 1}: binarised, values > 127 (8-bit; > 32767 for 16-bit) foreground, or,
      when both values fall on one side of that threshold, the larger one (``binarised``);
    - grey values that are all small integers 0..K-1 (K <= 64): kept (``class ids``);
    - any other set of grey values (e.g. 0/128/255): mapped in sorted order to 0..K-1 (``sorted values``).
    """
    if palette or values <= {0, 1} or (len(values) > 2 and max(values) < 64):
        return {v: v for v in sorted(values)}, "palette index" if palette else "class ids"
    if len(values) <= 2:
        threshold = 127 if bits == 8 else 32767
        low, high = min(values), max(values)
        if len(values) == 2 and not low <= threshold < high:
            threshold = low
        return {v: int(v > threshold) for v in sorted(values)}, "binarised"
    return {v: i for i, v in enumerate(sorted(values))}, "sorted values"


class LitsReader(Reader):
    """The LiTS sample of ``scripts/prepare_data.py`` (``data/lits_liver``): one CT volume in HU. One patient cannot
    be split by subject, so its three contiguous slabs (the sample's ``datalist.json`` metadata) are the cases, each
    its own "subject" in its fixed split."""

    format = "lits"
    dims = (2, 3)
    url = "https://competitions.codalab.org/competitions/17094 (LiTS); case 117 via PyPI liver-ct-segmentation-package"
    splits = ("training", "validation", "test")

    def cases(self) -> list[CaseRef]:
        datalist = self.src / "datalist.json"
        image, label = self.src / "volume" / "image.nii.gz", self.src / "volume" / "label.nii.gz"
        for path in (datalist, image, label):
            if not path.is_file():
                raise DataError(
                    f"'{path}' not found: make the sample with 'python scripts/prepare_data.py --out data' "
                    "and pass --src data/lits_liver."
                )
        self.meta_files.append(datalist)
        try:
            self.meta = json.loads(datalist.read_text())["metadata"]
            slabs = {name: tuple(self.meta["split"][name]["slices"]) for name in self.splits}
            self.axis = int(self.meta.get("axial_axis", 2))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"'{datalist}' has no slab split metadata ({err!r}): rerun scripts/prepare_data.py."
            ) from None
        return [
            CaseRef(
                f"lits117_{name}",
                f"lits117_{name}",
                (image, label),
                partial(self._load, image, label, first, last),
                name,
            )
            for name, (first, last) in slabs.items()
        ]

    def _load(self, image_path: Path, label_path: Path, first: int, last: int) -> VolumeCase:
        from common.data.volume_split import crop_affine

        img, lab = _load_nifti(image_path), _load_nifti(label_path)
        _check_same_grid(image_path, img, label_path, lab)
        index = [slice(None)] * 3
        index[self.axis] = slice(first, last + 1)
        image = np.ascontiguousarray(img.get_fdata(dtype=np.float32)[tuple(index)])
        label = np.ascontiguousarray(_label_volume(label_path, lab, 3)[tuple(index)])
        return VolumeCase([image], label, crop_affine(img.affine, self.axis, first))

    def describe(self, cases: Sequence[CaseRef]) -> Description:
        from common.data.sample_data import LITS_DATA_LICENCE

        names = self.meta.get("class_names") or {"0": "background", "1": "liver", "2": "tumour"}
        return Description(
            name="lits_liver",
            description=(
                "LiTS case 117 (liver CT, 128^3 crop, HU): ONE patient, so the split cannot be by subject; the cases "
                "are "
                "the sample's three contiguous axial slabs (training / validation / test, one unused slice between "
                "slabs), each its own 'subject'. Figures on it measure the method on this case, not generalisation."
            ),
            modality="CT",
            channel_names=["CT"],
            labels={str(k): str(v) for k, v in names.items()},
            normalisation=self._ct_normalisation(),
            url=self.url,
            licence=LITS_DATA_LICENCE,
            split_rule="fixed",
            extra={"spacing_assumed": bool(self.meta.get("spacing_assumed", False))},
        )


FORMATS: dict[str, type[Reader]] = {
    reader.format: reader
    for reader in (HC18Reader, DriveReader, BratsReader, DecathlonReader, FolderReader, LitsReader)
}
