"""Tests of the baseline distillation losses (METHODS.md §6) against hand-computed values (explicit loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from common.losses.baselines import (
    AttentionTransferLoss,
    ChannelWiseDistillationLoss,
    DISTLoss,
    KnowledgeDistillationLoss,
)
from tests.losses.reference import block_mean, np64


def softmax(v: list[float]) -> list[float]:
    e = [math.exp(a) for a in v]
    return [a / sum(e) for a in e]


def sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def pixel_probs(o: np.ndarray, b: int, i: int, j: int, temp: float) -> list[float]:
    """Class probabilities of one pixel: softmax of O/T, or [1 − σ, σ] when K = 1."""
    if o.shape[1] == 1:
        p = sigmoid(o[b, 0, i, j] / temp)
        return [1 - p, p]
    return softmax([o[b, k, i, j] / temp for k in range(o.shape[1])])


# ----------------------------------------------------------------------------------------------------------------------
# KD
# ----------------------------------------------------------------------------------------------------------------------
def ref_kd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    b_, _, h_, w_ = s.shape
    total = 0.0
    for b in range(b_):
        for i in range(h_):
            for j in range(w_):
                ps, pt = pixel_probs(s, b, i, j, temp), pixel_probs(t, b, i, j, temp)
                total += sum(q * math.log(q / p) for q, p in zip(pt, ps))
    return total / (b_ * h_ * w_) * temp**2


@pytest.mark.parametrize("temp", [4.0, 1.0])
def test_kd_value(temp: float) -> None:
    s, t = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)
    loss = KnowledgeDistillationLoss(temperature=temp)(s, t)
    assert loss.item() == pytest.approx(ref_kd(np64(s), np64(t), temp), rel=1e-5)


def test_kd_binary_sigmoid() -> None:
    s, t = 3 * torch.randn(2, 1, 3, 3), 3 * torch.randn(2, 1, 3, 3)
    loss = KnowledgeDistillationLoss()(s, t)
    assert loss.item() == pytest.approx(ref_kd(np64(s), np64(t), 4.0), rel=1e-5)


def test_kd_teacher_resized_gradcheck_and_detached() -> None:
    s = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    loss_fn = KnowledgeDistillationLoss()
    assert loss_fn(s, t).item() == pytest.approx(ref_kd(np64(s), block_mean(np64(t)), 4.0), rel=1e-6)
    assert gradcheck(lambda x: loss_fn(x, t), (s,))
    loss_fn(s, t).backward()
    assert s.grad is not None and t.grad is None


# ----------------------------------------------------------------------------------------------------------------------
# AT
# ----------------------------------------------------------------------------------------------------------------------
def ref_at_map(f: np.ndarray, b: int) -> np.ndarray:
    """Flattened mean over channels of F² (p = 2) for sample b, before normalisation."""
    c_, h_, w_ = f.shape[1:]
    a = np.array([sum(f[b, c, i, j] ** 2 for c in range(c_)) / c_ for i in range(h_) for j in range(w_)])
    return a


def ref_at_stage(fs: np.ndarray, ft: np.ndarray, resize_student: bool = False) -> float:
    diffs = []
    for b in range(fs.shape[0]):
        a_s, a_t = ref_at_map(fs, b), ref_at_map(ft, b)
        if resize_student:
            n = int(math.isqrt(a_s.size))
            a_s = block_mean(a_s.reshape(n, n)).ravel()
        a_s, a_t = a_s / np.linalg.norm(a_s), a_t / np.linalg.norm(a_t)
        diffs.extend(((a_s - a_t) ** 2).tolist())
    return sum(diffs) / len(diffs)


def test_at_value_two_stages_different_channels() -> None:
    s1, t1 = torch.randn(2, 2, 3, 3), torch.randn(2, 5, 3, 3)
    s2, t2 = torch.randn(2, 4, 2, 2), torch.randn(2, 8, 2, 2)
    loss = AttentionTransferLoss()([s1, s2], [t1, t2])
    expected = (ref_at_stage(np64(s1), np64(t1)) + ref_at_stage(np64(s2), np64(t2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert AttentionTransferLoss()(s1, t1).item() == pytest.approx(ref_at_stage(np64(s1), np64(t1)), rel=1e-5)


def test_at_student_map_resized_to_teacher() -> None:
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 6, 2, 2)
    loss = AttentionTransferLoss()(s, t)
    assert loss.item() == pytest.approx(ref_at_stage(np64(s), np64(t), resize_student=True), rel=1e-5)


def test_at_gradcheck_and_teacher_detached() -> None:
    s = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    loss_fn = AttentionTransferLoss()
    assert gradcheck(lambda x: loss_fn(x, t), (s,))
    loss_fn(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_at_stage_count_mismatch() -> None:
    with pytest.raises(ValueError):
        AttentionTransferLoss()([torch.randn(1, 2, 2, 2)], [])


# ----------------------------------------------------------------------------------------------------------------------
# CWD
# ----------------------------------------------------------------------------------------------------------------------
def ref_cwd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    b_, c_, h_, w_ = s.shape
    total = 0.0
    for b in range(b_):
        for c in range(c_):
            ps = softmax([s[b, c, i, j] / temp for i in range(h_) for j in range(w_)])
            pt = softmax([t[b, c, i, j] / temp for i in range(h_) for j in range(w_)])
            total += sum(q * math.log(q / p) for q, p in zip(pt, ps))
    return total * temp**2 / (b_ * c_)


@pytest.mark.parametrize("channels", [3, 1])
def test_cwd_value(channels: int) -> None:
    s, t = 3 * torch.randn(2, channels, 3, 3), 3 * torch.randn(2, channels, 3, 3)
    loss = ChannelWiseDistillationLoss()(s, t)
    assert loss.item() == pytest.approx(ref_cwd(np64(s), np64(t), 4.0), rel=1e-5)


def test_cwd_teacher_resized_gradcheck_and_detached() -> None:
    s = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    loss_fn = ChannelWiseDistillationLoss()
    assert loss_fn(s, t).item() == pytest.approx(ref_cwd(np64(s), block_mean(np64(t)), 4.0), rel=1e-6)
    assert gradcheck(lambda x: loss_fn(x, t), (s,))
    loss_fn(s, t).backward()
    assert s.grad is not None and t.grad is None


# ----------------------------------------------------------------------------------------------------------------------
# DIST
# ----------------------------------------------------------------------------------------------------------------------
def ref_pearson(u: list[float], v: list[float], eps: float = 1e-8) -> float:
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    num = sum((a - mu) * (b - mv) for a, b in zip(u, v))
    den = math.sqrt(sum((a - mu) ** 2 for a in u)) * math.sqrt(sum((b - mv) ** 2 for b in v))
    return num / (den + eps)


def ref_dist(s: np.ndarray, t: np.ndarray, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0) -> float:
    b_, _, h_, w_ = s.shape
    ys, yt = [], []  # one list of class probabilities per pixel
    for b in range(b_):
        for i in range(h_):
            for j in range(w_):
                ys.append(pixel_probs(s, b, i, j, tau))
                yt.append(pixel_probs(t, b, i, j, tau))
    k_ = len(ys[0])
    inter = 1 - sum(ref_pearson(u, v) for u, v in zip(ys, yt)) / len(ys)
    intra = 1 - sum(ref_pearson([p[k] for p in ys], [p[k] for p in yt]) for k in range(k_)) / k_
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_value(beta: float, gamma: float, tau: float) -> None:
    s, t = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)
    loss = DISTLoss(beta=beta, gamma=gamma, temperature=tau)(s, t)
    assert loss.item() == pytest.approx(ref_dist(np64(s), np64(t), beta, gamma, tau), rel=1e-5)


def test_dist_binary_sigmoid() -> None:
    s, t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    assert DISTLoss()(s, t).item() == pytest.approx(ref_dist(np64(s), np64(t)), rel=1e-5)


def test_dist_identical_is_zero() -> None:
    s = torch.randn(2, 3, 3, 3)
    assert DISTLoss()(s, s.clone()).item() == pytest.approx(0.0, abs=1e-5)


def test_dist_teacher_resized_gradcheck_and_detached() -> None:
    s = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    loss_fn = DISTLoss()
    assert loss_fn(s, t).item() == pytest.approx(ref_dist(np64(s), block_mean(np64(t))), rel=1e-6)
    assert gradcheck(lambda x: loss_fn(x, t), (s,))
    loss_fn(s, t).backward()
    assert s.grad is not None and t.grad is None


# ----------------------------------------------------------------------------------------------------------------------
# 3D inputs
# ----------------------------------------------------------------------------------------------------------------------
def test_baselines_accept_3d() -> None:
    s = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, 4)
    for loss_fn in (KnowledgeDistillationLoss(), ChannelWiseDistillationLoss(), DISTLoss(), AttentionTransferLoss()):
        loss = loss_fn(s, t)
        assert torch.isfinite(loss)
        loss.backward()
    assert s.grad is not None
