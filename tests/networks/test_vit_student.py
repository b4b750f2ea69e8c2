"""The TS-KD ViT-Tiny student (common/networks/vit_student.py): shapes, METHODS.md §3 sizes, patch 8, checkpoint
loading."""

from __future__ import annotations

import pytest
import torch

from common.errors import CheckpointError, InputError
from common.losses.tskd import FeatureAlignmentLoss
from common.networks.tiny_vit import LayerNorm2d
from common.networks.vit_student import build_vit_student, decoder_channels


def test_forward_features_logits_embedding_and_hidden_states() -> None:
    torch.manual_seed(0)
    net = build_vit_student(3, image_size=64, preset="test").eval()
    x = torch.rand(2, 1, 64, 64)
    out = net.forward_features(x)
    assert out["logits"].shape == (2, 3, 64, 64)
    assert out["embedding"].shape == (2, 32, 4, 4)  # neck width, (s/16)² grid
    assert [tuple(h.shape) for h in out["hidden_states"]] == [(2, 32, 4, 4)] * 2  # one map per block
    assert torch.equal(net(x), out["logits"])
    # the embedding is the neck applied to the ViT's (final-normed) tokens laid out on the patch grid
    tokens, _ = net.vit(x)
    assert torch.allclose(out["embedding"], net.neck(tokens.transpose(1, 2).reshape(2, 32, 4, 4)), atol=1e-6)


def test_tiny_preset_has_the_vit_tiny_shape_of_methods() -> None:
    net = build_vit_student(3, image_size=128)
    blocks = net.vit.blocks
    assert len(blocks) == 12
    assert net.vit.patch_embedding.patch_embeddings.weight.shape == (192, 1, 16, 16)
    assert blocks[0].attn.num_heads == 3
    assert blocks[0].mlp.linear1.weight.shape == (768, 192)
    assert net.neck[0].weight.shape == (256, 192, 1, 1) and net.neck[2].weight.shape == (256, 256, 3, 3)
    vit_params = sum(p.numel() for p in net.vit.parameters())
    assert 5.3e6 < vit_params < 5.5e6  # ViT-Tiny: ~5.4 M without a classifier


def test_layernorm2d_normalises_each_pixel_over_channels() -> None:
    x = torch.randn(2, 5, 3, 3) * 4 + 2
    y = LayerNorm2d(5)(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 3, 3), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 3, 3), atol=1e-3)


def test_bad_sizes_are_refused_clearly() -> None:
    net = build_vit_student(3, image_size=64, preset="test")
    with pytest.raises(InputError, match="takes 64×64 inputs"):
        net(torch.rand(1, 1, 48, 48))
    with pytest.raises(InputError, match="multiple of patch_size"):
        build_vit_student(3, image_size=72, preset="test")
    with pytest.raises(InputError, match="preset must be one of"):
        build_vit_student(3, preset="huge")


def test_pretrained_weights_load_and_a_misfit_checkpoint_is_named(tmp_path) -> None:
    torch.manual_seed(0)
    net = build_vit_student(3, image_size=64, preset="test")
    torch.save({"model": net.state_dict()}, tmp_path / "last.pt")  # a training checkpoint
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    for name in ("last.pt", "plain.pt"):
        loaded = build_vit_student(3, image_size=64, preset="test", pretrained=str(tmp_path / name))
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(CheckpointError, match="does not fit this student .*4 classes"):
        build_vit_student(4, image_size=64, preset="test", pretrained=str(tmp_path / "plain.pt"))


def test_patch_8_at_128_px_gives_a_16_by_16_token_grid() -> None:
    torch.manual_seed(0)
    net = build_vit_student(2, image_size=128, preset="test", patch_size=8).eval()
    out = net.forward_features(torch.rand(1, 1, 128, 128))
    assert out["logits"].shape == (1, 2, 128, 128)
    assert out["embedding"].shape == (1, 32, 16, 16)  # (s/8)² tokens
    assert [tuple(h.shape) for h in out["hidden_states"]] == [(1, 32, 16, 16)] * 2
    assert net.vit.patch_embedding.patch_embeddings.weight.shape == (32, 1, 8, 8)
    assert net.vit.patch_embedding.position_embeddings.shape == (1, 256, 32)
    assert len(net.decoder) == 3 and net.head.in_channels == 16  # three ×2 blocks: 64, 32, 16 channels
    assert decoder_channels(16) == (128, 64, 32, 16) and decoder_channels(8) == (64, 32, 16)
    with pytest.raises(InputError, match="power of two"):
        build_vit_student(2, image_size=120, preset="test", patch_size=12)


def test_feature_alignment_maps_the_teacher_embedding_to_the_patch_8_grid() -> None:
    """LiteMedSAM's embedding is (s/4)² (32×32 at 128 px); the patch-8 student's is 16×16: the loss averages 2×2."""
    torch.manual_seed(0)
    net = build_vit_student(2, image_size=128, preset="test", patch_size=8)
    student = net.forward_features(torch.rand(2, 1, 128, 128))["embedding"]
    teacher = torch.randn(2, 32, 32, 32)
    loss = FeatureAlignmentLoss()(student, teacher)
    expected = ((student - torch.nn.functional.avg_pool2d(teacher, 2)) ** 2).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert net.vit.patch_embedding.patch_embeddings.weight.grad is not None


def test_a_patch_16_checkpoint_loads_as_before_and_not_into_patch_8(tmp_path) -> None:
    torch.manual_seed(0)
    net = build_vit_student(3, image_size=64, preset="test")  # the default patch 16
    assert net.patch_size == 16 and len(net.decoder) == 4
    torch.save({"model": net.state_dict()}, tmp_path / "p16.pt")
    loaded = build_vit_student(3, image_size=64, preset="test", patch_size=16, pretrained=str(tmp_path / "p16.pt"))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(CheckpointError, match="patch_size 8"):
        build_vit_student(3, image_size=64, preset="test", patch_size=8, pretrained=str(tmp_path / "p16.pt"))
