"""What the table scripts share: a MONAI config-file list for the command line, a bundle run as a command, a run's
training and evaluation as jobs (``scripts/jobs.py``) and its training time, bundle overrides read from and written to
the command line, and the mean ± std cell of a table."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from common.handlers.resume import LAST_CHECKPOINT
from scripts.jobs import Job, wall_seconds

__all__ = [
    "config_list",
    "bundle_cmd",
    "train_and_evaluate",
    "validation_job",
    "interrupted",
    "train_seconds",
    "mean_std",
    "ci_cell",
    "bootstrap_or_none",
    "best_on_validation",
    "parse_overrides",
    "cli_args",
]

TRAIN_MARKER = "train_time.json"  # in a run's bundle_root: written when its training succeeded, with its wall time
SUMMARY = Path("eval") / "metrics_summary.json"  # in a run's bundle_root: written by evaluate.json
VALIDATION_EVAL = Path("eval_validation")  # in a run's bundle_root: its evaluation on the validation split


def config_list(paths: list[Path]) -> str:
    """``--config_file`` value merging ``paths`` in order (MONAI's "['a.json','b.json']" form)."""
    return "[" + ",".join(f"'{p}'" for p in paths) + "]"


def bundle_cmd(
    configs: list[Path], overrides: dict[str, object] | None = None, python: str = sys.executable
) -> list[str]:
    """``python -m monai.bundle run`` of ``configs`` merged in order, with ``overrides`` as ``--key value`` pairs."""
    return [python, "-m", "monai.bundle", "run", "--config_file", config_list(configs), *cli_args(overrides or {})]


def train_and_evaluate(
    key: str,
    root: Path,
    configs: list[Path],
    overrides: dict[str, object],
    evaluate: list[Path] | None = None,
    eval_overrides: dict[str, object] | None = None,
    needs: tuple[str, ...] = (),
) -> list[Job]:
    """The jobs of one table run in ``root``: training (``configs``; done when its marker ``root/train_time.json``
    exists, log ``train.log``), then, when ``evaluate`` configs are given, their evaluation on the test split (done
    when ``root/eval/metrics_summary.json`` exists, log ``evaluate.log``; ``eval_overrides`` default to ``overrides``).
    A training that an earlier invocation left unfinished (a ``last.pt`` under ``root/models`` and no marker)
    continues from its last checkpoint (``--resume true``) instead of starting afresh; change a run's settings and
    its folder must go.
    """
    resume = {"resume": True} if interrupted(root) else {}
    train = Job(
        key,
        f"train {key}",
        bundle_cmd(configs, {**overrides, **resume}),
        [],
        root / TRAIN_MARKER,
        needs,
        root / "train.log",
    )
    if evaluate is None:
        return [train]
    cmd = bundle_cmd(evaluate, overrides if eval_overrides is None else eval_overrides)
    return [
        train,
        Job(f"{key}/evaluate", f"evaluate {key}", cmd, [root / SUMMARY], None, (key,), root / "evaluate.log"),
    ]


def validation_job(key: str, root: Path, evaluate: list[Path], overrides: dict[str, object]) -> Job:
    """The evaluation of the finished training ``key`` in ``root`` on its validation split (``evaluate`` configs,
    ``eval_split validation``) into ``root/eval_validation/``, where a table chooses its settings; log
    ``validate.log``."""
    cmd = bundle_cmd(evaluate, {**overrides, "eval_split": "validation", "output_dir": str(root / VALIDATION_EVAL)})
    outputs = [root / VALIDATION_EVAL / SUMMARY.name]
    return Job(f"{key}/validate", f"evaluate {key} on validation", cmd, outputs, None, (key,), root / "validate.log")


def interrupted(root: Path) -> bool:
    """Whether the training in ``root`` started and did not finish: a resumable checkpoint (``last.pt`` of
    ``common.handlers.resume``, in ``models/`` or a stage's folder below it) and no training marker."""
    root = Path(root)
    return not (root / TRAIN_MARKER).exists() and any((root / "models").glob(f"**/{LAST_CHECKPOINT}"))


def train_seconds(root: Path) -> float:
    """The training wall time of the run in ``root`` (NaN when it has not finished)."""
    seconds = wall_seconds(Path(root) / TRAIN_MARKER)
    return math.nan if seconds is None else seconds


def mean_std(values: list[float | None], digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` (population std) of the defined values times ``scale``; one value alone; ``–`` for none."""
    values = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def ci_cell(entry: dict | None, scale: float = 1.0, key: str = "mean", signed: bool = False) -> str:
    """``mean [lo, hi]`` of a :func:`common.stats.paired_bootstrap` entry (``difference`` with ``key``), times
    ``scale``; ``–`` when missing."""
    if entry is None or entry.get(key) is None:
        return "–"
    lo, hi = entry["ci" if key == "mean" else "difference_ci"]
    f = "{:+.2f}" if signed else "{:.2f}"
    return f"{f.format(entry[key] * scale)} [{f.format(lo * scale)}, {f.format(hi * scale)}]"


def bootstrap_or_none(
    scores: dict, baseline: str | None, n_boot: int, seed: int, higher_is_better: bool = True
) -> dict[str, dict | None]:
    """:func:`common.stats.paired_bootstrap` against ``baseline`` (None when that row did not run); None for every row
    when no subject was scored by all (e.g. a class or region absent from every test subject), with a note."""
    from common.stats import paired_bootstrap

    try:
        return paired_bootstrap(scores, baseline if baseline in scores else None, n_boot, seed, 0.95, higher_is_better)
    except ValueError as err:
        print(f"[note] no interval: {err}", flush=True)
        return {m: None for m in scores}


K = TypeVar("K", bound=Hashable)


def best_on_validation(per_seed: Mapping[K, Sequence[float | None]]) -> tuple[K | None, dict[K, float | None]]:
    """The candidate (a variant of a table row) with the highest validation score averaged over its seeds — a tie
    goes to the one listed first — and each candidate's mean (None while one of its seeds is unvalidated). The best
    is None until every candidate is complete: a choice is made on all of them or not at all."""
    means = {k: None if not v or None in v else sum(v) / len(v) for k, v in per_seed.items()}
    if any(m is None for m in means.values()):
        return None, means
    return max(means, key=lambda k: (means[k], -list(means).index(k))), means


def parse_overrides(tokens: list[str]) -> dict[str, object]:
    """``["--key", "value", ...]`` → {key: value}, values read as JSON when they parse (lists, numbers, booleans)."""
    out: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise SystemExit(f"error: unexpected argument {token!r} (bundle overrides are --key value pairs)")
        key, _, value = token[2:].partition("=")
        if not _:
            if i + 1 >= len(tokens):
                raise SystemExit(f"error: {token} needs a value")
            value, i = tokens[i + 1], i + 1
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        i += 1
    return out


def cli_args(overrides: dict[str, object]) -> list[str]:
    """{key: value} → ``["--key", "value", ...]`` for ``monai.bundle run`` (non-strings as JSON)."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args
