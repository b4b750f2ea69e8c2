"""The statistics of the evaluation protocol (METHODS.md §8), in one place for every comparison table.

- :func:`subject_scores`: one score per test subject from a run's ``eval/metrics_per_case.csv`` (a subject with
  several images or slices counts once).
- :func:`paired_bootstrap`: per method, the mean over subjects with a percentile confidence interval, and the paired
  difference to a baseline method with its interval and a verdict. Subjects are resampled with replacement, the same
  resample for every method in a draw, so the pairing between methods is kept.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["subject_scores", "paired_bootstrap", "VERDICTS"]

VERDICTS = ("better", "worse", "no difference")


def _value(cell: object) -> float:
    """A CSV cell as a float: empty, ``nan`` or None read as NaN."""
    if cell is None or (isinstance(cell, str) and cell.strip() in ("", "nan", "NaN", "None")):
        return math.nan
    return float(cell)


def subject_scores(
    rows: str | Path | Iterable[Mapping[str, object]], metric: str = "dice", classes: Sequence[str] | None = None
) -> dict[str, float]:
    """Subject -> score of ``metric`` from per-case rows (or the path of a ``metrics_per_case.csv``).

    A case's score is the mean over ``classes`` (default: every ``<metric>_<class>`` column) of its defined values
    (NaN or empty cells, e.g. Dice where prediction and ground truth are both empty, are left out); a subject's score
    is the mean over its cases that have one. A subject without any defined value is left out. A row without a
    ``subject`` is its own subject (its ``case``).
    """
    if isinstance(rows, (str, Path)):
        with open(rows, newline="") as f:
            rows = list(csv.DictReader(f))
    rows = list(rows)
    if not rows:
        return {}
    prefix = f"{metric}_"
    if classes is None:
        columns = [k for k in rows[0] if k.startswith(prefix)]
    else:
        columns = [prefix + c for c in classes]
        missing = [c for c in columns if c not in rows[0]]
        if missing:
            raise KeyError(f"per-case metrics lack the columns {missing} (they have {list(rows[0])})")
    if not columns:
        raise KeyError(f"per-case metrics have no '{prefix}<class>' column (they have {list(rows[0])})")
    cases: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        values = [v for v in (_value(row[c]) for c in columns) if not math.isnan(v)]
        subject = str(row.get("subject") or row.get("case") or f"case_{i}")
        if values:
            cases.setdefault(subject, []).append(sum(values) / len(values))
    return {subject: sum(v) / len(v) for subject, v in cases.items()}


def _interval(samples: np.ndarray, ci: float) -> tuple[float, float]:
    """The percentile interval holding ``ci`` of ``samples`` (last axis)."""
    lo, hi = np.percentile(samples, [50 * (1 - ci), 50 * (1 + ci)], axis=-1)
    return float(lo), float(hi)


def _verdict(lo: float, hi: float, higher_is_better: bool) -> str:
    if lo > 0 or hi < 0:
        return "better" if (lo > 0) == higher_is_better else "worse"
    return "no difference"


def paired_bootstrap(
    scores: Mapping[str, Mapping[object, Mapping[str, float]]],
    baseline: str | None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    higher_is_better: bool = True,
) -> dict[str, dict]:
    """Means, percentile bootstrap CIs and paired differences to ``baseline`` of subject scores.

    ``scores``: method -> seed -> subject -> score (:func:`subject_scores` of each run). Seeds are averaged inside a
    subject first: a method's score of a subject is the mean over its seeds, so a subject counts once however many
    seeds ran, and a method with one seed (e.g. a teacher) is compared like the others. Only the subjects that every
    seed of every method scored are used. Each of ``n_boot`` draws (a ``numpy`` Generator seeded with ``seed``)
    resamples those subjects with replacement and takes, for every method, the mean over the resampled subjects and
    the mean of the per-subject difference method − baseline: the same subjects for every method (paired).

    Returns method -> ``mean`` (over subjects), ``ci`` (percentile interval of ``ci`` mass), ``difference`` (mean
    method − baseline), ``difference_ci``, ``verdict`` (``better`` / ``worse`` when the difference's CI excludes 0,
    in the direction ``higher_is_better`` says, else ``no difference``; ``baseline`` for the baseline itself; the
    difference entries are None without a baseline), ``seeds`` and ``subjects`` (how many were used).
    """
    if not scores:
        raise ValueError("no method to compare")
    if baseline is not None and baseline not in scores:
        raise ValueError(f"baseline '{baseline}' is not among the methods {list(scores)}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    empty = [m for m, seeds in scores.items() if not seeds]
    if empty:
        raise ValueError(f"methods without any scored seed: {empty}")
    subject_sets = [set(subjects) for seeds in scores.values() for subjects in seeds.values()]
    subjects = sorted(set.intersection(*subject_sets))
    if not subjects:
        raise ValueError("no subject was scored by every method and seed: nothing to compare")
    methods = list(scores)
    # (methods, subjects): each method's seed-averaged subject scores
    table = np.array(
        [[np.mean([scores[m][s][subject] for s in scores[m]]) for subject in subjects] for m in methods], dtype=float
    )
    n = len(subjects)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))  # how often each subject is in each draw
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1)
    boot = table @ counts.T / n  # (methods, n_boot): the mean over each draw's subjects
    out: dict[str, dict] = {}
    base = None if baseline is None else methods.index(baseline)
    for i, method in enumerate(methods):
        entry = {"mean": float(table[i].mean()), "ci": _interval(boot[i], ci)}
        entry.update({"difference": None, "difference_ci": None, "verdict": None})
        if base is not None:
            diff = table[i] - table[base]
            lo, hi = _interval(diff @ counts.T / n, ci)
            entry.update({"difference": float(diff.mean()), "difference_ci": (lo, hi)})
            entry["verdict"] = "baseline" if i == base else _verdict(lo, hi, higher_is_better)
        entry.update({"seeds": len(scores[method]), "subjects": len(subjects)})
        out[method] = entry
    return out
