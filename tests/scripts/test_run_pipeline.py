"""The pipeline's step planning (what runs, what is skipped, the commands), its runner, and its report, on a tiny
profile with fake finished outputs on disk (no training)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.data.synthetic import make_synthetic_dataset
from scripts import jobs, pipeline_plan, pipeline_report, run_pipeline
from scripts.pipeline_profiles import PROFILES
from tests.conftest import fake_metrics_summary

TINY = dataclasses.replace(PROFILES["smoke"], name="tiny", overlay_slices=2)


@pytest.fixture
def layout(tmp_path: Path):
    data = tmp_path / "data"
    make_synthetic_dataset(data / "lits_liver", num_items=(4, 2, 3), size=32)
    (data / "manifest.json").write_text("{}")
    return pipeline_plan.Layout(tmp_path / "out", data)


def _keys(steps) -> list[str]:
    return [s.key for s in steps]


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}" if p.suffix == ".json" else "x")


def _marker(layout, key: str, seconds: float = 60.0) -> None:
    layout.markers.mkdir(parents=True, exist_ok=True)
    (layout.markers / f"{key}.json").write_text(json.dumps({"seconds": seconds, "command": []}))


def test_a_fresh_run_plans_every_step_in_order_and_skips_only_the_prepared_data(layout):
    steps = pipeline_plan.plan_steps(TINY, layout, "py")
    assert _keys(steps) == [
        "data", "teacher", "diffusion", "transfer_set", "iad",
        "vit_scratch_finetune", "vit_scratch_evaluate", "tskd_pretrain", "tskd_finetune", "tskd_evaluate",
        "predict_teacher", "predict_student_only", "predict_iad", "predict_vit_scratch", "predict_tskd",
    ]  # fmt: skip
    assert [s.key for s in steps if s.done] == ["data"]


def test_the_full_profile_adds_the_transfer_set_quality_and_the_task_agnostic_baseline(layout):
    keys = _keys(pipeline_plan.plan_steps(PROFILES["full"], layout, "py"))
    assert "transfer_quality" in keys and keys.index("transfer_quality") == keys.index("transfer_set") + 1
    assert {"tskd_agnostic_pretrain", "tskd_agnostic_finetune", "tskd_agnostic_evaluate"} <= set(keys)
    assert "predict_kis_only" not in keys and "predict_kd" in keys  # the KIS-only ablation is not overlaid


def test_finished_steps_are_skipped_and_half_finished_ones_are_not(layout):
    L = layout
    _touch(L.teacher / "models" / "model_merged.pt", L.teacher / "models" / "adapter.pt")
    _marker(L, "teacher")
    _touch(L.diffusion / "models" / "model.pt")  # written, but the step never finished (no marker): run again
    _touch(L.iad / "table.json")
    _marker(L, "iad")
    _touch(L.tskd("tskd", 0) / "models" / "model.pt")  # best model of a fine-tune killed half-way
    steps = {s.key: s for s in pipeline_plan.plan_steps(TINY, L, "py")}
    assert steps["teacher"].done and steps["iad"].done
    assert not steps["diffusion"].done and not steps["tskd_finetune"].done
    _marker(L, "tskd_finetune")
    assert pipeline_plan.plan_steps(TINY, L, "py")[_keys(steps.values()).index("tskd_finetune")].done


def test_the_commands_are_bundle_runs_with_the_profile_settings(layout):
    L = layout
    steps = {s.key: s for s in pipeline_plan.plan_steps(TINY, L, "py", threads=3)}
    teacher = steps["teacher"].cmd
    assert teacher[:5] == ["py", "-m", "monai.bundle", "run", "--config_file"]
    assert "teacher_lora/configs/train.json" in teacher[5]
    assert teacher[teacher.index("--epochs") + 1] == "1"
    assert teacher[teacher.index("--train#datalist#limit") + 1] == "16"
    assert teacher[teacher.index("--validate#datalist#limit") + 1] == "5"
    iad = steps["iad"].cmd
    assert iad[iad.index("--teacher_time") + 1] == str(L.markers / "teacher.json")  # the teacher's training time
    assert iad[1] == "scripts/iad_table.py" and iad[iad.index("--threads") + 1] == "3"
    assert iad[iad.index("--rows") + 1 : iad.index("--seeds")] == ["student_only", "iad"]
    pretrain = steps["tskd_pretrain"].cmd
    assert pretrain[pretrain.index("--teacher_ckpt") + 1] == str(L.teacher / "models" / "model_merged.pt")
    assert pretrain[pretrain.index("--transfer_dirs") + 1] == f"['{L.transfer_set}']"
    assert pretrain[pretrain.index("--bundle_root") + 1] == str(L.tskd("tskd", 0))
    scratch = steps["vit_scratch_finetune"].cmd
    assert scratch[scratch.index("--pretrained") + 1] == "$None"
    assert "--pretrained" not in steps["tskd_finetune"].cmd
    assert "evaluate.json" in steps["tskd_evaluate"].cmd[5]
    predict = steps["predict_iad"].cmd
    assert predict[predict.index("--bundle_root") + 1] == str(L.iad / "iad" / "seed0")
    assert predict[predict.index("--datalist#limit") + 1] == "2"
    agnostic = {s.key: s for s in pipeline_plan.plan_steps(PROFILES["full"], L, "py")}
    cmd = agnostic["tskd_agnostic_pretrain"].cmd
    assert "task_agnostic.json" in cmd[5] and cmd[cmd.index("--teacher_ckpt") + 1] == str(L.base_ckpt)


def _step(tmp_path: Path, key: str, code: str) -> object:
    out = tmp_path / f"{key}.out"
    marker = tmp_path / "steps" / f"{key}.json"
    cmd = [sys.executable, "-c", f"import pathlib; {code}; pathlib.Path(r'{out}').write_text('ok')"]
    return jobs.Job(key, key, cmd, [out, marker], marker, log=tmp_path / "logs" / f"{key}.log")


def test_the_runner_runs_what_is_missing_writes_markers_and_skips_it_next_time(tmp_path, capsys):
    layout = pipeline_plan.Layout(tmp_path, tmp_path)
    counter = tmp_path / "count"
    code = f"c = pathlib.Path(r'{counter}'); c.write_text(str(int(c.read_text() or 0) + 1) if c.exists() else '1')"
    step = _step(tmp_path, "a", code)
    times = jobs.run([step], env=None)
    assert set(times) == {"a"} and counter.read_text() == "1"
    assert json.loads((tmp_path / "steps" / "a.json").read_text())["command"] == step.cmd
    assert (layout.logs / "a.log").is_file()
    assert jobs.run([_step(tmp_path, "a", code)], env=None) == {}
    assert counter.read_text() == "1"
    assert "skip" in capsys.readouterr().out


def test_a_failing_step_stops_the_pipeline_naming_its_log_and_leaves_no_marker(tmp_path):
    with pytest.raises(SystemExit, match=r"step 'bad' .* failed \(exit 3\).*bad\.log"):
        jobs.run([_step(tmp_path, "bad", "raise SystemExit(3)")], env=None)
    assert not (tmp_path / "steps" / "bad.json").exists()


def test_parallel_steps_start_when_what_they_need_is_done_and_a_failure_keeps_the_others_work(tmp_path):
    log = tmp_path / "order"
    append = lambda name: f"open(r'{log}', 'a').write('{name} ')"  # noqa: E731
    first = _step(tmp_path, "first", append("first"))
    # "second" needs "first": it must find first's output when it starts; "other" needs nothing
    second = _step(
        tmp_path, "second", f"assert pathlib.Path(r'{tmp_path / 'first.out'}').exists(); " + append("second")
    )
    second.needs = ("first",)
    other = _step(tmp_path, "other", append("other"))
    times = jobs.run([first, second, other], env=None, parallel=2)
    assert set(times) == {"first", "second", "other"}
    order = log.read_text().split()
    assert order.index("first") < order.index("second")
    # a failure: no new step starts, the running one finishes and keeps its marker, the dependent one never runs
    slow = _step(tmp_path, "slow", "import time; time.sleep(1.5)")
    bad = _step(tmp_path, "bad", "raise SystemExit(3)")
    after = _step(tmp_path, "after", "")
    after.needs = ("bad",)
    with pytest.raises(SystemExit, match=r"step 'bad' .* failed \(exit 3\)"):
        jobs.run([slow, bad, after], env=None, parallel=2)
    assert (tmp_path / "steps" / "slow.json").is_file()
    assert not (tmp_path / "steps" / "bad.json").exists() and not (tmp_path / "after.out").exists()


def test_every_step_needs_only_earlier_steps(layout):
    for profile in (TINY, PROFILES["full"]):
        seen = set()
        for step in pipeline_plan.plan_steps(profile, layout, "py"):
            assert set(step.needs) <= seen, step.key
            seen.add(step.key)
    steps = {s.key: s for s in pipeline_plan.plan_steps(PROFILES["full"], layout, "py")}
    assert steps["iad"].needs == ("teacher",) and set(steps["tskd_pretrain"].needs) == {"teacher", "transfer_set"}
    assert steps["tskd_agnostic_pretrain"].needs == ("transfer_set",) and steps["predict_kd"].needs == ("iad",)


def _fake_finished_run(layout) -> None:
    """What a finished tiny run leaves on disk: the IAD table, TS-KD summaries, markers, events, predictions."""
    from torch.utils.tensorboard import SummaryWriter

    L = layout
    L.iad.mkdir(parents=True)
    results = {
        "student_only": [{"summary": fake_metrics_summary(0.8, 0.2), "train_seconds": 60}, {"summary": fake_metrics_summary(0.9, 0.4), "train_seconds": 180}],
        "iad": [{"summary": fake_metrics_summary(0.9, 0.5), "train_seconds": 120}],
        "teacher": [{"summary": fake_metrics_summary(0.95, 0.6), "train_seconds": 600}],
    }  # fmt: skip
    sizes = {"student": {"params": 7.87e6, "latency_ms": 12.0}, "teacher": {"params": 9.7e6, "latency_ms": 300.0}}
    (L.iad / "table.json").write_text(json.dumps({"results": results, "sizes": sizes}))
    for variant, dice in (("vit_scratch", 0.5), ("tskd", 0.7)):
        (L.tskd(variant, 0) / "eval").mkdir(parents=True)
        (L.tskd(variant, 0) / "eval" / "metrics_summary.json").write_text(
            json.dumps(fake_metrics_summary(dice, dice / 2))
        )
    _marker(L, "vit_scratch_finetune", 90)
    _marker(L, "tskd_pretrain", 60)
    _marker(L, "tskd_finetune", 90)
    writer = SummaryWriter(str(L.teacher / "outputs"))
    for i in range(30):
        writer.add_scalar("train_loss", 1.0 / (i + 1), i + 1)
    for e in range(3):
        writer.add_scalar("val_mean_dice", 0.2 * e, e + 1)
    writer.close()
    from common.data.datalist import load_datalist

    for item in load_datalist(L.dataset, "test", check=False)[:2]:
        stem = Path(item["image"]).name.removesuffix(".nii.gz")
        label = nib.load(item["label"])
        for method in ("teacher", "iad"):
            (L.predictions / method).mkdir(parents=True, exist_ok=True)
            pred = np.asarray(label.dataobj).astype(np.uint8)
            nib.save(nib.Nifti1Image(pred, label.affine), str(L.predictions / method / f"{stem}_seg.nii.gz"))


def test_the_report_gathers_every_result_into_tables_curves_and_overlays(layout, monkeypatch):
    _fake_finished_run(layout)
    sizes = {
        "teacher": {"params": 9.7e6, "macs": 4.0e10, "latency_ms": 300.0},
        "student": {"params": 7.87e6, "macs": 6.5e8, "latency_ms": 12.0},
        "vit": {"params": 6.42e6, "macs": 5.9e8, "latency_ms": 9.0},
    }
    monkeypatch.setattr(pipeline_report, "network_sizes", lambda profile, iad_sizes, threads: sizes)
    md_path = pipeline_report.write_report(TINY, layout, threads=1, wall_seconds=600)
    md = md_path.read_text()
    lines = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert lines["Teacher (LiteMedSAM + LoRA)"].startswith(
        "| Teacher (LiteMedSAM + LoRA) | LiteMedSAM + LoRA | 9.70 | 40.00 | 300.0 | 1 | 95.00 | 60.00 | 77.50 |"
    )
    assert "| Student only | EfficientNet-B1 U-Net | 7.87 | 0.65 | 12.0 | 2 | 85.00 ± 5.00 | 30.00 ± 10.00 |" in md
    assert lines["Student only"].endswith("| 2.0 ± 1.0 |")  # minutes, mean ± std over the two seeds
    assert lines["TS-KD (task-specific teacher)"].endswith("| 2.5 |")  # pre-training + fine-tuning
    assert lines["ViT-Tiny alone (from scratch)"].endswith("| 1.5 |")
    assert "Pipeline wall time (this invocation): 10.0 min" in md and "Empty masks: conv." in md
    csv_lines = (layout.report / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,network,seeds,params,macs,latency_ms,dice_liver,hd95_liver")
    assert len(csv_lines) == 1 + 5  # teacher, student only, IAD, ViT alone, TS-KD
    curves = Image.open(layout.report / "curves" / "teacher.png")
    assert curves.width == 960  # loss and validation panels side by side
    assert np.asarray(curves.convert("L")).min() < 100  # something was drawn
    overlays = np.asarray(Image.open(layout.report / "overlays.png").convert("RGB")).astype(int)
    # 2 slices x (image, ground truth, teacher, IAD) tiles of 64 px (32 px upscaled twice) under 18-px captions
    assert overlays.shape == (2 * (64 + 18), 4 * 64, 3)
    tile = overlays[18 : 18 + 64, 64:128]  # first slice, ground truth: liver pixels are tinted green
    assert ((tile[..., 1] - tile[..., 0]) > 40).any()
    assert "![overlays](overlays.png)" in md and "![teacher](curves/teacher.png)" in md
    assert "| tskd_pretrain | TS-KD (task-specific teacher): pre-train" in md  # step times, in the pipeline's order
    assert md.index("| vit_scratch_finetune |") < md.index("| tskd_pretrain |") and "| total |  | 4.0 |" in md


def test_the_report_of_an_empty_run_says_so_instead_of_failing(layout, monkeypatch):
    monkeypatch.setattr(pipeline_report, "network_sizes", lambda *a: {})
    md = pipeline_report.write_report(TINY, layout, threads=1).read_text()
    assert "(no evaluated method yet)" in md


def test_a_folder_of_another_profile_is_refused(tmp_path):
    from common.errors import InputError

    layout = pipeline_plan.Layout(tmp_path / "out", tmp_path)
    run_pipeline.check_profile(TINY, layout)
    run_pipeline.check_profile(TINY, layout)  # the same settings resume
    with pytest.raises(InputError, match=r"profile 'tiny' whose settings differ .* \['name', 'overlay_slices'\]"):
        run_pipeline.check_profile(PROFILES["smoke"], layout)


def test_bad_threads_is_a_clear_error(tmp_path):
    from common.errors import InputError

    with pytest.raises(InputError, match="--threads"):
        run_pipeline.main(["--profile", "smoke", "--out", str(tmp_path), "--threads", "-1", "--plan"])
