"""The TS-KD table script: which runs it plans (and what each reads), skipping, aggregation and files (no training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from scripts import jobs

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
spec = importlib.util.spec_from_file_location("tskd_table", REPO / "scripts" / "tskd_table.py")
tskd_table = sys.modules["tskd_table"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tskd_table)


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(out=str(tmp_path), dataset_dir="D", synthetic_dir="S", teacher_ckpt="T", base_teacher_ckpt=None,
                budgets=["20", "all"], transfer_budget="20", seeds=[0, 1, 2], pretrain_seeds=[0],
                pretrain_iterations=600, finetune_iterations=300, threads=1, transfer_seeds=None)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_plan_shares_one_pretraining_per_variant_across_seeds_and_budgets(tmp_path):
    jobs = {j.name: j for j in tskd_table.plan(_args(tmp_path), {"student_preset": "test"})}
    pre = sorted(n for n in jobs if n.startswith("pretrain_"))
    assert pre == ["pretrain_takd_s0", "pretrain_tskd_both_s0", "pretrain_tskd_real_s0", "pretrain_tskd_s0"]
    assert len(jobs) == 4 + 3 * 2 * 3 + 2 * 3  # 3 methods x 2 budgets x 3 seeds, + 2 transfer sets x 3 seeds
    # transfer sets: synthetic, real (training slices without labels), both; the teacher: tuned, or SAM's own
    assert jobs["pretrain_tskd_s0"].overrides["transfer_dirs"] == ["S"]
    assert jobs["pretrain_tskd_real_s0"].overrides["transfer_dirs"] == ["D"]
    assert jobs["pretrain_tskd_both_s0"].overrides["transfer_dirs"] == ["S", "D"]
    assert jobs["pretrain_tskd_s0"].overrides["teacher_ckpt"] == "T"
    assert jobs["pretrain_takd_s0"].configs == ["pretrain.json", "task_agnostic.json"]
    assert "teacher_ckpt" not in jobs["pretrain_takd_s0"].overrides
    # fine-tuning reads its variant's pre-trained student; scratch reads none; 'all' is every labelled slice
    ft = jobs["tskd_all_s2"]
    assert ft.needs == ["pretrain_tskd_s0"] and ft.overrides["seed"] == 2 and ft.overrides["num_labels"] == "$None"
    assert ft.overrides["pretrained"] == str(tmp_path / "pretrain_tskd_s0" / "models" / "pretrain" / "pretrained.pt")
    assert (
        jobs["scratch_20_s1"].overrides["pretrained"] == "$None" and jobs["scratch_20_s1"].overrides["num_labels"] == 20
    )
    assert jobs["takd_20_s0"].overrides["student_preset"] == "test"  # unknown options reach every run
    assert "tskd_real_all_s0" not in jobs  # the transfer-set comparison is at one budget
    order = [j.name for j in tskd_table.plan(_args(tmp_path), {})]
    assert order[:2] == ["pretrain_tskd_s0", "pretrain_takd_s0"]  # the main table's pre-trainings start first
    for i, name in enumerate(order):  # a run only ever waits for a pre-training queued before it
        assert all(order.index(n) < i for n in jobs[name].needs), name
    first_transfer = order.index("pretrain_tskd_real_s0")
    assert all(not n.startswith(("tskd_real", "tskd_both")) for n in order[:first_transfer])  # main table first


def test_plan_with_a_pretraining_per_seed(tmp_path):
    jobs = {j.name: j for j in tskd_table.plan(_args(tmp_path, pretrain_seeds=[0, 1, 2], transfer_budget=None), {})}
    assert sorted(n for n in jobs if n.startswith("pretrain_tskd_s")) == [f"pretrain_tskd_s{s}" for s in range(3)]
    assert jobs["tskd_20_s1"].needs == ["pretrain_tskd_s1"]


def test_finished_runs_are_skipped(tmp_path):
    run = tskd_table.plan(_args(tmp_path), {})[0]
    run.root.mkdir(parents=True)
    (run.root / "train_time.json").write_text(json.dumps({"train_seconds": 42.0}))  # as the table wrote it before
    assert jobs.run(run.jobs(), env={}) == {}  # no subprocess: it would fail with an empty environment
    assert tskd_table.train_seconds(run.root) == 42.0


def test_transfer_rows_may_use_fewer_seeds(tmp_path):
    names = {j.name for j in tskd_table.plan(_args(tmp_path, transfer_seeds=[0]), {})}
    assert {"tskd_real_20_s0", "tskd_both_20_s0"} <= names and "tskd_real_20_s1" not in names
    assert "tskd_20_s2" in names


def _summary(liver: float, tumour: float) -> dict:
    classes = {n: {"dice_mean": d, "hd95_mean": 10 * d} for n, d in (("liver", liver), ("tumour", tumour))}
    return {"classes": classes, "mean_dice": (liver + tumour) / 2, "mean_hd95": 5 * (liver + tumour),
            "empty_mask_convention": "conv", "num_cases": 25}  # fmt: skip


def test_collect_and_write_table(tmp_path):
    args = _args(tmp_path, seeds=[0, 1])
    for name, (liver, tumour) in {
        "tskd_20_s0": (0.8, 0.2),
        "tskd_20_s1": (0.9, 0.4),
        "scratch_all_s0": (0.5, 0.1),
    }.items():
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "metrics_summary.json").write_text(json.dumps(_summary(liver, tumour)))
        (tmp_path / name / "train_time.json").write_text(json.dumps({"train_seconds": 120.0}))
    results = tskd_table.collect(args)
    assert [len(v) for v in results.values()] == [1, 2] and list(results) == [("scratch", "all"), ("tskd", "20")]
    md = tskd_table.write_table(results, {"params": 6.4e6, "latency_ms": 9.0, "size": 128}, args)
    lines = md.splitlines()
    assert lines[2].startswith("| ViT-Tiny from scratch | all | 1 | 50.00 | 10.00 | 30.00 |")
    assert lines[3].startswith(
        "| TS-KD (synthetic transfer set) | 20 | 2 | 85.00 ± 5.00 | 30.00 ± 10.00 | 57.50 ± 7.50 |"
    )
    assert "6.40 M parameters, 9.0 ms per 128×128 slice" in md
    assert (tmp_path / "table.md").read_text().strip() == md.strip()
    assert json.loads((tmp_path / "table.json").read_text())["results"]["tskd/20"][1]["seed"] == 1


def test_a_bad_budget_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="number of slices or 'all'"):
        tskd_table._budget("twenty")


def test_a_fine_tuning_is_a_training_then_an_evaluation_of_its_own_model(tmp_path):
    runs = {r.name: r for r in tskd_table.plan(_args(tmp_path), {})}
    train, evaluate = runs["tskd_20_s1"].jobs()
    assert train.key == "tskd_20_s1" and train.needs == ("pretrain_tskd_s0",)
    assert train.marker == tmp_path / "tskd_20_s1" / "train_time.json"
    assert "--pretrained" in train.cmd and "--pretrained" not in evaluate.cmd  # evaluate.json loads model.pt
    assert evaluate.needs == ("tskd_20_s1",) and "evaluate.json" in evaluate.cmd[5]
    assert evaluate.outputs == [tmp_path / "tskd_20_s1" / "eval" / "metrics_summary.json"]
    assert len(runs["pretrain_tskd_s0"].jobs()) == 1  # a pre-training is not evaluated
