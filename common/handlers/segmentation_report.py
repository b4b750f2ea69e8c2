"""An evaluator handler that scores every case (per-class Dice and HD95 with the image spacing) and writes the
results as CSV and JSON, and prints them as a table."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Engine, Events

from common.evaluation import case_metrics, summarize

__all__ = ["SegmentationReport", "format_table"]


def _spacing(tensor) -> list[float] | None:
    pixdim = getattr(tensor, "pixdim", None)
    return None if pixdim is None else [float(s) for s in pixdim]


def _name(tensor) -> str:
    meta = getattr(tensor, "meta", {}) or {}
    return str(meta.get("filename_or_obj", ""))


def format_table(summary: dict) -> str:
    """A Markdown table of a :func:`common.evaluation.summarize` result."""
    rows = [
        "| class | Dice (mean ± std) | HD95 mm (mean ± std) | global Dice | cases scored |",
        "|---|---|---|---|---|",
    ]
    for name, c in summary["classes"].items():
        rows.append(
            f"| {name} | {c['dice_mean']:.4f} ± {c['dice_std']:.4f} | {c['hd95_mean']:.2f} ± {c['hd95_std']:.2f} | "
            f"{c['global_dice']:.4f} | {c['cases_scored']} |"
        )
    rows.append(
        f"| **mean** | {summary['mean_dice']:.4f} | {summary['mean_hd95']:.2f} | {summary['mean_global_dice']:.4f} | "
        f"{summary['num_cases']} |"
    )
    return "\n".join(rows)


class SegmentationReport:
    """Collects per-case metrics over an evaluator run; on completion writes ``metrics_per_case.csv`` and
    ``metrics_summary.json`` to ``output_dir`` and logs a table.

    Expects ``engine.state.output`` as decollated dicts holding one-hot ``pred`` and ``label`` (see
    :func:`common.data.transforms.discretize`); spacing and case names come from the label's metadata.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        pred_key: str = "pred",
        label_key: str = "label",
        include_background: bool = False,
        prefix: str = "metrics",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.pred_key, self.label_key = pred_key, label_key
        self.include_background = include_background
        self.prefix = prefix
        self.cases: list[dict] = []
        self.names: list[str] = []
        self.summary: dict = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.cases, self.names = [], []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            pred, label = item[self.pred_key], item[self.label_key]
            metrics = case_metrics(pred, label, _spacing(label), self.include_background)
            if len(metrics["dice"]) != len(self.class_names):
                raise ValueError(f"{len(metrics['dice'])} scored classes but class_names has {len(self.class_names)}.")
            self.cases.append(metrics)
            self.names.append(_name(label) or f"case_{len(self.names)}")

    def _write(self, engine: Engine) -> None:
        self.summary = summarize(self.cases, self.class_names)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / f"{self.prefix}_per_case.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["case"] + [f"dice_{n}" for n in self.class_names] + [f"hd95_{n}" for n in self.class_names]
            )
            for name, m in zip(self.names, self.cases):
                writer.writerow([name] + [_fmt(v) for v in m["dice"]] + [_fmt(v) for v in m["hd95"]])
        with open(self.output_dir / f"{self.prefix}_summary.json", "w") as f:
            json.dump(_finite(self.summary), f, indent=2)
        table = format_table(self.summary)
        self.logger.info("Evaluation of %d cases (written to %s):\n%s", len(self.cases), self.output_dir, table)


def _fmt(v: float) -> str | float:
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def _finite(obj):
    """NaN → None, so the JSON is standard (readers other than Python's reject NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj
