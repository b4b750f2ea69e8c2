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
    header, *rows = (bundle / "eval" / "metrics_per_case.csv").read_text().splitlines()
    # the foreground counts come after the usual columns (a run that predicts background everywhere has pred_sum 0)
    assert header.endswith(",subject,pred_sum_class1,pred_sum_class2,label_sum_class1,label_sum_class2")
    assert all(float(v) >= 0 and float(v).is_integer() for row in rows for v in row.split(",")[-4:])

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


def _parser(*names: str, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_cfg(*names))
    parser.update(overrides)
    return parser


def test_train_json_is_teacher_free_and_the_remedies_are_off_by_default(setup):
    root, _, o, _ = setup
    parser = _parser("train.json", bundle_root=str(root / "defaults"), pretrained="$None", **o)
    assert not [k for k in parser.get() if k.startswith("teacher")]
    assert parser.get("freeze_encoder_iters") == 0 and parser.get("layer_decay") == 1.0
    assert parser.get("finetune_distill_weight") == 0.0 and parser.get("label_budget") is None
    assert parser.get_parsed_content("stages")[0]["terms"] == {}  # no distillation term, so no teacher needed
    optimizer = parser.get_parsed_content("optimizer")
    assert len(optimizer.param_groups) == 1  # the single group of before
    # a weight > 0 without finetune_distill.json is an error, not a silently ignored option
    with pytest.raises(Exception) as err:
        run(config_file=_cfg("train.json"), bundle_root=str(root / "no_teacher"), pretrained="$None", iterations=1,
            finetune_distill_weight=0.5, **o)  # fmt: skip
    causes = [err.value]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    assert any("needs ['teacher_logits'] but there is no teacher" in str(c) for c in causes)


def test_finetune_distill_keeps_train_json_preprocessing_and_pretrain_teacher():
    """The variant adds the teacher of pretrain.json (same ids, same values) and the cached logits to the fine-tuning
    preprocessing, which is train.json's otherwise: they cannot drift apart."""
    train, variant, pretrain = (json.loads((CONFIGS / n).read_text()) for n in ("train.json", "finetune_distill.json",
                                                                                  "pretrain.json"))  # fmt: skip
    for key, value in variant.items():
        if key.startswith("teacher") and key in pretrain and key != "teacher_cache":
            assert value == pretrain[key], key
    assert {k: v for k, v in variant["teacher_cache"].items() if k != "outputs"} == {
        k: v for k, v in pretrain["teacher_cache"].items() if k != "outputs"
    }
    assert variant["fill_teacher_cache"] == pretrain["fill_teacher_cache"]

    def without_teacher(transform: dict) -> dict:
        t = {k: v for k, v in transform.items() if k != "allow_missing_keys"}
        if isinstance(t.get("keys"), list) and "teacher_logits" in t["keys"]:
            i = t["keys"].index("teacher_logits")
            for k in ("keys", "mode", "padding_mode"):
                if isinstance(t.get(k), list):
                    t[k] = t[k][:i] + t[k][i + 1 :]
            t["padding_mode"] = (
                t["padding_mode"][0] if isinstance(t.get("padding_mode"), list) else t.get("padding_mode")
            )
            t = {k: v for k, v in t.items() if v is not None}
        return t

    ours = [
        without_teacher(t) for t in variant["train#preprocessing"]["transforms"] if "teacher_cache" not in t["_target_"]
    ]
    assert ours == train["train"]["preprocessing"]["transforms"]


def test_patch_8_pretraining_then_a_frozen_layer_decayed_finetuning_on_a_subject_budget(setup):
    root, transfer, o, t = setup
    bundle = root / "patch8"
    run(config_file=_cfg("pretrain.json"), bundle_root=str(bundle), transfer_dirs=[str(transfer)], iterations=2,
        patch_size=8, **o, **t)  # fmt: skip
    state = torch.load(bundle / "models" / "pretrain" / "pretrained.pt", weights_only=True)
    assert state["vit.patch_embedding.patch_embeddings.weight"].shape[-1] == 8
    run(config_file=_cfg("train.json"), bundle_root=str(bundle), iterations=2, patch_size=8, label_budget=2,
        budget_seed=1, freeze_encoder_iters=2, layer_decay=0.5, **o)  # fmt: skip
    ckpt = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2  # one batch per epoch: the 2 labelled subjects of 5
    encoder = [k for k in state if k.startswith(("vit.", "neck."))]
    assert all(torch.equal(ckpt["model"][k], state[k]) for k in encoder)  # frozen for both iterations
    assert not torch.equal(ckpt["model"]["head.weight"], state["head.weight"])  # the decoder trained
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["embeddings", "block_0", "block_1", "neck", "decoder"]
    assert [g["lr_scale"] for g in groups] == [0.125, 0.25, 0.5, 1.0, 1.0]


def test_finetuning_with_the_distillation_term_reads_the_teacher_cache(setup):
    root, _, o, t = setup
    bundle = root / "finetune_distill"
    torch.manual_seed(0)
    from common.networks.vit_student import build_vit_student

    torch.save(build_vit_student(3, image_size=64, preset="test").state_dict(), root / "student.pt")
    run(config_file=_cfg("train.json", "finetune_distill.json"), bundle_root=str(bundle), iterations=2,
        pretrained=str(root / "student.pt"), finetune_distill_weight=0.5, teacher_lora_rank=0, **o, **t)  # fmt: skip
    assert {"train_gt", "train_pred"} <= _scalars(bundle / "outputs")  # L_gt and the prediction term, logged apart
    assert len(list((root / "teacher_cache").glob("*/*.pt"))) >= 5  # every training image's teacher logits
    parser = _parser("train.json", "finetune_distill.json", bundle_root=str(bundle), finetune_distill_weight=0.5,
                     **o, **t)  # fmt: skip
    term = parser.get_parsed_content("stages")[0]["terms"]["pred"]
    assert term.weight == 0.5 and list(term.inputs) == ["student_logits", "teacher_logits"]
    assert term.loss.resize == "student_to_teacher" and term.loss.logit_norm == "auto"
