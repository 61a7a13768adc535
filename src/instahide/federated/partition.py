"""Splitting one training set among parties: IID, and non-IID by per-class Dirichlet proportions.

In a real federation every party simply has its own data; in a simulation one dataset is split. Two
splits are standard:

- :func:`iid_partition`: a random permutation cut into ``num_parties`` near-equal parts (sizes differ by
  at most one), so every party sees about the same label distribution.
- :func:`dirichlet_partition` (Hsu, Qi, Brown 2019, "Measuring the effects of non-identical data
  distribution"): for every class ``c`` draw proportions ``p_c ~ Dirichlet(alpha, ..., alpha)`` over the
  parties and deal the images of class ``c`` out in those proportions. Small ``alpha`` (0.1) gives each
  party a few dominant classes; large ``alpha`` (100) approaches the IID split. Draws in which a party
  gets fewer than ``min_size`` images are redrawn, at most ``max_attempts`` times, then a ValueError says
  the request is infeasible.

Both return a list of ``num_parties`` sorted int64 index arrays that are disjoint and together cover
``range(n)``. The seed only decides who holds which image; it is not key material.

Example::

    parts = dirichlet_partition(labels, num_parties=4, alpha=0.5, seed=0, min_size=10)
    x_party0, y_party0 = x[parts[0]], y[parts[0]]
"""
from __future__ import annotations

import numpy as np

__all__ = ["iid_partition", "dirichlet_partition", "label_histogram"]


def _check_parties(n: int, num_parties: int, min_size: int = 1) -> None:
    if isinstance(num_parties, bool) or int(num_parties) != num_parties or num_parties < 1:
        raise ValueError(f"num_parties must be an integer >= 1, got {num_parties!r}")
    if n < num_parties * min_size:
        raise ValueError(f"cannot give {num_parties} parties at least {min_size} image(s) each from {n} images")


def iid_partition(n: int, num_parties: int, seed: int = 0) -> list[np.ndarray]:
    """``num_parties`` disjoint random parts of ``range(n)``, sizes ``n // num_parties`` or one more.

    Returns a list of sorted int64 arrays ``(n_p,)`` whose union is ``range(n)``.
    """
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    _check_parties(n, num_parties)
    perm = np.random.default_rng(seed).permutation(int(n))
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, int(num_parties))]


def dirichlet_partition(labels, num_parties: int, alpha: float = 0.5, seed: int = 0, min_size: int = 10,
                        max_attempts: int = 1000) -> list[np.ndarray]:
    """Non-IID split of the images with class ``labels`` ``(N,)``: per-class Dirichlet(alpha) proportions.

    For each class, the class's images (shuffled) are cut at the cumulative proportions of a draw
    ``Dirichlet(alpha * ones(num_parties))``. The whole draw is repeated while some party has fewer than
    ``min_size`` images.

    Args:
        labels: ``(N,)`` integer class labels (numpy or torch).
        num_parties: number of parts.
        alpha: concentration > 0 (small: skewed; large: near IID).
        seed: seed of the draws (who holds which image).
        min_size: the smallest acceptable part.
        max_attempts: redraws before giving up with a ValueError.

    Returns:
        a list of ``num_parties`` sorted int64 index arrays, disjoint, covering ``range(N)``.
    """
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if min_size < 0 or max_attempts < 1:
        raise ValueError(f"need min_size >= 0 and max_attempts >= 1, got {min_size}, {max_attempts}")
    _check_parties(len(y), num_parties, max(min_size, 0))
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == c) for c in classes]
    smallest = 0
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_parties)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_parties, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for party, chunk in enumerate(np.split(idx, cuts)):
                parts[party].append(chunk)
        out = [np.sort(np.concatenate(ch)).astype(np.int64) for ch in parts]
        smallest = min(len(o) for o in out)
        if smallest >= min_size:
            return out
    raise ValueError(f"dirichlet_partition: no draw in {max_attempts} attempts gave all {num_parties} parties "
                     f">= {min_size} images (alpha={alpha}, {len(y)} images; last draw's smallest part: "
                     f"{smallest}); raise alpha, lower min_size or use fewer parties")


def label_histogram(labels, parts: list[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """Counts ``(num_parties, num_classes)``: how many images of each class each party holds."""
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])
