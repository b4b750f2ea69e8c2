#!/usr/bin/env python
"""The iad_student comparison table: student-only, KD, IAD (KIS only), IAD (full), ... and the teacher.

Each (row, seed) is one ``monai.bundle`` run of the bundle's own configs (train.json + the row's variant, then
evaluate.json) in ``OUT/<row>/seed<k>``, run as jobs (``scripts/jobs.py``): a finished training (its marker
``train_time.json``, which holds its wall time) or evaluation (``eval/metrics_summary.json``) is skipped, so an
interrupted table resumes. All runs share one teacher cache. The table (Markdown, CSV, JSON) gives per-class Dice
and HD95 on the test split as mean ± std over seeds, the training time of each row, and parameters and CPU latency of
student and teacher.

    python scripts/iad_table.py --teacher_root runs/teacher_lora --out runs/iad_table
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import jobs  # noqa: E402
from scripts.bundle_runs import SUMMARY, bundle_cmd  # noqa: E402
from scripts.bundle_runs import mean_std as _ms  # noqa: E402
from scripts.bundle_runs import train_and_evaluate, train_seconds

CONFIGS = REPO / "bundles" / "iad_student" / "configs"
TEACHER_CONFIGS = REPO / "bundles" / "teacher_lora" / "configs"
# row name -> (label in the table, variant configs merged after train.json)
ROWS = {
    "student_only": ("Student only", ["student_only.json"]),
    "kd": ("KD (Hinton)", ["kd.json"]),
    "at": ("AT", ["at.json"]),
    "cwd": ("CWD", ["cwd.json"]),
    "dist": ("DIST", ["dist.json"]),
    "kis_only": ("IAD (KIS only)", ["kis_only.json"]),
    "kas_only": ("IAD (KAS only)", ["kas_only.json"]),
    "iad": ("IAD (KIS → KAS)", []),
    "kd_kas": ("KD → KAS", ["kd_kas.json"]),
}


def _seeds(row: str, args: argparse.Namespace) -> list[int]:
    return args.seeds[:1] if row in args.single_seed_rows else args.seeds


def plan(args: argparse.Namespace) -> list[jobs.Job]:
    """Training and evaluation of every (row, seed) in ``OUT/<row>/seed<k>``, then the teacher's evaluation."""
    out, todo = Path(args.out), []
    for row in args.rows:
        configs = [CONFIGS / "train.json", *(CONFIGS / v for v in ROWS[row][1])]
        evaluate = configs + [CONFIGS / "evaluate.json"]
        for seed in _seeds(row, args):
            root = out / row / f"seed{seed}"
            overrides = {"bundle_root": str(root), "dataset_dir": args.dataset_dir, "seed": seed}
            overrides.update({"epochs": args.epochs, "kis_epochs": args.kis_epochs, "num_workers": 0})
            overrides.update({"teacher_ckpt": args.teacher_ckpt, "teacher_adapter": args.teacher_adapter})
            overrides["teacher_cache_dir"] = str(out / "teacher_cache")
            overrides["teacher_image_size"] = args.teacher_image_size
            todo += train_and_evaluate(f"{row}/seed{seed}", root, configs, overrides, evaluate)
    if not args.no_teacher_row:
        teacher = out / "teacher"
        cmd = bundle_cmd([TEACHER_CONFIGS / "train.json", TEACHER_CONFIGS / "evaluate.json"])
        cmd += ["--bundle_root", args.teacher_root, "--output_dir", str(teacher), "--dataset_dir", args.dataset_dir]
        cmd += ["--teacher_arch", args.teacher_arch, "--image_size", str(args.teacher_image_size), "--num_workers", "0"]
        todo.append(jobs.Job("teacher", "evaluate the teacher", cmd, [teacher / "metrics_summary.json"],
                             log=teacher / "evaluate.log"))  # fmt: skip
    return todo


def collect(args: argparse.Namespace) -> dict[str, list[dict]]:
    """row -> the finished runs' test summaries and training seconds over seeds (the teacher's: ``--teacher_time``)."""
    out, results = Path(args.out), {}
    for row in args.rows:
        for seed in _seeds(row, args):
            root = out / row / f"seed{seed}"
            if not (root / SUMMARY).is_file():
                print(f"[miss] {row} seed {seed}: not finished, left out", flush=True)
                continue
            entry = {"summary": json.loads((root / SUMMARY).read_text()), "train_seconds": train_seconds(root)}
            results.setdefault(row, []).append(entry)
    summary = out / "teacher" / "metrics_summary.json"
    if not args.no_teacher_row and summary.is_file():
        seconds = jobs.wall_seconds(Path(args.teacher_time))
        entry = {"summary": json.loads(summary.read_text()), "train_seconds": math.nan if seconds is None else seconds}
        results["teacher"] = [entry]
    return results


def size_and_latency(args: argparse.Namespace) -> dict:
    """Parameters and median CPU latency (batch 1, 20 runs after 3 warm-ups) of student and teacher."""
    import torch

    from common.networks.sam_teacher import build_teacher
    from common.networks.students import EfficientUNetStudent
    from common.profiling import count_parameters, latency

    torch.set_num_threads(args.threads)
    nets = {
        "student": (EfficientUNetStudent(3).eval(), 128),
        "teacher": (build_teacher(args.teacher_arch, image_size=args.teacher_image_size, lora_rank=0).eval(), 128),
    }
    return {
        name: {"params": count_parameters(net), "latency_ms": 1000 * latency(net, torch.rand(1, 1, size, size))}
        for name, (net, size) in nets.items()
    }


def write_table(results: dict[str, list[dict]], sizes: dict, args: argparse.Namespace) -> str:
    classes = ["liver", "tumour"]
    head = ["method", "seeds"] + [f"Dice {c}" for c in classes] + ["mean Dice"]
    head += [f"global Dice {c}" for c in classes] + [f"HD95 {c} (mm)" for c in classes] + ["train time (min)"]
    rows = []
    for row, runs in results.items():
        label = "Teacher (LiteMedSAM + LoRA)" if row == "teacher" else ROWS[row][0]
        s = [r["summary"] for r in runs]
        cells = [label, str(len(runs))]
        cells += [_ms([x["classes"][c]["dice_mean"] for x in s], 2, 100) for c in classes]
        cells += [_ms([x["mean_dice"] for x in s], 2, 100)]
        cells += [_ms([x["classes"][c]["global_dice"] for x in s], 2, 100) for c in classes]
        cells += [_ms([x["classes"][c]["hd95_mean"] for x in s], 2) for c in classes]
        cells += [_ms([r["train_seconds"] / 60 for r in runs], 1)]
        rows.append(cells)
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    md += [
        "",
        f"Student: EfficientNet-B1 U-Net, {sizes['student']['params'] / 1e6:.2f} M parameters, "
        f"{sizes['student']['latency_ms']:.1f} ms per 128×128 slice on CPU ({args.threads} threads, batch 1, median).",
        f"Teacher: {args.teacher_arch}, {sizes['teacher']['params'] / 1e6:.2f} M parameters, "
        f"{sizes['teacher']['latency_ms']:.1f} ms per 128×128 slice on CPU (input size {args.teacher_image_size}).",
        "Dice in %, mean ± std over seeds (population std); per-slice Dice/HD95 averaged over the test slices where "
        "defined; global Dice pools all test slices. Empty masks: " + results[next(iter(results))][0]["summary"]
        ["empty_mask_convention"] + ".",
    ]  # fmt: skip
    out = Path(args.out)
    (out / "table.md").write_text("\n".join(md) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([head] + rows)
    (out / "table.json").write_text(json.dumps({"results": results, "sizes": sizes, "args": vars(args)}, indent=1))
    return "\n".join(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/iad_table")
    p.add_argument("--dataset_dir", default="data/lits_liver")
    p.add_argument("--teacher_arch", default="litemedsam")
    p.add_argument("--teacher_ckpt", default="data/weights/lite_medsam.pth")
    p.add_argument("--teacher_image_size", type=int, default=128, help="the input size the teacher was tuned at")
    p.add_argument("--teacher_root", default="runs/teacher_lora", help="bundle_root of the trained teacher_lora")
    p.add_argument("--teacher_adapter", default=None, help="default: TEACHER_ROOT/models/adapter.pt")
    p.add_argument("--teacher_time", default=None, help="the teacher's training marker, read for its training time "
                   "(default: TEACHER_ROOT/train_time.json)")  # fmt: skip
    p.add_argument("--rows", nargs="+", default=["student_only", "kd", "kis_only", "iad"], choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--single_seed_rows", nargs="*", default=["kis_only"], help="rows run with the first seed only")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--kis_epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    p.add_argument("--no_teacher_row", action="store_true")
    p.add_argument("--report_only", action="store_true", help="write the table from finished runs; train nothing")
    args = p.parse_args()
    args.teacher_adapter = args.teacher_adapter or str(Path(args.teacher_root) / "models" / "adapter.pt")
    args.teacher_time = args.teacher_time or str(Path(args.teacher_root) / "train_time.json")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if not args.report_only:
        jobs.run(plan(args), env)
    results = collect(args)
    if not results:
        sys.exit("error: no finished run to report")
    print(write_table(results, size_and_latency(args), args))
    print(f"\nwritten: {Path(args.out) / 'table.md'} (and .csv, .json)")


if __name__ == "__main__":
    main()
