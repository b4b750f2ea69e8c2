"""The transfer_diffusion bundle through ``monai.bundle``: train, sample a transfer set, score it, and read it with
the other bundles' configs; a tiny network on a tiny synthetic task (2D, and 3D for train + sample)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, run

from common.data.datalist import load_datalist
from common.data.synthetic import make_synthetic_dataset
from common.networks.sam_teacher import build_teacher

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "transfer_diffusion" / "configs"
TINY_NET = {
    "channels": [8, 8],
    "attention_levels": [False, True],
    "num_head_channels": 8,
    "norm_num_groups": 8,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of DDPM training on 6 synthetic 32-px slices; returns (root, bundle_root, data)."""
    root = tmp_path_factory.mktemp("diffusion")
    data = make_synthetic_dataset(root / "data", num_items=(6, 3, 3), size=32)
    bundle = root / "bundle"
    run(
        config_file=str(CONFIGS / "train.json"),
        bundle_root=str(bundle),
        dataset_dir=str(data),
        image_size=32,
        epochs=1,
        batch_size=4,
        num_workers=0,
        val_interval=1,
        sample_interval=1,
        sample_grid_size=4,
        num_inference_steps=2,
        **TINY_NET,
    )
    return root, bundle, data


def _sample(bundle: Path, out: Path, **kw) -> Path:
    run(
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(bundle),
        output_dir=str(out),
        image_size=32,
        num_samples=3,
        batch_size=2,
        num_inference_steps=2,
        **TINY_NET,
        **kw,
    )
    return out


def test_training_writes_weights_checkpoint_samples_and_logs(trained):
    _, bundle, _ = trained
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("conv_in") for k in state), "model.pt is the network's plain state dict"
    assert (bundle / "models" / "last.pt").is_file()
    assert (bundle / "outputs" / "samples" / "epoch_0001.png").is_file()
    assert (bundle / "outputs" / "samples" / "latest.png").is_file()
    assert list((bundle / "outputs").glob("events.out.tfevents.*"))


def test_seeded_sampling_is_reproducible_and_readable_by_the_students(trained):
    root, bundle, _ = trained
    a = _sample(bundle, root / "set_a")
    b = _sample(bundle, root / "set_b")
    c = _sample(bundle, root / "set_c", seed=1)
    read = lambda d, i: np.asarray(nib.load(d / "images" / f"synth_{i:05d}.nii.gz").dataobj)  # noqa: E731
    for i in range(3):
        np.testing.assert_array_equal(read(a, i), read(b, i))
    assert not np.array_equal(read(a, 0), read(c, 0))
    assert len(load_datalist(a, "training")) == 3 and (a / "samples.png").is_file()

    # The transfer set is a dataset_dir for the other bundles: the IAD student's inference and the teacher's
    # cache (the teacher labels the unlabelled transfer set) both read it.
    torch.manual_seed(0)
    student = root / "student.pt"
    from common.networks.students import EfficientUNetStudent

    torch.save(EfficientUNetStudent(num_classes=3).state_dict(), student)
    run(
        config_file=str(REPO / "bundles" / "iad_student" / "configs" / "inference.json"),
        bundle_root=str(root / "iad"),
        dataset_dir=str(a),
        datalist_key="training",
        ckpt_path=str(student),
        image_size=32,
        num_workers=0,
    )
    assert len(list((root / "iad" / "predictions").glob("*_seg.nii.gz"))) == 3

    teacher = root / "teacher.pt"
    torch.save(build_teacher("test", num_classes=3, lora_rank=0, image_size=64).state_dict(), teacher)
    teacher_configs = REPO / "bundles" / "teacher_lora" / "configs"
    run(
        config_file=[str(teacher_configs / "inference.json"), str(teacher_configs / "cache.json")],
        bundle_root=str(root / "teacher"),
        dataset_dir=str(a),
        teacher_arch="test",
        image_size=64,
        ckpt_path=str(teacher),
        teacher_cache_dir=str(root / "cache"),
        num_workers=0,
    )
    assert len(list((root / "cache").glob("*/*.pt"))) == 3


def test_quality_report_against_the_held_out_split(trained):
    root, bundle, data = trained
    out = _sample(bundle, root / "set_q")
    torch.manual_seed(0)
    teacher = root / "tiny_sam.pth"
    torch.save(build_teacher("test", num_classes=3, lora_rank=0, image_size=64).state_dict(), teacher)
    run(
        config_file=str(CONFIGS / "evaluate.json"),
        bundle_root=str(bundle),
        transfer_dir=str(out),
        dataset_dir=str(data),
        image_size=32,
        teacher_arch="test",
        teacher_ckpt=str(teacher),
        teacher_image_size=64,
    )
    report = json.loads((out / "quality.json").read_text())
    assert report["generated"]["count"] == 3 and report["reference"]["count"] == 3 and report["real_count"] == 6
    for figures in (report["generated"], report["reference"]):
        assert all(np.isfinite(v) for v in figures.values()), figures
    assert (out / "quality.md").read_text().startswith("| figure")


def test_3d_builds_trains_a_step_and_samples(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(2, 1, 0), size=16, ndim=3)
    bundle = tmp_path / "bundle"
    common = dict(bundle_root=str(bundle), spatial_dims=3, image_size=16, **TINY_NET)
    run(
        config_file=str(CONFIGS / "train.json"),
        dataset_dir=str(data),
        epochs=1,
        batch_size=2,
        num_workers=0,
        val_interval=1,
        sample_interval=1,
        sample_grid_size=2,
        num_inference_steps=2,
        **common,
    )
    assert (bundle / "outputs" / "samples" / "epoch_0001.png").is_file()
    out = tmp_path / "set3d"
    run(
        config_file=str(CONFIGS / "inference.json"),
        output_dir=str(out),
        num_samples=2,
        batch_size=2,
        num_inference_steps=2,
        **common,
    )
    volume = nib.load(out / "images" / "synth_00001.nii.gz")
    assert volume.shape == (16, 16, 16)


class _Crash(RuntimeError):
    pass


def test_crash_mid_epoch_then_resume_gives_the_uninterrupted_weights(trained, tmp_path):
    """A run that dies in the middle of epoch 2 and is resumed with ``resume: true`` ends with the same weights as
    an uninterrupted run, bit for bit (CPU, fixed seed). (The SIGKILL variant of this test runs the other bundles
    in tests/bundles/test_reliability.py; here the crash is an exception raised after iteration 5, the middle of epoch 2: 6 images, batch 2.)
    """
    _, _, data = trained
    overrides = dict(
        dataset_dir=str(data),
        image_size=32,
        epochs=2,
        batch_size=2,
        num_workers=0,
        val_interval=1,
        sample_interval=5,
        sample_grid_size=2,
        num_inference_steps=2,
        ckpt_interval=1,
        **TINY_NET,
    )
    run(config_file=str(CONFIGS / "train.json"), bundle_root=str(tmp_path / "straight"), **overrides)

    def trainer(**extra):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser.update({"bundle_root": str(tmp_path / "crashed"), **overrides, **extra})
        parser.get_parsed_content("initialize")  # set_determinism(seed)
        return parser.get_parsed_content("train#trainer")

    first = trainer()

    @first.on(Events.ITERATION_COMPLETED(once=5))
    def crash(engine):
        raise _Crash("simulated crash")

    with pytest.raises(_Crash):
        first.run()
    last = torch.load(tmp_path / "crashed" / "models" / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 4 and not (tmp_path / "crashed" / "models" / "model.pt").exists()

    resumed, steps = trainer(resume=True), []
    resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: steps.append(e.state.iteration))
    resumed.run()
    assert steps == [5, 6], "the resumed run continues after the saved iteration instead of starting again"
    a = torch.load(tmp_path / "straight" / "models" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "crashed" / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
