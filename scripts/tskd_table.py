#!/usr/bin/env python
"""The tskd_student results table: ViT-Tiny from scratch, task-agnostic KD and TS-KD at two label budgets over seeds,
and TS-KD pre-trained on real unlabelled slices, on synthetic images, or on both.

Every run is a ``monai.bundle`` run of the bundle's own configs, in its own folder of ``OUT``, run as jobs
(``scripts/jobs.py``):

- ``pretrain_<variant>_s<seed>``: ``pretrain.json`` (``+ task_agnostic.json`` for ``takd``) on the variant's transfer
  set: ``tskd`` and ``takd`` the synthetic set (``--synthetic_dir``), ``tskd_real`` the training slices of
  ``--dataset_dir`` without their labels, ``tskd_both`` the two joined. The same number of pre-training iterations for
  every variant, so the comparison is of data, not of compute.
- ``<method>_<budget>_s<seed>``: ``train.json`` (fine-tuning on ``budget`` labelled training slices spread evenly over
  the slab; ``all`` = every one; ``scratch`` from random weights, the others from their pre-trained student), then
  ``evaluate.json`` on the test split.

By default pre-training runs once per variant (``--pretrain_seeds 0``) and each fine-tuning seed starts from it, so the
spread over seeds is that of fine-tuning; ``--pretrain_seeds 0 1 2`` pre-trains once per seed. A finished training
(its marker ``train_time.json``, which holds its wall time) or evaluation (``eval/metrics_summary.json``) is skipped, so
an interrupted table resumes; ``--parallel 2`` runs two at a time (one torch thread each by default).
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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import jobs  # noqa: E402
from scripts.bundle_runs import SUMMARY, mean_std, parse_overrides, train_and_evaluate, train_seconds  # noqa: E402

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
class Run:
    """One bundle run of the table (a pre-training, or a fine-tuning with its evaluation), the runs it needs, and the
    part of the table it belongs to."""

    name: str
    configs: list[str]
    overrides: dict[str, object]
    evaluate: bool = False
    needs: list[str] = field(default_factory=list)
    group: int = 0  # 0: the main table, 1: the transfer-set comparison

    @property
    def root(self) -> Path:
        return Path(str(self.overrides["bundle_root"]))

    def jobs(self) -> list[jobs.Job]:
        """Its training (key: its name) and, for a fine-tuning, its evaluation, which loads ``model.pt`` (not the
        pre-trained student)."""
        configs = [CONFIGS / c for c in self.configs]
        evaluate = configs + [CONFIGS / "evaluate.json"] if self.evaluate else None
        eval_overrides = {k: v for k, v in self.overrides.items() if k != "pretrained"}
        return train_and_evaluate(
            self.name, self.root, configs, self.overrides, evaluate, eval_overrides, tuple(self.needs)
        )


def transfer_dirs(variant: str, args: argparse.Namespace) -> list[str]:
    real, synthetic = args.dataset_dir, args.synthetic_dir
    return {"tskd_real": [real], "tskd_both": [synthetic, real]}.get(variant, [synthetic])


def plan(args: argparse.Namespace, extra: dict[str, object]) -> list[Run]:
    """Every run of the table, pre-training first, each with the runs it needs."""
    out = Path(args.out)
    base = {"dataset_dir": args.dataset_dir, "num_workers": 0, **extra}
    teacher = {"teacher_cache_dir": str(out / "teacher_cache")}
    runs: dict[str, Run] = {}
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
                if pname not in runs:
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
                    runs[pname] = Run(pname, configs, ov)
                pretrained = str(proot / "models" / "pretrain" / "pretrained.pt")
            name = f"{method}_{budget}_s{seed}"
            ov = {**base, "bundle_root": str(out / name), "seed": seed, "iterations": args.finetune_iterations}
            ov["num_labels"] = "$None" if budget == "all" else int(budget)
            ov["pretrained"] = pretrained if pretrained else "$None"
            needs = [f"pretrain_{variant}_s{ps}"] if variant else []
            runs[name] = Run(name, ["train.json"], ov, True, needs, group)
    return order_runs(list(runs.values()))


def order_runs(runs: list[Run]) -> list[Run]:
    """The main table first (its pre-trainings, then its runs), then the transfer-set comparison likewise: the job
    runner starts ready jobs in this order, so the pre-trainings start first and the main table is finished first when
    time is short."""
    ordered: list[Run] = []
    by_name = {r.name: r for r in runs}
    for group in sorted({r.group for r in runs}):
        tuned = [r for r in runs if r.group == group and not r.name.startswith("pretrain_")]
        ordered += [by_name[n] for n in dict.fromkeys(n for r in tuned for n in r.needs) if by_name[n] not in ordered]
        ordered += tuned
    return ordered


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
                root = out / f"{method}_{budget}_s{seed}"
                if (root / SUMMARY).is_file():
                    summary = json.loads((root / SUMMARY).read_text())
                    entry = {"seed": seed, "summary": summary, "train_seconds": train_seconds(root)}
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
    runs = plan(args, extra)
    start = time.perf_counter()
    if not args.report_only:
        jobs.run([job for run in runs for job in run.jobs()], env, args.parallel)
    table = write_table(collect(args), size_and_latency(args, extra), args)
    print(
        f"\n{table}\n\n{len(runs)} runs; {(time.perf_counter() - start) / 60:.1f} min; written to {args.out}/table.md"
    )


if __name__ == "__main__":
    main()
