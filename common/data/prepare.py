"""Write a prepared dataset folder (``datalist.json``, ``dataset.json``, ``manifest.json``, ``overlay.png``) from a
source read by :mod:`common.data.formats`; the engine of ``scripts/prepare_dataset.py``.

Why a writer separate from the readers: the rules every format must follow live in one place.

- **Split by subject.** The sorted subject ids are shuffled with ``numpy.random.default_rng(seed)`` and cut into
  consecutive runs by the fractions (largest remainders; every split with a nonzero fraction gets at least one
  subject), or dealt round-robin into ``--folds K``. Publisher-fixed splits (DRIVE's test images, the LiTS sample's
  slabs) are kept. No subject is ever in two lists: checked before ``datalist.json`` is written.
- **2D slices of volumes** (``--dim 2``): the axial axis is the one whose axis code (``nibabel.aff2axcodes``) is S
  or I. Every slice with foreground is kept, plus background slices (body present, no foreground) numbering
  ``background_share`` x the foreground slices of that volume, evenly spaced with a seeded offset; slices without
  body are dropped. Each slice keeps its in-plane spacing and its world position in its affine.
- **Nothing half-written.** Everything goes to ``OUT.partial-<pid>``, renamed into place at the end; an older OUT is
  replaced only then. On any error the partial folder is removed and the old OUT is untouched.
- **Idempotent.** ``manifest.json`` records the arguments, a fingerprint of the source files (names, sizes, mtimes)
  and the size and sha256 of every written file; a rerun whose manifest still verifies does nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from tqdm import tqdm

from common.data.dataset_info import DatasetInfo, write_dataset_info
from common.data.formats import FORMATS, CaseRef, Description, ImageCase, Reader, VolumeCase, voxel_spacing
from common.data.volume_split import crop_affine
from common.errors import DataError
from common.reporting import overlay, overlay_grid

__all__ = [
    "FORMAT_VERSION",
    "SPLIT_NAMES",
    "PrepareOptions",
    "split_counts",
    "split_subjects",
    "fold_subjects",
    "select_slices",
    "slice_affine",
    "prepare_dataset",
    "format_summary",
]

FORMAT_VERSION = 1  # bump when the written layout changes: existing manifests then no longer match
SPLIT_NAMES = ("training", "validation", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
MANIFEST = "manifest.json"
OVERLAY = "overlay.png"
TOOL = "scripts/prepare_dataset.py"


@dataclass
class PrepareOptions:
    """The command line of ``scripts/prepare_dataset.py`` (see its ``--help``)."""

    format: str
    src: Path
    out: Path
    dim: int = 2
    seed: int = 0
    split: tuple[float, float, float] | None = None
    folds: int | None = None
    window: tuple[float, float] | None = None
    background_share: float = 0.2
    subject_regex: str | None = None
    max_subjects: int | None = None
    force: bool = False

    def __post_init__(self) -> None:
        self.src, self.out = Path(self.src).expanduser().resolve(), Path(self.out).expanduser().resolve()
        if self.format not in FORMATS:
            raise DataError(f"unknown format {self.format!r}: choose one of {sorted(FORMATS)}.")
        if self.split is not None and self.folds is not None:
            raise DataError("--split and --folds exclude each other: give one.")
        if self.split is not None:
            if len(self.split) != 3 or min(self.split) < 0 or self.split[0] <= 0:
                raise DataError(f"--split must be three fractions a,b,c >= 0 with a > 0, got {self.split}.")
            self.split = tuple(float(f) for f in self.split)  # type: ignore[assignment]
        if self.folds is not None and self.folds < 2:
            raise DataError(f"--folds must be at least 2, got {self.folds}.")
        if not 0 <= self.background_share <= 10:
            raise DataError(f"--background-share must be in [0, 10], got {self.background_share}.")
        if self.max_subjects is not None and self.max_subjects < 1:
            raise DataError(f"--max-subjects must be at least 1, got {self.max_subjects}.")
        if self.subject_regex is not None:
            try:
                groups = re.compile(self.subject_regex).groups
            except re.error as err:
                raise DataError(f"--subject-regex {self.subject_regex!r} is not a valid regex: {err}.") from None
            if groups < 1:
                raise DataError(f"--subject-regex {self.subject_regex!r} needs a group: group 1 is the subject.")
        if self.out == self.src or self.src in self.out.parents or self.out in self.src.parents:
            raise DataError(f"--out '{self.out}' must lie outside --src '{self.src}' (and not contain it).")

    def arguments(self) -> dict[str, Any]:
        """The arguments that decide the output (for the manifest): everything but ``out`` and ``force``."""
        args = asdict(self)
        for key in ("out", "force"):
            args.pop(key)
        args["src"] = str(self.src)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


# ----------------------------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------------------------


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of ``n`` subjects each split gets: ``n * fraction`` rounded by largest remainder (ties to the earlier
    split), then every split with a nonzero fraction raised to at least 1 (taken from the largest)."""
    f = np.asarray(fractions, float)
    f = f / f.sum()
    if int((f > 0).sum()) > n:
        raise DataError(
            f"{n} subject(s) cannot fill {int((f > 0).sum())} splits: use more subjects (--max-subjects), set a "
            "fraction of --split to 0, or use fewer --folds."
        )
    wanted = np.round(n * f, 9)
    counts = np.floor(wanted).astype(int)
    remainders = wanted - counts
    for i in sorted(range(len(f)), key=lambda i: (-remainders[i], i))[: n - int(counts.sum())]:
        counts[i] += 1
    for i in np.flatnonzero((f > 0) & (counts == 0)):
        counts[int(np.argmax(counts))] -= 1
        counts[i] += 1
    return [int(c) for c in counts]


def _shuffled(subjects: Iterable[str], seed: int) -> list[str]:
    order = sorted(subjects)
    return [order[i] for i in np.random.default_rng(seed).permutation(len(order))]


def split_subjects(
    subjects: Iterable[str], fractions: Sequence[float], seed: int, names: Sequence[str] = SPLIT_NAMES
) -> dict[str, list[str]]:
    """Shuffle the sorted subjects with ``default_rng(seed)`` and cut consecutive runs sized by :func:`split_counts`."""
    order = _shuffled(subjects, seed)
    out, start = {}, 0
    for name, count in zip(names, split_counts(len(order), fractions)):
        out[name] = sorted(order[start : start + count])
        start += count
    return out


def fold_subjects(subjects: Iterable[str], folds: int, seed: int) -> dict[str, list[str]]:
    """Deal the shuffled subjects round-robin into ``fold_0`` .. ``fold_{K-1}``."""
    order = _shuffled(subjects, seed)
    if len(order) < folds:
        raise DataError(f"{len(order)} subject(s) cannot fill {folds} folds: use fewer --folds or more subjects.")
    return {f"fold_{k}": sorted(order[k::folds]) for k in range(folds)}


def _assign(
    cases: Sequence[CaseRef], opts: PrepareOptions, rule: str
) -> tuple[dict[str, list[str]], dict[str, Any], list[str]]:
    """Subjects per split, the split record for ``dataset.json`` (rule, seed, fractions or folds), and the splits
    that must not end up empty (all but those given a fraction of 0)."""
    groups: dict[str, str | None] = {}
    for case in cases:
        if groups.setdefault(case.subject, case.group) != case.group:
            raise DataError(
                f"subject '{case.subject}' has cases in the publisher's splits {groups[case.subject]} and "
                f"{case.group}: a subject must stay in one split."
            )
    subjects = sorted(groups)
    fractions = opts.split or DEFAULT_FRACTIONS
    if rule == "fixed":
        if opts.split is not None or opts.folds is not None:
            raise DataError(f"{opts.format}: the split is fixed by the source (its slabs): drop --split / --folds.")
        splits = {name: sorted(s for s in subjects if groups[s] == name) for name in SPLIT_NAMES}
        record: dict[str, Any] = {"rule": "fixed by the source"}
    elif opts.folds is not None:
        splits = fold_subjects(subjects, opts.folds, opts.seed)
        record = {"rule": "folds: shuffled subjects dealt round-robin", "folds": opts.folds, "seed": opts.seed}
    elif rule == "official" and opts.split is None:
        test = sorted(s for s in subjects if groups[s] == "test")
        pool = [s for s in subjects if groups[s] != "test"]
        splits = {**split_subjects(pool, (fractions[0], fractions[1], 0.0), opts.seed), "test": test}
        record = {
            "rule": "official: the publisher's test images are 'test'; its training images are split into training "
            "/ validation by the validation share b / (a + b) of the fractions (at least 1)",
            "fractions": list(fractions),
            "seed": opts.seed,
        }
    else:
        splits = split_subjects(subjects, fractions, opts.seed)
        record = {
            "rule": "random by subject: shuffled subjects cut by the fractions",
            "fractions": list(fractions),
            "seed": opts.seed,
        }
    zero = {n for n, f in zip(SPLIT_NAMES, fractions) if f == 0} if rule != "fixed" and opts.folds is None else set()
    required = [name for name in splits if name not in zero]
    for name in required:
        if not splits[name]:
            raise DataError(
                f"split '{name}' got no subject ({len(subjects)} in all): use more subjects (--max-subjects)."
            )
    return splits, record, required


# ----------------------------------------------------------------------------------------------------------------
# slices
# ----------------------------------------------------------------------------------------------------------------


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis whose axis code is S or I (the axial axis of a volume)."""
    codes = nib.aff2axcodes(affine)
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            return axis
    raise DataError(f"no voxel axis runs inferior-superior (axis codes {codes}): cannot find the axial slices.")


def select_slices(
    label: np.ndarray, body: np.ndarray | None, axis: int, share: float, rng: np.random.Generator
) -> tuple[list[int], int]:
    """Slice indices along ``axis`` to keep, and how many of them are background: every slice with foreground, plus
    ``round(share x foreground slices)`` slices with body and no foreground, evenly spaced with a random offset."""
    others = tuple(a for a in range(label.ndim) if a != axis)
    foreground = (label > 0).any(axis=others)
    present = body.any(axis=others) if body is not None else np.ones_like(foreground)
    candidates = np.flatnonzero(present & ~foreground)
    wanted = min(len(candidates), int(np.floor(share * int(foreground.sum()) + 0.5)))
    picked: list[int] = []
    if wanted:
        step = len(candidates) / wanted
        picked = [int(candidates[int((i + rng.uniform()) * step)]) for i in range(wanted)]
    return sorted(set(np.flatnonzero(foreground).tolist()) | set(picked)), len(picked)


def slice_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The affine of slice ``index`` along ``axis`` as a 2D image: the two in-plane axes first (in their order), the
    sliced axis third, the origin moved to the slice (world positions are kept)."""
    moved = crop_affine(affine, axis, index)
    order = [a for a in range(3) if a != axis] + [axis]
    out = moved.copy()
    out[:3, :3] = moved[:3, order]
    return out


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Folder:
    """The partial output folder: writes files and records their size and sha256 for the manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, dict[str, Any]] = {}

    def _record(self, rel: str, path: Path, data: bytes | None = None) -> str:
        digest = hashlib.sha256(data).hexdigest() if data is not None else _sha256(path)
        self.files[rel] = {"size": path.stat().st_size, "sha256": digest}
        return rel

    def png(self, rel: str, array: np.ndarray) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", optimize=False)
        data = buffer.getvalue()
        path.write_bytes(data)
        return self._record(rel, path, data)

    def nifti(self, rel: str, array: np.ndarray, affine: np.ndarray) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(np.ascontiguousarray(array), affine)
        img.header.set_xyzt_units("mm")
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
        nib.save(img, str(path))
        return self._record(rel, path)

    def json(self, rel: str, obj: Any) -> str:
        path = self.root / rel
        path.write_text(json.dumps(obj, indent=2) + "\n")
        return self._record(rel, path)


def _channel_suffixes(names: Sequence[str]) -> list[str]:
    """File-name suffixes of the channels (``flair``, ``t1c``; indices when names repeat or are empty)."""
    out = [re.sub(r"[^a-z0-9]+", "", n.lower()) for n in names]
    if len(set(out)) != len(out) or not all(out):
        out = [f"{i:04d}" for i in range(len(names))]
    return out


class _Stats:
    """What the summary and ``dataset.json`` report beyond the items: voxels per class, background slices,
    volumes without foreground, per-case spacing."""

    def __init__(self, num_classes: int) -> None:
        self.class_counts = np.zeros(num_classes, np.int64)
        self.background_slices = 0
        self.empty_volumes: list[str] = []
        self.spacings: dict[str, list[float]] = {}

    def add_label(self, label: np.ndarray, case: CaseRef) -> None:
        counts = np.bincount(label.ravel(), minlength=len(self.class_counts))
        if counts.size > self.class_counts.size:
            raise DataError(
                f"case '{case.case_id}' ({case.sources[-1]}) has label values beyond the dataset's labels "
                f"0..{len(self.class_counts) - 1}."
            )
        self.class_counts += counts


def _write_image_case(out: _Folder, case: CaseRef, loaded: ImageCase, stats: _Stats) -> list[dict[str, Any]]:
    """A 2D picture as PNG image, label and ROI; its one datalist item."""
    item: dict[str, Any] = {
        "image": out.png(f"images/{case.case_id}.png", loaded.image),
        "label": out.png(f"labels/{case.case_id}.png", loaded.label.astype(np.uint8)),
    }
    if loaded.roi is not None:
        item["roi"] = out.png(f"roi/{case.case_id}.png", loaded.roi.astype(np.uint8))
    item["subject"] = case.subject
    stats.add_label(loaded.label, case)
    return [item]


def _write_volume_case(
    out: _Folder, case: CaseRef, loaded: VolumeCase, suffixes: list[str], opts: PrepareOptions, stats: _Stats
) -> list[dict[str, Any]]:
    """A volume as NIfTI: one file per channel plus the label (``--dim 3``), or its selected axial slices
    (``--dim 2``); its datalist items."""
    cid = case.case_id
    spacing = voxel_spacing(loaded.affine)
    stats.spacings[cid] = spacing

    def names(stem: str) -> list[str] | str:
        files = [f"images/{stem}_{s}.nii.gz" for s in suffixes] if len(suffixes) > 1 else [f"images/{stem}.nii.gz"]
        return files if len(files) > 1 else files[0]

    if opts.dim == 3:
        files = names(cid)
        for rel, channel in zip([files] if isinstance(files, str) else files, loaded.channels):
            out.nifti(rel, channel.astype(np.float32), loaded.affine)
        label = out.nifti(f"labels/{cid}.nii.gz", loaded.label.astype(np.uint8), loaded.affine)
        stats.add_label(loaded.label, case)
        return [{"image": files, "label": label, "subject": case.subject}]

    axis = axial_axis(loaded.affine)
    rng = np.random.default_rng([opts.seed, zlib.crc32(cid.encode())])
    keep, background = select_slices(loaded.label, loaded.body, axis, opts.background_share, rng)
    stats.background_slices += background
    if not (loaded.label > 0).any():
        stats.empty_volumes.append(cid)
    stats.spacings[cid] = [spacing[a] for a in range(3) if a != axis]
    width = max(3, len(str(loaded.label.shape[axis] - 1)))
    items = []
    for k in keep:
        index: list[Any] = [slice(None)] * 3
        index[axis] = k
        affine = slice_affine(loaded.affine, axis, k)
        stem = f"{cid}/z{k:0{width}d}"
        files = names(stem)
        for rel, channel in zip([files] if isinstance(files, str) else files, loaded.channels):
            out.nifti(rel, np.ascontiguousarray(channel[tuple(index)], np.float32), affine)
        label = np.ascontiguousarray(loaded.label[tuple(index)], np.uint8)
        rel_label = out.nifti(f"labels/{stem}.nii.gz", label, affine)
        stats.add_label(label, case)
        items.append({"image": files, "label": rel_label, "subject": case.subject, "volume": cid, "slice": int(k)})
    return items


# ----------------------------------------------------------------------------------------------------------------
# overlay figure
# ----------------------------------------------------------------------------------------------------------------


def _read_2d(path: Path) -> tuple[np.ndarray, tuple[str, ...] | None, np.ndarray | None]:
    """A stored image or label (PNG, or NIfTI 2D / 3D) as an array, its axis codes and affine (NIfTI only)."""
    if path.suffix == ".png":
        with Image.open(path) as img:
            return np.asarray(img.convert("L") if img.mode == "RGB" else img), None, None
    img = nib.load(str(path))
    return np.asarray(img.dataobj), nib.aff2axcodes(img.affine), img.affine


def _display(array: np.ndarray, codes: Sequence[str]) -> np.ndarray:
    """An axial slice in the radiological view: anterior up, the patient's right on the image's left."""
    row, col = codes[0], codes[1]
    if row is None or col is None:  # an affine without clear directions: shown as stored
        return np.ascontiguousarray(array)
    if row in "RL" and col in "AP":
        array, (row, col) = array.T, (col, row)
    if row == "A":
        array = array[::-1]
    if col == "R":
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


def _tile(root: Path, item: Mapping[str, Any], clip: Sequence[float] | None = None, size: int = 240) -> np.ndarray:
    """The overlay tile of one item: channel 0 (RGB: its luminance), clipped to ``clip`` (the CT window, the z-score
    range), with the label in colour and the ROI outline in yellow; a volume shows its axial slice with the most
    foreground; resized to ``size`` px on its longer side."""
    image_rel = item["image"][0] if isinstance(item["image"], list) else item["image"]
    image, codes, affine = _read_2d(root / image_rel)
    label, _, _ = _read_2d(root / item["label"])
    roi = _read_2d(root / item["roi"])[0] if "roi" in item else None
    if image.ndim == 3 and affine is not None:
        axis = axial_axis(affine)
        k = int(np.argmax((label > 0).sum(axis=tuple(a for a in range(3) if a != axis))))
        image, label = np.take(image, k, axis=axis), np.take(label, k, axis=axis)
        codes = tuple(c for a, c in enumerate(codes) if a != axis)  # type: ignore[arg-type]
    if codes is not None:
        image, label = _display(image, codes), _display(label, codes)
    image = image.astype(np.float32)
    tile = overlay(np.clip(image, *clip) if clip is not None else image, label)
    if roi is not None:
        edge = (roi > 0) & ~ndi.binary_erosion(roi > 0, iterations=2)
        tile[edge] = (255, 220, 0)
    picture = Image.fromarray(tile)
    scale = size / max(picture.size)
    if scale != 1:
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.BILINEAR
        )
    return np.asarray(picture)


def _overlay_figure(
    root: Path, lists: Mapping[str, list[dict[str, Any]]], clip: Sequence[float] | None, per_split: int = 2
) -> Image.Image:
    """Up to ``per_split`` items of every split (at a third and two thirds of its list), one row per split."""
    rows = []
    for name, items in lists.items():
        if not items:
            continue
        picks = sorted({min(len(items) - 1, (i + 1) * len(items) // (per_split + 1)) for i in range(per_split)})
        tiles = []
        for i in picks:
            item = items[i]
            label_stem = Path(item["label"]).name.split(".")[0]
            caption = f"{item['subject']} z{item['slice']}" if "slice" in item else label_stem
            tiles.append((caption, _tile(root, item, clip)))
        rows.append((name, tiles))
    return overlay_grid(rows, scale=1)


# ----------------------------------------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------------------------------------


def _fingerprint(src: Path, paths: Iterable[Path]) -> dict[str, Any]:
    """sha256 over the sorted (path relative to src, size, mtime) of the source files: a changed source rebuilds."""
    digest, count = hashlib.sha256(), 0
    for path in sorted(set(paths)):
        stat = path.stat()
        rel = path.relative_to(src).as_posix() if src in path.parents else str(path)
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        count += 1
    return {"files": count, "sha256": digest.hexdigest()}


def _up_to_date(out: Path, arguments: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest of ``out`` when it was written by the same version from the same arguments and source, and every
    file it lists still has its size and sha256; else None."""
    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if (
            manifest.get("tool") != TOOL
            or manifest.get("format_version") != FORMAT_VERSION
            or manifest.get("arguments") != dict(arguments)
            or manifest.get("source_fingerprint") != dict(fingerprint)
        ):
            return None
        for rel, record in manifest["files"].items():
            file = out / rel
            if not file.is_file() or file.stat().st_size != record["size"] or _sha256(file) != record["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def _is_ours(out: Path) -> bool:
    """True when ``out`` is absent, empty, or was written by this tool (so replacing it loses nothing of the user's)."""
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    try:
        return json.loads((out / MANIFEST).read_text()).get("tool") == TOOL
    except (OSError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------------------------------
# the whole run
# ----------------------------------------------------------------------------------------------------------------


def _select(cases: list[CaseRef], opts: PrepareOptions) -> list[CaseRef]:
    """Apply ``--subject-regex`` (group 1 of a search in the case id) and ``--max-subjects`` (that many subjects,
    evenly spaced over the sorted ids)."""
    if opts.subject_regex:
        pattern = re.compile(opts.subject_regex)
        renamed = []
        for case in cases:
            match = pattern.search(case.case_id)
            if match is None or not match.group(1):
                raise DataError(
                    f"--subject-regex {opts.subject_regex!r} does not parse case '{case.case_id}' ({case.sources[0]}): "
                    "fix the regex (group 1 is the subject) or rename the file."
                )
            renamed.append(CaseRef(case.case_id, match.group(1), case.sources, case.load, case.group))
        cases = renamed
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"two source files map to the case id '{dup}': rename one of them.")
    if opts.max_subjects is not None:
        subjects = sorted({c.subject for c in cases})
        if opts.max_subjects < len(subjects):
            picks = np.unique(np.round(np.linspace(0, len(subjects) - 1, opts.max_subjects)).astype(int))
            keep = {subjects[i] for i in picks}
            cases = [c for c in cases if c.subject in keep]
    return cases


def _dataset_info(
    desc: Description, opts: PrepareOptions, reader: Reader, stats: _Stats, split: dict[str, Any]
) -> DatasetInfo:
    """``dataset.json``: the reader's description, the split record, the reader's notes, and the spacing and slice
    facts gathered while writing."""
    extra: dict[str, Any] = {
        "source": {"format": opts.format, "src": str(opts.src), "url": desc.url, "licence": desc.licence},
        "licence": desc.licence,
        "split": split,
        **desc.extra,
        **reader.notes,
    }
    spacing = desc.spacing
    if stats.spacings:
        distinct = sorted({tuple(s) for s in stats.spacings.values()})
        spacing = [float(v) for v in np.median(np.asarray(list(stats.spacings.values())), axis=0)]
        if len(distinct) > 1:
            extra["spacings"] = [list(s) for s in distinct]
            extra["spacing_note"] = (
                "mixed spacings across cases: 'spacing' is their median per axis; each case's own "
                "is in datalist.json metadata.spacings and in its NIfTI header"
            )
    if opts.dim == 2 and stats.spacings:
        extra["slices"] = {
            "axis": "axial (the voxel axis whose nibabel axis code is S or I)",
            "rule": "every slice with foreground, plus background slices (body present, no foreground) numbering "
            "background_share x the foreground slices of the volume, evenly spaced with a seeded offset; slices "
            "without body dropped",
            "background_share": opts.background_share,
            "background_slices": stats.background_slices,
        }
        if stats.empty_volumes:
            extra["slices"]["volumes_without_foreground"] = stats.empty_volumes
    if stats.spacings and opts.dim == 3:
        extra["affine"] = "each volume keeps its source affine (no reorientation, no resampling)"
    return DatasetInfo(
        name=desc.name,
        dim=opts.dim,
        channel_names=list(desc.channel_names),
        labels=dict(desc.labels),
        normalisation=dict(desc.normalisation),
        modality=desc.modality,
        description=desc.description,
        spacing=spacing,
        extra=extra,
    )


def _build(
    tmp: Path,
    reader: Reader,
    desc: Description,
    cases: list[CaseRef],
    splits: dict[str, list[str]],
    split_record: dict[str, Any],
    required: Sequence[str],
    opts: PrepareOptions,
) -> tuple[_Folder, dict[str, Any]]:
    """Write everything into ``tmp``; returns the folder record and the summary."""
    out = _Folder(tmp)
    stats = _Stats(len(desc.labels))
    split_of = {s: name for name, subjects in splits.items() for s in subjects}
    lists: dict[str, list[dict[str, Any]]] = {name: [] for name in splits}
    suffixes = _channel_suffixes(desc.channel_names)
    skipped = []
    for case in tqdm(cases, desc=f"{opts.format} -> {opts.out.name}", unit="case", mininterval=0.5):
        loaded = case.load()
        if loaded is None:
            skipped.append(case.case_id)
            continue
        if isinstance(loaded, ImageCase):
            items = _write_image_case(out, case, loaded, stats)
        else:
            items = _write_volume_case(out, case, loaded, suffixes, opts, stats)
        lists[split_of[case.subject]].extend(items)

    owners: dict[str, str] = {}
    for name, items in lists.items():
        for item in items:
            if owners.setdefault(item["subject"], name) != name:
                raise RuntimeError(f"subject {item['subject']} is in both {owners[item['subject']]} and {name}")
    counts = {
        name: {"subjects": len({i["subject"] for i in items}), "items": len(items)} for name, items in lists.items()
    }
    for name, items in lists.items():
        if not items and name in required:
            raise DataError(
                f"split '{name}' holds no item after loading (its subjects' cases were all skipped or empty): use more "
                "subjects or another split."
            )
    split_record = {**split_record, "counts": counts}
    info = _dataset_info(desc, opts, reader, stats, split_record)
    write_dataset_info(tmp, info)
    out._record("dataset.json", tmp / "dataset.json")
    metadata: dict[str, Any] = {"format": opts.format, "dim": opts.dim, "split": split_record}
    if stats.spacings:
        metadata["spacings"] = stats.spacings
    if skipped:
        metadata["skipped_cases"] = skipped
    out.json("datalist.json", {**lists, "metadata": metadata})
    clip = info.normalisation["range"] if info.normalisation["method"] != "range" else None
    figure = _overlay_figure(tmp, lists, clip)
    figure.save(tmp / OVERLAY)
    out._record(OVERLAY, tmp / OVERLAY)
    summary = {
        "name": info.name,
        "format": opts.format,
        "dim": opts.dim,
        "splits": counts,
        "classes": {str(v): {"name": info.labels[str(v)], "count": int(c)} for v, c in enumerate(stats.class_counts)},
        "channels": info.channel_names,
        "normalisation": info.normalisation,
        "spacing": info.spacing,
        "skipped_cases": skipped,
        "notes": reader.notes,
        "size_bytes": sum(f["size"] for f in out.files.values()),
        "files": len(out.files),
    }
    return out, summary


def prepare_dataset(opts: PrepareOptions) -> dict[str, Any]:
    """Convert ``opts.src`` (in the layout of ``opts.format``) into the dataset folder ``opts.out``; returns the
    summary (``up_to_date`` True when an existing output verified and nothing was done)."""
    started = time.perf_counter()
    reader = FORMATS[opts.format](opts.src, dim=opts.dim, window=opts.window)
    cases = _select(reader.cases(), opts)
    arguments = opts.arguments()
    fingerprint = _fingerprint(opts.src, [p for c in cases for p in c.sources] + reader.meta_files)
    if not opts.force:
        manifest = _up_to_date(opts.out, arguments, fingerprint)
        if manifest is not None:
            return {
                **manifest["summary"],
                "out": str(opts.out),
                "up_to_date": True,
                "seconds": time.perf_counter() - started,
            }
    if not _is_ours(opts.out):
        raise DataError(
            f"--out '{opts.out}' exists and was not written by prepare_dataset (no manifest.json of it): choose "
            "another "
            "--out or remove that folder yourself."
        )
    desc = reader.describe(cases)
    splits, split_record, required = _assign(cases, opts, desc.split_rule)

    tmp = opts.out.with_name(f"{opts.out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        folder, summary = _build(tmp, reader, desc, cases, splits, split_record, required, opts)
        manifest = {
            "tool": TOOL,
            "format_version": FORMAT_VERSION,
            "arguments": arguments,
            "source_fingerprint": fingerprint,
            "files": dict(sorted(folder.files.items())),
            "summary": summary,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = opts.out.with_name(f"{opts.out.name}.old-{os.getpid()}")
        if opts.out.exists():
            opts.out.rename(old)
        try:
            tmp.rename(opts.out)
        except BaseException:
            if old.exists():
                old.rename(opts.out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "out": str(opts.out), "up_to_date": False, "seconds": time.perf_counter() - started}


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The printed report of :func:`prepare_dataset`: subjects and items per split, classes with their pixel / voxel
    counts, channels, normalisation, notes and output size."""
    out = summary["out"]
    if summary.get("up_to_date"):
        head = f"{out}: up to date ({summary['files']} files verified against {MANIFEST}; --force rebuilds)"
    else:
        head = f"{out}: wrote {summary['files']} files in {summary['seconds']:.1f} s"
    unit = "voxels" if summary["dim"] == 3 else "pixels"
    lines = [head, f"dataset {summary['name']} ({summary['format']}, {summary['dim']}D)", "splits:"]
    for name, c in summary["splits"].items():
        lines.append(f"  {name:<11} {c['subjects']:>5} subjects  {c['items']:>6} items")
    lines.append(f"classes ({unit}):")
    for value, c in summary["classes"].items():
        lines.append(f"  {value}: {c['name']:<22} {c['count']:>14,}")
    norm = summary["normalisation"]
    spacing = summary["spacing"] if summary["spacing"] is not None else "unknown (pixels)"
    lines.append(
        f"channels: {', '.join(summary['channels'])}; normalisation: {norm['method']} {norm['range']}; "
        f"spacing: {spacing}"
    )
    notes = summary.get("notes") or {}
    if notes.get("outlines_closed"):
        lines.append(
            f"outlines closed morphologically: {len(notes['outlines_closed'])} ({', '.join(notes['outlines_closed'])})"
        )
    for entry in notes.get("outlines_skipped", []):
        lines.append(f"skipped {entry['image']}: {entry['reason']}")
    lines.append(f"size: {_size(summary['size_bytes'])}; figure: {Path(out) / OVERLAY}")
    return "\n".join(lines)
