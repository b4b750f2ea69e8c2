"""FreezeEncoder (common/handlers/freeze.py) on a tiny fine-tuning: the ViT + neck do not move, even under AdamW's
weight decay, for the first N iterations while the decoder trains; then they train."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.handlers import LrScheduleHandler

from common.engines.distillation import DistillationTrainer
from common.handlers.freeze import FreezeEncoder
from common.handlers.resume import module_state
from common.losses.segmentation import dice_ce_loss
from common.networks.vit_student import build_vit_student
from common.optim import layer_decay_param_groups, warmup_poly_lr

FROZEN = 3


def _run(decay: float) -> dict:
    """Six iterations (two epochs of three batches) with the encoder frozen for the first three; returns the weights
    at the start, after iteration 3 and at the end, and the groups' lr seen by each optimiser step."""
    torch.manual_seed(0)
    net = build_vit_student(2, image_size=32, preset="test")
    data = [{"image": torch.rand(2, 1, 32, 32), "label": (torch.rand(2, 1, 32, 32) > 0.5).float()} for _ in range(3)]
    opt = torch.optim.AdamW(layer_decay_param_groups(net, 1e-2, decay), lr=1e-2, weight_decay=0.1)
    trainer = DistillationTrainer(
        device="cpu",
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=dice_ce_loss(2, 1.0, 1.0),
        stages=[{"name": "finetune", "epochs": 2}],
    )
    FreezeEncoder(net, FROZEN, opt).attach(trainer)
    LrScheduleHandler(warmup_poly_lr(opt, 6, warmup_iters=1), epoch_level=False, print_lr=False).attach(trainer)
    snapshot = lambda: {k: v.clone() for k, v in net.state_dict().items()}  # noqa: E731
    seen = {"start": snapshot(), "lrs": []}
    trainer.add_event_handler(
        Events.ITERATION_STARTED, lambda e: seen["lrs"].append([g["lr"] for g in opt.param_groups])
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=FROZEN), lambda e: seen.update(frozen=snapshot(), saved=set(module_state(net)))
    )
    trainer.run()
    seen["end"] = snapshot()
    return seen


def _moved(a: dict, b: dict, prefixes: tuple[str, ...]) -> list[bool]:
    """Whether each weight under ``prefixes`` differs (MONAI's unused ``norm_cross_attn`` never gets a gradient)."""
    return [not torch.equal(a[k], b[k]) for k in a if k.startswith(prefixes) and "norm_cross_attn" not in k]


@pytest.mark.parametrize("decay", [1.0, 0.5], ids=["one group", "layer decay groups"])
def test_the_encoder_is_bit_identical_for_n_iterations_then_trains(decay: float) -> None:
    seen = _run(decay)
    start, frozen, end = seen["start"], seen["frozen"], seen["end"]
    encoder = ("vit.", "neck.")
    assert not any(_moved(start, frozen, encoder))  # not even weight decay touched it
    assert seen["saved"] == set(start)  # a checkpoint written while frozen still holds the whole network
    assert any(_moved(start, frozen, ("decoder.", "head.")))  # while the decoder trained
    assert all(_moved(frozen, end, ("vit.blocks.", "neck.0.", "neck.2.")))  # then every encoder weight moves
    if decay < 1:  # the encoder's own groups had lr 0 at the frozen steps, their scheduled lr after
        assert all(lrs[:-2] == [0.0] * (len(lrs) - 2) for lrs in seen["lrs"][:FROZEN])
        assert all(lr > 0 for lrs in seen["lrs"][FROZEN:] for lr in lrs)


def test_zero_iterations_freezes_nothing_and_a_wrong_module_is_named() -> None:
    net = build_vit_student(2, image_size=32, preset="test")
    handler = FreezeEncoder(net, 0)
    assert all(p.requires_grad for p in net.parameters()) and handler.iterations == 0
    with pytest.raises(ValueError, match="no module \\['encoder'\\]"):
        FreezeEncoder(net, 2, modules=("encoder",))
