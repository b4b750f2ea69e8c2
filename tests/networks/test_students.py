"""Tests for the EfficientNet-B1 U-Net student (common/networks/students.py); tiny CPU inputs only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import verify_net_in_out
from monai.networks.nets import EfficientNetBN, FlexibleUNet
from monai.transforms import Resized

from common.errors import CheckpointError, InputError
from common.networks.students import EfficientUNetStudent, adapt_stem_weight, trained_student

# B1, K=3, 2D: encoder 6,100,448 + decoder 1,771,584 + head 435 (MONAI 1.6.1; the dropped classifier head of the
# encoder would add 1,693,160 more).
B1_K3_PARAMS = 7_872_467


@pytest.fixture(scope="module")
def student() -> EfficientUNetStudent:
    torch.manual_seed(0)
    return EfficientUNetStudent(num_classes=3)


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised MONAI EfficientNetBN-B1 (3 input channels), standing in for ImageNet."""
    torch.manual_seed(1)
    return EfficientNetBN("efficientnet-b1", pretrained=False, in_channels=3).state_dict()


def _release_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename MONAI's nested ``_blocks.<stage>.<i>.`` keys to the efficientnet-pytorch release's ``_blocks.<i>.``."""
    return {re.sub(r"^_blocks\.\d+\.(\d+\..+)$", r"_blocks.\1", k): v for k, v in state.items()}


@pytest.mark.parametrize("num_classes", [3, 1])
def test_logits_shape(num_classes: int) -> None:
    net = EfficientUNetStudent(num_classes=num_classes).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 96)).shape == (2, num_classes, 64, 96)


def test_forward_features_match_forward_and_monai(student: EfficientUNetStudent) -> None:
    student.eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        out = student.forward_features(x)
        logits = student(x)
        monai_logits = FlexibleUNet.forward(student, x)  # MONAI's own forward on the same modules
        deepest = student.encoder(x)[-1]
    assert torch.equal(out["logits"], logits)
    assert torch.equal(out["logits"], monai_logits)
    assert student.feature_channels == 320
    assert out["features"].shape == (2, student.feature_channels, 64 // 32, 96 // 32)
    assert torch.equal(out["features"], deepest)


def test_gradients_reach_encoder_and_decoder(student: EfficientUNetStudent) -> None:
    student.train()
    student.zero_grad()
    out = student.forward_features(torch.randn(2, 1, 64, 64))
    (out["logits"].square().mean() + out["features"].square().mean()).backward()
    for name in (
        "encoder._conv_stem.weight",
        "decoder.blocks.0.convs.conv_0.conv.weight",
        "segmentation_head.0.weight",
    ):
        grad = student.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in student.parameters())  # no unused parameters (DDP-safe)
    student.zero_grad()


def test_parameter_count(student: EfficientUNetStudent) -> None:
    assert sum(p.numel() for p in student.parameters()) == B1_K3_PARAMS
    assert not hasattr(student.encoder, "_fc")


@pytest.mark.parametrize("key_style", ["monai", "release"])
def test_imagenet_weights_load_into_encoder(
    tmp_path: Path, imagenet_state: dict[str, torch.Tensor], key_style: str
) -> None:
    state = imagenet_state if key_style == "monai" else _release_keys(imagenet_state)
    path = tmp_path / "efficientnet-b1-fake.pth"
    torch.save(state, path)
    net = EfficientUNetStudent(num_classes=2, pretrained_path=str(path))
    enc = net.encoder.state_dict()
    assert torch.equal(enc["_blocks.3.8._expand_conv.weight"], imagenet_state["_blocks.3.8._expand_conv.weight"])
    assert torch.equal(enc["_blocks.6.22._bn2.running_var"], imagenet_state["_blocks.6.22._bn2.running_var"])
    assert torch.equal(enc["_bn0.weight"], imagenet_state["_bn0.weight"])
    rgb_stem = imagenet_state["_conv_stem.weight"]
    assert torch.allclose(enc["_conv_stem.weight"], rgb_stem.sum(dim=1, keepdim=True))


def test_stem_adaptation_for_other_channel_counts() -> None:
    rgb = torch.randn(32, 3, 3, 3)
    assert torch.equal(adapt_stem_weight(rgb, 3), rgb)
    four = adapt_stem_weight(rgb, 4)
    assert four.shape == (32, 4, 3, 3)
    assert torch.allclose(four[:, 3], rgb[:, 0] * 0.75)


def test_bad_weights_files_raise(tmp_path: Path, imagenet_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        EfficientUNetStudent(num_classes=2, pretrained_path=str(tmp_path / "missing.pth"))
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, unrelated)
    with pytest.raises(CheckpointError, match="does not fit"):
        EfficientUNetStudent(num_classes=2, pretrained_path=str(unrelated))
    wrong_shape = tmp_path / "wrong_shape.pth"
    assert "_blocks.1.2._bn0.weight" in imagenet_state
    torch.save({**imagenet_state, "_blocks.1.2._bn0.weight": torch.zeros(7)}, wrong_shape)
    with pytest.raises(CheckpointError, match="_blocks.1.2._bn0.weight"):
        EfficientUNetStudent(num_classes=2, pretrained_path=str(wrong_shape))
    with pytest.raises(CheckpointError, match="spatial_dims=2"):
        EfficientUNetStudent(num_classes=2, spatial_dims=3, pretrained_path=str(wrong_shape))


def test_verify_net_in_out(tmp_path: Path) -> None:
    """MONAI's bundle check on a config using ``EfficientUNetStudent``, plus the (1, 1, 96, 96) -> (1, K, 96, 96) shape."""
    config = {"network_def": {"_target_": "common.networks.students.EfficientUNetStudent", "num_classes": 3}}
    image = {"type": "image", "num_channels": 1, "spatial_shape": ["32*n", "32*n"], "dtype": "float32"}
    meta = {"network_data_format": {"inputs": {"image": image}, "outputs": {"pred": {"num_channels": 3}}}}
    meta["network_data_format"]["outputs"]["pred"].update(type="image", dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(tmp_path / "metadata.json"),
        config_file=str(tmp_path / "config.json"),
        device="cpu",
        n=3,
    )
    net = EfficientUNetStudent(num_classes=3).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 96, 96)).shape == (1, 3, 96, 96)


def test_rejects_sizes_not_multiple_of_32(student: EfficientUNetStudent) -> None:
    with pytest.raises(InputError, match="multiple of 32"):
        student(torch.zeros(1, 1, 80, 64))


def test_student_takes_config_values() -> None:
    net = EfficientUNetStudent(
        num_classes=2, in_channels=3, decoder_channels=[64, 32, 16, 16, 8], norm=["instance", {}]
    )
    assert isinstance(net, EfficientUNetStudent)
    assert net.encoder._conv_stem.in_channels == 3
    assert net.segmentation_head[0].in_channels == 8
    assert isinstance(net.decoder.blocks[0].convs.conv_0.adn.N, torch.nn.InstanceNorm2d)


def test_3d_student_on_tiny_volume() -> None:
    net = EfficientUNetStudent(num_classes=2, spatial_dims=3).eval()
    with torch.no_grad():
        out = net.forward_features(torch.randn(1, 1, 32, 32, 32))
    assert out["logits"].shape == (1, 2, 32, 32, 32)
    assert out["features"].shape == (1, 320, 1, 1, 1)


def test_torchscript_export_matches_eager(student: EfficientUNetStudent) -> None:
    """Bundle export (``ckpt_export``) scripts the network; MONAI's EfficientNet needs the plain swish for that."""
    student.eval()
    student.encoder.set_swish(memory_efficient=False)
    try:
        scripted = torch.jit.script(student)
        x = torch.randn(1, 1, 32, 32)
        with torch.no_grad():
            assert torch.allclose(scripted(x), student(x))
    finally:
        student.encoder.set_swish(memory_efficient=True)


def test_encoder_batchnorm_momentum_is_configurable():
    """MONAI's EfficientNet keeps TF's 0.01; short trainings need faster running statistics (0.1 by default)."""
    momenta = lambda net: {m.momentum for m in net.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta(EfficientUNetStudent(3)) == {0.1}
    assert momenta(EfficientUNetStudent(3, encoder_bn_momentum=0.01)) == {0.01}


def test_trained_student_as_teacher_sees_images_as_the_student_does(tmp_path: Path) -> None:
    """self_kd's teacher takes an image of any size (HC18's are 800 x 540, not multiples of 32) and returns exactly
    the saved student's logits on that image resized as the training preprocessing resizes it (bilinear Resized)."""
    torch.manual_seed(0)
    saved = EfficientUNetStudent(2).eval()
    torch.save({"model": saved.state_dict()}, tmp_path / "model.pt")
    teacher = trained_student(2, 1, tmp_path / "model.pt", image_size=64).eval()
    image = torch.randn(1, 100, 70)
    resized = Resized("image", (64, 64), mode="bilinear")({"image": image})["image"].as_tensor()
    with torch.no_grad():
        logits, expected = teacher(image[None]), saved(resized[None])
    assert logits.shape == (1, 2, 64, 64) and torch.equal(logits, expected)
    with pytest.raises(InputError):  # the plain student refuses such an image
        saved(image[None])
