"""The ground-truth segmentation loss every bundle uses (METHODS.md §1, and L_gt of §4)."""

from __future__ import annotations

from monai.losses import DiceCELoss

__all__ = ["dice_ce_loss"]


def dice_ce_loss(num_classes: int, lambda_ce: float = 0.2, lambda_dice: float = 0.8) -> DiceCELoss:
    """λ_ce·CE + λ_dice·Dice on logits vs an integer label map (B, 1, ...); defaults 0.2·CE + 0.8·Dice (SAMed).

    K ≥ 2: softmax Dice (background included, as SAMed) and cross-entropy. K = 1: sigmoid Dice and
    BCE-with-logits (MONAI's DiceCELoss switches to BCE for one channel).
    """
    if num_classes == 1:
        return DiceCELoss(sigmoid=True, lambda_ce=lambda_ce, lambda_dice=lambda_dice)
    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=lambda_ce, lambda_dice=lambda_dice)
