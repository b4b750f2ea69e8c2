"""The teacher_lora bundle run through ``monai.bundle`` on a tiny synthetic task with the ``test`` teacher preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import run

from common.data.synthetic import make_synthetic_dataset
from common.engines.teacher_cache import TeacherCache, teacher_fingerprint
from common.errors import DataError
from common.networks.sam_teacher import build_teacher

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "teacher_lora" / "configs"
TINY = {"teacher_arch": "test", "image_size": 64, "num_workers": 0}


def _cfg(*names: str) -> list[str]:
    return [str(CONFIGS / n) for n in names]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of train.json; returns (bundle_root, dataset_dir)."""
    root = tmp_path_factory.mktemp("teacher_lora")
    data = make_synthetic_dataset(root / "data", num_items=(4, 2, 2), size=48)
    run(
        config_file=_cfg("train.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        bundle_root=str(root),
        dataset_dir=str(data),
        epochs=1,
        batch_size=2,
        **TINY,
    )
    return root, data


def test_train_writes_best_checkpoint_adapter_and_merged(trained):
    root, _ = trained
    models = root / "models"
    for name in ("model.pt", "adapter.pt", "model_merged.pt"):
        assert (models / name).is_file(), name
    merged = torch.load(models / "model_merged.pt", weights_only=True)
    plain = build_teacher("test", image_size=64, num_classes=3, lora_rank=0)
    plain.load_state_dict(merged, strict=True)
    adapter = torch.load(models / "adapter.pt", weights_only=True)
    assert any("lora_A" in k for k in adapter) and not any(k.endswith("qkv.base_layer.weight") for k in adapter)
    assert list((root / "outputs").glob("events.out.tfevents*")), "TensorBoard events"


def test_evaluate_writes_per_class_metrics(trained):
    root, data = trained
    run(config_file=_cfg("train.json", "evaluate.json"), bundle_root=str(root), dataset_dir=str(data), **TINY)
    summary = json.loads((root / "eval" / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2 and set(summary["classes"]) == {"class1", "class2"}
    assert "empty" in summary["empty_mask_convention"]
    rows = (root / "eval" / "metrics_per_case.csv").read_text().splitlines()
    assert (
        rows[0].startswith("case,dice_class1,dice_class2,hd95_class1,hd95_class2,sensitivity_class1") and len(rows) == 3
    )
    assert rows[0].endswith(",subject") and rows[1].endswith(",case006")  # subjects from the datalist


def test_inference_writes_nifti_and_cache_writes_teacher_logits(trained):
    root, data = trained
    run(config_file=_cfg("inference.json"), bundle_root=str(root), dataset_dir=str(data), **TINY)
    preds = sorted((root / "predictions").glob("*_seg.nii.gz"))
    assert len(preds) == 2
    import nibabel as nib

    seg = nib.load(preds[0]).get_fdata()
    assert seg.shape == (48, 48) and set(seg.ravel().tolist()) <= {0, 1, 2}

    run(config_file=_cfg("inference.json", "cache.json"), bundle_root=str(root), dataset_dir=str(data), **TINY)
    teacher = build_teacher("test", image_size=64, num_classes=3, lora_rank=0)
    teacher.load_state_dict(torch.load(root / "models" / "model_merged.pt", weights_only=True))
    cache = TeacherCache(root / "teacher_cache", teacher_fingerprint(teacher, 64))  # logits at the image's size
    image = nib.load(data / "images" / "image_000.nii.gz").get_fdata()
    entry = cache.load(torch.as_tensor(image, dtype=torch.float32)[None])
    assert entry is not None and entry["logits"].shape == (3, 48, 48)
    with torch.no_grad():
        expected = teacher.eval()(torch.as_tensor(image, dtype=torch.float32)[None, None])[0]
    assert torch.allclose(entry["logits"], expected, atol=1e-4)
    # a changed teacher misses instead of serving a stale entry
    other = TeacherCache(root / "teacher_cache", teacher_fingerprint(build_teacher("test", image_size=64), 64))
    assert other.load(torch.as_tensor(image, dtype=torch.float32)[None]) is None


def test_bad_dataset_dir_is_named(tmp_path):
    with pytest.raises(Exception) as info:
        run(config_file=_cfg("train.json"), bundle_root=str(tmp_path), dataset_dir=str(tmp_path / "nope"), **TINY)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, DataError) and "does not exist" in str(e) for e in chain)


def test_command_line_prints_one_clear_line_for_bad_input(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(1, 1, 1), size=16, num_classes=3)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.json")]
    cmd += ["--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--num_classes", "2", "--teacher_arch", "test"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 1
    assert "error: label" in out.stderr and "outside 0..1 (num_classes=2)" in out.stderr
    assert "Traceback" not in out.stderr


class _Crash(Exception):
    """Stands in for the process dying (test_reliability.py kills a real process)."""


def test_resume_after_a_crash_gives_the_uninterrupted_teacher(tmp_path):
    """train.json saves LoRA, decoder, buffers, optimiser, scheduler and counters; --resume true continues exactly."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    data = make_synthetic_dataset(tmp_path / "data", num_items=(6, 1, 1), size=48)

    def workflow(root, **override) -> ConfigWorkflow:
        wf = ConfigWorkflow(
            config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"), bundle_root=str(root),
            dataset_dir=str(data), epochs=2, batch_size=2, ckpt_interval=1, **TINY, **override
        )  # fmt: skip
        wf.initialize()
        return wf

    workflow(tmp_path / "straight").run()
    crashed = workflow(tmp_path / "crashed")
    trainer = crashed.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda _: (_ for _ in ()).throw(_Crash()))
    with pytest.raises(RuntimeError) as info:  # MONAI wraps what a config expression raises
        crashed.run()
    assert isinstance(info.value.__cause__, _Crash)
    last = torch.load(tmp_path / "crashed" / "models" / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 4  # mid-epoch 2 (3 iterations per epoch)
    assert {"model", "optimizer", "lr_scheduler", "best_metric"} <= set(last)
    assert any("lora_A" in k for k in last["model"]) and any("mask_decoder" in k for k in last["model"])
    assert not any(k.endswith("qkv.base_layer.weight") for k in last["model"])  # frozen: rebuilt, not saved

    workflow(tmp_path / "crashed", resume=True).run()
    for name in ("last.pt", "model.pt", "adapter.pt"):
        want = torch.load(tmp_path / "straight" / "models" / name, weights_only=True)
        got = torch.load(tmp_path / "crashed" / "models" / name, weights_only=True)
        want, got = (d.get("model", d) for d in (want, got))
        assert want.keys() == got.keys() and all(torch.equal(v, got[k]) for k, v in want.items()), name
