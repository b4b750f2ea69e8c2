"""``multi_gpu_train.json``: a 2-process CPU ``torchrun`` (gloo) of the IAD distillation, and every training config's
companion resolving and training in a 1-process group."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import run
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.data.synthetic import make_synthetic_dataset
from common.networks.sam_teacher import build_teacher
from tests.conftest import tiny_distillation_task

REPO = Path(__file__).resolve().parents[2]
IAD = REPO / "bundles" / "iad_student" / "configs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def iad_task(tmp_path_factory):
    """Synthetic 64-px task (4 training images), a random tiny SAM checkpoint and a LoRA adapter."""
    root = tmp_path_factory.mktemp("mgpu")
    return root, tiny_distillation_task(root, batch_size=1, epochs=2, kis_epochs=1)


def _module_keys(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_torchrun_two_processes_matches_single_process_checkpoint(iad_task):
    """2 CPU processes (gloo) distil KIS then KAS (one epoch each): ranks end with identical weights (DDP and the
    loss modules' gradient all-reduce), rank 0 alone writes last.pt/model.pt, in the single-process format."""
    root, o = iad_task
    run(config_file=[str(IAD / "train.json")], bundle_root=str(root / "single"), **o)

    # an extra config, merged last: each rank dumps its final parameters before leaving the group (BatchNorm
    # running statistics are rank-local between DDP's broadcasts, so they are not compared)
    dump = root / "dump.json"
    dump.write_text(
        json.dumps(
            {
                "finalize": [
                    "$torch.save({n: {k: p.detach() for k, p in m.named_parameters()} for n, m in "
                    "[('model', @network), ('loss_modules', @loss_modules)]}, @bundle_root + f'/rank{distributed.get_rank()}.pt')",
                    "$distributed.destroy_process_group()",
                ]
            }
        )
    )
    bundle = root / "ddp"
    args = [f"--{k}={v}" for k, v in o.items()]
    configs = str([str(IAD / "train.json"), str(IAD / "multi_gpu_train.json"), str(dump)])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "monai.bundle", "run", "--config_file", configs,
           "--bundle_root", str(bundle), *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = [torch.load(bundle / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name in ("model", "loss_modules"):
        assert ranks[0][name].keys() == ranks[1][name].keys()
        for k, v in ranks[0][name].items():
            assert torch.allclose(v, ranks[1][name][k], atol=1e-6), f"{name}.{k} differs between ranks"
    assert any(k.startswith("kas_kas.project") for k in ranks[0]["loss_modules"])  # the synced loss parameters

    single = torch.load(root / "single" / "models" / "last.pt", weights_only=True)
    multi = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert single.keys() == multi.keys()
    for name in ("model", "loss_modules"):
        assert _module_keys(multi[name]) == _module_keys(single[name])
        assert not any(k.startswith("module.") for k in multi[name])
    assert multi["trainer"]["epoch"] == 2 and multi["trainer"]["iteration"] == 4  # 2 of the 4 images per rank
    assert single["trainer"]["iteration"] == 8
    for k, v in ranks[0]["model"].items():  # rank 0 wrote its own final weights
        assert torch.equal(v, multi["model"][k])
    best = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert _module_keys(best) == _module_keys(torch.load(root / "single" / "models" / "model.pt", weights_only=True))


@pytest.fixture
def one_process_group(monkeypatch):
    """The environment torchrun gives a single process; the group is left again even when a run fails."""
    import ignite.distributed as idist
    import torch.distributed as dist

    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for k, v in {**env, "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    idist.sync()  # ignite's view of the process, which MONAI's checkpoint savers ask for the rank


def _configs(bundle: str, *names: str) -> list[str]:
    return [str(REPO / "bundles" / bundle / "configs" / n) for n in names]


@pytest.mark.parametrize("variant", ["kd", "student_only"])
def test_iad_variants_train_with_multi_gpu_config(iad_task, one_process_group, tmp_path, variant):
    _, o = iad_task
    configs = _configs("iad_student", "train.json", f"{variant}.json", "multi_gpu_train.json")
    run(config_file=configs, bundle_root=str(tmp_path), **{**o, "epochs": 1, "kis_epochs": 0})
    assert (tmp_path / "models" / "model.pt").is_file()
    last = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 1 and last["trainer"]["iteration"] == 4  # 4 images, batch 1, one process
    acc = EventAccumulator(str(tmp_path / "outputs"))
    acc.Reload()
    terms = {t for t in acc.Tags()["scalars"] if t.startswith("train_") and t != "train_loss"}
    assert terms == {"train_gt"} | ({"train_kd"} if variant == "kd" else set())  # exactly the variant's terms


def test_teacher_lora_multi_gpu_config_trains(one_process_group, tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(4, 2, 2), size=48)
    run(config_file=_configs("teacher_lora", "train.json", "multi_gpu_train.json"), bundle_root=str(tmp_path),
        dataset_dir=str(data), teacher_arch="test", image_size=64, num_workers=0, epochs=1, batch_size=2)  # fmt: skip
    for name in ("last.pt", "model.pt", "adapter.pt", "model_merged.pt"):
        assert (tmp_path / "models" / name).is_file(), name


def test_transfer_diffusion_multi_gpu_config_trains(one_process_group, tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(4, 2, 0), size=32)
    tiny = {"channels": [8, 8], "attention_levels": [False, True], "num_head_channels": 8, "norm_num_groups": 8}
    run(config_file=_configs("transfer_diffusion", "train.json", "multi_gpu_train.json"), bundle_root=str(tmp_path),
        dataset_dir=str(data), image_size=32, epochs=1, batch_size=2, num_workers=0, val_interval=1,
        sample_interval=1, sample_grid_size=2, num_inference_steps=2, **tiny)  # fmt: skip
    assert (tmp_path / "models" / "last.pt").is_file() and (tmp_path / "models" / "model.pt").is_file()


def test_recokd_multi_gpu_config_trains_teacher_student_and_baseline(one_process_group, tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(2, 1, 1), size=16, ndim=3)
    tiny = {"dataset_dir": str(data), "filters": [8, 16, 32], "deep_supr_num": 1, "ds_weights": [0.5],
            "patch_size": [16, 16, 16], "batches_per_epoch": 2, "val_interval": 1,
            "num_workers": 0, "epochs": 1}  # fmt: skip
    teacher = tmp_path / "teacher"
    run(config_file=_configs("recokd_student", "train.json", "teacher.json", "multi_gpu_train.json"),
        bundle_root=str(teacher), **tiny)  # fmt: skip
    run(config_file=_configs("recokd_student", "train.json", "multi_gpu_train.json"), bundle_root=str(tmp_path / "kd"),
        teacher_ckpt=str(teacher / "models" / "model.pt"), **tiny)  # fmt: skip
    run(config_file=_configs("recokd_student", "train.json", "student_only.json", "multi_gpu_train.json"),
        bundle_root=str(tmp_path / "scratch"), **tiny)  # fmt: skip
    for name in ("teacher", "kd", "scratch"):
        assert (tmp_path / name / "models" / "last.pt").is_file(), name


@pytest.mark.skipif(not (REPO / "bundles" / "tskd_student").is_dir(), reason="no tskd_student bundle")
def test_tskd_multi_gpu_configs_pretrain_and_finetune(one_process_group, tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(4, 2, 2), size=64)
    transfer = make_synthetic_dataset(tmp_path / "transfer", num_items=(4, 1, 1), size=64, seed=1)
    base = tmp_path / "tiny_sam.pth"
    torch.manual_seed(0)
    torch.save(build_teacher("test", num_classes=3, lora_rank=0).state_dict(), base)
    o = {"dataset_dir": str(data), "image_size": 64, "batch_size": 2, "num_workers": 0, "student_preset": "test"}
    teacher = {"teacher_arch": "test", "teacher_ckpt": str(base), "teacher_image_size": 64,
               "teacher_cache_dir": str(tmp_path / "teacher_cache")}  # fmt: skip
    bundle = tmp_path / "tskd"
    run(config_file=_configs("tskd_student", "pretrain.json", "multi_gpu_pretrain.json"), bundle_root=str(bundle),
        transfer_dirs=[str(transfer)], iterations=2, **o, **teacher)  # fmt: skip
    assert (bundle / "models" / "pretrain" / "pretrained.pt").is_file()
    run(config_file=_configs("tskd_student", "train.json", "multi_gpu_train.json"), bundle_root=str(bundle),
        iterations=2, num_labels=4, **o)  # fmt: skip
    assert (bundle / "models" / "last.pt").is_file() and (bundle / "models" / "model.pt").is_file()
