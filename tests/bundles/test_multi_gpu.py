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

from common.data.synthetic import make_synthetic_dataset
from common.networks.lora import save_adapter
from common.networks.sam_teacher import build_teacher

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
    data = make_synthetic_dataset(root / "data", num_items=(4, 2, 2), size=64)
    base = root / "tiny_sam.pth"
    torch.manual_seed(0)
    torch.save(build_teacher("tiny", num_classes=3, lora_rank=0).state_dict(), base)
    adapter = save_adapter(build_teacher("tiny", checkpoint=base, num_classes=3), root / "adapter.pt")
    overrides = {
        "dataset_dir": str(data),
        "teacher_arch": "tiny",
        "teacher_ckpt": str(base),
        "teacher_adapter": str(adapter),
        "teacher_image_size": 64,
        "teacher_cache_dir": str(root / "teacher_cache"),
        "image_size": 64,
        "batch_size": 1,
        "num_workers": 0,
        "epochs": 2,
        "kis_epochs": 1,
    }
    return root, overrides


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
                    "[('model', @network), ('distillers', @distillers)]}, @bundle_root + f'/rank{distributed.get_rank()}.pt')",
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
    for name in ("model", "distillers"):
        assert ranks[0][name].keys() == ranks[1][name].keys()
        for k, v in ranks[0][name].items():
            assert torch.allclose(v, ranks[1][name][k], atol=1e-6), f"{name}.{k} differs between ranks"
    assert any(k.startswith("kas_kas.project") for k in ranks[0]["distillers"])  # the synced loss parameters

    single = torch.load(root / "single" / "models" / "last.pt", weights_only=True)
    multi = torch.load(bundle / "models" / "last.pt", weights_only=True)
    assert single.keys() == multi.keys()
    for name in ("model", "distillers"):
        assert _module_keys(multi[name]) == _module_keys(single[name])
        assert not any(k.startswith("module.") for k in multi[name])
    assert multi["trainer"]["epoch"] == 2 and multi["trainer"]["iteration"] == 4  # 2 of the 4 images per rank
    assert single["trainer"]["iteration"] == 8
    for k, v in ranks[0]["model"].items():  # rank 0 wrote its own final weights
        assert torch.equal(v, multi["model"][k])
    best = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert _module_keys(best) == _module_keys(torch.load(root / "single" / "models" / "model.pt", weights_only=True))
