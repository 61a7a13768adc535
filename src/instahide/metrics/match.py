"""Score a batch recovered in any order: ``match_batches(recovered, truth, data_range=2.0).mean_ssim``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ssim import check_pair, ssim, window_for

__all__ = ["MatchResult", "match_batches"]


@dataclass
class MatchResult:
    """What :func:`match_batches` returns.

    Attributes:
        order: ``(B,)`` ``order[i]`` = index of the true image matched to recovered image ``i``.
        ssim: ``(B,)`` SSIM of every matched pair.
        mean_ssim: mean of ``ssim``.
        mse: ``(B,)`` mean squared error of every matched pair.
        method: ``"hungarian"`` (scipy) or ``"greedy"`` (scipy missing).
    """

    order: np.ndarray
    ssim: np.ndarray
    mean_ssim: float
    mse: np.ndarray
    method: str


def match_batches(recovered, truth, *, data_range: float, win_size: int | None = None,
                  method: str = "auto") -> MatchResult:
    """Pair recovered images with true ones (a batch comes back in any order) to maximise SSIM.

    The SSIM of every (recovered, true) pair is computed with :func:`instahide.metrics.ssim` (equal
    to scikit-image's ``structural_similarity`` with ``channel_axis=0``); the best one-to-one
    assignment is found with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) or,
    without scipy (or ``method="greedy"``), greedily (best remaining pair first).

    Args:
        recovered, truth: ``(B, C, H, W)`` channels-first, same shape (tensors or arrays).
        data_range: pixel range for SSIM (2.0 for ``[-1, 1]``, 1.0 for ``[0, 1]``).
        win_size: SSIM window (default 7, or the largest odd size that fits images under 7 pixels).
        method: ``"auto"``, ``"hungarian"`` or ``"greedy"``.
    """
    rec, tru = (x.detach().cpu().double() for x in check_pair(recovered, truth, names=("recovered", "truth")))
    if method not in ("auto", "hungarian", "greedy"):
        raise ValueError(f"unknown method {method!r}")
    b = rec.shape[0]
    win_size = window_for(rec) if win_size is None else win_size
    sim = ssim(rec.repeat_interleave(b, dim=0), tru.repeat(b, 1, 1, 1), data_range=data_range, win_size=win_size,
               reduction="none").reshape(b, b).numpy()
    used, order = "greedy", None
    if method in ("auto", "hungarian"):
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError:
            if method == "hungarian":
                raise
        else:
            rows, cols = linear_sum_assignment(-sim)
            order, used = cols[np.argsort(rows)], "hungarian"
    if order is None:
        order = _greedy(sim)
    scores = sim[np.arange(b), order]
    mse = ((rec - tru[torch.as_tensor(order)]) ** 2).flatten(1).mean(1).numpy()
    return MatchResult(order, scores, float(scores.mean()), mse, used)


def _greedy(sim: np.ndarray) -> np.ndarray:
    order = np.full(sim.shape[0], -1)
    s = sim.copy()
    for _ in range(sim.shape[0]):
        i, j = np.unravel_index(np.argmax(s), s.shape)
        order[i] = j
        s[i, :] = -np.inf
        s[:, j] = -np.inf
    return order
