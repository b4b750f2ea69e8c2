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

A step is a job (``scripts/jobs.py``): it is skipped when its outputs and its marker (``OUT/steps/<key>.json``, written
when the step succeeded, with its wall time) exist, so an interrupted pipeline resumes (the step that was interrupted
starts again from its beginning); each step's log is in ``OUT/logs/``. The steps and their commands:
``scripts/pipeline_plan.py``; the report: ``scripts/pipeline_report.py``. Profiles (``--profile``,
``scripts/pipeline_profiles.py``):

- ``smoke``: a first look in minutes on a CPU: a few iterations of everything, tiny transfer set; the numbers mean
  nothing beyond "it runs";
- ``default``: the real CPU run (77.5 min on 2 cores): the teacher and IAD rows as documented, fewer diffusion epochs,
  transfer images and seeds (two) than the bundles' documented runs;
- ``full``: paper-sized settings for a GPU (teacher at 256 px and 100 epochs, 1000 synthetic images, long TS-KD).

    python scripts/run_pipeline.py --profile smoke --out runs/smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.errors import InputError  # noqa: E402
from scripts import jobs  # noqa: E402
from scripts.pipeline_plan import Layout, plan_steps  # noqa: E402
from scripts.pipeline_profiles import PROFILES, Profile  # noqa: E402
from scripts.pipeline_report import write_report  # noqa: E402


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
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per run (default: OMP_NUM_THREADS if set, else the cores / --jobs)",
    )
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
    threads = args.threads or jobs.threads_per_job(args.jobs)
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
        jobs.run(steps, env, args.jobs)
    wall = time.perf_counter() - start
    print("writing the report ...", flush=True)
    report = write_report(profile, layout, threads, wall if not args.report_only else None)
    print(report.read_text())
    print(f"Pipeline: {wall / 60:.1f} min. Report: {report.parent} (results.md, results.csv, curves/, overlays.png)")


if __name__ == "__main__":
    main()
