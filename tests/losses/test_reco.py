"""Tests of the ReCo-KD losses (METHODS.md §5) against hand-computed values (explicit loops over numpy arrays)."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from common.losses.reco import (
    GlobalContextBlock,
    LinearWarmupWeight,
    ReCoKDLoss,
    attention_loss,
    attention_maps,
    region_loss,
    region_masks,
    relation_loss,
    stage_weights,
)
from tests.losses.reference import np64


# ----------------------------------------------------------------------------------------------------------------------
# reference implementations: loops over numpy arrays (B, C, D, H, W), following METHODS.md §5
# ----------------------------------------------------------------------------------------------------------------------
def voxels(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(product(*[range(n) for n in shape]))


def ref_attention(f: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """S (B, *spatial) = N·softmax_vox(mean_c |F| / T); Cw (B, C) = C·softmax_c(mean_vox |F| / T)."""
    b_, c_ = f.shape[:2]
    vox = voxels(f.shape[2:])
    s = np.zeros((b_,) + f.shape[2:])
    cw = np.zeros((b_, c_))
    for b in range(b_):
        m = {v: sum(abs(f[(b, c) + v]) for c in range(c_)) / c_ for v in vox}
        z = sum(math.exp(m[v] / t) for v in vox)
        for v in vox:
            s[(b,) + v] = len(vox) * math.exp(m[v] / t) / z
        mc = [sum(abs(f[(b, c) + v]) for v in vox) / len(vox) for c in range(c_)]
        zc = sum(math.exp(x / t) for x in mc)
        for c in range(c_):
            cw[b, c] = c_ * math.exp(mc[c] / t) / zc
    return s, cw


def ref_masks(y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """M_fg = Σ_{c≥1} 1[Y=c]/|Ω_c|, M_bg = 1[M_fg=0]/|Ω_bg|, per sample; y (B, *spatial)."""
    fg, bg = np.zeros(y.shape), np.zeros(y.shape)
    for b in range(y.shape[0]):
        vox = voxels(y.shape[1:])
        for c in range(1, k):
            members = [v for v in vox if y[(b,) + v] == c]
            for v in members:
                fg[(b,) + v] += 1.0 / len(members)
        background = [v for v in vox if fg[(b,) + v] == 0]
        for v in background:
            bg[(b,) + v] = 1.0 / len(background)
    return fg, bg


def ref_region(fs: np.ndarray, ft: np.ndarray, mask: np.ndarray, s: np.ndarray, cw: np.ndarray) -> float:
    """Σ M·((F_s − F_t)·√S_t·√Cw_t)² / (Σ M · C)."""
    b_, c_ = fs.shape[:2]
    num = 0.0
    for b in range(b_):
        for v in voxels(fs.shape[2:]):
            for c in range(c_):
                num += mask[(b,) + v] * ((fs[(b, c) + v] - ft[(b, c) + v]) * math.sqrt(s[(b,) + v] * cw[b, c])) ** 2
    den = mask.sum() * c_
    return num / den if den else 0.0


def ref_attention_loss(fs: np.ndarray, ft: np.ndarray, t: float) -> float:
    ss, cs = ref_attention(fs, t)
    st, ct = ref_attention(ft, t)
    return float(np.abs(cs - ct).sum() / cs.size + np.abs(ss - st).sum() / ss.size)


def ref_conv1x1(f: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """1×1×1 convolution with loops; w (C_out, C_in, 1, 1, 1)."""
    out = np.zeros((f.shape[0], w.shape[0]) + f.shape[2:])
    for b in range(f.shape[0]):
        for o in range(w.shape[0]):
            for v in voxels(f.shape[2:]):
                out[(b, o) + v] = bias[o] + sum(w[o, i, 0, 0, 0] * f[(b, i) + v] for i in range(f.shape[1]))
    return out


def ref_global_context(f: np.ndarray, block: GlobalContextBlock) -> np.ndarray:
    """F + W_2 ReLU(LN(W_1 Σ_vox softmax(W_k F)·F)) with loops (LayerNorm over the hidden channels, eps 1e-5)."""
    wk, bk = np64(block.attend.weight), np64(block.attend.bias)
    w1, b1 = np64(block.transform[0].weight), np64(block.transform[0].bias)
    gamma, beta = np64(block.transform[1].weight).ravel(), np64(block.transform[1].bias).ravel()
    w2, b2 = np64(block.transform[3].weight), np64(block.transform[3].bias)
    b_, c_ = f.shape[:2]
    out = f.copy()
    for b in range(b_):
        vox = voxels(f.shape[2:])
        logit = {v: bk[0] + sum(wk[0, c, 0, 0, 0] * f[(b, c) + v] for c in range(c_)) for v in vox}
        z = sum(math.exp(logit[v]) for v in vox)
        ctx = [sum(math.exp(logit[v]) / z * f[(b, c) + v] for v in vox) for c in range(c_)]
        hidden = [b1[h] + sum(w1[h, c, 0, 0, 0] * ctx[c] for c in range(c_)) for h in range(w1.shape[0])]
        mean = sum(hidden) / len(hidden)
        var = sum((x - mean) ** 2 for x in hidden) / len(hidden)
        normed = [max(0.0, (x - mean) / math.sqrt(var + 1e-5) * gamma[h] + beta[h]) for h, x in enumerate(hidden)]
        for c in range(c_):
            add = b2[c] + sum(w2[c, h, 0, 0, 0] * normed[h] for h in range(len(normed)))
            for v in vox:
                out[(b, c) + v] += add
    return out


def ref_affinity_mse(fs: np.ndarray, ft: np.ndarray) -> float:
    total, count = 0.0, 0
    for b in range(fs.shape[0]):
        a = [fs[b].reshape(fs.shape[1], -1), ft[b].reshape(ft.shape[1], -1)]
        a = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in a]
        for i in range(fs.shape[1]):
            for j in range(fs.shape[1]):
                total += (float(a[0][i] @ a[0][j]) - float(a[1][i] @ a[1][j])) ** 2
                count += 1
    return total / count


def randomise(module: torch.nn.Module) -> None:
    """Non-trivial values for every parameter (the zero-initialised last layer of the context block included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)


# label with class 2 absent from sample 1 (a patch without tumour)
LABEL = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
LABEL[0, 0, 1:3, 1:3, 1:4] = 1
LABEL[0, 0, 2, 2, 2] = 2
LABEL[0, 0, 3, 0, 0] = 2
LABEL[1, 0, 0:2, :, 1:3] = 1


# ----------------------------------------------------------------------------------------------------------------------
# weights: w_k and λ(e)
# ----------------------------------------------------------------------------------------------------------------------
def test_stage_weights_by_hand() -> None:
    r = 2 ** (-1.2)  # 2^(−3·0.4) = 0.435275...
    assert r == pytest.approx(0.4352752816)
    assert stage_weights(3) == pytest.approx([1 / (1 + r + r * r), r / (1 + r + r * r), r * r / (1 + r + r * r)])
    assert stage_weights(3) == pytest.approx([0.615483, 0.267905, 0.116612], abs=1e-6)
    assert sum(stage_weights(4, alpha=0.2)) == pytest.approx(1.0)
    assert stage_weights(2, alpha=0.0) == pytest.approx([0.5, 0.5])
    assert stage_weights(1) == [1.0]


def test_lambda_warmup_linear_over_first_60_percent() -> None:
    lam = LinearWarmupWeight(max_value=0.01, warmup_fraction=0.6)
    # 10 epochs: warm-up spans 6 epochs, λ(e) = 0.01·e/6 then 0.01
    assert [lam(e, 10) for e in range(1, 11)] == pytest.approx(
        [0.01 / 6, 0.02 / 6, 0.005, 0.04 / 6, 0.05 / 6, 0.01, 0.01, 0.01, 0.01, 0.01]
    )
    # 5 epochs: spans 3
    assert [lam(e, 5) for e in range(1, 6)] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.01])
    assert LinearWarmupWeight(0.02, 0.0)(1, 10) == 0.02
    with pytest.raises(ValueError):
        LinearWarmupWeight(0.01, 1.5)


# ----------------------------------------------------------------------------------------------------------------------
# MS-SARD: attention, masks, region and attention losses
# ----------------------------------------------------------------------------------------------------------------------
def test_attention_maps_by_hand() -> None:
    f = torch.randn(2, 3, 2, 3, 2)
    s, cw = attention_maps(f, 0.5)
    ref_s, ref_c = ref_attention(np64(f), 0.5)
    assert s.shape == (2, 1, 2, 3, 2) and cw.shape == (2, 3, 1, 1, 1)
    np.testing.assert_allclose(np64(s)[:, 0], ref_s, rtol=1e-5)
    np.testing.assert_allclose(np64(cw).reshape(2, 3), ref_c, rtol=1e-5)
    assert s.mean().item() == pytest.approx(1.0) and cw.mean().item() == pytest.approx(1.0)


def test_region_masks_by_hand_with_class_absent_from_a_patch() -> None:
    fg, bg = region_masks(LABEL, (4, 4, 4), num_classes=3)
    ref_fg, ref_bg = ref_masks(LABEL[:, 0].numpy(), 3)
    np.testing.assert_allclose(np64(fg)[:, 0], ref_fg, rtol=1e-6)
    np.testing.assert_allclose(np64(bg)[:, 0], ref_bg, rtol=1e-6)
    # sample 0 has liver and tumour (each sums to 1), sample 1 only liver: class 2 contributes nothing, no NaN
    assert fg[0].sum().item() == pytest.approx(2.0) and fg[1].sum().item() == pytest.approx(1.0)
    assert bg[0].sum().item() == pytest.approx(1.0) and bg[1].sum().item() == pytest.approx(1.0)
    assert fg[0, 0, 2, 2, 2].item() == pytest.approx(0.5)  # one of the two tumour voxels
    assert fg[0, 0, 1, 1, 1].item() == pytest.approx(1 / 11)  # one of the 11 liver voxels of sample 0


def test_region_masks_at_a_stage_resolution_use_nearest_labels() -> None:
    fg, bg = region_masks(LABEL, (2, 2, 2), num_classes=3)
    small = LABEL[:, 0, ::2, ::2, ::2].numpy()  # nearest, factor 2: voxel (2i, 2j, 2k)
    ref_fg, ref_bg = ref_masks(small, 3)
    np.testing.assert_allclose(np64(fg)[:, 0], ref_fg, rtol=1e-6)
    np.testing.assert_allclose(np64(bg)[:, 0], ref_bg, rtol=1e-6)


def test_region_loss_by_hand_fg_and_bg() -> None:
    fs, ft = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    s_t, c_t = attention_maps(ft, 0.5)
    fg, bg = region_masks(LABEL, (4, 4, 4), 3)
    ref_s, ref_c = ref_attention(np64(ft), 0.5)
    ref_fg, ref_bg = ref_masks(LABEL[:, 0].numpy(), 3)
    for mask, ref_mask in ((fg, ref_fg), (bg, ref_bg)):
        expected = ref_region(np64(fs), np64(ft), ref_mask, ref_s, ref_c)
        assert region_loss(fs, ft, mask, s_t, c_t).item() == pytest.approx(expected, rel=1e-5)


def test_region_loss_empty_foreground_is_zero_and_attached() -> None:
    fs = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    ft = torch.randn(2, 3, 2, 2, 2)
    fg, bg = region_masks(torch.zeros(2, 1, 2, 2, 2, dtype=torch.long), (2, 2, 2), 3)
    s_t, c_t = attention_maps(ft)
    loss = region_loss(fs, ft, fg, s_t, c_t)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(fs.grad == 0)
    assert region_loss(fs, ft, bg, s_t, c_t).item() > 0  # all background: the bg term carries the batch


def test_attention_loss_by_hand() -> None:
    fs, ft = torch.randn(2, 3, 2, 3, 2), torch.randn(2, 3, 2, 3, 2)
    assert attention_loss(fs, ft, 0.5).item() == pytest.approx(ref_attention_loss(np64(fs), np64(ft), 0.5), rel=1e-5)
    assert attention_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# MS-CA: global context and relation
# ----------------------------------------------------------------------------------------------------------------------
def test_global_context_block_starts_as_identity_and_matches_loops() -> None:
    block = GlobalContextBlock(4, ratio=0.5)
    f = torch.randn(2, 4, 2, 3, 2)
    assert torch.equal(block(f), f)  # zero-initialised last layer
    randomise(block)
    np.testing.assert_allclose(np64(block(f)), ref_global_context(np64(f), block), rtol=1e-5, atol=1e-6)


def test_relation_loss_mse_and_affinity_by_hand() -> None:
    fs, ft = torch.randn(2, 3, 2, 2, 2), torch.randn(2, 3, 2, 2, 2)
    assert relation_loss(fs, ft, "mse").item() == pytest.approx(float(((np64(fs) - np64(ft)) ** 2).mean()), rel=1e-5)
    expected = ref_affinity_mse(np64(fs), np64(ft))
    assert relation_loss(fs, ft, "affinity").item() == pytest.approx(expected, rel=1e-5)
    assert relation_loss(fs, 3.0 * fs, "affinity").item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    with pytest.raises(ValueError):
        relation_loss(fs, ft, "cosine")


# ----------------------------------------------------------------------------------------------------------------------
# the whole ReCo-KD loss
# ----------------------------------------------------------------------------------------------------------------------
def _stage_features() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two stages: 4³ (student 2 → teacher 3 channels, aligned by a 1×1×1 conv) and 2³ (4 = 4, identity)."""
    student = [torch.randn(2, 2, 4, 4, 4), torch.randn(2, 4, 2, 2, 2)]
    teacher = [torch.randn(2, 3, 4, 4, 4), torch.randn(2, 4, 2, 2, 2)]
    return student, teacher


@pytest.mark.parametrize("relation", ["mse", "affinity"])
def test_reco_loss_by_hand(relation: str) -> None:
    loss_fn = ReCoKDLoss([2, 4], [3, 4], num_classes=3, temperature=0.5, alpha=0.4, relation=relation)
    randomise(loss_fn)
    assert isinstance(loss_fn.align[1], torch.nn.Identity)
    student, teacher = _stage_features()
    out = loss_fn(student, teacher, LABEL)
    assert set(out) == {"fg", "bg", "att", "rel"}

    w = stage_weights(2, 0.4)
    expected = {"fg": 0.0, "bg": 0.0, "att": 0.0, "rel": 0.0}
    aligned = [
        ref_conv1x1(np64(student[0]), np64(loss_fn.align[0].weight), np64(loss_fn.align[0].bias)),
        np64(student[1]),
    ]
    for k in range(2):
        fs, ft = aligned[k], np64(teacher[k])
        y = LABEL[:, 0, :: 2**k, :: 2**k, :: 2**k].numpy()
        fg, bg = ref_masks(y, 3)
        s, c = ref_attention(ft, 0.5)
        gs, gt = ref_global_context(fs, loss_fn.context_student[k]), ref_global_context(ft, loss_fn.context_teacher[k])
        rel = float(((gs - gt) ** 2).mean()) if relation == "mse" else ref_affinity_mse(gs, gt)
        expected["fg"] += w[k] * ref_region(fs, ft, fg, s, c)
        expected["bg"] += w[k] * ref_region(fs, ft, bg, s, c)
        expected["att"] += w[k] * ref_attention_loss(fs, ft, 0.5)
        expected["rel"] += w[k] * rel
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-4), key


def test_reco_loss_teacher_gets_no_gradient_and_distillers_do() -> None:
    loss_fn = ReCoKDLoss([2, 4], [3, 4], num_classes=3)
    student, teacher = _stage_features()
    student = [f.requires_grad_(True) for f in student]
    teacher = [f.requires_grad_(True) for f in teacher]
    sum(loss_fn(student, teacher, LABEL).values()).backward()
    assert all(f.grad is None for f in teacher)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student)
    for name, p in loss_fn.named_parameters():
        # at initialisation only the context blocks' zero-initialised last layer learns (GCNet's design) ...
        learns = name.startswith("align") or ".transform.3." in name
        assert (p.grad is not None and p.grad.abs().sum() > 0) == learns, name
    # ... once it has moved, every distiller parameter gets a gradient
    randomise(loss_fn)
    loss_fn.zero_grad()
    sum(loss_fn(student, teacher, LABEL).values()).backward()
    for name, p in loss_fn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(f.grad is None for f in teacher)


def test_reco_loss_gradcheck_on_distiller_modules() -> None:
    loss_fn = ReCoKDLoss([2, 3], [3, 3], num_classes=3, relation="mse").double()
    randomise(loss_fn)
    names = [n for n, _ in loss_fn.named_parameters()]
    label = LABEL[:, :, :2, :2, :2].clone()
    label[1, 0, 0, 0, 0] = 2
    teacher = [torch.randn(2, 3, 2, 2, 2, dtype=torch.float64), torch.randn(2, 3, 1, 1, 1, dtype=torch.float64)]
    student = [torch.randn(2, 2, 2, 2, 2, dtype=torch.float64), torch.randn(2, 3, 1, 1, 1, dtype=torch.float64)]

    def total(s0, *params):
        out = functional_call(loss_fn, dict(zip(names, params)), ([s0, student[1]], teacher, label))
        return out["fg"] + out["bg"] + out["att"] + out["rel"]

    params = tuple(loss_fn.get_parameter(n).detach().clone().requires_grad_(True) for n in names)
    s0 = student[0].clone().requires_grad_(True)
    assert gradcheck(total, (s0, *params), fast_mode=True)


def test_reco_loss_rejects_mismatched_stages() -> None:
    loss_fn = ReCoKDLoss([2, 4], [3, 4], num_classes=3)
    student, teacher = _stage_features()
    with pytest.raises(ValueError):
        loss_fn(student[:1], teacher, LABEL)
    with pytest.raises(ValueError):
        loss_fn([student[0], torch.randn(2, 4, 3, 3, 3)], teacher, LABEL)
    with pytest.raises(ValueError):
        ReCoKDLoss([2], [3, 4], num_classes=3)


@pytest.mark.parametrize("parts, keys", [(["sard"], {"fg", "bg", "att"}), (["ca"], {"rel"})])
def test_reco_loss_parts_drop_a_term_family_and_keep_the_others_values(parts: list[str], keys: set[str]) -> None:
    """The ablations MS-SARD only / MS-CA only: the kept terms equal the full loss's, the dropped ones are gone."""
    torch.manual_seed(0)
    full = ReCoKDLoss([2, 4], [3, 4], num_classes=3)
    randomise(full)
    part = ReCoKDLoss([2, 4], [3, 4], num_classes=3, parts=parts)
    part.load_state_dict(full.state_dict(), strict=False)  # the same alignment (and context) weights
    student, teacher = _stage_features()
    expected, out = full(student, teacher, LABEL), part(student, teacher, LABEL)
    assert set(out) == keys
    for key in keys:
        assert out[key].item() == pytest.approx(expected[key].item(), rel=1e-6), key
    has_context = any(n.startswith("context_") for n, _ in part.named_parameters())
    assert has_context == ("ca" in parts)  # no unused global-context block without MS-CA
    sum(out.values()).backward()
    assert all(p.grad is not None for p in part.parameters())


def test_reco_loss_parts_default_is_the_whole_method_and_bad_parts_are_refused() -> None:
    assert ReCoKDLoss([2], [3], num_classes=3).parts == ("sard", "ca")
    for bad in ([], ["sard", "kd"]):
        with pytest.raises(ValueError, match="parts"):
            ReCoKDLoss([2], [3], num_classes=3, parts=bad)
