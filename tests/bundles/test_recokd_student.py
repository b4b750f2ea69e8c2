"""The recokd_student bundle through ``monai.bundle`` on a tiny synthetic 3D task (DynUNet filters [8, 16, 32],
16³ volumes), and the 3D slab split of the sample LiTS volume."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, run, verify_net_in_out

from common.data.synthetic import make_synthetic_dataset
from common.data.volume_split import write_lits_volume_split, write_slab_split
from common.errors import DataError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "recokd_student" / "configs"
TINY = {
    "filters": [8, 16, 32],
    "deep_supr_num": 1,
    "ds_weights": [0.5],
    "patch_size": [16, 16, 16],
    "batches_per_epoch": 2,
    "val_interval": 1,
    "num_workers": 0,
}


def _cfg(*names: str) -> list[str]:
    return [str(CONFIGS / n) for n in names]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A synthetic 3D task and a one-epoch teacher trained on it by ``teacher.json``."""
    root = tmp_path_factory.mktemp("recokd")
    data = make_synthetic_dataset(root / "data", num_items=(2, 1, 1), size=16, ndim=3)
    overrides = {"dataset_dir": str(data), **TINY}
    run(config_file=_cfg("train.json", "teacher.json"), bundle_root=str(root / "teacher"), epochs=1, **overrides)
    return root, overrides


def test_teacher_one_epoch_is_full_width(task):
    root, _ = task
    ckpt = torch.load(root / "teacher" / "models" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["epoch"] == 1 and ckpt["trainer"]["iteration"] == 2
    assert ckpt["model"]["input_block.conv1.conv.weight"].shape[0] == 8  # filters[0], not divided
    assert (root / "teacher" / "models" / "model.pt").is_file()


def test_recokd_student_trains_evaluates_and_infers(task):
    root, o = task
    bundle = root / "student"
    teacher_ckpt = str(root / "teacher" / "models" / "model.pt")
    run(config_file=_cfg("train.json"), bundle_root=str(bundle), epochs=1, width_divisor=2, teacher_ckpt=teacher_ckpt,
        **o)  # fmt: skip
    ckpt = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert ckpt["model"]["input_block.conv1.conv.weight"].shape[0] == 8  # max(8, 8 // 2)
    assert ckpt["model"]["downsamples.0.conv1.conv.weight"].shape[0] == 8  # 16 // 2
    assert any(k.startswith("reco_reco.align.1") for k in ckpt["loss_modules"])  # 8 → 16 channels at stage 1
    assert any(k.startswith("reco_reco.context_teacher.0") for k in ckpt["loss_modules"])

    run(config_file=_cfg("train.json", "evaluate.json"), bundle_root=str(bundle), width_divisor=2, **o)
    summary = json.loads((bundle / "eval" / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 1 and set(summary["classes"]) == {"class1", "class2"}
    assert all(np.isfinite(c["hd95_mean"]) for c in summary["classes"].values())

    run(config_file=_cfg("inference.json"), bundle_root=str(bundle), dataset_dir=o["dataset_dir"], width_divisor=2,
        filters=o["filters"], deep_supr_num=1, patch_size=o["patch_size"], num_workers=0)  # fmt: skip
    preds = list((bundle / "predictions").rglob("*_seg.nii.gz"))
    assert len(preds) == 1 and nib.load(str(preds[0])).shape == (16, 16, 16)


def test_student_from_scratch_one_epoch(task):
    root, o = task
    bundle = root / "scratch"
    run(config_file=_cfg("train.json", "student_only.json"), bundle_root=str(bundle), epochs=1, width_divisor=2, **o)
    ckpt = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2 and not any("reco" in k for k in ckpt["loss_modules"])


def test_kd_baseline_trains_on_the_teachers_voxel_logits(task):
    """kd.json: one stage of deep-supervised Dice + CE and KL to the teacher's logits on every voxel (T = 1), no
    ReCo-KD modules; the configured term on a 3D pair of logits equals the KL computed by hand."""
    root, o = task
    bundle = root / "kd"
    teacher_ckpt = str(root / "teacher" / "models" / "model.pt")
    run(config_file=_cfg("train.json", "kd.json"), bundle_root=str(bundle), epochs=1, width_divisor=2,
        teacher_ckpt=teacher_ckpt, **o)  # fmt: skip
    ckpt = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2 and not ckpt["loss_modules"]
    parser = ConfigParser()
    parser.read_config(_cfg("train.json", "kd.json"))
    parser.update({**o, "bundle_root": str(bundle), "width_divisor": 2, "teacher_ckpt": teacher_ckpt})
    stage = parser.get_parsed_content("stages")[0]
    assert set(stage["terms"]) == {"ds", "kd"} and list(stage["terms"]["kd"].inputs) == [
        "student_logits",
        "teacher_logits",
    ]
    student = torch.tensor([1.0, 0.0, -1.0, 2.0]).reshape(1, 2, 1, 1, 2)  # 2 classes, 2 voxels
    teacher = torch.tensor([0.0, 1.0, 0.0, 0.0]).reshape(1, 2, 1, 1, 2)
    kl = []
    for v in range(2):
        p_t, p_s = torch.softmax(teacher[0, :, 0, 0, v], 0), torch.softmax(student[0, :, 0, 0, v], 0)
        kl.append(float((p_t * (p_t.log() - p_s.log())).sum()))
    assert float(stage["terms"]["kd"].loss(student, teacher)) == pytest.approx(sum(kl) / 2, rel=1e-5)


def test_trainer_warms_lambda_trains_distillers_and_freezes_teacher(task):
    """λ(e) over 5 epochs (warm-up spans 3), through the engine; the teacher neither trains nor gets gradients."""
    root, o = task
    parser = ConfigParser()
    parser.read_config(_cfg("train.json"))
    for key, value in {
        **o,
        "bundle_root": str(root / "lambda"),
        "epochs": 5,
        "batches_per_epoch": 1,
        "width_divisor": 2,
        "val_interval": 100,
        "teacher_ckpt": str(root / "teacher" / "models" / "model.pt"),
    }.items():
        parser[key] = value  # fmt: skip
    trainer = parser.get_parsed_content("train#trainer")
    teacher, loss_modules = parser.get_parsed_content("teacher"), parser.get_parsed_content("loss_modules")
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    align_before = loss_modules["reco_reco"].align[1].weight.detach().clone()
    lambdas = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: lambdas.append(e.state.metrics["weight_reco"]))
    trainer.run()
    assert lambdas == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.01])
    terms = trainer.state.output[0] if isinstance(trainer.state.output, list) else trainer.state.output
    assert {"term_reco_fg", "term_reco_bg", "term_reco_att", "term_reco_rel", "term_ds", "term_gt"} <= set(terms)
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not torch.equal(loss_modules["reco_reco"].align[1].weight, align_before)  # loss_modules train


def test_inference_config_verifies(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(1, 0, 0), size=16, ndim=3)
    verify_net_in_out(
        dataset_dir=str(data),
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        any=2,
        device="cpu",
    )


def test_slab_split_of_a_volume(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 5, 12)).astype(np.float32)
    label = rng.integers(0, 3, size=(6, 5, 12)).astype(np.uint8)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "lab.nii.gz"))
    slabs = {"training": (0, 6), "validation": (8, 9), "test": (11, 11)}
    out = write_slab_split(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "split", slabs)
    datalist = json.loads((out / "datalist.json").read_text())
    for name, (first, last) in slabs.items():
        assert datalist[name] == [{"image": f"{name}/image.nii.gz", "label": f"{name}/label.nii.gz"}]
        img, lab = nib.load(str(out / name / "image.nii.gz")), nib.load(str(out / name / "label.nii.gz"))
        np.testing.assert_array_equal(np.asarray(img.dataobj), image[:, :, first : last + 1])
        np.testing.assert_array_equal(np.asarray(lab.dataobj), label[:, :, first : last + 1])
        assert lab.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine[:3, 3], [0.0, 0.0, 2.0 * first])  # world position kept
    with pytest.raises(DataError, match="overlap"):
        write_slab_split(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "bad", {"a": (0, 5), "b": (5, 8)})


def test_lits_volume_split_uses_the_2d_slabs(sample_data_dir, tmp_path):
    out = write_lits_volume_split(sample_data_dir / "lits_liver", tmp_path / "lits3d")
    source = nib.load(str(sample_data_dir / "lits_liver" / "volume" / "label.nii.gz"))
    full = np.asarray(source.dataobj)
    for name, (first, last) in {"training": (0, 75), "validation": (77, 101), "test": (103, 127)}.items():
        lab = nib.load(str(out / name / "label.nii.gz"))
        assert lab.shape == (128, 128, last - first + 1)
        np.testing.assert_array_equal(np.asarray(lab.dataobj), full[:, :, first : last + 1])
        assert lab.header.get_zooms() == pytest.approx((1.0, 1.0, 1.0))
    stamp = (out / "training" / "image.nii.gz").stat().st_mtime_ns
    write_lits_volume_split(sample_data_dir / "lits_liver", tmp_path / "lits3d")  # idempotent: not rewritten
    assert (out / "training" / "image.nii.gz").stat().st_mtime_ns == stamp
