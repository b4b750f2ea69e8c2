"""The recokd_student table script: overrides per run, planning over folds x rows x seeds, patient-disjoint folds,
timing on a tiny task, and the files it writes from fake results (no training)."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest

from common.data.datalist import load_datalist
from common.data.synthetic import make_synthetic_dataset
from common.stats import paired_bootstrap
from scripts import recokd_table

Run = recokd_table.Run

TINY = ["--filters", "[8,16,32]", "--deep_supr_num", "1", "--patch_size", "[16,16,16]", "--intensity_range=[0.0,1.0]"]
CLASSES = ["necrosis", "oedema", "non-enhancing tumour", "enhancing tumour"]
REGIONS = ["WT", "TC", "ET"]


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(out=str(tmp_path / "out"), dataset_dir="data/x", seeds=[0], epochs=20, batches_per_epoch=10,
                teacher_epochs=None, width_divisors=[4], threads=1, latency_runs=2, rows=list(recokd_table.ROWS),
                folds=[], lambda_max=None, warmup_fraction=None, bundle_overrides={}, n_boot=200,
                bootstrap_seed=0, single_seed_rows=[])  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def _fold_dataset(root: Path, subjects: int = 6, folds: int = 3) -> Path:
    """A synthetic 3D dataset of ``subjects`` patients dealt into ``folds`` fold lists (``fold_k``)."""
    data = make_synthetic_dataset(root, num_items=(subjects, 0, 0), size=8, ndim=3)
    items = json.loads((data / "datalist.json").read_text())["training"]
    (data / "datalist.json").write_text(json.dumps({f"fold_{k}": items[k::folds] for k in range(folds)}))
    return data


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
    teacher = recokd_table.run_overrides(Run("teacher", None, 0), args, {})
    assert "width_divisor" not in teacher  # teacher.json's width_divisor 1 must win
    reco = recokd_table.run_overrides(Run("recokd", None, 0, 4), args, {"lambda_max": 0.02})
    assert reco["width_divisor"] == 4 and reco["lambda_max"] == 0.02
    assert reco["teacher_ckpt"] == str(tmp_path / "out" / "teacher" / "models" / "model.pt")
    assert reco["bundle_root"] == str(tmp_path / "out" / "w4" / "recokd" / "seed0")
    assert "teacher_ckpt" not in recokd_table.run_overrides(Run("student_only", None, 0, 4), args, {})
    # a fold: every run of it reads the fold's lists, and a student its fold's teacher
    folded = recokd_table.run_overrides(Run("sard_only", 2, 1, 8), args, {})
    assert folded["fold"] == 2 and folded["seed"] == 1 and folded["width_divisor"] == 8
    assert folded["teacher_ckpt"] == str(tmp_path / "out" / "fold2" / "teacher" / "models" / "model.pt")
    assert "fold" not in reco


def test_variants_name_their_runs_by_the_values_that_differ_from_the_bundle():
    assert recokd_table.Variant().suffix == "" and recokd_table.Variant(0.01, 0.6).suffix == ""  # train.json's
    assert recokd_table.Variant(0.1).suffix == "_lam0.1" and recokd_table.Variant(1.0, 0.3).suffix == "_lam1_wu0.3"
    assert Run("recokd", 0, 1, 8, recokd_table.Variant(0.1)).key == "fold0/w8/recokd_lam0.1/seed1"
    assert Run("student_only", None, 0, 4, recokd_table.Variant(0.1)).key == "w4/student_only/seed0"  # no λ
    assert recokd_table.Variant(0.0).overrides == {"lambda_max": 0.0}  # 0 is a value, not "unset"


def test_size_and_latency_on_a_tiny_volume(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_items=(1, 1, 1), size=16, ndim=3)
    args = _args(tmp_path, dataset_dir=str(data), width_divisors=[2])
    extra = recokd_table.parse_overrides(TINY)
    teacher = recokd_table.size_and_latency("teacher", args, extra)
    student = recokd_table.size_and_latency("recokd", args, extra)
    assert teacher["filters"] == [8, 16, 32] and student["filters"] == [8, 8, 16]
    assert student["params"] < teacher["params"]
    assert teacher["volume_shape"] == [16, 16, 16] and teacher["latency_s"] > 0
    assert recokd_table.size_and_latency("recokd", args, extra, 4)["filters"] == [8, 8, 8]


def _summary(liver: float, tumour: float) -> dict:
    classes = {n: {"dice_mean": d, "hd95_mean": 10 * d} for n, d in (("liver", liver), ("tumour", tumour))}
    return {"classes": classes, "mean_dice": (liver + tumour) / 2, "mean_hd95": 5 * (liver + tumour),
            "num_cases": 1, "empty_mask_convention": "conv"}  # fmt: skip


def _run(summary: dict, seconds: float) -> list[dict]:
    return [{"fold": None, "seed": 0, "summary": summary, "per_case": None, "train_seconds": seconds}]


def test_write_table_rows_and_files(tmp_path):
    args = _args(tmp_path)
    results = {"w4": {"teacher": _run(_summary(0.9, 0.5), 600), "recokd": _run(_summary(0.8, float("nan")), 300)}}
    sizes = {
        "teacher": {"params": 5_601_545, "latency_s": 12.345, "volume_shape": [128, 128, 25], "filters": [32, 64]},
        "w4": {"params": 350_921, "latency_s": 2.0, "volume_shape": [128, 128, 25], "filters": [8, 16]},
    }
    md = recokd_table.write_table(results, sizes, args)
    lines = md.splitlines()
    assert lines[0].startswith("| method | filters | params (M) | CPU s / volume | Dice liver | Dice tumour |")
    assert lines[2] == "| Teacher (DynUNet, full width) | [32,64] | 5.602 | 12.35 | 90.00 | 50.00 | 70.00 | 9.00 | 5.00 | 7.00 | 10.0 |"  # fmt: skip
    assert lines[3].startswith("| Student + ReCo-KD | [8,16] | 0.351 | 2.00 | 80.00 | – |")
    assert "128×128×25 voxels" in md and "students at 1/4 width" in md
    out = tmp_path / "out"
    assert (out / "table.md").read_text().strip() == md.strip()
    assert json.loads((out / "table.json").read_text())["sizes"]["w4"]["params"] == 350_921
    assert (out / "table.csv").read_text().splitlines()[0].startswith("method,filters,params (M)")


def test_plan_trains_then_evaluates_each_row_and_recokd_waits_for_the_teacher(tmp_path):
    args = _args(tmp_path, rows=["teacher", "student_only", "recokd"])
    todo = {j.key: j for j in recokd_table.plan(args, {"lambda_max": 0.02})}
    assert list(todo) == [
        "teacher", "teacher/evaluate",
        "w4/student_only/seed0", "w4/student_only/seed0/evaluate", "w4/student_only/seed0/validate",
        "w4/recokd/seed0", "w4/recokd/seed0/evaluate", "w4/recokd/seed0/validate",
    ]  # fmt: skip
    assert todo["w4/recokd/seed0"].needs == ("teacher",) and todo["w4/student_only/seed0"].needs == ()
    assert todo["w4/recokd/seed0"].marker == tmp_path / "out" / "w4" / "recokd" / "seed0" / "train_time.json"
    assert "teacher.json" in todo["teacher"].cmd[5] and "evaluate.json" in todo["teacher/evaluate"].cmd[5]
    cmd = todo["w4/recokd/seed0"].cmd
    assert cmd[cmd.index("--lambda_max") + 1] == "0.02"
    validate = todo["w4/recokd/seed0/validate"].cmd
    assert validate[validate.index("--eval_split") + 1] == "validation"
    assert validate[validate.index("--output_dir") + 1].endswith("eval_validation")


def _value(cmd: list[str], option: str) -> str | None:
    return cmd[cmd.index(option) + 1] if option in cmd else None


def test_plan_covers_folds_rows_and_seeds_with_the_fold_and_the_teacher_first(tmp_path):
    data = _fold_dataset(tmp_path / "data")
    args, _ = recokd_table.parse_args(["--dataset_dir", str(data), "--out", str(tmp_path / "out"), "--seeds", "0",
                                       "1", "--width_divisors", "4", "8"])  # fmt: skip
    assert args.folds == [0, 1, 2] and args.rows == recokd_table.TABLE_ROWS
    todo = recokd_table.plan(args, {})
    trainings = [j for j in todo if j.marker is not None]
    assert len(trainings) == 3 * (1 + 2 * 4 * 2)  # folds x (teacher + widths x student rows x seeds)
    for fold in range(3):
        for width in (4, 8):
            for row in ("student_only", "recokd", "sard_only", "ca_only"):
                for seed in (0, 1):
                    assert f"fold{fold}/w{width}/{row}/seed{seed}" in {j.key for j in trainings}
    order = [j.key for j in todo]
    for job in todo:
        fold = job.key.split("/")[0]
        assert _value(job.cmd, "--fold") == fold[len("fold") :]  # every training and evaluation of the fold
        row = job.key.split("/")[2] if job.key.split("/")[1] != "teacher" else "teacher"
        if job.marker is not None and recokd_table.ROWS[row].distils:
            assert job.needs == (f"{fold}/teacher",) and order.index(f"{fold}/teacher") < order.index(job.key)
            assert _value(job.cmd, "--teacher_ckpt") == str(tmp_path / "out" / fold / "teacher" / "models" / "model.pt")
        if row == "teacher":
            assert _value(job.cmd, "--width_divisor") is None
        else:
            assert _value(job.cmd, "--width_divisor") == job.key.split("/")[1][1:]
            assert _value(job.cmd, "--seed") == job.key.split("/")[3][len("seed") :]
    validations = [j.key for j in todo if j.key.endswith("/validate")]
    assert len(validations) == 3 * 2 * 2 * 2 and all("/student_only/" in k or "/recokd/" in k for k in validations)
    assert len([j for j in todo if j.key.endswith("/evaluate")]) == len(trainings)
    with pytest.raises(SystemExit):
        recokd_table.parse_args(["--dataset_dir", str(data), "--folds", "3"])


def test_folds_never_put_a_patient_in_two_roles(tmp_path):
    """Six patients in three folds: in every fold the training, validation and test patients are disjoint and make
    up all six, and over the folds every patient is tested exactly once (and validated exactly once)."""
    data = _fold_dataset(tmp_path / "data")
    assert recokd_table.detect_folds(data) == [0, 1, 2]
    everyone = {f"case{i:03d}" for i in range(6)}
    tested, validated = [], []
    for fold in range(3):
        roles = {k: {i["subject"] for i in load_datalist(data, k, fold=fold, check=False)} for k in
                 ("training", "validation", "test")}  # fmt: skip
        assert all(roles.values())
        assert roles["training"].isdisjoint(roles["validation"]) and roles["training"].isdisjoint(roles["test"])
        assert roles["validation"].isdisjoint(roles["test"])
        assert roles["training"] | roles["validation"] | roles["test"] == everyone
        tested += sorted(roles["test"])
        validated += sorted(roles["validation"])
    assert sorted(tested) == sorted(everyone) and sorted(validated) == sorted(everyone)


def test_selecting_lambda_trains_variants_on_validation_only_then_the_choice_runs_everything(tmp_path):
    base = ["--out", str(tmp_path / "out"), "--rows", "student_only", "recokd", "sard_only", "--seeds", "0"]
    args, _ = recokd_table.parse_args(base + ["--lambda_max", "0.01", "0.1"])
    keys = {j.key: j for j in recokd_table.plan(args, {})}
    # no test evaluation of the variants, no ablation; the teacher trained (ReCo-KD needs it) but not a row
    assert set(keys) == {
        "teacher", "w4/student_only/seed0", "w4/student_only/seed0/evaluate", "w4/student_only/seed0/validate",
        "w4/recokd/seed0", "w4/recokd/seed0/validate", "w4/recokd_lam0.1/seed0", "w4/recokd_lam0.1/seed0/validate",
    }  # fmt: skip
    assert _value(keys["w4/recokd_lam0.1/seed0"].cmd, "--lambda_max") == "0.1"
    args, _ = recokd_table.parse_args(base + ["--lambda_max", "0.1"])
    keys = {j.key for j in recokd_table.plan(args, {})}
    assert {"w4/recokd_lam0.1/seed0/evaluate", "w4/sard_only_lam0.1/seed0/evaluate"} <= keys
    assert not any(k.startswith("w4/recokd/") for k in keys)


def test_the_kd_row_has_no_lambda_and_does_not_wait_for_the_choice(tmp_path):
    base = ["--out", str(tmp_path / "out"), "--rows", "student_only", "recokd", "kd", "--seeds", "0"]
    args, _ = recokd_table.parse_args(base + ["--lambda_max", "0.01", "0.1"])
    jobs = {j.key: j for j in recokd_table.plan(args, {})}
    kd = jobs["w4/kd/seed0"]  # trained and tested in the first stage, beside the variants being validated
    assert "w4/kd/seed0/evaluate" in jobs and "w4/kd/seed0/validate" not in jobs
    assert kd.needs == ("teacher",) and "kd.json" in kd.cmd[kd.cmd.index("--config_file") + 1]
    assert "--lambda_max" not in kd.cmd and _value(kd.cmd, "--teacher_ckpt").endswith("teacher/models/model.pt")
    chosen = {(None, 4): recokd_table.Variant(0.1)}
    assert {j.key for j in recokd_table.plan(args, {}, chosen) if "/kd/" in j.key} == {
        "w4/kd/seed0",
        "w4/kd/seed0/evaluate",
    }
    assert recokd_table.parse_args([])[0].rows == recokd_table.TABLE_ROWS  # kd only on request


def _validated(out: Path, key: str, wt: float, tc: float, et: float) -> None:
    """A fake validation summary of the run ``key`` with the given region Dice."""
    folder = out / key / "eval_validation"
    folder.mkdir(parents=True, exist_ok=True)
    regions = {"WT": {"dice_mean": wt}, "TC": {"dice_mean": tc}, "ET": {"dice_mean": et}}
    (folder / "metrics_summary.json").write_text(json.dumps({"classes": {**regions, "oedema": {"dice_mean": 1.0}}}))


def test_selection_chooses_per_fold_on_validation_regions_then_plans_the_chosen_on_test_and_the_ablations(tmp_path):
    data = _fold_dataset(tmp_path / "data")
    base = ["--out", str(tmp_path / "out"), "--dataset_dir", str(data), "--rows", "student_only", "recokd",
            "sard_only", "--seeds", "0", "1", "--folds", "0", "1", "--lambda_max", "0.01", "0.1"]  # fmt: skip
    args, _ = recokd_table.parse_args(base)
    out = Path(args.out)
    assert recokd_table.choose_variants(args, REGIONS)[0] is None  # nothing validated yet
    # fold 0: λ 0.1 wins on the regions' mean over both seeds, although oedema (not a region) is the same;
    # fold 1: the default wins; one seed alone would have chosen otherwise
    for key, regions in {"fold0/w4/recokd/seed0": (0.5, 0.5, 0.5), "fold0/w4/recokd/seed1": (0.5, 0.5, 0.5),
                         "fold0/w4/recokd_lam0.1/seed0": (0.6, 0.6, 0.3), "fold0/w4/recokd_lam0.1/seed1": (0.6, 0.5, 0.5),
                         "fold1/w4/recokd/seed0": (0.4, 0.4, 0.4), "fold1/w4/recokd/seed1": (0.8, 0.8, 0.8),
                         "fold1/w4/recokd_lam0.1/seed0": (0.5, 0.5, 0.5)}.items():  # fmt: skip
        _validated(out, key, *regions)
    assert recokd_table.choose_variants(args, REGIONS)[0] is None  # fold 1's λ 0.1, seed 1 unfinished
    _validated(out, "fold1/w4/recokd_lam0.1/seed1", 0.5, 0.5, 0.5)
    chosen, scores = recokd_table.choose_variants(args, REGIONS)
    V = recokd_table.Variant
    assert chosen == {(0, 4): V(0.1), (1, 4): V(0.01)}
    assert scores["fold0/w4"]["_lam0.1"] == pytest.approx((0.5 + 1.6 / 3) / 2)
    assert scores["fold1/w4"][""] == pytest.approx(0.6)
    stage1 = {j.key for j in recokd_table.plan(args, {})}
    stage2 = {j.key for j in recokd_table.plan(args, {}, chosen)}
    new = stage2 - stage1
    assert {"fold0/w4/recokd_lam0.1/seed0/evaluate", "fold0/w4/sard_only_lam0.1/seed1",
            "fold1/w4/recokd/seed1/evaluate", "fold1/w4/sard_only/seed0/evaluate"} <= new  # fmt: skip
    assert not any("recokd_lam0.1" in k for k in new if k.startswith("fold1/"))  # the unchosen variant stays off test
    retrained = [k for k in new if k.endswith(("/seed0", "/seed1")) and "/recokd" in k]
    assert not retrained  # the chosen variants' trainings are those of the selection
    # the table: the chosen runs pooled under the plain row name; the choice section marks each fold's pick
    for key in ("fold0/w4/recokd_lam0.1/seed0", "fold0/w4/recokd_lam0.1/seed1", "fold1/w4/recokd/seed0",
                "fold1/w4/recokd/seed1"):  # fmt: skip
        _write_eval(out / key / "eval", "recokd", int(key[-1]), [0, 1])
    for key in ("fold0/w4/student_only/seed0", "fold0/w4/student_only/seed1", "fold1/w4/student_only/seed0",
                "fold1/w4/student_only/seed1"):  # fmt: skip
        _write_eval(out / key / "eval", "student_only", int(key[-1]), [0, 1])
    results, _ = recokd_table.collect(args, chosen)
    assert [len(results["w4"][m]) for m in ("student_only", "recokd")] == [4, 4]
    lines = recokd_table._choice_lines(args, (chosen, scores), REGIONS)
    assert "| fold0, 1/4 width | 50.00 | 51.67 **chosen** |" in lines
    assert "| fold1, 1/4 width | 60.00 **chosen** | 50.00 |" in lines


def test_single_seed_rows_run_the_first_seed_only_and_the_others_keep_every_seed(tmp_path):
    data = _fold_dataset(tmp_path / "data")
    base = ["--out", str(tmp_path / "out"), "--dataset_dir", str(data), "--rows", "student_only", "recokd",
            "sard_only", "ca_only", "--seeds", "0", "1", "--folds", "0"]  # fmt: skip
    args, _ = recokd_table.parse_args(base + ["--single_seed_rows", "sard_only", "ca_only"])
    seeds = {}
    for run in recokd_table.student_runs(args):
        seeds.setdefault(run.row, []).append(run.seed)
    assert seeds == {"student_only": [0, 1], "recokd": [0, 1], "sard_only": [0], "ca_only": [0]}
    trainings = {j.key for j in recokd_table.plan(args, {}) if j.marker is not None}
    assert "fold0/w4/sard_only/seed0" in trainings and "fold0/w4/sard_only/seed1" not in trainings
    with pytest.raises(SystemExit):  # the teacher has one run anyway: not a student row
        recokd_table.parse_args(base + ["--single_seed_rows", "teacher"])


def test_profiles_state_the_sizes_of_the_issue():
    budget = recokd_table.PROFILES["budget"]
    assert budget["width_divisors"] == [4] and len(budget["seeds"]) >= 2
    assert budget["epochs"] == budget["teacher_epochs"]  # students as long as the teacher (they were length-bound)
    assert {"spacing", "patch_size"} <= set(budget["bundle"]) and {"spacing", "patch_size"} <= set(
        recokd_table.PROFILES["gpu"]["bundle"]
    )
    args, extra = recokd_table.parse_args(["--profile", "budget", "--patch_size", "[32,32,32]", "--epochs", "3"])
    overrides = recokd_table.run_overrides(Run("recokd", None, 0, 8), args, extra)
    assert overrides["patch_size"] == [32, 32, 32] and overrides["spacing"] == [2.0, 2.0, 2.0]  # the command wins
    assert overrides["epochs"] == 3 and args.seeds == budget["seeds"]
    assert args.lambda_max == budget["lambda_max"] and len(args.lambda_max) >= 2  # chosen on validation
    assert recokd_table.selecting(args) and not recokd_table.selecting(recokd_table.parse_args([])[0])


# ----------------------------------------------------------------------------------------------------------------------
# collect + table on fake per-case results of three folds, two seeds, classes and regions
# ----------------------------------------------------------------------------------------------------------------------
BASE = {"teacher": 0.8, "student_only": 0.6, "recokd": 0.65}


def _dice(method: str, seed: int, subject: int, name: str) -> float:
    """A made-up Dice: method level + patient and seed effects + a class offset; ET undefined for patient 5."""
    if name in ("enhancing tumour", "ET") and subject == 5:
        return math.nan
    names = CLASSES + REGIONS
    return BASE[method] + 0.03 * subject + 0.01 * seed * (method != "teacher") + 0.02 * names.index(name) / len(names)


def _write_eval(folder: Path, method: str, seed: int, subjects: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = CLASSES + REGIONS
    with open(folder / "metrics_per_case.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case"] + [f"{m}_{n}" for m in ("dice", "hd95") for n in names] + ["subject"])
        for s in subjects:
            dice = [_dice(method, seed, s, n) for n in names]
            writer.writerow([f"img{s}.nii.gz"] + dice + [20 * (1 - d) for d in dice] + [f"p{s}"])
    classes = {n: {"dice_mean": 0.5, "hd95_mean": 5.0} for n in names}
    summary = {"classes": classes, "num_cases": len(subjects), "empty_mask_convention": "conv"}
    (folder / "metrics_summary.json").write_text(json.dumps(summary))


def _expected_scores(method: str, seeds: list[int], names: list[str], metric: str = "dice") -> dict:
    def score(seed: int, s: int) -> float:
        values = [_dice(method, seed, s, n) for n in names]
        values = [v if metric == "dice" else 20 * (1 - v) for v in values if not math.isnan(v)]
        return sum(values) / len(values)

    return {seed: {f"p{s}": score(seed, s) for s in range(6) if names != ["ET"] or s != 5} for seed in seeds}


def test_collect_and_table_on_fake_folds_give_the_paired_bootstrap_of_common_stats(tmp_path):
    args = _args(tmp_path, rows=["teacher", "student_only", "recokd"], folds=[0, 1, 2], seeds=[0, 1])
    out = Path(args.out)
    for fold in range(3):
        tested, validated = [2 * fold, 2 * fold + 1], [2 * ((fold + 1) % 3), 2 * ((fold + 1) % 3) + 1]
        _write_eval(out / f"fold{fold}" / "teacher" / "eval", "teacher", 0, tested)
        for method in ("student_only", "recokd"):
            for seed in (0, 1):
                root = out / f"fold{fold}" / "w4" / method / f"seed{seed}"
                _write_eval(root / "eval", method, seed, tested)
                _write_eval(root / "eval_validation", method, seed, validated)
    (out / "fold2" / "w4" / "recokd" / "seed1" / "train_time.json").write_text(json.dumps({"seconds": 120.0}))
    results, validation = recokd_table.collect(args)
    assert list(results["w4"]) == ["teacher", "student_only", "recokd"]
    assert [len(results["w4"][m]) for m in results["w4"]] == [3, 6, 6]  # teacher: one seed per fold
    assert list(validation["w4"]) == ["student_only", "recokd"]
    size = {"params": 1000, "latency_s": 1.0, "volume_shape": [70, 85, 70], "filters": [8]}
    sizes = {"teacher": size, "w4": size}
    md = recokd_table.write_table(results, sizes, args, CLASSES, REGIONS, validation)
    stats = json.loads((out / "table.json").read_text())["test"]["w4"]["statistics"]

    scores = {m: _expected_scores(m, [0] if m == "teacher" else [0, 1], CLASSES) for m in BASE}
    expected = paired_bootstrap(scores, "student_only", n_boot=200, seed=0)
    for method in BASE:
        got = stats[method]["dice"]
        assert got["mean"] == pytest.approx(expected[method]["mean"])
        assert got["ci"] == pytest.approx(list(expected[method]["ci"]))
        assert got["subjects"] == 6 and got["seeds"] == (1 if method == "teacher" else 2)
    assert stats["recokd"]["dice"]["difference"] == pytest.approx(0.05 + 0.0)  # ReCo-KD is 0.05 above, paired
    assert stats["recokd"]["dice"]["verdict"] == "better"
    et = paired_bootstrap({m: _expected_scores(m, [0] if m == "teacher" else [0, 1], ["ET"]) for m in BASE},
                          "student_only", n_boot=200, seed=0)  # fmt: skip
    assert stats["recokd"]["by_name"]["ET"]["dice"]["mean"] == pytest.approx(et["recokd"]["mean"])
    assert stats["recokd"]["by_name"]["ET"]["dice"]["subjects"] == 5  # patient 5 has no ET
    over = paired_bootstrap({m: _expected_scores(m, [0] if m == "teacher" else [0, 1], REGIONS) for m in BASE},
                            "student_only", n_boot=200, seed=0)  # fmt: skip
    got = stats["recokd"]["by_name"][recokd_table.REGION_MEAN]["dice"]
    assert got["mean"] == pytest.approx(over["recokd"]["mean"]) and got["difference"] == pytest.approx(0.05)
    assert "region Dice % [95% CI]" in md and "Δ region Dice [95% CI]" in md
    hd95 = paired_bootstrap({m: _expected_scores(m, [0] if m == "teacher" else [0, 1], CLASSES, "hd95") for m in BASE},
                            "student_only", n_boot=200, seed=0, higher_is_better=False)  # fmt: skip
    assert stats["recokd"]["hd95"]["mean"] == pytest.approx(hd95["recokd"]["mean"])
    assert stats["recokd"]["hd95"]["verdict"] == "better"  # lower HD95

    e = expected["recokd"]
    lo, hi = e["difference_ci"]
    assert f"| {100 * e['difference']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] | better |" in md
    assert "## Test patients, students at 1/4 width" in md and "## Validation patients" in md
    assert "| method | necrosis | oedema | non-enhancing tumour | enhancing tumour | WT | TC | ET |" in md
    assert "folds 0, 1, 2" in md and "Dice WT" in md.splitlines()[0]
    with open(out / "table_stats.csv", newline="") as f:
        records = {(r["split"], r["method"], r["score"]) for r in csv.DictReader(f)}
    assert {("test", "recokd", "WT"), ("test", "teacher", "mean"), ("validation", "recokd", "mean")} <= records
    validated = json.loads((out / "table.json").read_text())["validation"]["w4"]["statistics"]
    assert validated["recokd"]["dice"]["subjects"] == 6
