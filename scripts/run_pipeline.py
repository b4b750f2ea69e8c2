#!/usr/bin/env python
"""The main job: the whole method on the embedded LiTS case, from sample data to one report folder.

Steps, each a ``monai.bundle`` run of the bundles' own configs (or ``scripts/iad_table.py``, which runs them):

1. prepare the sample data (``scripts/prepare_data.py``) if it is missing;
2. fine-tune the teacher, LiteMedSAM + LoRA (``teacher_lora/train.json``);
3. train the diffusion model and sample the transfer set (``transfer_diffusion/train.json``, ``inference.json``;
   its quality report, ``evaluate.json``, in the default and full profiles);
4. distil the IAD student and its baselines, student alone included, and evaluate them and the teacher on the test
   split (``scripts/iad_table.py``: ``iad_student/train.json`` + variant, ``evaluate.json``);
5. TS-KD, one seed: pre-train ViT-Tiny on the transfer set against the fine-tuned teacher (``pretrain.json``),
   fine-tune it on the labels (``train.json``), evaluate (``evaluate.json``); the same ViT-Tiny trained from scratch
   (``--pretrained $None``); in the default and full profiles also the task-agnostic baseline (``task_agnostic.json``);
6. predict a few test slices with each network (each bundle's ``inference.json``) for the overlays;
7. write ``OUT/report/``: ``results.md`` and ``results.csv`` (Dice and HD95 per class, parameters, MACs, latency,
   training time), ``curves/*.png`` (from the TensorBoard events in each run's ``outputs/``), ``overlays.png``.

A step whose outputs exist is skipped, so an interrupted pipeline resumes (the step that was interrupted starts again
from its beginning); each step's log is in ``OUT/logs/``. Profiles (``--profile``):

- ``smoke``: a first look in minutes on a CPU: a few iterations of everything, tiny transfer set; the numbers mean
  nothing beyond "it runs";
- ``default``: the real CPU run (hours on 2 cores): the settings of the bundles' documented runs, three seeds for IAD;
- ``full``: paper-sized settings for a GPU (teacher at 256 px and 100 epochs, 1000 synthetic images, long TS-KD).

    python scripts/run_pipeline.py --profile smoke --out runs/smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.errors import InputError  # noqa: E402
from scripts.bundle_runs import config_list  # noqa: E402

CONFIGS = REPO / "bundles"
TEACHER = CONFIGS / "teacher_lora" / "configs"
DIFFUSION = CONFIGS / "transfer_diffusion" / "configs"
IAD = CONFIGS / "iad_student" / "configs"
TSKD = CONFIGS / "tskd_student" / "configs"


@dataclass(frozen=True)
class Profile:
    """Every setting a profile fixes. ``*_limit`` keep that many training/validation slices (evenly spaced; None:
    all) so the smoke teacher is quick; the test split is always evaluated whole."""

    name: str
    teacher_epochs: int
    teacher_image_size: int = 128
    teacher_batch_size: int = 8
    teacher_lr: float = 0.002
    teacher_warmup: int = 20
    teacher_val_interval: int = 2
    teacher_train_limit: int | None = None
    teacher_val_limit: int | None = None
    diffusion_epochs: int = 200
    diffusion_batch_size: int = 8
    sample_grid_size: int = 16  # images of the grid the diffusion training draws when it ends
    transfer_samples: int = 500
    ddim_steps: int = 50
    transfer_quality: bool = True
    iad_rows: tuple[str, ...] = ("student_only", "kd", "kis_only", "iad")
    seeds: tuple[int, ...] = (0, 1, 2)
    student_epochs: int = 30
    kis_epochs: int = 20
    tskd_pretrain_iterations: int = 600
    tskd_finetune_iterations: int = 300
    tskd_preset: str = "tiny"
    tskd_num_labels: int | None = None
    tskd_task_agnostic: bool = True
    overlay_slices: int = 4
    num_workers: int = 0


PROFILES = {
    # about 10 minutes on 2 CPU cores: enough to see every step run and every file of the report appear
    "smoke": Profile(
        name="smoke",
        teacher_epochs=1,
        teacher_batch_size=4,
        teacher_warmup=2,
        teacher_val_interval=1,
        teacher_train_limit=16,
        teacher_val_limit=5,
        diffusion_epochs=1,
        sample_grid_size=4,
        transfer_samples=16,
        ddim_steps=10,
        transfer_quality=False,
        iad_rows=("student_only", "iad"),
        seeds=(0,),
        student_epochs=2,
        kis_epochs=1,
        tskd_pretrain_iterations=20,
        tskd_finetune_iterations=20,
        tskd_task_agnostic=False,
        overlay_slices=3,
    ),
    # the real CPU run (77.5 min on 2 cores with --jobs 2, docs/results.md): the teacher as documented (128 px, 4x
    # cheaper than LiteMedSAM's native 256, so 3x more updates in the same time, lr 2e-3, short warm-up:
    # bundles/teacher_lora/docs/README.md), the IAD rows at their documented 30 epochs; fewer diffusion epochs
    # (150, not 200), transfer images (300, not 500) and seeds (2) than the bundles' documented runs, and neither the
    # transfer-set quality report nor the task-agnostic TS-KD baseline (both in `full`)
    "default": Profile(
        name="default",
        teacher_epochs=20,
        diffusion_epochs=150,
        transfer_samples=300,
        transfer_quality=False,
        iad_rows=("student_only", "kd", "iad"),
        seeds=(0, 1),
        tskd_task_agnostic=False,
    ),
    "full": Profile(
        name="full",
        teacher_epochs=100,
        teacher_image_size=256,
        teacher_lr=0.005,
        teacher_warmup=250,
        teacher_val_interval=5,
        diffusion_epochs=400,
        transfer_samples=1000,
        student_epochs=100,
        kis_epochs=60,
        tskd_pretrain_iterations=5000,
        tskd_finetune_iterations=1500,
        num_workers=4,
    ),
}
TSKD_VARIANTS = {  # name -> (label in the table, pre-trained?, caption in the overlays)
    "vit_scratch": ("ViT-Tiny alone (from scratch)", False, "ViT-Tiny alone"),
    "tskd": ("TS-KD (task-specific teacher)", True, "TS-KD"),
    "tskd_agnostic": ("TS-KD task-agnostic (LiteMedSAM features)", True, "TS-KD agnostic"),
}
IAD_CAPTIONS = {"student_only": "EffNet alone", "kd": "KD", "kis_only": "IAD KIS only", "kas_only": "IAD KAS only",
                "iad": "IAD", "kd_kas": "KD + KAS", "at": "AT", "cwd": "CWD", "dist": "DIST"}  # fmt: skip


@dataclass
class Layout:
    """Where everything of one pipeline run lives."""

    out: Path
    data: Path

    @property
    def dataset(self) -> Path:
        return self.data / "lits_liver"

    @property
    def base_ckpt(self) -> Path:
        return self.data / "weights" / "lite_medsam.pth"

    @property
    def teacher(self) -> Path:
        return self.out / "teacher_lora"

    @property
    def diffusion(self) -> Path:
        return self.out / "transfer_diffusion"

    @property
    def transfer_set(self) -> Path:
        return self.diffusion / "transfer_set"

    @property
    def iad(self) -> Path:
        return self.out / "iad_table"

    def tskd(self, variant: str, seed: int) -> Path:
        return self.out / "tskd" / variant / f"seed{seed}"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions"

    @property
    def report(self) -> Path:
        return self.out / "report"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def markers(self) -> Path:
        return self.out / "steps"


@dataclass
class Step:
    """One command of the pipeline. It is done when every path of ``outputs`` exists; the runner writes ``marker``
    (one of the outputs) after the command succeeds, so a step killed half-way is not taken for done. It starts once
    the steps it ``needs`` are done."""

    key: str
    title: str
    cmd: list[str]
    outputs: list[Path]
    marker: Path | None = None
    timing_file: Path | None = None  # also written on success as {"train_seconds": s} (read by iad_table.py)
    needs: tuple[str, ...] = ()  # keys of the steps whose outputs this one reads
    done: bool = field(default=False)

    def check(self) -> Step:
        self.done = all(p.exists() for p in self.outputs)
        return self


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _bundle(configs: list[Path], python: str) -> list[str]:
    return [python, "-m", "monai.bundle", "run", "--config_file", config_list(configs)]


def _limit(split: str, limit: int | None) -> list[str]:
    """Keep ``limit`` evenly spaced items of a datalist section (a config override; nothing when None)."""
    return [] if limit is None else [f"--{split}#limit", str(limit), f"--{split}#limit_mode", "even"]


def tskd_variants(profile: Profile) -> list[str]:
    return ["vit_scratch", "tskd"] + (["tskd_agnostic"] if profile.tskd_task_agnostic else [])


def overlay_methods(profile: Profile) -> dict[str, str]:
    """Networks whose predictions the overlays show (key -> caption): the teacher, the IAD rows (but the KIS-only
    ablation), the TS-KD variants."""
    methods = {"teacher": "teacher"}
    methods.update({r: IAD_CAPTIONS.get(r, r) for r in profile.iad_rows if r != "kis_only"})
    methods.update({v: TSKD_VARIANTS[v][2] for v in tskd_variants(profile)})
    return methods


def plan_steps(profile: Profile, layout: Layout, python: str = sys.executable, threads: int = 1) -> list[Step]:
    """The pipeline's commands in order, each marked ``done`` when its outputs are already on disk."""
    L, p, seed = layout, profile, profile.seeds[0]
    marker = lambda key: L.markers / f"{key}.json"  # noqa: E731
    workers = ["--num_workers", str(p.num_workers)]
    steps = [
        Step("data", "prepare the sample data", [python, "scripts/prepare_data.py", "--out", str(L.data)],
             [L.data / "manifest.json"]),
    ]  # fmt: skip
    merged = L.teacher / "models" / "model_merged.pt"
    steps.append(
        Step(
            "teacher",
            f"fine-tune the teacher (LiteMedSAM + LoRA, {_count(p.teacher_epochs, 'epoch')} at "
            f"{p.teacher_image_size} px)",
            _bundle([TEACHER / "train.json"], python)
            + ["--bundle_root", str(L.teacher), "--dataset_dir", str(L.dataset), *workers, "--seed", str(seed)]
            + ["--teacher_arch", "litemedsam", "--teacher_ckpt", str(L.base_ckpt)]
            + ["--epochs", str(p.teacher_epochs), "--val_interval", str(p.teacher_val_interval)]
            + ["--image_size", str(p.teacher_image_size), "--batch_size", str(p.teacher_batch_size)]
            + ["--learning_rate", str(p.teacher_lr), "--warmup_iters", str(p.teacher_warmup)]
            + _limit("train#datalist", p.teacher_train_limit)
            + _limit("validate#datalist", p.teacher_val_limit),
            [merged, L.teacher / "models" / "adapter.pt", marker("teacher")],
            marker("teacher"),
            L.teacher / "train_time.json",
            needs=("data",),
        )
    )
    steps.append(
        Step(
            "diffusion",
            f"train the diffusion model ({_count(p.diffusion_epochs, 'epoch')})",
            _bundle([DIFFUSION / "train.json"], python)
            + ["--bundle_root", str(L.diffusion), "--dataset_dir", str(L.dataset), *workers, "--seed", str(seed)]
            + ["--epochs", str(p.diffusion_epochs), "--batch_size", str(p.diffusion_batch_size)]
            + ["--sample_grid_size", str(p.sample_grid_size), "--num_inference_steps", str(p.ddim_steps)],
            [L.diffusion / "models" / "model.pt", marker("diffusion")],
            marker("diffusion"),
            needs=("data",),
        )
    )
    steps.append(
        Step(
            "transfer_set",
            f"sample the transfer set ({p.transfer_samples} images, DDIM {p.ddim_steps} steps)",
            _bundle([DIFFUSION / "inference.json"], python)
            + ["--bundle_root", str(L.diffusion), "--num_samples", str(p.transfer_samples)]
            + ["--num_inference_steps", str(p.ddim_steps), "--seed", str(seed)],
            [L.transfer_set / "datalist.json", marker("transfer_set")],
            marker("transfer_set"),
            needs=("diffusion",),
        )
    )
    if p.transfer_quality:
        steps.append(
            Step(
                "transfer_quality",
                "score the transfer set against the held-out slices",
                _bundle([DIFFUSION / "evaluate.json"], python)
                + ["--bundle_root", str(L.diffusion), "--dataset_dir", str(L.dataset)]
                + ["--teacher_ckpt", str(L.base_ckpt)],
                [L.transfer_set / "quality.json", marker("transfer_quality")],
                marker("transfer_quality"),
                needs=("transfer_set",),
            )
        )
    steps.append(
        Step(
            "iad",
            f"distil the IAD student and baselines ({', '.join(p.iad_rows)}; seeds {list(p.seeds)}), evaluate them "
            "and the teacher",
            [python, "scripts/iad_table.py", "--out", str(L.iad), "--teacher_root", str(L.teacher)]
            + ["--dataset_dir", str(L.dataset), "--teacher_ckpt", str(L.base_ckpt)]
            + ["--teacher_image_size", str(p.teacher_image_size), "--threads", str(threads)]
            + ["--epochs", str(p.student_epochs), "--kis_epochs", str(p.kis_epochs)]
            + ["--rows", *p.iad_rows, "--seeds", *map(str, p.seeds)],
            [L.iad / "table.json", marker("iad")],
            marker("iad"),
            needs=("teacher",),
        )
    )
    student = ["--dataset_dir", str(L.dataset), "--student_preset", p.tskd_preset, *workers, "--seed", str(seed)]
    for variant in tskd_variants(p):
        root = L.tskd(variant, seed)
        label, pretrained, _ = TSKD_VARIANTS[variant]
        if pretrained:
            agnostic = variant == "tskd_agnostic"
            steps.append(
                Step(
                    f"{variant}_pretrain",
                    f"{label}: pre-train on the transfer set ({p.tskd_pretrain_iterations} iterations)",
                    _bundle([TSKD / "pretrain.json"] + ([TSKD / "task_agnostic.json"] if agnostic else []), python)
                    + ["--bundle_root", str(root), *student, "--transfer_dirs", f"['{L.transfer_set}']"]
                    + ["--teacher_ckpt", str(L.base_ckpt if agnostic else merged)]
                    + ["--teacher_image_size", str(p.teacher_image_size)]
                    + ["--teacher_cache_dir", str(L.out / "tskd" / "teacher_cache")]
                    + ["--iterations", str(p.tskd_pretrain_iterations)],
                    [root / "models" / "pretrain" / "pretrained.pt", marker(f"{variant}_pretrain")],
                    marker(f"{variant}_pretrain"),
                    needs=("transfer_set",) if agnostic else ("teacher", "transfer_set"),
                )
            )
        labels = [] if p.tskd_num_labels is None else ["--num_labels", str(p.tskd_num_labels)]
        steps.append(
            Step(
                f"{variant}_finetune",
                f"{label}: train on the labels ({p.tskd_finetune_iterations} iterations)",
                _bundle([TSKD / "train.json"], python)
                + ["--bundle_root", str(root), *student, "--iterations", str(p.tskd_finetune_iterations), *labels]
                + ([] if pretrained else ["--pretrained", "$None"]),
                [root / "models" / "model.pt", marker(f"{variant}_finetune")],
                marker(f"{variant}_finetune"),
                needs=(f"{variant}_pretrain",) if pretrained else ("data",),
            )
        )
        steps.append(
            Step(
                f"{variant}_evaluate",
                f"{label}: evaluate on the test split",
                _bundle([TSKD / "train.json", TSKD / "evaluate.json"], python) + ["--bundle_root", str(root), *student],
                [root / "eval" / "metrics_summary.json", marker(f"{variant}_evaluate")],
                marker(f"{variant}_evaluate"),
                needs=(f"{variant}_finetune",),
            )
        )
    for method in overlay_methods(p):
        out = L.predictions / method
        common = ["--output_dir", str(out), "--dataset_dir", str(L.dataset), "--num_workers", "0"]
        common += _limit("datalist", p.overlay_slices)
        needs = (
            ("teacher",) if method == "teacher" else (f"{method}_finetune",) if method in TSKD_VARIANTS else ("iad",)
        )
        if method == "teacher":
            cmd = _bundle([TEACHER / "inference.json"], python) + ["--bundle_root", str(L.teacher)]
            cmd += ["--teacher_arch", "litemedsam", "--image_size", str(p.teacher_image_size)]
        elif method in TSKD_VARIANTS:
            cmd = _bundle([TSKD / "inference.json"], python) + ["--student_preset", p.tskd_preset]
            cmd += ["--bundle_root", str(L.tskd(method, seed))]
        else:
            cmd = _bundle([IAD / "inference.json"], python) + ["--bundle_root", str(L.iad / method / f"seed{seed}")]
        steps.append(
            Step(f"predict_{method}", f"predict {p.overlay_slices} test slices: {method}", cmd + common,
                 [marker(f"predict_{method}")], marker(f"predict_{method}"), needs=needs)
        )  # fmt: skip
    return [s.check() for s in steps]


# --- running ------------------------------------------------------------------------------------------------------


def _last_progress(log: Path, limit: int = 4096) -> str:
    """The last progress-bar or log fragment written to ``log`` (tqdm rewrites its line with carriage returns)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - limit))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
    return parts[-1] if parts else ""


def _echo_progress(running: dict, tty: bool, last_echo: float) -> float:
    """Show the running steps' latest progress: one rewritten line on a terminal, else a line a minute each."""
    now = time.perf_counter()
    if tty:
        width = shutil.get_terminal_size((100, 20)).columns
        line = " | ".join(f"{key}: {_last_progress(run.log)}" for key, run in running.items())
        print(f"\r      {line}"[: width - 1].ljust(width - 1), end="", flush=True)
        return now
    if now - last_echo < 60:
        return last_echo
    for key, run in running.items():
        print(f"      ... {key} {(now - run.start) / 60:.1f} min: {_last_progress(run.log)[:140]}", flush=True)
    return now


@dataclass
class _Running:
    """A step whose command is running."""

    step: Step
    index: str
    log: Path
    proc: subprocess.Popen
    handle: object
    start: float


def _start(step: Step, log: Path, env: dict | None, index: str) -> _Running:
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"{index} run   {step.title}  (log: {log})", flush=True)
    handle = open(log, "w")
    proc = subprocess.Popen(step.cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    return _Running(step, index, log, proc, handle, time.perf_counter())


def _finish(run: _Running) -> float:
    """Record a step that succeeded: its marker (seconds, command, time) and timing file; return its seconds."""
    seconds = time.perf_counter() - run.start
    record = {"seconds": seconds, "command": run.step.cmd, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    if run.step.marker:
        run.step.marker.parent.mkdir(parents=True, exist_ok=True)
        run.step.marker.write_text(json.dumps(record, indent=1))
    if run.step.timing_file:
        run.step.timing_file.write_text(json.dumps({"train_seconds": seconds}))
    print(f"{run.index} done  {run.step.key} in {seconds / 60:.1f} min", flush=True)
    return seconds


def run_steps(steps: list[Step], layout: Layout, env: dict | None, jobs: int = 1) -> dict[str, float]:
    """Run what is not done, up to ``jobs`` steps at once, each as soon as the steps it ``needs`` are done (in plan
    order among the ready ones); return the seconds of each step run now. When a step fails no new step starts, the
    running ones finish (their work is kept), then the pipeline stops naming the failed step's log."""
    todo = sum(not s.done for s in steps)
    print(
        f"{len(steps)} steps: {len(steps) - todo} done already, {todo} to run"
        + (f", up to {jobs} at once" if jobs > 1 and todo > 1 else ""),
        flush=True,
    )
    index = {s.key: f"[{i:>2}/{len(steps)}]" for i, s in enumerate(steps, 1)}
    finished = {s.key for s in steps if s.done}
    for step in steps:
        if step.done:
            print(f"{index[step.key]} skip  {step.title}: done", flush=True)
    pending = [s for s in steps if not s.done]
    known = {s.key for s in steps}
    running: dict[str, _Running] = {}
    times: dict[str, float] = {}
    failed: list[str] = []
    tty = sys.stdout.isatty()
    last_echo = time.perf_counter()
    try:
        while pending or running:
            while not failed and len(running) < jobs:
                ready = [s for s in pending if all(n in finished or n not in known for n in s.needs)]
                if not ready:
                    break
                step = ready[0]
                pending.remove(step)
                running[step.key] = _start(step, layout.logs / f"{step.key}.log", env, index[step.key])
            if not running:
                break  # only steps waiting on a failed one are left
            time.sleep(0.2 if jobs == 1 else 1.0)
            for key, run in list(running.items()):
                if run.proc.poll() is None:
                    continue
                run.handle.close()
                del running[key]
                if tty:
                    print("\r" + " " * (shutil.get_terminal_size((100, 20)).columns - 1) + "\r", end="", flush=True)
                if run.proc.returncode:
                    failed.append(
                        f"step '{key}' ({run.step.title}) failed (exit {run.proc.returncode}); the end of {run.log} says why"
                    )
                    if running:
                        print(f"{run.index} FAILED {key}; waiting for {', '.join(running)} to finish", flush=True)
                    continue
                times[key] = _finish(run)
                finished.add(key)
            if running:
                last_echo = _echo_progress(running, tty, last_echo)
    except KeyboardInterrupt:
        for run in running.values():
            run.proc.terminate()
        raise
    if failed:
        sys.exit("error: " + "; ".join(failed))
    return times


# --- the report ---------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _step_seconds(layout: Layout, key: str) -> float | None:
    record = _read_json(layout.markers / f"{key}.json")
    return None if record is None else float(record["seconds"])


def network_sizes(profile: Profile, iad_sizes: dict | None, threads: int) -> dict[str, dict]:
    """Parameters, MACs per 128-px slice and CPU latency (batch 1, median of 20 runs after 3 warm-ups, as
    ``iad_table.py`` measures) of the teacher and both students; the latencies ``iad_table.py`` already measured
    (teacher, EfficientNet student) are reused."""
    import torch

    from common.networks.sam_teacher import build_teacher
    from common.networks.students import build_student
    from common.networks.vit_student import build_vit_student
    from common.profiling import count_macs, count_parameters, latency

    torch.set_num_threads(threads)
    iad_sizes = iad_sizes or {}
    nets = {
        "teacher": build_teacher("litemedsam", image_size=profile.teacher_image_size, lora_rank=0),
        "student": build_student(3),
        "vit": build_vit_student(3, 128, preset=profile.tskd_preset),
    }
    x = torch.rand(1, 1, 128, 128)
    sizes = {}
    for name, net in nets.items():
        net.eval()
        measured = iad_sizes.get(name, {}).get("latency_ms")
        sizes[name] = {
            "params": count_parameters(net),
            "macs": count_macs(net, x),
            "latency_ms": measured if measured is not None else 1000 * latency(net, x, warmup=3, runs=20),
        }
    return sizes


def collect_rows(profile: Profile, layout: Layout) -> list[dict]:
    """One entry per evaluated method: label, network key, test summaries (one per seed), training seconds."""
    from scripts.iad_table import ROWS

    rows = []
    table = _read_json(layout.iad / "table.json")
    if table:
        results = table["results"]
        if "teacher" in results:
            rows.append({"key": "teacher", "label": "Teacher (LiteMedSAM + LoRA)", "network": "teacher",
                         "runs": results["teacher"]})  # fmt: skip
        for row, runs in results.items():
            if row != "teacher":
                rows.append({"key": row, "label": ROWS[row][0], "network": "student", "runs": runs})
    seed = profile.seeds[0]
    for variant, (label, pretrained, _) in TSKD_VARIANTS.items():
        summary = _read_json(layout.tskd(variant, seed) / "eval" / "metrics_summary.json")
        if summary is None:
            continue
        parts = [_step_seconds(layout, f"{variant}_finetune")]
        parts += [_step_seconds(layout, f"{variant}_pretrain")] if pretrained else []
        seconds = sum(p for p in parts if p is not None) if any(p is not None for p in parts) else float("nan")
        rows.append({"key": variant, "label": label, "network": "vit",
                     "runs": [{"summary": summary, "train_seconds": seconds}]})  # fmt: skip
    return rows


NETWORK_NAMES = {"teacher": "LiteMedSAM + LoRA", "student": "EfficientNet-B1 U-Net", "vit": "ViT-Tiny"}


def results_table(rows: list[dict], sizes: dict[str, dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """(header, formatted rows, raw CSV records) of the results table: per-class Dice (%) and HD95 (mm) as mean ±
    std over seeds, parameters, MACs, latency and training time."""
    from scripts.bundle_runs import mean_std  # the table scripts' mean ± std over seeds

    classes = list(rows[0]["runs"][0]["summary"]["classes"]) if rows else []
    head = ["method", "network", "params (M)", "MACs (G)", "latency (ms)", "seeds"]
    head += [f"Dice {c}" for c in classes] + ["mean Dice"] + [f"HD95 {c} (mm)" for c in classes]
    head += ["train time (min)"]
    formatted, records = [], []
    for row in rows:
        size = sizes.get(row["network"], {})
        summaries = [r["summary"] for r in row["runs"]]
        cells = [row["label"], NETWORK_NAMES[row["network"]]]
        cells += [f"{size['params'] / 1e6:.2f}", f"{size['macs'] / 1e9:.2f}", f"{size['latency_ms']:.1f}"]
        cells += [str(len(summaries))]
        cells += [mean_std([s["classes"][c]["dice_mean"] for s in summaries], 2, 100) for c in classes]
        cells += [mean_std([s["mean_dice"] for s in summaries], 2, 100)]
        cells += [mean_std([s["classes"][c]["hd95_mean"] for s in summaries], 2) for c in classes]
        cells += [mean_std([r["train_seconds"] / 60 for r in row["runs"]], 1)]
        formatted.append(cells)
        record = {"method": row["label"], "network": NETWORK_NAMES[row["network"]], "seeds": len(summaries)}
        record.update({k: size.get(k) for k in ("params", "macs", "latency_ms")})
        for c in classes:
            for metric in ("dice_mean", "hd95_mean"):
                values = [s["classes"][c][metric] for s in summaries]
                record[f"{metric.split('_')[0]}_{c}"] = sum(values) / len(values)
        record["mean_dice"] = sum(s["mean_dice"] for s in summaries) / len(summaries)
        record["train_minutes"] = sum(r["train_seconds"] for r in row["runs"]) / len(row["runs"]) / 60
        records.append(record)
    return head, formatted, records


def curve_runs(profile: Profile, layout: Layout) -> dict[str, Path]:
    """Name -> folder of TensorBoard events, for every training run of the pipeline."""
    seed = profile.seeds[0]
    runs = {"teacher": layout.teacher / "outputs", "diffusion": layout.diffusion / "outputs"}
    runs.update({r: layout.iad / r / f"seed{seed}" / "outputs" for r in profile.iad_rows})
    for variant in tskd_variants(profile):
        root = layout.tskd(variant, seed)
        if TSKD_VARIANTS[variant][1]:
            runs[f"{variant}_pretrain"] = root / "outputs" / "pretrain"
        runs[f"{variant}_finetune"] = root / "outputs"
    return runs


def write_curves(profile: Profile, layout: Layout) -> list[Path]:
    from common.reporting import curves_figure, read_scalars

    folder = layout.report / "curves"
    written = []
    for name, events in curve_runs(profile, layout).items():
        if not events.is_dir():
            continue
        figure = curves_figure(read_scalars(events), name)
        if figure is not None:
            folder.mkdir(parents=True, exist_ok=True)
            figure.save(folder / f"{name}.png")
            written.append(folder / f"{name}.png")
    return written


def _read_2d(path: Path):
    import nibabel as nib
    import numpy as np

    return np.squeeze(np.asarray(nib.load(str(path)).dataobj))


def write_overlays(profile: Profile, layout: Layout) -> Path | None:
    """``overlays.png``: one row per predicted test slice (image, ground truth, each network's prediction)."""
    from common.data.datalist import load_datalist
    from common.reporting import overlay, overlay_grid

    methods = {m: c for m, c in overlay_methods(profile).items() if (layout.predictions / m).is_dir()}
    if not methods or not (layout.dataset / "datalist.json").is_file():
        return None
    rows = []
    for item in load_datalist(layout.dataset, "test", check=False):
        stem = Path(item["image"]).name.removesuffix(".nii.gz").removesuffix(".nii")
        preds = {m: layout.predictions / m / f"{stem}_seg.nii.gz" for m in methods}
        if not all(p.is_file() for p in preds.values()):
            continue
        image = _read_2d(Path(item["image"]))
        tiles = [("image", overlay(image.T, None)), ("ground truth", overlay(image.T, _read_2d(Path(item["label"])).T))]
        tiles += [(methods[m], overlay(image.T, _read_2d(p).T)) for m, p in preds.items()]
        rows.append((stem, tiles))
    if not rows:
        return None
    path = layout.report / "overlays.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_grid(rows).save(path)
    return path


def write_report(profile: Profile, layout: Layout, threads: int, wall_seconds: float | None = None) -> Path:
    """Write ``results.md`` / ``results.csv``, the curves and the overlays into ``layout.report``; return the
    Markdown file."""
    from common.profiling import machine
    from common.reporting import markdown_table

    report = layout.report
    report.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(profile, layout)
    table = _read_json(layout.iad / "table.json") or {}
    sizes = network_sizes(profile, table.get("sizes"), threads)
    head, formatted, records = results_table(rows, sizes)
    with open(report / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["method"])
        writer.writeheader()
        writer.writerows(records)
    curves = write_curves(profile, layout)
    overlays = write_overlays(profile, layout)
    samples = layout.transfer_set / "samples.png"
    if samples.is_file():
        shutil.copyfile(samples, report / "transfer_samples.png")
    info = machine()
    lines = [f"# Results: profile `{profile.name}`", ""]
    if profile.name == "smoke":
        lines += ["**Smoke profile**: a few iterations of everything, to see the pipeline run end to end; the figures "
                  "below measure nothing about the methods.", ""]  # fmt: skip
    lines += [
        f"Test split of `{layout.dataset}`"
        + (f" ({rows[0]['runs'][0]['summary']['num_cases']} slices)" if rows else "")
        + f". Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {threads} torch thread(s) per run, "
        f"torch {info['torch']}."
        + (f" Pipeline wall time (this invocation): {wall_seconds / 60:.1f} min." if wall_seconds else ""),
        "",
        markdown_table(head, formatted) if formatted else "(no evaluated method yet)",
        "",
        "Dice in %, HD95 in mm: per-slice values averaged over the test slices where defined, then mean ± std over "
        "seeds (population std). Parameters and MACs of one 128×128 slice (FlopCounterMode; the teacher resizes it to "
        f"{profile.teacher_image_size} px); latency: CPU, batch 1, median of 20 runs after 3 warm-ups. Training time "
        "includes validation (and, for TS-KD, pre-training with its teacher-cache fill).",
    ]
    if rows:
        lines += ["Empty masks: " + rows[0]["runs"][0]["summary"]["empty_mask_convention"] + "."]
    steps = [(s.key, s.title, _step_seconds(layout, s.key)) for s in plan_steps(profile, layout)]
    steps = [(k, t, v) for k, t, v in steps if v is not None]
    if steps:
        cells = [[k, t, f"{v / 60:.1f}"] for k, t, v in steps] + [
            ["total", "", f"{sum(v for *_, v in steps) / 60:.1f}"]
        ]
        lines += [
            "",
            "## Steps",
            "",
            "Wall time of each step when it ran (a resumed pipeline keeps the earlier times).",
            "",
        ]
        lines += [markdown_table(["step", "what", "minutes"], cells)]
    if curves:
        lines += ["", "## Training curves", ""] + [f"![{c.stem}](curves/{c.name})" for c in curves]
    if overlays:
        lines += ["", "## Predictions on test slices", "",
                  "Liver green, tumour red; columns: image, ground truth, then each network.", "",
                  "![overlays](overlays.png)"]  # fmt: skip
    if samples.is_file():
        lines += ["", "## Transfer set samples", "", "![samples](transfer_samples.png)"]
    path = report / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def check_profile(profile: Profile, layout: Layout, record: bool = True) -> None:
    """Refuse to resume a results folder made with other settings (its finished steps would be skipped and mixed
    with new ones); record the profile in a new folder."""
    path = layout.out / "profile.json"
    settings = json.loads(json.dumps(asdict(profile)))
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise InputError(
                f"{layout.out} holds a run of profile '{previous.get('name')}' whose settings differ from profile "
                f"'{profile.name}' in {changed}: give another --out (or delete the folder to start again)."
            )
    elif record:
        layout.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="default")
    p.add_argument("--out", default=None, help="results folder (default: runs/<profile>)")
    p.add_argument("--data", default="data", help="sample data folder (prepared if missing)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default: OMP_NUM_THREADS if set, else the cores / --jobs)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=2,
                   help="steps run at once when their inputs are ready (default 2: e.g. the teacher beside the "
                   "diffusion model)")  # fmt: skip
    p.add_argument("--plan", action="store_true", help="print what would run and what is done; run nothing")
    p.add_argument("--report_only", action="store_true", help="write the report from what exists; run nothing")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    layout = Layout(Path(args.out or f"runs/{args.profile}").resolve(), Path(args.data).resolve())
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}.")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // args.jobs))
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}.")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    check_profile(profile, layout, record=not args.plan)
    steps = plan_steps(profile, layout, sys.executable, threads)
    if args.plan:
        for i, s in enumerate(steps, 1):
            print(f"[{i:>2}/{len(steps)}] {'done' if s.done else 'todo'}  {s.key}: {s.title}")
        return
    start = time.perf_counter()
    if not args.report_only:
        run_steps(steps, layout, env, args.jobs)
    wall = time.perf_counter() - start
    print("writing the report ...", flush=True)
    report = write_report(profile, layout, threads, wall if not args.report_only else None)
    print(report.read_text())
    print(f"Pipeline: {wall / 60:.1f} min. Report: {report.parent} (results.md, results.csv, curves/, overlays.png)")


if __name__ == "__main__":
    main()
