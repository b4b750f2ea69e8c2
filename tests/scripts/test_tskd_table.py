"""The TS-KD table script: which runs it plans (and what each reads), skipping, aggregation and files (no training)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from common.stats import paired_bootstrap, subject_scores
from scripts import jobs

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
spec = importlib.util.spec_from_file_location("tskd_table", REPO / "scripts" / "tskd_table.py")
tskd_table = sys.modules["tskd_table"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tskd_table)


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(out=str(tmp_path), dataset_dir="D", synthetic_dir="S", teacher_ckpt="T", base_teacher_ckpt=None,
                budgets=["20", "all"], transfer_budget="20", seeds=[0, 1, 2], pretrain_seeds=[0],
                pretrain_iterations=600, finetune_iterations=300, threads=1, transfer_seeds=None,
                budget_unit="slices", budget_seed=0, image_size=None, patch_size=None, finetune_distill_weight=0.0,
                report_cldice=False, n_boot=200, bootstrap_seed=0)  # fmt: skip
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
    ft = jobs["tskd_all_p0_s2"]
    assert ft.needs == ["pretrain_tskd_s0"] and ft.overrides["seed"] == 2 and ft.overrides["num_labels"] == "$None"
    assert ft.overrides["pretrained"] == str(tmp_path / "pretrain_tskd_s0" / "models" / "pretrain" / "pretrained.pt")
    assert (
        jobs["scratch_20_s1"].overrides["pretrained"] == "$None" and jobs["scratch_20_s1"].overrides["num_labels"] == 20
    )
    assert jobs["takd_20_p0_s0"].overrides["student_preset"] == "test"  # unknown options reach every run
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
    assert jobs["tskd_20_p1_s1"].needs == ["pretrain_tskd_s1"]


def test_finished_runs_are_skipped(tmp_path):
    run = tskd_table.plan(_args(tmp_path), {})[0]
    run.root.mkdir(parents=True)
    (run.root / "train_time.json").write_text(json.dumps({"train_seconds": 42.0}))  # as the table wrote it before
    assert jobs.run(run.jobs(), env={}) == {}  # no subprocess: it would fail with an empty environment
    assert tskd_table.train_seconds(run.root) == 42.0


def test_transfer_rows_may_use_fewer_seeds(tmp_path):
    names = {j.name for j in tskd_table.plan(_args(tmp_path, transfer_seeds=[0]), {})}
    assert {"tskd_real_20_p0_s0", "tskd_both_20_p0_s0"} <= names and "tskd_real_20_p0_s1" not in names
    assert "tskd_20_p0_s2" in names


def _summary(liver: float, tumour: float) -> dict:
    classes = {n: {"dice_mean": d, "hd95_mean": 10 * d} for n, d in (("liver", liver), ("tumour", tumour))}
    return {"classes": classes, "mean_dice": (liver + tumour) / 2, "mean_hd95": 5 * (liver + tumour),
            "empty_mask_convention": "conv", "num_cases": 25}  # fmt: skip


def test_collect_and_write_table(tmp_path):
    args = _args(tmp_path, seeds=[0, 1])
    for name, (liver, tumour) in {
        "tskd_20_p0_s0": (0.8, 0.2),
        "tskd_20_p0_s1": (0.9, 0.4),
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
    train, evaluate = runs["tskd_20_p0_s1"].jobs()
    assert train.key == "tskd_20_p0_s1" and train.needs == ("pretrain_tskd_s0",)
    assert train.marker == tmp_path / "tskd_20_p0_s1" / "train_time.json"
    assert "--pretrained" in train.cmd and "--pretrained" not in evaluate.cmd  # evaluate.json loads model.pt
    assert evaluate.needs == ("tskd_20_p0_s1",) and "evaluate.json" in evaluate.cmd[5]
    assert evaluate.outputs == [tmp_path / "tskd_20_p0_s1" / "eval" / "metrics_summary.json"]
    assert len(runs["pretrain_tskd_s0"].jobs()) == 1  # a pre-training is not evaluated


def _dataset(root: Path, subjects: bool = True) -> Path:
    """A dataset folder with a datalist (training items with or without subjects) and two foreground classes."""
    root.mkdir(parents=True, exist_ok=True)
    items = [{"image": f"i{n}.png", "label": f"l{n}.png", **({"subject": f"{n:03d}"} if subjects else {})}
             for n in range(6)]  # fmt: skip
    (root / "datalist.json").write_text(json.dumps({"training": items, "validation": items[:1], "test": items[:1]}))
    labels = {"0": "background", "1": "head", "2": "rim"}
    info = {
        "dim": 2,
        "channel_names": ["US"],
        "labels": labels,
        "normalisation": {"method": "range", "range": [0, 255]},
    }
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def test_plan_covers_budgets_by_pretraining_seeds_by_finetuning_seeds(tmp_path):
    data = _dataset(tmp_path / "hc")
    options = ["--budgets", "8", "32", "80", "--budget_seed", "3", "--patch_size", "8", "--layer_decay", "0.75"]
    args, extra = tskd_table.parse_args(["--out", str(tmp_path / "out"), "--dataset_dir", str(data), *options])
    assert args.budget_unit == "subjects" and args.transfer_budget == "8"  # the datalist names subjects
    assert args.seeds == [0, 1, 2] and args.pretrain_seeds == [0, 1] and extra == {"layer_decay": 0.75}
    runs = {r.name: r for r in tskd_table.plan(args, extra)}
    pre = [n for n in runs if n.startswith("pretrain_")]
    assert sorted(pre) == sorted(
        f"pretrain_{v}_s{p}" for v in ("tskd", "takd", "tskd_real", "tskd_both") for p in (0, 1)
    )
    tuned = [n for n in runs if not n.startswith("pretrain_")]
    # scratch: budgets x seeds; tskd, takd: budgets x pre-training seeds x seeds; transfer rows at budget 8
    assert len(tuned) == 3 * 3 + 2 * 3 * 2 * 3 + 2 * 1 * 2 * 3
    for method in ("tskd", "takd"):
        for b in ("8", "32", "80"):
            for p in (0, 1):
                for s in (0, 1, 2):
                    run = runs[f"{method}_{b}_p{p}_s{s}"]
                    assert run.needs == [f"pretrain_{method}_s{p}"] and run.overrides["seed"] == s
                    assert run.overrides["label_budget"] == int(b) and run.overrides["budget_seed"] == 3
                    assert run.overrides["pretrained"] == str(tmp_path / "out" / f"pretrain_{method}_s{p}" / "models"
                                                              / "pretrain" / "pretrained.pt")  # fmt: skip
                    assert "num_labels" not in run.overrides and run.overrides["patch_size"] == 8
    assert runs["pretrain_tskd_s1"].overrides["seed"] == 1 and runs["pretrain_tskd_s1"].overrides["patch_size"] == 8
    assert "tskd_real_32_p0_s0" not in runs and runs["tskd_real_8_p1_s2"].needs == ["pretrain_tskd_real_s1"]
    assert runs["scratch_80_s2"].needs == [] and runs["scratch_80_s2"].overrides["pretrained"] == "$None"
    order = [r.name for r in tskd_table.plan(args, extra)]
    for i, name in enumerate(order):  # every fine-tuning after its pre-training
        assert all(order.index(n) < i for n in runs[name].needs), name
    assert order[:2] == ["pretrain_tskd_s0", "pretrain_takd_s0"] and order.index("pretrain_tskd_s1") > order.index(
        "pretrain_takd_s0"
    )  # seed 0 of every variant first
    all_runs, _ = tskd_table.parse_args(["--out", "o", "--dataset_dir", str(data), "--budgets", "all",
                                         "--transfer_budget", "none"])  # fmt: skip
    names = {r.name: r for r in tskd_table.plan(all_runs, {})}
    assert names["tskd_all_p1_s0"].overrides["label_budget"] == "$None" and not any("real" in n for n in names)


def test_budgets_count_slices_without_subjects_and_profiles_fill_sizes(tmp_path):
    data = _dataset(tmp_path / "lits", subjects=False)
    args, _ = tskd_table.parse_args(["--dataset_dir", str(data), "--profile", "gpu", "--finetune_iterations", "7"])
    assert args.budget_unit == "slices" and args.budgets == ["8", "32", "80"] and args.image_size == 256
    assert args.finetune_iterations == 7 and args.pretrain_iterations == 5000
    run = {r.name: r for r in tskd_table.plan(args, {})}["scratch_8_s0"]
    assert run.overrides["num_labels"] == 8 and "label_budget" not in run.overrides
    assert run.overrides["image_size"] == 256 and run.overrides["iterations"] == 7
    defaults, _ = tskd_table.parse_args(["--dataset_dir", str(data)])  # today's LiTS table
    assert defaults.budgets == ["20", "all"] and defaults.transfer_budget == "20" and defaults.image_size is None


def test_the_distillation_term_is_kept_for_ts_kd_rows_only_and_evaluation_needs_no_teacher(tmp_path):
    data = _dataset(tmp_path / "d")
    args, _ = tskd_table.parse_args(["--out", str(tmp_path / "o"), "--dataset_dir", str(data), "--budgets", "8",
                                     "--finetune_distill_weight", "0.1", "--report_cldice", "true"])  # fmt: skip
    runs = {r.name: r for r in tskd_table.plan(args, {})}
    for name in ("tskd_8_p0_s0", "tskd_real_8_p1_s1", "tskd_both_8_p0_s2"):
        assert runs[name].configs == ["train.json", "finetune_distill.json"]
        assert runs[name].overrides["finetune_distill_weight"] == 0.1 and runs[name].overrides["teacher_ckpt"] == (
            args.teacher_ckpt
        )
        assert runs[name].overrides["teacher_cache_dir"] == str(tmp_path / "o" / "teacher_cache")
    assert runs["takd_8_p0_s0"].configs == ["train.json"] and runs["scratch_8_s0"].configs == ["train.json"]
    train, evaluate = runs["tskd_8_p0_s0"].jobs()
    assert "finetune_distill.json" in train.cmd[5] and "finetune_distill.json" not in evaluate.cmd[5]
    assert "--teacher_ckpt" not in evaluate.cmd and evaluate.cmd[evaluate.cmd.index("--report_cldice") + 1] == "true"
    assert "--report_cldice" not in train.cmd


def test_plan_prints_the_jobs_and_runs_nothing(tmp_path, capsys):
    data = _dataset(tmp_path / "d")
    tskd_table.main(["--out", str(tmp_path / "o"), "--dataset_dir", str(data), "--budgets", "8", "--plan"])
    out = capsys.readouterr().out
    # 4 pre-trainings x 2 seeds; scratch 3 + (tskd, takd, tskd_real, tskd_both) x 2 x 3 fine-tunings, each evaluated
    tail = "62 jobs: 8 pre-trainings, 27 fine-tunings with their evaluations; budgets in subjects: ['8']"
    assert out.strip().endswith(tail)
    assert "[todo] tskd_8_p1_s2  (after pretrain_tskd_s1)" in out and not (tmp_path / "o").exists()


def _write_per_case(root: Path, shift: float, collapsed: bool = False) -> None:
    """A finished fine-tuning: per-case metrics of 3 subjects (2 images each; 'rim' absent on one image) and a
    summary; a collapsed run predicts no foreground (Dice 0 where the label has it, pred_sum 0)."""
    (root / "eval").mkdir(parents=True)
    head = ["case", "dice_head", "dice_rim", "hd95_head", "hd95_rim", "sensitivity_head", "sensitivity_rim", "subject",
            "pred_sum_head", "pred_sum_rim", "label_sum_head", "label_sum_rim"]  # fmt: skip
    lines = [head]
    for i in range(1, 4):
        for j in (1, 2):
            rim_absent = i == 3 and j == 1
            dice = [0.0, math.nan if rim_absent else 0.0] if collapsed else [0.5 + 0.1 * i + shift, 0.3 + 0.05 * j]
            if rim_absent and not collapsed:
                dice[1] = math.nan
            hd = [181.0 if collapsed else 10 * (1 - d) for d in dice]
            pred = [0, 0] if collapsed else [100, 0 if rim_absent else 20]
            cells = [f"s{i}_{j}"] + ["nan" if math.isnan(v) else v for v in dice + hd + dice] + [f"s{i}"]
            lines.append(cells + pred + [100, 0 if rim_absent else 20])
    with open(root / "eval" / "metrics_per_case.csv", "w", newline="") as f:
        csv.writer(f).writerows(lines)
    summary = {"classes": {c: {"dice_mean": 0.5, "hd95_mean": 5.0} for c in ("head", "rim")}, "mean_dice": 0.5,
               "mean_hd95": 5.0, "empty_mask_convention": "conv"}  # fmt: skip
    (root / "eval" / "metrics_summary.json").write_text(json.dumps(summary))
    (root / "train_time.json").write_text(json.dumps({"seconds": 60.0}))


def test_collect_and_table_give_common_stats_paired_bootstrap_and_count_collapses(tmp_path):
    data = _dataset(tmp_path / "d")
    out = tmp_path / "o"
    args, _ = tskd_table.parse_args(["--out", str(out), "--dataset_dir", str(data), "--budgets", "8", "--seeds", "0",
                                     "1", "--transfer_budget", "none", "--n_boot", "300"])  # fmt: skip
    for s in (0, 1):
        _write_per_case(out / f"scratch_8_s{s}", 0.0)
        for p in (0, 1):
            _write_per_case(out / f"takd_8_p{p}_s{s}", 0.05 * p)
            _write_per_case(out / f"tskd_8_p{p}_s{s}", 0.2, collapsed=(p, s) == (1, 0))
    results = tskd_table.collect(args)
    assert [len(results[(m, "8")]) for m in ("scratch", "takd", "tskd")] == [2, 4, 4]
    assert [r["collapsed"] for r in results[("tskd", "8")]] == [False, False, True, False]  # p1 s0
    size = {"params": 6.42e6, "latency_ms": 24.0, "size": 128}
    md = tskd_table.write_table(results, size, args, ["head", "rim"])

    runs = results
    block = {m: runs[(m, "8")] for m in ("scratch", "takd", "tskd")}

    def key(r: dict) -> str:  # both seeds of a run
        return f"s{r['seed']}" if r["pretrain_seed"] is None else f"p{r['pretrain_seed']}_s{r['seed']}"

    scores = {
        m: {key(r): subject_scores(r["per_case"], "dice", ["head", "rim"]) for r in rs} for m, rs in block.items()
    }
    vs_scratch = paired_bootstrap(scores, "scratch", 300, 0)
    vs_takd = paired_bootstrap(scores, "takd", 300, 0)
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in md.splitlines() if
            line.startswith("| ") and " [" in line}  # fmt: skip
    tskd = rows["TS-KD (synthetic transfer set)"]
    lo, hi = vs_scratch["tskd"]["ci"]
    assert tskd[1:4] == ["4", "3", f"{100 * vs_scratch['tskd']['mean']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"]
    d, (lo, hi) = vs_scratch["tskd"]["difference"], vs_scratch["tskd"]["difference_ci"]
    assert tskd[6:8] == [f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]", vs_scratch["tskd"]["verdict"]]
    d, (lo, hi) = vs_takd["tskd"]["difference"], vs_takd["tskd"]["difference_ci"]
    assert tskd[8:10] == [f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]", vs_takd["tskd"]["verdict"]]
    assert tskd[-1] == "1/4" and rows["ViT-Tiny from scratch"][-1] == "0/2"
    assert rows["ViT-Tiny from scratch"][6:8] == ["–", "–"] and rows["Task-agnostic KD (LiteMedSAM, feature term)"][
        8:10
    ] == ["–", "–"]
    # by hand: scratch subject i, seeds alike: head 0.5 + 0.1 i, rim 0.35 / 0.4 (absent on s3 image 1)
    by_hand = [(0.6 + 0.375) / 2, (0.7 + 0.375) / 2, (0.8 + (0.8 + 0.4) / 2) / 2]
    assert vs_scratch["scratch"]["mean"] == pytest.approx(sum(by_hand) / 3)
    hd = {m: {key(r): subject_scores(r["per_case"], "hd95", ["head", "rim"]) for r in rs} for m, rs in block.items()}
    hd95 = paired_bootstrap(hd, "scratch", 300, 0, higher_is_better=False)
    assert tskd[10] == f"{hd95['tskd']['mean']:.2f} [{hd95['tskd']['ci'][0]:.2f}, {hd95['tskd']['ci'][1]:.2f}]"
    assert md.splitlines()[0].startswith("| method | labelled subjects | runs | Dice head | Dice rim |")
    assert "## Label budget: 8 labelled training subjects" in md and "6.42 M parameters, 24.0 ms" in md
    table = json.loads((out / "table.json").read_text())
    assert table["statistics"]["8"]["tskd"]["dice"]["takd"]["difference"] == pytest.approx(
        vs_takd["tskd"]["difference"]
    )
    with open(out / "table.csv") as f:
        records = {r["method"]: r for r in csv.DictReader(f)}
    assert records["tskd"]["collapsed"] == "1" and float(records["tskd"]["dice_diff_takd_lo"]) == pytest.approx(
        vs_takd["tskd"]["difference_ci"][0]
    )


def test_a_collapse_is_read_from_dice_when_the_counts_are_missing(tmp_path):
    path = tmp_path / "metrics_per_case.csv"
    path.write_text("case,dice_a,hd95_a,subject\nc1,0.0,181.0,s1\nc2,nan,nan,s2\n")
    assert tskd_table.collapsed(path) is True
    path.write_text("case,dice_a,hd95_a,subject\nc1,0.0,181.0,s1\nc2,0.3,4.0,s2\n")
    assert tskd_table.collapsed(path) is False and tskd_table.collapsed(None) is None


def test_rows_replace_the_main_rows_and_task_agnostic_kd_follows_their_transfer_set(tmp_path):
    """Without a synthetic set, ``--rows scratch takd tskd_real`` makes the real unlabelled images the TS-KD row at
    every budget, and task-agnostic KD pre-trains on those images too (it differs from TS-KD by its teacher only)."""
    args = _args(tmp_path, rows=["scratch", "takd", "tskd_real"], budgets=["8", "32"], transfer_budget=None)
    runs = {r.name: r for r in tskd_table.plan(args, {})}
    assert sorted(n for n in runs if n.startswith("pretrain_")) == ["pretrain_takd_s0", "pretrain_tskd_real_s0"]
    assert runs["pretrain_takd_s0"].overrides["transfer_dirs"] == ["D"]
    assert runs["pretrain_tskd_real_s0"].overrides["transfer_dirs"] == ["D"]
    assert {"tskd_real_8_p0_s0", "tskd_real_32_p0_s2", "takd_32_p0_s1", "scratch_32_s2"} <= set(runs)
    assert not any(n.startswith(("tskd_both", "tskd_8", "tskd_32")) for n in runs)  # tskd_real not repeated either
    assert len([n for n in runs if not n.startswith("pretrain_")]) == 3 * 2 * 3
    assert all(r.group == 0 for r in runs.values())
    # a transfer budget adds the transfer rows not already main rows: tskd_both, not tskd_real again
    args.transfer_budget = "8"
    extra = {r.name: r for r in tskd_table.plan(args, {})}
    assert set(extra) - set(runs) == {"pretrain_tskd_both_s0"} | {f"tskd_both_8_p0_s{s}" for s in range(3)}
    assert extra["tskd_both_8_p0_s1"].group == 1 and extra["tskd_real_8_p0_s1"].group == 0
    # the default rows keep the synthetic set for both
    default = {r.name: r for r in tskd_table.plan(_args(tmp_path), {})}
    assert default["pretrain_takd_s0"].overrides["transfer_dirs"] == ["S"]
    with pytest.raises(SystemExit):
        tskd_table.parse_args(["--rows", "nope"])


def test_validation_curves_read_from_the_events_count_runs_that_sat_at_zero(tmp_path):
    """The curve's iterations come from the per-iteration loss (epoch length 5 here), a resumed epoch keeps its last
    value, and a run at 0 at one validation counts even though it recovers."""
    from torch.utils.tensorboard import SummaryWriter

    def events(root: Path, values: dict[int, float]) -> Path:
        writer = SummaryWriter(str(root / "outputs"))
        for it in range(1, 21):
            writer.add_scalar("loss", 1.0 / it, it)
        for epoch, value in values.items():
            writer.add_scalar("val_mean_dice", value, epoch)
        writer.close()
        return root / "outputs"

    a = events(tmp_path / "a", {2: 0.0, 4: 0.8})
    b = events(tmp_path / "b", {2: 0.4, 4: 0.6})
    assert tskd_table.validation_curve(a) == [(10, 0.0), (20, pytest.approx(0.8))]
    assert tskd_table.validation_curve(tmp_path / "missing") == []
    results = {("tskd", "8"): [{"curve": tskd_table.validation_curve(a)}, {"curve": tskd_table.validation_curve(b)}]}
    lines = tskd_table.curve_table(results, _args(tmp_path, budget_unit="subjects"))
    assert "it. 10 | it. 20 | runs at 0" in lines[2]
    assert lines[-1] == "| TS-KD (synthetic transfer set) | 8 | 2 | 20.0 (0.0) | 70.0 (60.0) | 1/2 |"
    assert tskd_table.curve_table({("tskd", "8"): [{"curve": []}]}, _args(tmp_path)) == []
