"""Soft-label cross-entropy, the loss InstaHide and Mixup train with."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``-sum_c t_c log softmax(z)_c`` per row, averaged (``reduction="mean"``), summed or not.

    Args:
        logits: ``(B, num_classes)``.
        soft_targets: ``(B, num_classes)``, non-negative. Rows need not sum to 1: in cross-dataset
            InstaHide they sum to the private coefficients' total, as in the reference code.
    """
    if logits.shape != soft_targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and soft targets {tuple(soft_targets.shape)} differ in shape")
    loss = -(soft_targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")
