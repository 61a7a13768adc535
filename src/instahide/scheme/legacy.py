"""``legacy=True``: the reference code's key sampling, defects included (docs/scheme.md, defects).

Kept so that the published challenge and the attacks on it can be replayed, never as a default:

1. public window: public partners are drawn by a permutation of the first ``n`` rows of the pool
   (``n`` = number of private images encrypted together), not from the whole pool;
2. fixed points: each extra slot is one ``torch.randperm`` of the images, so an image can be mixed
   with itself (and the same partner can fill two slots);
3. weak randomness: coefficients come from a numpy ``RandomState`` and permutations and masks from a
   torch CPU generator, both Mersenne Twister seeded with one integer below 2**32;
4./5. the per-row rejection loop, in Python (bounds are still checked first, so it cannot spin).

Draw order, as in the reference ``mixup_data``: all coefficients (numpy) first, then one permutation
per slot 2..k in slot order (torch), then the mask ``torch.randint(2, size=x.shape)`` (torch), whose
value 0 means a flipped sign (``sign = 2 * r - 1``). With a seed ``s``, this equals the reference code
run after ``np.random.seed(s); torch.manual_seed(s)`` on the CPU.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .coefficients import check_bounds
from .keys import Key
from .masks import pack_signs

LEGACY_SEED_BITS = 32


def legacy_seed() -> int:
    """A fresh 32-bit seed, as the reference code's generators effectively had."""
    return int.from_bytes(os.urandom(4), "little")


class LegacyGenerator:
    """The reference code's two global generators, as one object seeded with one integer.

    ``numpy``: a ``numpy.random.RandomState`` (coefficients); ``torch``: a CPU ``torch.Generator``
    (permutations, masks). Both Mersenne Twister, both seeded with ``seed`` (in ``[0, 2**32)``, drawn
    from OS entropy if None). Successive calls continue the streams, as the reference's globals did.

    The streams cannot be split: a copy in another process (a forked or spawned ``DataLoader``
    worker, ``os.fork``) would replay the same keys as every other copy, so drawing from one there is
    refused (:meth:`check_process`).
    """

    def __init__(self, seed: int | None = None) -> None:
        seed = legacy_seed() if seed is None else int(seed)
        if not 0 <= seed < 2 ** LEGACY_SEED_BITS:
            raise ValueError(f"legacy seeds are integers in [0, 2**32), got {seed}")
        self.seed = seed
        self.numpy = np.random.RandomState(seed)
        self.torch = torch.Generator().manual_seed(seed)
        self.pid = os.getpid()

    def check_process(self) -> None:
        """Raise a RuntimeError in any process other than the one that made the generator."""
        if self.pid != os.getpid():
            raise RuntimeError(
                f"{self!r} (legacy=True, e.g. InstaHide(legacy=True)) was made in process {self.pid} and copied "
                f"into process {os.getpid()} (a DataLoader worker or another fork), where every copy replays "
                "the same Mersenne-Twister keys: encrypt with legacy=True in the process that made it "
                "(num_workers=0; InstaHideDataset has no legacy mode for this reason), or use legacy=False")

    def __repr__(self) -> str:
        return f"LegacyGenerator(seed={self.seed})"


def legacy_coefficients(n: int, k: int, upper: float, dom: float | None, rs: np.random.RandomState) -> np.ndarray:
    """The reference sampler, draw for draw: ``(n, k)`` float64 from ``rs``.

    One ``normal(size=(n, k))`` call, then per row: normalise ``|z|``, and while ``max > upper`` (or,
    when ``dom`` is given, ``lam_1 + lam_2 < dom``) redraw that row with ``normal(size=(1, k))``.
    """
    check_bounds(k, upper, dom, 2 if (dom is not None and k >= 2) else 1)
    lams = rs.normal(0, 1, size=(n, k))
    for i in range(n):
        lams[i] = np.abs(lams[i]) / np.sum(np.abs(lams[i]))
        if k > 1:
            while lams[i].max() > upper or (dom is not None and lams[i][0] + lams[i][1] < dom):
                lams[i] = rs.normal(0, 1, size=(1, k))
                lams[i] = np.abs(lams[i]) / np.sum(np.abs(lams[i]))
    return lams


def legacy_key(
    n: int,
    k: int,
    image_shape: tuple[int, int, int],
    *,
    upper: float,
    dom: float | None,
    num_private: int,
    pool_size: int | None,
    masked: bool,
    generator: LegacyGenerator,
) -> Key:
    """Keys for ``n`` encryptions made the reference code's way, drawn from ``generator``.

    ``dom`` is applied only in cross-dataset mode (``num_private < k``), as in the reference.
    Public indices point into the pool's first ``n`` rows (the window).
    """
    cross = num_private < k
    if cross and (pool_size is None or pool_size < n):
        raise ValueError(
            f"legacy cross-dataset mode draws public partners from a window of the first n={n} rows "
            f"of the public pool, which has only {pool_size} rows"
        )
    if n < 1:
        raise ValueError("too few images: legacy encryption needs at least one image")
    generator.check_process()
    rs, tg = generator.numpy, generator.torch
    lams = legacy_coefficients(n, k, upper, dom if cross else None, rs)
    idx = torch.empty((n, k), dtype=torch.int64)
    idx[:, 0] = torch.arange(n)
    for j in range(1, k):
        idx[:, j] = torch.randperm(n, generator=tg)
    bits = None
    if masked:
        r = torch.randint(2, size=(n, *image_shape), generator=tg)
        bits = pack_signs((r * 2 - 1).view(n, -1))
    meta = {"origin": "legacy-seed", "seed": generator.seed, "legacy": True}
    return Key(torch.from_numpy(lams).float(), idx, num_private, bits, image_shape, meta)
