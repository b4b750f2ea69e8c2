"""``logit_norm`` and the released code's options of the IAD terms, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.losses.baselines import KnowledgeDistillationLoss
from common.losses.functional import normalise_logits, resolve_logit_norm
from common.losses.iad import (
    KnowledgeAssimilationLoss,
    PrototypeAlignmentLoss,
    SoftLabelDistillationLoss,
    contrastive_semantic_loss,
)


def test_normalisations_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)  # one pixel, K = 3
    assert torch.allclose(normalise_logits(x, "center").flatten(), torch.tensor([-1.0, 0.0, 1.0]))
    z = 1 / math.sqrt(2 / 3)  # population std of (-1, 0, 1) is sqrt(2/3)
    assert torch.allclose(normalise_logits(x, "zscore", eps=0).flatten(), torch.tensor([-z, 0.0, z]))
    assert torch.allclose(normalise_logits(x, "zscore", tau=2.0, eps=0).flatten(), torch.tensor([-z, 0.0, z]) / 2)
    # K = 2 over two pixels: centred (-1, 1) and (-2, 2); rms over classes and pixels sqrt(10 / 4)
    y = torch.tensor([[0.0, 0.0], [2.0, 4.0]]).view(1, 2, 1, 2)
    rms = math.sqrt(2.5)
    expected = torch.tensor([[-1.0, -2.0], [1.0, 2.0]]).view(1, 2, 1, 2) / rms
    assert torch.allclose(normalise_logits(y, "image", eps=0), expected)
    assert resolve_logit_norm("auto", 3) == "zscore" and resolve_logit_norm("auto", 2) == "image"
    one = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)  # K = 1: z-scored over the image
    assert torch.allclose(normalise_logits(one, "image", eps=0).flatten(), torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="logit_norm"):
        normalise_logits(x, "standard")


TERMS = {
    "sld": lambda norm: SoftLabelDistillationLoss(logit_norm=norm),
    "cpd": lambda norm: PrototypeAlignmentLoss(3, logit_norm=norm),
    "kd": lambda norm: KnowledgeDistillationLoss(temperature=1.0, logit_norm=norm),
}


@pytest.mark.parametrize("name", sorted(TERMS))
def test_zscored_terms_do_not_change_with_the_teachers_scale_or_shift(name):
    """With ``zscore`` a term's value is the same when the teacher's logits are multiplied by a positive number and
    shifted per pixel (SAM logits of any magnitude); with ``none`` it is not."""
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 8, 8), 5 * torch.randn(2, 3, 8, 8)
    label = torch.randint(0, 3, (2, 1, 8, 8))
    scaled = 40.0 * teacher + 7.0 * torch.randn(2, 1, 8, 8)  # SAM-scale logits, shifted per pixel
    args = (lambda t: (student, t, label)) if name == "cpd" else (lambda t: (student, t))
    loss = TERMS[name]("zscore")
    assert torch.allclose(loss(*args(teacher)), loss(*args(scaled)), rtol=1e-3)
    raw = TERMS[name]("none")
    assert not torch.allclose(raw(*args(teacher)), raw(*args(scaled)), rtol=1e-3)


def test_binary_image_norm_is_scale_invariant():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 2, 8, 8), 10 * torch.randn(2, 2, 8, 8)  # logits of SAM-like size
    loss = SoftLabelDistillationLoss(logit_norm="auto")
    assert torch.allclose(loss(student, teacher), loss(student, 30 * teacher + 4), rtol=1e-3)


def test_sld_zscore_is_two_one_minus_correlation():
    """The MSE of two z-scored K-vectors is 2(1 − ρ) (mean over the K entries of a pixel)."""
    s, t = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1), torch.tensor([3.0, 1.0, 2.0]).view(1, 3, 1, 1)
    rho = torch.corrcoef(torch.stack([s.flatten(), t.flatten()]))[0, 1]
    value = SoftLabelDistillationLoss(logit_norm="zscore")(s, t)
    assert torch.allclose(value, 2 * (1 - rho), rtol=5e-3)  # up to the eps of the std


def test_prototype_released_reduction_and_l1_by_hand():
    """One image, two classes present of N = 3, prototypes of C = 3 logits: 'present' averages over the 2 present
    classes, 'released' over B·N·C = 9 entries; 'l1' sums absolute differences."""
    label = torch.tensor([[0, 0], [1, 1]]).view(1, 1, 2, 2)
    student = torch.zeros(1, 3, 2, 2)
    teacher = torch.zeros(1, 3, 2, 2)
    teacher[:, 0, 0, :] = 2.0  # class-0 prototype differs by (2, 0, 0)
    teacher[:, 1, 1, :] = -1.0  # class-1 prototype differs by (0, -1, 0)
    present = PrototypeAlignmentLoss(3)(student, teacher, label)
    assert torch.isclose(present, torch.tensor((4.0 + 1.0) / 2))
    released = PrototypeAlignmentLoss(3, reduction="released")(student, teacher, label)
    assert torch.isclose(released, torch.tensor((4.0 + 1.0) / 9))
    l1 = PrototypeAlignmentLoss(3, norm="l1")(student, teacher, label)
    assert torch.isclose(l1, torch.tensor((2.0 + 1.0) / 2))


def test_css_over_the_batch_tensor_by_hand():
    torch.manual_seed(2)
    o, pos, neg = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    sp = F.cosine_similarity(o.flatten()[None], pos.flatten()[None])[0]
    sn = F.cosine_similarity(o.flatten()[None], neg.flatten()[None])[0]
    expected = -torch.log(torch.exp(sp) / (torch.exp(sp) + torch.exp(sn)))
    assert torch.isclose(contrastive_semantic_loss(o, pos, neg, per="batch"), expected, atol=1e-6)
    per_sample = contrastive_semantic_loss(o, pos, neg, per="sample")
    assert not torch.isclose(per_sample, expected)


def test_kas_options_keep_gradients():
    torch.manual_seed(3)
    loss = KnowledgeAssimilationLoss(feature_channels=4, num_classes=3, logit_norm="zscore", css="batch")
    logits = (30 * torch.randn(2, 3, 8, 8)).requires_grad_()
    out = loss(logits, torch.randn(2, 4, 2, 2))
    (out["rfc"] + out["css"]).backward()
    assert torch.isfinite(logits.grad).all() and loss.project.weight.grad is not None
    assert float(out["rfc"]) < 10  # the MSE part of z-scored maps is bounded (≤ 2·K/... here a few units)
