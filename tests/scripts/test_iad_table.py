"""The comparison-table script: aggregation over seeds and the files it writes (no training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from tests.conftest import fake_metrics_summary

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("iad_table", REPO / "scripts" / "iad_table.py")
iad_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(iad_table)


def test_mean_and_std_over_seeds():
    assert iad_table._ms([0.5, 0.7], 2, 100) == "60.00 ± 10.00"
    assert iad_table._ms([0.5], 1) == "0.5"
    assert iad_table._ms([float("nan")]) == "–"


def test_write_table_rows_and_files(tmp_path):
    results = {
        "student_only": [{"summary": fake_metrics_summary(0.8, 0.2), "train_seconds": 60}, {"summary": fake_metrics_summary(0.9, 0.4), "train_seconds": 120}],
        "teacher": [{"summary": fake_metrics_summary(0.95, 0.5), "train_seconds": float("nan")}],
    }  # fmt: skip
    sizes = {"student": {"params": 7.87e6, "latency_ms": 12.0}, "teacher": {"params": 9.7e6, "latency_ms": 300.0}}
    args = argparse.Namespace(out=str(tmp_path), threads=2, teacher_arch="litemedsam", teacher_image_size=128)
    md = iad_table.write_table(results, sizes, args)
    lines = md.splitlines()
    assert lines[2].startswith("| Student only | 2 | 85.00 ± 5.00 | 30.00 ± 10.00 | 57.50 ± 7.50 |")
    assert lines[2].endswith("| 1.5 ± 0.5 |")  # training minutes
    assert lines[3].startswith("| Teacher (LiteMedSAM + LoRA) | 1 | 95.00 |")
    assert "7.87 M parameters, 12.0 ms" in md
    assert (tmp_path / "table.md").read_text().strip() == md.strip()
    assert json.loads((tmp_path / "table.json").read_text())["sizes"]["student"]["params"] == 7.87e6
    assert (tmp_path / "table.csv").read_text().splitlines()[0].startswith("method,seeds,Dice liver")
