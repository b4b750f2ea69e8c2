"""The iad_student bundle through ``monai.bundle`` on a tiny synthetic task with a ``test``-preset LoRA teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, run, verify_net_in_out

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
    assert {"model", "loss_modules", "optimizer", "lr_scheduler", "best_metric", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["epoch"] == 2 and ckpt["trainer"]["iteration"] == 4  # 2 epochs of 2 batches
    assert any(k.startswith("kas_kas.project") for k in ckpt["loss_modules"])  # KAS projections are saved
    assert (bundle / "models" / "model.pt").is_file()
    assert list((root / "teacher_cache").glob("*/*.pt")), "the teacher cache was filled"

    run(config_file=_cfg("train.json", "evaluate.json"), bundle_root=str(bundle), **o)
    summary = json.loads((bundle / "eval" / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2 and set(summary["classes"]) == {"class1", "class2"}

    run(config_file=_cfg("inference.json"), bundle_root=str(bundle), dataset_dir=o["dataset_dir"], image_size=64,
        num_workers=0)  # fmt: skip
    assert len(list((bundle / "predictions").glob("*_seg.nii.gz"))) == 2


# the loss terms each variant logs (train_<term>, epoch means), besides the total loss and L_gt
VARIANT_TERMS = {
    "student_only": set(),
    "kd": {"kd"},
    "at": {"at"},
    "cwd": {"cwd"},
    "dist": {"dist"},
    "kis_only": {"sld", "cpd"},
    "kas_only": {"kas_rfc", "kas_css"},
    "kd_kas": {"kd", "kas_rfc", "kas_css"},
}


def _train_scalars(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {t[len("train_") :] for t in acc.Tags()["scalars"] if t.startswith("train_") and t != "train_loss"}


@pytest.mark.parametrize("variant", sorted(VARIANT_TERMS))
def test_comparison_variants_train(setup, variant):
    """Each variant logs exactly its own terms (plus L_gt and the total), trains the student, and trains the loss
    modules it has (KAS projections); a variant without a teacher term leaves the teacher cache alone."""
    root, o = setup
    bundle = root / variant
    cache = Path(o["teacher_cache_dir"])
    before = {p.name for p in cache.glob("*/*.pt")}
    stages = {} if variant == "kis_only" else {"kis_epochs": 1}  # kis_only: KIS for all the epochs
    run(config_file=_cfg("train.json", f"{variant}.json"), bundle_root=str(bundle), epochs=2, **stages, **o)
    assert _train_scalars(bundle / "outputs") == {"gt"} | VARIANT_TERMS[variant]
    last = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert (bundle / "models" / "model.pt").is_file() and last["trainer"]["iteration"] == 4
    # the run's starting weights: the same config, initialised and built the way the run built it
    parser = ConfigParser()
    parser.read_config(_cfg("train.json", f"{variant}.json"))
    parser.update({"bundle_root": str(root / f"{variant}_init"), "epochs": 2, **stages, **o})
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("train#trainer")
    initial = {k: v.clone() for k, v in parser.get_parsed_content("network").state_dict().items()}
    initial_losses = {k: v.clone() for k, v in parser.get_parsed_content("loss_modules").state_dict().items()}
    moved = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, last["model"][k])]
    assert len(moved) > len(initial) // 2, "training changed few student weights"
    kas = {k: v for k, v in initial_losses.items() if k.startswith("kas_kas.project")}
    assert bool(kas) == any(
        t.startswith("kas") for t in VARIANT_TERMS[variant] | ({"kas"} if variant == "kis_only" else set())
    )
    kas_trained = any(not torch.equal(v, last["loss_modules"][k]) for k, v in kas.items())
    assert kas_trained == any(t.startswith("kas") for t in VARIANT_TERMS[variant])  # kis_only: KAS never ran
    uses_teacher = bool(VARIANT_TERMS[variant] - {"kas_rfc", "kas_css"})
    if not uses_teacher or variant == "at":  # at runs the teacher online (its embedding is not cached)
        assert {p.name for p in cache.glob("*/*.pt")} == before


def test_student_inference_config_verifies():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        any=2,
        device="cpu",
    )
