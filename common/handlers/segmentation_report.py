"""An evaluator handler that scores every case (per-class Dice, HD95 with the image spacing, sensitivity, optionally
clDice; per region too, e.g. BraTS whole tumour) and writes the results as CSV and JSON, and prints them as a table."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from common.errors import InputError
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
        "| class | Dice (mean ± std) | HD95 (mean ± std; mm, pixels where the spacing is unknown) | global Dice | cases scored |",
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


def region_channels(onehot: torch.Tensor, regions: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """One channel per region, the union of its classes' channels of a one-hot map (K, *spatial)."""
    if not regions:
        return onehot[:0]
    return torch.stack([onehot[[int(v) for v in values]].bool().any(0) for values in regions.values()]).to(onehot)


class SegmentationReport:
    """Collects per-case metrics over an evaluator run; on completion writes ``metrics_per_case.csv`` and
    ``metrics_summary.json`` to ``output_dir`` and logs a table.

    Expects ``engine.state.output`` as decollated dicts holding one-hot ``pred`` and ``label`` (see
    :func:`common.data.transforms.discretize`); spacing and case names come from the label's metadata, the
    ``subject`` and the ``roi`` mask (scores inside it only, e.g. DRIVE's field of view) from the batch item when it
    has them. ``regions`` (name → class values, e.g. BraTS ``{"whole tumour": [1, 2, 3, 4]}``) are scored after the
    classes, as unions of their classes. ``cldice`` adds clDice per class (thin structures). ``foreground_counts``
    appends, after the existing columns, ``pred_sum_<class>`` and ``label_sum_<class>``: the pixels (voxels) of each
    class in the prediction and in the label, inside the roi (a run whose ``pred_sum`` columns are all 0 predicted
    background everywhere).
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        pred_key: str = "pred",
        label_key: str = "label",
        include_background: bool = False,
        prefix: str = "metrics",
        regions: Mapping[str, Sequence[int]] | None = None,
        cldice: bool = False,
        roi_key: str = "roi",
        subject_key: str = "subject",
        foreground_counts: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.regions = dict(regions or {})
        clash = set(self.regions) & set(class_names)
        if clash:
            raise InputError(f"region names {sorted(clash)} are also class names: name regions differently.")
        self.class_names = list(class_names) + list(self.regions)
        self.cldice = cldice
        self.foreground_counts = bool(foreground_counts)
        self.roi_key, self.subject_key = roi_key, subject_key
        self.pred_key, self.label_key = pred_key, label_key
        self.include_background = include_background
        self.prefix = prefix
        self.cases: list[dict] = []
        self.names: list[str] = []
        self.subjects: list[str] = []
        self.summary: dict = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.cases, self.names, self.subjects = [], [], []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        outputs = output if isinstance(output, list) else [output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch] * len(outputs)
        for item, source in zip(outputs, batch):
            pred, label = item[self.pred_key], item[self.label_key]
            source = source if isinstance(source, Mapping) else {}
            roi = source.get(self.roi_key)
            metrics = case_metrics(pred, label, _spacing(label), self.include_background, roi, self.cldice)
            if self.regions:
                extra = case_metrics(
                    region_channels(pred, self.regions), region_channels(label, self.regions), _spacing(label),
                    True, roi, self.cldice,
                )  # fmt: skip
                metrics = {k: v + extra[k] for k, v in metrics.items()}
            if len(metrics["dice"]) != len(self.class_names):
                raise ValueError(f"{len(metrics['dice'])} scored classes but class_names has {len(self.class_names)}.")
            self.cases.append(metrics)
            self.names.append(_name(label) or f"case_{len(self.names)}")
            self.subjects.append(str(source.get(self.subject_key, self.names[-1])))

    def _write(self, engine: Engine) -> None:
        self.summary = summarize(self.cases, self.class_names)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / f"{self.prefix}_per_case.csv", "w", newline="") as f:
            writer = csv.writer(f)
            metrics = ["dice", "hd95", "sensitivity"] + (["cldice"] if self.cldice else [])
            counts = ["pred_sum", "label_sum"] if self.foreground_counts else []
            head = ["case"] + [f"{m}_{n}" for m in metrics for n in self.class_names] + ["subject"]
            writer.writerow(head + [f"{m}_{n}" for m in counts for n in self.class_names])
            for name, case, subject in zip(self.names, self.cases, self.subjects):
                row = [name] + [_fmt(v) for m in metrics for v in case[m]] + [subject]
                writer.writerow(row + [int(v) for m in counts for v in case[m]])
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
