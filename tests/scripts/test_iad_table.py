"""The comparison-table script: aggregation over seeds and the files it writes (no training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
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


def _plan_args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(out=str(tmp_path), dataset_dir="D", teacher_arch="litemedsam", teacher_ckpt="C", teacher_image_size=128,
                teacher_root="TR", teacher_adapter="TR/models/adapter.pt", teacher_time=str(tmp_path / "teacher.json"),
                rows=["student_only", "kis_only"], seeds=[0, 1], single_seed_rows=["kis_only"], epochs=3, kis_epochs=2,
                no_teacher_row=False)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_plan_trains_then_evaluates_each_row_and_seed_and_evaluates_the_teacher(tmp_path):
    todo = {j.key: j for j in iad_table.plan(_plan_args(tmp_path))}
    runs = ["student_only/seed0", "student_only/seed1", "kis_only/seed0"]  # kis_only: the first seed only
    assert list(todo) == [key for run in runs for key in (run, f"{run}/evaluate")] + ["teacher"]
    train, evaluate = todo["student_only/seed1"], todo["student_only/seed1/evaluate"]
    root = tmp_path / "student_only" / "seed1"
    assert train.marker == root / "train_time.json" and train.log == root / "train.log"
    assert "student_only.json" in train.cmd[5] and "evaluate.json" not in train.cmd[5]
    assert train.cmd[6:] == evaluate.cmd[6:] and "evaluate.json" in evaluate.cmd[5]
    assert train.cmd[train.cmd.index("--seed") + 1] == "1" and evaluate.needs == ("student_only/seed1",)
    assert evaluate.outputs == [root / "eval" / "metrics_summary.json"] and evaluate.marker is None
    assert todo["teacher"].outputs == [tmp_path / "teacher" / "metrics_summary.json"]
    assert "teacher" not in {j.key for j in iad_table.plan(_plan_args(tmp_path, no_teacher_row=True))}


def test_collect_reads_the_summaries_and_the_training_markers(tmp_path, capsys):
    args = _plan_args(tmp_path)
    for root, seconds in ((tmp_path / "student_only" / "seed0", 60.0), (tmp_path / "kis_only" / "seed0", None)):
        (root / "eval").mkdir(parents=True)
        (root / "eval" / "metrics_summary.json").write_text(json.dumps(fake_metrics_summary(0.8, 0.2)))
        if seconds is not None:
            (root / "train_time.json").write_text(json.dumps({"seconds": seconds, "command": []}))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "metrics_summary.json").write_text(json.dumps(fake_metrics_summary(0.9, 0.5)))
    (tmp_path / "teacher.json").write_text(json.dumps({"seconds": 600.0, "command": []}))  # the pipeline's marker
    results = iad_table.collect(args)
    assert [r["train_seconds"] for r in results["student_only"]] == [60.0]  # seed 1 has not finished
    assert math.isnan(results["kis_only"][0]["train_seconds"]) and results["teacher"][0]["train_seconds"] == 600.0
    assert "[miss] student_only seed 1" in capsys.readouterr().out
