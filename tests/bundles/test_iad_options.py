"""The iad_student options of issue "Distillation that pays": label budgets by subject with the rest of the training
subjects as unlabelled images (teacher pseudo-labels, L_gt on labelled images only), the scale guard, warm start and
a frozen encoder, and teacher logits warped with border padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, run

from common.data.datalist import subject_budget, training_items
from common.data.transforms import PseudoLabeld
from common.errors import DataError
from common.networks.students import EfficientUNetStudent
from tests.conftest import tiny_distillation_task

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "iad_student" / "configs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("iad_options")
    return root, tiny_distillation_task(root, num_items=(6, 2, 2))


def _parser(configs: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update(overrides)
    return parser


def test_label_budgets_are_nested_subjects_and_deterministic(setup):
    _, o = setup
    items = json.loads((Path(o["dataset_dir"]) / "datalist.json").read_text())["training"]
    two, rest = subject_budget(items, 2, seed=0)
    four, _ = subject_budget(items, 4, seed=0)
    assert len(two) == 2 and len(rest) == 4 and {i["subject"] for i in two} <= {i["subject"] for i in four}
    assert subject_budget(items, 2, seed=0) == (two, rest)
    assert {i["subject"] for i in subject_budget(items, 2, seed=1)[0]} != {i["subject"] for i in two}
    with pytest.raises(DataError, match="label_budget must be between 1 and the 6"):
        subject_budget(items, 7)


def test_unlabelled_rest_mixes_labelled_and_unlabelled_items(setup):
    _, o = setup
    items = training_items(o["dataset_dir"], 3, label_budget=2, unlabelled="rest", labelled_fraction=0.5)
    labelled = [i for i in items if "label" in i]
    unlabelled = [i for i in items if "label" not in i]
    assert len(unlabelled) == 4 and len(labelled) == 4  # 2 labelled items repeated twice: half the list
    assert not {i["image"] for i in unlabelled} & {i["image"] for i in labelled}


def test_pseudo_label_is_the_teachers_argmax():
    logits = torch.zeros(3, 2, 2)
    logits[2, 0, 0] = 5.0
    logits[1, 1, 1] = 2.0
    out = PseudoLabeld()({"image": torch.zeros(1, 2, 2), "teacher_logits": logits})
    assert out["labelled"] == 0.0 and out["label"].tolist() == [[[2.0, 0.0], [0.0, 1.0]]]
    assert PseudoLabeld()({"image": torch.zeros(1, 2, 2), "label": torch.ones(1, 2, 2)})["labelled"] == 1.0
    with pytest.raises(DataError, match="no label and no cached teacher logits"):
        PseudoLabeld()({"image": torch.zeros(1, 2, 2)})


def test_budget_run_trains_with_pseudo_labels(setup):
    """A run with 2 labelled subjects and the 4 others unlabelled: the teacher cache covers all 6 images, and
    every term trains."""
    root, o = setup
    bundle = root / "budget"
    run(config_file=[str(CONFIGS / "train.json")], bundle_root=str(bundle), epochs=2, kis_epochs=1,
        label_budget=2, unlabelled="rest", **{**o, "teacher_cache_dir": str(root / "cache_budget")})  # fmt: skip
    last = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2 * 4  # 8 items (2 labelled x 2 + 4 unlabelled), batch 2, 2 epochs
    assert len(list((root / "cache_budget").glob("*/*.pt"))) == 6


def test_scale_guard_fires_on_raw_sam_scale_logits_only(setup):
    """The guard warns when raw teacher logits of SAM's scale make L_sld swamp L_gt, not when they are z-scored."""
    from common.handlers.scale_guard import LossScaleGuard

    root, o = setup
    warnings = {}
    for norm in ("none", "auto"):
        parser = _parser(["train.json", "kis_only.json"], bundle_root=str(root / f"guard_{norm}"), epochs=1,
                         logit_norm=norm, **{**o, "teacher_mode": "online"})  # fmt: skip
        parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        guard = next(h for h in parser.get_parsed_content("train#handlers") if isinstance(h, LossScaleGuard))
        forward = trainer.teacher.forward_features  # a teacher with logits of SAM's scale (a std of 30)
        trainer.teacher.forward_features = lambda x, f=forward: {k: (v / v.std() * 30.0 if k == "logits" else v)
                                                                 for k, v in f(x).items()}  # fmt: skip
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.terminate())
        trainer.run()
        warnings[norm] = guard.warnings
    assert any("loss term 'sld'" in w and "logit_norm" in w for w in warnings["none"])
    assert not warnings["auto"]


def test_warm_start_and_frozen_encoder(tmp_path):
    torch.manual_seed(0)
    alone = EfficientUNetStudent(2)
    torch.save({"model": alone.state_dict()}, tmp_path / "model.pt")
    student = EfficientUNetStudent(2, checkpoint=str(tmp_path / "model.pt"), freeze_encoder=True).train()
    assert all(torch.equal(v, alone.state_dict()[k]) for k, v in student.state_dict().items())
    encoder = {k: v.clone() for k, v in student.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in student.decoder.state_dict().items()}
    optimiser = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    student(torch.rand(2, 1, 64, 64)).mean().backward()
    optimiser.step()
    assert all(torch.equal(v, encoder[k]) for k, v in student.encoder.state_dict().items())  # weights and BN stats
    assert any(not torch.equal(v, decoder[k]) for k, v in student.decoder.state_dict().items())


def test_teacher_logits_are_warped_with_border_padding(setup):
    """Rotating an image pads it with zeros, its cached teacher logits with their border values: corners keep the
    teacher's prediction instead of zero logits (a uniform prediction)."""
    root, o = setup
    parser = _parser(["train.json"], bundle_root=str(root / "pad"), **o)
    affine = next(
        t for t in parser.get_parsed_content("train#preprocessing").transforms if type(t).__name__ == "RandAffined"
    )
    affine.set_random_state(0)
    affine.prob = 1.0
    data = {
        "image": torch.ones(1, 32, 32),
        "label": torch.ones(1, 32, 32),
        "teacher_logits": torch.full((3, 32, 32), 5.0),
    }
    out = affine(data)
    assert float(out["image"].min()) < 0.5  # the image's corners are padded with zeros
    assert float(out["teacher_logits"].min()) == pytest.approx(5.0)  # the constant logits stay constant


def test_self_kd_distils_from_a_saved_student_and_refuses_a_missing_one(setup):
    """The control row: the teacher is the saved student alone (equal weights, its logits on the image resized as the
    student sees it are the cached ones; the 64-px images train at 32 px here, as HC18's 800 x 540 ones at 128), no
    SAM; without --self_teacher_ckpt the run stops with one line saying which option is missing."""
    from common.engines.teacher_cache import _loading_part
    from common.errors import CheckpointError, _find_input_error

    root, o = setup
    torch.manual_seed(0)
    alone = EfficientUNetStudent(3).eval()
    torch.save({"model": alone.state_dict()}, root / "alone.pt")
    cache = root / "cache_self"
    overrides = {**o, "teacher_cache_dir": str(cache), "image_size": 32}
    bundle = root / "self_kd"
    run(config_file=[str(CONFIGS / c) for c in ("train.json", "kd.json", "self_kd.json")], bundle_root=str(bundle),
        epochs=1, label_budget=2, unlabelled="rest", self_teacher_ckpt=str(root / "alone.pt"), **overrides)  # fmt: skip
    parser = _parser(["train.json", "kd.json", "self_kd.json"], bundle_root=str(bundle),
                     self_teacher_ckpt=str(root / "alone.pt"), **overrides)  # fmt: skip
    teacher = parser.get_parsed_content("teacher_def")
    assert all(torch.equal(v, alone.state_dict()[k]) for k, v in teacher.student.state_dict().items())
    entries = sorted(cache.glob("*/*.pt"))
    assert len(entries) == 6  # every training image, labelled or not
    prepare = _loading_part(parser.get_parsed_content("train#preprocessing"))  # what the cache is keyed on
    image = torch.as_tensor(prepare(dict(parser.get_parsed_content("train#datalist")[0]))["image"]).float()
    image = image.as_subclass(torch.Tensor)
    assert image.shape[1:] == (64, 64)
    with torch.no_grad():  # Resized's bilinear is this interpolation
        expected = alone(torch.nn.functional.interpolate(image[None], size=(32, 32), mode="bilinear"))[0]
    cached = parser.get_parsed_content("teacher_cache").load(image)
    assert cached is not None and torch.allclose(cached["logits"], expected, atol=1e-5)
    with pytest.raises(RuntimeError) as info:  # MONAI wraps it; the CLI's excepthook prints the CheckpointError
        _parser(["train.json", "kd.json", "self_kd.json"], **o).get_parsed_content("teacher_def")
    error = _find_input_error(info.value)
    assert isinstance(error, CheckpointError) and "self_kd.json needs --self_teacher_ckpt" in str(error)


def test_fold_selects_the_cross_validation_split_in_the_student_and_teacher_bundles(tmp_path):
    """``--fold k`` on a datalist of fold lists: training reads the other folds, validation ``fold_{k+1}``, the
    teacher cache the training images — in the student, the teacher and the teacher's cache fill alike."""
    from common.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", num_items=(6, 1, 1), size=16)
    items = json.loads((data / "datalist.json").read_text())["training"]
    folds = {f"fold_{k}": [{**i, "subject": f"p{k}"} for i in items[2 * k : 2 * k + 2]] for k in range(3)}
    (data / "datalist.json").write_text(json.dumps(folds))
    teacher_configs = REPO / "bundles" / "teacher_lora" / "configs"
    common = {"dataset_dir": str(data), "bundle_root": str(tmp_path / "b"), "fold": 1}
    for configs in ([CONFIGS / "train.json"], [teacher_configs / "train.json"]):
        parser = ConfigParser()
        parser.read_config([str(c) for c in configs])
        parser.update(common)
        assert {i["subject"] for i in parser.get_parsed_content("train#datalist")} == {"p0"}  # not test p1, val p2
        assert {i["subject"] for i in parser.get_parsed_content("validate#datalist")} == {"p2"}
    parser = ConfigParser()
    parser.read_config([str(teacher_configs / "inference.json"), str(teacher_configs / "cache.json")])
    parser.update(common)
    assert [i["image"] for i in parser.get_parsed_content("datalist")] == [
        str(data / i["image"]) for i in folds["fold_0"]
    ]
