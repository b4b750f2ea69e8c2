"""The tskd_student bundle through ``monai.bundle``: pre-training on an unlabelled transfer set, fine-tuning (from the
pre-trained student, from scratch, with a label budget), evaluation and inference, on a tiny synthetic task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import run, verify_net_in_out
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.data.synthetic import make_synthetic_dataset
from common.errors import CheckpointError
from tests.conftest import tiny_distillation_task

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "tskd_student" / "configs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A labelled 64-px task, an unlabelled 'transfer set' folder (images only) and a random tiny SAM teacher."""
    root = tmp_path_factory.mktemp("tskd")
    o = tiny_distillation_task(root, (5, 2, 2), adapter=False, student_preset="test")
    transfer = make_synthetic_dataset(root / "transfer", num_items=(4, 1, 1), size=64, seed=1)
    datalist = json.loads((transfer / "datalist.json").read_text())  # drop the labels: a real transfer set has none
    (transfer / "datalist.json").write_text(
        json.dumps({"training": [{"image": i["image"]} for i in datalist["training"]]})
    )
    teacher_keys = ("teacher_arch", "teacher_ckpt", "teacher_image_size", "teacher_cache_dir")
    teacher = {k: o.pop(k) for k in teacher_keys}
    common = o
    return root, transfer, common, teacher


def _cfg(*names: str) -> list[str]:
    return [str(CONFIGS / n) for n in names]


def _scalars(log_dir: Path) -> set[str]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_pretrain_then_finetune_evaluate_and_infer(setup):
    root, transfer, o, t = setup
    bundle = root / "tskd"
    run(config_file=_cfg("pretrain.json"), bundle_root=str(bundle), transfer_dirs=[str(transfer)], iterations=4,
        **o, **t)  # fmt: skip
    pretrained = bundle / "models" / "pretrain" / "pretrained.pt"
    last = torch.load(bundle / "models" / "pretrain" / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 4  # 2 epochs of the 4 unlabelled images in batches of 2
    assert {"train_feat", "train_pred", "val_mean_dice"} <= _scalars(bundle / "outputs" / "pretrain")
    assert list((root / "teacher_cache").glob("*/*.pt")), "the teacher's logits and embeddings were cached"
    state = torch.load(pretrained, weights_only=True)

    # fine-tuning starts from the pre-trained student: the network the config builds holds exactly those weights
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_cfg("train.json"))
    parser.update({"bundle_root": str(bundle), **o})
    built = parser.get_parsed_content("network_def")
    assert all(torch.equal(v, built.state_dict()[k]) for k, v in state.items())

    run(config_file=_cfg("train.json"), bundle_root=str(bundle), iterations=4, num_labels=4, **o)
    ckpt = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 4 and (bundle / "models" / "model.pt").is_file()
    assert not torch.equal(ckpt["model"]["head.weight"], state["head.weight"])  # fine-tuning trained it

    run(config_file=_cfg("train.json", "evaluate.json"), bundle_root=str(bundle), **o)
    summary = json.loads((bundle / "eval" / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2 and set(summary["classes"]) == {"class1", "class2"}

    run(config_file=_cfg("inference.json"), bundle_root=str(bundle), dataset_dir=o["dataset_dir"], image_size=64,
        num_workers=0, student_preset="test")  # fmt: skip
    assert len(list((bundle / "predictions").glob("*_seg.nii.gz"))) == 2


def test_task_agnostic_pretraining_uses_the_feature_term_only(setup):
    root, transfer, o, t = setup
    bundle = root / "task_agnostic"
    run(config_file=_cfg("pretrain.json", "task_agnostic.json"), bundle_root=str(bundle),
        transfer_dirs=[str(transfer)], iterations=2, **o, **t)  # fmt: skip
    tags = _scalars(bundle / "outputs" / "pretrain")
    assert "train_feat" in tags and "train_pred" not in tags
    assert (bundle / "models" / "pretrain" / "pretrained.pt").is_file()


def test_from_scratch_with_a_label_budget(setup):
    root, _, o, _ = setup
    bundle = root / "scratch"
    run(config_file=_cfg("train.json"), bundle_root=str(bundle), pretrained="$None", iterations=2, num_labels=2, **o)
    ckpt = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2  # 1 epoch of the 2 labelled images, not of all 5
    # a missing pre-trained student is an error naming the file, not a silent training from scratch
    with pytest.raises(Exception) as err:
        run(config_file=_cfg("train.json"), bundle_root=str(root / "nothing"), iterations=2, **o)
    causes = [err.value]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    assert isinstance(causes[-1], CheckpointError)
    assert "pre-trained student not found" in str(causes[-1]) and "--pretrained '$None'" in str(causes[-1])


def test_inference_config_verifies():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=1,
        any=1,
        device="cpu",
        student_preset="test",
    )
