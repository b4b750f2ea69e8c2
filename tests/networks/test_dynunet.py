"""Tests for the DynUNet teacher and students of ReCo-KD (common/networks/dynunet.py); tiny 3D inputs only."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet

from common.errors import CheckpointError, InputError
from common.networks.dynunet import DynUNetSegmenter, build_dynunet, divided_filters
from common.profiling import count_parameters

TINY = [8, 16, 32]


def test_divided_filters_halve_every_stage_with_a_floor_of_8() -> None:
    nnunet = [32, 64, 128, 256]
    assert divided_filters(nnunet, 1) == nnunet
    assert divided_filters(nnunet, 2) == [16, 32, 64, 128]
    assert divided_filters(nnunet, 4) == [8, 16, 32, 64]
    assert divided_filters(nnunet, 8) == [8, 8, 16, 32]
    with pytest.raises(InputError):
        divided_filters(nnunet, 3)


def test_forward_features_stages_and_deep_supervision() -> None:
    torch.manual_seed(0)
    net = build_dynunet(3, filters=[8, 16, 32, 64]).train()
    x = torch.randn(2, 1, 16, 16, 8)
    out = net.forward_features(x)
    assert out["logits"].shape == (2, 3, 16, 16, 8)
    assert net.feature_channels == [8, 16, 32]
    assert [tuple(f.shape) for f in out["features"]] == [(2, 8, 16, 16, 8), (2, 16, 8, 8, 4), (2, 32, 4, 4, 2)]
    assert [tuple(h.shape) for h in out["deep_supervision"]] == [(2, 3, 8, 8, 4), (2, 3, 4, 4, 2)]
    # the features are the encoder blocks' own outputs
    stage0 = net.input_block(x)
    assert torch.allclose(out["features"][0], stage0, atol=1e-6)
    assert torch.allclose(out["features"][1], net.downsamples[0](stage0), atol=1e-6)


def test_forward_is_monai_main_output_in_train_and_eval() -> None:
    torch.manual_seed(0)
    net = build_dynunet(3, filters=TINY)
    x = torch.randn(1, 1, 8, 8, 8)
    net.train()
    stacked = DynUNet.forward(net, x)  # MONAI: (B, 1 + heads, K, ...) in training mode
    assert torch.allclose(net(x), stacked[:, 0], atol=1e-6)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), DynUNet.forward(net, x))
        assert net.forward_features(x)["deep_supervision"] == []


def test_student_width_and_parameter_count() -> None:
    teacher, student = build_dynunet(3), build_dynunet(3, width_divisor=4)
    assert teacher.filters == [32, 64, 128, 256] and student.filters == [8, 16, 32, 64]
    assert count_parameters(student) < count_parameters(teacher) / 10


def test_rejects_sizes_that_are_not_multiples_of_the_total_stride() -> None:
    net = build_dynunet(3, filters=TINY)  # two downsamplings: multiples of 4
    with pytest.raises(InputError):
        net(torch.randn(1, 1, 8, 8, 6))


def test_checkpoint_loads_strictly_and_names_a_width_mismatch(tmp_path) -> None:
    torch.manual_seed(0)
    teacher = build_dynunet(3, filters=TINY)
    torch.save({"model": teacher.state_dict()}, tmp_path / "model.pt")  # as ignite's CheckpointSaver writes it
    loaded = build_dynunet(3, filters=TINY, checkpoint=tmp_path / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), teacher.state_dict().values()))
    with pytest.raises(CheckpointError, match="width_divisor 2"):
        build_dynunet(3, filters=TINY, width_divisor=2, checkpoint=tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="not found"):
        build_dynunet(3, filters=TINY, checkpoint=tmp_path / "missing.pt")


def test_is_a_dynunet_with_instance_norm() -> None:
    net = build_dynunet(2, filters=TINY)
    assert isinstance(net, DynUNetSegmenter) and isinstance(net, DynUNet)
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())
    assert net.num_classes == 2
