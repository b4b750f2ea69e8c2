#!/usr/bin/env python
"""The tskd_student results table: ViT-Tiny from scratch, task-agnostic KD and TS-KD at two label budgets over seeds,
and TS-KD pre-trained on real unlabelled slices, on synthetic images, or on both.

Every run is a ``monai.bundle`` run of the bundle's own configs, in its own folder of ``OUT``:

- ``pretrain_<variant>_s<seed>``: ``pretrain.json`` (``+ task_agnostic.json`` for ``takd``) on the variant's transfer
  set: ``tskd`` and ``takd`` the synthetic set (``--synthetic_dir``), ``tskd_real`` the training slices of
  ``--dataset_dir`` without their labels, ``tskd_both`` the two joined. The same number of pre-training iterations for
  every variant, so the comparison is of data, not of compute.
- ``<method>_<budget>_s<seed>``: ``train.json`` (fine-tuning on ``budget`` labelled training slices spread evenly over
  the slab; ``all`` = every one; ``scratch`` from random weights, the others from their pre-trained student), then
  ``evaluate.json`` on the test split.

By default pre-training runs once per variant (``--pretrain_seeds 0``) and each fine-tuning seed starts from it, so the
spread over seeds is that of fine-tuning; ``--pretrain_seeds 0 1 2`` pre-trains once per seed. Finished runs are
skipped, so an interrupted table resumes; ``--parallel 2`` runs two at a time (one torch thread each by default).
Options the script does not know go to every bundle run (e.g. ``--student_preset test``)::

    python scripts/tskd_table.py --out runs/tskd --parallel 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bundle_runs import cli_args, config_list, mean_std, parse_overrides, run_logged  # noqa: E402

CONFIGS = REPO / "bundles" / "tskd_student" / "configs"
METHODS = {  # method -> (label, pre-training variant or None)
    "scratch": ("ViT-Tiny from scratch", None),
    "takd": ("Task-agnostic KD (LiteMedSAM, feature term)", "takd"),
    "tskd": ("TS-KD (synthetic transfer set)", "tskd"),
    "tskd_real": ("TS-KD (real unlabelled slices)", "tskd_real"),
    "tskd_both": ("TS-KD (real + synthetic)", "tskd_both"),
}
CLASSES = ["liver", "tumour"]


@dataclass
class Job:
    """One bundle run (with its evaluation for a fine-tuning run) and where it writes."""

    name: str
    configs: list[str]
    overrides: dict[str, object]
    done: Path
    evaluate: bool = False
    needs: list[str] = field(default_factory=list)
    group: int = 0  # 0: the main table, 1: the transfer-set comparison

    @property
    def root(self) -> Path:
        return Path(str(self.overrides["bundle_root"]))


def transfer_dirs(variant: str, args: argparse.Namespace) -> list[str]:
    real, synthetic = args.dataset_dir, args.synthetic_dir
    return {"tskd_real": [real], "tskd_both": [synthetic, real]}.get(variant, [synthetic])


def plan(args: argparse.Namespace, extra: dict[str, object]) -> list[Job]:
    """Every run of the table, pre-training first, each with the runs it needs."""
    out = Path(args.out)
    base = {"dataset_dir": args.dataset_dir, "num_workers": 0, **extra}
    teacher = {"teacher_cache_dir": str(out / "teacher_cache")}
    jobs: dict[str, Job] = {}
    rows = [(m, b, args.seeds, 0) for m in ("scratch", "tskd", "takd") for b in args.budgets]
    if args.transfer_budget is not None:
        rows += [(m, args.transfer_budget, args.transfer_seeds or args.seeds, 1) for m in ("tskd_real", "tskd_both")]
    for method, budget, seeds, group in rows:
        variant = METHODS[method][1]
        for seed in seeds:
            pretrained = None
            if variant is not None:
                ps = seed if seed in args.pretrain_seeds else args.pretrain_seeds[0]
                pname = f"pretrain_{variant}_s{ps}"
                proot = out / pname
                if pname not in jobs:
                    configs = ["pretrain.json"] + (["task_agnostic.json"] if variant == "takd" else [])
                    ov = {
                        **base,
                        **teacher,
                        "bundle_root": str(proot),
                        "seed": ps,
                        "iterations": args.pretrain_iterations,
                    }
                    ov["transfer_dirs"] = transfer_dirs(variant, args)
                    if variant != "takd":
                        ov["teacher_ckpt"] = args.teacher_ckpt
                    elif args.base_teacher_ckpt:
                        ov["teacher_ckpt"] = args.base_teacher_ckpt
                    jobs[pname] = Job(pname, configs, ov, proot / "models" / "pretrain" / "pretrained.pt")
                pretrained = str(proot / "models" / "pretrain" / "pretrained.pt")
            name = f"{method}_{budget}_s{seed}"
            ov = {**base, "bundle_root": str(out / name), "seed": seed, "iterations": args.finetune_iterations}
            ov["num_labels"] = "$None" if budget == "all" else int(budget)
            ov["pretrained"] = pretrained if pretrained else "$None"
            needs = [f"pretrain_{variant}_s{ps}"] if variant else []
            jobs[name] = Job(name, ["train.json"], ov, out / name / "eval" / "metrics_summary.json", True, needs, group)
    return order_jobs(list(jobs.values()))


def order_jobs(jobs: list[Job]) -> list[Job]:
    """The main table first (its pre-trainings, then its runs), then the transfer-set comparison likewise: a run
    then only waits for a pre-training started before it (see :func:`run_all`), and the main table is finished first
    when time is short."""
    ordered: list[Job] = []
    by_name = {j.name: j for j in jobs}
    for group in sorted({j.group for j in jobs}):
        runs = [j for j in jobs if j.group == group and not j.name.startswith("pretrain_")]
        ordered += [by_name[n] for n in dict.fromkeys(n for j in runs for n in j.needs) if by_name[n] not in ordered]
        ordered += runs
    return ordered


def run_job(job: Job, env: dict) -> float:
    """Train (and evaluate) one run unless its output exists; return the training seconds (0 when skipped)."""
    timing = job.root / "train_time.json"
    if job.done.is_file():
        print(f"[skip] {job.name}: done", flush=True)
        return json.loads(timing.read_text())["train_seconds"] if timing.is_file() else 0.0
    job.root.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    cli = cli_args(job.overrides)
    configs = [CONFIGS / c for c in job.configs]
    if timing.is_file():  # trained, not evaluated (the table was stopped in between)
        seconds = json.loads(timing.read_text())["train_seconds"]
    else:
        print(f"[run ] {job.name} -> {job.root}", flush=True)
        seconds = run_logged(base + [config_list(configs)] + cli, job.root / "train.log", env, REPO)
        timing.write_text(json.dumps({"train_seconds": seconds}))
    if job.evaluate:
        eval_cli = cli_args(
            {k: v for k, v in job.overrides.items() if k != "pretrained"}
        )  # evaluate.json loads model.pt
        run_logged(base + [config_list(configs + [CONFIGS / "evaluate.json"])] + eval_cli, job.root / "evaluate.log",
                   env, REPO)  # fmt: skip
    print(f"[done] {job.name}: {seconds / 60:.1f} min", flush=True)
    return seconds


def run_all(jobs: list[Job], args: argparse.Namespace, env: dict) -> None:
    """Every run, ``--parallel`` at a time, in :func:`order_jobs` order; a fine-tuning run waits for its
    pre-training, which (first in, first out) has already started, so the runs never deadlock."""
    futures: dict[str, Future] = {}

    def run(job: Job) -> float:
        for need in job.needs:
            futures[need].result()  # raises if the pre-training failed
        return run_job(job, env)

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        for job in jobs:
            futures[job.name] = pool.submit(run, job)
        for future in futures.values():
            future.result()


def size_and_latency(args: argparse.Namespace, extra: dict[str, object]) -> dict:
    """The student's parameters and median CPU time per slice (batch 1, after 3 warm-ups)."""
    import torch

    from common.networks.vit_student import build_vit_student
    from common.profiling import count_parameters, latency

    torch.set_num_threads(args.threads)
    size = int(extra.get("image_size", 128))
    net = build_vit_student(3, image_size=size, preset=str(extra.get("student_preset", "tiny")))
    seconds = latency(net, torch.rand(1, 1, size, size))
    return {"params": count_parameters(net), "latency_ms": 1000 * seconds, "size": size}


def collect(args: argparse.Namespace) -> dict[tuple[str, str], list[dict]]:
    """(method, budget) -> the finished runs' summaries and training times, over seeds."""
    out, results = Path(args.out), {}
    for method in METHODS:
        for budget in [*args.budgets, args.transfer_budget]:
            for seed in args.seeds:
                summary = out / f"{method}_{budget}_s{seed}" / "eval" / "metrics_summary.json"
                if summary.is_file():
                    timing = summary.parents[1] / "train_time.json"
                    seconds = json.loads(timing.read_text())["train_seconds"] if timing.is_file() else float("nan")
                    entry = {"seed": seed, "summary": json.loads(summary.read_text()), "train_seconds": seconds}
                    if entry not in results.setdefault((method, str(budget)), []):
                        results[(method, str(budget))].append(entry)
    return results


def write_table(results: dict[tuple[str, str], list[dict]], size: dict, args: argparse.Namespace) -> str:
    """Markdown (returned and written to ``OUT/table.md``), CSV and JSON."""
    head = ["method", "labelled slices", "seeds"] + [f"Dice {c}" for c in CLASSES] + ["mean Dice"]
    head += [f"HD95 {c} (mm)" for c in CLASSES] + ["mean HD95 (mm)", "fine-tune time (min)"]
    rows = []
    for (method, budget), runs in results.items():
        s = [r["summary"] for r in runs]
        cells = [METHODS[method][0], budget, str(len(runs))]
        cells += [mean_std([x["classes"][c]["dice_mean"] for x in s], 2, 100) for c in CLASSES]
        cells += [mean_std([x["mean_dice"] for x in s], 2, 100)]
        cells += [mean_std([x["classes"][c]["hd95_mean"] for x in s], 2) for c in CLASSES]
        cells += [mean_std([x["mean_hd95"] for x in s], 2), mean_std([r["train_seconds"] / 60 for r in runs], 1)]
        rows.append(cells)
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    first = next(iter(results.values()))[0]["summary"] if results else {}
    md += [
        "",
        f"Student: ViT-Tiny + neck + decoder, {size['params'] / 1e6:.2f} M parameters, {size['latency_ms']:.1f} ms per "
        f"{size['size']}×{size['size']} slice on CPU ({args.threads} thread(s), batch 1, median). Pre-training: "
        f"{args.pretrain_iterations} iterations, seed(s) {args.pretrain_seeds}; fine-tuning: {args.finetune_iterations} "
        f"iterations, seeds {args.seeds}. Dice in %, mean ± std over seeds (population std), per-slice Dice/HD95 "
        "averaged over the test slices where defined. Empty masks: " + first.get("empty_mask_convention", "–") + ".",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(md) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([head] + rows)
    payload = {"results": {f"{m}/{b}": r for (m, b), r in results.items()}, "size": size}
    payload["args"] = {k: v for k, v in vars(args).items() if k != "extra"}
    (out / "table.json").write_text(json.dumps(payload, indent=1))
    return "\n".join(md)


def _budget(value: str) -> str:
    if value != "all" and not value.isdigit():
        raise argparse.ArgumentTypeError(f"a label budget is a number of slices or 'all', got {value!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tskd")
    p.add_argument("--dataset_dir", default="data/lits_liver")
    p.add_argument("--synthetic_dir", default="runs/transfer_diffusion/transfer_set", help="transfer_diffusion output")
    p.add_argument("--teacher_ckpt", default="runs/teacher_lora/models/model_merged.pt", help="fine-tuned teacher")
    p.add_argument("--base_teacher_ckpt", default=None, help="task-agnostic teacher (default: task_agnostic.json's)")
    p.add_argument("--budgets", nargs="+", type=_budget, default=["20", "all"])
    p.add_argument("--transfer_budget", type=_budget, default="20", help="budget of the transfer-set comparison")
    p.add_argument("--transfer_seeds", nargs="+", type=int, default=None, help="its seeds (default: --seeds)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--pretrain_seeds", nargs="+", type=int, default=[0])
    p.add_argument("--pretrain_iterations", type=int, default=600)
    p.add_argument("--finetune_iterations", type=int, default=300)
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of every run and of the timing")
    p.add_argument("--report_only", action="store_true", help="write the table from finished runs; train nothing")
    args, unknown = p.parse_known_args(argv)
    extra = parse_overrides(unknown)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    jobs = plan(args, extra)
    start = time.perf_counter()
    if not args.report_only:
        run_all(jobs, args, env)
    table = write_table(collect(args), size_and_latency(args, extra), args)
    print(
        f"\n{table}\n\n{len(jobs)} runs; {(time.perf_counter() - start) / 60:.1f} min; written to {args.out}/table.md"
    )


if __name__ == "__main__":
    main()
