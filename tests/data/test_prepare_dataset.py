"""scripts/prepare_dataset.py: every format on tiny synthetic sources written here, bad inputs, the atomic and
idempotent writer, and small subsets of the real HC18, DRIVE and BraTS data (skipped when ../shared/datasets is
absent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.data.dataset_info import load_dataset_info
from common.data.formats import fill_outline
from common.data.prepare import (
    PrepareOptions,
    fold_subjects,
    prepare_dataset,
    select_slices,
    slice_affine,
    split_counts,
    split_subjects,
)
from common.errors import DataError

LPS = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 31], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def run(fmt: str, src: Path, out: Path, **kwargs) -> dict:
    return prepare_dataset(PrepareOptions(format=fmt, src=src, out=out, **kwargs))


def read_items(out: Path) -> dict[str, list[dict]]:
    data = json.loads((out / "datalist.json").read_text())
    return {k: v for k, v in data.items() if k != "metadata"}


def check_output(out: Path, channels: int, num_classes: int) -> dict[str, list[dict]]:
    """The invariants of every output: subject-disjoint lists, files present, dataset.json loadable with the
    expected channels and classes, label values within them, manifest listing every file, the overlay written."""
    lists = read_items(out)
    owner: dict[str, str] = {}
    for name, items in lists.items():
        for item in items:
            assert owner.setdefault(item["subject"], name) == name, f"subject {item['subject']} in two splits"
            files = item["image"] if isinstance(item["image"], list) else [item["image"]]
            assert len(files) == (channels if channels > 1 and files[0].endswith(".nii.gz") else 1)
            for rel in files + [item["label"]] + ([item["roi"]] if "roi" in item else []):
                assert (out / rel).is_file(), rel
    info = load_dataset_info(out)
    assert info.in_channels == channels and info.num_classes == num_classes
    manifest = json.loads((out / "manifest.json").read_text())
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == written
    assert (out / "overlay.png").is_file()
    assert not list(out.parent.glob(f"{out.name}.partial-*"))
    return lists


def label_values(out: Path, lists: dict[str, list[dict]]) -> set[int]:
    values: set[int] = set()
    for items in lists.values():
        for item in items:
            path = out / item["label"]
            data = np.asarray(Image.open(path)) if path.suffix == ".png" else np.asarray(nib.load(str(path)).dataobj)
            values |= {int(v) for v in np.unique(data)}
    return values


def subjects_of(lists: dict[str, list[dict]]) -> dict[str, set[str]]:
    return {name: {i["subject"] for i in items} for name, items in lists.items()}


# ----------------------------------------------------------------------------------------------------------------
# pure helpers
# ----------------------------------------------------------------------------------------------------------------


def test_split_counts_round_by_largest_remainder_and_fill_every_split():
    assert split_counts(728, (0.7, 0.1, 0.2)) == [510, 73, 145]
    assert split_counts(3, (0.7, 0.1, 0.2)) == [1, 1, 1]
    assert split_counts(4, (0.5, 0.0, 0.5)) == [2, 0, 2]
    with pytest.raises(DataError, match="cannot fill 3 splits"):
        split_counts(2, (0.7, 0.1, 0.2))


def test_split_and_folds_partition_the_subjects_reproducibly():
    subjects = [f"s{i:02d}" for i in range(17)]
    split = split_subjects(subjects, (0.7, 0.1, 0.2), seed=3)
    assert sorted(sum(split.values(), [])) == subjects and split == split_subjects(subjects[::-1], (0.7, 0.1, 0.2), 3)
    assert split != split_subjects(subjects, (0.7, 0.1, 0.2), seed=4)
    folds = fold_subjects(subjects, 4, seed=0)
    assert sorted(sum(folds.values(), [])) == subjects and sorted(len(f) for f in folds.values()) == [4, 4, 4, 5]


def test_fill_outline_gives_the_ellipse_area():
    yy, xx = np.mgrid[:64, :80]
    a, b = 30.0, 18.0  # semi-axes (px)
    disc = ((xx - 40) / a) ** 2 + ((yy - 32) / b) ** 2 <= 1
    outline = disc & ~np.pad(disc[1:-1, 1:-1] & disc[:-2, 1:-1] & disc[2:, 1:-1] & disc[1:-1, :-2] & disc[1:-1, 2:], 1)
    filled, how = fill_outline(outline)
    assert how == "filled" and filled.sum() == disc.sum()
    assert abs(filled.sum() - math.pi * a * b) / (math.pi * a * b) < 0.02  # 1696 px
    broken = outline.copy()
    broken[30:35, :20] = False  # a 5-row gap on the left side of the outline
    filled, how = fill_outline(broken)
    assert how == "closed" and abs(filled.sum() - disc.sum()) / disc.sum() < 0.03
    line = np.zeros_like(outline)
    line[10, 5:70] = True
    assert fill_outline(line) == (None, "open")


def test_slices_keep_foreground_a_background_share_and_their_world_position():
    label = np.zeros((6, 6, 30), np.uint8)
    label[2:4, 2:4, 10:20] = 1
    body = np.ones_like(label, bool)
    body[..., :3] = False  # three slices without body: never kept
    keep, background = select_slices(label, body, 2, 0.2, np.random.default_rng(0))
    assert set(range(10, 20)) <= set(keep) and background == 2 and len(keep) == 12
    assert all(k >= 3 for k in keep)
    affine = np.array([[0.0, 0, 2.5, -7], [-0.8, 0, 0, 4], [0, 1.2, 0, 9], [0, 0, 0, 1]])
    for axis in range(3):
        flat = slice_affine(affine, axis, 5)
        voxel = [1, 2]
        voxel.insert(axis, 5)
        in_plane = [v for a, v in enumerate(voxel) if a != axis]
        assert np.allclose(flat @ [*in_plane, 0, 1], affine @ [*voxel, 1])


# ----------------------------------------------------------------------------------------------------------------
# synthetic sources
# ----------------------------------------------------------------------------------------------------------------


def ellipse_outline(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = ((xx - centre[1]) / axes[1]) ** 2 + ((yy - centre[0]) / axes[0]) ** 2 <= 1
    inner = np.pad(disc[1:-1, 1:-1] & disc[:-2, 1:-1] & disc[2:, 1:-1] & disc[1:-1, :-2] & disc[1:-1, 2:], 1)
    return disc & ~inner


def make_hc18(root: Path, subjects: int = 10) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s in range(subjects):
        for frame in ("", "2") if s % 3 == 0 else ("",):
            stem = f"{s:03d}_{frame}HC"
            Image.fromarray(rng.integers(0, 255, (32, 40), dtype=np.uint8)).save(root / f"{stem}.png")
            outline = ellipse_outline((32, 40), (16, 20), (8 + s % 3, 12))
            if s == 4:
                outline[14:19, :12] = False  # a gap: closed morphologically
            if s == 5 and frame == "":
                outline = np.zeros_like(outline)
                outline[5, 3:30] = True  # not an outline: skipped
            Image.fromarray(outline.astype(np.uint8) * 255).save(root / f"{stem}_Annotation.png")
    return root


def test_hc18_fills_outlines_splits_by_subject_and_reports_closing(tmp_path):
    src = make_hc18(tmp_path / "hc18")
    out = tmp_path / "out"
    summary = run("hc18", src, out)
    lists = check_output(out, channels=1, num_classes=2)
    assert label_values(out, lists) == {0, 1}
    assert sum(len(v) for v in lists.values()) == 13  # 14 images, one skipped
    owners = {i["image"]: name for name, items in lists.items() for i in items}
    assert owners["images/000_HC.png"] == owners["images/000_2HC.png"]  # frames of one subject stay together
    info = load_dataset_info(out)
    assert info.spacing is None and info.normalisation == {"method": "range", "range": [0.0, 255.0]}
    assert info.extra["outlines_closed"] == ["004_HC.png"]
    assert [s["image"] for s in info.extra["outlines_skipped"]] == ["005_HC.png"]
    assert summary["splits"]["training"]["subjects"] + summary["splits"]["test"]["subjects"] > 0
    image = Image.open(out / "images/000_HC.png")
    assert image.mode == "L" and not (out / "images/000_HC.png").is_symlink()


def make_drive(root: Path, train: int = 5, test: int = 3) -> Path:
    rng = np.random.default_rng(1)
    numbers = {"test": range(1, test + 1), "training": range(21, 21 + train)}
    for group, nums in numbers.items():
        for sub in ("images", "1st_manual", "mask"):
            (root / group / sub).mkdir(parents=True)
        for n in nums:
            stem = f"{n:02d}_{group}"
            Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(
                root / group / "images" / f"{stem}.tif"
            )
            vessels = (rng.random((24, 20)) > 0.8).astype(np.uint8) * 255
            Image.fromarray(vessels).save(root / group / "1st_manual" / f"{n:02d}_manual1.gif")
            fov = np.zeros((24, 20), np.uint8)
            fov[2:-2, 2:-2] = 255
            Image.fromarray(fov).save(root / group / "mask" / f"{stem}_mask.gif")
    return root


def test_drive_keeps_the_official_test_split_and_the_fov(tmp_path):
    src = make_drive(tmp_path / "drive")
    out = tmp_path / "out"
    run("drive", src, out)
    lists = check_output(out, channels=3, num_classes=2)
    assert subjects_of(lists)["test"] == {"01", "02", "03"}
    assert len(lists["validation"]) == 1 and len(lists["training"]) == 4  # 0.1 / 0.8 of 5, at least 1
    item = lists["test"][0]
    assert Image.open(out / item["image"]).mode == "RGB"
    roi = np.asarray(Image.open(out / item["roi"]))
    assert set(np.unique(roi)) == {0, 1} and label_values(out, lists) == {0, 1}
    assert load_dataset_info(out).extra["roi_key"] == "roi"
    pooled = tmp_path / "pooled"
    run("drive", src, pooled, split=(0.5, 0.25, 0.25))
    assert json.loads((pooled / "dataset.json").read_text())["split"]["rule"].startswith("random")


def make_brats(root: Path, patients: int = 3, shape=(16, 16, 12)) -> Path:
    rng = np.random.default_rng(2)
    for p in range(1, patients + 1):
        case = root / f"brats_2013_pat{p:04d}_1"
        case.mkdir(parents=True)
        brain = np.zeros(shape, np.int32)
        brain[3:13, 3:13, 1:11] = 1  # slices 0 and 11 have no brain
        label = np.zeros(shape, np.float32)
        label[5:9, 5:9, 4:7] = rng.integers(1, 5, (4, 4, 3))
        label[6, 6, 5] = 4
        for name, data in (("brainmask", brain), ("OTMultiClass", label)):
            nib.save(nib.Nifti1Image(data, LPS), case / f"{name}.nii.gz")
        for name in ("Flair", "T1c"):
            volume = (rng.normal(3.0, 2.0, shape) * brain).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, LPS), case / f"{name}_subtrMeanDivStd.nii.gz")
    return root


def test_brats_slices_two_channels_zscored_with_a_background_share(tmp_path):
    src = make_brats(tmp_path / "brats")
    out = tmp_path / "out"
    run("brats", src, out, dim=2)
    lists = check_output(out, channels=2, num_classes=5)
    assert label_values(out, lists) <= {0, 1, 2, 3, 4} and 4 in label_values(out, lists)
    slices = [i["slice"] for items in lists.values() for i in items if i["volume"] == "brats_2013_pat0001_1"]
    assert set(range(4, 7)) <= set(slices) and len(slices) == 4  # 3 with tumour + round(0.2 * 3) = 1 background
    assert 0 not in slices and 11 not in slices  # no brain
    info = load_dataset_info(out)
    assert info.channel_names == ["FLAIR", "T1c"] and info.normalisation["method"] == "zscore"
    assert info.spacing == [1.0, 1.0] and info.extra["slices"]["background_share"] == 0.2
    assert info.extra["regions"]["TC"] == [1, 3, 4]
    item = lists["training"][0]
    assert {"subject", "volume", "slice"} <= set(item)
    flat = nib.load(str(out / item["image"][0]))
    assert flat.shape == (16, 16) and np.allclose(flat.affine[2, 3], item["slice"])  # world z of the slice


def test_brats_volumes_are_zscored_over_the_brain(tmp_path):
    src = make_brats(tmp_path / "brats")
    out = tmp_path / "out"
    run("brats", src, out, dim=3)
    lists = check_output(out, channels=2, num_classes=5)
    item = lists["training"][0]
    brain = (
        np.asarray(nib.load(str(src / item["label"].split("/")[1].replace(".nii.gz", "") / "brainmask.nii.gz")).dataobj)
        > 0
    )
    for path in item["image"]:
        volume = nib.load(str(out / path))
        data = volume.get_fdata()
        assert np.allclose(volume.affine, LPS) and data.shape == (16, 16, 12)
        assert abs(data[brain].mean()) < 1e-4 and abs(data[brain].std() - 1) < 1e-3 and not data[~brain].any()
    assert load_dataset_info(out).spacing == [1.0, 1.0, 1.0]


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = LPS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def make_msd(root: Path, cases: int = 4) -> Path:
    rng = np.random.default_rng(3)
    meta = {
        "name": "Prostate",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "prostate"},
        "licence": "CC-BY-SA 4.0",
    }
    (root).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for c in range(cases):
        image = rng.normal(100, 10, (12, 12, 8, 2)).astype(np.float32)
        image[:2] = 0  # outside the body
        label = np.zeros((12, 12, 8), np.uint8)
        label[4:8, 4:8, 3:5] = 1
        write_nifti(root / "imagesTr" / f"prostate_{c:02d}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"prostate_{c:02d}.nii.gz", label)
    (root / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"macOS resource fork")  # ignored
    return root


def test_decathlon_msd_4d_image_becomes_two_channel_slices(tmp_path):
    src = make_msd(tmp_path / "Task05_Prostate")
    out = tmp_path / "out"
    run("decathlon", src, out, dim=2)
    lists = check_output(out, channels=2, num_classes=2)
    info = load_dataset_info(out)
    assert info.channel_names == ["T2", "ADC"] and info.normalisation == {"method": "zscore", "range": [-5.0, 5.0]}
    assert info.extra["licence"] == "CC-BY-SA 4.0" and label_values(out, lists) == {0, 1}
    t2 = nib.load(str(out / lists["training"][0]["image"][0])).get_fdata()
    assert not t2[:2].any() and abs(t2[2:].mean()) < 0.5  # z-scored over the non-zero voxels, 0 outside


def make_nnunet(root: Path, patients: int = 3, visits: int = 2, ct: bool = False, spacing=None) -> Path:
    rng = np.random.default_rng(4)
    channels = {"0": "CT"} if ct else {"0": "T2", "1": "FLAIR"}
    meta = {
        "channel_names": channels,
        "labels": {"background": 0, "tumour": 1, "cyst": 2},
        "file_ending": ".nii.gz",
        "name": "Dataset042_Toy",
    }
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    n = 0
    for p in range(patients):
        for v in range(visits):
            case = f"pat{p}_visit{v}"
            affine = LPS.copy()
            if spacing is not None and n % 2:
                affine[:3, :3] *= np.diag(spacing)
            for c in range(len(channels)):
                data = rng.normal(-200 if ct else 50, 30, (10, 10, 6)).astype(np.float32)
                write_nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", data, affine)
            label = np.zeros((10, 10, 6), np.uint8)
            label[3:6, 3:6, 2] = 1
            label[6:8, 6:8, 3] = 2
            write_nifti(root / "labelsTr" / f"{case}.nii.gz", label, affine)
            n += 1
    return root


def test_decathlon_nnunet_channels_and_subject_regex_keep_a_patient_together(tmp_path):
    src = make_nnunet(tmp_path / "Dataset042_Toy", patients=4)
    out = tmp_path / "out"
    run("decathlon", src, out, dim=3, subject_regex=r"^(pat\d+)_", folds=2)
    lists = check_output(out, channels=2, num_classes=3)
    assert set(lists) == {"fold_0", "fold_1"}
    for items in lists.values():
        for item in items:
            assert item["label"].split("/")[1].startswith(item["subject"] + "_")
    assert sorted(len(v) for v in subjects_of(lists).values()) == [2, 2]
    assert load_dataset_info(out).labels == {"0": "background", "1": "tumour", "2": "cyst"}


def test_decathlon_ct_keeps_hounsfield_units_and_names_the_window(tmp_path):
    src = make_nnunet(tmp_path / "ct", patients=3, visits=1, ct=True, spacing=(0.7, 0.7, 2.5))
    out = tmp_path / "out"
    run("decathlon", src, out, dim=2, window=(-1000.0, 400.0))
    lists = check_output(out, channels=1, num_classes=3)
    info = load_dataset_info(out)
    assert info.normalisation == {"method": "window", "range": [-1000.0, 400.0]} and info.modality == "CT"
    assert nib.load(str(out / lists["training"][0]["image"])).get_fdata().min() < -250  # raw HU, not windowed
    assert len(info.extra["spacings"]) == 2  # mixed spacings recorded; the slices keep their own
    slices = {i["volume"] for items in lists.values() for i in items}
    assert len(slices) == 3
    out3 = tmp_path / "out3"
    run("decathlon", src, out3, dim=3)
    assert load_dataset_info(out3).normalisation == {"method": "window", "range": [-125.0, 275.0]}


def make_folder(root: Path, kind: str = "binary", n: int = 6, suffix: str = "_mask") -> Path:
    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        rgba = np.concatenate(
            [rng.integers(0, 255, (20, 24, 3), dtype=np.uint8), np.full((20, 24, 1), 255, np.uint8)], -1
        )
        Image.fromarray(rgba, "RGBA").save(root / "images" / f"img{i}.png")  # opaque alpha: read as RGB
        mask = np.zeros((20, 24), np.uint8)
        mask[4:10, 4:10] = 1
        mask[12:16, 12:20] = 2 if kind != "binary" else 1
        path = root / "masks" / f"img{i}{suffix}.png"
        if kind == "binary":
            Image.fromarray(mask * 255).save(path)
        elif kind == "levels":
            Image.fromarray((mask.astype(int) * 128).clip(0, 255).astype(np.uint8)).save(
                path
            )  # 0 / 128 / 255 after clip
        elif kind == "palette":
            pal = Image.fromarray(mask, "P")
            pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
            pal.save(path)
    return root


@pytest.mark.parametrize(
    "kind, classes, mapping",
    [("binary", 2, {"0": 0, "255": 1}), ("levels", 3, {"0": 0, "128": 1, "255": 2}), ("palette", 3, None)],
)
def test_folder_masks_become_class_ids(tmp_path, kind, classes, mapping):
    src = make_folder(tmp_path / "mine", kind)
    out = tmp_path / "out"
    run("folder", src, out, split=(0.5, 0.2, 0.3))
    lists = check_output(out, channels=3, num_classes=classes)
    assert label_values(out, lists) == set(range(classes))
    assert load_dataset_info(out).extra.get("label_mapping") == mapping
    assert Image.open(out / lists["training"][0]["image"]).mode == "RGB"


def test_lits_slabs_are_the_subjects(tmp_path):
    src = tmp_path / "lits_liver"
    image = np.random.default_rng(6).normal(40, 50, (10, 10, 20)).astype(np.float32)
    label = np.zeros((10, 10, 20), np.uint8)
    label[2:8, 2:8, :] = 1
    label[4:6, 4:6, 5:15] = 2
    write_nifti(src / "volume" / "image.nii.gz", image)
    write_nifti(src / "volume" / "label.nii.gz", label)
    split = {"training": {"slices": [0, 11]}, "validation": {"slices": [13, 15]}, "test": {"slices": [17, 19]}}
    meta = {"split": split, "axial_axis": 2, "class_names": {"0": "background", "1": "liver", "2": "tumour"}}
    (src / "datalist.json").write_text(json.dumps({"metadata": meta}))
    out2, out3 = tmp_path / "out2", tmp_path / "out3"
    run("lits", src, out2, dim=2)
    lists = check_output(out2, channels=1, num_classes=3)
    assert {k: len(v) for k, v in lists.items()} == {"training": 12, "validation": 3, "test": 3}
    assert (
        subjects_of(lists)["test"] == {"lits117_test"} and "one patient" in load_dataset_info(out2).description.lower()
    )
    run("lits", src, out3, dim=3)
    lists = check_output(out3, channels=1, num_classes=3)
    test = nib.load(str(out3 / lists["test"][0]["image"]))
    assert test.shape == (10, 10, 3) and np.allclose(test.affine[2, 3], 17)  # world position of the slab kept
    with pytest.raises(DataError, match="fixed by the source"):
        run("lits", src, tmp_path / "x", folds=3)


# ----------------------------------------------------------------------------------------------------------------
# the writer: idempotent, atomic, refuses a foreign OUT
# ----------------------------------------------------------------------------------------------------------------


def mtimes(out: Path) -> dict[str, int]:
    return {p.as_posix(): p.stat().st_mtime_ns for p in out.rglob("*")}


def test_second_run_is_up_to_date_and_force_rebuilds(tmp_path, capsys):
    from scripts.prepare_dataset import main

    src = make_hc18(tmp_path / "hc18")
    out = tmp_path / "out"
    args = ["hc18", "--src", str(src), "--out", str(out), "--seed", "1"]
    assert main(args) == 0
    before = mtimes(out)
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out and mtimes(out) == before
    assert run("hc18", src, out, seed=2)["up_to_date"] is False  # other arguments: rebuilt
    assert run("hc18", src, out, seed=2, force=True)["up_to_date"] is False
    (out / "labels" / "000_HC.png").write_bytes(b"tampered")
    assert run("hc18", src, out, seed=2)["up_to_date"] is False  # a file that no longer verifies: rebuilt


def test_an_error_midway_leaves_no_partial_folder_and_the_old_output_untouched(tmp_path):
    src = make_nnunet(tmp_path / "ds", patients=3, visits=1)
    out = tmp_path / "out"
    run("decathlon", src, out, dim=3)
    before = mtimes(out)
    write_nifti(src / "labelsTr" / "pat2_visit0.nii.gz", np.zeros((10, 10, 5), np.uint8))  # the last case breaks
    with pytest.raises(DataError, match="pat2_visit0.nii.gz.*pat2_visit0_0000.nii.gz"):
        run("decathlon", src, out, dim=3)
    assert mtimes(out) == before
    fresh = tmp_path / "fresh"
    with pytest.raises(DataError):
        run("decathlon", src, fresh, dim=3)
    assert not fresh.exists() and not list(tmp_path.glob("*.partial-*")) and not list(tmp_path.glob("*.old-*"))


def test_a_foreign_output_folder_is_not_replaced(tmp_path):
    src = make_hc18(tmp_path / "hc18", subjects=4)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not written by prepare_dataset"):
        run("hc18", src, out, force=True)
    assert (out / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------------------------------------------
# bad input: one DataError naming the file
# ----------------------------------------------------------------------------------------------------------------


def test_decathlon_bad_dataset_json_is_named(tmp_path):
    src = make_nnunet(tmp_path / "ds", patients=2, visits=1)
    meta = json.loads((src / "dataset.json").read_text())
    (src / "dataset.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "labels"}))
    with pytest.raises(DataError, match=r"dataset.json' has no labels: add"):
        run("decathlon", src, tmp_path / "out")
    (src / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "whole": [1, 2]}}))
    with pytest.raises(DataError, match="region"):
        run("decathlon", src, tmp_path / "out")
    (src / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"does not parse case 'pat0_visit0' .*pat0_visit0_0000.nii.gz"):
        run("decathlon", src, tmp_path / "out", subject_regex=r"^patient(\d+)")


def test_decathlon_label_off_the_image_grid_is_named(tmp_path):
    src = make_nnunet(tmp_path / "ds", patients=2, visits=1)
    shifted = LPS.copy()
    shifted[0, 3] += 0.5
    write_nifti(src / "labelsTr" / "pat0_visit0.nii.gz", np.zeros((10, 10, 6), np.uint8), shifted)
    with pytest.raises(DataError, match=r"labelsTr/pat0_visit0.nii.gz' and its image '.*pat0_visit0_0000.nii.gz"):
        run("decathlon", src, tmp_path / "out", folds=2)


def test_folder_bad_masks_and_images_are_named(tmp_path):
    src = make_folder(tmp_path / "a", "binary", n=3)
    (src / "masks" / "img1_mask.png").unlink()
    with pytest.raises(DataError, match=r"no mask for image '.*img1.png'"):
        run("folder", src, tmp_path / "out", folds=2)

    src = make_folder(tmp_path / "b", "binary", n=3)
    Image.new("RGB", (24, 20)).save(src / "masks" / "img2_mask.png")
    with pytest.raises(DataError, match=r"img2_mask.png' is RGB: save masks as grey or palette PNG"):
        run("folder", src, tmp_path / "out", folds=2)

    src = make_folder(tmp_path / "c", "binary", n=3)
    (src / "masks" / "img0_mask.png").unlink()
    noisy = np.zeros((20, 24), np.uint8)
    noisy[5:15, 5:15] = 255
    Image.fromarray(noisy).save(src / "masks" / "img0_mask.jpg", quality=50)
    with pytest.raises(DataError, match=r"img0_mask.jpg' is a JPEG .*save masks as PNG"):
        run("folder", src, tmp_path / "out", folds=2)

    src = make_folder(tmp_path / "d", "binary", n=3)
    Image.fromarray(np.zeros((21, 24), np.uint8)).save(src / "masks" / "img1_mask.png")
    with pytest.raises(DataError, match=r"img1_mask.png' is 24x21 px but image '.*img1.png' is 24x20"):
        run("folder", src, tmp_path / "out", folds=2)

    src = make_folder(tmp_path / "e", "binary", n=3)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(src / "images" / "img2.png")
    with pytest.raises(DataError, match=r"image '.*img2.png' has 1 channel"):
        run("folder", src, tmp_path / "out", folds=2)

    src = make_folder(tmp_path / "f", "binary", n=3)
    Image.new("RGBA", (24, 20), (10, 20, 30, 0)).save(src / "images" / "img1.png")
    with pytest.raises(DataError, match=r"img1.png' has a transparent alpha"):
        run("folder", src, tmp_path / "out", folds=2)
    assert not list(tmp_path.glob("out*"))


def test_cli_prints_one_error_line(tmp_path, capsys):
    from scripts.prepare_dataset import main

    assert main(["hc18", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing" in err
    assert main(["hc18", "--src", str(make_hc18(tmp_path / "hc", 4)), "--out", str(tmp_path / "o"), "--dim", "3"]) == 1
    assert "2D only" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# the real datasets (small subsets)
# ----------------------------------------------------------------------------------------------------------------


def test_real_hc18(shared_datasets, tmp_path):
    out = tmp_path / "hc18"
    summary = run("hc18", shared_datasets / "hc18" / "training_set", out, max_subjects=12)
    lists = check_output(out, channels=1, num_classes=2)
    assert sum(len(s) for s in subjects_of(lists).values()) == 12 and label_values(out, lists) == {0, 1}
    assert summary["classes"]["1"]["count"] > 0


def test_real_drive(shared_datasets, tmp_path):
    out = tmp_path / "drive"
    run("drive", shared_datasets / "drive", out, max_subjects=6)
    lists = check_output(out, channels=3, num_classes=2)
    assert all("roi" in i for items in lists.values() for i in items) and label_values(out, lists) == {0, 1}
    assert all(lists.values()) and all(s < "21" for s in subjects_of(lists)["test"])  # official test images: 01-20
    assert Image.open(out / lists["training"][0]["image"]).mode == "RGB"


@pytest.mark.parametrize("dim", [2, 3])
def test_real_brats(shared_datasets, tmp_path, dim):
    out = tmp_path / f"brats_{dim}d"
    run("brats", shared_datasets / "brats2013", out, dim=dim, max_subjects=2, split=(0.5, 0.0, 0.5))
    lists = check_output(out, channels=2, num_classes=5)
    assert label_values(out, lists) <= {0, 1, 2, 3, 4} and len(label_values(out, lists)) >= 4
    assert subjects_of(lists)["training"].isdisjoint(subjects_of(lists)["test"])
