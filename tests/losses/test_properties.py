"""Property-based tests (hypothesis) of every loss over random batch sizes, class counts (1 to 5), 2D and 3D
shapes, teacher maps of another size, logits up to SAM's scale and beyond, and labels with absent classes: each
loss returns a finite value and finite gradients, and never crashes.

The example set is derandomised so CI is reproducible; run with ``--hypothesis-seed`` and without
``derandomize`` (or more ``max_examples``) to search further.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.losses.baselines import (
    AttentionTransferLoss,
    ChannelWiseDistillationLoss,
    DISTLoss,
    KnowledgeDistillationLoss,
)
from common.losses.iad import KnowledgeAssimilationLoss, PrototypeAlignmentLoss, SoftLabelDistillationLoss
from common.losses.segmentation import dice_ce_loss

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def segmentation_batch(draw) -> dict:
    """Student and teacher logits (the teacher possibly at another size), a label whose present classes are a
    random subset (possibly background only), and a deep feature map."""
    ndim = draw(st.sampled_from([2, 2, 3]))
    batch = draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    size = tuple(draw(st.integers(1, 12 if ndim == 2 else 6)) for _ in range(ndim))
    t_size = draw(st.sampled_from([size, tuple(2 * s for s in size), tuple(max(s // 2, 1) for s in size)]))
    scale = draw(st.sampled_from([0.0, 1.0, 15.0, 60.0, 1000.0]))  # 0: constant logits; ~15: SAM logits
    seed = draw(st.integers(0, 2**16))
    labels = max(k, 2)
    present = draw(st.lists(st.integers(0, labels - 1), min_size=1, max_size=labels, unique=True))
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    label = torch.as_tensor(rng.choice(present, size=(batch, 1, *size)), dtype=torch.float32)
    channels = draw(st.integers(1, 8))
    f_size = tuple(max(s // 4, 1) for s in size)
    return {
        "student": (torch.randn(batch, k, *size, generator=g) * scale).requires_grad_(),
        "teacher": torch.randn(batch, k, *t_size, generator=g) * scale,
        "label": label,
        "feature": torch.randn(batch, channels, *f_size, generator=g).requires_grad_(),
        "k": k,
        "ndim": ndim,
        "temperature": draw(st.sampled_from([0.5, 1.0, 4.0])),
    }


def _finite(value: torch.Tensor, *inputs: torch.Tensor) -> None:
    assert value.ndim == 0 and math.isfinite(float(value)), float(value)
    grads = torch.autograd.grad(value, [x for x in inputs if x.requires_grad], allow_unused=True, retain_graph=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


@SETTINGS
@given(segmentation_batch())
def test_ground_truth_loss(b):
    _finite(dice_ce_loss(b["k"])(b["student"], b["label"]), b["student"])


@SETTINGS
@given(segmentation_batch())
def test_iad_stage_1_losses(b):
    _finite(SoftLabelDistillationLoss()(b["student"], b["teacher"]), b["student"])
    for weights in (None, "ones", "skewed"):
        w = None if weights is None else [1.0] * max(b["k"], 2) if weights == "ones" else [0.01, 100.0] + [1.0] * (max(b["k"], 2) - 2)  # fmt: skip
        _finite(PrototypeAlignmentLoss(b["k"], class_weights=w)(b["student"], b["teacher"], b["label"]), b["student"])


@SETTINGS
@given(segmentation_batch())
def test_iad_stage_2_loss(b):
    kas = KnowledgeAssimilationLoss(b["feature"].shape[1], b["k"], temperature=b["temperature"], spatial_dims=b["ndim"])
    terms = kas(b["student"], b["feature"])
    assert set(terms) == {"rfc", "css"}
    for value in terms.values():
        _finite(value, b["student"], b["feature"])


@SETTINGS
@given(segmentation_batch())
def test_baseline_losses(b):
    t = b["temperature"]
    _finite(KnowledgeDistillationLoss(t)(b["student"], b["teacher"]), b["student"])
    _finite(ChannelWiseDistillationLoss(t)(b["student"], b["teacher"]), b["student"])
    _finite(DISTLoss(temperature=t)(b["student"], b["teacher"]), b["student"])
    _finite(AttentionTransferLoss()(b["feature"], b["teacher"]), b["feature"])


@pytest.mark.parametrize("k", [1, 3])
def test_an_all_background_batch_is_finite_for_every_loss(k):
    """The corner the generator may miss: every pixel background, logits exactly zero."""
    student = torch.zeros(2, k, 8, 8, requires_grad=True)
    label = torch.zeros(2, 1, 8, 8)
    _finite(dice_ce_loss(k)(student, label), student)
    _finite(PrototypeAlignmentLoss(k)(student, torch.zeros(2, k, 8, 8), label), student)
    for value in KnowledgeAssimilationLoss(4, k)(student, torch.zeros(2, 4, 2, 2)).values():
        _finite(value, student)
