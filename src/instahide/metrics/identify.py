"""Leakage measures that match recognition (docs/audit.md, "Identification and labels"): rank-1
identification of recovered images among candidate images, and the labels a classifier reads off
recovered images, each with two chance levels.

Example::

    res = rank1_identification(recovered, gallery, targets)  # targets[i]: gallery index(es) of image i's truth
    res.rate, res.chance, res.shuffled
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .ssim import check_pair, ssim, window_for

__all__ = ["Rank1Result", "rank1", "similarity_matrix", "rank1_identification", "SIMILARITIES", "standardise",
           "LinearClassifier", "fit_linear_classifier"]

SIMILARITIES = ("ncc", "ssim", "l2")


@dataclass
class Rank1Result:
    """What :func:`rank1` returns (for ``m`` queries and ``K`` candidates).

    Attributes:
        hit: ``(m,)`` bool, the best-scoring candidate is one of the query's targets, strictly above
            every other candidate (a tie with a non-target is no hit).
        rank: ``(m,)`` int, the non-target candidates scoring at least as high as the best target (0: hit).
        top: ``(m,)`` int, the best-scoring candidate (the first on ties).
        rate: share of hits.
        chance: a uniform guess: mean over queries of (distinct targets) / K.
        shuffled: the expected rate of the same answers given to random other queries, ``mean_i sum over
            c in targets_i of q_c`` (``q_c``: share of queries whose top is ``c``): what answers that
            carry no information about their query reach (e.g. always the same candidate).
        candidates: K.
    """

    hit: np.ndarray
    rank: np.ndarray
    top: np.ndarray
    rate: float
    chance: float
    shuffled: float
    candidates: int

    @property
    def above_chance(self) -> float:
        """``(rate - c) / (1 - c)`` with ``c`` the larger chance level: 0 at chance, 1 when all hit."""
        c = max(self.chance, self.shuffled)
        return (self.rate - c) / (1 - c) if c < 1 else 0.0

    def summary(self) -> dict:
        return {"rate": self.rate, "chance": self.chance, "shuffled": self.shuffled,
                "above_chance": self.above_chance, "candidates": self.candidates, "queries": int(len(self.hit))}


def _targets(targets, m: int, k: int) -> np.ndarray:
    t = np.asarray(targets)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or len(t) != m or t.shape[1] == 0 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"targets must be integers (m,) or (m, t) with m = {m} queries, got {t.dtype} {t.shape}")
    if t.min() < 0 or t.max() >= k:
        raise ValueError(f"targets must index the {k} candidates, got values in [{t.min()}, {t.max()}]")
    return t


def rank1(scores, targets) -> Rank1Result:
    """Rank-1 hits of ``scores (m, K)`` (higher: more alike) against ``targets``, ``(m,)`` or ``(m, t)``
    candidate indices (any of a query's targets counts; repeats are allowed)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2 or not np.isfinite(s).all():
        raise ValueError(f"scores must be finite (m, K) with K >= 2 candidates, got shape {s.shape}")
    m, k = s.shape
    t = _targets(targets, m, k)
    mask = np.zeros((m, k), dtype=bool)
    mask[np.arange(m)[:, None], t] = True
    best = np.where(mask, s, -np.inf).max(1)
    rank = ((s >= best[:, None]) & ~mask).sum(1)
    top = s.argmax(1)
    q = np.bincount(top, minlength=k) / m
    hit = rank == 0
    return Rank1Result(hit, rank, top, float(hit.mean()), float(mask.sum(1).mean() / k),
                       float((mask * q[None]).sum(1).mean()), k)


def standardise(x) -> torch.Tensor:
    """Images ``(N, C, H, W)`` -> float64 ``(N, C*H*W)``, each minus its mean and divided by its RMS
    (constant images become 0): brightness and contrast no longer count."""
    x = x.reshape(len(x), -1).double()
    x = x - x.mean(1, keepdim=True)
    return x / x.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)


def _images(x, name: str) -> torch.Tensor:
    return check_pair(x, x, names=(name, name))[0].detach().cpu()


def similarity_matrix(a, b, *, similarity: str = "ncc", data_range: float | None = None) -> np.ndarray:
    """Similarity of every image of ``a (m, C, H, W)`` to every image of ``b (K, C, H, W)``: ``(m, K)``,
    higher = more alike.

    ``"ncc"``: normalised correlation (Pearson's r of the flattened images: blind to brightness and
    contrast); ``"ssim"``: :func:`instahide.metrics.ssim` (needs ``data_range``); ``"l2"``: minus the RMSE.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; expected one of {SIMILARITIES}")
    a, b = _images(a, "recovered"), _images(b, "gallery")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"recovered images are {tuple(a.shape[1:])} but the gallery's are {tuple(b.shape[1:])}")
    if similarity == "ncc":
        return (standardise(a) @ standardise(b).T / a[0].numel()).numpy()
    if similarity == "l2":
        x, y = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
        d2 = (x * x).sum(1)[:, None] - 2 * x @ y.T + (y * y).sum(1)[None]
        return -(d2.clamp_min(0) / x.shape[1]).sqrt().numpy()
    if data_range is None:
        raise ValueError("similarity 'ssim' needs data_range (2.0 for [-1, 1] pixels, 1.0 for [0, 1])")
    uniq, inv = torch.unique(a.double().reshape(len(a), -1), dim=0, return_inverse=True)  # rows repeat
    gal, win = b.double(), window_for(b)
    out = torch.stack([ssim(u.view(1, *a.shape[1:]).expand_as(gal), gal, data_range=data_range, win_size=win,
                            reduction="none") for u in uniq])
    return out[inv].numpy()


def rank1_identification(recovered, gallery, targets, *, similarity: str = "ncc",
                         data_range: float | None = None) -> Rank1Result:
    """Is each recovered image more alike (``similarity``, :func:`similarity_matrix`) to its true
    original(s) than to every other candidate? ``gallery (K, C, H, W)`` holds the originals and the
    distractors; ``targets (m,)`` or ``(m, t)`` index the true original(s) of each of the ``m``
    recovered images ``(m, C, H, W)``. Returns :func:`rank1`'s result."""
    return rank1(similarity_matrix(recovered, gallery, similarity=similarity, data_range=data_range), targets)


@dataclass
class LinearClassifier:
    """A multinomial logistic regression on :func:`standardise`'d images (float32); ``clf(images)`` ->
    logits ``(N, classes)``."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, images) -> np.ndarray:
        x = standardise(_images(images, "images")).float()
        if x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"images have {x.shape[1]} values but the classifier was fitted on {self.weight.shape[0]}")
        return (x @ self.weight + self.bias).numpy()


def fit_linear_classifier(images, labels, num_classes: int | None = None, *, weight_decay: float = 1e-2,
                          max_iter: int = 100) -> LinearClassifier:
    """Fit a :class:`LinearClassifier` to ``images (N, C, H, W)`` and ``labels (N,)``: mean cross-entropy
    plus ``weight_decay * |W|^2``, full-batch L-BFGS from zero (deterministic)."""
    x = standardise(_images(images, "images")).float()  # float32: twice as fast on CIFAR-10 sizes
    y = torch.as_tensor(np.asarray(labels)).long().flatten()
    if len(y) != len(x):
        raise ValueError(f"labels has {len(y)} entries for {len(x)} images")
    classes = int(num_classes or int(y.max()) + 1)
    if classes < 2 or y.min() < 0 or y.max() >= classes:
        raise ValueError(f"labels must be in [0, {classes}) with at least 2 classes, "
                         f"got [{int(y.min())}, {int(y.max())}]")
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearClassifier(w.detach(), b.detach())
