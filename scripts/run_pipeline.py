#!/usr/bin/env python
"""The main job: sample data → LoRA-tuned teacher → distilled students → evaluation, on the embedded LiTS case.

Each step is a ``monai.bundle`` run of the bundles' own configs (or a script that runs them); a step whose outputs
exist is skipped, so the pipeline resumes after an interruption. Profiles:

- ``smoke``: a first look in minutes (2 teacher epochs, 2 student epochs, one seed);
- ``default``: the CPU run whose figures are in the bundles' docs (20 teacher epochs, 30 student epochs, 3 seeds).

    python scripts/run_pipeline.py --profile smoke --out runs/smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEACHER = REPO / "bundles" / "teacher_lora" / "configs"
PROFILES = {
    # teacher: LiteMedSAM at the slices' own 128 px (4x cheaper than its native 256, so 3x more updates in the same
    # time), lr 2e-3 with a short warm-up for these short CPU runs (see bundles/teacher_lora/docs/README.md)
    "smoke": {"teacher_epochs": 2, "student_epochs": 2, "kis_epochs": 1, "seeds": [0]},
    "default": {"teacher_epochs": 20, "student_epochs": 30, "kis_epochs": 20, "seeds": [0, 1, 2]},
}


def step(name: str, cmd: list[str], done: Path, log: Path) -> float:
    """Run ``cmd`` unless ``done`` exists; return the seconds it took (0 when skipped)."""
    if done.exists():
        print(f"[skip] {name}: {done} exists", flush=True)
        return 0.0
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[run ] {name} (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if code:
        sys.exit(f"error: step '{name}' failed (exit {code}); the end of {log} says why")
    seconds = time.perf_counter() - start
    print(f"[done] {name} in {seconds / 60:.1f} min", flush=True)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="default")
    p.add_argument("--out", default=None, help="results folder (default: runs/<profile>)")
    p.add_argument("--data", default="data", help="sample data folder (prepared if missing)")
    args = p.parse_args()
    prof = PROFILES[args.profile]
    out = Path(args.out or f"runs/{args.profile}").resolve()
    data = Path(args.data).resolve()
    py = sys.executable

    step("prepare sample data", [py, "scripts/prepare_data.py", "--out", str(data)], data / "manifest.json",
         out / "logs" / "prepare_data.log")  # fmt: skip
    teacher_root = out / "teacher_lora"
    bundle = [py, "-m", "monai.bundle", "run", "--config_file"]
    common = ["--bundle_root", str(teacher_root), "--dataset_dir", str(data / "lits_liver"), "--num_workers", "1"]
    common += ["--teacher_arch", "litemedsam", "--teacher_ckpt", str(data / "weights" / "lite_medsam.pth")]
    seconds = step(
        "fine-tune the teacher (LiteMedSAM + LoRA)",
        bundle + [str(TEACHER / "train.json")] + common
        + ["--epochs", str(prof["teacher_epochs"]), "--val_interval", "2", "--image_size", "128",
           "--learning_rate", "0.002", "--warmup_iters", "20"],
        teacher_root / "models" / "adapter.pt",
        out / "logs" / "teacher_train.log",
    )  # fmt: skip
    if seconds:
        (teacher_root / "train_time.json").write_text(json.dumps({"train_seconds": seconds}))
    table = out / "iad_table"
    step(
        "distil the IAD student and baselines, evaluate everything",
        [py, "scripts/iad_table.py", "--out", str(table), "--teacher_root", str(teacher_root), "--dataset_dir",
         str(data / "lits_liver"), "--teacher_ckpt", str(data / "weights" / "lite_medsam.pth"), "--epochs",
         str(prof["student_epochs"]), "--kis_epochs", str(prof["kis_epochs"]), "--seeds",
         *map(str, prof["seeds"])],
        table / "table.md",
        out / "logs" / "iad_table.log",
    )  # fmt: skip
    print((table / "table.md").read_text())
    print(f"Results: {out}\n  teacher: {teacher_root}/models (adapter.pt, model_merged.pt)\n  table: {table}/table.md")


if __name__ == "__main__":
    main()
