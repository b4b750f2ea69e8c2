"""The pipeline's plan: where a run's files live (:class:`Layout`) and its steps (:func:`plan_steps`), each a job of
``scripts/jobs.py``: a ``monai.bundle`` run of a bundle's own configs (or a script that runs them), its outputs, its
marker ``OUT/steps/<key>.json`` (written after success, with the wall time), the steps it needs, and its log
``OUT/logs/<key>.log``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from scripts.bundle_runs import bundle_cmd
from scripts.jobs import Job
from scripts.pipeline_profiles import TSKD_VARIANTS, Profile, overlay_methods, tskd_variants

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles"
TEACHER = CONFIGS / "teacher_lora" / "configs"
DIFFUSION = CONFIGS / "transfer_diffusion" / "configs"
IAD = CONFIGS / "iad_student" / "configs"
TSKD = CONFIGS / "tskd_student" / "configs"


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _limit(split: str, limit: int | None) -> list[str]:
    """Keep ``limit`` evenly spaced items of a datalist section (a config override; nothing when None)."""
    return [] if limit is None else [f"--{split}#limit", str(limit), f"--{split}#limit_mode", "even"]


def plan_steps(profile: Profile, layout: Layout, python: str = sys.executable, threads: int = 1) -> list[Job]:
    """The pipeline's steps in order; a step is ``done`` when its outputs and its marker are on disk."""
    L, p, seed = layout, profile, profile.seeds[0]

    def step(key: str, title: str, cmd: list[str], outputs: list[Path], needs: tuple[str, ...]) -> Job:
        return Job(key, title, cmd, outputs, L.markers / f"{key}.json", needs, L.logs / f"{key}.log")

    def bundle(*configs: Path) -> list[str]:
        return bundle_cmd(list(configs), python=python)

    workers = ["--num_workers", str(p.num_workers)]
    # prepare_data.py writes its manifest last: the manifest alone says it finished
    data = [python, "scripts/prepare_data.py", "--out", str(L.data)]
    steps = [Job("data", "prepare the sample data", data, [L.data / "manifest.json"], log=L.logs / "data.log")]
    merged = L.teacher / "models" / "model_merged.pt"
    steps.append(
        step(
            "teacher",
            f"fine-tune the teacher (LiteMedSAM + LoRA, {_count(p.teacher_epochs, 'epoch')} at "
            f"{p.teacher_image_size} px)",
            bundle(TEACHER / "train.json")
            + ["--bundle_root", str(L.teacher), "--dataset_dir", str(L.dataset), *workers, "--seed", str(seed)]
            + ["--teacher_arch", "litemedsam", "--teacher_ckpt", str(L.base_ckpt)]
            + ["--epochs", str(p.teacher_epochs), "--val_interval", str(p.teacher_val_interval)]
            + ["--image_size", str(p.teacher_image_size), "--batch_size", str(p.teacher_batch_size)]
            + ["--learning_rate", str(p.teacher_lr), "--warmup_iters", str(p.teacher_warmup)]
            + _limit("train#datalist", p.teacher_train_limit)
            + _limit("validate#datalist", p.teacher_val_limit),
            [merged, L.teacher / "models" / "adapter.pt"],
            needs=("data",),
        )
    )
    steps.append(
        step(
            "diffusion",
            f"train the diffusion model ({_count(p.diffusion_epochs, 'epoch')})",
            bundle(DIFFUSION / "train.json")
            + ["--bundle_root", str(L.diffusion), "--dataset_dir", str(L.dataset), *workers, "--seed", str(seed)]
            + ["--epochs", str(p.diffusion_epochs), "--batch_size", str(p.diffusion_batch_size)]
            + ["--sample_grid_size", str(p.sample_grid_size), "--num_inference_steps", str(p.ddim_steps)],
            [L.diffusion / "models" / "model.pt"],
            needs=("data",),
        )
    )
    steps.append(
        step(
            "transfer_set",
            f"sample the transfer set ({p.transfer_samples} images, DDIM {p.ddim_steps} steps)",
            bundle(DIFFUSION / "inference.json")
            + ["--bundle_root", str(L.diffusion), "--num_samples", str(p.transfer_samples)]
            + ["--num_inference_steps", str(p.ddim_steps), "--seed", str(seed)],
            [L.transfer_set / "datalist.json"],
            needs=("diffusion",),
        )
    )
    if p.transfer_quality:
        steps.append(
            step(
                "transfer_quality",
                "score the transfer set against the held-out slices",
                bundle(DIFFUSION / "evaluate.json")
                + ["--bundle_root", str(L.diffusion), "--dataset_dir", str(L.dataset)]
                + ["--teacher_ckpt", str(L.base_ckpt)],
                [L.transfer_set / "quality.json"],
                needs=("transfer_set",),
            )
        )
    steps.append(
        step(
            "iad",
            f"distil the IAD student and baselines ({', '.join(p.iad_rows)}; seeds {list(p.seeds)}), evaluate them "
            "and the teacher",
            [python, "scripts/iad_table.py", "--out", str(L.iad), "--teacher_root", str(L.teacher)]
            + ["--teacher_time", str(L.markers / "teacher.json")]
            + ["--dataset_dir", str(L.dataset), "--teacher_ckpt", str(L.base_ckpt)]
            + ["--teacher_image_size", str(p.teacher_image_size), "--threads", str(threads)]
            + ["--epochs", str(p.student_epochs), "--kis_epochs", str(p.kis_epochs)]
            + ["--rows", *p.iad_rows, "--seeds", *map(str, p.seeds)],
            [L.iad / "table.json"],
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
                step(
                    f"{variant}_pretrain",
                    f"{label}: pre-train on the transfer set ({p.tskd_pretrain_iterations} iterations)",
                    bundle(TSKD / "pretrain.json", *([TSKD / "task_agnostic.json"] if agnostic else []))
                    + ["--bundle_root", str(root), *student, "--transfer_dirs", f"['{L.transfer_set}']"]
                    + ["--teacher_ckpt", str(L.base_ckpt if agnostic else merged)]
                    + ["--teacher_image_size", str(p.teacher_image_size)]
                    + ["--teacher_cache_dir", str(L.out / "tskd" / "teacher_cache")]
                    + ["--iterations", str(p.tskd_pretrain_iterations)],
                    [root / "models" / "pretrain" / "pretrained.pt"],
                    needs=("transfer_set",) if agnostic else ("teacher", "transfer_set"),
                )
            )
        labels = [] if p.tskd_num_labels is None else ["--num_labels", str(p.tskd_num_labels)]
        steps.append(
            step(
                f"{variant}_finetune",
                f"{label}: train on the labels ({p.tskd_finetune_iterations} iterations)",
                bundle(TSKD / "train.json")
                + ["--bundle_root", str(root), *student, "--iterations", str(p.tskd_finetune_iterations), *labels]
                + ([] if pretrained else ["--pretrained", "$None"]),
                [root / "models" / "model.pt"],
                needs=(f"{variant}_pretrain",) if pretrained else ("data",),
            )
        )
        steps.append(
            step(
                f"{variant}_evaluate",
                f"{label}: evaluate on the test split",
                bundle(TSKD / "train.json", TSKD / "evaluate.json") + ["--bundle_root", str(root), *student],
                [root / "eval" / "metrics_summary.json"],
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
            cmd = bundle(TEACHER / "inference.json") + ["--bundle_root", str(L.teacher)]
            cmd += ["--teacher_arch", "litemedsam", "--image_size", str(p.teacher_image_size)]
        elif method in TSKD_VARIANTS:
            cmd = bundle(TSKD / "inference.json") + ["--student_preset", p.tskd_preset]
            cmd += ["--bundle_root", str(L.tskd(method, seed))]
        else:
            cmd = bundle(IAD / "inference.json") + ["--bundle_root", str(L.iad / method / f"seed{seed}")]
        steps.append(
            step(f"predict_{method}", f"predict {p.overlay_slices} test slices: {method}", cmd + common, [], needs)
        )
    return steps
