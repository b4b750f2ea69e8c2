#!/usr/bin/env python
"""The recokd_student results table: teacher, student from scratch, student + ReCo-KD.

Each row is ``monai.bundle`` runs of the bundle's own configs in ``OUT/<row>``: training (``train.json`` with
``teacher.json`` for the teacher, ``student_only.json`` for the student from scratch, nothing more for ReCo-KD, which
reads the teacher's ``OUT/teacher/models/model.pt``), then ``evaluate.json`` on the test split, run as jobs
(``scripts/jobs.py``, one at a time): a finished training (its marker ``train_time.json``, which holds its wall time) or
evaluation (``eval/metrics_summary.json``) is skipped, so an interrupted table resumes. The table (Markdown, CSV,
JSON) gives per-class Dice and HD95 (mm, with the volume's spacing) on the test volume, parameters, CPU latency per
test volume (median of ``--latency_runs`` sliding-window runs after one warm-up) and training time.

With the default ``--dataset_dir`` the 3D LiTS split is written first if missing (``common.data.volume_split``; needs
``python scripts/prepare_data.py --out data``). Options the script does not know are passed to every bundle run and
to the networks it times (e.g. ``--patch_size "[48,48,24]"``)::

    python scripts/recokd_table.py --out runs/recokd
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import jobs  # noqa: E402
from scripts.bundle_runs import SUMMARY, parse_overrides, train_and_evaluate, train_seconds  # noqa: E402

CONFIGS = REPO / "bundles" / "recokd_student" / "configs"
DEFAULT_DATASET = "data/lits_liver_3d"
# row -> (label, variant configs merged after train.json)
ROWS = {
    "teacher": ("Teacher (DynUNet, full width)", ["teacher.json"]),
    "scratch": ("Student from scratch", ["student_only.json"]),
    "recokd": ("Student + ReCo-KD", []),
}


def row_overrides(row: str, args: argparse.Namespace, extra: dict[str, object]) -> dict[str, object]:
    """The command-line overrides of one row's bundle runs."""
    out: dict[str, object] = {
        "bundle_root": str(Path(args.out) / row),
        "dataset_dir": args.dataset_dir,
        "seed": args.seed,
        "epochs": args.epochs,
        "batches_per_epoch": args.batches_per_epoch,
        "num_workers": 0,
    }
    if row != "teacher":  # teacher.json sets width_divisor 1; a command-line value would override it
        out["width_divisor"] = args.width_divisor
    if row == "recokd":
        out["teacher_ckpt"] = str(Path(args.out) / "teacher" / "models" / "model.pt")
    return {**out, **extra}


def plan(args: argparse.Namespace, extra: dict[str, object]) -> list[jobs.Job]:
    """Training and evaluation of every row in ``OUT/<row>``; ReCo-KD's training needs the teacher's."""
    todo = []
    for row in args.rows:
        configs = [CONFIGS / "train.json"] + [CONFIGS / v for v in ROWS[row][1]]
        needs = ("teacher",) if row == "recokd" else ()
        overrides = row_overrides(row, args, extra)
        evaluate = configs + [CONFIGS / "evaluate.json"]
        todo += train_and_evaluate(row, Path(args.out) / row, configs, overrides, evaluate, needs=needs)
    return todo


def collect(args: argparse.Namespace) -> dict[str, dict]:
    """row -> its test summary and training seconds, for the rows whose evaluation finished."""
    results = {}
    for row in args.rows:
        root = Path(args.out) / row
        if (root / SUMMARY).is_file():
            results[row] = {"summary": json.loads((root / SUMMARY).read_text()), "train_seconds": train_seconds(root)}
        else:
            print(f"[miss] {row}: not finished, left out", flush=True)
    return results


def size_and_latency(row: str, args: argparse.Namespace, extra: dict[str, object]) -> dict:
    """Parameters of the row's network and its median CPU time per test volume: the bundle's own sliding-window
    inferer and preprocessing on the first ``test`` item, ``--latency_runs`` runs after one warm-up."""
    import torch
    from monai.bundle import ConfigParser

    from common.profiling import count_parameters

    torch.set_num_threads(args.threads)
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")] + [str(CONFIGS / v) for v in ROWS[row][1]])
    for key, value in {**row_overrides(row, args, extra), "device": "$torch.device('cpu')"}.items():
        parser[key] = value
    parser["validate#datalist#key"] = "test"
    network = parser.get_parsed_content("network_def").eval()
    ckpt = Path(args.out) / row / "models" / "model.pt"
    if ckpt.is_file():
        from common.checkpoints import read_state_dict

        network.load_state_dict(read_state_dict(ckpt, "model"))
    item = parser.get_parsed_content("validate#datalist")[0]
    image = parser.get_parsed_content("validate#preprocessing")(item)["image"][None]
    inferer = parser.get_parsed_content("validate#inferer")
    times = []
    with torch.inference_mode():
        for i in range(1 + args.latency_runs):
            start = time.perf_counter()
            inferer(image, network)
            if i:
                times.append(time.perf_counter() - start)
    return {
        "params": count_parameters(network),
        "latency_s": sorted(times)[len(times) // 2],
        "volume_shape": list(image.shape[2:]),
        "filters": list(network.filters),
    }


def _num(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:.{digits}f}"


def write_table(results: dict[str, dict], sizes: dict[str, dict], args: argparse.Namespace) -> str:
    """Markdown (returned and written to ``OUT/table.md``), CSV and JSON of the rows present in ``results``."""
    classes = ["liver", "tumour"]
    head = ["method", "filters", "params (M)", "CPU s / volume"] + [f"Dice {c}" for c in classes] + ["mean Dice"]
    head += [f"HD95 {c} (mm)" for c in classes] + ["mean HD95 (mm)", "train time (min)"]
    rows = []
    for row, result in results.items():
        s, size = result["summary"], sizes.get(row, {})
        cells = [ROWS[row][0], str(size.get("filters", "–")).replace(" ", ""), _num(size.get("params"), 3, 1e-6)]
        cells += [_num(size.get("latency_s"), 2)]
        cells += [_num(s["classes"][c]["dice_mean"], 2, 100) for c in classes] + [_num(s["mean_dice"], 2, 100)]
        cells += [_num(s["classes"][c]["hd95_mean"], 2) for c in classes] + [_num(s["mean_hd95"], 2)]
        cells += [_num(result["train_seconds"] / 60, 1)]
        rows.append(cells)
    shape = next((v["volume_shape"] for v in sizes.values() if "volume_shape" in v), None)
    first = next(iter(results.values()))["summary"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    md += [
        "",
        f"Test split of `{args.dataset_dir}` ({first['num_cases']} volume(s)"
        + (f", {'×'.join(map(str, shape))} voxels" if shape else "")
        + f"); seed {args.seed}; {args.epochs} epochs of {args.batches_per_epoch} batches; students at 1/"
        f"{args.width_divisor} width. Dice in %; HD95 with the volume's spacing. CPU time: median of "
        f"{args.latency_runs} sliding-window runs over the whole test volume, {args.threads} threads, after one "
        "warm-up. Empty masks: " + first["empty_mask_convention"] + ".",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(md) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([head] + rows)
    payload = {"results": results, "sizes": sizes, "args": {k: v for k, v in vars(args).items() if k != "extra"}}
    (out / "table.json").write_text(json.dumps(payload, indent=1))
    return "\n".join(md)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/recokd")
    p.add_argument("--dataset_dir", default=DEFAULT_DATASET)
    p.add_argument("--lits_dir", default="data/lits_liver", help="source of the default 3D split")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batches_per_epoch", type=int, default=10)
    p.add_argument("--width_divisor", type=int, default=4, help="student width = teacher width / this (2, 4, 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of every run and of the timing")
    p.add_argument("--latency_runs", type=int, default=3)
    p.add_argument("--report_only", action="store_true", help="write the table from finished runs; train nothing")
    args, unknown = p.parse_known_args(argv)
    extra = parse_overrides(unknown)
    if args.dataset_dir == DEFAULT_DATASET and not args.report_only:
        from common.data.volume_split import write_lits_volume_split

        write_lits_volume_split(args.lits_dir, args.dataset_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if not args.report_only:
        jobs.run(plan(args, extra), env)
    results = collect(args)
    if not results:
        sys.exit("error: no finished row to report")
    sizes = {row: size_and_latency(row, args, extra) for row in results}
    print(write_table(results, sizes, args))
    print(f"\nwritten: {Path(args.out) / 'table.md'} (and .csv, .json)")


if __name__ == "__main__":
    main()
