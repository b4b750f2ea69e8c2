#!/usr/bin/env python
"""The best Dice (and clDice) a network can reach when its logits live on an S x S grid: the resolution ceiling of a
task, to choose ``image_size`` (and see what a teacher's low-resolution masks can carry) before training anything.

The 2D bundles resize every image to ``image_size`` and bring the logits back to the image's own size with bilinear
interpolation before scoring (``common.inferers.PlaneInferer``). For each size S the oracle prediction is the label
itself at S: each class's area fraction per S x S cell (``area`` downsampling of the one-hot label), bilinear back to
the label's size, the class of the highest value per pixel. Its scores (``common.evaluation.case_metrics``, inside the
``roi`` mask where the dataset has one) bound what any network whose output is S x S can score. SAM-family teachers
return masks at a quarter of their input (LiteMedSAM at 256 px: 64 x 64), so their ceiling is the one of S / 4.

    python scripts/resolution_ceiling.py --dataset_dir data/drive --sizes 32 64 128 256 512 --cldice
    python scripts/resolution_ceiling.py --dataset_dir data/hc18 --split validation --sizes 32 128
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

__all__ = ["oracle_at_size", "ceiling"]


def oracle_at_size(onehot: torch.Tensor, size: int) -> torch.Tensor:
    """The one-hot prediction (K, H, W) of an oracle whose output grid is ``size`` x ``size``: the label's class
    fractions per cell, resized back bilinearly (as the bundles resize logits) and arg-maxed."""
    x = onehot.float()[None]
    small = F.interpolate(x, size=(size, size), mode="area")
    back = F.interpolate(small, size=tuple(onehot.shape[1:]), mode="bilinear", align_corners=False)[0]
    return F.one_hot(back.argmax(0), onehot.shape[0]).permute(2, 0, 1).bool()


def ceiling(
    items: list[dict], num_classes: int, class_names: list[str], sizes: list[int], with_cldice: bool = False
) -> dict[int, dict]:
    """Size -> the oracle's scores over ``items`` (each with ``label``, optionally ``roi``), summarised per class
    as ``common.evaluation.summarize`` does for a model."""
    from monai.transforms import LoadImage

    from common.evaluation import case_metrics, summarize

    load = LoadImage(image_only=True, ensure_channel_first=True)
    cases: dict[int, list[dict]] = {s: [] for s in sizes}
    for item in items:
        label = torch.as_tensor(np.asarray(load(item["label"]))).long()[0]
        onehot = F.one_hot(label, num_classes).permute(2, 0, 1).bool()
        roi = torch.as_tensor(np.asarray(load(item["roi"]))) if item.get("roi") else None
        for s in sizes:
            cases[s].append(case_metrics(oracle_at_size(onehot, s), onehot, roi=roi, with_cldice=with_cldice))
    return {s: summarize(c, class_names) for s, c in cases.items()}


def main(argv: list[str] | None = None) -> None:
    from common.data.datalist import load_datalist
    from common.data.dataset_info import load_dataset_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="a 2D dataset folder (datalist.json, dataset.json)")
    p.add_argument("--split", default="training", help="the datalist split to read (default: training)")
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128, 256, 512], help="output grid sizes S")
    p.add_argument("--cldice", action="store_true", help="also clDice (thin structures such as vessels)")
    p.add_argument("--out", default=None, help="also write the table as JSON here")
    args = p.parse_args(argv)
    info = load_dataset_info(args.dataset_dir)
    if info.dim != 2:
        p.error(f"'{args.dataset_dir}' is {info.dim}D; this ceiling is for 2D datasets")
    items = load_datalist(args.dataset_dir, args.split, info.num_classes)
    names = list(info.class_names)
    table = ceiling(items, info.num_classes, names, args.sizes, args.cldice)
    metrics = ["dice"] + (["cldice"] if args.cldice else [])
    head = ["output grid S"] + [f"{m} {n} %" for n in names for m in metrics] + ["mean Dice %"]
    print(f"{args.dataset_dir}, {args.split}: {len(items)} images, oracle at each output grid (scored at full size)")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for s, summary in table.items():
        cells = [f"{s} x {s}"]
        for n in names:
            cells += [f"{100 * summary['classes'][n][f'{m}_mean']:.2f}" for m in metrics]
        cells.append(f"{100 * summary['mean_dice']:.2f}" if not math.isnan(summary["mean_dice"]) else "–")
        print("| " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({str(s): v for s, v in table.items()}, indent=1))


if __name__ == "__main__":
    main()
