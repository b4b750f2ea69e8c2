"""The distillation engine: stages, weighted named terms, frozen teacher, cache ≡ online, trainable loss_modules."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader

from common.data.synthetic import make_synthetic_dataset
from common.engines.distillation import (
    DistillationEvents,
    DistillationTrainer,
    LossTerm,
    Stage,
    collect_loss_modules,
    loss_terms,
)
from common.engines.teacher_cache import LoadTeacherCached, TeacherCache, fill_teacher_cache
from common.losses.baselines import KnowledgeDistillationLoss
from common.losses.iad import KnowledgeAssimilationLoss, SoftLabelDistillationLoss
from common.losses.segmentation import dice_ce_loss
from common.networks.sam_teacher import build_teacher
from common.networks.students import EfficientUNetStudent


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from monai.data import load_decathlon_datalist

    root = make_synthetic_dataset(tmp_path_factory.mktemp("engine") / "ds", num_items=(4, 1, 1), size=64)
    return load_decathlon_datalist(str(root / "datalist.json"), data_list_key="training")


def _loader(items, cache=None, batch_size=2):
    from monai.transforms import Compose, EnsureTyped, LoadImaged

    transforms = [LoadImaged(keys=["image", "label"], ensure_channel_first=True), EnsureTyped(keys=["image", "label"])]
    if cache is not None:
        transforms.append(LoadTeacherCached(cache))
    data = [Compose(transforms)(item) for item in items]
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def _trainer(student, teacher, loader, stages, **kwargs):
    loss_modules = collect_loss_modules(stages)
    params = list(student.parameters()) + list(loss_modules.parameters())
    return DistillationTrainer(
        device="cpu",
        train_data_loader=loader,
        network=student,
        teacher=teacher,
        stages=stages,
        loss_function=dice_ce_loss(3, 1.0, 1.0),
        optimizer=torch.optim.SGD(params, lr=0.01),
        **kwargs,
    )


def _kd_stage(epochs=1):
    return Stage("kd", epochs, {"kd": LossTerm(KnowledgeDistillationLoss(4.0), 0.5)}, gt_weight=1.0)


def test_loss_is_the_weighted_sum_of_named_terms_and_teacher_stays_frozen(task):
    torch.manual_seed(0)
    student, teacher = EfficientUNetStudent(3).eval(), build_teacher("test", image_size=64)
    teacher_state = copy.deepcopy(teacher.state_dict())
    stage = Stage(
        "kis",
        1,
        {"sld": LossTerm(SoftLabelDistillationLoss(), 0.2), "kd": LossTerm(KnowledgeDistillationLoss(4.0), 0.3)},
        gt_weight=0.8,
    )
    trainer = _trainer(student, teacher, _loader(task), [stage])
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(loss_terms(e.state.output)))
    trainer.run()
    assert len(seen) == 2 and set(seen[0]) == {"loss", "gt", "sld", "kd"}
    for t in seen:
        assert t["loss"] == pytest.approx(0.8 * t["gt"] + 0.2 * t["sld"] + 0.3 * t["kd"], rel=1e-5)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_stages_switch_and_kas_projections_train(task):
    torch.manual_seed(0)
    student = EfficientUNetStudent(3)
    kas = KnowledgeAssimilationLoss(student.feature_channels, 3)
    before = copy.deepcopy(kas.state_dict())
    stages = [
        _kd_stage(1),
        {"name": "kas", "epochs": 2, "terms": {"kas": LossTerm(kas, 0.1, ("student_logits", "student_features"))}},
    ]
    trainer = _trainer(student, build_teacher("test", image_size=64), _loader(task), stages)
    started, keys = [], []
    trainer.add_event_handler(DistillationEvents.STAGE_STARTED, lambda e: started.append(e.stage.name))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: keys.append(tuple(sorted(set(loss_terms(e.state.output)) - {"loss"})))
    )
    trainer.run()
    assert trainer.state.max_epochs == 3 and started == ["kd", "kas"]
    assert keys[0] == ("gt", "kd") and keys[-1] == ("gt", "kas_css", "kas_rfc")
    # running epoch means of the current stage's terms, for the epoch-level Stats/TensorBoard/MLflow logs
    assert {k for k in trainer.state.metrics if k.startswith("train_")} == {
        "train_loss", "train_gt", "train_kas_css", "train_kas_rfc"
    }  # fmt: skip
    assert collect_loss_modules(stages)["kas_kas"] is kas
    for k, v in before.items():
        assert not torch.equal(v, kas.state_dict()[k]), f"KAS projection {k} did not train"


def test_cached_teacher_gives_the_same_training_as_online(task, tmp_path):
    teacher = build_teacher("test", image_size=64).eval()
    cache = fill_teacher_cache(TeacherCache(tmp_path / "cache", teacher=teacher, image_size=64), task)
    results = []
    # batch 4 at 64 px: BatchNorm over a 1x1 bottleneck with batch 2 would amplify float noise into chaos
    for loader, t in ((_loader(task, batch_size=4), teacher), (_loader(task, cache, batch_size=4), None)):
        torch.manual_seed(0)
        student = EfficientUNetStudent(3)
        _trainer(student, t, loader, [_kd_stage(3)]).run()
        results.append(student.state_dict())
    for k, v in results[0].items():
        # float noise (teacher logits agree to ~1e-7) grows through BatchNorm statistics to ~1e-4 relative; a stale
        # or misaligned cache entry would change the run by orders of magnitude more
        assert torch.allclose(v.float(), results[1][k].float(), rtol=1e-3, atol=1e-4), k


def test_gradient_accumulation_steps_every_n_iterations(task):
    torch.manual_seed(0)
    student = EfficientUNetStudent(3)
    trainer = _trainer(student, None, _loader(task, batch_size=1), [Stage("student", 1)], accumulation_steps=2)
    weight = student.segmentation_head[0].weight
    snapshots = [weight.detach().clone()]
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: snapshots.append(weight.detach().clone()))
    trainer.run()
    changed = [not torch.equal(a, b) for a, b in zip(snapshots, snapshots[1:])]
    assert changed == [False, True, False, True]  # the optimiser steps after iterations 2 and 4 only


def test_teacher_and_student_class_counts_must_agree(task):
    from common.errors import InputError

    teacher = build_teacher("test", image_size=64, num_classes=4)
    with pytest.raises(InputError, match="the teacher outputs 4 classes and the student 3"):
        _trainer(EfficientUNetStudent(3), teacher, _loader(task), [_kd_stage(1)])
    # a student-only stage never compares them
    _trainer(EfficientUNetStudent(3), teacher, _loader(task), [Stage("student", 1)])


def test_cached_logits_that_do_not_fit_the_student_are_named(task, tmp_path):
    from common.errors import InputError

    teacher4 = build_teacher("test", image_size=64, num_classes=4).eval()
    cache = fill_teacher_cache(TeacherCache(tmp_path / "cache", teacher=teacher4, image_size=64), task)
    trainer = _trainer(EfficientUNetStudent(3), None, _loader(task, cache), [_kd_stage(1)])
    with pytest.raises(InputError, match=r"cached teacher logits .* of shape \(2, 4, 64, 64\) do not fit the "
                       r"student's logits \(2, 3, 64, 64\)"):  # fmt: skip
        trainer.run()


def _tskd_stage(epochs=1, gt_weight=0.0):
    from common.losses.tskd import FeatureAlignmentLoss

    terms = {
        "feat": LossTerm(FeatureAlignmentLoss(), 1.0, ["student_embedding", "teacher_embedding"]),
        "pred": LossTerm(
            SoftLabelDistillationLoss(resize="student_to_teacher"), 1.0, ["student_logits", "teacher_logits"]
        ),
    }
    return Stage("pretrain", epochs, terms, gt_weight=gt_weight)


def _unlabelled(items):
    return [{"image": item["image"]} for item in items]


def test_unlabelled_pretraining_from_cached_embeddings_matches_online(task, tmp_path):
    from monai.transforms import Compose, EnsureTyped, LoadImaged

    from common.networks.vit_student import build_vit_student

    teacher = build_teacher("test", image_size=64).eval()  # embedding 32 x 4 x 4, like the test student's neck
    images = _unlabelled(task)
    cache = fill_teacher_cache(
        TeacherCache(tmp_path / "cache", teacher=teacher, image_size=64, outputs=("logits", "embedding")), images
    )
    load = [LoadImaged(keys="image", ensure_channel_first=True), EnsureTyped(keys="image")]
    results, outputs = [], []
    for t, extra in ((teacher, []), (None, [LoadTeacherCached(cache)])):
        data = [Compose(load + extra)(item) for item in images]
        torch.manual_seed(0)
        student = build_vit_student(3, image_size=64, preset="test")
        trainer = _trainer(student, t, DataLoader(data, batch_size=2), [_tskd_stage(2)])
        trainer.run()
        results.append(student.state_dict())
        outputs.append(loss_terms(trainer.state.output))
    assert set(outputs[0]) == {"loss", "feat", "pred"}  # no ground-truth term on unlabelled data
    assert outputs[0] == pytest.approx(outputs[1], rel=1e-4)
    for k, v in results[0].items():
        assert torch.allclose(v, results[1][k], rtol=1e-4, atol=1e-5), k
    torch.manual_seed(0)
    initial = build_vit_student(3, image_size=64, preset="test").state_dict()
    for name in ("head.weight", "neck.0.weight", "vit.blocks.0.attn.qkv.weight"):  # both terms reach what they train
        assert not torch.equal(results[0][name], initial[name]), name


def test_unlabelled_batches_need_a_stage_without_ground_truth(task):
    from monai.transforms import Compose, EnsureTyped, LoadImaged

    from common.errors import InputError
    from common.networks.vit_student import build_vit_student

    teacher = build_teacher("test", image_size=64).eval()
    data = [Compose([LoadImaged(keys="image", ensure_channel_first=True), EnsureTyped(keys="image")])(i)
            for i in _unlabelled(task)]  # fmt: skip
    student = build_vit_student(3, image_size=64, preset="test")
    trainer = _trainer(student, teacher, DataLoader(data, batch_size=2), [_tskd_stage(1, gt_weight=1.0)])
    with pytest.raises(InputError, match="the batch has no 'label' but stage 'pretrain' needs one"):
        trainer.run()
