#!/usr/bin/env python
"""The recokd_student comparison on any 3D dataset folder: the teacher, the student alone, the student + ReCo-KD and
its ablations (MS-SARD only, MS-CA only), per student width and seed, cross-validated by patient when the datalist
has folds (METHODS.md §5, §7, §8); on request (``--rows ... kd``) a logit-KD baseline (``kd.json``), which takes no
λ_max and so does not wait for its choice.

Every training and evaluation is a ``monai.bundle`` run of ``bundles/recokd_student`` planned as a job of
``scripts/jobs.py`` (a finished one is skipped, so an interrupted table resumes; ``--parallel 2`` runs two at once;
``--plan`` prints the jobs and runs nothing):

- folds: ``--folds`` (default: every ``fold_k`` list of ``datalist.json``; fold k tests on ``fold_k``, validates on
  ``fold_{k+1}`` and trains on the rest, so each patient is tested exactly once). Without fold lists the datalist's
  own ``training`` / ``validation`` / ``test`` lists are used (the LiTS slabs of the default ``--dataset_dir``).
- per fold, a full-width teacher (``teacher.json``, first seed) in ``OUT/[fold<k>/]teacher``;
- per fold, width divisor (``--width_divisors 4 8``), row and seed (``--seeds 0 1``; ``--single_seed_rows sard_only
  ca_only``: those rows the first seed only), a student in ``OUT/[fold<k>/]w<d>/<row>/seed<s>``; the rows that
  distil need their fold's teacher;
- each run is evaluated on its test split (``eval/``); the student alone and ReCo-KD also on the validation split
  (``eval_validation/``), where λ_max and the warm-up are chosen: several ``--lambda_max`` (or ``--warmup_fraction``)
  values train ReCo-KD once per variant (``recokd_lam0.1``; a value equal to the bundle's default keeps the plain
  name ``recokd``); once all are validated, per fold and width the variant with the highest validation Dice over the
  regions (else the classes; seeds averaged) is evaluated on test as the ReCo-KD row and the ablations are trained
  at it (``sard_only_lam0.1``) — the second stage of the same command. A single value is simply used.

The table (``OUT/table.md``, ``table.csv``, ``table_stats.csv``, ``table.json``; also printed) opens with an overview
(per-class and per-region Dice and HD95 averaged over the runs, parameters, CPU time per test volume: the bundle's
sliding window, median of ``--latency_runs`` after a warm-up, training time); then, per width, the test patients of
all folds as one set of subjects: mean Dice and HD95 with 95% CIs and the paired difference to the student alone
(``common.stats.paired_bootstrap``: seeds averaged inside a patient, patients resampled), per class and region; then
the validation Dice of every variant and the choice. Class and region names come from ``dataset.json``.

Sizes come from ``--profile`` (``budget``: 2 CPU cores, timed on BraTS 3D; ``gpu``: nnU-Net's published settings, not timed) unless given.
Options the script does not know are passed to every bundle run and to the networks it times (e.g. ``--patch_size
"[48,48,48]"``). With the default ``--dataset_dir`` the 3D LiTS split is written first if missing (needs ``python
scripts/prepare_data.py --out data``)::

    python scripts/recokd_table.py --out runs/recokd
    python scripts/recokd_table.py --dataset_dir data/brats_3d --out runs/recokd_brats --profile budget --parallel 2
    python scripts/recokd_table.py --dataset_dir data/brats_3d --out runs/recokd_brats --lambda_max 0.01 0.1 1 --plan
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.data.datalist import detect_folds  # noqa: E402
from common.stats import subject_scores  # noqa: E402
from scripts import jobs  # noqa: E402
from scripts.bundle_runs import (  # noqa: E402
    VALIDATION_EVAL,
    best_on_validation,
    bootstrap_or_none,
    ci_cell,
    parse_overrides,
    train_and_evaluate,
    train_seconds,
    validation_job,
)

CONFIGS = REPO / "bundles" / "recokd_student" / "configs"
DEFAULT_DATASET = "data/lits_liver_3d"
TEST_EVAL = Path("eval")  # in a run's bundle_root


class Row(NamedTuple):
    """A row: its label, the variant configs merged after ``train.json``, whether it distils from the teacher, and
    whether it trains with ReCo-KD's λ_max / warm-up (the variant chosen on validation)."""

    label: str
    variants: list[str]
    distils: bool
    reco: bool = False


ROWS = {
    "teacher": Row("Teacher (DynUNet, full width)", ["teacher.json"], False),
    "student_only": Row("Student alone", ["student_only.json"], False),
    "recokd": Row("Student + ReCo-KD", [], True, True),
    "sard_only": Row("Student + MS-SARD only", ["sard_only.json"], True, True),
    "ca_only": Row("Student + MS-CA only", ["ca_only.json"], True, True),
    "kd": Row("Student + KD (logits, T = 1)", ["kd.json"], True),
}
TABLE_ROWS = ["teacher", "student_only", "recokd", "sard_only", "ca_only"]  # the default rows; kd on request
BASELINE = "student_only"  # every other row's paired difference is to this one
REGION_MEAN = "regions mean"  # the score averaged over the dataset's regions (BraTS: WT, TC, ET)
ON_VALIDATION = ("student_only", "recokd")  # rows also evaluated on validation (where λ_max is chosen)

# The sizes an option left unset takes: the profile's, else DEFAULTS (teacher_epochs None: --epochs).
DEFAULTS: dict[str, object] = {
    "epochs": 20,
    "batches_per_epoch": 10,
    "teacher_epochs": None,
    "seeds": [0, 1],
    "width_divisors": [4],
    "rows": TABLE_ROWS,
    "lambda_max": None,  # None: the bundle's; several values: chosen per fold and width on validation
    "warmup_fraction": None,
}
# "bundle": overrides of every bundle run (the command line's unknown options win over them).
PROFILES: dict[str, dict[str, object]] = {
    # BraTS 3D (6 patients, 3 folds of 2) on 2 CPU cores with --parallel 2, sized from timed runs at one thread
    # (2 mm, two 32^3 patches per iteration: teacher 2.0 s, 1/4-width student 0.25 s, ReCo-KD 0.95 s per iteration,
    # most of it the teacher's forward; a validation of 2 volumes 18 s). Every network trains 600 iterations: at 250
    # the students were still learning fast (fold 0 validation, student alone: regions' mean Dice 25 -> 39 and
    # 10 -> 46 from 250 to 600 iterations, seeds 0 and 1), which no λ_max changed. Per fold the teacher, the student
    # alone, two λ_max variants of ReCo-KD chosen on validation and the two ablations at the chosen one, two seeds:
    # about 2 h of one core, so 3 folds take about 3 h. --width_divisors 4 8 adds the 1/8-width students (~1.5 h).
    "budget": {
        "epochs": 60,
        "batches_per_epoch": 10,
        "teacher_epochs": 60,
        "seeds": [0, 1],
        "width_divisors": [4],
        "rows": TABLE_ROWS,
        "lambda_max": [0.1, 1.0],  # 0.01 (METHODS.md) leaves the terms at ~1% of the loss: no effect at 250 iterations
        "bundle": {
            "spacing": [2.0, 2.0, 2.0],  # a cropped BraTS brain is then about 70 x 85 x 70 voxels
            "patch_size": [32, 32, 32],  # multiples of 8 for 4 stages; 64 mm of brain
            "num_samples": 2,
            "val_interval": 10,
        },
    },
    # nnU-Net's published 3d_fullres settings for BraTS-sized data on one GPU (Isensee et al., Nat. Methods 2021:
    # 1000 epochs of 250 iterations, batch 2, 128^3 patches at 1 mm, 6 stages of 32..320 filters, deep supervision),
    # the scale ReCo-KD was published at. Not timed here (no GPU was lent); nnU-Net's own runs take about a GPU-day
    # per network, so a full table (3 folds x teacher + 2 widths x 4 rows x 3 seeds) is a cluster job.
    "gpu": {
        "epochs": 1000,
        "batches_per_epoch": 250,
        "teacher_epochs": 1000,
        "seeds": [0, 1, 2],
        "width_divisors": [4, 8],
        "rows": TABLE_ROWS,
        "lambda_max": [0.01, 0.1, 1.0],
        "bundle": {
            "spacing": [1.0, 1.0, 1.0],
            "patch_size": [128, 128, 128],
            "filters": [32, 64, 128, 256, 320, 320],
            "deep_supr_num": 3,
            "ds_weights": [0.5, 0.25, 0.125],
            "batch_size": 2,
            "num_workers": 8,
            "val_interval": 50,
        },
    },
}


@lru_cache(maxsize=None)
def _bundle_default(key: str) -> object:
    """A value of the bundle's ``train.json``."""
    return json.loads((CONFIGS / "train.json").read_text())[key]


@dataclass(frozen=True)
class Variant:
    """λ_max and warm-up fraction of a distilling run (None: the bundle's default, not passed)."""

    lambda_max: float | None = None
    warmup_fraction: float | None = None

    def _changed(self) -> list[tuple[str, str, float]]:
        pairs = (("lam", "lambda_max", self.lambda_max), ("wu", "warmup_fraction", self.warmup_fraction))
        return [(short, key, v) for short, key, v in pairs if v is not None and v != _bundle_default(key)]

    @property
    def suffix(self) -> str:
        """``_lam0.1_wu0.3`` for the values that differ from the bundle's; empty for the defaults."""
        return "".join(f"_{short}{value:g}" for short, _, value in self._changed())

    @property
    def overrides(self) -> dict[str, float]:
        pairs = (("lambda_max", self.lambda_max), ("warmup_fraction", self.warmup_fraction))
        return {k: v for k, v in pairs if v is not None}

    @property
    def values(self) -> tuple[float, float]:
        """(λ_max, warm-up fraction) this variant trains with."""
        lam = self.lambda_max if self.lambda_max is not None else _bundle_default("lambda_max")
        warm = self.warmup_fraction if self.warmup_fraction is not None else _bundle_default("warmup_fraction")
        return float(lam), float(warm)


@dataclass(frozen=True)
class Run:
    """One training: a row in a fold (None: the datalist's own splits), with a seed; students have a width divisor,
    distilling rows a variant."""

    row: str
    fold: int | None
    seed: int
    width: int = 1
    variant: Variant = field(default_factory=Variant)

    @property
    def method(self) -> str:
        """The row's name in the table: the row, with the variant's suffix for a distilling row."""
        return self.row + (self.variant.suffix if ROWS[self.row].reco else "")

    @property
    def key(self) -> str:
        """Job key, and the run's folder relative to ``OUT``."""
        fold = "" if self.fold is None else f"fold{self.fold}/"
        return f"{fold}teacher" if self.row == "teacher" else f"{fold}w{self.width}/{self.method}/seed{self.seed}"

    def root(self, out: str | Path) -> Path:
        return Path(out) / self.key


def _folds(args: argparse.Namespace) -> list[int | None]:
    return list(args.folds) or [None]


def variants(args: argparse.Namespace) -> list[Variant]:
    """Every combination of the given ``--lambda_max`` and ``--warmup_fraction`` values."""
    pairs = itertools.product(args.lambda_max or [None], args.warmup_fraction or [None])
    return [Variant(lam, warm) for lam, warm in pairs]


def selecting(args: argparse.Namespace) -> bool:
    """Several variants: ReCo-KD is trained per variant and evaluated on validation only, to choose one."""
    return len(variants(args)) > 1


def teacher_run(fold: int | None, args: argparse.Namespace) -> Run:
    return Run("teacher", fold, args.seeds[0])


def _seeds(row: str, args: argparse.Namespace) -> list[int]:
    """The seeds of a student row: the first only for a row of ``--single_seed_rows``."""
    return args.seeds[:1] if row in args.single_seed_rows else args.seeds


Chosen = dict[tuple[int | None, int], Variant]  # (fold, width divisor) -> the variant chosen on validation


def student_runs(args: argparse.Namespace, chosen: Chosen | None = None) -> Iterator[Run]:
    """The student runs, fold by fold. While selecting a variant (``chosen`` None): only ReCo-KD's variants, no
    ablations; with ``chosen``: every row, the ReCo-KD ones at their fold and width's chosen variant. A row without
    λ_max (the student alone, KD) does not wait for the choice."""
    for fold in _folds(args):
        for width in args.width_divisors:
            for row in (r for r in args.rows if r != "teacher"):
                reco = ROWS[row].reco
                if selecting(args) and chosen is None and reco and row != "recokd":
                    continue
                if not reco:
                    row_variants = [Variant()]
                elif chosen is not None:
                    row_variants = [chosen[(fold, width)]]
                else:
                    row_variants = variants(args)
                for variant in row_variants:
                    for seed in _seeds(row, args):
                        yield Run(row, fold, seed, width, variant)


def selection_score(summary: dict, names: Sequence[str]) -> float | None:
    """A validation summary's score for choosing a variant: the mean Dice over ``names`` (the regions when the
    dataset has them, else the classes), undefined names left out."""
    return _mean([summary["classes"].get(n, {}).get("dice_mean") for n in names])


def _cell(fold: int | None, width: int) -> str:
    """The key of a fold and width in the selection scores: ``fold<k>/w<d>`` (``w<d>`` without folds)."""
    return f"{'' if fold is None else f'fold{fold}/'}w{width}"


def choose_variants(args: argparse.Namespace, names: Sequence[str]) -> tuple[Chosen | None, dict]:
    """Per fold and width, the ReCo-KD variant with the highest validation score (:func:`selection_score`, mean over
    the seeds; a tie goes to the variant listed first). Returns (the choice, or None while a variant's validation is
    unfinished; the scores: ``"fold<k>/w<d>"`` -> variant suffix (``""``: the bundle's values) -> score)."""
    scores: dict[str, dict[str, float | None]] = {}
    chosen: Chosen = {}
    complete = True
    for fold in _folds(args):
        for width in args.width_divisors:
            per_seed = {}
            for variant in variants(args):
                roots = [Run("recokd", fold, seed, width, variant).root(args.out) for seed in _seeds("recokd", args)]
                paths = [root / VALIDATION_EVAL / "metrics_summary.json" for root in roots]
                per_seed[variant] = [selection_score(json.loads(p.read_text()), names) if p.is_file() else None
                                     for p in paths]  # fmt: skip
            best, means = best_on_validation(per_seed)
            scores[_cell(fold, width)] = {v.suffix: m for v, m in means.items()}
            if best is None:
                complete = False
            else:
                chosen[(fold, width)] = best
    return (chosen if complete else None), scores


def run_overrides(run: Run, args: argparse.Namespace, extra: dict[str, object]) -> dict[str, object]:
    """The command-line overrides of one run's bundle commands: its folder, data, fold, seed, sizes, width, teacher
    and variant, then the profile's bundle settings, then the unknown options of the command line."""
    teacher = run.row == "teacher"
    out: dict[str, object] = {
        "bundle_root": str(run.root(args.out)),
        "dataset_dir": args.dataset_dir,
        "seed": run.seed,
        "epochs": (args.teacher_epochs or args.epochs) if teacher else args.epochs,
        "batches_per_epoch": args.batches_per_epoch,
        "num_workers": 0,
    }
    if run.fold is not None:
        out["fold"] = run.fold
    if not teacher:  # teacher.json sets width_divisor 1; a command-line value would override it
        out["width_divisor"] = run.width
    if ROWS[run.row].distils:
        out["teacher_ckpt"] = str(teacher_run(run.fold, args).root(args.out) / "models" / "model.pt")
    if ROWS[run.row].reco:
        out.update(run.variant.overrides)
    return {**out, **args.bundle_overrides, **extra}


def _configs(row: str) -> list[Path]:
    return [CONFIGS / "train.json", *(CONFIGS / v for v in ROWS[row].variants)]


def plan(args: argparse.Namespace, extra: dict[str, object], chosen: Chosen | None = None) -> list[jobs.Job]:
    """Per fold: the teacher's training (when a row distils or the teacher is a row) and test evaluation, then every
    student run's training, test evaluation (not for the variants being selected) and, for the student alone and
    ReCo-KD, validation evaluation; a distilling run needs its fold's teacher. While selecting, ``chosen`` (from
    :func:`choose_variants`) gives the second stage: the chosen variants evaluated on test, and the ablations."""
    todo: list[jobs.Job] = []
    students = list(student_runs(args, chosen))
    for fold in _folds(args):
        mine = [r for r in students if r.fold == fold]
        teacher = teacher_run(fold, args)
        if "teacher" in args.rows or any(ROWS[r.row].distils for r in mine):
            evaluate = _configs("teacher") + [CONFIGS / "evaluate.json"] if "teacher" in args.rows else None
            todo += train_and_evaluate(teacher.key, teacher.root(args.out), _configs("teacher"),
                                       run_overrides(teacher, args, extra), evaluate)  # fmt: skip
        for run in mine:
            overrides = run_overrides(run, args, extra)
            distils = ROWS[run.row].distils
            selection_only = ROWS[run.row].reco and selecting(args) and chosen is None
            evaluate = None if selection_only else _configs(run.row) + [CONFIGS / "evaluate.json"]
            needs = (teacher.key,) if distils else ()
            todo += train_and_evaluate(run.key, run.root(args.out), _configs(run.row), overrides, evaluate, needs=needs)
            if run.row in ON_VALIDATION:
                evaluate_configs = _configs(run.row) + [CONFIGS / "evaluate.json"]
                todo.append(validation_job(run.key, run.root(args.out), evaluate_configs, overrides))
    return todo


def _entry(run: Run, args: argparse.Namespace, folder: Path) -> dict | None:
    """A finished evaluation of ``run`` in ``folder``: fold, seed, summary, per-case file, training seconds."""
    root = run.root(args.out)
    summary, per_case = root / folder / "metrics_summary.json", root / folder / "metrics_per_case.csv"
    if not summary.is_file() or not per_case.is_file():
        return None
    return {"fold": run.fold, "seed": run.seed, "summary": json.loads(summary.read_text()), "per_case": str(per_case),
            "train_seconds": train_seconds(root)}  # fmt: skip


def collect(
    args: argparse.Namespace, chosen: Chosen | None = None
) -> tuple[dict[str, dict[str, list[dict]]], dict[str, dict[str, list[dict]]]]:
    """(test, validation): width block ``w<d>`` -> method -> its finished evaluations (the teacher's in every block);
    an unfinished run is left out with a line saying so. While selecting, validation holds every variant and test,
    given ``chosen``, each distilling row at its fold's chosen variant under the row's plain name (pooled over
    folds whose choices differ)."""
    test: dict[str, dict[str, list[dict]]] = {f"w{d}": {} for d in args.width_divisors}
    validation: dict[str, dict[str, list[dict]]] = {f"w{d}": {} for d in args.width_divisors}
    teachers = []
    if "teacher" in args.rows:
        for fold in _folds(args):
            entry = _entry(teacher_run(fold, args), args, TEST_EVAL)
            if entry is None:
                print(f"[miss] {teacher_run(fold, args).key}: not finished, left out", flush=True)
            else:
                teachers.append(entry)
    for block in test.values():
        if teachers:
            block["teacher"] = teachers
    for run in student_runs(args):
        block = f"w{run.width}"
        wanted = [(test, TEST_EVAL)] if not (ROWS[run.row].reco and selecting(args)) else []
        wanted += [(validation, VALIDATION_EVAL)] if run.row in ON_VALIDATION else []
        for results, folder in wanted:
            _add(results[block], run.method, run, args, folder)
    if selecting(args) and chosen is not None:
        for run in (r for r in student_runs(args, chosen) if ROWS[r.row].reco):
            _add(test[f"w{run.width}"], run.row, run, args, TEST_EVAL)
    return {b: m for b, m in test.items() if m}, {b: m for b, m in validation.items() if m}


def _add(methods: dict[str, list[dict]], method: str, run: Run, args: argparse.Namespace, folder: Path) -> None:
    """Append ``run``'s finished evaluation in ``folder`` to ``methods[method]``, or say it is missing."""
    entry = _entry(run, args, folder)
    if entry is None:
        print(f"[miss] {run.key} ({folder}): not finished, left out", flush=True)
    else:
        methods.setdefault(method, []).append(entry)


def size_and_latency(
    row: str, args: argparse.Namespace, extra: dict[str, object], width_divisor: int | None = None
) -> dict:
    """Parameters of the row's network (a student at ``width_divisor``, default the first of ``--width_divisors``)
    and its median CPU time per test volume: the bundle's own preprocessing (crop, spacing) and sliding-window
    inferer on the first ``test`` item of the first fold, ``--latency_runs`` runs after one warm-up."""
    import torch
    from monai.bundle import ConfigParser

    from common.profiling import count_parameters, median_seconds

    fold = _folds(args)[0]
    width = width_divisor or args.width_divisors[0]
    run = teacher_run(fold, args) if row == "teacher" else Run(row, fold, args.seeds[0], width)
    torch.set_num_threads(args.threads)
    parser = ConfigParser()
    parser.read_config([str(p) for p in _configs(row)])
    for key, value in {**run_overrides(run, args, extra), "device": "$torch.device('cpu')"}.items():
        parser[key] = value
    parser["validate#datalist#key"] = "test"
    network = parser.get_parsed_content("network_def").eval()
    item = parser.get_parsed_content("validate#datalist")[0]
    image = parser.get_parsed_content("validate#preprocessing")(item)["image"][None]
    inferer = parser.get_parsed_content("validate#inferer")
    with torch.inference_mode():
        seconds = median_seconds(lambda: inferer(image, network), warmup=1, runs=args.latency_runs)
    return {
        "params": count_parameters(network),
        "latency_s": seconds,
        "volume_shape": list(image.shape[2:]),
        "filters": list(network.filters),
    }


# ----------------------------------------------------------------------------------------------------------------------
# statistics and the table
# ----------------------------------------------------------------------------------------------------------------------
def _read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _scores(runs: dict[str, list[dict]], metric: str, names: Sequence[str]) -> dict[str, dict[int, dict[str, float]]]:
    """method -> seed -> subject -> score over ``names``, each seed's per-case rows pooled over its folds."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for method, entries in runs.items():
        for seed in sorted({e["seed"] for e in entries}):
            rows = [row for e in entries if e["seed"] == seed for row in _read_rows(e["per_case"])]
            out.setdefault(method, {})[seed] = subject_scores(rows, metric, list(names))
    return out


def block_statistics(
    runs: dict[str, list[dict]], classes: Sequence[str], regions: Sequence[str], args: argparse.Namespace
) -> dict[str, dict]:
    """Method -> ``dice`` and ``hd95`` over the classes, and ``by_name`` (class or region) -> ``dice``, ``hd95``,
    each the paired bootstrap over subjects (seeds averaged inside a subject) against the student alone."""
    runs = {m: entries for m, entries in runs.items() if all(e.get("per_case") for e in entries)}
    if not runs:
        return {}
    dice = bootstrap_or_none(_scores(runs, "dice", classes), BASELINE, args.n_boot, args.bootstrap_seed)
    hd95 = bootstrap_or_none(_scores(runs, "hd95", classes), BASELINE, args.n_boot, args.bootstrap_seed, False)
    names = [*classes, *regions]
    by_dice = {
        n: bootstrap_or_none(_scores(runs, "dice", [n]), BASELINE, args.n_boot, args.bootstrap_seed) for n in names
    }
    by_hd95 = {
        n: bootstrap_or_none(_scores(runs, "hd95", [n]), BASELINE, args.n_boot, args.bootstrap_seed, False)
        for n in names
    }
    by_name = {m: {n: {"dice": by_dice[n][m], "hd95": by_hd95[n][m]} for n in names} for m in runs}
    if regions:  # the mean over the regions, as one more score beside the classes and regions
        over = bootstrap_or_none(_scores(runs, "dice", regions), BASELINE, args.n_boot, args.bootstrap_seed)
        over_hd95 = bootstrap_or_none(_scores(runs, "hd95", regions), BASELINE, args.n_boot, args.bootstrap_seed, False)
        for m in runs:
            by_name[m][REGION_MEAN] = {"dice": over[m], "hd95": over_hd95[m]}
    return {m: {"dice": dice[m], "hd95": hd95[m], "by_name": by_name[m]} for m in runs}


def _num(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:.{digits}f}"


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values (None when there is none)."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(values) / len(values) if values else None


def _row_and_variant(method: str) -> tuple[str, Variant]:
    """The row and variant of a method name (:attr:`Run.method`, e.g. ``recokd_lam0.1_wu0.3``)."""
    row = next(r for r in sorted(ROWS, key=len, reverse=True) if method == r or method.startswith(r + "_"))
    found = dict(re.findall(r"_(lam|wu)([0-9.e+-]+)", method[len(row) :]))
    return row, Variant(*(float(found[k]) if k in found else None for k in ("lam", "wu")))


def _label(method: str, widths: int, block: str) -> str:
    """A method's label: the row's, its λ_max / warm-up when not the bundle's, its width when there are several."""
    row, variant = _row_and_variant(method)
    label = ROWS[row].label
    if variant.suffix:
        lam, warm = variant.values
        label += f" (λ_max {lam:g}, warm-up {warm:g})"
    return label + (f", 1/{block[1:]} width" if widths > 1 and row != "teacher" else "")


def _size_key(method: str, block: str) -> str:
    return "teacher" if method == "teacher" else block


def _markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def overview(
    results: dict[str, dict[str, list[dict]]], sizes: dict, names: list[str], classes: list[str]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the overview: per run the test summary's class and region means, averaged over the runs
    (folds and seeds); mean Dice / HD95 over the classes ('–' when one is undefined); the teacher once."""
    head = ["method", "filters", "params (M)", "CPU s / volume"] + [f"Dice {c}" for c in names] + ["mean Dice"]
    head += [f"HD95 {c} (mm)" for c in names] + ["mean HD95 (mm)", "train time (min)"]
    rows, seen = [], set()
    for block, methods in results.items():
        for method, runs in methods.items():
            if method in seen and method == "teacher":
                continue
            seen.add(method)
            size = sizes.get(_size_key(method, block), {})
            cells = [_label(method, len(results), block), str(size.get("filters", "–")).replace(" ", "")]
            cells += [_num(size.get("params"), 3, 1e-6), _num(size.get("latency_s"), 2)]
            for metric, scale in (("dice", 100), ("hd95", 1)):
                means = {
                    n: _mean([r["summary"]["classes"].get(n, {}).get(f"{metric}_mean") for r in runs]) for n in names
                }
                cells += [_num(means[n], 2, scale) for n in names]
                over = [means[c] for c in classes]
                cells += [_num(None if None in over else sum(over) / len(over), 2, scale)]
            cells += [_num(_mean([r["train_seconds"] / 60 for r in runs]), 1)]
            rows.append(cells)
    return head, rows


def _statistics_lines(
    block: str, methods: dict[str, list[dict]], stats: dict, sizes: dict, names: list[str], widths: int
) -> list[str]:
    """The test block of one width: the main comparison, then Dice and HD95 per class and region."""
    head = ["method", "seeds", "subjects", "Dice % [95% CI]", "Δ Dice vs student alone [95% CI]", "verdict"]
    regions = any(REGION_MEAN in s["by_name"] for s in stats.values())
    if regions:
        head += ["region Dice % [95% CI]", "Δ region Dice [95% CI]", "verdict (regions)"]
    head += ["HD95 mm [95% CI]", "Δ HD95 vs student alone [95% CI]", "params (M)", "CPU s / volume"]
    main, per_dice, per_hd95 = [], [], []
    for method in (m for m in methods if m in stats):
        s, size = stats[method], sizes.get(_size_key(method, block), {})
        label = _label(method, widths, block)
        seeds = len({e["seed"] for e in methods[method]})
        baseline = method == BASELINE or s["dice"] is None or s["dice"].get("difference") is None
        cells = [label, str(seeds), str((s["dice"] or {}).get("subjects", "–")), ci_cell(s["dice"], 100)]
        cells += ["–" if baseline else ci_cell(s["dice"], 100, "difference", True)]
        cells += ["–" if baseline else s["dice"]["verdict"]]
        if regions:
            r = s["by_name"].get(REGION_MEAN, {}).get("dice")
            no_difference = baseline or r is None or r.get("difference") is None
            cells += [ci_cell(r, 100), "–" if no_difference else ci_cell(r, 100, "difference", True)]
            cells += ["–" if no_difference else r["verdict"]]
        cells += [ci_cell(s["hd95"])]
        cells += ["–" if baseline or s["hd95"] is None else ci_cell(s["hd95"], 1, "difference", True)]
        cells += [_num(size.get("params"), 3, 1e-6), _num(size.get("latency_s"), 2)]
        main.append(cells)
        per_dice.append([label] + [ci_cell(s["by_name"][n]["dice"], 100) for n in names])
        per_hd95.append([label] + [ci_cell(s["by_name"][n]["hd95"]) for n in names])
    title = f"students at 1/{block[1:]} width"
    lines = [f"## Test patients, {title}", ""] + _markdown(head, main)
    lines += ["", f"Dice per class and region, % [95% CI] ({title}):", ""]
    lines += _markdown(["method", *names], per_dice) + ["", f"HD95 per class and region, mm [95% CI] ({title}):", ""]
    return lines + _markdown(["method", *names], per_hd95) + [""]


def _validation_lines(block: str, methods: dict[str, list[dict]], stats: dict, widths: int) -> list[str]:
    """The validation block of one width: Dice of the student alone and of each ReCo-KD variant."""
    head = ["method", "λ_max", "warm-up", "seeds", "subjects", "Dice % [95% CI]", "Δ Dice vs student alone [95% CI]"]
    head += ["verdict"]
    rows = []
    for method in (m for m in methods if m in stats):
        s = stats[method]["dice"]
        distils = method != BASELINE
        lam, warm = _row_and_variant(method)[1].values if distils else (None, None)
        baseline = not distils or s is None or s.get("difference") is None
        cells = [_label(method, widths, block), _num(lam, 3) if distils else "–", _num(warm, 2) if distils else "–"]
        cells += [str(len({e["seed"] for e in methods[method]})), str((s or {}).get("subjects", "–")), ci_cell(s, 100)]
        cells += ["–" if baseline else ci_cell(s, 100, "difference", True), "–" if baseline else s["verdict"]]
        rows.append(cells)
    title = f"## Validation patients, students at 1/{block[1:]} width: choose λ_max and the warm-up here, not on test"
    return [title, ""] + _markdown(head, rows) + [""]


def _notes(results: dict, sizes: dict, classes: list[str], args: argparse.Namespace) -> list[str]:
    """The paragraphs under the overview: data, runs, units, latency, empty masks, statistics."""
    some = next(iter(next(iter(results.values())).values()))
    first = some[0]["summary"]
    volumes = sum(e["summary"]["num_cases"] for e in some if e["seed"] == some[0]["seed"])
    shape = next((v["volume_shape"] for v in sizes.values() if "volume_shape" in v), None)
    widths = " and ".join(f"1/{d}" for d in args.width_divisors)
    seeds = ", ".join(map(str, args.seeds))
    if args.single_seed_rows:
        seeds += f" ({', '.join(args.single_seed_rows)}: {args.seeds[0]} only)"
    folds = [f for f in _folds(args) if f is not None]
    where = (
        f"the test folds of `{args.dataset_dir}` (folds {', '.join(map(str, folds))}; fold k tests on fold_k, "
        "validates on fold_(k+1) and trains on the rest, so each patient is tested once)"
        if folds
        else f"the test split of `{args.dataset_dir}`"
    )
    return [
        f"Overview: {where} ({volumes} volume(s)"
        + (f"; the first is {'×'.join(map(str, shape))} voxels after crop and resampling" if shape else "")
        + f"); seeds {seeds} (the teacher: {args.seeds[0]}); {args.epochs} epochs of "
        f"{args.batches_per_epoch} batches; students at {widths} width. Each cell is the mean over the runs (folds "
        "and seeds) of the run's mean over its test volumes; mean Dice / HD95: over the classes "
        f"({', '.join(classes)}), '–' when one is undefined. Dice in %; HD95 in mm with the volume's spacing. CPU "
        f"time: median of {args.latency_runs} sliding-window runs over the whole (first) test volume, "
        f"{args.threads} thread(s), after one warm-up. Empty masks: {first['empty_mask_convention']}.",
        "Statistics below: each test patient's Dice (or HD95) averaged over the classes where defined (a region or "
        "class column: that one only), then over its volumes, then over the row's seeds (seeds averaged inside a "
        "patient); every fold's test patients pooled into one set of subjects. Mean over the patients that every row "
        f"scored; 95% CI: percentile bootstrap of {args.n_boot} resamples of those patients (seed "
        f"{args.bootstrap_seed}), the same resample for every row (paired). Δ: per patient, the row minus the student "
        "alone, then the mean, with its paired CI; better / worse when that CI excludes 0, else no difference.",
    ]


def _records(split: str, block: str, stats: dict, names: list[str]) -> list[dict]:
    """CSV lines of ``table_stats.csv``: per method and score (the class mean, or a class or region), the
    bootstrap numbers (fractions for Dice, mm for HD95, NaN when missing)."""

    def get(entry: dict | None, key: str, i: int | None = None) -> float | str:
        value = None if entry is None else entry.get(key)
        if key == "verdict":
            return value or ""
        return math.nan if value is None else float(value if i is None else value[i])

    out = []
    for method, s in stats.items():
        for name, pair in [("mean", {"dice": s["dice"], "hd95": s["hd95"]}), *s["by_name"].items()]:
            record: dict[str, object] = {"split": split, "block": block, "method": method, "score": name}
            for metric in ("dice", "hd95"):
                e = pair[metric]
                record.update(
                    {metric: get(e, "mean"), f"{metric}_lo": get(e, "ci", 0), f"{metric}_hi": get(e, "ci", 1)}
                )
                record.update({f"{metric}_diff": get(e, "difference"), f"{metric}_diff_lo": get(e, "difference_ci", 0)})
                record.update({f"{metric}_diff_hi": get(e, "difference_ci", 1), f"{metric}_verdict": get(e, "verdict")})
            record["subjects"] = (s["dice"] or {}).get("subjects", 0)
            out.append(record)
    return out


def _choice_lines(args: argparse.Namespace, choice: tuple[Chosen | None, dict] | None, names: list[str]) -> list[str]:
    """The section on the variant chosen per fold and width: every variant's validation score, the choice."""
    chosen, scores = choice or (None, {})
    head = ["fold / width"] + [f"λ_max {lam:g}, warm-up {warm:g}" for lam, warm in (v.values for v in variants(args))]
    rows = []
    for fold, width in ((f, w) for f in _folds(args) for w in args.width_divisors if _cell(f, w) in scores):
        pick = (chosen or {}).get((fold, width))
        row = [("" if fold is None else f"fold{fold}, ") + f"1/{width} width"]
        for variant in variants(args):
            mark = " **chosen**" if variant == pick else ""
            row.append(_num(scores[_cell(fold, width)].get(variant.suffix), 2, 100) + mark)
        rows.append(row)
    lines = [
        "## λ_max and warm-up chosen on validation",
        "",
        f"Per fold and width, ReCo-KD trained once per variant; score: validation Dice over {', '.join(names)} "
        "(each run's mean over its validation volumes, then the mean over the names and the seeds), in %. The "
        "variant with the highest score is the fold's ReCo-KD row on test and the ablations' setting; the test "
        "split was not read to choose.",
        "",
    ]
    lines += _markdown(head, rows) if rows else []
    if chosen is None:
        lines += ["", "Not every variant has its validation evaluation yet: no choice made, ReCo-KD not on test."]
    return lines + [""]


def write_table(
    results: dict[str, dict[str, list[dict]]],
    sizes: dict[str, dict],
    args: argparse.Namespace,
    classes: Sequence[str] | None = None,
    regions: Sequence[str] = (),
    validation: dict[str, dict[str, list[dict]]] | None = None,
    choice: tuple[Chosen | None, dict] | None = None,
) -> str:
    """Write ``table.md`` (returned), ``table.csv`` (the overview), ``table_stats.csv`` and ``table.json`` into
    ``OUT``. ``results`` / ``validation``: width block -> method -> runs (:func:`collect`); ``classes`` default to
    the names of the summaries minus ``regions``."""
    first = next(iter(next(iter(results.values())).values()))[0]["summary"]
    regions = list(regions)
    classes = list(classes) if classes is not None else [n for n in first["classes"] if n not in regions]
    names = classes + regions
    head, rows = overview(results, sizes, names, classes)
    md = _markdown(head, rows) + [""] + [line for note in _notes(results, sizes, classes, args) for line in (note, "")]
    widths = len(args.width_divisors)
    statistics: dict[str, dict[str, dict]] = {"test": {}, "validation": {}}
    records: list[dict] = []
    for block, methods in results.items():
        stats = block_statistics(methods, classes, regions, args)
        statistics["test"][block] = stats
        records += _records("test", block, stats, names)
        md += _statistics_lines(block, methods, stats, sizes, names, widths) if stats else []
    for block, methods in (validation or {}).items():
        stats = block_statistics(methods, classes, regions, args)
        statistics["validation"][block] = stats
        records += _records("validation", block, stats, names)
        md += _validation_lines(block, methods, stats, widths) if stats else []
    if selecting(args):
        md += _choice_lines(args, choice, regions or classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(md).rstrip() + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([head] + rows)
    if records:
        with open(out / "table_stats.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    payload = {
        "test": {b: {"statistics": statistics["test"][b], "runs": runs} for b, runs in results.items()},
        "validation": {
            b: {"statistics": statistics["validation"][b], "runs": r} for b, r in (validation or {}).items()
        },
        "sizes": sizes,
        "classes": classes,
        "regions": regions,
        "bootstrap": {"resamples": args.n_boot, "seed": args.bootstrap_seed, "ci": 0.95, "baseline": BASELINE},
        "args": {k: v for k, v in vars(args).items() if k != "extra"},
    }
    (out / "table.json").write_text(json.dumps(payload, indent=1))
    return "\n".join(md).rstrip()


# ----------------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, object]]:
    """The options (sizes left unset from ``--profile``, then :data:`DEFAULTS`; folds from the datalist) and the
    bundle overrides of the unknown options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # fmt: skip
    p.add_argument("--out", default="runs/recokd")
    p.add_argument("--dataset_dir", default=DEFAULT_DATASET, help="a 3D dataset folder (datalist.json, dataset.json)")
    p.add_argument("--lits_dir", default="data/lits_liver", help="source of the default 3D split")
    p.add_argument("--profile", choices=list(PROFILES), default=None, help="default sizes (budget: 2 CPU cores)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=None, help=f"default: {TABLE_ROWS}")
    p.add_argument("--folds", nargs="+", type=int, default=None,
                   help="folds to run (default: every fold_k list of the datalist; none without them)")  # fmt: skip
    p.add_argument("--seeds", "--seed", nargs="+", type=int, default=None, help="seeds of every student (default 0 1)")
    p.add_argument(
        "--single_seed_rows",
        nargs="*",
        default=[],
        choices=[r for r in ROWS if r != "teacher"],
        help="student rows run with the first seed only (e.g. the ablations, to save time)",
    )
    p.add_argument("--width_divisors", "--width_divisor", nargs="+", type=int, default=None,
                   help="student width = teacher width / each of these (2, 4, 8; default 4)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batches_per_epoch", type=int, default=None)
    p.add_argument("--teacher_epochs", type=int, default=None, help="default: --epochs")
    p.add_argument("--lambda_max", nargs="+", type=float, default=None,
                   help="ReCo-KD's λ_max; several values: one variant each, chosen on validation")  # fmt: skip
    p.add_argument("--warmup_fraction", nargs="+", type=float, default=None,
                   help="ReCo-KD's warm-up fraction; several: one variant each, chosen on validation")  # fmt: skip
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run and of the timing "
                   "(default: the cores / --parallel)")  # fmt: skip
    p.add_argument("--latency_runs", type=int, default=3)
    p.add_argument("--n_boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--bootstrap_seed", type=int, default=0)
    p.add_argument("--plan", action="store_true", help="print the jobs (done or not) and run nothing")
    p.add_argument("--report_only", action="store_true", help="write the table from finished runs; train nothing")
    args, unknown = p.parse_known_args(argv)
    profile = PROFILES.get(args.profile, {})
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            value = profile.get(key, default)
            setattr(args, key, list(value) if isinstance(value, list) else value)
    args.bundle_overrides = dict(profile.get("bundle", {}))
    if any(d < 1 for d in args.width_divisors):
        p.error(f"--width_divisors must be >= 1, got {args.width_divisors}")
    detected = detect_folds(args.dataset_dir)
    if args.folds is None:
        args.folds = detected
    elif any(f not in detected for f in args.folds):
        p.error(f"--folds {args.folds}: '{args.dataset_dir}' has the folds {detected} (fold_k lists of datalist.json)")
    args.threads = args.threads or jobs.threads_per_job(args.parallel, {})
    return args, parse_overrides(unknown)


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(argv)
    if args.dataset_dir == DEFAULT_DATASET and not (args.report_only or args.plan):
        from common.data.volume_split import write_lits_volume_split

        write_lits_volume_split(args.lits_dir, args.dataset_dir)
    from common.data.dataset_info import load_dataset_info

    todo = plan(args, extra)
    if args.plan:
        jobs.print_plan(todo)
        if selecting(args):
            info = load_dataset_info(args.dataset_dir)
            chosen = choose_variants(args, list(info.regions) or info.class_names)[0]
            if chosen is None:
                print("then, once every variant is validated: per fold and width the chosen variant on test and the "
                      "ablations at it")  # fmt: skip
            else:
                print("\nstage 2, at the variants chosen on validation:")
                jobs.print_plan([j for j in plan(args, extra, chosen) if j.key not in {t.key for t in todo}])
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if not args.report_only:
        jobs.run(todo, env, args.parallel)
    info = load_dataset_info(args.dataset_dir)
    names = list(info.regions) or info.class_names  # what a variant is chosen on: the regions, else the classes
    choice = choose_variants(args, names) if selecting(args) else None
    if choice is not None and choice[0] is not None and not args.report_only:
        jobs.run(plan(args, extra, choice[0]), env, args.parallel)
    results, validation = collect(args, choice[0] if choice else None)
    if not results:
        sys.exit("error: no finished run to report")
    sizes = {}
    if any("teacher" in methods for methods in results.values()):
        sizes["teacher"] = size_and_latency("teacher", args, extra)
    for block in results:
        sizes[block] = size_and_latency(BASELINE, args, extra, int(block[1:]))
    print(write_table(results, sizes, args, info.class_names, list(info.regions), validation, choice))
    print(f"\nwritten: {Path(args.out) / 'table.md'} (and table.csv, table_stats.csv, table.json)")


if __name__ == "__main__":
    main()
