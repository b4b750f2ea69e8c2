"""The pipeline's report, ``OUT/report/``: ``results.md`` and ``results.csv`` (Dice and HD95 per class, parameters,
MACs, latency, training time), ``curves/*.png`` (from the runs' TensorBoard events), ``overlays.png`` (each network's
predictions on a few test slices), and the wall time of each step (from its marker)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from scripts.jobs import wall_seconds
from scripts.pipeline_plan import Layout, plan_steps
from scripts.pipeline_profiles import TSKD_VARIANTS, Profile, overlay_methods, tskd_variants


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _step_seconds(layout: Layout, key: str) -> float | None:
    return wall_seconds(layout.markers / f"{key}.json")


def network_sizes(profile: Profile, iad_sizes: dict | None, threads: int) -> dict[str, dict]:
    """Parameters, MACs per 128-px slice and CPU latency (batch 1, median of 20 runs after 3 warm-ups, as
    ``iad_table.py`` measures) of the teacher and both students; the latencies ``iad_table.py`` already measured
    (teacher, EfficientNet student) are reused."""
    import torch

    from common.networks.sam_teacher import build_teacher
    from common.networks.students import EfficientUNetStudent
    from common.networks.vit_student import build_vit_student
    from common.profiling import count_macs, count_parameters, latency

    torch.set_num_threads(threads)
    iad_sizes = iad_sizes or {}
    nets = {
        "teacher": build_teacher("litemedsam", image_size=profile.teacher_image_size, lora_rank=0),
        "student": EfficientUNetStudent(3),
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
