"""Transforms shared by the bundles that a plain MONAI transform list cannot say for every class count."""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import Activationsd, AsDiscreted, Compose

__all__ = ["discretize"]


def discretize(
    num_classes: int, pred_key: str = "pred", label_key: str | None = "label", onehot: bool = True
) -> Compose:
    """Logits → one-hot prediction (softmax + argmax for K ≥ 2, sigmoid + 0.5 threshold for K = 1), and the label
    to one-hot, as MONAI's metrics and handlers expect. ``onehot=False``: a label map (1, ...) for saving."""
    keys: Sequence[str] = [pred_key] + ([label_key] if label_key else [])
    if not onehot and num_classes > 1:
        return Compose([AsDiscreted(keys=pred_key, argmax=True)])
    if num_classes == 1:
        return Compose(
            [Activationsd(keys=pred_key, sigmoid=True), AsDiscreted(keys=pred_key, threshold=0.5)]
            + ([AsDiscreted(keys=label_key, threshold=0.5)] if label_key else [])
        )
    return Compose(
        [
            Activationsd(keys=pred_key, softmax=True),
            AsDiscreted(keys=keys, argmax=[True] + [False] * (len(keys) - 1), to_onehot=[num_classes] * len(keys)),
        ]
    )
