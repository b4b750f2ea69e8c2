#!/usr/bin/env python
"""Teacher and students side by side: size, inference speed, memory, and the cost of a distillation step.

Networks (random weights: speed does not depend on them): SAM ViT-B at 512 and LiteMedSAM at 256 (teachers),
the EfficientNet-B1 U-Net and ViT-Tiny at 128 (students). For each: parameters, MACs per image
(``FlopCounterMode``), inference latency per image (median of repeated runs, batch 1 and batch 8) and the peak memory
of a forward pass (see ``common/profiling.py``). On a GPU also with AMP and with ``torch.compile``.

Distillation steps, through the bundles' own configs (``bundles/iad_student``: the ``DistillationTrainer``, the KD
term of ``kd.json``, the teacher cache of ``common/engines/teacher_cache.py``; ``bundles/tskd_student`` for the
ViT), on a synthetic 128-px task: time per training step of the student alone, with the teacher run online, and with
the teacher's outputs read from the cache. A step is one iteration: fetching the batch (augmentation included) plus
forward, losses, backward and optimiser step. The variants are measured in interleaved rounds so a busy machine
slows them alike.

    python scripts/benchmark.py                      # writes docs/benchmarks.md
    python scripts/benchmark.py --quick --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common.errors import InputError  # noqa: E402
from common.profiling import count_macs, count_parameters, machine, median_seconds, peak_memory  # noqa: E402

IAD_CONFIGS = REPO / "bundles" / "iad_student" / "configs"
TSKD_CONFIGS = REPO / "bundles" / "tskd_student" / "configs"


@dataclass
class NetworkSpec:
    """A network to time: how to build it and the input size it runs at."""

    name: str
    role: str
    build: Callable[[], nn.Module]
    image_size: int


def network_specs(only: list[str] | None = None) -> list[NetworkSpec]:
    from common.networks.sam_teacher import build_teacher
    from common.networks.students import EfficientUNetStudent
    from common.networks.vit_student import build_vit_student

    specs = [
        NetworkSpec("SAM ViT-B", "teacher", lambda: build_teacher("vit_b", image_size=512, lora_rank=0), 512),
        NetworkSpec("LiteMedSAM", "teacher", lambda: build_teacher("litemedsam", image_size=256, lora_rank=0), 256),
        NetworkSpec("EfficientNet-B1 U-Net", "student (IAD)", lambda: EfficientUNetStudent(3), 128),
        NetworkSpec("ViT-Tiny", "student (TS-KD)", lambda: build_vit_student(3, 128), 128),
    ]
    if only:
        unknown = set(only) - {s.name for s in specs}
        if unknown:
            raise InputError(f"unknown network(s) {sorted(unknown)}; choose from {[s.name for s in specs]}.")
        specs = [s for s in specs if s.name in only]
    return specs


def time_forward(
    network: nn.Module, x: torch.Tensor, runs: int, warmup: int, budget_s: float, amp: bool = False
) -> tuple[float, int, int]:
    """(median seconds per call, peak bytes of the first call, runs made): the first call is a warm-up whose peak
    memory is measured; the number of timed runs shrinks (to 3 at least) so that they take about ``budget_s``."""
    autocast = torch.autocast(x.device.type) if amp else torch.autocast(x.device.type, enabled=False)

    def forward() -> None:
        with torch.inference_mode(), autocast:
            network(x)

    start = time.perf_counter()
    peak = peak_memory(forward, x.device)
    first = time.perf_counter() - start
    n = max(3, min(runs, math.ceil(budget_s / max(first, 1e-6))))
    return median_seconds(forward, max(0, warmup - 1) if first < budget_s / 4 else 0, n, x.device), peak, n


def bench_networks(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for spec in network_specs(args.networks):
        print(f"[net] {spec.name} at {spec.image_size}", flush=True)
        network = spec.build().to(device).eval()
        row = {"name": spec.name, "role": spec.role, "image_size": spec.image_size}
        row["params"] = count_parameters(network)
        row["macs"] = count_macs(network, torch.rand(1, 1, spec.image_size, spec.image_size, device=device))
        variants = [("fp32", False, network)]
        if device.type == "cuda":
            variants += [("amp", True, network), ("compile", True, torch.compile(network))]
        for tag, amp, net in variants:
            for batch in args.batch_sizes:
                x = torch.rand(batch, 1, spec.image_size, spec.image_size, device=device)
                seconds, peak, n = time_forward(net, x, args.runs, args.warmup, args.budget_s, amp)
                row[f"{tag}_b{batch}_ms_per_image"] = 1000 * seconds / batch
                row[f"{tag}_b{batch}_peak_mb"] = peak / 2**20
                row[f"{tag}_b{batch}_runs"] = n
                print(f"      {tag} batch {batch}: {1000 * seconds / batch:.1f} ms/image ({n} runs)", flush=True)
        rows.append(row)
        del network, variants
    return rows


# --- distillation steps ---------------------------------------------------------------------------------------


@dataclass
class StepVariant:
    """A training configuration of a bundle whose iterations are timed."""

    name: str
    configs: list[Path]
    overrides: dict
    trainer: object = None
    total: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)


def build_trainer(configs: list[Path], overrides: dict):
    """The bundle's ``train#trainer`` with ``overrides`` and no handlers (no validation, checkpoints or logging)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.update({"train#handlers": [], **overrides})
    parser.parse()
    return parser.get_parsed_content("train#trainer")


def attach_timer(variant: StepVariant) -> None:
    """Record each iteration's wall time from the batch request to the end of the optimiser step (``total``) and
    from the batch's arrival (``compute``)."""
    from ignite.engine import Events

    marks: dict[str, float] = {}
    engine = variant.trainer
    engine.add_event_handler(Events.GET_BATCH_STARTED, lambda _: marks.__setitem__("get", time.perf_counter()))
    engine.add_event_handler(Events.ITERATION_STARTED, lambda _: marks.__setitem__("start", time.perf_counter()))

    def done(_) -> None:
        now = time.perf_counter()
        if variant.trainer.state.iteration > 1:  # the first iteration of a run pays one-time costs
            variant.total.append(now - marks["get"])
            variant.compute.append(now - marks["start"])

    engine.add_event_handler(Events.ITERATION_COMPLETED, done)


def step_variants(data: Path, cache_dir: Path, root: Path, device: torch.device, amp: bool) -> list[StepVariant]:
    """Student alone / KD with the teacher online / KD from the teacher cache (IAD bundle, EfficientNet-B1 U-Net,
    LiteMedSAM + LoRA teacher at 128, batch 4); ViT-Tiny alone / TS-KD pre-training from the cache (logits and
    embedding, batch 8)."""
    iad = {
        "bundle_root": str(root),
        "dataset_dir": str(data),
        "teacher_ckpt": None,
        "teacher_adapter": None,
        "teacher_cache_dir": str(cache_dir),
        "num_workers": 0,
        "epochs": 1,
        "device": f"$torch.device('{device}')",
        "amp": amp,
    }
    tskd = {**iad, "transfer_dirs": [str(data)], "teacher_lora_rank": 0}
    tskd.pop("teacher_adapter")
    train, kd, alone = IAD_CONFIGS / "train.json", IAD_CONFIGS / "kd.json", IAD_CONFIGS / "student_only.json"
    return [
        StepVariant("EfficientNet-B1 U-Net alone", [train, alone], {**iad, "teacher_mode": "online"}),
        StepVariant("+ KD, teacher online", [train, kd], {**iad, "teacher_mode": "online"}),
        StepVariant("+ KD, teacher cached", [train, kd], {**iad, "teacher_mode": "cache"}),
        StepVariant("ViT-Tiny alone (fine-tune)", [TSKD_CONFIGS / "train.json"], {**tskd, "pretrained": None}),
        StepVariant("+ TS-KD pre-training, teacher cached", [TSKD_CONFIGS / "pretrain.json"], tskd),
    ]


def bench_steps(args: argparse.Namespace, device: torch.device, workdir: Path) -> list[dict]:
    from common.data.synthetic import make_synthetic_dataset

    # batch 4 (IAD) and 8 (TS-KD): 32 images make 8 and 4 iterations per epoch
    data = make_synthetic_dataset(workdir / "data", num_items=(32, 2, 2), size=128, num_classes=3)
    variants = step_variants(data, workdir / "cache", workdir / "root", device, amp=False)
    if device.type == "cuda":
        for v in step_variants(data, workdir / "cache", workdir / "root", device, amp=True):
            v.name += " (AMP)"
            variants.append(v)
    for v in variants:
        print(f"[step] building {v.name}", flush=True)
        v.trainer = build_trainer(v.configs, v.overrides)
        attach_timer(v)
        v.trainer.run()  # warm-up round, not recorded except iterations 2..
        v.total.clear(), v.compute.clear()
    for r in range(args.rounds):
        for v in variants:
            if "online" in v.name and r >= args.online_rounds:
                continue
            v.trainer.run()
        print(f"[step] round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    for v in variants:
        rows.append(
            {
                "name": v.name,
                "steps": len(v.total),
                "batch_size": int(v.trainer.data_loader.batch_size),
                "total_ms": 1000 * statistics.median(v.total),
                "compute_ms": 1000 * statistics.median(v.compute),
                "data_ms": 1000 * (statistics.median(v.total) - statistics.median(v.compute)),
            }
        )
    return rows


def relative_rows(steps: list[dict]) -> None:
    """Each row's total relative to the student-alone row above it (the first row of its group)."""
    base = None
    for row in steps:
        if not row["name"].startswith("+"):
            base = row
        row["relative"] = row["total_ms"] / base["total_ms"]


def cached_overhead(steps: list[dict]) -> float | None:
    """Extra time of a cached-KD step over a student-alone step, in % (IAD, fp32)."""
    by_name = {r["name"]: r for r in steps}
    alone, cached = by_name.get("EfficientNet-B1 U-Net alone"), by_name.get("+ KD, teacher cached")
    if not alone or not cached:
        return None
    return 100 * (cached["total_ms"] / alone["total_ms"] - 1)


def write_markdown(nets: list[dict], steps: list[dict], info: dict, args: argparse.Namespace, seconds: float) -> str:
    lines = ["# Benchmarks", ""]
    command = shlex.join(["python", "scripts/benchmark.py", *args.argv])
    lines += [f"Measured with `{command}` ({seconds / 60:.1f} min).", ""]
    lines += [
        f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['torch_threads']} torch thread(s)"
        + (f", GPU {info['gpu']}" if "gpu" in info else ", no GPU")
        + f"; torch {info['torch']}, Python {info['python']}, {info['os']}."
    ]
    if args.note:
        lines += ["", f"**Conditions**: {args.note}"]
    lines += ["", "## Networks (inference)", ""]
    lines += [
        "Random weights (speed does not depend on them); single-channel input at the size given; latency is the "
        "median wall time of one forward under `inference_mode` divided by the batch size; peak memory is what the "
        "first forward of that batch needed above what was already held (CPU: rise of the peak resident set; CUDA: "
        "`max_memory_allocated`). MACs per image from `torch.utils.flop_counter.FlopCounterMode` (matmuls, "
        "convolutions, attention; FLOPs / 2).",
        "",
    ]
    tags = ["fp32"] + (["amp", "compile"] if any("amp_b1_ms_per_image" in n for n in nets) else [])
    head = ["network", "role", "input", "params (M)", "MACs (G)"]
    for tag in tags:
        label = "" if tag == "fp32" else f" {tag.upper() if tag == 'amp' else tag}"
        head += [f"latency{label} b{b} (ms/image)" for b in args.batch_sizes]
    head += [f"peak memory b{b} (MB)" for b in args.batch_sizes]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in nets:
        cells = [n["name"], n["role"], f"{n['image_size']}²", f"{n['params'] / 1e6:.2f}", f"{n['macs'] / 1e9:.2f}"]
        for tag in tags:
            cells += [f"{n[f'{tag}_b{b}_ms_per_image']:.1f}" for b in args.batch_sizes]
        cells += [f"{n[f'fp32_b{b}_peak_mb']:.0f}" for b in args.batch_sizes]
        lines.append("| " + " | ".join(cells) + " |")
    runs = ", ".join(f"{n['name']} {'/'.join(str(n[f'fp32_b{b}_runs']) for b in args.batch_sizes)}" for n in nets)
    lines += ["", f"Timed runs per latency (batch {'/'.join(map(str, args.batch_sizes))}): {runs}."]
    if steps:
        lines += ["", "## Distillation: time per training step", ""]
        lines += [
            "The bundles' own training configs (handlers removed: no validation, checkpoints or logging), on a "
            "synthetic 3-class task of 32 images at 128 px, `num_workers` 0, fp32 unless marked. IAD rows: "
            "`bundles/iad_student` (`student_only.json`, `kd.json` with `teacher_mode` `online` or `cache`), "
            "EfficientNet-B1 U-Net student, LiteMedSAM + LoRA teacher at 128, batch 4. TS-KD rows: "
            "`bundles/tskd_student` (`train.json` from scratch; `pretrain.json`: feature + prediction terms, "
            "logits and image embedding from the cache), ViT-Tiny, batch 8. A step is one iteration: fetching the "
            "batch (augmentation, collation) + forward, losses, backward, optimiser step; median over "
            f"{args.rounds} interleaved rounds after a warm-up round (online KD: the first "
            f"{args.online_rounds} of them).",
            "",
            "| step | batch | steps timed | ms / step | of which data | × the student alone |",
            "|---|---|---|---|---|---|",
        ]
        for s in steps:
            lines.append(
                f"| {s['name']} | {s['batch_size']} | {s['steps']} | {s['total_ms']:.0f} | {s['data_ms']:.0f} | "
                f"{s['relative']:.2f} |"
            )
        overhead = cached_overhead(steps)
        if overhead is not None:
            lines += [
                "",
                f"**Cached-teacher KD costs {overhead:+.1f}% per step over the student alone** (target: within 15%).",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="Markdown file to write")
    p.add_argument("--json", default=None, help="also write the raw figures as JSON here")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--networks", nargs="*", default=None, help="subset of networks by name (default: all)")
    p.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--runs", type=int, default=20, help="timed runs per latency at most")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget_s", type=float, default=20.0, help="about this many seconds of timed runs per latency")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds of training steps")
    p.add_argument("--online_rounds", type=int, default=1, help="rounds of the (slow) online-teacher variant")
    p.add_argument("--no_steps", action="store_true", help="skip the distillation-step timings")
    p.add_argument("--quick", action="store_true", help="students only, few runs (a check that it works)")
    p.add_argument("--note", default="", help="conditions to record (e.g. another job sharing the machine)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.networks = args.networks or ["EfficientNet-B1 U-Net", "ViT-Tiny"]
        args.runs, args.warmup, args.budget_s, args.rounds = 3, 1, 2.0, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but torch sees no CUDA device.")
    start = time.perf_counter()
    nets = bench_networks(args, device)
    steps: list[dict] = []
    if not args.no_steps:
        with tempfile.TemporaryDirectory() as tmp:
            steps = bench_steps(args, device, Path(tmp))
        relative_rows(steps)
    info = machine(device)
    md = write_markdown(nets, steps, info, args, time.perf_counter() - start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "networks": nets, "steps": steps}, indent=1))
    print(md)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
