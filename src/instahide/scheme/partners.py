"""Step 2 of the scheme: which images fill the k slots of each encryption.

Slot 1 (index 0) holds the encrypted image itself. Slots ``1 .. num_private-1`` hold other private
images, slots ``num_private .. k-1`` hold public images (cross-dataset mode; inside-dataset mode has
``num_private == k``). The fixed sampler makes the k images of one encryption distinct (the reference's
permutations could mix an image with itself, docs/scheme.md defect 2) and draws public indices uniformly from the
whole pool, independently per slot and per encryption (the reference used an n-row window, defect 1).
"""
from __future__ import annotations

import numpy as np
import torch

from .rng import KeyGenerator


def sample_partners(
    n: int,
    k: int,
    *,
    num_private: int | None = None,
    pool_size: int | None = None,
    generator: KeyGenerator,
    rows=None,
) -> torch.Tensor:
    """Indices of the images in every slot: int64 tensor ``(n, k)`` (``(len(rows), k)`` with ``rows``).

    Column 0 is ``arange(n)`` (or ``rows``: the encrypted images, indices into the ``n`` private ones). Columns ``1 .. num_private-1`` index the private set (``[0, n)``) and
    are distinct from each other and from the row's own index; columns ``num_private .. k-1`` index
    the public pool (``[0, pool_size)``) and are distinct from each other. Within a row every draw is
    uniform over the indices not yet used in that row.

    Args:
        n: number of private images (encryptions), at least ``num_private``.
        k: slots per encryption.
        num_private: private slots (default ``k``: inside-dataset).
        pool_size: size of the public pool; at least ``k - num_private`` when public slots exist.
        generator: source of randomness.
        rows: optional indices in ``[0, n)`` of the images to encrypt (e.g. one batch); their partners
            are drawn from all ``n`` private images.
    """
    num_private = k if num_private is None else num_private
    if not 1 <= num_private <= k:
        raise ValueError(f"num_private must be in [1, k={k}], got {num_private}")
    if n < num_private:
        raise ValueError(
            f"too few images: {n} private image(s) cannot fill {num_private} distinct private slots "
            f"(k={k}); use a larger set or batch, or a smaller k"
        )
    num_public = k - num_private
    if num_public:
        if pool_size is None:
            raise ValueError(f"{num_public} public slot(s) need a public pool (k={k}, num_private={num_private})")
        if pool_size < num_public:
            raise ValueError(f"too few public images: {pool_size} cannot fill {num_public} distinct public slots")
    rows = check_rows(rows, n)
    idx = np.empty((n if rows is None else len(rows), k), dtype=np.int64)
    idx[:, 0] = np.arange(n) if rows is None else rows
    # Private partners: uniform over [0, n) minus the row itself (draw in [0, n-1), skip own index).
    _fill_distinct(idx, 1, num_private, n, generator, exclude_self=True)
    _fill_distinct(idx, num_private, k, pool_size or 0, generator, exclude_self=False)
    return torch.from_numpy(idx)


def _fill_distinct(idx: np.ndarray, start: int, stop: int, high: int, gen: KeyGenerator,
                   exclude_self: bool) -> None:
    """Fill columns ``start..stop-1`` of ``idx`` with indices in ``[0, high)`` distinct within each
    row over those columns (and from column 0 when ``exclude_self``): each column is drawn uniformly,
    then rows that collide with an earlier column of the block are redrawn until none does. Every
    redraw succeeds with probability >= 1/high, so the loop ends quickly even when high == stop."""
    n = idx.shape[0]
    for j in range(start, stop):
        rows = np.arange(n)
        while len(rows):
            if exclude_self:
                v = gen.integers(high - 1, (len(rows),))
                v += v >= idx[rows, 0]  # skip the row's own index: uniform over the other n-1
            else:
                v = gen.integers(high, (len(rows),))
            idx[rows, j] = v
            rows = rows[(idx[rows, start:j] == v[:, None]).any(axis=1)]


def check_rows(rows, n: int) -> np.ndarray | None:
    """``rows`` (indices of images to encrypt among ``n``) as an int64 array, or a clear error."""
    if rows is None:
        return None
    arr = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"rows must be a 1-D sequence of integer indices, got shape {arr.shape} dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError("rows is empty: give at least one image to encrypt")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"rows must index the {n} private images ([0, {n})), got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)
