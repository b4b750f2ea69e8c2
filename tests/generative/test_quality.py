"""Quality figures of a transfer set, checked against values computed by hand."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from common.generative.quality import (
    TransferSetQuality,
    _intensity_w1,
    _pairwise_mse,
    format_report,
    frechet_distance,
    nearest_real,
    set_figures,
)


def test_frechet_distance_of_1d_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (400, 1)), rng.normal(-0.5, 0.5, (300, 1))
    mu_a, mu_b, sd_a, sd_b = a.mean(), b.mean(), a.std(ddof=1), b.std(ddof=1)
    expected = (mu_a - mu_b) ** 2 + sd_a**2 + sd_b**2 - 2 * sd_a * sd_b  # = (μa-μb)² + (σa-σb)²
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_matches_the_matrix_square_root_and_is_zero_for_one_set():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (500, 3)) * [1.0, 2.0, 3.0]
    b = rng.normal(0, 1, (500, 3)) * [2.0, 2.0, 1.0] + [1.0, 0.0, 0.0]
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # The textbook route: the principal square root of Σa·Σb (the code goes through Σa^½ Σb Σa^½ instead).
    covmean = np.real(scipy.linalg.sqrtm(ca @ cb))
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_nearest_real_and_pairwise_mse():
    real = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 0.5, 1.0)])
    query = torch.stack([torch.full((1, 2, 2), 0.9), torch.full((1, 2, 2), 0.2)])
    idx, mse = nearest_real(query, real)
    assert idx.tolist() == [2, 0]
    assert mse.tolist() == pytest.approx([0.01, 0.04])
    # pairs (0, .5, 1): MSEs .25, 1, .25 → mean over ordered pairs = (2 · 1.5) / 6
    assert _pairwise_mse(real) == pytest.approx(0.5)


def test_intensity_w1_of_two_point_masses():
    x = torch.full((1, 1, 4, 4), 0.25)
    y = torch.full((1, 1, 4, 4), 0.75)
    assert _intensity_w1(x, y, bins=100) == pytest.approx(0.5, abs=0.011)
    assert _intensity_w1(x, x) == 0.0


def test_figures_flag_memorisation_and_collapse():
    torch.manual_seed(0)
    real = torch.rand(6, 1, 16, 16)
    copies = set_figures(real[[0, 1, 2, 3]], real)
    assert copies["nn_mse"] == pytest.approx(0.0, abs=1e-12)
    assert copies["nn_psnr"] == pytest.approx(100.0)  # MSE clamped at 1e-10
    assert copies["nn_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert copies["nn_unique_fraction"] == 1.0
    collapsed = set_figures(real[[5, 5, 5, 5]] + 0.01, real)
    assert collapsed["diversity"] == pytest.approx(0.0, abs=1e-9)
    assert collapsed["nn_unique_fraction"] == 0.25


def test_size_matched_frechet_is_the_mean_over_subsets():
    rng = np.random.default_rng(0)
    feats, real = rng.normal(size=(40, 2)), rng.normal(size=(30, 2))
    images, real_images = torch.rand(40, 1, 8, 8), torch.rand(30, 1, 8, 8)
    fig = set_figures(images, real_images, feats, real, matched_size=10, repeats=3, seed=4)
    gen = np.random.default_rng(4)
    subsets = [gen.choice(40, 10, replace=False) for _ in range(3)]
    assert fig["frechet_matched"] == pytest.approx(np.mean([frechet_distance(feats[s], real) for s in subsets]))
    assert fig["frechet"] == pytest.approx(frechet_distance(feats, real))


class _MeanEncoder(nn.Module):
    """A fixed 'embedding' (B, 2, 1, 1): mean and standard deviation of each image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)[..., None, None]


def _write_set(root, split_images: dict[str, list[np.ndarray]]) -> None:
    (root / "images").mkdir(parents=True)
    datalist = {}
    for split, images in split_images.items():
        datalist[split] = []
        for i, img in enumerate(images):
            name = f"images/{split}_{i}.nii.gz"
            nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), root / name)
            datalist[split].append({"image": name})
    (root / "datalist.json").write_text(json.dumps(datalist))


def test_transfer_set_quality_writes_json_and_table(tmp_path):
    rng = np.random.default_rng(0)
    real = [rng.uniform(-100, 300, (12, 12)) for _ in range(5)]  # in HU: the report maps intensity_range to [0, 1]
    held_out = [rng.uniform(-100, 300, (12, 12)) for _ in range(3)]
    _write_set(tmp_path / "data", {"training": real, "validation": held_out})
    _write_set(tmp_path / "synth", {"training": real[:2] * 2})  # copies of two training images
    report = TransferSetQuality(
        tmp_path / "synth", tmp_path / "data", image_size=12, encoder=_MeanEncoder(), intensity_range=(-100, 300)
    ).run()
    saved = json.loads((tmp_path / "synth" / "quality.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert report["generated"]["count"] == 4 and report["reference"]["count"] == 3 and report["real_count"] == 5
    assert report["generated"]["nn_mse"] < 1e-10  # copies of training images
    assert report["reference"]["nn_mse"] > 0.05
    assert report["generated"]["nn_unique_fraction"] == 0.5
    assert np.isfinite(report["generated"]["frechet_matched"]) and np.isfinite(report["reference"]["frechet"])
    table = (tmp_path / "synth" / "quality.md").read_text()
    assert "| nearest-real MSE |" in table and "held-out real (validation)" in table
    assert table.strip() == format_report(report)
