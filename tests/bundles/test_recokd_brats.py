"""recokd_student on multi-channel MR volumes split into folds by patient (the BraTS path): the crop to the brain keeps
image and label aligned through the 3D preprocessing, inference.json writes predictions back in the input's space,
the ``fold`` id selects the fold's lists, the ablation configs, regions in the evaluation, and the real BraTS data
when it is present (``shared_datasets``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from monai.transforms import Randomizable

from common.data.dataset_info import DatasetInfo, load_dataset_info, write_dataset_info
from common.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "recokd_student" / "configs"
LABELS = {"0": "background", "1": "necrosis", "2": "oedema", "3": "non-enhancing tumour", "4": "enhancing tumour"}
REGIONS = {"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}
SPACING = [1.2, 0.9, 2.5]  # the oblique volume's voxel size (mm)
TINY = {"filters": [8, 16, 32], "deep_supr_num": 1, "ds_weights": [0.5], "patch_size": [16, 16, 16], "num_workers": 0}


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return r


def _parser(config: str, overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in config.split("+")])
    parser.update(overrides)
    return parser


@pytest.fixture(scope="module")
def oblique(tmp_path_factory) -> Path:
    """One MR "patient" (FLAIR, T1c) with an oblique affine (rotations about x and z, x flipped, anisotropic voxels):
    0 outside an ellipsoidal brain, 0.3 (T1c) inside, 1.0 on a block labelled with the tumour classes 1, 2, 4."""
    root = tmp_path_factory.mktemp("oblique")
    (root / "images").mkdir()
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0, 20) @ _rotation(2, 15) @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(SPACING)
    affine[:3, 3] = [30.0, -12.0, 5.0]
    shape = (28, 30, 14)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    centre = (np.array(shape) - 1) / 2
    brain = (((grid - centre) / (0.38 * np.array(shape))) ** 2).sum(-1) < 1
    label = np.zeros(shape, np.uint8)
    label[12:19, 10:18, 5:10] = 2
    label[13:16, 11:14, 6:8] = 4
    label[16:19, 15:18, 8:10] = 1
    t1c = np.where(brain, 0.3, 0.0).astype(np.float32)
    t1c[label > 0] = 1.0
    for name, array in (("flair", 0.5 * t1c), ("t1c", t1c)):
        nib.save(nib.Nifti1Image(array, affine), root / "images" / f"s0_{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "images" / "s0_label.nii.gz")
    item = {"image": ["images/s0_flair.nii.gz", "images/s0_t1c.nii.gz"], "label": "images/s0_label.nii.gz"}
    (root / "datalist.json").write_text(json.dumps({"training": [{**item, "subject": "s0"}], "test": [item]}))
    info = DatasetInfo(name="oblique", dim=3, channel_names=["FLAIR", "T1c"], labels=LABELS, modality="MR",
                       normalisation={"method": "zscore", "range": [-5.0, 5.0]}, spacing=[1.0, 1.0, 1.0],
                       extra={"regions": REGIONS})  # fmt: skip
    write_dataset_info(root, info)
    return root


def _bright_levels(image: torch.Tensor) -> tuple[float, float]:
    """The normalised brain level (the most common non-zero value) and the block's (the maximum) of T1c."""
    t1c = image[1]
    return float(torch.median(t1c[t1c > 0])), float(t1c.max())


@pytest.mark.parametrize("spacing", [SPACING, [1.0, 1.0, 1.0]], ids=["own_spacing", "resampled"])
def test_train_preprocessing_keeps_the_label_on_the_bright_voxels_of_an_oblique_volume(oblique, spacing):
    """Normalisation, crop to the brain, reorientation to RAS and resampling, as training runs them (up to the first
    random transform): at the volume's own spacing the label is exactly the bright block; resampled, it lies between
    the voxels that are wholly block (all interpolation neighbours bright) and those the block touches at all (as
    nearest-neighbour labels and trilinear images must); and the block stays where it was in the world."""
    parser = _parser("train.json", {"dataset_dir": str(oblique), "spacing": spacing, **TINY})
    preprocessing = parser.get_parsed_content("train#preprocessing")
    end = next(i for i, t in enumerate(preprocessing.transforms) if isinstance(t, Randomizable))
    names = [type(t).__name__ for t in preprocessing.transforms[:end]]
    assert names.index("CropForegroundd") < names.index("Orientationd") < names.index("ResampleToSpacingd")
    out = preprocessing(parser.get_parsed_content("train#datalist")[0], end=end)
    image, label = out["image"], out["label"]
    assert image.shape[1:] == label.shape[1:] and np.allclose(image.affine, label.affine)
    assert np.allclose(image.pixdim, spacing)
    brain, block = _bright_levels(image)
    tumour = label[0] > 0
    if spacing == SPACING:
        assert np.prod(image.shape[1:]) < 28 * 30 * 14  # cropped to the brain
        assert torch.equal(tumour, image[1] > (brain + block) / 2)
        assert torch.equal(tumour, image[0] > (brain + block) / 2)  # FLAIR too (z-scoring undid its half scale)
        assert int(tumour.sum()) == 7 * 8 * 5
    else:
        assert not (image[1] >= block - 1e-4)[~tumour].any()  # wholly bright -> labelled
        assert (image[1] > brain + 1e-4)[tumour].all()  # labelled -> touched by the block
    source = nib.load(str(oblique / "images" / "s0_label.nii.gz"))
    centre_in = source.affine @ np.append(np.argwhere(np.asarray(source.dataobj) > 0).mean(0), 1)
    centre_out = np.asarray(label.affine) @ np.append(np.argwhere(tumour.numpy()).mean(0), 1)
    assert np.allclose(centre_in, centre_out, atol=0.6 if spacing == SPACING else 1.0)


@pytest.mark.parametrize("spacing", [SPACING, [1.0, 1.0, 1.0]], ids=["own_spacing", "resampled"])
def test_inference_writes_a_prediction_in_the_input_space(oblique, tmp_path, spacing):
    """inference.json's preprocessing (normalise, crop, RAS, spacing), a "network" that marks the bright voxels, then
    its postprocessing (argmax, Invertd, SaveImaged): the written label map has the input's shape and affine and,
    at the volume's own spacing, equals the label voxel for voxel."""
    channels = [str(oblique / "images" / f"s0_{c}.nii.gz") for c in ("flair", "t1c")]
    overrides = {"dataset_dir": str(oblique), "spacing": spacing, "image": channels, "output_dir": str(tmp_path)}
    parser = _parser("inference.json", overrides)
    data = parser.get_parsed_content("preprocessing")(parser.get_parsed_content("datalist")[0])
    brain, block = _bright_levels(data["image"])
    assert data["image"].shape[1] < 28  # cropped to the brain
    bright = (data["image"][1:2] > (brain + block) / 2).float()
    data["pred"] = 10 * torch.cat([1 - bright, bright])
    parser.get_parsed_content("postprocessing")(data)
    (written,) = tmp_path.rglob("s0_flair_seg.nii.gz")
    pred, source = nib.load(str(written)), nib.load(str(oblique / "images" / "s0_label.nii.gz"))
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine, atol=1e-4)
    p, g = np.asarray(pred.dataobj) > 0, np.asarray(source.dataobj) > 0
    if spacing == SPACING:
        np.testing.assert_array_equal(p, g)
    else:
        assert 2 * (p & g).sum() / (p.sum() + g.sum()) > 0.9


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> Path:
    """Six synthetic two-channel patients with classes 1..4, in three folds of two (``fold_0`` .. ``fold_2``), and
    the BraTS regions in dataset.json."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("folds"), (6, 0, 0), size=16, num_classes=5, ndim=3,
                                  in_channels=2)  # fmt: skip
    items = json.loads((root / "datalist.json").read_text())["training"]
    (root / "datalist.json").write_text(json.dumps({f"fold_{k}": items[2 * k : 2 * k + 2] for k in range(3)}))
    info = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**info, "regions": REGIONS}))
    return root


def _subjects(items: list[dict]) -> set[str]:
    return {item["subject"] for item in items}


def test_fold_id_reads_the_fold_lists(folds):
    """fold k: training on the folds other than k and k+1, validation on fold k+1, evaluation on fold k."""
    lists = json.loads((folds / "datalist.json").read_text())
    for k in range(3):
        parser = _parser("train.json+evaluate.json", {"dataset_dir": str(folds), "fold": k, **TINY})
        train = _subjects(parser.get_parsed_content("train#datalist"))
        test = _subjects(parser.get_parsed_content("validate#datalist"))  # evaluate.json: eval_split test
        parser["eval_split"] = "validation"
        validation = _subjects(parser.get_parsed_content("validate#datalist"))
        assert test == _subjects(lists[f"fold_{k}"]) and validation == _subjects(lists[f"fold_{(k + 1) % 3}"])
        assert train == _subjects(lists[f"fold_{(k + 2) % 3}"])


def test_ablation_configs_switch_the_reco_parts(folds):
    overrides = {"dataset_dir": str(folds), "fold": 0, "teacher_ckpt": None, **TINY}
    for config, parts, keys in (
        ("train.json", ("sard", "ca"), {"fg", "bg", "att", "rel"}),
        ("train.json+sard_only.json", ("sard",), {"fg", "bg", "att"}),
        ("train.json+ca_only.json", ("ca",), {"rel"}),
    ):
        parser = _parser(config, overrides)
        loss = parser.get_parsed_content("reco_term").loss
        assert loss.parts == parts
        channels = [parser.get_parsed_content(n).feature_channels for n in ("network", "teacher")]
        student, teacher = ([torch.randn(1, c, *[8 // 2**k] * 3) for k, c in enumerate(cs)] for cs in channels)
        assert set(loss(student, teacher, torch.zeros(1, 1, 8, 8, 8, dtype=torch.long))) == keys


def test_one_fold_trains_and_evaluates_classes_and_regions_on_its_test_patients(folds, tmp_path):
    """A seconds-long smoke run of fold 1: the evaluation scores the fold's two test patients, per class and per
    region, and names them by subject."""
    o = {"dataset_dir": str(folds), "fold": 1, **TINY}
    run(config_file=[str(CONFIGS / c) for c in ("train.json", "student_only.json")], bundle_root=str(tmp_path),
        epochs=1, batches_per_epoch=1, val_interval=1, width_divisor=2, **o)  # fmt: skip
    run(config_file=[str(CONFIGS / c) for c in ("train.json", "evaluate.json")], bundle_root=str(tmp_path),
        width_divisor=2, **o)  # fmt: skip
    with open(tmp_path / "eval" / "metrics_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = list(load_dataset_info(folds).class_names) + list(REGIONS)
    assert [k for k in rows[0] if k.startswith("dice_")] == [f"dice_{n}" for n in names]
    assert [k for k in rows[0] if k.startswith("hd95_")] == [f"hd95_{n}" for n in names]
    fold_1 = json.loads((folds / "datalist.json").read_text())["fold_1"]
    assert {r["subject"] for r in rows} == _subjects(fold_1)


def test_real_brats_crop_keeps_every_tumour_voxel_and_folds_separate_patients(shared_datasets, tmp_path):
    """Three BraTS patients in three folds: the crop to the brain keeps every labelled voxel of a case and drops most
    of the volume; the fold lists never share a patient."""
    from common.data.prepare import PrepareOptions, prepare_dataset

    out = tmp_path / "brats"
    prepare_dataset(PrepareOptions(format="brats", src=shared_datasets / "brats2013", out=out, dim=3, folds=3,
                                   max_subjects=3))  # fmt: skip
    lists = {k: v for k, v in json.loads((out / "datalist.json").read_text()).items() if k.startswith("fold_")}
    subjects = [_subjects(items) for items in lists.values()]
    assert len(subjects) == 3 and sum(map(len, subjects)) == len(set().union(*subjects)) == 3
    assert load_dataset_info(out).regions == REGIONS
    parser = _parser("train.json", {"dataset_dir": str(out), "fold": 0, **TINY})
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    crop = next(i for i, t in enumerate(preprocessing.transforms) if type(t).__name__ == "CropForegroundd")
    item = parser.get_parsed_content("validate#datalist")[0]
    before = preprocessing(item, end=crop)
    after = preprocessing(item, end=crop + 1)
    assert int((after["label"] > 0).sum()) == int((before["label"] > 0).sum()) > 0
    assert after["image"][0].numel() < 0.5 * before["image"][0].numel()
