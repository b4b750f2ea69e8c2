"""Layer-wise lr decay (common/optim.py): the lr of every parameter group by hand, the schedule on top of it, and
decay 1 as the plain optimiser of before."""

from __future__ import annotations

import pytest
import torch

from common.networks.vit_student import build_vit_student
from common.optim import layer_decay_param_groups, warmup_poly_lr


def test_each_group_gets_its_decayed_lr() -> None:
    net = build_vit_student(3, image_size=32, preset="test")  # L = 2 blocks
    groups = layer_decay_param_groups(net, lr=1.0, decay=0.5)
    lrs = {g["name"]: g["lr"] for g in groups}
    # embeddings 0.5^(L+1), block 0 0.5^L, block 1 0.5^(L-1), then the full lr after the blocks
    assert lrs == {"embeddings": 0.125, "block_0": 0.25, "block_1": 0.5, "neck": 1.0, "decoder": 1.0}
    names = {id(p): n for n, p in net.named_parameters()}
    members = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert all(n.startswith("vit.patch_embedding.") for n in members["embeddings"])
    for i in (0, 1):
        assert members[f"block_{i}"] == {n for n in names.values() if n.startswith(f"vit.blocks.{i}.")}
    assert {n.rsplit(".", 1)[0] for n in members["neck"]} == {"vit.norm", "neck.0", "neck.1", "neck.2", "neck.3"}
    assert {n.split(".")[0] for n in members["decoder"]} == {"decoder", "head"}
    # every parameter in exactly one group
    flat = [id(p) for g in groups for p in g["params"]]
    assert sorted(flat) == sorted(id(p) for p in net.parameters())


def test_the_schedule_scales_every_group_alike() -> None:
    net = build_vit_student(3, image_size=32, preset="test")
    opt = torch.optim.AdamW(layer_decay_param_groups(net, lr=1e-3, decay=0.5), lr=1e-3)
    sched = warmup_poly_lr(opt, total_iters=10, warmup_iters=4, power=1.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * s / 4 for s in (0.125, 0.25, 0.5, 1, 1)])
    for _ in range(5):
        opt.step()
        sched.step()
    factor = 1 - 1 / 6  # iteration 5: one of the 6 decay steps done
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * s * factor for s in (0.125, 0.25, 0.5, 1, 1)])


def test_decay_1_is_the_plain_optimiser() -> None:
    net = build_vit_student(3, image_size=32, preset="test")
    groups = layer_decay_param_groups(net, lr=5e-4, decay=1.0)
    assert len(groups) == 1 and groups[0]["lr"] == 5e-4
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in net.parameters()]
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        layer_decay_param_groups(net, lr=1.0, decay=1.5)
    with pytest.raises(ValueError, match="no.*blocks|none found"):
        layer_decay_param_groups(torch.nn.Linear(2, 2), lr=1.0, decay=0.5)
