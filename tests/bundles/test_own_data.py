"""A user's own data through the 2D bundles with ``--dataset_dir`` alone: the real HC18 (grey, binary), DRIVE (RGB,
binary, field of view) and BraTS (2 MR channels, 5 classes) datasets prepared by ``scripts/prepare_dataset.py`` on
small subsets; synthetic RGB PNG and one-sigmoid binary tasks; whole-volume and PNG inference; bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from PIL import Image

from common.data.dataset_info import DatasetInfo, load_dataset_info, write_dataset_info
from common.data.prepare import PrepareOptions, prepare_dataset
from common.data.synthetic import make_synthetic_dataset
from common.errors import CheckpointError, DataError, InputError
from common.networks.students import EfficientUNetStudent
from tests.conftest import tiny_teacher

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
SMALL = {"image_size": 64, "batch_size": 2, "num_workers": 0}


def _cfg(bundle: str, *names: str) -> list[str]:
    return [str(BUNDLES / bundle / "configs" / n) for n in names]


def _keep_items(dataset: Path, counts: dict[str, int]) -> Path:
    """Keep the first ``counts[split]`` items of each split of a prepared dataset (subjects stay disjoint)."""
    path = dataset / "datalist.json"
    datalist = json.loads(path.read_text())
    for split, n in counts.items():
        datalist[split] = datalist[split][:n]
    path.write_text(json.dumps(datalist))
    return dataset


def _error_in_chain(exc: BaseException, kind: type = InputError) -> BaseException | None:
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__ or exc.__context__
    return exc


REAL = {
    # name: (prepare options, channels, classes, class names)
    "hc18": (dict(format="hc18", src="hc18/training_set", max_subjects=12), 1, 2, ["fetal head"]),
    "drive": (dict(format="drive", src="drive", max_subjects=6), 3, 2, ["vessel"]),
    "brats_2d": (dict(format="brats", src="brats2013", max_subjects=3, dim=2, background_share=0.0), 2, 5,
                 ["necrosis", "oedema", "non-enhancing tumour", "enhancing tumour"]),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(REAL))
def real_task(request, shared_datasets, tmp_path_factory):
    """One real dataset prepared from ``../shared/datasets`` (a few subjects, a few items per split kept)."""
    name = request.param
    options, channels, classes, names = REAL[name]
    root = tmp_path_factory.mktemp(name)
    options = {**options, "src": shared_datasets / options["src"], "out": root / "data"}
    prepare_dataset(PrepareOptions(**options))
    data = _keep_items(root / "data", {"training": 4, "validation": 2, "test": 2})
    info = load_dataset_info(data)
    assert (info.in_channels, info.num_classes) == (channels, classes)
    return name, root, data, names


def test_one_epoch_of_each_2d_bundle_with_dataset_dir_alone(real_task):
    """teacher_lora, iad_student and tskd_student each train one epoch and evaluate with nothing but --dataset_dir
    (and small sizes): classes, channels and normalisation come from dataset.json; evaluation names the classes."""
    name, root, data, names = real_task
    info = load_dataset_info(data)
    teacher = tiny_teacher(root / "teacher", num_classes=info.num_classes, adapter=False)

    bundle = root / "teacher_lora"
    common = dict(bundle_root=str(bundle), dataset_dir=str(data), teacher_arch="test", **SMALL)
    run(config_file=_cfg("teacher_lora", "train.json"), epochs=1, **common)
    run(config_file=_cfg("teacher_lora", "train.json", "evaluate.json"), **common)
    _check_report(bundle / "eval", names, data)

    bundle = root / "iad_student"
    common = dict(bundle_root=str(bundle), dataset_dir=str(data), teacher_adapter="null", **teacher, **SMALL)
    run(config_file=_cfg("iad_student", "train.json"), epochs=2, kis_epochs=1, **common)
    run(config_file=_cfg("iad_student", "train.json", "evaluate.json"), **common)
    _check_report(bundle / "eval", names, data)

    bundle = root / "tskd_student"
    common = dict(bundle_root=str(bundle), dataset_dir=str(data), student_preset="test", **SMALL)
    run(config_file=_cfg("tskd_student", "train.json"), pretrained="null", iterations=2, val_every=2, **common)
    run(config_file=_cfg("tskd_student", "train.json", "evaluate.json"), **common)
    _check_report(bundle / "eval", names, data)


def _check_report(eval_dir: Path, names: list[str], data: Path) -> None:
    summary = json.loads((eval_dir / "metrics_summary.json").read_text())
    info = load_dataset_info(data)
    assert list(summary["classes"]) == names + list(info.regions)
    assert summary["num_cases"] == 2
    rows = list(csv.DictReader(open(eval_dir / "metrics_per_case.csv")))
    test_subjects = {item["subject"] for item in json.loads((data / "datalist.json").read_text())["test"]}
    assert {row["subject"] for row in rows} <= test_subjects and len(rows) == 2
    for row in rows:
        assert all(row[f"dice_{n}"] == "nan" or 0.0 <= float(row[f"dice_{n}"]) <= 1.0 for n in names)


def test_drive_scores_inside_the_field_of_view(shared_datasets, tmp_path):
    """DRIVE's evaluation counts only pixels inside the field of view: a prediction of 'vessel everywhere' scores
    the same as 'vessel inside the FOV only'."""
    from common.evaluation import case_metrics

    prepare_dataset(PrepareOptions(format="drive", src=shared_datasets / "drive", out=tmp_path / "d", max_subjects=3))
    item = json.loads((tmp_path / "d" / "datalist.json").read_text())["test"][0]
    label = np.asarray(Image.open(tmp_path / "d" / item["label"]))
    roi = np.asarray(Image.open(tmp_path / "d" / item["roi"])) > 0
    onehot = lambda m: torch.stack([torch.as_tensor(~m), torch.as_tensor(m)])  # noqa: E731
    everywhere = case_metrics(onehot(np.ones_like(roi)), onehot(label > 0), roi=torch.as_tensor(roi), with_cldice=True)
    inside = case_metrics(onehot(roi.copy()), onehot(label > 0), roi=torch.as_tensor(roi), with_cldice=True)
    assert everywhere["dice"] == inside["dice"] and everywhere["sensitivity"] == [1.0]
    perfect = case_metrics(onehot(label > 0), onehot(label > 0), roi=torch.as_tensor(roi), with_cldice=True)
    assert perfect["cldice"] == [1.0] and everywhere["cldice"][0] < 0.1  # a filled disc has no vessel skeleton


@pytest.fixture(scope="module")
def rgb_task(tmp_path_factory):
    """A synthetic RGB PNG task with binary 0/1 masks (K = 2) and a trained-looking random student checkpoint."""
    root = tmp_path_factory.mktemp("rgb")
    data = make_synthetic_dataset(root / "data", (4, 2, 2), size=64, num_classes=2, in_channels=3, file_format="png")
    return root, data


def test_rgb_png_task_trains_evaluates_and_predicts_png(rgb_task):
    root, data = rgb_task
    bundle = root / "iad"
    teacher = tiny_teacher(root / "teacher", num_classes=2, adapter=False)
    common = dict(bundle_root=str(bundle), dataset_dir=str(data), teacher_adapter="null", **teacher, **SMALL)
    run(config_file=_cfg("iad_student", "train.json", "kd.json"), epochs=1, **common)
    run(config_file=_cfg("iad_student", "train.json", "evaluate.json"), **common)
    assert list(json.loads((bundle / "eval" / "metrics_summary.json").read_text())["classes"]) == ["class1"]
    run(config_file=_cfg("iad_student", "inference.json"), bundle_root=str(bundle), dataset_dir=str(data),
        image_size=64, num_workers=0)  # fmt: skip
    preds = sorted((bundle / "predictions").glob("*_seg.png"))
    assert len(preds) == 2
    pred = np.asarray(Image.open(preds[0]))
    assert pred.shape == (64, 64) and set(np.unique(pred)) <= {0, 1}


def test_one_sigmoid_channel_on_a_binary_task(rgb_task, tmp_path):
    """--num_classes 1 on a binary dataset: sigmoid BCE + Dice, one scored class, predictions {0, 1}."""
    _, data = rgb_task
    common = dict(bundle_root=str(tmp_path), dataset_dir=str(data), num_classes=1, **SMALL)
    run(config_file=_cfg("iad_student", "train.json", "student_only.json"), epochs=1, **common)
    run(config_file=_cfg("iad_student", "train.json", "evaluate.json"), **common)
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert list(summary["classes"]) == ["class1"] and 0.0 <= summary["mean_dice"] <= 1.0


def _ct_volume(path: Path, shape=(96, 80, 6), affine=None) -> Path:
    rng = np.random.default_rng(0)
    volume = rng.normal(-50.0, 30.0, shape).astype(np.float32)
    volume[20:70, 15:60, :] += 150.0  # a brighter organ
    affine = (
        np.array([[0, -0.7, 0, 30.0], [-0.7, 0, 0, 20.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])
        if affine is None
        else affine
    )
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


def _ct_dataset(root: Path) -> Path:
    info = DatasetInfo(name="ct", dim=2, channel_names=["CT"], labels={"0": "background", "1": "organ"},
                       normalisation={"method": "window", "range": [-125.0, 275.0]}, modality="CT")  # fmt: skip
    write_dataset_info(root, info)
    return root


def test_a_ct_volume_round_trips_through_a_2d_student(tmp_path):
    """inference.json --image volume.nii.gz: the volume is windowed as in training, segmented slice by slice at the
    training size, and written as one label volume of the input's shape and affine, equal to the network's own
    slice-wise argmax."""
    volume = _ct_volume(tmp_path / "ct.nii.gz")
    data = _ct_dataset(tmp_path / "data")
    torch.manual_seed(0)
    student = EfficientUNetStudent(num_classes=2, in_channels=1).eval()
    torch.save(student.state_dict(), tmp_path / "student.pt")
    run(config_file=_cfg("iad_student", "inference.json"), bundle_root=str(tmp_path / "b"), dataset_dir=str(data),
        image=str(volume), ckpt_path=str(tmp_path / "student.pt"), image_size=64, num_workers=0)  # fmt: skip
    out = nib.load(tmp_path / "b" / "predictions" / "ct_seg.nii.gz")
    source = nib.load(volume)
    assert out.shape == source.shape and np.allclose(out.affine, source.affine, atol=1e-5)
    x = torch.as_tensor(np.clip((source.get_fdata() + 125.0) / 400.0, 0, 1), dtype=torch.float32)
    with torch.no_grad():
        expected = []
        for k in range(x.shape[-1]):
            plane = torch.nn.functional.interpolate(x[None, None, :, :, k], size=(64, 64), mode="bilinear")
            logits = torch.nn.functional.interpolate(student(plane), size=x.shape[:2], mode="bilinear")
            expected.append(logits.argmax(1)[0])
    np.testing.assert_array_equal(np.asarray(out.dataobj), torch.stack(expected, -1).numpy())


def test_bad_input_is_one_clear_error(tmp_path):
    data = make_synthetic_dataset(tmp_path / "ds", (2, 1, 1), size=32)
    items = json.loads((data / "datalist.json").read_text())
    common = dict(bundle_root=str(tmp_path / "b"), dataset_dir=str(data), **SMALL)

    def error(**overrides) -> str:
        with pytest.raises(Exception) as info:
            run(config_file=_cfg("iad_student", "train.json", "student_only.json"), epochs=1, **{**common, **overrides})
        found = _error_in_chain(info.value)
        assert found is not None, info.value
        return str(found)

    # a channel count that does not fit the network
    assert "has 1 channels but the network takes 3" in error(in_channels=3)
    # a 3D volume given to a 2D bundle
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4), np.float32), np.eye(4)), data / items["training"][0]["image"])
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4), np.uint8), np.eye(4)), data / items["training"][0]["label"])
    message = error()
    assert "is a 3D volume" in message and "--dim 2" in message and items["training"][0]["image"] in message
    # a label with colour channels (an RGB mask)
    data = make_synthetic_dataset(tmp_path / "png", (2, 1, 1), size=32, num_classes=2, file_format="png")
    items = json.loads((data / "datalist.json").read_text())
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / items["training"][1]["label"])
    assert "has 3 channels (an RGB/RGBA mask?)" in error(dataset_dir=str(data))
    # images outside the normalisation range (8-bit images declared as [0, 1])
    info = load_dataset_info(data)
    info.normalisation = {"method": "range", "range": [0.0, 1.0]}
    write_dataset_info(data, info)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(data / items["training"][1]["label"])
    assert "outside the dataset's normalisation range [0, 1]" in error(dataset_dir=str(data))
    # a dataset.json without labels
    raw = json.loads((data / "dataset.json").read_text())
    del raw["labels"]
    (data / "dataset.json").write_text(json.dumps(raw))
    assert "lacks ['labels']" in error(dataset_dir=str(data))


def test_3d_label_whose_depth_or_affine_differs_is_named(tmp_path):
    from common.data.datalist import load_datalist

    data = make_synthetic_dataset(tmp_path / "v", (1, 0, 0), size=12, ndim=3)
    item = json.loads((data / "datalist.json").read_text())["training"][0]
    label = np.asarray(nib.load(data / item["label"]).dataobj)
    nib.save(nib.Nifti1Image(label[:, :, :10], np.diag([0.8, 0.8, 0.8, 1])), data / item["label"])
    with pytest.raises(DataError, match=r"shape mismatch: .*image_000.nii.gz' is \(12, 12, 12\), .*\(12, 12, 10\)"):
        load_datalist(data, "training", num_classes=3, dim=3)
    nib.save(nib.Nifti1Image(label, np.diag([0.8, 0.8, 1.6, 1])), data / item["label"])
    with pytest.raises(DataError, match="affine mismatch: .*image_000.nii.gz' and .*label_000.nii.gz'"):
        load_datalist(data, "training", num_classes=3, dim=3)


def test_mixed_spacings_are_resampled_by_the_3d_bundle(tmp_path):
    """Two volumes of different voxel sizes come out of the 3D training preprocessing at the dataset's spacing,
    image and label on the same grid."""
    data = make_synthetic_dataset(tmp_path / "v", (2, 0, 0), size=16, ndim=3)
    item = json.loads((data / "datalist.json").read_text())["training"][1]
    for key in ("image", "label"):
        img = nib.load(data / item[key])
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([0.8, 0.8, 1.6, 1])), data / item[key])
    parser = ConfigParser()
    parser.read_config(_cfg("recokd_student", "train.json"))
    parser.update({"dataset_dir": str(data), "patch_size": [8, 8, 8], "num_workers": 0})
    preprocessing = parser.get_parsed_content("train#preprocessing")
    items = parser.get_parsed_content("train#datalist")
    first = preprocessing.transforms.index(
        next(t for t in preprocessing.transforms if type(t).__name__ == "SpatialPadd")
    )
    for item in items:
        out = preprocessing(item, end=first)
        assert np.allclose(out["image"].pixdim, [0.8, 0.8, 0.8]) and out["image"].shape == out["label"].shape
    assert out["image"].shape[-1] == 31  # 16 slices 1.6 mm apart span 15 x 1.6 mm: 31 slices at 0.8 mm


def test_checkpoint_written_as_null_is_none(tmp_path):
    """--teacher_ckpt null (or None, none, '') on the command line means no checkpoint, not a file named 'null'."""
    from common.networks.sam_teacher import build_teacher

    for value in ("null", "None", "none", ""):
        assert build_teacher("test", checkpoint=value, num_classes=2).num_classes == 2
    with pytest.raises(CheckpointError, match="not found: 'nope.pth'"):
        build_teacher("test", checkpoint="nope.pth", num_classes=2)


def test_command_line_bad_input_is_one_line(tmp_path):
    """``python -m monai.bundle run`` with bad input prints one 'error:' line, no traceback (the excepthook the
    config's initialize installs); importing ``common`` changes nothing global."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COMMON_FULL_TRACEBACK", None)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", _cfg("iad_student", "train.json")[0],
           "--dataset_dir", str(tmp_path / "missing"), "--bundle_root", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"error: dataset_dir '{tmp_path / 'missing'}' does not exist" in proc.stderr
    before = sys.excepthook
    import common  # noqa: F401

    assert sys.excepthook is before
