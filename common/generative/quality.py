"""Is a generated transfer set useful, or has the diffusion model collapsed or memorised? (METHODS.md §2)

Every figure is computed twice: for the generated images and, as the reference a user reads them against, for a
held-out real split (never seen by the diffusion model). Both are compared with the real images the model was
trained on:

- ``nn_mse`` / ``nn_psnr`` / ``nn_ssim``: each image against its nearest training image (by MSE), intensities
  scaled to [0, 1]. Far above the held-out figures means copies of the training set (memorisation); far below,
  images unlike any real one.
- ``diversity``: mean pairwise MSE between the images of the set. Near 0 means mode collapse.
- ``intensity_w1``: Wasserstein-1 distance between the set's pooled intensity histogram and the training set's
  (in [0, 1] units).
- ``frechet``: Fréchet distance between Gaussians fitted to the teacher's image embeddings (global-average
  pooled) of the set and of the training set, ``|μ₁-μ₂|² + Tr(Σ₁ + Σ₂ - 2(Σ₁Σ₂)^½)``. It grows as the sample
  gets smaller, so the generated set is also scored on random subsets of the reference's size (``frechet_matched``,
  mean of ``repeats``): that, not ``frechet``, is the figure to compare with the reference.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import SSIMMetric
from monai.transforms import LoadImage
from torch import nn
from tqdm import tqdm

from common.data.datalist import load_datalist

__all__ = [
    "image_batch",
    "frechet_distance",
    "nearest_real",
    "embed",
    "set_figures",
    "format_report",
    "TransferSetQuality",
    "TeacherEncoder",
]

logger = logging.getLogger(__name__)


def image_batch(
    items: Sequence[dict], image_size: int, intensity_range: Sequence[float] = (0.0, 1.0), progress: bool = False
) -> torch.Tensor:
    """The ``image`` of each item as (N, 1, s, s) in [0, 1] (``intensity_range`` → [0, 1], clipped; resized
    bilinearly; the first channel of multi-channel images; the middle slice of the last axis of volumes)."""
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    lo, hi = float(intensity_range[0]), float(intensity_range[1])
    out = []
    for item in tqdm(items, desc="loading", unit="image", disable=not progress):
        img = torch.as_tensor(np.asarray(loader(item["image"]), np.float32))[:1]
        if img.ndim == 4:
            img = img[..., img.shape[-1] // 2]
        img = ((img - lo) / max(hi - lo, 1e-12)).clamp(0.0, 1.0)
        out.append(F.interpolate(img[None], size=(image_size, image_size), mode="bilinear", align_corners=False)[0])
    return torch.stack(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (n, d) and ``b`` (m, d)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # Tr((Σa Σb)^½) = Σ √λ(Σa^½ Σb Σa^½): that matrix is symmetric PSD, so eigh is stable (sqrtm of Σa Σb is not).
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_covmean)


def nearest_real(query: torch.Tensor, real: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query image, the index of the real image with the lowest MSE and that MSE."""
    r = real.flatten(1).double()
    idx, mse = [], []
    for q in query.flatten(1).double().split(chunk):
        d = torch.cdist(q, r).pow(2) / q.shape[1]
        m, i = d.min(1)
        idx.append(i)
        mse.append(m)
    return torch.cat(idx), torch.cat(mse).float()


def _pairwise_mse(x: torch.Tensor) -> float:
    if len(x) < 2:
        return float("nan")
    flat = x.flatten(1).double()
    d = torch.cdist(flat, flat).pow(2) / flat.shape[1]
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def _intensity_w1(x: torch.Tensor, real: torch.Tensor, bins: int = 256) -> float:
    h1 = torch.histc(x.float(), bins=bins, min=0.0, max=1.0).double()
    h2 = torch.histc(real.float(), bins=bins, min=0.0, max=1.0).double()
    c1, c2 = torch.cumsum(h1 / h1.sum(), 0), torch.cumsum(h2 / h2.sum(), 0)
    return float((c1 - c2).abs().sum() / bins)  # W1 of two histograms on [0, 1] = ∫|F₁ - F₂|


@torch.no_grad()
def embed(
    encoder: nn.Module | None, images: torch.Tensor, batch_size: int = 16, device="cpu", desc: str = "embedding"
) -> np.ndarray:
    """Global-average-pooled features of ``encoder`` (e.g. the teacher's ``image_encoder`` after its
    ``preprocess``) for images in [0, 1]."""
    feats = []
    for x in tqdm(images.split(batch_size), desc=desc, unit="batch"):
        f = encoder(x.to(device))
        feats.append(f.flatten(2).mean(-1).double().cpu())
    return torch.cat(feats).numpy()


def set_figures(
    images: torch.Tensor,
    real: torch.Tensor,
    feats: np.ndarray | None = None,
    real_feats: np.ndarray | None = None,
    matched_size: int | None = None,
    repeats: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """The figures of the module docstring for one set of images (N, 1, s, s) in [0, 1] against ``real``."""
    idx, mse = nearest_real(images, real)
    win = min(11, min(images.shape[-2:]) - (1 - min(images.shape[-2:]) % 2))  # odd, at most the image size
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=win)(images.float(), real[idx].float()).flatten()
    figures = {
        "count": int(len(images)),
        "nn_mse": float(mse.mean()),
        "nn_psnr": float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()),
        "nn_ssim": float(ssim.mean()),
        "nn_unique_fraction": float(len(set(idx.tolist())) / min(len(images), len(real))),
        "diversity": _pairwise_mse(images),
        "intensity_w1": _intensity_w1(images, real),
    }
    if feats is not None and real_feats is not None:
        figures["frechet"] = frechet_distance(feats, real_feats)
        if matched_size is not None and 1 < matched_size < len(feats):
            rng = np.random.default_rng(seed)
            subsets = [rng.choice(len(feats), matched_size, replace=False) for _ in range(repeats)]
            figures["frechet_matched"] = float(np.mean([frechet_distance(feats[s], real_feats) for s in subsets]))
        else:
            figures["frechet_matched"] = figures["frechet"]
    return figures


ROWS = [
    ("count", "images", "{:d}"),
    ("nn_mse", "nearest-real MSE", "{:.5f}"),
    ("nn_psnr", "nearest-real PSNR (dB)", "{:.2f}"),
    ("nn_ssim", "nearest-real SSIM", "{:.3f}"),
    ("nn_unique_fraction", "distinct nearest neighbours (fraction)", "{:.2f}"),
    ("diversity", "diversity (mean pairwise MSE)", "{:.5f}"),
    ("intensity_w1", "intensity histogram W1", "{:.4f}"),
    ("frechet", "Fréchet distance, teacher embedding (all)", "{:.3f}"),
    ("frechet_matched", "Fréchet distance, size-matched", "{:.3f}"),
]


def format_report(report: dict) -> str:
    """A Markdown table: one row per figure, columns generated / held-out real."""
    gen, ref = report["generated"], report["reference"]
    n_real, split = report["real_count"], report["reference_split"]
    lines = [f"| figure (vs {n_real} training images) | generated | held-out real ({split}) |", "|---|---|---|"]
    for key, name, fmt in ROWS:
        if key in gen or key in ref:
            cells = [fmt.format(d[key]) if key in d and np.isfinite(d[key]) else "–" for d in (gen, ref)]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


class TransferSetQuality:
    """Score the transfer set in ``transfer_dir`` (its ``datalist.json``, ``training`` list) against the real
    ``real_split`` of ``dataset_dir`` with ``reference_split`` as the held-out reference; write
    ``transfer_dir/quality.json`` and ``quality.md`` and log the table. ``encoder`` (optional; e.g. the
    teacher's image encoder with its preprocessing, :class:`TeacherEncoder`) gives the Fréchet distance."""

    def __init__(
        self,
        transfer_dir: str | Path,
        dataset_dir: str | Path,
        image_size: int = 128,
        encoder: nn.Module | None = None,
        real_split: str = "training",
        reference_split: str = "validation",
        intensity_range: Sequence[float] = (0.0, 1.0),
        repeats: int = 10,
        batch_size: int = 16,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.transfer_dir = Path(transfer_dir)
        self.dataset_dir = Path(dataset_dir)
        self.image_size = int(image_size)
        self.encoder = encoder
        self.real_split, self.reference_split = real_split, reference_split
        self.intensity_range = intensity_range
        self.repeats = int(repeats)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.seed = int(seed)

    def run(self) -> dict:
        generated_items = load_datalist(self.transfer_dir, "training", check=False)
        real_items = load_datalist(self.dataset_dir, self.real_split, check=False)
        ref_items = load_datalist(self.dataset_dir, self.reference_split, check=False)
        load = lambda items: image_batch(items, self.image_size, self.intensity_range, progress=True)  # noqa: E731
        generated, real, ref = load(generated_items), load(real_items), load(ref_items)
        feats = {}
        if self.encoder is not None:
            self.encoder.eval()
            for name, x in (("generated", generated), ("real", real), ("reference", ref)):
                feats[name] = embed(self.encoder, x, self.batch_size, self.device, desc=f"embedding {name}")
        report = {
            "transfer_dir": str(self.transfer_dir),
            "dataset_dir": str(self.dataset_dir),
            "real_split": self.real_split,
            "reference_split": self.reference_split,
            "real_count": len(real),
            "image_size": self.image_size,
            "generated": set_figures(
                generated, real, feats.get("generated"), feats.get("real"), len(ref), self.repeats, self.seed
            ),
            "reference": set_figures(ref, real, feats.get("reference"), feats.get("real")),
        }
        (self.transfer_dir / "quality.json").write_text(json.dumps(report, indent=2))
        table = format_report(report)
        (self.transfer_dir / "quality.md").write_text(table + "\n")
        logger.info("Transfer-set quality (%s):\n%s", self.transfer_dir / "quality.json", table)
        return report


class TeacherEncoder(nn.Module):
    """The teacher's image encoder with its own preprocessing (grey → RGB, resize, pixel normalisation): the
    embedding space the Fréchet distance is measured in."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.image_encoder(self.teacher.preprocess(x))
