"""Tests for the SAM-decoder student (common/networks/sam_decoder_student.py): ``test`` teacher preset, 64-px inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from common.errors import CheckpointError, InputError
from common.networks.lora import save_adapter
from common.networks.sam_decoder_student import REINITIALISED_HEADS, SamDecoderStudent
from common.networks.sam_teacher import SamTeacher, build_teacher
from common.networks.students import EfficientUNetStudent
from tests.conftest import REPO_ROOT, tiny_teacher

K = 3


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SamTeacher]:
    """A random ``test``-preset teacher of K classes without LoRA (the layout of a merged teacher) and its file."""
    torch.manual_seed(0)
    teacher = build_teacher("test", num_classes=K, lora_rank=0).eval()
    path = tmp_path_factory.mktemp("teacher") / "model_merged.pt"
    torch.save(teacher.state_dict(), path)
    return path, teacher


def _student(**kwargs) -> SamDecoderStudent:
    return SamDecoderStudent(**{"num_classes": K, "in_channels": 1, "teacher_arch": "test", **kwargs})


def _decoder_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Mask decoder and prompt pieces under teacher keys (the student uses the same names)."""
    parts = ("mask_decoder.", "prompt_encoder.no_mask_embed.", "prompt_encoder.pe_layer.")
    return {k: v for k, v in net.state_dict().items() if k.startswith(parts)}


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shapes(num_classes: int, in_channels: int) -> None:
    net = _student(num_classes=num_classes, in_channels=in_channels).eval()
    with torch.no_grad():
        out = net.forward_features(torch.randn(2, in_channels, 64, 96))
        logits = net(torch.randn(1, in_channels, 64, 64))
    assert out["logits"].shape == (2, num_classes, 64, 96)
    assert out["features"].shape == (2, net.feature_channels, 2, 3)
    assert logits.shape == (1, num_classes, 64, 64)
    assert (net.num_classes, net.in_channels, net.feature_channels, net.size_divisor) == (
        num_classes,
        in_channels,
        320,
        32,
    )


def test_rejects_sizes_not_multiple_of_32() -> None:
    net = _student().eval()
    with pytest.raises(InputError, match="multiples of 32"):
        net(torch.randn(1, 1, 48, 64))
    with pytest.raises(InputError, match="multiples of 32"):
        net(torch.randn(1, 1, 32, 32, 32))


def test_decoder_from_teacher_with_heads_reinitialised(teacher_ckpt: tuple[Path, SamTeacher]) -> None:
    """Every decoder tensor but the heads equals the teacher's; the re-initialised heads differ."""
    path, teacher = teacher_ckpt
    torch.manual_seed(1)
    student_state = _decoder_state(_student(teacher_ckpt=path))
    teacher_state = _decoder_state(teacher)
    assert student_state.keys() == teacher_state.keys()
    heads = [k for k in teacher_state if k.startswith(REINITIALISED_HEADS)]
    kept = [k for k in teacher_state if not k.startswith(REINITIALISED_HEADS)]
    assert {k.split(".")[1] for k in heads} == {"mask_tokens", "output_hypernetworks_mlps", "iou_prediction_head"}
    assert {k.split(".")[1] for k in kept} >= {"transformer", "output_upscaling", "iou_token", "no_mask_embed"}
    for key in kept:
        assert torch.equal(student_state[key], teacher_state[key]), key
    for key in heads:
        assert not torch.equal(student_state[key], teacher_state[key]), key


def test_decoder_from_teacher_keeping_heads(teacher_ckpt: tuple[Path, SamTeacher]) -> None:
    """With ``reinit_heads=False`` all decoder tensors are the teacher's, and on the same embedding the decoder
    gives the teacher's logits: the two networks' logits are of the same kind."""
    path, teacher = teacher_ckpt
    student = _student(teacher_ckpt=path, reinit_heads=False).eval()
    student_state, teacher_state = _decoder_state(student), _decoder_state(teacher)
    for key, value in teacher_state.items():
        assert torch.equal(student_state[key], value), key
    embedding = torch.randn(2, 32, 4, 4)  # the test teacher's 64-px grid: 64 / 16
    sparse, dense = teacher.prompt_encoder(points=None, boxes=None, masks=None)
    with torch.no_grad():
        expected, _ = teacher.mask_decoder.predict_masks(
            embedding, teacher.prompt_encoder.get_dense_pe(), sparse, dense
        )
        got, _ = student.mask_decoder.predict_masks(
            embedding, student.prompt_encoder.image_pe(4, 4), sparse, student.prompt_encoder.dense()
        )
    assert torch.allclose(got, expected, atol=1e-6)


def test_fine_tuned_decoder_from_adapter(tmp_path: Path, teacher_ckpt: tuple[Path, SamTeacher]) -> None:
    """``teacher_adapter`` brings the fine-tuned teacher's decoder and dense prompt, not the base checkpoint's."""
    path, _ = teacher_ckpt
    tuned = build_teacher("test", checkpoint=path, num_classes=K, lora_rank=4)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name.startswith(("mask_decoder.", "prompt_encoder.")):
                p.add_(0.5)  # stands in for fine-tuning
    adapter = save_adapter(tuned, tmp_path / "adapter.pt")
    student_state = _decoder_state(_student(teacher_ckpt=path, teacher_adapter=adapter, reinit_heads=False))
    for key, value in _decoder_state(tuned).items():
        assert torch.equal(student_state[key], value), key
    with pytest.raises(InputError, match="teacher_ckpt"):
        _student(teacher_adapter=adapter)


def test_checkpoint_of_another_architecture_is_refused(teacher_ckpt: tuple[Path, SamTeacher], tmp_path: Path) -> None:
    path, _ = teacher_ckpt
    with pytest.raises(CheckpointError, match="teacher_arch='litemedsam'.*shape mismatches"):
        SamDecoderStudent(num_classes=K, teacher_arch="litemedsam", teacher_ckpt=path)
    with pytest.raises(CheckpointError, match="num_classes mask tokens"):
        _student(num_classes=2, teacher_ckpt=path, reinit_heads=False)
    _student(num_classes=2, teacher_ckpt=path)  # re-initialised heads: any K fits
    unrelated = tmp_path / "unet_student.pt"
    torch.save(EfficientUNetStudent(num_classes=K).state_dict(), unrelated)
    with pytest.raises(CheckpointError, match="missing keys"):
        _student(teacher_ckpt=unrelated)


def test_warm_start_from_a_trained_student(tmp_path: Path, teacher_ckpt: tuple[Path, SamTeacher]) -> None:
    """``checkpoint`` (a trained student) wins over the teacher's decoder; a student of another K is refused."""
    torch.manual_seed(2)
    trained = _student()
    path = tmp_path / "model.pt"
    torch.save({"model": trained.state_dict()}, path)
    warm = _student(teacher_ckpt=teacher_ckpt[0], checkpoint=path)
    assert all(torch.equal(v, warm.state_dict()[k]) for k, v in trained.state_dict().items())
    with pytest.raises(CheckpointError, match="does not fit this SamDecoderStudent"):
        _student(num_classes=2, checkpoint=path)


def test_frozen_encoder_keeps_weights_and_statistics() -> None:
    """An optimiser step on a batch changes the decoder but neither the encoder's weights nor its BatchNorm
    running statistics (the encoder stays in eval mode under ``train()``)."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="randomly initialised encoder"):
        net = _student(freeze_encoder=True)
    net.train()
    assert not net.encoder.training and net.mask_decoder.training
    encoder = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    rest = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("encoder.")}
    optimiser = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    loss = torch.nn.functional.cross_entropy(net(torch.randn(2, 1, 64, 64)), torch.randint(0, K, (2, 64, 64)))
    loss.backward()
    optimiser.step()
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in encoder.items())
    after = net.state_dict()
    for key in (
        "embed.weight",
        "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
        "mask_decoder.mask_tokens.weight",
    ):
        assert not torch.equal(rest[key], after[key]), key


def test_every_trainable_parameter_gets_a_gradient() -> None:
    """No unused trainable parameter (DDP without ``find_unused_parameters``); the IoU head does not train."""
    net = _student().train()
    out = net.forward_features(torch.randn(2, 1, 64, 64))
    (out["logits"].square().mean() + out["features"].square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert not any(p.requires_grad for p in net.mask_decoder.iou_prediction_head.parameters())


@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python float")  # SAM attention's sqrt(head width)
@pytest.mark.filterwarnings("ignore:Constant folding")
def test_torchscript_trace_and_onnx_export(tmp_path: Path) -> None:
    """Traced TorchScript reloads and matches; ONNX (``dynamo=False``) runs in onnxruntime within 1e-3."""
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = _student().eval()
    net.encoder.set_swish(memory_efficient=False)  # MONAI's EfficientNet: the exportable swish
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = net(x)
        traced = torch.jit.trace(net, x)
    ts_path = tmp_path / "model.ts"
    traced.save(str(ts_path))
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(ts_path))(x), expected, atol=1e-5)
    onnx_path = tmp_path / "model.onnx"
    torch.onnx.export(
        net, (x,), str(onnx_path), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, dynamo=False,
    )  # fmt: skip
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (x, x[:1]):
        got = torch.as_tensor(session.run(None, {"image": batch.numpy()})[0])
        assert (got - expected[: len(batch)]).abs().max() <= 1e-3


def test_iad_variant_config_builds_the_student(tmp_path: Path) -> None:
    """``train.json`` + ``sam_decoder.json`` parse, and the network starts from the fine-tuned teacher's decoder."""
    configs = REPO_ROOT / "bundles" / "iad_student" / "configs"
    teacher = tiny_teacher(tmp_path, num_classes=K)
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "sam_decoder.json")])
    parser.update({"bundle_root": str(tmp_path), "num_classes": K, "in_channels": 1, **teacher})
    assert parser.get_parsed_content("student_arch") == "sam_decoder"
    with pytest.warns(UserWarning, match="randomly initialised encoder"):  # pretrained_path is null in train.json
        net = parser.get_parsed_content("network_def")
    assert isinstance(net, SamDecoderStudent) and net.freeze_encoder and net.num_classes == K
    fine_tuned = build_teacher(
        "test", checkpoint=teacher["teacher_ckpt"], num_classes=K, adapter=teacher["teacher_adapter"]
    )
    student_state = _decoder_state(net)
    for key, value in _decoder_state(fine_tuned).items():
        if not key.startswith(REINITIALISED_HEADS):
            assert torch.equal(student_state[key], value), key
    assert net(torch.rand(1, 1, 64, 64)).shape == (1, K, 64, 64)
    parser.update({"freeze_encoder": False})  # the variant's top-level switch
    assert not parser.get_parsed_content("network_def", lazy=False).freeze_encoder
