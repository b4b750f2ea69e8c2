"""Tests of the IAD losses (METHODS.md §4) against hand-computed values (explicit loops over numpy arrays)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.func import functional_call

from common.losses.iad import (
    KnowledgeAssimilationLoss,
    PrototypeAlignmentLoss,
    SoftLabelDistillationLoss,
    contrastive_semantic_loss,
    reverse_feature_constraint,
)
from tests.losses.reference import block_mean, np64


# ----------------------------------------------------------------------------------------------------------------------
# reference implementations: straightforward loops over numpy arrays, following METHODS.md §4
# ----------------------------------------------------------------------------------------------------------------------
def ref_probs(o: np.ndarray) -> np.ndarray:
    """S(·) per pixel with explicit loops: softmax over axis 1, sigmoid when K = 1."""
    out = np.zeros_like(o)
    b_, k_, h_, w_ = o.shape
    for b in range(b_):
        for i in range(h_):
            for j in range(w_):
                if k_ == 1:
                    out[b, 0, i, j] = 1.0 / (1.0 + math.exp(-o[b, 0, i, j]))
                else:
                    e = [math.exp(o[b, k, i, j]) for k in range(k_)]
                    for k in range(k_):
                        out[b, k, i, j] = e[k] / sum(e)
    return out


def ref_sld_paper(t: np.ndarray, s: np.ndarray) -> float:
    """(1/B)·Σ_b ||O_t^b − O_s^b||²."""
    total = 0.0
    for b in range(t.shape[0]):
        total += float(((t[b] - s[b]) ** 2).sum())
    return total / t.shape[0]


def ref_prototype(t: np.ndarray, s: np.ndarray, y: np.ndarray, n_cls: int, w: list[float]) -> float:
    """Σ over present (b, n) of w_n·||P_t − P_s||² / #present, with explicit pixel loops."""
    b_, c_, h_, w_ = t.shape
    total, pairs = 0.0, 0
    for b in range(b_):
        for n in range(n_cls):
            pix = [(i, j) for i in range(h_) for j in range(w_) if y[b, i, j] == n]
            if not pix:
                continue
            pairs += 1
            dist = 0.0
            for c in range(c_):
                pt = sum(t[b, c, i, j] for i, j in pix) / len(pix)
                ps = sum(s[b, c, i, j] for i, j in pix) / len(pix)
                dist += (pt - ps) ** 2
            total += w[n] * dist
    return total / pairs if pairs else 0.0


def ref_rfc(x: np.ndarray, o: np.ndarray, eps: float = 1e-6) -> float:
    b_, k_ = x.shape[:2]
    mse = ref_sld_paper(x, o) / x[0].size  # paper form / (K·H·W)
    px, ps = ref_probs(x), ref_probs(o)
    dice = []
    for b in range(b_):
        for k in range(k_):
            inter = float((px[b, k] * ps[b, k]).sum())
            dice.append((2 * inter + eps) / (float(px[b, k].sum()) + float(ps[b, k].sum()) + eps))
    return mse + 1.0 - sum(dice) / len(dice)


def ref_css(o: np.ndarray, pos: np.ndarray, neg: np.ndarray, t: float = 1.0) -> float:
    losses = []
    for b in range(o.shape[0]):
        a, p, q = o[b].ravel(), pos[b].ravel(), neg[b].ravel()
        sp = float(a @ p) / (np.linalg.norm(a) * np.linalg.norm(p))
        sn = float(a @ q) / (np.linalg.norm(a) * np.linalg.norm(q))
        losses.append(-math.log(math.exp(sp / t) / (math.exp(sp / t) + math.exp(sn / t))))
    return sum(losses) / len(losses)


def ref_conv1x1(f: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    b_, c_, h_, w_ = f.shape
    k_ = weight.shape[0]
    out = np.zeros((b_, k_, h_, w_))
    for b in range(b_):
        for k in range(k_):
            for i in range(h_):
                for j in range(w_):
                    out[b, k, i, j] = bias[k] + sum(weight[k, c, 0, 0] * f[b, c, i, j] for c in range(c_))
    return out


def ref_conv3x3(f: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    b_, c_, h_, w_ = f.shape
    k_ = weight.shape[0]
    out = np.zeros((b_, k_, h_, w_))
    for b in range(b_):
        for k in range(k_):
            for i in range(h_):
                for j in range(w_):
                    acc = bias[k]
                    for c in range(c_):
                        for di in range(3):
                            for dj in range(3):
                                ii, jj = i + di - 1, j + dj - 1
                                if 0 <= ii < h_ and 0 <= jj < w_:
                                    acc += weight[k, c, di, dj] * f[b, c, ii, jj]
                    out[b, k, i, j] = acc
    return out


# ----------------------------------------------------------------------------------------------------------------------
# soft-label distillation
# ----------------------------------------------------------------------------------------------------------------------
def test_sld_value_and_normalisation() -> None:
    s, t = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)
    loss = SoftLabelDistillationLoss()(s, t)
    paper = ref_sld_paper(np64(t), np64(s))
    assert loss.item() == pytest.approx(paper / (3 * 3 * 3), rel=1e-5)  # element mean = paper / (K·H·W)


def test_sld_gradcheck_and_teacher_detached() -> None:
    s = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    loss_fn = SoftLabelDistillationLoss()
    assert gradcheck(lambda x: loss_fn(x, t), (s,))
    loss_fn(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_sld_teacher_resized_to_student() -> None:
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 4, 4)
    expected = ref_sld_paper(block_mean(np64(t)), np64(s)) / (3 * 2 * 2)
    assert SoftLabelDistillationLoss()(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_sld_binary() -> None:
    s, t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    assert SoftLabelDistillationLoss()(s, t).item() == pytest.approx(ref_sld_paper(np64(t), np64(s)) / 9, rel=1e-5)


def test_sld_resize_directions_by_hand() -> None:
    """The two ``resize`` options on a 2×2 student and a 4×4 teacher, against values worked out by hand."""
    student = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).view(1, 1, 2, 2)  # S[i, j] = 8i + 4j
    teacher = torch.arange(16.0).view(1, 1, 4, 4)  # T[i, j] = 4i + j
    # teacher → student (IAD): halving by bilinear interpolation is the 2×2 block mean [[2.5, 4.5], [10.5, 12.5]];
    # S minus it is [[−2.5, −0.5], [−2.5, −0.5]]: (6.25 + 0.25 + 6.25 + 0.25) / 4 pixels
    to_student = SoftLabelDistillationLoss(resize="teacher_to_student")
    assert to_student(student, teacher).item() == pytest.approx(13 / 4)
    assert SoftLabelDistillationLoss()(student, teacher).item() == pytest.approx(13 / 4)  # the default
    # student → teacher (TS-KD): S is linear, so its doubling is h_i + w_j with h = (0, 2, 6, 8), w = (0, 1, 3, 4)
    # (edge pixels clamp, inner ones interpolate at 1/4 and 3/4). Minus T = 4i + j that is a_i + c_j with
    # a = (0, −2, −2, −4), c = (0, 0, 1, 1): Σ_ij (a_i + c_j)² = 4·Σa² + 2·Σa·Σc + 4·Σc² = 96 − 32 + 8 = 72,
    # over 16 pixels
    to_teacher = SoftLabelDistillationLoss(resize="student_to_teacher")
    assert to_teacher(student, teacher).item() == pytest.approx(72 / 16)
    # equal sizes: no resize, both options are the plain MSE
    assert to_teacher(teacher, 2 * teacher).item() == to_student(teacher, 2 * teacher).item() == pytest.approx(77.5)


def test_sld_student_to_teacher_gradients_and_3d() -> None:
    s = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    loss_fn = SoftLabelDistillationLoss(resize="student_to_teacher")
    assert gradcheck(lambda x: loss_fn(x, t), (s,))  # through the interpolation of the student
    loss_fn(s, t).backward()
    assert s.grad is not None and t.grad is None
    # 3D: trilinear; a constant student stays constant when upsampled, so the MSE to a constant teacher is exact
    assert loss_fn(torch.full((1, 2, 2, 2, 2), 3.0), torch.full((1, 2, 4, 4, 4), 1.0)).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="resize must be one of"):
        SoftLabelDistillationLoss(resize="bilinear")


# ----------------------------------------------------------------------------------------------------------------------
# prototype alignment
# ----------------------------------------------------------------------------------------------------------------------
LABEL = torch.tensor([[[0, 0, 1], [0, 2, 1], [2, 2, 1]], [[0, 0, 0], [1, 1, 0], [0, 0, 0]]])  # class 2 absent in b=1


def test_prototype_value_with_absent_class() -> None:
    s, t = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)
    loss = PrototypeAlignmentLoss(num_classes=3)(s, t, LABEL)
    expected = ref_prototype(np64(t), np64(s), LABEL.numpy(), 3, [1.0, 1.0, 1.0])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_prototype_label_with_channel_axis_is_the_same() -> None:
    s, t = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)
    loss_fn = PrototypeAlignmentLoss(num_classes=3)
    assert loss_fn(s, t, LABEL[:, None]).item() == pytest.approx(loss_fn(s, t, LABEL).item())


def test_prototype_class_weights_multiply_their_class() -> None:
    s, t = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)
    weights = [0.5, 2.0, 4.0]
    loss = PrototypeAlignmentLoss(num_classes=3, class_weights=weights)(s, t, LABEL)
    expected = ref_prototype(np64(t), np64(s), LABEL.numpy(), 3, weights)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # one-hot weights isolate each class term; the weighted loss is their weighted sum
    parts = [PrototypeAlignmentLoss(3, class_weights=np.eye(3)[n].tolist())(s, t, LABEL).item() for n in range(3)]
    assert loss.item() == pytest.approx(sum(w * p for w, p in zip(weights, parts)), rel=1e-5)
    # class 2 only appears in image 0: its isolated term is its distance there over the 5 present pairs
    pix = LABEL[0] == 2
    d2 = ((t[0][:, pix].mean(-1) - s[0][:, pix].mean(-1)) ** 2).sum().item()
    assert parts[2] == pytest.approx(d2 / 5, rel=1e-5)


def test_prototype_only_background_and_nothing_present() -> None:
    s = torch.randn(2, 3, 3, 3, requires_grad=True)
    t = torch.randn(2, 3, 3, 3)
    loss_fn = PrototypeAlignmentLoss(num_classes=3)
    only_bg = torch.zeros(2, 3, 3, dtype=torch.long)
    loss = loss_fn(s, t, only_bg)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref_prototype(np64(t), np64(s), only_bg.numpy(), 3, [1, 1, 1]), rel=1e-5)
    ignored = torch.full((2, 3, 3), 255, dtype=torch.long)  # every label value outside [0, K)
    zero = loss_fn(s, t, ignored)
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert s.grad is not None and torch.all(s.grad == 0)


def test_prototype_gradcheck_and_teacher_detached() -> None:
    s = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    loss_fn = PrototypeAlignmentLoss(num_classes=3, class_weights=[1.0, 2.0, 4.0])
    assert gradcheck(lambda x: loss_fn(x, t, LABEL), (s,))
    loss_fn(s, t, LABEL).backward()
    assert s.grad is not None and t.grad is None


def test_prototype_binary_single_logit() -> None:
    s, t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    y = (LABEL > 0).long()
    loss = PrototypeAlignmentLoss(num_classes=1, class_weights=[1.0, 3.0])(s, t, y)
    assert loss.item() == pytest.approx(ref_prototype(np64(t), np64(s), y.numpy(), 2, [1.0, 3.0]), rel=1e-5)


def test_prototype_label_resized_nearest_to_logits() -> None:
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    y = torch.randint(0, 3, (2, 1, 4, 4))
    loss = PrototypeAlignmentLoss(num_classes=3)(s, t, y)
    y_small = y[:, 0, ::2, ::2].numpy()  # nearest-neighbour, factor 2: pixel (2i, 2j)
    assert loss.item() == pytest.approx(ref_prototype(np64(t), np64(s), y_small, 3, [1, 1, 1]), rel=1e-5)


def test_prototype_teacher_resized_to_student() -> None:
    s, t = torch.randn(2, 3, 3, 3)[..., :2, :2].contiguous(), torch.randn(2, 3, 4, 4)
    y = LABEL[:, :2, :2]
    loss = PrototypeAlignmentLoss(num_classes=3)(s, t, y)
    expected = ref_prototype(block_mean(np64(t)), np64(s), y.numpy(), 3, [1, 1, 1])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_prototype_feature_maps_resized_to_label() -> None:
    fs, ft = torch.randn(2, 5, 2, 2), torch.randn(2, 5, 3, 3)  # any channel count, any size
    y = torch.randint(0, 3, (2, 4, 4))
    loss = PrototypeAlignmentLoss(num_classes=3, use_features=True)(fs, ft, y)
    up_s = F.interpolate(fs, size=(4, 4), mode="bilinear", align_corners=False)
    up_t = F.interpolate(ft, size=(4, 4), mode="bilinear", align_corners=False)
    expected = ref_prototype(np64(up_t), np64(up_s), y.numpy(), 3, [1, 1, 1])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# class weights
# ----------------------------------------------------------------------------------------------------------------------
def test_prototype_class_weights_argument() -> None:
    """None means all ones; a list is taken as given; a wrong length or a string ("auto": counted from the labels by
    common.data.class_weights, not by the loss) is refused. Tests of the counting: tests/data/test_class_weights.py."""
    assert PrototypeAlignmentLoss(3).class_weights.tolist() == [1.0, 1.0, 1.0]
    assert PrototypeAlignmentLoss(3, class_weights=[1, 2, 4]).class_weights.tolist() == [1.0, 2.0, 4.0]
    with pytest.raises(ValueError):
        PrototypeAlignmentLoss(3, class_weights=[1, 2])
    with pytest.raises(ValueError):
        PrototypeAlignmentLoss(3, class_weights="auto")
    with pytest.raises(ValueError):
        PrototypeAlignmentLoss(3, class_weights="inverse")


# ----------------------------------------------------------------------------------------------------------------------
# knowledge assimilation
# ----------------------------------------------------------------------------------------------------------------------
def test_reverse_feature_constraint_value() -> None:
    x, o = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)
    assert reverse_feature_constraint(x, o).item() == pytest.approx(ref_rfc(np64(x), np64(o)), rel=1e-5)


def test_reverse_feature_constraint_binary_sigmoid() -> None:
    x, o = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    assert reverse_feature_constraint(x, o).item() == pytest.approx(ref_rfc(np64(x), np64(o)), rel=1e-5)


def test_reverse_feature_constraint_identical_inputs() -> None:
    # soft Dice of a map with itself is Σp²/Σp, 1 only for hard (0/1) maps; ε makes an empty class count as 1
    o = torch.randn(2, 3, 3, 3)
    p = torch.softmax(o, dim=1).flatten(2)
    assert reverse_feature_constraint(o, o).item() == pytest.approx(1 - (p.pow(2).sum(-1) / p.sum(-1)).mean().item())
    hard = 60.0 * F.one_hot(torch.zeros(2, 3, 3, dtype=torch.long), 3).movedim(-1, 1).float()
    assert reverse_feature_constraint(hard, hard).item() == pytest.approx(0.0, abs=1e-6)


def test_contrastive_semantic_loss_value() -> None:
    o, p, n = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)
    for t in (1.0, 0.5):
        expected = ref_css(np64(o), np64(p), np64(n), t)
        assert contrastive_semantic_loss(o, p, n, t).item() == pytest.approx(expected, rel=1e-5)
    # sim(O_s, F₊) = 1 and sim(O_s, F₋) = −1 → −log(e / (e + e^{−1}))
    assert contrastive_semantic_loss(o, 2 * o, -o).item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-5)


def test_pure_functions_gradcheck() -> None:
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    o = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    n = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(reverse_feature_constraint, (x, o))
    assert gradcheck(lambda a, b, c: contrastive_semantic_loss(a, b, c, 0.7), (o, x, n))


def test_knowledge_assimilation_value_by_hand() -> None:
    loss_fn = KnowledgeAssimilationLoss(feature_channels=4, num_classes=3, temperature=0.5)
    o, f = torch.randn(2, 3, 3, 3), torch.randn(2, 4, 3, 3)
    out = loss_fn(o, f)
    assert set(out) == {"rfc", "css"}
    x = ref_conv1x1(np64(f), np64(loss_fn.project.weight), np64(loss_fn.project.bias))
    neg_in = (1 - ref_probs(x)) + (1 - ref_probs(np64(o)))
    neg = ref_conv3x3(neg_in, np64(loss_fn.negative.weight), np64(loss_fn.negative.bias))
    assert out["rfc"].item() == pytest.approx(ref_rfc(x, np64(o)), rel=1e-5)
    assert out["css"].item() == pytest.approx(ref_css(np64(o), x, neg, 0.5), rel=1e-5)


def test_knowledge_assimilation_binary_sigmoid() -> None:
    loss_fn = KnowledgeAssimilationLoss(feature_channels=2, num_classes=1)
    o, f = torch.randn(2, 1, 3, 3), torch.randn(2, 2, 3, 3)
    out = loss_fn(o, f)
    x = ref_conv1x1(np64(f), np64(loss_fn.project.weight), np64(loss_fn.project.bias))
    neg = ref_conv3x3(
        (1 - ref_probs(x)) + (1 - ref_probs(np64(o))), np64(loss_fn.negative.weight), np64(loss_fn.negative.bias)
    )
    assert out["rfc"].item() == pytest.approx(ref_rfc(x, np64(o)), rel=1e-5)
    assert out["css"].item() == pytest.approx(ref_css(np64(o), x, neg), rel=1e-5)


def test_knowledge_assimilation_deep_feature_resized() -> None:
    loss_fn = KnowledgeAssimilationLoss(feature_channels=4, num_classes=3)
    o, f = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)
    out = loss_fn(o, f)
    x = F.interpolate(loss_fn.project(f), size=(4, 4), mode="bilinear", align_corners=False)
    assert out["rfc"].item() == pytest.approx(ref_rfc(np64(x), np64(o)), rel=1e-5)


def test_knowledge_assimilation_gradients_reach_student_and_projections() -> None:
    loss_fn = KnowledgeAssimilationLoss(feature_channels=4, num_classes=3).double()
    o = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    f = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    out = loss_fn(o, f)
    (out["rfc"] + out["css"]).backward()
    for g in (o.grad, f.grad, loss_fn.project.weight.grad, loss_fn.negative.weight.grad):
        assert g is not None and g.abs().sum() > 0
    # L_css alone must train the 3×3 negative projection
    loss_fn.zero_grad()
    loss_fn(o.detach(), f.detach())["css"].backward()
    assert loss_fn.negative.weight.grad.abs().sum() > 0

    names = ["project.weight", "project.bias", "negative.weight", "negative.bias"]

    def total(o_, f_, *params):
        res = functional_call(loss_fn, dict(zip(names, params)), (o_, f_))
        return res["rfc"] + res["css"]

    params = tuple(loss_fn.get_parameter(n).detach().clone().requires_grad_(True) for n in names)
    o_small = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    f_small = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(total, (o_small, f_small, *params), fast_mode=True)


def test_knowledge_assimilation_3d() -> None:
    loss_fn = KnowledgeAssimilationLoss(feature_channels=4, num_classes=3, spatial_dims=3)
    o = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    out = loss_fn(o, torch.randn(2, 4, 2, 2, 2))
    (out["rfc"] + out["css"]).backward()
    assert torch.isfinite(out["rfc"]) and torch.isfinite(out["css"]) and o.grad is not None
    assert loss_fn.negative.weight.shape == (3, 3, 3, 3, 3)
