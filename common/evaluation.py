"""Per-class Dice and HD95 of one case, and their summary over cases (METHODS.md §7).

Conventions for empty masks (also written into every summary file):
- ground truth and prediction both empty for a class: Dice and HD95 are undefined (NaN) and left out of the means;
- exactly one of them empty: Dice = 0 and HD95 = the image diagonal in mm (the largest distance possible);
- otherwise HD95 = MONAI ``compute_hausdorff_distance(percentile=95)`` with the image spacing.
The summary also gives the global Dice of each class, 2·ΣTP / (Σ|P| + Σ|G|) over all cases, which stays defined
for a class that most cases lack (e.g. a tumour on 2D slices).

Also per class: sensitivity TP / |G| (NaN when the class is absent from the ground truth), and on request clDice
(Shit et al., CVPR 2021: 2·Tprec·Tsens / (Tprec + Tsens), Tprec = |skel(P) ∩ G| / |skel(P)|, Tsens =
|skel(G) ∩ P| / |skel(G)|), the topology-aware score of thin structures such as vessels. With an ``roi`` mask (e.g.
DRIVE's field of view) every score is computed inside it only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

__all__ = ["EMPTY_MASK_CONVENTION", "OPTIONAL_METRICS", "case_metrics", "cldice", "lower_is_better", "summarize"]

OPTIONAL_METRICS = ("sensitivity", "cldice")  # per class, summarised when every case has them

EMPTY_MASK_CONVENTION = (
    "both empty: Dice and HD95 undefined (NaN, excluded from means); one empty: Dice 0, HD95 = image diagonal (mm)"
)


def cldice(pred: np.ndarray, label: np.ndarray) -> float:
    """clDice of two binary masks (2D or 3D); NaN when both are empty, 0 when exactly one is."""
    from skimage.morphology import skeletonize

    if not pred.any() and not label.any():
        return math.nan
    if not pred.any() or not label.any():
        return 0.0
    skel_p, skel_g = skeletonize(pred), skeletonize(label)
    tprec = (skel_p & label).sum() / max(skel_p.sum(), 1)
    tsens = (skel_g & pred).sum() / max(skel_g.sum(), 1)
    return float(2 * tprec * tsens / (tprec + tsens)) if tprec + tsens > 0 else 0.0


def case_metrics(
    pred: torch.Tensor,
    label: torch.Tensor,
    spacing: Sequence[float] | None = None,
    include_background: bool = False,
    roi: torch.Tensor | None = None,
    with_cldice: bool = False,
) -> dict[str, list[float]]:
    """Dice, HD95, sensitivity (and clDice) and the counts behind global Dice, per class, for one case.

    Args:
        pred: one-hot prediction (K, *spatial).
        label: one-hot ground truth (K, *spatial).
        spacing: voxel size in mm per spatial axis (None: 1 mm).
        include_background: also score channel 0 (ignored when K = 1: the single channel is the foreground).
        roi: a mask (1 or no channel axis, *spatial): score inside it only (prediction and label are cleared
            outside).
        with_cldice: also compute clDice per class.
    """
    pred, label = pred.bool().cpu(), label.bool().cpu()
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape.")
    if roi is not None:
        inside = torch.as_tensor(roi).cpu().reshape(pred.shape[1:]) > 0
        pred, label = pred & inside, label & inside
    spatial = pred.shape[1:]
    spacing = [float(s) for s in (spacing if spacing is not None else [1.0] * len(spatial))][: len(spatial)]
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(spatial, spacing)))
    first = 0 if include_background or pred.shape[0] == 1 else 1
    out: dict[str, list[float]] = {"dice": [], "hd95": [], "sensitivity": [], "tp": [], "pred_sum": [], "label_sum": []}
    if with_cldice:
        out["cldice"] = []
    for c in range(first, pred.shape[0]):
        p, g = pred[c], label[c]
        tp, ps, gs = float((p & g).sum()), float(p.sum()), float(g.sum())
        if ps == 0 and gs == 0:
            dice, hd = math.nan, math.nan
        elif ps == 0 or gs == 0:
            dice, hd = 0.0, diagonal
        else:
            dice = 2 * tp / (ps + gs)
            hd = float(
                compute_hausdorff_distance(p[None, None].float(), g[None, None].float(), percentile=95, spacing=spacing)
            )
        for k, v in zip(
            ("dice", "hd95", "sensitivity", "tp", "pred_sum", "label_sum"),
            (dice, hd, tp / gs if gs else math.nan, tp, ps, gs),
        ):
            out[k].append(v)
        if with_cldice:
            out["cldice"].append(cldice(p.numpy(), g.numpy()))
    return out


def summarize(cases: list[dict[str, list[float]]], class_names: Sequence[str]) -> dict:
    """Per class: mean ± std Dice and HD95 over the cases where defined, and global Dice; overall: the mean over
    classes of each case, then over cases (METHODS.md §7)."""
    dice = np.array([c["dice"] for c in cases], dtype=float)  # (cases, classes)
    hd = np.array([c["hd95"] for c in cases], dtype=float)
    tp, ps, gs = (np.array([c[k] for c in cases], dtype=float).sum(0) for k in ("tp", "pred_sum", "label_sum"))

    def stats(a: np.ndarray) -> tuple[float, float, int]:
        a = a[~np.isnan(a)]
        return (float(a.mean()), float(a.std()), int(a.size)) if a.size else (math.nan, math.nan, 0)

    optional = {k: np.array([c[k] for c in cases], dtype=float) for k in OPTIONAL_METRICS if all(k in c for c in cases)}
    per_class = {}
    for i, name in enumerate(class_names):
        d, h = stats(dice[:, i]), stats(hd[:, i])
        denom = ps[i] + gs[i]
        per_class[name] = {
            "dice_mean": d[0],
            "dice_std": d[1],
            "hd95_mean": h[0],
            "hd95_std": h[1],
            "cases_scored": d[2],
            "global_dice": float(2 * tp[i] / denom) if denom else math.nan,
            **{f"{k}_mean": stats(v[:, i])[0] for k, v in optional.items()},
        }
    with np.errstate(all="ignore"), warnings.catch_warnings():  # a case with no class defined: NaN, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        case_dice = np.nanmean(dice, axis=1) if dice.size else np.array([])
        case_hd = np.nanmean(hd, axis=1) if hd.size else np.array([])
    return {
        "num_cases": len(cases),
        "classes": per_class,
        "mean_dice": stats(case_dice)[0],
        "mean_hd95": stats(case_hd)[0],
        "mean_global_dice": float(np.nanmean([v["global_dice"] for v in per_class.values()])),
        "empty_mask_convention": EMPTY_MASK_CONVENTION,
    }


def lower_is_better(current: float, best: float) -> bool:
    """Key-metric comparison for an error-like metric (e.g. the diffusion model's validation MSE): True when
    ``current`` beats ``best``. MONAI engines start ``best`` at -1, so the first value always wins."""
    return best < 0 or current < best
