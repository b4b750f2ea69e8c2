"""The IAD comparison script: its plan (budgets x rows x seeds, overrides, the teacher first), resuming, the pipeline's
call, and the table from fake per-case metrics (no training)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from common.stats import paired_bootstrap, subject_scores
from scripts import iad_table, jobs, pipeline_plan
from scripts.pipeline_profiles import PROFILES
from tests.conftest import fake_metrics_summary


def _opt(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def _args(tmp_path: Path, *extra: str):
    base = ["--out", str(tmp_path / "out"), "--dataset_dir", "D", "--teacher_ckpt", "C", "--rows", "student_only", "kd"]
    return iad_table.parse_args([*base, "--seeds", "0", "1", "--epochs", "3", "--kis_epochs", "2", *extra])


def test_mean_and_std_over_seeds():
    assert iad_table.mean_std([0.5, 0.7], 2, 100) == "60.00 ± 10.00"
    assert iad_table.mean_std([0.5], 1) == "0.5"
    assert iad_table.mean_std([float("nan")]) == "–"


def test_plan_trains_a_teacher_per_budget_then_every_row_and_seed_with_its_overrides(tmp_path):
    overrides = ["--row_overrides", "kd:temperature=1", "teacher:learning_rate=0.002"]
    args = _args(tmp_path, "--budgets", "8", "all", "--teacher_epochs", "4", *overrides)
    todo = iad_table.plan(args)
    keys = [j.key for j in todo]
    runs = [f"{row}/seed{s}" for row in ("student_only", "kd") for s in (0, 1)]
    expected = []
    for budget in ("8", "all"):
        expected += [f"budget_{budget}/teacher", f"budget_{budget}/teacher/evaluate", f"budget_{budget}/teacher_cache"]
        expected += [f"budget_{budget}/{r}{e}" for r in runs for e in ("", "/evaluate")]
    assert keys == expected  # budgets x rows x seeds, each block's teacher and its cache first
    job = {j.key: j for j in todo}
    out = tmp_path / "out"

    teacher = job["budget_8/teacher"]
    assert "teacher_lora/configs/train.json" in teacher.cmd[5] and "evaluate.json" not in teacher.cmd[5]
    assert teacher.marker == out / "budget_8" / "teacher" / "train_time.json"
    assert _opt(teacher.cmd, "--bundle_root") == str(out / "budget_8" / "teacher")
    assert _opt(teacher.cmd, "--label_budget") == "8" and _opt(teacher.cmd, "--budget_seed") == "0"
    assert _opt(teacher.cmd, "--epochs") == "4" and _opt(teacher.cmd, "--image_size") == "128"
    assert _opt(teacher.cmd, "--teacher_ckpt") == "C" and _opt(teacher.cmd, "--learning_rate") == "0.002"
    assert "--unlabelled" not in teacher.cmd and "--temperature" not in teacher.cmd
    evaluate = job["budget_8/teacher/evaluate"]
    assert "evaluate.json" in evaluate.cmd[5] and evaluate.needs == ("budget_8/teacher",)
    assert evaluate.outputs == [out / "budget_8" / "teacher" / "eval" / "metrics_summary.json"]
    assert _opt(job["budget_all/teacher"].cmd, "--label_budget") == "$None"  # every label

    kd = job["budget_8/kd/seed1"]
    root = out / "budget_8" / "kd" / "seed1"
    assert kd.needs == ("budget_8/teacher_cache",) and kd.marker == root / "train_time.json"
    cache = job["budget_8/teacher_cache"]  # the teacher's logits of every training image, once, before the students
    assert cache.needs == ("budget_8/teacher",) and "cache.json" in cache.cmd[5]
    assert _opt(cache.cmd, "--ckpt_path") == str(out / "budget_8" / "teacher" / "models" / "model_merged.pt")
    assert _opt(cache.cmd, "--teacher_cache_dir") == _opt(kd.cmd, "--teacher_cache_dir")
    assert "iad_student/configs/train.json" in kd.cmd[5] and "kd.json" in kd.cmd[5]
    assert _opt(kd.cmd, "--bundle_root") == str(root) and _opt(kd.cmd, "--seed") == "1"
    assert _opt(kd.cmd, "--label_budget") == "8" and _opt(kd.cmd, "--unlabelled") == "rest"
    assert _opt(kd.cmd, "--teacher_ckpt") == "C"
    assert _opt(kd.cmd, "--teacher_adapter") == str(out / "budget_8" / "teacher" / "models" / "adapter.pt")
    assert _opt(kd.cmd, "--temperature") == "1" and _opt(kd.cmd, "--epochs") == "3"
    assert "--image_size" not in kd.cmd  # no profile, no option: the bundle's own
    kd_eval = job["budget_8/kd/seed1/evaluate"]
    assert kd_eval.needs == ("budget_8/kd/seed1",) and kd_eval.outputs == [root / "eval" / "metrics_summary.json"]
    assert "evaluate.json" in kd_eval.cmd[5] and kd.cmd[6:] == kd_eval.cmd[6:]
    alone = job["budget_8/student_only/seed0"]
    assert _opt(alone.cmd, "--unlabelled") == "none" and "--temperature" not in alone.cmd
    assert alone.needs == ()  # the student alone reads nothing of the teacher
    kd_all = job["budget_all/kd/seed0"]
    assert _opt(kd_all.cmd, "--label_budget") == "$None" and _opt(kd_all.cmd, "--unlabelled") == "none"
    assert kd_all.needs == ("budget_all/teacher_cache",)
    assert _opt(kd_all.cmd, "--teacher_adapter") == str(out / "budget_all" / "teacher" / "models" / "adapter.pt")

    single = iad_table.plan(_args(tmp_path, "--budgets", "8", "--single_seed_rows", "kd", "--no_teacher_row"))
    assert [j.key for j in single if j.key.startswith("budget_8/kd/")] == [
        "budget_8/kd/seed0",
        "budget_8/kd/seed0/evaluate",
    ]
    assert "budget_8/teacher/evaluate" not in {j.key for j in single} and "budget_8/teacher" in {j.key for j in single}


def test_self_kd_is_taught_by_the_student_alone_of_its_seed(tmp_path):
    args = _args(tmp_path, "--budgets", "8", "--rows", "student_only", "self_kd", "kd", "--single_seed_rows",
                 "student_only", "--row_overrides", "self_kd:temperature=1")  # fmt: skip
    job = {j.key: j for j in iad_table.plan(args)}
    out = tmp_path / "out" / "budget_8"
    for seed in (0, 1):  # seed 1 has no student alone: the first seed's teaches it
        run = job[f"budget_8/self_kd/seed{seed}"]
        assert run.needs == ("budget_8/student_only/seed0",)
        assert _opt(run.cmd, "--self_teacher_ckpt") == str(out / "student_only" / "seed0" / "models" / "model.pt")
        assert "kd.json" in run.cmd[5] and "self_kd.json" in run.cmd[5] and _opt(run.cmd, "--unlabelled") == "rest"
        assert _opt(run.cmd, "--temperature") == "1"
    assert "--self_teacher_ckpt" not in job["budget_8/kd/seed0"].cmd
    two = iad_table.plan(_args(tmp_path, "--budgets", "8", "--rows", "student_only", "self_kd"))
    assert {j.key: j.needs for j in two}["budget_8/self_kd/seed1"] == ("budget_8/student_only/seed1",)
    with pytest.raises(SystemExit):  # no student alone to learn from
        _args(tmp_path, "--rows", "self_kd", "kd")


def test_profiles_fill_the_sizes_that_options_leave_unset():
    args = iad_table.parse_args(["--profile", "gpu", "--iterations", "70"])
    gpu = iad_table.PROFILES["gpu"]
    assert args.iterations == 70 and args.image_size == gpu["image_size"] == 256 and args.teacher_image_size == 256
    assert args.budgets == gpu["budgets"] and args.seeds == gpu["seeds"] and args.rows == gpu["rows"]
    plain = iad_table.parse_args([])
    assert plain.rows == ["student_only", "kd", "kd_kas", "kis_only", "iad"] and plain.seeds == [0, 1, 2]
    assert plain.budgets == ["8", "32", "all"] and plain.image_size is None and plain.teacher_image_size == 128
    for bad in (["--budgets", "0"], ["--row_overrides", "nope:x=1"], ["--row_overrides", "kd:x"]):
        with pytest.raises(SystemExit):
            iad_table.parse_args(bad)
    both = iad_table.parse_row_overrides(["students:batch_size=8", "kd:temperature=1", "kd:logit_norm=zscore"])
    assert both == {"students": {"batch_size": 8}, "kd": {"temperature": 1, "logit_norm": "zscore"}}
    budget = iad_table.parse_args(["--profile", "budget", "--row_overrides", "kd:temperature=4"])
    assert budget.iterations == 465 and budget.budgets == ["8"] and budget.rows == ["student_only", "kd", "iad"]
    assert budget.row_overrides["kd"] == {"temperature": 4}  # the command line wins over the profile
    assert budget.row_overrides["teacher"]["learning_rate"] == 0.002 and budget.epochs == 30  # epochs unused


def test_the_pipeline_call_evaluates_its_teacher_and_keeps_its_layout(tmp_path):
    layout = pipeline_plan.Layout(tmp_path / "out", tmp_path / "data")
    step = {s.key: s for s in pipeline_plan.plan_steps(PROFILES["smoke"], layout, "py")}["iad"]
    args = iad_table.parse_args(step.cmd[2:])  # exactly the pipeline's options
    assert args.budgets == ["all"]
    todo = {j.key: j for j in iad_table.plan(args)}
    assert list(todo) == [
        "teacher",
        "student_only/seed0",
        "student_only/seed0/evaluate",
        "iad/seed0",
        "iad/seed0/evaluate",
    ]
    assert todo["teacher"].outputs == [layout.iad / "teacher" / "metrics_summary.json"]
    assert _opt(todo["teacher"].cmd, "--bundle_root") == str(layout.teacher)
    iad = todo["iad/seed0"]
    assert _opt(iad.cmd, "--bundle_root") == str(layout.iad / "iad" / "seed0")  # where the pipeline predicts from
    assert _opt(iad.cmd, "--teacher_adapter") == str(layout.teacher / "models" / "adapter.pt") and iad.needs == ()
    assert _opt(iad.cmd, "--label_budget") == "$None" and _opt(iad.cmd, "--unlabelled") == "none"
    assert args.teacher_time == str(layout.markers / "teacher.json") and args.threads == 1
    with pytest.raises(SystemExit):
        iad_table.parse_args([*step.cmd[2:], "--budgets", "8"])
    _write_run(layout.iad / "iad" / "seed0", 0.1, 0, 30.0)
    _write_run(layout.iad, 0.2, 0, None, folder="teacher")  # the teacher's evaluation: OUT/teacher/metrics_*
    layout.markers.mkdir(parents=True)
    (layout.markers / "teacher.json").write_text(json.dumps({"seconds": 600.0, "command": []}))  # the pipeline's
    results = iad_table.collect(args)
    assert list(results) == ["all"] and list(results["all"]) == ["iad", "teacher"]
    assert results["all"]["teacher"][0]["train_seconds"] == 600.0 and results["all"]["iad"][0]["train_seconds"] == 30.0


def test_resuming_skips_the_finished_jobs(tmp_path, capsys):
    args = _args(tmp_path, "--budgets", "8")
    todo = iad_table.plan(args)
    teacher = tmp_path / "out" / "budget_8" / "teacher"
    (teacher / "eval").mkdir(parents=True)
    (teacher / "train_time.json").write_text(json.dumps({"seconds": 60.0, "command": []}))
    assert [j.key for j in todo if j.done] == ["budget_8/teacher"]
    (teacher / "eval" / "metrics_summary.json").write_text("{}")
    (teacher / "cache_filled.json").write_text(json.dumps({"seconds": 5.0}))
    done = [j.key for j in iad_table.plan(args) if j.done]
    assert done == ["budget_8/teacher", "budget_8/teacher/evaluate", "budget_8/teacher_cache"]
    for job in todo:  # every run finished: nothing is left to run
        for path in [*job.outputs, *([job.marker] if job.marker else [])]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"seconds": 1.0}))
    assert jobs.run(iad_table.plan(args), env={}) == {}
    assert f"{len(todo)} steps: {len(todo)} done already, 0 to run" in capsys.readouterr().out
    iad_table.main(
        ["--out", args.out, "--dataset_dir", "D", "--budgets", "8", "--rows", "kd", "--seeds", "5", "--plan"]
    )
    printed = capsys.readouterr().out
    assert (
        "[done] budget_8/teacher\n" in printed and "[todo] budget_8/kd/seed5  (after budget_8/teacher_cache)" in printed
    )


CLASSES = ["optic disc", "optic cup"]


def _write_run(
    root: Path, shift: float, seed: int, seconds: float | None, folder: str = "eval", subject: str = "s"
) -> None:
    """A finished run's files: per-case metrics of 4 subjects (``<subject>1`` … ``<subject>4``) x 2 slices (Dice of the student alone plus ``shift``;
    HD95 = 10 x (1 - Dice); the cup absent from slice 1 of subject 4), its summary (both in ``root/folder``) and its
    training marker."""
    (root / folder).mkdir(parents=True)
    head = ["case"] + [f"{m}_{c}" for m in ("dice", "hd95", "sensitivity") for c in CLASSES] + ["subject"]
    lines = [head]
    for i in range(1, 5):
        for j in (1, 2):
            dice = [0.5 + 0.1 * i - 0.05 * seed + shift, 0.3 + 0.05 * j + shift]
            if i == 4 and j == 1:
                dice[1] = math.nan
            hd = [10 * (1 - d) for d in dice]
            cells = (
                [f"{subject}{i}_{j}"] + ["nan" if math.isnan(v) else v for v in dice + hd + dice] + [f"{subject}{i}"]
            )
            lines.append(cells)
    with open(root / folder / "metrics_per_case.csv", "w", newline="") as f:
        csv.writer(f).writerows(lines)
    (root / folder / "metrics_summary.json").write_text(json.dumps(fake_metrics_summary(0.8, 0.2)))
    if seconds is not None:
        (root / "train_time.json").write_text(json.dumps({"seconds": seconds, "command": []}))


def test_collect_and_table_give_the_paired_bootstrap_of_common_stats(tmp_path, capsys):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    labels = {"0": "background", "1": CLASSES[0], "2": CLASSES[1]}
    info = {
        "dim": 2,
        "channel_names": ["RGB"],
        "labels": labels,
        "normalisation": {"method": "range", "range": [0, 255]},
    }
    (dataset / "dataset.json").write_text(json.dumps(info))
    args = iad_table.parse_args(
        [
            "--out",
            str(tmp_path / "out"),
            "--dataset_dir",
            str(dataset),
            "--budgets",
            "8",
            "--rows",
            "student_only",
            "kd",
        ]
        + ["--seeds", "0", "1", "--n_boot", "500", "--threads", "2"]
    )
    block = tmp_path / "out" / "budget_8"
    for seed in (0, 1):
        _write_run(block / "student_only" / f"seed{seed}", 0.0, seed, 60.0 * (seed + 1))
    _write_run(block / "kd" / "seed0", 0.1, 0, None)  # kd seed 1 has not finished
    _write_run(block / "teacher", 0.2, 0, 600.0)

    results = iad_table.collect(args)
    assert "[miss] budget_8/kd seed 1" in capsys.readouterr().out
    runs = results["8"]
    assert [len(runs[m]) for m in ("student_only", "kd", "teacher")] == [2, 1, 1]
    assert math.isnan(runs["kd"][0]["train_seconds"]) and runs["teacher"][0]["train_seconds"] == 600.0

    from common.data.dataset_info import load_dataset_info

    classes = load_dataset_info(dataset).class_names
    sizes = {"student": {"params": 7.87e6, "latency_ms": 12.0, "input_size": 128},
             "teacher": {"params": 9.7e6, "latency_ms": 300.0, "input_size": 128}}  # fmt: skip
    md = iad_table.write_table(results, sizes, classes, args)
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in md.splitlines()[4:7]}

    def expected(metric: str, names: list[str], higher: bool = True) -> dict:
        scores = {m: {r["seed"]: subject_scores(r["per_case"], metric, names) for r in rs} for m, rs in runs.items()}
        return paired_bootstrap(scores, "student_only", 500, 0, 0.95, higher)

    dice, hd95, cup = expected("dice", CLASSES), expected("hd95", CLASSES, False), expected("dice", ["optic cup"])
    # by hand: subject i, slice j, seed k: disc 0.5 + 0.1 i - 0.05 k, cup 0.3 + 0.05 j (none on s4 slice 1)
    # subject means over slices and seeds: (1.7 + 0.2 i) / 4 for i = 1..3; s4: ((0.9 + 0.65) + (0.85 + 0.625)) / 4
    assert dice["student_only"]["mean"] == pytest.approx((0.475 + 0.525 + 0.575 + 0.75625) / 4)
    student, kd, teacher = rows["Student only"], rows["KD (Hinton)"], rows["Teacher (LiteMedSAM + LoRA)"]
    lo, hi = dice["student_only"]["ci"]
    assert student[1:4] == ["2", "4", f"{100 * dice['student_only']['mean']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"]
    assert student[5] == f"{100 * cup['student_only']['mean']:.2f} [{100 * cup['student_only']['ci'][0]:.2f}, " \
        f"{100 * cup['student_only']['ci'][1]:.2f}]"  # fmt: skip
    assert student[6:8] == ["–", "–"] and student[-1] == "1.5 ± 0.5"  # no difference to itself; minutes over seeds
    assert student[-3:-1] == ["7.87", "12.0"] and teacher[-3:-1] == ["9.70", "300.0"]
    # kd is the student + 0.1 on every slice of seed 0; seeds are averaged inside a subject first
    lo, hi = dice["kd"]["difference_ci"]
    assert kd[6] == f"{100 * dice['kd']['difference']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    assert kd[7] == dice["kd"]["verdict"] == "better" and kd[1] == "1" and kd[-1] == "–"
    assert teacher[6].startswith("+21.41") and teacher[7] == "better" and teacher[-1] == "10.0"
    h = hd95["kd"]
    assert kd[8] == f"{h['mean']:.2f} [{h['ci'][0]:.2f}, {h['ci'][1]:.2f}]" and h["verdict"] == "better"

    header = md.splitlines()[2]
    assert "| Dice optic disc % | Dice optic cup % |" in header and "liver" not in md
    assert "HD95 mm [95% CI]" in header and "HD95 in mm" in md
    pixels = iad_table.write_table(results, sizes, classes, args, hd95_unit="px")  # a dataset without spacing
    assert "HD95 px [95% CI]" in pixels.splitlines()[2] and "HD95 in px" in pixels and " mm" not in pixels
    md = iad_table.write_table(results, sizes, classes, args)
    assert md.splitlines()[0].startswith("## Label budget: 8 labelled training subjects")
    assert "percentile bootstrap of 500 resamples" in md and "Empty masks: conv." in md
    assert (tmp_path / "out" / "table.md").read_text().strip() == md.strip()
    with open(tmp_path / "out" / "table.csv") as f:
        records = list(csv.DictReader(f))
    assert [r["method"] for r in records] == ["student_only", "kd", "teacher"] and records[1]["verdict"] == "better"
    assert float(records[1]["dice_diff_lo"]) == pytest.approx(dice["kd"]["difference_ci"][0])
    assert float(records[0]["dice_optic cup"]) == pytest.approx(cup["student_only"]["mean"])
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["blocks"]["8"]["statistics"]["kd"]["dice"]["mean"] == pytest.approx(dice["kd"]["mean"])
    assert table["results"]["student_only"][1]["train_seconds"] == 120.0  # what pipeline_report.py reads
    assert table["classes"] == CLASSES and table["sizes"]["teacher"]["params"] == 9.7e6


def test_iterations_give_every_row_the_same_number_of_steps(tmp_path):
    """With --iterations, a row that sees the unlabelled images (longer epochs) gets fewer epochs than the student
    alone, so both make about the same number of optimiser steps; KIS takes --kis_fraction of them."""
    from common.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", num_items=(8, 1, 1), size=16)
    args = _args(tmp_path, "--budgets", "2", "--iterations", "12", "--row_overrides", "students:batch_size=2")
    args.dataset_dir = str(data)
    job = {j.key: j for j in iad_table.plan(args)}
    alone, kd = job["budget_2/student_only/seed0"], job["budget_2/kd/seed0"]
    assert _opt(alone.cmd, "--epochs") == "12"  # 2 labelled items, batch 2: 1 step per epoch
    # kd: 6 unlabelled + the 2 labelled repeated 3 times = 12 items, 6 steps per epoch: 2 epochs, KIS 1 of them
    assert _opt(kd.cmd, "--epochs") == "2" and _opt(kd.cmd, "--kis_epochs") == "1"


def _validated(root: Path, mean_dice: float) -> None:
    (root / "eval_validation").mkdir(parents=True, exist_ok=True)
    (root / "eval_validation" / "metrics_summary.json").write_text(json.dumps({"mean_dice": mean_dice}))


def test_grid_trains_variants_on_validation_then_the_chosen_one_is_tested_and_reported(tmp_path, capsys):
    """A --grid row: every combination trains and is evaluated on validation only; once all are validated, the one
    with the best seed-mean validation Dice is evaluated on test and reported under the row's own name."""
    from common.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", num_items=(8, 1, 1), size=16)
    grid = ["--grid", "iad:alpha=0.02,0.2", "iad:kis_fraction=0.5,1"]
    args = _args(tmp_path, "--budgets", "2", "--rows", "student_only", "iad", "--iterations", "12", *grid,
                 "--row_overrides", "students:batch_size=2", "iad:alpha=5", "iad:gamma=0.3")  # fmt: skip
    args.dataset_dir = str(data)
    names = [v.name for v in iad_table.row_variants("iad", args)]
    assert names == ["iad_alpha0.02_kis_fraction0.5", "iad_alpha0.02_kis_fraction1", "iad_alpha0.2_kis_fraction0.5",
                     "iad_alpha0.2_kis_fraction1"]  # fmt: skip
    job = {j.key: j for j in iad_table.plan(args)}
    out = tmp_path / "out" / "budget_2"
    first = job["budget_2/iad_alpha0.02_kis_fraction0.5/seed1"]
    assert _opt(first.cmd, "--alpha") == "0.02" and _opt(first.cmd, "--gamma") == "0.3"  # the grid wins
    assert "--kis_fraction" not in first.cmd  # the table's key: KIS's share of the 2 epochs of 6 steps
    assert _opt(first.cmd, "--epochs") == "2" and _opt(first.cmd, "--kis_epochs") == "1"
    assert _opt(job["budget_2/iad_alpha0.02_kis_fraction1/seed0"].cmd, "--kis_epochs") == "1"  # at most epochs - 1
    assert _opt(first.cmd, "--bundle_root") == str(out / "iad_alpha0.02_kis_fraction0.5" / "seed1")
    validate = job["budget_2/iad_alpha0.02_kis_fraction0.5/seed1/validate"]
    assert _opt(validate.cmd, "--eval_split") == "validation" and validate.needs == (first.key,)
    assert validate.outputs == [
        out / "iad_alpha0.02_kis_fraction0.5" / "seed1" / "eval_validation" / "metrics_summary.json"
    ]
    assert not any(k.startswith("budget_2/iad") and k.endswith("/evaluate") for k in job)  # not on test yet
    assert "budget_2/student_only/seed0/evaluate" in job

    assert iad_table.choose_variants(args)[0] is None
    for name, scores in zip(names, [(0.80, 0.84), (0.90, 0.70), (0.83, 0.83), (0.5, 0.5)]):
        for seed, score in enumerate(scores):
            _validated(out / name / f"seed{seed}", score)
    chosen, scores = iad_table.choose_variants(args)
    assert chosen["budget_2/"]["iad"].name == "iad_alpha0.2_kis_fraction0.5"  # 0.83 beats 0.82, 0.80 and 0.5
    assert scores["budget_2/"]["iad"]["iad_alpha0.02_kis_fraction1"] == pytest.approx(0.80)
    stage2 = {j.key for j in iad_table.plan(args, chosen)} - set(job)
    assert stage2 == {"budget_2/iad_alpha0.2_kis_fraction0.5/seed0/evaluate",
                      "budget_2/iad_alpha0.2_kis_fraction0.5/seed1/evaluate"}  # fmt: skip

    for seed in (0, 1):
        _write_run(out / "student_only" / f"seed{seed}", 0.0, seed, 60.0)
        _write_run(out / "iad_alpha0.2_kis_fraction0.5" / f"seed{seed}", 0.05, seed, 60.0)
    assert "iad" not in iad_table.collect(args)["2"]  # no choice given: the row waits for it
    assert "no variant chosen on validation yet" in capsys.readouterr().out
    results = iad_table.collect(args, chosen)
    assert [r["per_case"] for r in results["2"]["iad"]] == [
        str(out / "iad_alpha0.2_kis_fraction0.5" / f"seed{s}" / "eval" / "metrics_per_case.csv") for s in (0, 1)
    ]
    lines = iad_table._choice_lines(args, (chosen, scores))
    assert (
        "| IAD (KIS → KAS) | iad_alpha0.2_kis_fraction0.5 | alpha 0.2, kis_fraction 0.5 | 2 | 83.00 **chosen** |"
        in lines
    )
    assert "| IAD (KIS → KAS) | iad_alpha0.02_kis_fraction1 | alpha 0.02, kis_fraction 1 | 2 | 80.00 |" in lines

    # a combination equal to what the row trains with anyway keeps the row's name: its finished runs are reused
    plain = _args(tmp_path, "--budgets", "2", "--rows", "iad", "--grid", "iad:alpha=0.2,1", "iad:gamma=0.1")
    assert [v.name for v in iad_table.row_variants("iad", plain)] == ["iad", "iad_alpha1"]
    assert [v.settings for v in iad_table.row_variants("iad", plain)][0] == {"alpha": 0.2, "gamma": 0.1}
    with pytest.raises(SystemExit):  # a grid on a row that is not in the table
        _args(tmp_path, "--grid", "iad:alpha=0.1,1")
    with pytest.raises(SystemExit):
        _args(tmp_path, "--rows", "kd", "--grid", "kd:temperature")


def test_folds_give_each_fold_its_teacher_and_choice_and_pool_the_test_subjects(tmp_path, capsys):
    """Cross-validation by subject (BraTS 2D slices of 6 patients): each fold trains its own teacher, cache and
    students with ``--fold k``, chooses a gridded row on its own validation subjects, and the table pools the folds'
    disjoint test subjects into one block (seeds counted once)."""
    from common.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", num_items=(6, 1, 1), size=16)
    items = json.loads((data / "datalist.json").read_text())["training"]
    folds = {f"fold_{k}": [{**i, "subject": f"p{k}"} for i in items[2 * k : 2 * k + 2]] for k in range(3)}
    (data / "datalist.json").write_text(json.dumps(folds))
    args = _args(tmp_path, "--dataset_dir", str(data), "--budgets", "all", "--grid", "kd:temperature=1,4",
                 "--n_boot", "200")  # fmt: skip
    assert args.folds == [0, 1, 2]
    job = {j.key: j for j in iad_table.plan(args)}
    out = tmp_path / "out"
    for k in range(3):
        teacher, cache = job[f"fold{k}/budget_all/teacher"], job[f"fold{k}/budget_all/teacher_cache"]
        assert _opt(teacher.cmd, "--fold") == str(k) and _opt(cache.cmd, "--fold") == str(k)
        assert _opt(teacher.cmd, "--bundle_root") == str(out / f"fold{k}" / "budget_all" / "teacher")
        kd = job[f"fold{k}/budget_all/kd_temperature1/seed1"]
        assert _opt(kd.cmd, "--fold") == str(k) and kd.needs == (f"fold{k}/budget_all/teacher_cache",)
        assert _opt(kd.cmd, "--teacher_adapter") == str(out / f"fold{k}/budget_all/teacher/models/adapter.pt")
        assert _opt(job[f"fold{k}/budget_all/student_only/seed0"].cmd, "--fold") == str(k)
    assert not any(key.startswith("budget_") for key in job)

    for k in range(3):  # folds 0 and 2 prefer T = 1 on their validation subjects, fold 1 T = 4
        block = out / f"fold{k}" / "budget_all"
        for seed in (0, 1):
            _validated(block / "kd_temperature1" / f"seed{seed}", 0.9 if k != 1 else 0.5)
            _validated(block / "kd" / f"seed{seed}", 0.7)  # kd.json's T = 4 keeps the plain name
    chosen, scores = iad_table.choose_variants(args)
    assert [chosen[f"fold{k}/budget_all/"]["kd"].name for k in range(3)] == [
        "kd_temperature1", "kd", "kd_temperature1"
    ]  # fmt: skip
    lines = iad_table._choice_lines(args, (chosen, scores))
    assert "## Chosen on validation (fold 1, label budget all): the settings of the gridded rows, not on test" in lines

    for k in range(3):
        block = out / f"fold{k}" / "budget_all"
        for seed in (0, 1):
            _write_run(block / "student_only" / f"seed{seed}", 0.0, seed, 60.0, subject=f"f{k}s")
            _write_run(block / chosen[f"fold{k}/budget_all/"]["kd"].name / f"seed{seed}", 0.02 * k, seed, 60.0,
                       subject=f"f{k}s")  # fmt: skip
        _write_run(block / "teacher", 0.2, 0, 600.0, subject=f"f{k}s")
    results = iad_table.collect(args, chosen)
    runs = results["all"]
    assert [len(runs[m]) for m in ("student_only", "kd", "teacher")] == [6, 6, 3]
    assert {(r["fold"], r["seed"]) for r in runs["kd"]} == {(k, s) for k in range(3) for s in (0, 1)}
    stats = iad_table.block_statistics(runs, CLASSES, args)
    pooled = {m: {} for m in runs}
    for m, rs in runs.items():
        for r in rs:
            pooled[m].setdefault(r["seed"], {}).update(subject_scores(r["per_case"], "dice", CLASSES))
    assert len(pooled["kd"][1]) == 12  # 3 folds x 4 test subjects, each once
    expected = paired_bootstrap(pooled, "student_only", 200, 0, 0.95, True)
    assert stats["kd"]["dice"]["subjects"] == 12
    assert stats["kd"]["dice"]["difference"] == pytest.approx(expected["kd"]["difference"])
    assert stats["kd"]["dice"]["difference"] == pytest.approx((0.0 + 0.02 + 0.04) / 3)  # by hand: the folds' shifts
    sizes = {"student": {"params": 1e6, "latency_ms": 1.0, "input_size": 16},
             "teacher": {"params": 2e6, "latency_ms": 2.0, "input_size": 16}}  # fmt: skip
    md = iad_table.write_table(results, sizes, CLASSES, args)
    assert "3-fold cross-validation by subject, every subject tested once, a teacher per fold" in md.splitlines()[0]
    kd_row = next(line for line in md.splitlines() if line.startswith("| KD (Hinton)"))
    assert kd_row.split(" | ")[1:3] == ["2", "12"]  # seeds, subjects

    with pytest.raises(SystemExit):  # a fold the datalist does not have
        _args(tmp_path, "--dataset_dir", str(data), "--folds", "3")
    with pytest.raises(SystemExit):  # one given teacher cannot serve the folds
        _args(tmp_path, "--dataset_dir", str(data), "--teacher_root", "T")


def test_with_the_self_kd_control_the_sam_taught_rows_get_their_difference_to_it(tmp_path):
    """Row self_kd in the table: a column with each SAM-taught row's paired difference to it (by hand: kd is the
    student + 0.10 on every slice, self_kd + 0.04, so kd − self_kd is +6.00 Dice on every subject)."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    info = {"dim": 2, "channel_names": ["US"], "labels": {"0": "background", "1": CLASSES[0], "2": CLASSES[1]},
            "normalisation": {"method": "range", "range": [0, 255]}}  # fmt: skip
    (dataset / "dataset.json").write_text(json.dumps(info))
    args = iad_table.parse_args(["--out", str(tmp_path / "out"), "--dataset_dir", str(dataset), "--budgets", "8",
                                 "--rows", "student_only", "self_kd", "kd", "--seeds", "0", "--n_boot", "200",
                                 "--no_teacher_row"])  # fmt: skip
    block = tmp_path / "out" / "budget_8"
    for row, shift in (("student_only", 0.0), ("self_kd", 0.04), ("kd", 0.1)):
        _write_run(block / row / "seed0", shift, 0, 60.0)
    sizes = {"student": {"params": 1e6, "latency_ms": 1.0, "input_size": 16},
             "teacher": {"params": 2e6, "latency_ms": 2.0, "input_size": 16}}  # fmt: skip
    md = iad_table.write_table(iad_table.collect(args), sizes, CLASSES, args)
    lines = md.splitlines()
    head = [c.strip() for c in lines[2].strip("| ").split(" | ")]
    column = head.index("Δ Dice vs self-KD [95% CI]")
    rows = {
        line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("| ").split(" | ")] for line in lines[4:7]
    }
    assert rows["KD (Hinton)"][column] == "+6.00 [+6.00, +6.00] better"
    assert rows["Self-KD (student teacher, no SAM)"][column] == "–" and rows["Student only"][column] == "–"
    assert "what the SAM teacher adds beyond self-training" in md
    with open(tmp_path / "out" / "table.csv") as f:
        records = {r["method"]: r for r in csv.DictReader(f)}
    assert float(records["kd"]["dice_diff_self_kd"]) == pytest.approx(0.06)
    plain = iad_table.write_table({"8": {k: v for k, v in iad_table.collect(args)["8"].items() if k != "self_kd"}},
                                  sizes, CLASSES, args)  # fmt: skip
    assert "self-KD" not in plain  # no control row, no column
