"""The benchmark script: the networks it times, its step timer on a real bundle trainer, and the page it writes
(tiny settings; no timing is asserted)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import nn

from common.data.synthetic import make_synthetic_dataset
from common.errors import InputError
from scripts import benchmark

REPO = Path(__file__).resolve().parents[2]


def test_the_networks_are_the_two_teachers_and_the_two_students_at_their_sizes():
    specs = benchmark.network_specs()
    assert [(s.name, s.image_size) for s in specs] == [
        ("SAM ViT-B", 512),
        ("LiteMedSAM", 256),
        ("EfficientNet-B1 U-Net", 128),
        ("ViT-Tiny", 128),
    ]
    assert [s.name for s in benchmark.network_specs(["ViT-Tiny"])] == ["ViT-Tiny"]
    with pytest.raises(InputError, match="unknown network"):
        benchmark.network_specs(["ResNet"])


def test_time_forward_runs_at_least_three_times_within_the_budget():
    calls = []

    class Counting(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return x * 2

    seconds, peak, runs = benchmark.time_forward(Counting(), torch.rand(2, 3), runs=5, warmup=2, budget_s=1e-9)
    assert runs == 3 and seconds >= 0 and peak >= 0
    assert len(calls) == 1 + runs  # the first (memory-measuring) call, no more warm-ups: the budget is spent


def test_the_step_timer_records_every_iteration_but_the_first_of_a_bundle_trainer(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(6, 1, 1), size=32)
    overrides = {"bundle_root": str(tmp_path / "root"), "dataset_dir": str(data), "num_workers": 0, "epochs": 1,
                 "batch_size": 2, "image_size": 32, "student_preset": "test", "pretrained": None}  # fmt: skip
    variant = benchmark.StepVariant("vit", [benchmark.TSKD_CONFIGS / "train.json"], overrides)
    variant.trainer = benchmark.build_trainer(variant.configs, overrides)
    benchmark.attach_timer(variant)
    variant.trainer.run()
    assert len(variant.total) == len(variant.compute) == 2  # 3 iterations, the first not recorded
    assert all(t >= c > 0 for t, c in zip(variant.total, variant.compute))


def _args(**kw) -> argparse.Namespace:
    base = dict(argv=["--threads", "1"], note="another job was running", batch_sizes=[1, 8], rounds=4,
                online_rounds=1)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def _net(name: str, ms: float) -> dict:
    row = {"name": name, "role": "student", "image_size": 128, "params": 7.87e6, "macs": 6.5e8}
    for b in (1, 8):
        row.update({f"fp32_b{b}_ms_per_image": ms / b, f"fp32_b{b}_peak_mb": 10.0 * b, f"fp32_b{b}_runs": 20})
    return row


def test_the_page_has_the_machine_the_tables_and_the_cached_overhead():
    steps = [
        {"name": "EfficientNet-B1 U-Net alone", "steps": 20, "batch_size": 4, "total_ms": 800.0, "compute_ms": 780.0,
         "data_ms": 20.0},
        {"name": "+ KD, teacher online", "steps": 7, "batch_size": 4, "total_ms": 4000.0, "compute_ms": 3978.0,
         "data_ms": 22.0},
        {"name": "+ KD, teacher cached", "steps": 20, "batch_size": 4, "total_ms": 840.0, "compute_ms": 815.0,
         "data_ms": 25.0},
        {"name": "ViT-Tiny alone (fine-tune)", "steps": 10, "batch_size": 8, "total_ms": 600.0, "compute_ms": 580.0,
         "data_ms": 20.0},
        {"name": "+ TS-KD pre-training, teacher cached", "steps": 10, "batch_size": 8, "total_ms": 660.0,
         "compute_ms": 630.0, "data_ms": 30.0},
    ]  # fmt: skip
    benchmark.relative_rows(steps)
    assert [round(s["relative"], 2) for s in steps] == [1.0, 5.0, 1.05, 1.0, 1.1]
    assert benchmark.cached_overhead(steps) == pytest.approx(5.0)
    info = {"cpu": "Test CPU", "logical_cpus": "2", "torch_threads": "1", "torch": "2.x", "python": "3.11", "os": "L"}
    md = benchmark.write_markdown([_net("EfficientNet-B1 U-Net", 50.0)], steps, info, _args(), 600.0)
    assert "Machine: Test CPU, 2 logical CPUs, 1 torch thread(s), no GPU; torch 2.x" in md
    assert "**Conditions**: another job was running" in md
    assert "| EfficientNet-B1 U-Net | student | 128² | 7.87 | 0.65 | 50.0 | 6.2 | 10 | 80 |" in md
    assert "| + KD, teacher cached | 4 | 20 | 840 | 25 | 1.05 |" in md
    assert "costs +5.0% per step over the student alone" in md
    assert "latency AMP" not in md  # CPU run: no AMP / compile columns
    assert benchmark.cached_overhead(steps[3:]) is None


def test_volume_benchmark_section(tmp_path):
    """scripts/benchmark_volume.py on a tiny volume: the three ways run, agree voxel for voxel, and their section
    replaces an older one in the Markdown file (the rest of the file is kept)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_volume", REPO / "scripts" / "benchmark_volume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.md"
    out.write_text(f"# Benchmarks\n\nkept\n\n{module.BEGIN}\nold\n{module.END}\n")
    text = module.main(["--shape", "48", "40", "3", "--image-size", "32", "--repeats", "1", "--threads", "1",
                        "--out", str(out)])  # fmt: skip
    written = out.read_text()
    assert written.startswith("# Benchmarks\n\nkept\n") and "old" not in written and text in written
    assert "labels equal PyTorch's at 100.0000%" in text and "plain loop's at 100.0000%" in text
    assert "--shape 48 40 3" in text
