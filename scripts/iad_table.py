#!/usr/bin/env python
"""The IAD comparison on any dataset folder: the student alone, KD, KD + KAS, IAD (KIS only), IAD and the teacher,
for each label budget and seed, with paired-bootstrap confidence intervals (METHODS.md §8).

For each label budget N (``--budgets 8 32 all``: N labelled training subjects) the table

1. trains a teacher_lora teacher on those N subjects into ``OUT/budget_<N>/teacher`` and evaluates it on the test
   split (``train.json`` + ``evaluate.json``);
2. trains every row and seed into ``OUT/budget_<N>/<row>/seed<k>`` from the same N subjects (``--label_budget N``,
   drawn with ``--budget_seed``); the rows that learn from the teacher also take the other training subjects'
   images as unlabelled data, labelled by that teacher (``--unlabelled rest``), and distil from it; then evaluates
   each on the test split (``train.json`` + the row's configs + ``evaluate.json``). The control row ``self_kd`` does
   the same with the student alone of its seed as the teacher (``self_kd.json``): what SAM adds beyond self-training.

Settings chosen on validation (``--grid iad:alpha=0.02,0.2 iad:kis_fraction=0.33,0.67``; ``kis_fraction`` is KIS's
share of ``--iterations``, any other key a bundle override): every combination of a gridded row trains into
``OUT/budget_<N>/<row>_<key><value>…/seed<k>`` and is evaluated on the validation split (``eval_validation/``); once
all are, per budget the combination with the highest mean validation Dice (seeds averaged) is evaluated on test and
reported as the row, and the table lists every combination's validation score (the second stage of the same
command).

Cross-validation by subject (``--folds``; default: every ``fold_k`` list of a ``datalist.json`` written by
``prepare_dataset.py --folds K``, e.g. BraTS 2D slices of 6 patients in 3 folds of 2): fold k tests on ``fold_k``,
validates on ``fold_{k+1}`` and trains on the rest, so every subject is tested once; each fold has its own teacher and
runs, in ``OUT/fold<k>/budget_<N>/…``, its grid choice on its own validation subjects, and the table pools the folds'
test subjects into one block per budget.

With ``--teacher_root`` (a teacher already trained on every label, as ``run_pipeline.py`` trains it) there is no
budget axis: the teacher is only evaluated, into ``OUT/teacher``, and the runs are in ``OUT/<row>/seed<k>``.

Every training and evaluation is a job of ``scripts/jobs.py`` (a training is done when its marker
``train_time.json``, which holds its wall time, exists; an evaluation when ``eval/metrics_summary.json`` does), so an
interrupted table resumes; ``--parallel 2`` runs two at a time; ``--plan`` prints the jobs and runs nothing. Sizes
(epochs, image sizes, seeds, budgets, rows) come from ``--profile`` (``budget``: 2 CPU cores; ``gpu``) unless given.

The table (``OUT/table.md``, ``.csv``, ``.json``; also printed) has one block per budget; per row: mean Dice over
the test subjects with its 95% CI, per-class Dice, the paired difference to the student alone with its CI and
verdict, mean HD95 with its CI, seeds and subjects, parameters and CPU latency, training time (``common.stats``:
seeds averaged inside a subject, subjects resampled with the pairing between rows kept).

    python scripts/iad_table.py --dataset_dir data/hc18 --out runs/iad_hc18 --profile budget --parallel 2
    python scripts/iad_table.py --dataset_dir data/hc18 --out runs/iad_hc18 --row_overrides kd:temperature=1 --plan
    python scripts/iad_table.py --dataset_dir data/hc18 --out runs/iad_hc18 --profile budget \
        --grid iad:alpha=0.2,1 iad:gamma=0.01,0.1 --plan
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.data.datalist import detect_folds  # noqa: E402
from common.stats import subject_scores  # noqa: E402
from scripts import jobs  # noqa: E402
from scripts.bundle_runs import (  # noqa: E402
    SUMMARY,
    VALIDATION_EVAL,
    best_on_validation,
    bootstrap_or_none,
    bundle_cmd,
    ci_cell,
    mean_std,
    parse_overrides,
    train_and_evaluate,
    train_seconds,
    validation_job,
)

CONFIGS = REPO / "bundles" / "iad_student" / "configs"
TEACHER_CONFIGS = REPO / "bundles" / "teacher_lora" / "configs"
PER_CASE = Path("eval") / "metrics_per_case.csv"  # in a run's bundle_root: written by evaluate.json


class Row(NamedTuple):
    """A row of the table: its label, the variant configs merged after ``train.json``, whether it learns from a
    teacher (it then sees the unlabelled images), and whether that teacher is the student alone of its seed (the
    self-distillation control) rather than the SAM teacher of its budget."""

    label: str
    variants: list[str]
    distils: bool
    self_taught: bool = False


ROWS = {
    "student_only": Row("Student only", ["student_only.json"], False),
    "self_kd": Row("Self-KD (student teacher, no SAM)", ["kd.json", "self_kd.json"], True, True),
    "kd": Row("KD (Hinton)", ["kd.json"], True),
    "kd_kas": Row("KD + KAS", ["kd_kas.json"], True),
    "kis_only": Row("IAD (KIS only)", ["kis_only.json"], True),
    "iad": Row("IAD (KIS → KAS)", [], True),
    "at": Row("AT", ["at.json"], True),
    "cwd": Row("CWD", ["cwd.json"], True),
    "dist": Row("DIST", ["dist.json"], True),
    "kas_only": Row("IAD (KAS only)", ["kas_only.json"], False),
}
BASELINE = "student_only"  # every other row's paired difference is to this one
CONTROL = "self_kd"  # with it in the table, the SAM-taught rows' paired difference to it too: what SAM adds
TABLE_KEYS = ("kis_fraction",)  # grid keys the table itself applies (KIS's share of --iterations), not the bundle


class Variant(NamedTuple):
    """One point of a row's ``--grid``: its folder name (``iad_alpha0.02_gamma1``; the plain row without a grid)
    and the settings it trains with."""

    name: str
    settings: dict[str, object]


TEACHER_NAMES = {"litemedsam": "LiteMedSAM", "vit_b": "SAM ViT-B", "vit_l": "SAM ViT-L", "vit_h": "SAM ViT-H"}
DEFAULT_ROWS = ["student_only", "kd", "kd_kas", "kis_only", "iad"]

# The sizes an option left unset takes: the profile's, else DEFAULTS (None: the bundle's own default, not passed).
DEFAULTS: dict[str, object] = {
    "epochs": 30,
    "kis_epochs": 20,
    "image_size": None,
    "teacher_image_size": 128,
    "teacher_epochs": None,
    "seeds": [0, 1, 2],
    "budgets": ["8", "32", "all"],
    "rows": DEFAULT_ROWS,
    "iterations": None,
}
# "budget": the HC18 table of bundles/iad_student/docs (measured: one label budget, 3 rows x 3 seeds and the teacher
# in about 2 h on 2 CPU cores with --parallel 2; every student run 465 optimiser steps, KD at T = 1, chosen a priori).
# "gpu": the released IAD code's schedule (github hjklearn/IAD, Synapse_Tool_KD/train.py: 30000 iterations at most
# for the students, 300 epochs for SAM-B/L teachers) at LiteMedSAM's native 256 px for teacher and students (the
# released code runs SAM ViT-L at 512: --teacher_arch vit_l --teacher_ckpt PATH --teacher_image_size 512), every
# row and the three budgets, 3 seeds. Not timed (no GPU was lent to this work).
PROFILES: dict[str, dict[str, object]] = {
    "budget": {
        "iterations": 465,
        "image_size": 128,
        "teacher_image_size": 128,
        "teacher_epochs": 100,
        "seeds": [0, 1, 2],
        "budgets": ["8"],
        "rows": ["student_only", "kd", "iad"],
        "row_overrides": [
            "teacher:learning_rate=0.002",
            "teacher:warmup_iters=10",
            "teacher:batch_size=4",
            "teacher:val_interval=10",
            "students:batch_size=8",
            "student_only:val_interval=40",
            "kd:temperature=1",
            "self_kd:temperature=1",  # the control distils as KD does
        ],
    },
    "gpu": {
        "iterations": 30000,  # the released code's max_iterations; every row the same number of steps
        "image_size": 256,
        "teacher_image_size": 256,
        "teacher_epochs": 300,
        "seeds": [0, 1, 2],
        "budgets": ["8", "32", "all"],
        "rows": DEFAULT_ROWS,
    },
}


@dataclass(frozen=True)
class Block:
    """The runs of one label budget (and cross-validation fold): ``budget`` labelled training subjects (or ``all``),
    in ``root``; with a given teacher (``--teacher_root``) the teacher is evaluated, not trained."""

    budget: str
    root: Path
    given_teacher: bool = False
    fold: int | None = None

    @property
    def prefix(self) -> str:
        """Prefix of its job keys (and key of its grid choice)."""
        fold = "" if self.fold is None else f"fold{self.fold}/"
        return "" if self.given_teacher else f"{fold}budget_{self.budget}/"

    @property
    def title(self) -> str:
        return ("" if self.fold is None else f"fold {self.fold}, ") + f"label budget {self.budget}"

    @property
    def teacher_root(self) -> Path:
        return self.root / "teacher"

    def run_root(self, row: str, seed: int) -> Path:
        return self.root / row / f"seed{seed}"


def blocks(args: argparse.Namespace) -> list[Block]:
    """One block per budget in ``OUT/budget_<N>`` (per fold and budget in ``OUT/fold<k>/budget_<N>``); one block in
    ``OUT`` itself with a given teacher."""
    out = Path(args.out)
    if args.teacher_root:
        return [Block("all", out, True)]
    if args.folds:
        return [Block(b, out / f"fold{k}" / f"budget_{b}", fold=k) for k in args.folds for b in args.budgets]
    return [Block(b, out / f"budget_{b}") for b in args.budgets]


def _seeds(row: str, args: argparse.Namespace) -> list[int]:
    return args.seeds[:1] if row in args.single_seed_rows else args.seeds


def self_teacher(block: Block, seed: int, args: argparse.Namespace) -> tuple[str, Path]:
    """The job key and ``model.pt`` of the student alone that teaches a self-KD run of ``seed`` (the same seed, else
    the first seed the student alone has)."""
    seeds = _seeds(BASELINE, args)
    teacher_seed = seed if seed in seeds else seeds[0]
    key = f"{block.prefix}{BASELINE}/seed{teacher_seed}"
    return key, block.run_root(BASELINE, teacher_seed) / "models" / "model.pt"


def _budget_overrides(budget: str, args: argparse.Namespace) -> dict[str, object]:
    """The label budget of a run: ``label_budget`` (``$None``, every label, for ``all``: a bare ``null`` on the
    command line would reach the config as the string 'null') and ``budget_seed``, the draw of the subjects."""
    return {"label_budget": "$None" if budget == "all" else int(budget), "budget_seed": args.budget_seed}


def _sized(overrides: dict[str, object]) -> dict[str, object]:
    """The overrides without those left at the bundle's default (None)."""
    return {k: v for k, v in overrides.items() if v is not None}


def teacher_jobs(block: Block, args: argparse.Namespace) -> list[jobs.Job]:
    """A trained teacher's training (key ``budget_<N>/teacher``) and evaluation; a given teacher's evaluation."""
    if block.given_teacher:
        if args.no_teacher_row:
            return []
        out = block.teacher_root
        cmd = bundle_cmd([TEACHER_CONFIGS / "train.json", TEACHER_CONFIGS / "evaluate.json"])
        cmd += ["--bundle_root", args.teacher_root, "--output_dir", str(out), "--dataset_dir", args.dataset_dir]
        cmd += ["--teacher_arch", args.teacher_arch, "--image_size", str(args.teacher_image_size), "--num_workers", "0"]
        return [
            jobs.Job("teacher", "evaluate the teacher", cmd, [out / "metrics_summary.json"], log=out / "evaluate.log")
        ]
    overrides = {"bundle_root": str(block.teacher_root), "dataset_dir": args.dataset_dir, "seed": args.seeds[0]}
    overrides.update({"teacher_arch": args.teacher_arch, "teacher_ckpt": args.teacher_ckpt, "num_workers": 0})
    overrides.update({"image_size": args.teacher_image_size, "epochs": args.teacher_epochs})
    overrides.update({**_budget_overrides(block.budget, args), "fold": block.fold})
    overrides = {**_sized(overrides), **args.row_overrides.get("teacher", {})}
    train = [TEACHER_CONFIGS / "train.json"]
    evaluate = None if args.no_teacher_row else train + [TEACHER_CONFIGS / "evaluate.json"]
    return train_and_evaluate(f"{block.prefix}teacher", block.teacher_root, train, overrides, evaluate)


def run_epochs(
    block: Block, row: str, args: argparse.Namespace, kis_fraction: float | None = None
) -> tuple[int, int] | None:
    """(epochs, kis_epochs) that give a run ``--iterations`` optimiser steps whatever its epoch length (a row that
    sees the unlabelled images has longer epochs than the student alone), KIS taking ``--kis_fraction`` of them; None
    without ``--iterations`` (``--epochs``/``--kis_epochs`` then apply)."""
    if not args.iterations:
        return None
    from common.data.datalist import training_items

    budget = None if block.budget == "all" else int(block.budget)
    unlabelled = "rest" if ROWS[row].distils and block.budget != "all" else "none"
    items = training_items(args.dataset_dir, label_budget=budget, budget_seed=args.budget_seed,
                           unlabelled=unlabelled, fold=block.fold, check=False)  # fmt: skip
    batch = int(args.row_overrides.get("students", {}).get("batch_size", _bundle_default("batch_size")))
    per_epoch = math.ceil(len(items) / batch)
    epochs = max(2, math.ceil(args.iterations / per_epoch))
    fraction = args.kis_fraction if kis_fraction is None else kis_fraction
    return epochs, max(1, min(epochs - 1, round(fraction * epochs)))


def cache_job(block: Block, args: argparse.Namespace) -> jobs.Job:
    """Fill the teacher cache of a block's students once, before they start (teacher_lora's ``cache.json``: the
    trained teacher's logits of every training image at the students' size), so parallel student runs read it
    instead of each running the teacher."""
    root = block.teacher_root
    cmd = bundle_cmd([TEACHER_CONFIGS / "inference.json", TEACHER_CONFIGS / "cache.json"])
    cmd += ["--bundle_root", str(root), "--dataset_dir", args.dataset_dir, "--num_workers", "0"]
    cmd += ["--ckpt_path", str(root / "models" / "model_merged.pt"), "--teacher_arch", args.teacher_arch]
    cmd += ["--image_size", str(args.teacher_image_size), "--teacher_cache_dir", str(Path(args.out) / "teacher_cache")]
    cmd += ["--cache_size", str(args.image_size or _bundle_default("image_size"))]
    cmd += [] if block.fold is None else ["--fold", str(block.fold)]
    marker = root / "cache_filled.json"
    return jobs.Job(f"{block.prefix}teacher_cache", "fill the teacher cache", cmd, [], marker=marker,
                    needs=(f"{block.prefix}teacher",), log=root / "cache.log")  # fmt: skip


def student_overrides(
    block: Block, row: str, seed: int, args: argparse.Namespace, variant: Variant | None = None
) -> dict[str, object]:
    """The bundle overrides of one student run: sizes, the teacher of its block, its label budget, then the
    ``students`` and the row's own ``--row_overrides``, then the settings of its ``--grid`` variant."""
    variant = variant or Variant(row, {})
    adapter = args.teacher_adapter if block.given_teacher else str(block.teacher_root / "models" / "adapter.pt")
    overrides = {"bundle_root": str(block.run_root(variant.name, seed)), "dataset_dir": args.dataset_dir, "seed": seed}
    overrides.update({"epochs": args.epochs, "kis_epochs": args.kis_epochs, "image_size": args.image_size})
    overrides.update({"num_workers": 0, "teacher_arch": args.teacher_arch, "teacher_ckpt": args.teacher_ckpt})
    overrides.update({"teacher_adapter": adapter, "teacher_image_size": args.teacher_image_size})
    overrides["teacher_cache_dir"] = str(Path(args.out) / "teacher_cache")  # entries are keyed by the teacher
    overrides.update({**_budget_overrides(block.budget, args), "fold": block.fold})
    # the other training subjects' images, labelled by the teacher, for a row that learns from it under a budget
    overrides["unlabelled"] = "rest" if ROWS[row].distils and block.budget != "all" else "none"
    if ROWS[row].self_taught:
        overrides["self_teacher_ckpt"] = str(self_teacher(block, seed, args)[1])
    sized = run_epochs(block, row, args, variant.settings.get("kis_fraction"))
    if sized is not None:
        overrides["epochs"], overrides["kis_epochs"] = sized
    bundle = {k: v for k, v in variant.settings.items() if k not in TABLE_KEYS}
    return {**_sized(overrides), **args.row_overrides.get("students", {}), **args.row_overrides.get(row, {}), **bundle}


def row_variants(row: str, args: argparse.Namespace) -> list[Variant]:
    """Every combination of the row's ``--grid`` values (named by key and value, in the grid's order), or the row
    itself when it has no grid."""
    grid = args.grid.get(row)
    if not grid:
        return [Variant(row, {})]
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        changed = [(k, v) for k, v in zip(keys, values) if v != _row_value(row, k, args)]
        out.append(Variant(row + "".join(f"_{k}{_short(v)}" for k, v in changed), dict(zip(keys, values))))
    return out


def _row_value(row: str, key: str, args: argparse.Namespace) -> object:
    """What a row's run trains with for ``key`` without a grid: its ``--row_overrides``, else the ``students``
    ones, else its variant configs', else ``train.json``'s (``kis_fraction``: the table's option). A grid value equal
    to it keeps the row's plain name, so a finished run of the row is reused, not trained again."""
    if key == "kis_fraction":
        return args.kis_fraction
    for source in (args.row_overrides.get(row, {}), args.row_overrides.get("students", {})):
        if key in source:
            return source[key]
    for config in reversed([CONFIGS / "train.json", *(CONFIGS / v for v in ROWS[row].variants)]):
        values = json.loads(config.read_text())
        if key in values:
            return values[key]
    return None


def _short(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


Chosen = dict[str, dict[str, Variant]]  # Block.prefix -> gridded row -> the variant chosen on validation


def choose_variants(args: argparse.Namespace) -> tuple[Chosen | None, dict[str, dict[str, dict[str, float | None]]]]:
    """Per block (budget, and fold) and gridded row, the variant with the highest mean validation Dice (``mean_dice``
    of its ``eval_validation/``, averaged over the row's seeds; a tie goes to the variant listed first). Returns (the
    choice, or None while a variant's validation is unfinished; the scores: block prefix -> row -> variant name ->
    score)."""
    chosen: Chosen = {}
    scores: dict[str, dict[str, dict[str, float | None]]] = {}
    complete = True
    for block in blocks(args):
        for row in (r for r in args.rows if args.grid.get(r)):
            per_seed, by_name = {}, {v.name: v for v in row_variants(row, args)}
            for name in by_name:
                paths = [block.run_root(name, s) / VALIDATION_EVAL / SUMMARY.name for s in _seeds(row, args)]
                per_seed[name] = [json.loads(p.read_text())["mean_dice"] if p.is_file() else None for p in paths]
            best, scores.setdefault(block.prefix, {})[row] = best_on_validation(per_seed)
            if best is None:
                complete = False
            else:
                chosen.setdefault(block.prefix, {})[row] = by_name[best]
    return (chosen if complete else None), scores


def plan(args: argparse.Namespace, chosen: Chosen | None = None) -> list[jobs.Job]:
    """Per block: the teacher's jobs, then training and evaluation of every (row, seed); a row that learns from the
    teacher ``needs`` the training of its block's teacher. A row with a ``--grid`` trains every variant and evaluates
    it on validation only; given ``chosen`` (:func:`choose_variants`), its chosen variant is also evaluated on test
    (the second stage)."""
    todo: list[jobs.Job] = []
    for block in blocks(args):
        todo += teacher_jobs(block, args)
        if not block.given_teacher and any(ROWS[r].distils for r in args.rows):
            todo.append(cache_job(block, args))
        for row in args.rows:
            configs = [CONFIGS / "train.json", *(CONFIGS / v for v in ROWS[row].variants)]
            evaluate = configs + [CONFIGS / "evaluate.json"]
            needs = (f"{block.prefix}teacher_cache",) if ROWS[row].distils and not block.given_teacher else ()
            gridded = bool(args.grid.get(row))
            pick = (chosen or {}).get(block.prefix, {}).get(row)
            for variant in row_variants(row, args):
                for seed in _seeds(row, args):
                    if ROWS[row].self_taught:  # its teacher is a student alone; it fills its own cache entries
                        needs = (self_teacher(block, seed, args)[0],)
                    overrides = student_overrides(block, row, seed, args, variant)
                    key, root = f"{block.prefix}{variant.name}/seed{seed}", block.run_root(variant.name, seed)
                    on_test = not gridded or variant == pick
                    todo += train_and_evaluate(
                        key, root, configs, overrides, evaluate if on_test else None, needs=needs
                    )
                    if gridded:
                        todo.append(validation_job(key, root, evaluate, overrides))
    return todo


def _teacher_files(block: Block, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The teacher's summary, per-case metrics and training marker."""
    if block.given_teacher:
        out = block.teacher_root
        return out / "metrics_summary.json", out / "metrics_per_case.csv", Path(args.teacher_time)
    root = block.teacher_root
    return root / SUMMARY, root / PER_CASE, root / "train_time.json"


def collect(args: argparse.Namespace, chosen: Chosen | None = None) -> dict[str, dict[str, list[dict]]]:
    """budget -> row (and ``teacher``) -> its finished runs: seed, fold, test summary, per-case metrics file and
    training seconds (NaN when unknown), the folds of a budget pooled; a gridded row's runs are those of its variant
    chosen on validation. A run without its evaluation is left out, with a line saying so."""
    results: dict[str, dict[str, list[dict]]] = {}
    for block in blocks(args):
        found = results.setdefault(block.budget, {})
        for row in args.rows:
            name = row
            if args.grid.get(row):
                pick = (chosen or {}).get(block.prefix, {}).get(row)
                if pick is None:
                    print(f"[miss] {block.prefix}{row}: no variant chosen on validation yet, left out", flush=True)
                    continue
                name = pick.name
            for seed in _seeds(row, args):
                root = block.run_root(name, seed)
                if not (root / SUMMARY).is_file() or not (root / PER_CASE).is_file():
                    print(f"[miss] {block.prefix}{name} seed {seed}: not finished, left out", flush=True)
                    continue
                summary = json.loads((root / SUMMARY).read_text())
                entry = {"seed": seed, "fold": block.fold, "summary": summary, "per_case": str(root / PER_CASE)}
                found.setdefault(row, []).append({**entry, "train_seconds": train_seconds(root)})
        summary, per_case, marker = _teacher_files(block, args)
        if not args.no_teacher_row and summary.is_file() and per_case.is_file():
            seconds = jobs.wall_seconds(marker)
            entry = {"seed": args.seeds[0], "fold": block.fold, "summary": json.loads(summary.read_text())}
            entry.update({"per_case": str(per_case), "train_seconds": math.nan if seconds is None else seconds})
            found.setdefault("teacher", []).append(entry)
    return {budget: found for budget, found in results.items() if found}


def block_statistics(
    runs: dict[str, list[dict]], classes: list[str], args: argparse.Namespace, regions: Sequence[str] = ()
) -> dict[str, dict]:
    """Row -> ``dice`` and ``hd95`` (over ``classes``) and ``class_dice`` (per class and per region), each the
    paired bootstrap of the row's subject scores (seeds averaged inside a subject; a seed's folds test disjoint
    subjects, so their scores are pooled) against the student alone."""

    def scores(metric: str, names: list[str]) -> dict:
        out: dict[str, dict[int, dict[str, float]]] = {}
        for method, method_runs in runs.items():
            for r in method_runs:
                out.setdefault(method, {}).setdefault(r["seed"], {}).update(
                    subject_scores(r["per_case"], metric, names)
                )
        return out

    dice = bootstrap_or_none(scores("dice", classes), BASELINE, args.n_boot, args.bootstrap_seed)
    control = (
        bootstrap_or_none(scores("dice", classes), CONTROL, args.n_boot, args.bootstrap_seed) if CONTROL in runs else {}
    )
    hd95 = bootstrap_or_none(scores("hd95", classes), BASELINE, args.n_boot, args.bootstrap_seed, False)
    per_class = {
        c: bootstrap_or_none(scores("dice", [c]), BASELINE, args.n_boot, args.bootstrap_seed)
        for c in [*classes, *regions]
    }
    return {
        m: {
            "dice": dice[m],
            "hd95": hd95[m],
            "class_dice": {c: v[m] for c, v in per_class.items()},
            "dice_vs_control": control.get(m),
        }
        for m in runs
    }


def _bundle_default(key: str) -> object:
    """A value of the student bundle's ``train.json``."""
    return json.loads((CONFIGS / "train.json").read_text())[key]


def size_and_latency(args: argparse.Namespace, num_classes: int, in_channels: int) -> dict:
    """Parameters and median CPU latency (batch 1, 20 runs after 3 warm-ups) of the student and the teacher (LoRA
    merged) on one ``image_size`` slice of the dataset's channels (the teacher resizes it to its input size)."""
    import torch

    from common.networks.sam_teacher import build_teacher
    from common.networks.students import EfficientUNetStudent
    from common.profiling import count_parameters, latency

    torch.set_num_threads(args.threads)
    size = int(args.image_size or _bundle_default("image_size"))
    student = EfficientUNetStudent(num_classes, in_channels)
    teacher = build_teacher(
        args.teacher_arch,
        image_size=args.teacher_image_size,
        num_classes=num_classes,
        lora_rank=0,
        in_channels=in_channels,
    )
    x = torch.rand(1, in_channels, size, size)
    return {
        name: {"params": count_parameters(net), "latency_ms": 1000 * latency(net.eval(), x), "input_size": size}
        for name, net in (("student", student), ("teacher", teacher))
    }


def _label(row: str, args: argparse.Namespace) -> str:
    if row == "teacher":
        return f"Teacher ({TEACHER_NAMES.get(args.teacher_arch, args.teacher_arch)} + LoRA)"
    return ROWS[row].label


def _heading(block: Block, args: argparse.Namespace) -> str:
    if block.given_teacher:
        return f"## Every labelled training subject (teacher trained in {args.teacher_root})"
    folds = (
        ""
        if block.fold is None
        else f" — {len(args.folds)}-fold cross-validation by subject, every subject tested once, a teacher per fold"
    )
    if block.budget == "all":
        return "## Label budget: every labelled training subject" + folds
    return (
        f"## Label budget: {block.budget} labelled training subjects (the rows that learn from the teacher also see "
        "the other training subjects' images, labelled by the teacher)" + folds
    )


def write_table(
    results: dict[str, dict[str, list[dict]]],
    sizes: dict,
    classes: list[str],
    args: argparse.Namespace,
    regions: Sequence[str] = (),
    hd95_unit: str = "mm",
    choice: tuple[Chosen | None, dict] | None = None,
) -> str:
    """Write ``table.md`` / ``table.csv`` / ``table.json`` into ``OUT`` (one block per budget; mean Dice and HD95
    over ``classes``, Dice per class and per region; with ``choice`` (:func:`choose_variants`), each gridded row's
    validation scores and pick) and return the Markdown. ``hd95_unit``: ``px`` for a dataset whose spacing is unknown
    (HC18 as published), where distances are counted in pixels."""
    scored = [*classes, *regions]
    head = ["method", "seeds", "subjects", "Dice % [95% CI]"] + [f"Dice {c} %" for c in scored]
    head += [
        "Δ Dice vs student only [95% CI]",
        "verdict",
        f"HD95 {hd95_unit} [95% CI]",
        "params (M)",
        "CPU latency (ms)",
    ]
    head += ["train time (min)"]
    md: list[str] = []
    records: list[dict] = []
    statistics: dict[str, dict] = {}
    by_budget = {b.budget: b for b in blocks(args)}
    for budget, runs in results.items():
        ordered = {m: runs[m] for m in [*args.rows, "teacher"] if m in runs}
        stats = block_statistics(ordered, classes, args, regions)
        statistics[budget] = stats
        with_control = CONTROL in ordered
        after = head.index("verdict") + 1
        block_head = head[:after] + ["Δ Dice vs self-KD [95% CI]"] + head[after:] if with_control else head
        lines = []
        for method, method_runs in ordered.items():
            s, size = stats[method], sizes["teacher" if method == "teacher" else "student"]
            dice = s["dice"] or {}
            cells = [
                _label(method, args),
                str(len({r["seed"] for r in method_runs})),
                str(dice.get("subjects", "–")),
                ci_cell(s["dice"], 100),
            ]
            cells += [ci_cell(s["class_dice"][c], 100) for c in scored]
            baseline = method == BASELINE or dice.get("difference") is None
            cells += ["–" if baseline else ci_cell(s["dice"], 100, "difference", signed=True)]
            cells += ["–" if baseline else dice["verdict"]]
            if with_control:
                versus = s["dice_vs_control"] or {}
                taught = method not in (BASELINE, CONTROL) and versus.get("difference") is not None
                cells += [ci_cell(versus, 100, "difference", signed=True) + f" {versus['verdict']}" if taught else "–"]
            cells += [ci_cell(s["hd95"])]
            cells += [f"{size['params'] / 1e6:.2f}", f"{size['latency_ms']:.1f}"]
            cells += [mean_std([r["train_seconds"] / 60 for r in method_runs], 1)]
            lines.append(cells)
            records.append(_record(budget, method, method_runs, s, size, scored))
        md += [_heading(by_budget[budget], args), "", "| " + " | ".join(block_head) + " |"]
        md += ["|" + "---|" * len(block_head)]
        md += ["| " + " | ".join(cells) + " |" for cells in lines] + [""]
    if choice is not None:
        md += _choice_lines(args, choice)
    md += [line for note in _notes(results, sizes, classes, args, hd95_unit) for line in (note, "")][:-1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(md) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    payload = {
        "blocks": {b: {"statistics": statistics[b], "runs": runs} for b, runs in results.items()},
        "results": _pipeline_results(results),
        "sizes": sizes,
        "classes": classes,
        "regions": list(regions),
        "bootstrap": {"resamples": args.n_boot, "seed": args.bootstrap_seed, "ci": 0.95, "baseline": BASELINE},
        "validation_scores": choice[1] if choice else None,
        "args": vars(args),
    }
    (out / "table.json").write_text(json.dumps(payload, indent=1))
    return "\n".join(md)


def _choice_lines(args: argparse.Namespace, choice: tuple[Chosen | None, dict]) -> list[str]:
    """Per block (budget, and fold), every gridded variant's mean validation Dice (seeds averaged), the pick marked."""
    chosen, scores = choice
    titles = {b.prefix: b.title for b in blocks(args)}
    md = []
    for key, rows in scores.items():
        md += [f"## Chosen on validation ({titles[key]}): the settings of the gridded rows, not on test", ""]
        md += ["| row | variant | settings | seeds | mean validation Dice % |", "|---|---|---|---|---|"]
        for row, variants in rows.items():
            pick = (chosen or {}).get(key, {}).get(row)
            settings = {v.name: v.settings for v in row_variants(row, args)}
            for name, score in variants.items():
                cell = (
                    "–"
                    if score is None
                    else f"{100 * score:.2f}" + (" **chosen**" if pick and pick.name == name else "")
                )
                what = ", ".join(f"{k} {_short(v)}" for k, v in settings[name].items())
                md.append(f"| {ROWS[row].label} | {name} | {what} | {len(_seeds(row, args))} | {cell} |")
        md.append("")
    return md


def _pipeline_results(results: dict[str, dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """The runs of the block with every label (else the last block), as ``scripts/pipeline_report.py`` reads them."""
    return results.get("all") or list(results.values())[-1]


def _record(budget: str, method: str, runs: list[dict], stats: dict, size: dict, classes: list[str]) -> dict:
    """One CSV line: the numbers behind a table row (fractions for Dice, mm for HD95, NaN when missing)."""

    def get(entry: dict | None, key: str, i: int | None = None) -> float:
        value = None if entry is None else entry.get(key)
        return math.nan if value is None else float(value if i is None else value[i])

    dice, hd95 = stats["dice"], stats["hd95"]
    record: dict[str, object] = {"budget": budget, "method": method, "seeds": len({r["seed"] for r in runs})}
    record["subjects"] = dice["subjects"] if dice else 0
    record.update({"dice": get(dice, "mean"), "dice_lo": get(dice, "ci", 0), "dice_hi": get(dice, "ci", 1)})
    record.update({f"dice_{c}": get(stats["class_dice"][c], "mean") for c in classes})
    record.update({"dice_diff": get(dice, "difference"), "dice_diff_lo": get(dice, "difference_ci", 0)})
    record.update({"dice_diff_hi": get(dice, "difference_ci", 1), "verdict": (dice or {}).get("verdict") or ""})
    control = stats.get("dice_vs_control")
    record.update(
        {"dice_diff_self_kd": get(control, "difference"), "dice_diff_self_kd_lo": get(control, "difference_ci", 0)}
    )
    record.update({"dice_diff_self_kd_hi": get(control, "difference_ci", 1)})
    record.update({"hd95": get(hd95, "mean"), "hd95_lo": get(hd95, "ci", 0), "hd95_hi": get(hd95, "ci", 1)})
    record.update({"hd95_diff": get(hd95, "difference"), "params": size["params"], "latency_ms": size["latency_ms"]})
    minutes = [r["train_seconds"] / 60 for r in runs if not math.isnan(r["train_seconds"])]
    record["train_minutes"] = sum(minutes) / len(minutes) if minutes else math.nan
    return record


def _notes(
    results: dict, sizes: dict, classes: list[str], args: argparse.Namespace, hd95_unit: str = "mm"
) -> list[str]:
    """The paragraphs under the table: how subjects are scored and compared, the empty-mask convention, sizes."""
    first = next(iter(next(iter(results.values())).values()))[0]["summary"]
    convention = first.get("empty_mask_convention")
    if convention is None:
        from common.evaluation import EMPTY_MASK_CONVENTION as convention
    student, teacher = sizes["student"], sizes["teacher"]
    return [
        f"Test subjects' scores: each test image's Dice (or HD95) averaged over the classes {', '.join(classes)} "
        "where defined, then over the subject's images, then over the row's seeds (seeds averaged inside a subject). "
        "Mean over the subjects that every row of the block scored; 95% CI: percentile bootstrap of "
        f"{args.n_boot} resamples of those subjects with replacement (seed {args.bootstrap_seed}), the same resample "
        "for every row (paired). Δ: per subject, the row minus the student only, then the mean, with its paired CI; "
        "better / worse when that CI excludes 0, else no difference. Per-class Dice: the same over the subjects where "
        f"the class is defined. Dice in %, HD95 in {hd95_unit} (lower is better)."
        + (
            " Δ vs self-KD: the same paired difference to the student taught by the student alone (no SAM) on the "
            "same labelled and unlabelled images: what the SAM teacher adds beyond self-training."
            if any(CONTROL in runs for runs in results.values())
            else ""
        ),
        f"Empty masks: {convention}.",
        f"Student: EfficientNet-B1 U-Net, {student['params'] / 1e6:.2f} M parameters; teacher: "
        f"{TEACHER_NAMES.get(args.teacher_arch, args.teacher_arch)} with LoRA merged, {teacher['params'] / 1e6:.2f} M "
        f"parameters (input {args.teacher_image_size} px). Latency: one {student['input_size']}×"
        f"{student['input_size']} image on CPU, batch 1, {args.threads} thread(s), median of 20 runs after 3 "
        "warm-ups. Training time: wall time of each run (validation included; the students' teacher-cache fill too), "
        "mean ± std over seeds.",
    ]


def _budget(value: str) -> str:
    if value != "all" and not (value.isdigit() and int(value) > 0):
        raise argparse.ArgumentTypeError(f"a label budget is a number of labelled subjects or 'all', got {value!r}")
    return value


def parse_row_overrides(tokens: list[str]) -> dict[str, dict[str, object]]:
    """``["kd:temperature=1", "teacher:learning_rate=0.002", "students:batch_size=8"]`` -> {row: {key: value}}
    (values read as JSON when they parse). ``teacher``: the trained teachers; ``students``: every student run."""
    out: dict[str, dict[str, object]] = {}
    for token in tokens:
        row, colon, setting = token.partition(":")
        if not colon or "=" not in setting or row not in (*ROWS, "teacher", "students"):
            raise SystemExit(
                f"error: --row_overrides takes ROW:KEY=VALUE with ROW one of {[*ROWS, 'teacher', 'students']}, "
                f"got {token!r}"
            )
        out.setdefault(row, {}).update(parse_overrides([f"--{setting}"]))
    return out


def parse_grid(tokens: list[str]) -> dict[str, dict[str, list[object]]]:
    """``["iad:alpha=0.02,0.2", "iad:gamma=0.01,0.1"]`` -> {row: {key: [values]}} (each value read as JSON when it
    parses): the settings a row's variants try on validation. ``kis_fraction`` is the table's (KIS's share of
    ``--iterations``); any other key is a bundle override."""
    out: dict[str, dict[str, list[object]]] = {}
    for token in tokens:
        row, colon, setting = token.partition(":")
        key, equals, values = setting.partition("=")
        if not colon or not equals or not key or not values or row not in ROWS:
            raise SystemExit(f"error: --grid takes ROW:KEY=V1,V2 with ROW one of {list(ROWS)}, got {token!r}")
        out.setdefault(row, {})[key] = [parse_overrides([f"--{key}={v}"])[key] for v in values.split(",")]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the sizes left unset filled from ``--profile`` and then :data:`DEFAULTS`."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/iad_table")
    p.add_argument("--dataset_dir", default="data/lits_liver", help="a dataset folder (datalist.json, dataset.json)")
    p.add_argument("--profile", choices=list(PROFILES), default=None, help="default sizes: budget (measured, "
                   "the HC18 table) or gpu (the released code's schedule at 256 px, not timed)")  # fmt: skip
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=None, help=f"default: {DEFAULT_ROWS}")
    p.add_argument("--row_overrides", nargs="+", default=[], metavar="ROW:KEY=VALUE",
                   help="bundle overrides of one row's runs (ROW 'teacher': the trained teachers; 'students': every "
                   "student run), e.g. kd:temperature=1 iad:alpha=0.1")  # fmt: skip
    p.add_argument("--grid", nargs="+", default=[], metavar="ROW:KEY=V1,V2",
                   help="settings of a row chosen on validation, per budget (mean validation Dice over the seeds; "
                   "every combination trains), e.g. iad:alpha=0.02,0.2 iad:kis_fraction=0.33,0.67")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2")
    p.add_argument("--single_seed_rows", nargs="*", default=[], help="rows run with the first seed only")
    p.add_argument("--budgets", nargs="+", type=_budget, default=None, help="labelled training subjects per block, "
                   "or 'all' (default: 8 32 all)")  # fmt: skip
    p.add_argument("--budget_seed", type=int, default=0, help="seed of the draw of the labelled subjects")
    p.add_argument("--folds", nargs="+", type=int, default=None, help="cross-validation folds to run (default: "
                   "every fold_k list of the datalist; none: its training/validation/test split)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--kis_epochs", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None, help="optimiser steps of every student run (sets its "
                   "epochs from its epoch length; overrides --epochs/--kis_epochs)")  # fmt: skip
    p.add_argument("--kis_fraction", type=float, default=2 / 3, help="with --iterations: KIS's share of the epochs")
    p.add_argument("--image_size", type=int, default=None, help="the student's input size (default: the bundle's)")
    p.add_argument("--teacher_arch", default="litemedsam")
    p.add_argument("--teacher_ckpt", default="data/weights/lite_medsam.pth", help="the teacher's base weights")
    p.add_argument("--teacher_image_size", type=int, default=None, help="the teacher's input size")
    p.add_argument("--teacher_epochs", type=int, default=None, help="default: the teacher bundle's")
    p.add_argument("--teacher_root", default=None, help="bundle_root of a teacher_lora trained on every label: "
                   "evaluate it instead of training one per budget (no budget axis)")  # fmt: skip
    p.add_argument(
        "--teacher_adapter", default=None, help="with --teacher_root (default: TEACHER_ROOT/models/adapter.pt)"
    )
    p.add_argument("--teacher_time", default=None, help="with --teacher_root: its training marker, read for its "
                   "training time (default: TEACHER_ROOT/train_time.json)")  # fmt: skip
    p.add_argument("--no_teacher_row", action="store_true", help="do not evaluate the teacher")
    p.add_argument("--n_boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--bootstrap_seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run and of the timing "
                   "(default: the cores / --parallel)")  # fmt: skip
    p.add_argument("--plan", action="store_true", help="print the jobs (done or not) and run nothing")
    p.add_argument("--report_only", action="store_true", help="write the table from finished runs; train nothing")
    args = p.parse_args(argv)
    detected = detect_folds(args.dataset_dir)
    if args.folds is None:
        args.folds = detected
    elif any(f not in detected for f in args.folds):
        p.error(f"--folds {args.folds}: '{args.dataset_dir}' has the folds {detected} (fold_k lists of datalist.json)")
    if args.teacher_root and args.folds:
        p.error("--teacher_root gives one teacher trained on every label; cross-validation trains one per fold")
    if args.teacher_root:
        if args.budgets not in (None, ["all"]):
            p.error("--teacher_root gives a teacher trained on every label: drop it to train one per --budgets")
        args.budgets = ["all"]
        args.teacher_adapter = args.teacher_adapter or str(Path(args.teacher_root) / "models" / "adapter.pt")
        args.teacher_time = args.teacher_time or str(Path(args.teacher_root) / "train_time.json")
    profile = PROFILES.get(args.profile, {})
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            value = profile.get(key, default)
            setattr(args, key, list(value) if isinstance(value, list) else value)
    # the profile's row overrides first, so that the command line's win
    args.row_overrides = parse_row_overrides([*profile.get("row_overrides", []), *args.row_overrides])
    args.grid = parse_grid(args.grid)
    if unused := [r for r in args.grid if r not in args.rows]:
        p.error(f"--grid names rows that are not in --rows: {unused}")
    if any(ROWS[r].self_taught for r in args.rows) and BASELINE in args.grid:
        p.error(f"--grid {BASELINE}: self_kd learns from the {BASELINE} runs, which must not be gridded")
    if any(ROWS[r].self_taught for r in args.rows) and BASELINE not in args.rows:
        p.error(f"--rows {' '.join(args.rows)}: self_kd learns from the {BASELINE} runs; add {BASELINE}")
    args.threads = args.threads or jobs.threads_per_job(args.parallel, {})
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    todo = plan(args)
    if args.plan:
        jobs.print_plan(todo)
        if args.grid:
            chosen = choose_variants(args)[0]
            if chosen is None:
                print("then, once every variant is validated: the chosen variant of each gridded row on test")
            else:
                print("\nstage 2, at the variants chosen on validation:")
                jobs.print_plan([j for j in plan(args, chosen) if j.key not in {t.key for t in todo}])
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if not args.report_only:
        jobs.run(todo, env, args.parallel)
    from common.data.dataset_info import load_dataset_info

    choice = choose_variants(args) if args.grid else None
    if choice is not None and choice[0] is not None and not args.report_only:
        jobs.run(plan(args, choice[0]), env, args.parallel)  # the chosen variants on test
    info = load_dataset_info(args.dataset_dir)
    results = collect(args, choice[0] if choice else None)
    if not results:
        sys.exit("error: no finished run to report")
    sizes = size_and_latency(args, info.num_classes, info.in_channels)
    unit = "mm" if info.spacing else "px"  # no spacing in dataset.json: distances in pixels
    print(write_table(results, sizes, info.class_names, args, list(info.regions), unit, choice))
    print(f"\nwritten: {Path(args.out) / 'table.md'} (and .csv, .json)")


if __name__ == "__main__":
    main()
