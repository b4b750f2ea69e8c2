#!/usr/bin/env python
"""The tskd_student comparison on any dataset folder: ViT-Tiny from scratch, task-agnostic KD and TS-KD (synthetic,
real unlabelled or both transfer sets) at label budgets, over pre-training and fine-tuning seeds, with paired-bootstrap
confidence intervals (METHODS.md §3, §8).

Every run is a ``monai.bundle`` run of the bundle's own configs in its own folder of ``OUT``, run as jobs
(``scripts/jobs.py``):

- ``pretrain_<variant>_s<p>``: ``pretrain.json`` (``+ task_agnostic.json`` for ``takd``: LiteMedSAM without task
  fine-tuning, feature term only) with seed p on the variant's transfer set: ``tskd`` and ``takd`` the synthetic set
  (``--synthetic_dir``), ``tskd_real`` the training images of ``--dataset_dir`` without their labels, ``tskd_both`` the
  two joined; the same number of iterations for every variant, so the comparison is of data, not of compute. A
  pre-training does not depend on the label budget: each one serves every budget.
- ``<method>_<budget>_p<p>_s<s>`` (``scratch_<budget>_s<s>`` from random weights): ``train.json`` with seed s from
  the pre-trained student of seed p, on the budget's labels, then ``evaluate.json`` on the test split. Budgets ×
  pre-training seeds × fine-tuning seeds; a fine-tuning needs its pre-training.

Label budgets (``--budgets 8 32 80``; ``all`` = every label) count labelled training subjects, drawn with
``--budget_seed`` (nested: ``label_budget``/``budget_seed`` of the bundle); for a dataset whose items carry no subject
(the LiTS slices of one volume) they count slices spread evenly over the training slab (``num_labels``):
``--budget_unit auto`` chooses by the datalist. The transfer-set rows (``tskd_real``, ``tskd_both``) run at one budget,
``--transfer_budget`` (default: the first of ``--budgets``; ``none`` leaves them out). ``--rows`` names the rows run
at every budget (default ``scratch tskd takd``): without a synthetic transfer set, ``--rows scratch takd tskd_real``
makes the real unlabelled images the main TS-KD row.

The table (``OUT/table.md``, ``.csv``, ``.json``; also printed) first lists every row's runs (mean ± std over runs of
each run's summary, and how many collapsed to all-background: no predicted foreground pixel in any test case), then per
budget the paired bootstrap of ``common.stats`` over test subjects (every seed of a row, pre-training and fine-tuning,
averaged inside a subject): Dice and HD95 with 95% CIs, per-class Dice, the paired difference of every row to ViT-Tiny
from scratch and to task-agnostic KD with its CI and verdict; ``--report_cldice true`` adds clDice (thin vessels;
DRIVE's evaluation already scores inside its field of view), then the validation Dice of every row during
fine-tuning (mean and lowest run at each validation, and the runs that sat at 0 at some validation: a collapse that
recovers is seen too). Class names come from the dataset's ``dataset.json``.

A finished training (its marker ``train_time.json``) or evaluation (``eval/metrics_summary.json``) is skipped, so an
interrupted table resumes; ``--parallel 2`` runs two at a time; ``--plan`` prints the jobs and runs nothing. Sizes
(and, for ``budget``, the rows) come from ``--profile`` (``budget``: the measured HC18 table on 2 CPU cores; ``gpu``:
placeholders) unless given. Options the script does not know go to every bundle run (e.g. ``--layer_decay 0.75``)::

    python scripts/tskd_table.py --out runs/tskd --parallel 2                      # LiTS slices, budgets 20 and all
    python scripts/tskd_table.py --dataset_dir data/hc18 --out runs/tskd_hc18 --profile budget --parallel 2 \
        --teacher_ckpt runs/iad_hc18/budget_8/teacher/models/model_merged.pt      # the HC18 table of the docs
    python scripts/tskd_table.py --dataset_dir data/hc18 --out runs/tskd_hc18_gpu --profile gpu \
        --synthetic_dir runs/transfer_diffusion_hc18/transfer_set --teacher_ckpt TUNED_TEACHER --plan
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.stats import subject_scores  # noqa: E402
from scripts import jobs  # noqa: E402
from scripts.bundle_runs import (  # noqa: E402
    SUMMARY,
    bootstrap_or_none,
    ci_cell,
    mean_std,
    parse_overrides,
    train_and_evaluate,
    train_seconds,
)

CONFIGS = REPO / "bundles" / "tskd_student" / "configs"
PER_CASE = Path("eval") / "metrics_per_case.csv"  # in a run's bundle_root: written by evaluate.json
METHODS = {  # method -> (label, pre-training variant or None)
    "scratch": ("ViT-Tiny from scratch", None),
    "takd": ("Task-agnostic KD (LiteMedSAM, feature term)", "takd"),
    "tskd": ("TS-KD (synthetic transfer set)", "tskd"),
    "tskd_real": ("TS-KD (real unlabelled images)", "tskd_real"),
    "tskd_both": ("TS-KD (real + synthetic)", "tskd_both"),
}
MAIN = ("scratch", "tskd", "takd")  # at every budget
TRANSFER = ("tskd_real", "tskd_both")  # at --transfer_budget
BASELINES = {"scratch": "from scratch", "takd": "task-agnostic KD"}  # every row's paired differences
TASK_SPECIFIC = ("tskd", "tskd_real", "tskd_both")  # rows that fine-tune with the tuned teacher's term, when asked
TEACHER_KEYS = ("teacher_ckpt", "teacher_cache_dir", "finetune_distill_weight")

# The sizes an option left unset takes: the profile's, else DEFAULTS (None: the bundle's own default, not passed).
DEFAULTS: dict[str, object] = {
    "budgets": ["20", "all"],
    "rows": list(MAIN),
    "transfer_budget": "first",
    "seeds": [0, 1, 2],
    "pretrain_seeds": [0, 1],
    "pretrain_iterations": 600,
    "finetune_iterations": 300,
    "image_size": None,
    "patch_size": None,
}
# "budget": the HC18 table of bundles/tskd_student/docs on 2 CPU cores (measured: label budget 8, no synthetic set, so
# TS-KD pre-trains on the real training images without labels, as task-agnostic KD does; 2 pre-training x 3 fine-tuning
# seeds; pre-training 474 iterations = 6 epochs of HC18's 626 images at batch 8, about 2.2 s each; fine-tuning 300
# iterations, about 1.2 s each). "gpu": PLACEHOLDERS, not measured (to be sized after timing one run of each kind).
PROFILES: dict[str, dict[str, object]] = {
    "budget": {
        "budgets": ["8"],
        "rows": ["scratch", "takd", "tskd_real"],
        "transfer_budget": "none",
        "seeds": [0, 1, 2],
        "pretrain_seeds": [0, 1],
        "pretrain_iterations": 474,
        "finetune_iterations": 300,
        "image_size": 128,
        "patch_size": 8,
    },
    "gpu": {
        "budgets": ["8", "32", "80"],  # PLACEHOLDER
        "seeds": [0, 1, 2],
        "pretrain_seeds": [0, 1, 2],  # PLACEHOLDER
        "pretrain_iterations": 5000,  # PLACEHOLDER
        "finetune_iterations": 1500,  # PLACEHOLDER
        "image_size": 256,  # PLACEHOLDER
        "patch_size": 16,  # PLACEHOLDER
    },
}


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
    eval_overrides: dict[str, object] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(str(self.overrides["bundle_root"]))

    def jobs(self) -> list[jobs.Job]:
        """Its training (key: its name) and, for a fine-tuning, its evaluation (``train.json`` + ``evaluate.json``:
        it loads ``model.pt``, not the pre-trained student, and needs no teacher)."""
        configs = [CONFIGS / c for c in self.configs]
        evaluate = [CONFIGS / "train.json", CONFIGS / "evaluate.json"] if self.evaluate else None
        drop = ("pretrained", *TEACHER_KEYS)
        eval_overrides = {**{k: v for k, v in self.overrides.items() if k not in drop}, **self.eval_overrides}
        return train_and_evaluate(
            self.name, self.root, configs, self.overrides, evaluate, eval_overrides, tuple(self.needs)
        )


class Tuning(NamedTuple):
    """A fine-tuning of the table: its method, budget, pre-training seed (None from scratch), seed and group."""

    method: str
    budget: str
    pretrain_seed: int | None
    seed: int
    group: int

    @property
    def name(self) -> str:
        p = "" if self.pretrain_seed is None else f"_p{self.pretrain_seed}"
        return f"{self.method}_{self.budget}{p}_s{self.seed}"

    @property
    def pretraining(self) -> str | None:
        variant = METHODS[self.method][1]
        return None if variant is None else f"pretrain_{variant}_s{self.pretrain_seed}"


def _main_rows(args: argparse.Namespace) -> list[str]:
    """The rows run at every budget (``--rows``; default :data:`MAIN`)."""
    return list(getattr(args, "rows", None) or MAIN)


def tunings(args: argparse.Namespace) -> Iterator[Tuning]:
    """Every fine-tuning: per row and budget, pre-training seeds × fine-tuning seeds (fine-tuning seeds only from
    scratch); the main rows at every budget, then the transfer-set rows at ``transfer_budget``."""
    main_rows = _main_rows(args)
    rows = [(m, b, args.seeds, 0) for m in main_rows for b in args.budgets]
    if args.transfer_budget is not None:
        seeds = args.transfer_seeds or args.seeds
        rows += [(m, args.transfer_budget, seeds, 1) for m in TRANSFER if m not in main_rows]
    for method, budget, seeds, group in rows:
        for p in args.pretrain_seeds if METHODS[method][1] else [None]:
            for s in seeds:
                yield Tuning(method, str(budget), p, s, group)


def transfer_dirs(variant: str, args: argparse.Namespace) -> list[str]:
    """The transfer set of a pre-training; task-agnostic KD takes that of the first TS-KD row of ``--rows`` (the
    synthetic set by default), so that it differs from TS-KD by its teacher only."""
    real, synthetic = args.dataset_dir, args.synthetic_dir
    if variant == "takd":
        variant = next((m for m in _main_rows(args) if m in TASK_SPECIFIC), "tskd")
    return {"tskd_real": [real], "tskd_both": [synthetic, real]}.get(variant, [synthetic])


def budget_overrides(budget: str, args: argparse.Namespace) -> dict[str, object]:
    """The labels of a fine-tuning: ``label_budget`` subjects drawn with ``budget_seed``, or ``num_labels`` slices
    (``$None``, every label, for ``all``: a bare ``null`` would reach the config as the string 'null')."""
    value = "$None" if budget == "all" else int(budget)
    if getattr(args, "budget_unit", "slices") == "subjects":
        return {"label_budget": value, "budget_seed": args.budget_seed}
    return {"num_labels": value}


def _sizes(args: argparse.Namespace) -> dict[str, object]:
    """The input and patch size of every run, when set (else the bundle's)."""
    sizes = {"image_size": getattr(args, "image_size", None), "patch_size": getattr(args, "patch_size", None)}
    return {k: v for k, v in sizes.items() if v is not None}


def pretraining(variant: str, seed: int, args: argparse.Namespace, base: dict[str, object]) -> Run:
    """The pre-training of ``variant`` with ``seed``."""
    root = Path(args.out) / f"pretrain_{variant}_s{seed}"
    configs = ["pretrain.json"] + (["task_agnostic.json"] if variant == "takd" else [])
    overrides = {**base, "teacher_cache_dir": str(Path(args.out) / "teacher_cache"), "bundle_root": str(root)}
    overrides.update({"seed": seed, "iterations": args.pretrain_iterations})
    overrides["transfer_dirs"] = transfer_dirs(variant, args)
    if variant != "takd":
        overrides["teacher_ckpt"] = args.teacher_ckpt
    elif args.base_teacher_ckpt:
        overrides["teacher_ckpt"] = args.base_teacher_ckpt
    return Run(f"pretrain_{variant}_s{seed}", configs, overrides)


def fine_tuning(t: Tuning, args: argparse.Namespace, base: dict[str, object]) -> Run:
    """The fine-tuning ``t`` and its evaluation; a TS-KD row keeps the tuned teacher's prediction term when
    ``--finetune_distill_weight`` > 0 (``finetune_distill.json``)."""
    out = Path(args.out)
    overrides = {**base, "bundle_root": str(out / t.name), "seed": t.seed, "iterations": args.finetune_iterations}
    overrides.update(budget_overrides(t.budget, args))
    pre = t.pretraining
    overrides["pretrained"] = str(out / pre / "models" / "pretrain" / "pretrained.pt") if pre else "$None"
    configs = ["train.json"]
    weight = getattr(args, "finetune_distill_weight", 0.0)
    if weight > 0 and t.method in TASK_SPECIFIC:
        configs.append("finetune_distill.json")
        overrides.update({"teacher_ckpt": args.teacher_ckpt, "teacher_cache_dir": str(out / "teacher_cache")})
        overrides["finetune_distill_weight"] = weight
    eval_overrides = {"report_cldice": True} if getattr(args, "report_cldice", False) else {}
    return Run(t.name, configs, overrides, True, [pre] if pre else [], t.group, eval_overrides)


def plan(args: argparse.Namespace, extra: dict[str, object]) -> list[Run]:
    """Every run of the table, each with the pre-training it needs, in the order the runner starts them."""
    base = {"dataset_dir": args.dataset_dir, "num_workers": 0, **_sizes(args), **extra}
    runs: dict[str, Run] = {}
    for t in tunings(args):
        variant = METHODS[t.method][1]
        if variant is not None and t.pretraining not in runs:
            runs[t.pretraining] = pretraining(variant, t.pretrain_seed, args, base)
        runs[t.name] = fine_tuning(t, args, base)
    return order_runs(list(runs.values()))


def order_runs(runs: list[Run]) -> list[Run]:
    """The main table first, then the transfer-set comparison; in each, the pre-trainings it needs (seed 0 of every
    variant first), then its fine-tunings by (fine-tuning seed, pre-training seed): the runner starts ready jobs in
    this order, so a first complete comparison of one seed arrives early and the main table is finished first when
    time is short."""
    ordered: list[Run] = []
    by_name = {r.name: r for r in runs}
    seed = {r.name: (r.overrides["seed"], 0) for r in runs}
    for r in runs:
        if r.needs:
            seed[r.name] = (r.overrides["seed"], by_name[r.needs[0]].overrides["seed"])
    for group in sorted({r.group for r in runs}):
        tuned = [r for r in runs if r.group == group and not r.name.startswith("pretrain_")]
        tuned.sort(key=lambda r: seed[r.name])  # stable: plan order within a seed pair
        needed = dict.fromkeys(n for r in tuned for n in r.needs)
        pre = sorted((by_name[n] for n in needed if by_name[n] not in ordered), key=lambda r: r.overrides["seed"])
        ordered += pre + tuned
    return ordered


# --------------------------------------------------------------------------------------------------------- collect
def collapsed(per_case: str | Path | None) -> bool | None:
    """Whether a run predicted background everywhere: every ``pred_sum_<class>`` of its per-case metrics is 0 (without
    those columns: no defined Dice above 0 in any case, i.e. no overlap anywhere); None without per-case metrics."""
    if per_case is None or not Path(per_case).is_file():
        return None
    with open(per_case, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    counts = [k for k in rows[0] if k.startswith("pred_sum_")]
    if counts:
        return all(float(row[k]) == 0 for row in rows for k in counts)
    dice = [float(row[k]) for row in rows for k in row if k.startswith("dice_") and row[k] not in ("", "nan")]
    return all(v == 0 for v in dice)


def validation_curve(log_dir: str | Path) -> list[tuple[int, float]]:
    """(iteration, validation mean Dice) of a fine-tuning, from its TensorBoard events (``common.reporting``):
    ``val_mean_dice`` is logged per epoch, the loss per iteration, so an epoch's iteration is the epoch times the
    iterations per epoch (the last loss step over the last epoch validated: a run validates at its last epoch); an
    epoch logged twice (a resumed run) keeps one value. [] without events."""
    from common.reporting import read_scalars

    scalars = read_scalars(log_dir) if Path(log_dir).is_dir() else {}
    val = dict(scalars.get("val_mean_dice", []))
    if not val:
        return []
    last_iteration = max((step for step, _ in scalars.get("loss", [])), default=0)
    per_epoch = last_iteration / max(val) if last_iteration else 1
    return [(round(epoch * per_epoch), value) for epoch, value in sorted(val.items())]


def collect(args: argparse.Namespace) -> dict[tuple[str, str], list[dict]]:
    """(method, budget) -> its finished fine-tunings: seed, pre-training seed, test summary, per-case metrics file
    (None when missing), training seconds and whether it collapsed."""
    results: dict[tuple[str, str], list[dict]] = {}
    order = {(m, b): i for i, (m, b) in enumerate((m, b) for m in METHODS for b in [*args.budgets, "all"])}
    for t in sorted(tunings(args), key=lambda t: order.get((t.method, t.budget), len(order))):
        root = Path(args.out) / t.name
        if not (root / SUMMARY).is_file():
            continue
        per_case = str(root / PER_CASE) if (root / PER_CASE).is_file() else None
        entry = {"seed": t.seed, "pretrain_seed": t.pretrain_seed, "summary": json.loads((root / SUMMARY).read_text())}
        entry.update({"per_case": per_case, "train_seconds": train_seconds(root), "collapsed": collapsed(per_case)})
        entry["curve"] = validation_curve(root / "outputs")
        results.setdefault((t.method, t.budget), []).append(entry)
    return results


def _run_key(run: dict) -> str:
    """A run's seed key for the bootstrap: both seeds (they are averaged inside a subject alike)."""
    return f"s{run['seed']}" if run.get("pretrain_seed") is None else f"p{run['pretrain_seed']}_s{run['seed']}"


def block_statistics(runs: dict[str, list[dict]], classes: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Row -> ``dice`` / ``hd95`` (and ``cldice``) over ``classes``, each a dict baseline -> the paired bootstrap of
    the row's subject scores (every seed averaged inside a subject) against that baseline, and ``class_dice``."""

    def scores(metric: str, names: list[str]) -> dict:
        return {m: {_run_key(r): subject_scores(r["per_case"], metric, names) for r in rs} for m, rs in runs.items()}

    metrics = [("dice", True), ("hd95", False)] + ([("cldice", True)] if args.report_cldice else [])
    stats: dict[str, dict] = {m: {} for m in runs}
    for metric, higher in metrics:
        values = scores(metric, classes)
        by_baseline = {b: bootstrap_or_none(values, b, args.n_boot, args.bootstrap_seed, higher) for b in BASELINES}
        for m in runs:
            stats[m][metric] = {b: by_baseline[b][m] for b in BASELINES}
    per_class = {c: bootstrap_or_none(scores("dice", [c]), None, args.n_boot, args.bootstrap_seed) for c in classes}
    for m in runs:
        stats[m]["class_dice"] = {c: per_class[c][m] for c in classes}
    return stats


# ----------------------------------------------------------------------------------------------------------- table


def _collapses(runs: list[dict]) -> str:
    known = [r["collapsed"] for r in runs if r.get("collapsed") is not None]
    return f"{sum(known)}/{len(known)}" if known else "–"


def _unit(args: argparse.Namespace) -> str:
    return "subjects" if getattr(args, "budget_unit", "slices") == "subjects" else "slices"


def summary_table(results: dict[tuple[str, str], list[dict]], classes: list[str], args: argparse.Namespace) -> list:
    """Every row's runs, each run's summary averaged: mean ± std over runs (header, Markdown rows, cells)."""
    head = ["method", f"labelled {_unit(args)}", "runs"] + [f"Dice {c}" for c in classes] + ["mean Dice"]
    head += [f"HD95 {c}" for c in classes] + ["mean HD95", "fine-tune time (min)", "collapsed runs"]
    rows = []
    for (method, budget), runs in results.items():
        s = [r["summary"] for r in runs]
        cells = [METHODS[method][0], budget, str(len(runs))]
        cells += [mean_std([x["classes"][c]["dice_mean"] for x in s], 2, 100) for c in classes]
        cells += [mean_std([x["mean_dice"] for x in s], 2, 100)]
        cells += [mean_std([x["classes"][c]["hd95_mean"] for x in s], 2) for c in classes]
        cells += [mean_std([x.get("mean_hd95") for x in s], 2), mean_std([r["train_seconds"] / 60 for r in runs], 1)]
        rows.append(cells + [_collapses(runs)])
    return [head, rows]


def curve_table(results: dict[tuple[str, str], list[dict]], args: argparse.Namespace) -> list[str]:
    """Validation Dice during fine-tuning, per row: the mean (and the lowest run) at each validation, and how many
    runs sat at 0 at some validation, so that a collapse that recovers by the end is seen too ([] without curves)."""
    rows = {k: [r["curve"] for r in runs if r.get("curve")] for k, runs in results.items()}
    iterations = sorted({it for curves in rows.values() for c in curves for it, _ in c})
    if not iterations:
        return []
    head = ["method", f"labelled {_unit(args)}", "runs"] + [f"it. {it}" for it in iterations]
    lines = []
    for (method, budget), curves in rows.items():
        if not curves:
            continue
        cells = [METHODS[method][0], budget, str(len(curves))]
        for it in iterations:
            values = [dict(c)[it] for c in curves if it in dict(c)]
            cells.append(f"{100 * sum(values) / len(values):.1f} ({100 * min(values):.1f})" if values else "–")
        lines.append(cells + [f"{sum(any(v == 0 for _, v in c) for c in curves)}/{len(curves)}"])
    head.append("runs at 0 at some validation")
    title = "## Validation Dice % during fine-tuning (mean over runs, lowest run in brackets)"
    return [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(c) + " |" for c in lines
    ]


def write_table(
    results: dict[tuple[str, str], list[dict]],
    size: dict,
    args: argparse.Namespace,
    classes: list[str] | None = None,
) -> str:
    """Write ``table.md`` / ``table.csv`` / ``table.json`` into ``OUT`` and return the Markdown: the runs' summary
    table, then per budget the paired bootstrap over test subjects, then the notes. ``classes``: the foreground
    classes (default: those of the first summary)."""
    first = next(iter(results.values()))[0]["summary"] if results else {}
    classes = list(classes) if classes is not None else list(first.get("classes", {}))
    head, rows = summary_table(results, classes, args)
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    statistics: dict[str, dict] = {}
    records: list[dict] = []
    for budget in dict.fromkeys(b for _, b in results):
        block = {m: rs for (m, b), rs in results.items() if b == budget and all(r["per_case"] for r in rs)}
        if not block:
            continue
        stats = block_statistics(block, classes, args)
        statistics[budget] = stats
        md += ["", *_block_markdown(budget, block, stats, classes, args)]
        records += [_record(budget, m, block[m], stats[m], classes) for m in block]
    curves = curve_table(results, args)
    md += ["", *curves] if curves else []
    md += [line for note in _notes(first, size, classes, args) for line in ("", note)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(md) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        if records:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
        else:
            csv.writer(f).writerows([head] + rows)
    payload = {"results": {f"{m}/{b}": r for (m, b), r in results.items()}, "size": size, "classes": classes}
    payload["statistics"] = statistics
    payload["bootstrap"] = {"resamples": args.n_boot, "seed": args.bootstrap_seed, "ci": 0.95, "baselines": BASELINES}
    payload["args"] = {k: v for k, v in vars(args).items() if k != "extra"}
    (out / "table.json").write_text(json.dumps(payload, indent=1))
    return "\n".join(md)


def _block_markdown(budget: str, block: dict, stats: dict, classes: list[str], args: argparse.Namespace) -> list[str]:
    """One budget's bootstrap table."""
    head = ["method", "runs", "subjects", "Dice % [95% CI]"] + [f"Dice {c} %" for c in classes]
    for name in BASELINES.values():
        head += [f"Δ Dice vs {name} [95% CI]", "verdict"]
    head += ["HD95 [95% CI]"] + (["clDice % [95% CI]"] if args.report_cldice else []) + ["collapsed runs"]
    lines = []
    for method, runs in block.items():
        s = stats[method]
        dice = s["dice"]["scratch"] or s["dice"]["takd"]
        cells = [METHODS[method][0], str(len(runs)), str((dice or {}).get("subjects", "–")), ci_cell(dice, 100)]
        cells += [ci_cell(s["class_dice"][c], 100) for c in classes]
        for baseline in BASELINES:
            entry = s["dice"][baseline]
            same = method == baseline or entry is None or entry.get("difference") is None
            cells += ["–", "–"] if same else [ci_cell(entry, 100, "difference", signed=True), entry["verdict"]]
        cells += [ci_cell(s["hd95"]["scratch"] or s["hd95"]["takd"])]
        if args.report_cldice:
            cells += [ci_cell(s["cldice"]["scratch"] or s["cldice"]["takd"], 100)]
        lines.append(cells + [_collapses(runs)])
    unit = _unit(args)
    title = "every label" if budget == "all" else f"{budget} labelled training {unit}"
    return [f"## Label budget: {title} (paired bootstrap over test subjects)", "", "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head)] + ["| " + " | ".join(c) + " |" for c in lines]  # fmt: skip


def _record(budget: str, method: str, runs: list[dict], stats: dict, classes: list[str]) -> dict:
    """One CSV line: the numbers behind a bootstrap row (fractions for Dice, the HD95 unit of the evaluation)."""

    def get(entry: dict | None, key: str, i: int | None = None) -> float:
        value = None if entry is None else entry.get(key)
        return math.nan if value is None else float(value if i is None else value[i])

    dice = stats["dice"]["scratch"] or stats["dice"]["takd"]
    hd95 = stats["hd95"]["scratch"] or stats["hd95"]["takd"]
    record: dict[str, object] = {"budget": budget, "method": method, "runs": len(runs)}
    record.update({"subjects": dice["subjects"] if dice else 0, "dice": get(dice, "mean")})
    record.update({"dice_lo": get(dice, "ci", 0), "dice_hi": get(dice, "ci", 1)})
    record.update({f"dice_{c}": get(stats["class_dice"][c], "mean") for c in classes})
    for baseline in BASELINES:
        entry = stats["dice"][baseline]
        record[f"dice_diff_{baseline}"] = get(entry, "difference")
        record[f"dice_diff_{baseline}_lo"] = get(entry, "difference_ci", 0)
        record[f"dice_diff_{baseline}_hi"] = get(entry, "difference_ci", 1)
        record[f"verdict_{baseline}"] = (entry or {}).get("verdict") or ""
        record[f"hd95_diff_{baseline}"] = get(stats["hd95"][baseline], "difference")
    record.update({"hd95": get(hd95, "mean"), "hd95_lo": get(hd95, "ci", 0), "hd95_hi": get(hd95, "ci", 1)})
    record["collapsed"] = sum(bool(r.get("collapsed")) for r in runs)
    minutes = [r["train_seconds"] / 60 for r in runs if not math.isnan(r["train_seconds"])]
    record["train_minutes"] = sum(minutes) / len(minutes) if minutes else math.nan
    return record


def _notes(first: dict, size: dict, classes: list[str], args: argparse.Namespace) -> list[str]:
    """The paragraphs under the tables."""
    convention = first.get("empty_mask_convention", "–")
    teacher = getattr(args, "teacher_ckpt", "–")
    distil = getattr(args, "finetune_distill_weight", 0.0)
    notes = [
        f"Student: ViT-Tiny + neck + decoder, {size['params'] / 1e6:.2f} M parameters, {size['latency_ms']:.1f} ms per "
        f"{size['size']}×{size['size']} slice on CPU ({args.threads} thread(s), batch 1, median). Pre-training: "
        f"{args.pretrain_iterations} iterations, seed(s) {args.pretrain_seeds}; fine-tuning: {args.finetune_iterations} "
        f"iterations, seeds {args.seeds}"
        + (f", TS-KD rows with the teacher's term at weight {distil}" if distil else "")
        + f". TS-KD teacher: {teacher}. First table: mean ± std over a row's runs (pre-training × fine-tuning seeds, "
        "population std) of each run's test summary, Dice in %.",
        "Paired bootstrap: each test image's Dice (or HD95, clDice) averaged over the classes "
        f"{', '.join(classes)} where defined, then over the subject's images, then over all the row's runs "
        "(pre-training and fine-tuning seeds averaged inside a subject). Mean over the subjects every row of the block "
        f"scored; 95% CI: percentile bootstrap of {args.n_boot} resamples of those subjects (seed "
        f"{args.bootstrap_seed}), the same resample for every row (paired). Δ: per subject, the row minus the "
        "baseline, then the mean, with its paired CI; better / worse when that CI excludes 0, else no difference.",
        f"HD95 in mm (in pixels where the dataset has no spacing). Empty masks: {convention}. Collapsed: a run whose "
        "test predictions have no foreground pixel in any case (the pred_sum columns of its per-case metrics; for "
        "runs evaluated before those columns existed: no Dice above 0 in any case).",
    ]
    if any(n < m for n, m in ((len(args.seeds), 3), (len(args.pretrain_seeds), 2))):
        notes.append("Fewer seeds than the protocol's 3 fine-tuning and 2 pre-training seeds per variant.")
    return notes


# ------------------------------------------------------------------------------------------------------------ main
def size_and_latency(args: argparse.Namespace, extra: dict[str, object], num_classes: int = 3, in_channels: int = 1):
    """The student's parameters and median CPU time per slice (batch 1, 20 runs after 3 warm-ups)."""
    import torch

    from common.networks.vit_student import build_vit_student
    from common.profiling import count_parameters, latency

    torch.set_num_threads(args.threads)
    size = int(args.image_size or extra.get("image_size", 128))
    patch = int(args.patch_size or extra.get("patch_size", 16))
    preset = str(extra.get("student_preset", "tiny"))
    net = build_vit_student(num_classes, image_size=size, in_channels=in_channels, preset=preset, patch_size=patch)
    seconds = latency(net.eval(), torch.rand(1, in_channels, size, size))
    return {"params": count_parameters(net), "latency_ms": 1000 * seconds, "size": size, "patch_size": patch}


def budget_unit(dataset_dir: str, unit: str) -> str:
    """``subjects`` or ``slices``; ``auto``: subjects when every training item of the datalist names its subject."""
    if unit != "auto":
        return unit
    path = Path(dataset_dir) / "datalist.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (--dataset_dir must hold a datalist.json)")
    items = json.loads(path.read_text()).get("training", [])
    return "subjects" if items and all("subject" in item for item in items) else "slices"


def _budget(value: str) -> str:
    if value != "all" and not (value.isdigit() and int(value) > 0):
        raise argparse.ArgumentTypeError(
            f"a label budget is a number of slices or 'all' (of subjects when the datalist names them), got {value!r}"
        )
    return value


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() in ("true", "1", "yes")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, object]]:
    """The options (sizes left unset from ``--profile``, then :data:`DEFAULTS`) and the bundle overrides for every
    run (the options the script does not know)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tskd")
    p.add_argument("--dataset_dir", default="data/lits_liver", help="a dataset folder (datalist.json, dataset.json)")
    p.add_argument("--synthetic_dir", default="runs/transfer_diffusion/transfer_set", help="transfer_diffusion output")
    p.add_argument("--teacher_ckpt", default="runs/teacher_lora/models/model_merged.pt", help="fine-tuned teacher")
    p.add_argument("--base_teacher_ckpt", default=None, help="task-agnostic teacher (default: task_agnostic.json's)")
    p.add_argument("--profile", choices=list(PROFILES), default=None, help="default sizes: budget (measured, the "
                   "HC18 table) or gpu (placeholders)")  # fmt: skip
    p.add_argument("--rows", nargs="+", choices=list(METHODS), default=None, help="the rows run at every budget "
                   f"(default: {' '.join(MAIN)}; e.g. tskd_real in place of tskd without a synthetic set)")  # fmt: skip
    p.add_argument("--budgets", nargs="+", type=_budget, default=None, help="labelled subjects (or slices) per block, "
                   "or 'all' (default: 20 all)")  # fmt: skip
    p.add_argument("--budget_unit", choices=["auto", "subjects", "slices"], default="auto",
                   help="what a budget counts (auto: subjects when the datalist names them)")  # fmt: skip
    p.add_argument("--budget_seed", type=int, default=0, help="seed of the draw of the labelled subjects")
    p.add_argument("--transfer_budget", default=None, help="budget of the transfer-set rows (default: the first "
                   "of --budgets; 'none': no transfer-set rows)")  # fmt: skip
    p.add_argument("--transfer_seeds", nargs="+", type=int, default=None, help="their seeds (default: --seeds)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="fine-tuning seeds (default: 0 1 2)")
    p.add_argument("--pretrain_seeds", nargs="+", type=int, default=None, help="pre-training seeds (default: 0 1)")
    p.add_argument("--pretrain_iterations", type=int, default=None)
    p.add_argument("--finetune_iterations", type=int, default=None)
    p.add_argument("--image_size", type=int, default=None, help="the student's input size (default: the bundle's)")
    p.add_argument("--patch_size", type=int, default=None, help="the ViT's patch, 8 or 16 (default: the bundle's)")
    p.add_argument("--finetune_distill_weight", type=float, default=0.0, help="> 0: the TS-KD rows keep the tuned "
                   "teacher's prediction term at this weight while fine-tuning (finetune_distill.json)")  # fmt: skip
    p.add_argument("--report_cldice", type=_flag, default=False, help="true: clDice too (thin vessels)")
    p.add_argument("--n_boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--bootstrap_seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of every run and of the timing")
    p.add_argument("--plan", action="store_true", help="print the jobs (done or not) and run nothing")
    p.add_argument("--report_only", action="store_true", help="write the table from finished runs; train nothing")
    args, unknown = p.parse_known_args(argv)
    profile = PROFILES.get(args.profile, {})
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            value = profile.get(key, default)
            setattr(args, key, list(value) if isinstance(value, list) else value)
    if args.transfer_budget == "first":
        args.transfer_budget = args.budgets[0]
    elif args.transfer_budget.lower() == "none":
        args.transfer_budget = None
    else:
        args.transfer_budget = _budget(args.transfer_budget)
    args.budget_unit = budget_unit(args.dataset_dir, args.budget_unit)
    return args, parse_overrides(unknown)


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(argv)
    runs = plan(args, extra)
    todo = [job for run in runs for job in run.jobs()]
    if args.plan:
        jobs.print_plan(todo)
        pre = sum(r.name.startswith("pretrain_") for r in runs)
        print(f"\n{len(todo)} jobs: {pre} pre-trainings, {len(runs) - pre} fine-tunings with their evaluations; "
              f"budgets in {args.budget_unit}: {args.budgets}")  # fmt: skip
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    if not args.report_only:
        jobs.run(todo, env, args.parallel)
    from common.data.dataset_info import load_dataset_info

    info = load_dataset_info(args.dataset_dir)
    results = collect(args)
    if not results:
        sys.exit("error: no finished run to report")
    size = size_and_latency(args, extra, info.num_classes, info.in_channels)
    table = write_table(results, size, args, info.class_names)
    print(
        f"\n{table}\n\n{len(runs)} runs; {(time.perf_counter() - start) / 60:.1f} min; written to {args.out}/table.md"
    )


if __name__ == "__main__":
    main()
