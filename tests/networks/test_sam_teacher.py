"""The SAM teacher: prompt-free K-class head, checkpoint adaptation, LoRA training and export."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from common.errors import CheckpointError, InputError
from common.networks.lora import (
    adapter_state_dict,
    load_adapter,
    save_adapter,
    save_merged,
    trainable_parameters,
)
from common.networks.sam_teacher import build_teacher


def _train_steps(model: torch.nn.Module, steps: int = 3, size: int = 64) -> None:
    """A few AdamW steps on random data, as the bundle's trainer would do."""
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.rand(2, 1, size, size, generator=g)
        y = torch.randint(0, model.num_classes, (2, size, size), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_prompt_free_head_returns_k_logits_at_input_size():
    model = build_teacher("test", num_classes=5)
    out = model.forward_features(torch.rand(2, 1, 64, 64))
    assert out["logits"].shape == (2, 5, 64, 64)
    assert out["embedding"].shape == (2, 32, 4, 4)
    # inputs of another size are resized to image_size and the logits back to the input size
    assert model(torch.rand(1, 3, 48, 80)).shape == (1, 5, 48, 80)
    assert build_teacher("test", num_classes=1)(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_lora_trains_only_intended_parameters_and_keeps_base_weights():
    torch.manual_seed(0)
    model = build_teacher("test", num_classes=3, lora_rank=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    encoder_trainable = {n for n in trainable if n.startswith("image_encoder.")}
    assert encoder_trainable and all(".qkv.lora_" in n for n in encoder_trainable)
    assert len(encoder_trainable) == 2 * 2  # lora_A and lora_B of the 2 blocks' qkv
    assert all(
        p.requires_grad for n, p in model.named_parameters() if n.startswith(("mask_decoder.", "prompt_encoder."))
    )

    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model)
    after = model.state_dict()
    for k, v in before.items():
        changed = not torch.equal(v, after[k])
        if k.startswith("image_encoder.") and "lora_" not in k:
            assert not changed, f"frozen base weight {k} changed"
    assert not torch.equal(before["image_encoder.blocks.0.attn.qkv.lora_B.default.weight"],
                           after["image_encoder.blocks.0.attn.qkv.lora_B.default.weight"])  # fmt: skip
    assert not torch.equal(before["mask_decoder.mask_tokens.weight"], after["mask_decoder.mask_tokens.weight"])


def test_merged_export_reproduces_adapted_network(tmp_path):
    torch.manual_seed(0)
    model = build_teacher("test", num_classes=3, lora_rank=4, lora_alpha=8)
    _train_steps(model)
    model.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = model(x)
    path = save_merged(model, tmp_path / "model_merged.pt")
    state = torch.load(path, weights_only=True)
    assert not any("lora_" in k for k in state)
    plain = build_teacher("test", num_classes=3, lora_rank=0)
    plain.load_state_dict(state, strict=True)
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), expected, atol=1e-5)
    # merging works on a copy: the adapted network still has its LoRA layers
    assert any("lora_" in k for k in model.state_dict())


def test_adapter_roundtrip_on_the_same_base_checkpoint(tmp_path):
    torch.manual_seed(0)
    base = tmp_path / "base.pth"
    torch.save(build_teacher("test", num_classes=4, lora_rank=0).state_dict(), base)  # a "SAM" with 4 mask tokens
    model = build_teacher("test", checkpoint=base, num_classes=3)
    _train_steps(model)
    path = save_adapter(model, tmp_path / "adapter.pt")
    assert set(torch.load(path, weights_only=True)) == set(adapter_state_dict(model))
    rebuilt = build_teacher("test", checkpoint=base, num_classes=3, adapter=path)
    model.eval(), rebuilt.eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), rebuilt(x), atol=1e-6)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_adapter(build_teacher("test", checkpoint=base, num_classes=3, lora_rank=8), path)


def test_checkpoint_adaptation_resizes_position_embeddings_and_mask_tokens(tmp_path):
    torch.manual_seed(0)
    ckpt = build_teacher("test", num_classes=4, lora_rank=0).state_dict()  # native 64 px: 4x4 grid, 4 mask tokens
    ckpt["image_encoder.pos_embed"] = torch.full_like(ckpt["image_encoder.pos_embed"], 0.5)
    path = tmp_path / "sam_tiny.pth"
    torch.save({"model": ckpt}, path)  # nested form is accepted too
    model = build_teacher("test", checkpoint=path, image_size=128, num_classes=6, lora_rank=0)
    state = model.state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, 8, 8, 32)
    assert torch.allclose(state["image_encoder.pos_embed"], torch.tensor(0.5))  # bilinear keeps a constant
    # the global-attention block (index 1) gets tables for the 8x8 grid: 2*8-1; the windowed block keeps its own
    assert state["image_encoder.blocks.1.attn.rel_pos_h"].shape[0] == 15
    assert torch.equal(state["image_encoder.blocks.0.attn.rel_pos_h"], ckpt["image_encoder.blocks.0.attn.rel_pos_h"])
    # token i starts from pretrained token i mod 4
    assert torch.equal(state["mask_decoder.mask_tokens.weight"][5], ckpt["mask_decoder.mask_tokens.weight"][1])
    assert torch.equal(
        state["mask_decoder.output_hypernetworks_mlps.4.layers.0.weight"],
        ckpt["mask_decoder.output_hypernetworks_mlps.0.layers.0.weight"],
    )
    assert model(torch.rand(1, 1, 128, 128)).shape == (1, 6, 128, 128)


def test_checkpoint_of_another_architecture_gets_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(build_teacher("test", num_classes=3, lora_rank=0).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit teacher_arch='vit_b'"):
        build_teacher("vit_b", checkpoint=path, image_size=64)
    with pytest.raises(CheckpointError, match="not found"):
        build_teacher("test", checkpoint=tmp_path / "missing.pth")
    with pytest.raises(InputError, match="teacher_arch must be one of"):
        build_teacher("vit_x")


def test_litemedsam_checkpoint_loads_strictly_and_responds_to_input(sample_data_dir):
    ckpt = sample_data_dir / "weights" / "lite_medsam.pth"
    model = build_teacher("litemedsam", checkpoint=ckpt, num_classes=4, lora_rank=0).eval()
    shipped = torch.load(ckpt, map_location="cpu", weights_only=True)
    own = model.state_dict()
    assert set(own) == set(shipped)  # strict: every tensor of the shipped file has its place, none is left over
    token_parts = ("mask_decoder.mask_tokens", "mask_decoder.output_hypernetworks_mlps", "iou_prediction_head.layers.2")
    assert all(torch.equal(own[k], shipped[k]) for k in shipped if not any(t in k for t in token_parts))
    # MedSAM trained only mask token 0 (tokens 1-3 give near-constant masks): every class starts from it
    for i in range(4):
        assert torch.equal(own["mask_decoder.mask_tokens.weight"][i], shipped["mask_decoder.mask_tokens.weight"][0])
        assert torch.equal(
            own[f"mask_decoder.output_hypernetworks_mlps.{i}.layers.2.weight"],
            shipped["mask_decoder.output_hypernetworks_mlps.0.layers.2.weight"],
        )
    torch.manual_seed(0)
    x = torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        a, b = model(x), model(torch.flip(x, dims=[-1]))
    assert a.shape == (1, 4, 256, 256) and torch.isfinite(a).all()
    assert (a - b).abs().mean() > 1e-3


def test_modeling_imports_without_torchvision():
    code = (
        "import sys; from common.networks.sam_teacher import sam_modeling; sam_modeling(); "
        "assert 'torchvision' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_frozen_batchnorm_keeps_its_statistics_so_the_adapter_rebuilds_the_trained_teacher(tmp_path):
    """LiteMedSAM's TinyViT has BatchNorm in its frozen encoder: training must not move its running statistics,
    which adapter.pt does not carry (else base + adapter would differ from the trained teacher)."""
    torch.manual_seed(0)
    base = tmp_path / "base.pth"
    torch.save(build_teacher("litemedsam", image_size=64, num_classes=1, lora_rank=0).state_dict(), base)
    model = build_teacher("litemedsam", checkpoint=base, image_size=64, num_classes=2, lora_rank=2)
    bn = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    assert bn, "the LiteMedSAM encoder has BatchNorm layers"
    _train_steps(model, size=64)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in bn.items())
    assert model.mask_decoder.training, "trainable parts still train"
    rebuilt = build_teacher("litemedsam", checkpoint=base, image_size=64, num_classes=2, lora_rank=2)
    load_adapter(rebuilt, save_adapter(model, tmp_path / "adapter.pt"))
    model.eval(), rebuilt.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_frozen_encoder_and_its_embedding_cache(tmp_path):
    """encoder='frozen': no LoRA, the encoder does not train (and stays in eval mode), the decoder does; its
    embeddings are computed once per image, stored as plain float16 tensors, and read back for the same image
    (a MetaTensor input too), while another image or a training encoder computes afresh."""
    from monai.data import MetaTensor

    teacher = build_teacher("test", num_classes=2, encoder="frozen", embedding_cache_dir=tmp_path).train()
    trainable = {n.split(".")[0] for n, p in teacher.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_encoder", "mask_decoder"} and not any(
        "lora_" in n for n, _ in teacher.named_parameters()
    )
    assert not teacher.image_encoder.training
    x = MetaTensor(torch.rand(2, 1, 64, 64))
    first = teacher.forward_features(x)["embedding"]
    files = sorted(tmp_path.rglob("*.pt"))
    assert len(files) == 2 and torch.load(files[0], weights_only=True).dtype == torch.float16
    calls = []
    teacher.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    again = teacher.forward_features(x)["embedding"]
    assert not calls and torch.equal(first, again)  # read from the cache, the same values
    teacher.forward_features(torch.rand(1, 1, 64, 64))
    assert len(calls) == 1 and len(sorted(tmp_path.rglob("*.pt"))) == 3
    lora = build_teacher("test", num_classes=2, embedding_cache_dir=tmp_path / "lora").train()
    lora.forward_features(torch.rand(1, 1, 64, 64))
    assert not (tmp_path / "lora").exists()  # a LoRA encoder trains: no cache


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_a_fine_tuned_merged_teacher_loads_as_it_was_saved(tmp_path, sample_data_dir, num_classes):
    """A fine-tuned LiteMedSAM teacher saved merged (model_merged.pt) and given as a checkpoint keeps every class's
    mask token: the official checkpoint's 'only token 0 is trained' rule must not overwrite them (it did, and
    erased every class but the first of the teacher that TS-KD pre-training read)."""
    from common.networks.lora import save_merged

    torch.manual_seed(0)
    weights = sample_data_dir / "weights" / "lite_medsam.pth"
    teacher = build_teacher("litemedsam", checkpoint=weights, image_size=64, num_classes=num_classes).eval()
    with torch.no_grad():
        for p in teacher.mask_decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))  # as fine-tuning leaves it
    save_merged(teacher, tmp_path / "merged.pt")
    loaded = build_teacher("litemedsam", checkpoint=tmp_path / "merged.pt", image_size=64, num_classes=num_classes,
                           lora_rank=0).eval()  # fmt: skip
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), teacher(x), atol=1e-5)
