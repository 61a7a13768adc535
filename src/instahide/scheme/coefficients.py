"""Step 1 of the scheme: the mixing coefficients lambda of every encryption.

Reference distribution (docs/scheme.md, "The scheme"): draw ``k`` values of ``|N(0, 1)|``, divide by their sum,
and redraw the whole vector until every coefficient is ``<= upper`` (c1) and, in cross-dataset mode,
the coefficients of the private slots sum to ``>= dom`` (c2). Both conditions are tested together on
each draw. Rejection sampling keeps accepted draws exactly distributed as the conditional law, so this
vectorised sampler (draw many rows at once, keep the accepted ones in order) has the reference
distribution; :func:`instahide.scheme.legacy.legacy_coefficients` replays the reference's per-row
loop draw for draw.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import kernel
from .defaults import UPPER
from .rng import KeyGenerator, resolve_generator

_MIN_ACCEPTANCE = 1e-6  # below this share of accepted draws (after a million), stop with an error
_MAX_ROWS_PER_ROUND = 1 << 20
_PILOT_ROWS = 1024


def check_bounds(k: int, upper: float, dom: float | None = None, num_private: int = 2,
                 own_min: float | None = None) -> None:
    """Raise a ValueError naming the bound if no coefficient vector can satisfy it.

    Args:
        k: number of images mixed into one encryption (``k >= 1``).
        upper: c1, the largest allowed coefficient, at most 1 (no bound). Ignored for ``k == 1``
            (the single coefficient is 1, as in the reference code).
        dom: c2, the smallest allowed sum of the first ``num_private`` coefficients, or None.
        num_private: number of leading slots that ``dom`` constrains.
        own_min: the smallest allowed first coefficient (the encrypted image's own), or None.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1 (the number of images mixed), got k={k}")
    if isinstance(upper, bool) or not isinstance(upper, (int, float, np.floating)) or not math.isfinite(upper):
        raise ValueError(f"upper (c1) must be a finite number, got {upper!r}")
    if upper > 1:
        raise ValueError(f"upper (c1) must be <= 1, got upper={upper}: coefficients sum to 1, so upper=1 "
                         "already means no bound")
    if k > 1 and upper * k <= 1.0:
        raise ValueError(
            f"infeasible bound upper={upper} for k={k}: k coefficients that sum to 1 cannot all be "
            f"<= upper unless upper > 1/k = {1.0 / k:.6g}"
        )
    if own_min is not None:
        if not isinstance(own_min, (int, float, np.floating)) or not math.isfinite(own_min) or own_min < 0:
            raise ValueError(f"own_min must be a finite number >= 0, got {own_min!r}")
        if k > 1 and own_min >= min(upper, 1.0):
            raise ValueError(f"infeasible bound own_min={own_min}: with k={k} the first coefficient is "
                             f"< {min(upper, 1.0):.6g} (upper and the other slots)")
    if dom is None:
        return
    if not isinstance(dom, (int, float, np.floating)) or not math.isfinite(dom):
        raise ValueError(f"dom (c2) must be a finite number, got {dom!r}")
    if isinstance(num_private, bool) or not isinstance(num_private, (int, np.integer)) or not 1 <= num_private <= k:
        raise ValueError(f"num_private must be in [1, k={k}], got {num_private}")
    if dom < 0 or dom > 1:
        raise ValueError(f"dom (c2) must be in [0, 1], got dom={dom}")
    if num_private == k or dom == 0:
        return
    reach = min(1.0, num_private * upper) if k > 1 else 1.0
    # The other k - num_private coefficients are > 0 almost surely, so the private sum is < 1, and it
    # can only reach num_private * upper when the other slots can hold the rest.
    if dom >= reach:
        raise ValueError(
            f"infeasible bound dom={dom}: the first {num_private} of k={k} coefficients, each "
            f"<= upper={upper}, sum to less than {reach:.6g}"
        )


def sample_coefficients(
    n: int,
    k: int,
    *,
    upper: float = UPPER,
    dom: float | None = None,
    num_private: int = 2,
    own_min: float | None = None,
    seed=None,
    generator: KeyGenerator | None = None,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Coefficients of ``n`` encryptions: a tensor ``(n, k)``, rows summing to 1.

    Each row is ``|z| / sum(|z|)`` for ``z ~ N(0, I_k)``, redrawn until ``max <= upper`` and (when
    ``dom`` is given) ``sum of the first num_private >= dom``; fully vectorised.

    Args:
        n: number of rows (encryptions).
        k: coefficients per row.
        upper: c1, the reference default 0.65. Not applied when ``k == 1``.
        dom: c2 (cross-dataset mode, reference 0.3), or None for no such condition.
        num_private: how many leading coefficients ``dom`` constrains (2 in the paper's setting).
        own_min: if given, also require the first coefficient (the encrypted image's own) to be
            ``>= own_min`` (inference with InstaHide: the authors report that above 0.5 helps).
        seed: research-only seed (see :class:`~instahide.scheme.rng.KeyGenerator.from_seed`).
        generator: a :class:`KeyGenerator`; default: a fresh one from OS entropy.

    Raises:
        ValueError: infeasible bounds (``upper <= 1/k``, unreachable ``dom``), before any sampling;
            or bounds so tight that fewer than one draw in a million is accepted.

    Example:
        >>> lam = sample_coefficients(5, 4, seed=0)
        >>> lam.shape, bool(torch.allclose(lam.sum(1), torch.ones(5)))
        (torch.Size([5, 4]), True)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an integer, got {type(n).__name__} {n!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch dtype (coefficients are in [0, 1]), got {dtype}")
    check_bounds(k, upper, dom, num_private, own_min)
    gen = resolve_generator(seed, generator)
    out = np.empty((n, k), dtype=np.float64)
    filled, drawn, accepted = 0, 0, 0
    # OS-entropy keys with the fast extra: the same law, compiled in one pass (polar normals, no
    # temporaries; 2.2-2.4x faster, docs/benchmarks.md). Research seeds keep the numpy sampler below,
    # whose draws they replay exactly.
    compiled = gen.seed is None and k > 1 and kernel.available()
    while compiled and filled < n:
        need = n - filled
        rate = (accepted + 1) / (drawn + 2)
        rows = min(_PILOT_ROWS if drawn == 0 else _MAX_ROWS_PER_ROUND, int(math.ceil(need / rate * 1.1)) + 16)
        # ceil(k / 2) pairs of 64-bit words per row, pi/4 of the pairs inside the unit disc
        pairs = math.ceil(rows * ((k + 1) // 2) / (math.pi / 4) * 1.05) + 8
        words = gen.random_bytes(16 * pairs).view(np.uint64)
        before = filled
        filled, tried = kernel.coefficient_rows(words, k, upper, dom, num_private, own_min, out, filled)
        drawn += tried
        accepted += filled - before
        _check_acceptance(filled, n, drawn, accepted, upper, dom, k)
    while filled < n:
        need = n - filled
        rate = (accepted + 1) / (drawn + 2)  # smoothed acceptance estimate
        rows = min(_MAX_ROWS_PER_ROUND, int(math.ceil(need / rate * 1.1)) + 16)
        if gen.seed is None and drawn == 0:
            # OS-entropy keys: a first round of _PILOT_ROWS measures the acceptance, so later rounds
            # draw about 1.1x what they need instead of 2.2x. Research seeds keep the schedule they
            # always had (the round sizes decide which stream values pair up), so their keys replay.
            rows = min(rows, _PILOT_ROWS)
        lam = gen.half_normal((rows, k))
        lam /= lam.sum(axis=1, keepdims=True)
        good = lam[_accepted(lam, upper, dom, num_private, own_min)]
        drawn += rows
        accepted += len(good)
        take = min(need, len(good))
        out[filled:filled + take] = good[:take]
        filled += take
        _check_acceptance(filled, n, drawn, accepted, upper, dom, k)
    return torch.from_numpy(out).to(dtype=dtype, device=device)


def _check_acceptance(filled: int, n: int, drawn: int, accepted: int, upper: float, dom, k: int) -> None:
    """Stop with an error rather than spin when the bounds are feasible but almost never met."""
    if filled < n and drawn >= 1_000_000 and accepted / drawn < _MIN_ACCEPTANCE:
        raise ValueError(
            f"bounds upper={upper}, dom={dom} for k={k} are feasible but accept only "
            f"{accepted} of {drawn} draws; loosen them"
        )


def _accepted(lam: np.ndarray, upper: float, dom: float | None, num_private: int,
              own_min: float | None = None) -> np.ndarray:
    """Boolean ``(rows,)``: which normalised draws ``lam`` ``(rows, k)`` meet both bounds."""
    ok = np.ones(len(lam), dtype=bool)
    if lam.shape[1] > 1:
        ok &= lam.max(axis=1) <= upper
    if dom is not None:
        ok &= lam[:, :num_private].sum(axis=1) >= dom
    if own_min is not None:
        ok &= lam[:, 0] >= own_min
    return ok
