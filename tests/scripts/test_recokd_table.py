"""The recokd_student table script: overrides per row, timing on a tiny task, and the files it writes (no training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from common.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("recokd_table", REPO / "scripts" / "recokd_table.py")
recokd_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recokd_table)

TINY = ["--filters", "[8,16,32]", "--deep_supr_num", "1", "--patch_size", "[16,16,16]", "--intensity_range=[0.0,1.0]"]


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(out=str(tmp_path / "out"), dataset_dir="data/x", seed=0, epochs=20, batches_per_epoch=10,
                width_divisor=4, threads=1, latency_runs=2)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_parse_overrides_reads_json_values():
    assert recokd_table.parse_overrides(TINY) == {
        "filters": [8, 16, 32],
        "deep_supr_num": 1,
        "patch_size": [16, 16, 16],
        "intensity_range": [0.0, 1.0],
    }
    assert recokd_table.parse_overrides(["--relation", "affinity"]) == {"relation": "affinity"}
    with pytest.raises(SystemExit):
        recokd_table.parse_overrides(["--epochs"])


def test_row_overrides_keep_the_teacher_full_width_and_point_the_student_at_it(tmp_path):
    args = _args(tmp_path)
    teacher = recokd_table.row_overrides("teacher", args, {})
    assert "width_divisor" not in teacher  # teacher.json's width_divisor 1 must win
    reco = recokd_table.row_overrides("recokd", args, {"lambda_max": 0.02})
    assert reco["width_divisor"] == 4 and reco["lambda_max"] == 0.02
    assert reco["teacher_ckpt"] == str(tmp_path / "out" / "teacher" / "models" / "model.pt")
    assert reco["bundle_root"] == str(tmp_path / "out" / "recokd")
    assert "teacher_ckpt" not in recokd_table.row_overrides("scratch", args, {})


def test_size_and_latency_on_a_tiny_volume(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(1, 1, 1), size=16, ndim=3)
    args = _args(tmp_path, dataset_dir=str(data), width_divisor=2)
    extra = recokd_table.parse_overrides(TINY)
    teacher = recokd_table.size_and_latency("teacher", args, extra)
    student = recokd_table.size_and_latency("recokd", args, extra)
    assert teacher["filters"] == [8, 16, 32] and student["filters"] == [8, 8, 16]
    assert student["params"] < teacher["params"]
    assert teacher["volume_shape"] == [16, 16, 16] and teacher["latency_s"] > 0


def _summary(liver: float, tumour: float) -> dict:
    classes = {n: {"dice_mean": d, "hd95_mean": 10 * d} for n, d in (("liver", liver), ("tumour", tumour))}
    return {"classes": classes, "mean_dice": (liver + tumour) / 2, "mean_hd95": 5 * (liver + tumour),
            "num_cases": 1, "empty_mask_convention": "conv"}  # fmt: skip


def test_write_table_rows_and_files(tmp_path):
    args = _args(tmp_path)
    results = {
        "teacher": {"summary": _summary(0.9, 0.5), "train_seconds": 600},
        "recokd": {"summary": _summary(0.8, float("nan")), "train_seconds": 300},
    }
    sizes = {
        "teacher": {"params": 5_601_545, "latency_s": 12.345, "volume_shape": [128, 128, 25], "filters": [32, 64]},
        "recokd": {"params": 350_921, "latency_s": 2.0, "volume_shape": [128, 128, 25], "filters": [8, 16]},
    }
    md = recokd_table.write_table(results, sizes, args)
    lines = md.splitlines()
    assert lines[0].startswith("| method | filters | params (M) | CPU s / volume | Dice liver | Dice tumour |")
    assert lines[2] == "| Teacher (DynUNet, full width) | [32,64] | 5.602 | 12.35 | 90.00 | 50.00 | 70.00 | 9.00 | 5.00 | 7.00 | 10.0 |"  # fmt: skip
    assert lines[3].startswith("| Student + ReCo-KD | [8,16] | 0.351 | 2.00 | 80.00 | – |")
    assert "128×128×25 voxels" in md and "students at 1/4 width" in md
    out = tmp_path / "out"
    assert (out / "table.md").read_text().strip() == md.strip()
    assert json.loads((out / "table.json").read_text())["sizes"]["recokd"]["params"] == 350_921
    assert (out / "table.csv").read_text().splitlines()[0].startswith("method,filters,params (M)")


def test_plan_trains_then_evaluates_each_row_and_recokd_waits_for_the_teacher(tmp_path):
    args = _args(tmp_path, rows=["teacher", "scratch", "recokd"])
    todo = {j.key: j for j in recokd_table.plan(args, {"lambda_max": 0.02})}
    assert list(todo) == ["teacher", "teacher/evaluate", "scratch", "scratch/evaluate", "recokd", "recokd/evaluate"]
    assert todo["recokd"].needs == ("teacher",) and todo["scratch"].needs == ()
    assert todo["recokd"].marker == tmp_path / "out" / "recokd" / "train_time.json"
    assert "teacher.json" in todo["teacher"].cmd[5] and "evaluate.json" in todo["teacher/evaluate"].cmd[5]
    assert todo["recokd"].cmd[todo["recokd"].cmd.index("--lambda_max") + 1] == "0.02"


def test_collect_leaves_out_unfinished_rows(tmp_path):
    args = _args(tmp_path, rows=["teacher", "recokd"])
    root = tmp_path / "out" / "teacher"
    (root / "eval").mkdir(parents=True)
    (root / "eval" / "metrics_summary.json").write_text(json.dumps(_summary(0.9, 0.5)))
    (root / "train_time.json").write_text(json.dumps({"seconds": 600.0, "command": []}))
    results = recokd_table.collect(args)
    assert list(results) == ["teacher"] and results["teacher"]["train_seconds"] == 600.0
