"""Train / validation / test regions of one 3D volume, written as cropped sub-volumes with their own datalist.

The sample data has a single CT case (``data/lits_liver/volume``), so a 3D task cannot split by patient. The regions
are the same contiguous axial slabs as the 2D slices of ``data/lits_liver/datalist.json`` (training slices 0–75,
validation 77–101, test 103–127; slices 76 and 102 are unused gaps): every split is a sub-volume cropped along the
axial axis, so no voxel of one split touches a voxel of another, and a network trained on the training slab has
never seen any part of the test slab. Patches are sampled inside the training sub-volume only. The splits are
still one patient: the figures measure the method on this case, not generalisation.

Each sub-volume keeps the source's voxel values (HU), voxel size and orientation; its affine is translated to the
slab's first slice, so world coordinates agree with the source volume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from common.data.dataset_info import DatasetInfo, write_dataset_info
from common.errors import DataError

__all__ = ["crop_affine", "write_slab_split", "write_lits_volume_split"]

SPLITS = ("training", "validation", "test")


def crop_affine(affine: np.ndarray, axis: int, first: int) -> np.ndarray:
    """The affine of a crop that starts at voxel ``first`` along ``axis`` (the origin moves, nothing else)."""
    offset = np.zeros(3)
    offset[axis] = first
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, 3] = out[:3, :3] @ offset + out[:3, 3]
    return out


def write_slab_split(
    image: str | Path,
    label: str | Path,
    out_dir: str | Path,
    slabs: Mapping[str, tuple[int, int]],
    axis: int = 2,
    metadata: Mapping | None = None,
) -> Path:
    """Crop ``image`` and ``label`` (NIfTI) to the inclusive slice ranges ``slabs[split] = (first, last)`` along
    ``axis``, write ``out_dir/<split>/image.nii.gz`` and ``label.nii.gz`` and ``out_dir/datalist.json`` (one item
    per split, paths relative to ``out_dir``). Slabs must not overlap. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    img, lab = nib.load(str(image)), nib.load(str(label))
    if img.shape != lab.shape:
        raise DataError(f"image {image} is {img.shape} but label {label} is {lab.shape}")
    ranges = sorted((int(a), int(b), name) for name, (a, b) in slabs.items())
    for (a0, b0, n0), (a1, _, n1) in zip(ranges, ranges[1:]):
        if a1 <= b0:
            raise DataError(f"slabs '{n0}' {a0}-{b0} and '{n1}' start {a1} overlap along axis {axis}")
    size = img.shape[axis]
    image_data, label_data = np.asarray(img.dataobj), np.asarray(lab.dataobj)
    datalist: dict[str, object] = {}
    for name, (first, last) in slabs.items():
        if not 0 <= first <= last < size:
            raise DataError(f"slab '{name}' {first}-{last} is outside the {size} slices along axis {axis}")
        index = [slice(None)] * 3
        index[axis] = slice(first, last + 1)
        affine = crop_affine(img.affine, axis, first)
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        for key, data, source in (("image", image_data, img), ("label", label_data, lab)):
            crop = np.ascontiguousarray(data[tuple(index)]).astype(source.get_data_dtype())
            header = source.header.copy()
            nib.save(nib.Nifti1Image(crop, affine, header), str(out_dir / name / f"{key}.nii.gz"))
        datalist[name] = [{"image": f"{name}/image.nii.gz", "label": f"{name}/label.nii.gz"}]
    datalist["metadata"] = {
        "source": {"image": str(image), "label": str(label)},
        "axis": axis,
        "slabs": {name: list(r) for name, r in slabs.items()},
        "note": "one volume cut into contiguous, non-touching slabs along the axis: one patient, not independent cases",
        **(dict(metadata) if metadata else {}),
    }
    (out_dir / "datalist.json").write_text(json.dumps(datalist, indent=2))
    return out_dir


def write_lits_volume_split(
    lits_dir: str | Path = "data/lits_liver", out_dir: str | Path = "data/lits_liver_3d"
) -> Path:
    """The 3D task of the sample data: the LiTS volume of ``lits_dir`` (prepared by ``scripts/prepare_data.py``) cut
    into the training / validation / test slabs of its 2D slices (read from its ``datalist.json`` metadata), written
    to ``out_dir``. Idempotent: an ``out_dir`` already written from the same slabs is left as it is."""
    lits_dir, out_dir = Path(lits_dir), Path(out_dir)
    source = lits_dir / "datalist.json"
    if not source.is_file():
        raise DataError(
            f"'{source}' not found: prepare the sample data first with 'python scripts/prepare_data.py --out data'."
        )
    meta = json.loads(source.read_text())
    try:
        volume = meta["volume"][0]
        split = meta["metadata"]["split"]
        axis = int(meta["metadata"]["axial_axis"])
        slabs = {name: tuple(split[name]["slices"]) for name in SPLITS}
    except (KeyError, IndexError, TypeError) as err:
        raise DataError(
            f"'{source}' has no volume entry or slab split metadata ({err!r}): rerun prepare_data.py"
        ) from None
    done = out_dir / "datalist.json"
    if done.is_file():
        previous = json.loads(done.read_text()).get("metadata", {})
        if (
            previous.get("slabs") == {k: list(v) for k, v in slabs.items()}
            and all((out_dir / s / f"{k}.nii.gz").is_file() for s in SPLITS for k in ("image", "label"))
            and (out_dir / "dataset.json").is_file()
        ):
            return out_dir
    out = write_slab_split(
        lits_dir / volume["image"],
        lits_dir / volume["label"],
        out_dir,
        slabs,
        axis=axis,
        metadata={
            "class_names": meta["metadata"].get("class_names"),
            "spacing_mm": meta["metadata"].get("spacing_mm"),
            "spacing_assumed": meta["metadata"].get("spacing_assumed"),
            "intensity": "HU, float32 (window it in the transforms)",
            "licence": meta["metadata"].get("licence"),
            "rule": "the 2D slices' slabs (data/lits_liver/datalist.json) as 3D sub-volumes; gaps unused",
        },
    )
    spacing = meta["metadata"].get("spacing_mm") or [1.0, 1.0, 1.0]
    info = DatasetInfo(
        name="lits_liver_3d",
        description="LiTS case 117 (one patient) cut into three axial slabs; not independent patients",
        modality="CT",
        dim=3,
        channel_names=["CT"],
        labels=meta["metadata"].get("class_names") or {"0": "background", "1": "liver", "2": "tumour"},
        spacing=[float(s) for s in spacing],
        normalisation={"method": "window", "range": list(meta["metadata"].get("window_hu") or [-125.0, 275.0])},
        extra={"licence": meta["metadata"].get("licence"), "spacing_assumed": meta["metadata"].get("spacing_assumed")},
    )
    write_dataset_info(out, info)
    return out
