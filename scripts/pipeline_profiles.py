"""The pipeline's profiles (``smoke``, ``default``, ``full``): every setting a run of ``run_pipeline.py`` fixes, and
the networks each profile trains and shows."""

from __future__ import annotations

from dataclasses import dataclass


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
    # minutes on 2 CPU cores (3.7 from a fresh clone, docs/results.md): every step runs, every report file appears
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


def tskd_variants(profile: Profile) -> list[str]:
    return ["vit_scratch", "tskd"] + (["tskd_agnostic"] if profile.tskd_task_agnostic else [])


def overlay_methods(profile: Profile) -> dict[str, str]:
    """Networks whose predictions the overlays show (key -> caption): the teacher, the IAD rows (but the KIS-only
    ablation), the TS-KD variants."""
    methods = {"teacher": "teacher"}
    methods.update({r: IAD_CAPTIONS.get(r, r) for r in profile.iad_rows if r != "kis_only"})
    methods.update({v: TSKD_VARIANTS[v][2] for v in tskd_variants(profile)})
    return methods
