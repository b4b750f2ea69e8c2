"""The iad_student bundle through ``monai.bundle`` on a tiny synthetic task with a ``tiny`` LoRA teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import run, verify_net_in_out

from tests.conftest import tiny_distillation_task

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "iad_student" / "configs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic 64-px task, a random tiny SAM 'checkpoint' and a LoRA adapter on it."""
    root = tmp_path_factory.mktemp("iad")
    return root, tiny_distillation_task(root)


def _cfg(*names: str) -> list[str]:
    return [str(CONFIGS / n) for n in names]


def test_two_stage_train_evaluate_and_inference(setup):
    root, o = setup
    bundle = root / "full"
    run(config_file=_cfg("train.json"), bundle_root=str(bundle), epochs=2, kis_epochs=1, **o)
    ckpt = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert {"model", "distillers", "optimizer", "lr_scheduler", "best_metric", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["epoch"] == 2 and ckpt["trainer"]["iteration"] == 4  # 2 epochs of 2 batches
    assert any(k.startswith("kas_kas.project") for k in ckpt["distillers"])  # KAS projections are saved
    assert (bundle / "models" / "model.pt").is_file()
    assert list((root / "teacher_cache").glob("*/*.pt")), "the teacher cache was filled"

    run(config_file=_cfg("train.json", "evaluate.json"), bundle_root=str(bundle), **o)
    summary = json.loads((bundle / "eval" / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2 and set(summary["classes"]) == {"class1", "class2"}

    run(config_file=_cfg("inference.json"), bundle_root=str(bundle), dataset_dir=o["dataset_dir"], image_size=64,
        num_workers=0)  # fmt: skip
    assert len(list((bundle / "predictions").glob("*_seg.nii.gz"))) == 2


@pytest.mark.parametrize(
    "variant", ["student_only", "kd", "at", "cwd", "dist", "kis_only", "kas_only", "kd_kas"]
)  # fmt: skip
def test_comparison_variants_train(setup, variant):
    root, o = setup
    bundle = root / variant
    run(config_file=_cfg("train.json", f"{variant}.json"), bundle_root=str(bundle), epochs=2, kis_epochs=1, **o)
    assert (bundle / "models" / "model.pt").is_file()


def test_student_inference_config_verifies():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        any=2,
        device="cpu",
    )
