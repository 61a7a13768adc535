"""Score a decryption of an InstaHide challenge the way the challenge did (docs/challenge.md, "Format").

Per row ``r`` (``p1, p2`` the private images in slots 1 and 2): ``ssim1, ssim2`` (:func:`instahide.metrics.ssim`,
data range from the truth; the decryption is NOT clipped, and has no sign allowance) and ``l2_1, l2_2``
(RMSE). ``Max_SSIM`` = mean of ``max(ssim1, ssim2)``, ``Mean_SSIM`` = mean of their average, ``Best_L2`` /
``Mean_L2`` the same for L2. With ``num_private == 1``, ``p2 = p1`` (noted in the result).
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_open, atomic_write_text
from ..metrics import l2, ssim
from .make import ChallengeTruth, challenge_meta

__all__ = ["ScoreResult", "score", "write_score_files", "check_decryption", "SSIM_CONVENTION", "L2_CONVENTION"]

SSIM_CONVENTION = ("skimage.metrics.structural_similarity(dec, p, data_range=R, channel_axis=-1) with its "
                   "defaults (uniform 7x7 window, K1=0.01, K2=0.03, sample covariance, mean over the valid "
                   "region, per channel then averaged); R = 2 for pm1, 1 for unit, mean_c 1/std_c for "
                   "normalize; no clipping")
L2_CONVENTION = "root-mean-square error over H, W, C per row, in the encryption's pixel units"
_CHUNK = 512  # rows per SSIM call: bounds the float64 intermediates to ~0.4 GB for 32x32x3 images


@dataclass
class ScoreResult:
    """What :func:`score` returns.

    Attributes:
        max_ssim, mean_ssim, best_l2, mean_l2: the challenge's summary scores (means over rows).
        share_above: share of rows whose ``max(ssim1, ssim2) > threshold``.
        threshold: that threshold (0.8).
        p1, p2: int64 ``(N,)`` private images in slots 1 and 2.
        ssim1, ssim2, l2_1, l2_2: float64 ``(N,)`` per-row scores against ``p1`` and ``p2``.
        per_private_best_ssim: float64 ``(n,)``: for each private image, its best SSIM over the rows
            where it sits in slot 1 or 2 (NaN if it never does).
        data_range: the SSIM data range used.
        notes: caveats (e.g. ``num_private == 1``).
    """

    max_ssim: float
    mean_ssim: float
    best_l2: float
    mean_l2: float
    share_above: float
    threshold: float
    p1: np.ndarray
    p2: np.ndarray
    ssim1: np.ndarray
    ssim2: np.ndarray
    l2_1: np.ndarray
    l2_2: np.ndarray
    per_private_best_ssim: np.ndarray
    data_range: float
    notes: list[str] = field(default_factory=list)

    @property
    def row_max_ssim(self) -> np.ndarray:
        return np.maximum(self.ssim1, self.ssim2)

    def summary(self) -> dict:
        """The scores and conventions as a JSON-ready dict (no per-row arrays)."""
        best = self.per_private_best_ssim
        return {
            "Max_SSIM": self.max_ssim, "Mean_SSIM": self.mean_ssim,
            "Best_L2": self.best_l2, "Mean_L2": self.mean_l2,
            f"share_max_ssim_above_{self.threshold}": self.share_above,
            "rows": int(len(self.ssim1)),
            "private_images_best_ssim_mean": float(np.nanmean(best)) if np.isfinite(best).any() else None,
            "private_images_recovered_above_threshold": int(np.sum(best > self.threshold)),
            "ssim": SSIM_CONVENTION, "data_range": self.data_range, "l2": L2_CONVENTION,
            "notes": list(self.notes),
        }


def check_decryption(decryption, truth: ChallengeTruth) -> torch.Tensor:
    """The decryption as a float tensor of the encryption's shape, or a clear error."""
    if not isinstance(decryption, (np.ndarray, torch.Tensor)):
        raise TypeError("decryption must be a numpy array or torch tensor (N, C, H, W), got "
                        f"{type(decryption).__name__}")
    dec = decryption.detach() if isinstance(decryption, torch.Tensor) else decryption
    shape = tuple(dec.shape)
    want = truth.encryption_shape
    if len(shape) != 4 or shape[1:] != want[1:]:
        raise ValueError(f"wrong decryption shape {shape}: it must equal the encryption's shape {want} "
                         "(N, C, H, W), channels first")
    if shape[0] != want[0]:
        raise ValueError(f"mismatched ground truth: the decryption has {shape[0]} rows but the truth is for "
                         f"{want[0]} encryptions ({truth.n} images x T={truth.T}); is it the right challenge?")
    t = torch.as_tensor(dec)
    if not t.is_floating_point():
        raise TypeError(f"decryption must be float (the encryption's pixel units), got {t.dtype}")
    finite = torch.isfinite(t.reshape(len(t), -1)).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise ValueError(f"decryption contains NaN or Inf in {len(bad)} row(s), first rows {bad[:5].tolist()}")
    return t


def score(decryption, truth: ChallengeTruth, *, threshold: float = 0.8) -> ScoreResult:
    """Score ``decryption`` ``(N, C, H, W)`` against the challenge's ``truth`` (module docstring).

    Example (the true images themselves score 1):
        >>> from instahide.data import load_dataset
        >>> from instahide.challenge import make_challenge
        >>> ds = load_dataset("digits", split="test").subset(slice(0, 10))
        >>> _, _, truth = make_challenge(ds.images, ds.labels, None, T=2, k=4, research_seed=0)
        >>> res = score(truth.private[truth.pairs[:, 0]], truth)   # the true images themselves
        >>> round(res.max_ssim, 6)
        1.0
    """
    dec = check_decryption(decryption, truth)
    pairs = truth.pairs
    p1, p2 = pairs[:, 0].copy(), pairs[:, 1].copy()
    dev = dec.device  # scores are computed where the decryption is (CPU or CUDA)
    private = torch.from_numpy(truth.private).to(dev, torch.float64)
    i1, i2 = torch.from_numpy(p1).to(dev), torch.from_numpy(p2).to(dev)
    n_rows = len(dec)
    s1, s2, d1, d2 = (np.empty(n_rows) for _ in range(4))
    for s in range(0, n_rows, _CHUNK):
        e = min(n_rows, s + _CHUNK)
        x = dec[s:e].to(torch.float64)
        a = private[i1[s:e]]
        s1[s:e] = ssim(x, a, data_range=truth.data_range, reduction="none").cpu().numpy()
        d1[s:e] = l2(x, a).cpu().numpy()
        if truth.num_private >= 2:
            b = private[i2[s:e]]
            s2[s:e] = ssim(x, b, data_range=truth.data_range, reduction="none").cpu().numpy()
            d2[s:e] = l2(x, b).cpu().numpy()
    notes = []
    if truth.num_private < 2:
        s2[:], d2[:] = s1, d1
        notes.append("num_private=1: only slot 1 holds a private image; p2 = p1 and every pair score is "
                     "the slot-1 score")
    row_max = np.maximum(s1, s2)
    best = np.full(truth.n, -np.inf)
    np.maximum.at(best, p1, s1)
    np.maximum.at(best, p2, s2)
    best[np.isneginf(best)] = np.nan
    return ScoreResult(
        max_ssim=float(row_max.mean()), mean_ssim=float(((s1 + s2) / 2).mean()),
        best_l2=float(np.minimum(d1, d2).mean()), mean_l2=float(((d1 + d2) / 2).mean()),
        share_above=float((row_max > threshold).mean()), threshold=float(threshold),
        p1=p1, p2=p2, ssim1=s1, ssim2=s2, l2_1=d1, l2_2=d2, per_private_best_ssim=best,
        data_range=float(truth.data_range), notes=notes,
    )


def write_score_files(result: ScoreResult, out_dir: str | os.PathLike, truth: ChallengeTruth) -> dict[str, Path]:
    """Write ``rows.csv`` (row, p1, p2, ssim1, ssim2, max_ssim, l2_1, l2_2) and ``scores.json`` (the
    summary, the challenge's public parameters and the conventions) to ``out_dir``; returns their
    paths. (:func:`instahide.report.write_score_report` adds the picture.)"""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"rows": out / "rows.csv", "scores": out / "scores.json"}
    row_max = result.row_max_ssim
    with atomic_open(paths["rows"], "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["row", "p1", "p2", "ssim1", "ssim2", "max_ssim", "l2_1", "l2_2"])
        for r in range(len(row_max)):
            w.writerow([r, int(result.p1[r]), int(result.p2[r]), f"{result.ssim1[r]:.6f}",
                        f"{result.ssim2[r]:.6f}", f"{row_max[r]:.6f}", f"{result.l2_1[r]:.6f}",
                        f"{result.l2_2[r]:.6f}"])
    report = {"scores": result.summary(), "challenge": challenge_meta(truth),
              "per_private_best_ssim": [None if np.isnan(v) else round(float(v), 6)
                                        for v in result.per_private_best_ssim]}
    atomic_write_text(paths["scores"], json.dumps(report, indent=2, default=str) + "\n")
    return paths
