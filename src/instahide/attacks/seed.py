"""Generator-seed recovery against ``legacy`` keys (docs/attacks.md, "Generator-seed recovery"; the
reference code's defect in docs/scheme.md, "Defects of the reference code, and what we do instead").

1. **Filter** (:func:`seed_candidates`): for many seeds at once, the first outputs of
   ``numpy.random.RandomState(seed)`` (:func:`mt19937_outputs`), turned into the first epoch-0
   coefficients as numpy's legacy ``normal`` and the reference's rejection test would; a seed
   survives when they agree with the leaked labels (tolerance 2e-6).
2. **Replay and solve**: the reference's draws replayed epoch after epoch (:func:`replay_keys`), the
   masks undone (``e * sigma`` is the mixture), the private and public-window images solved by least
   squares; a small residual confirms the seed.

Rows must be epoch-major, each epoch ONE ``encrypt(..., legacy=True, generator=g)`` call on a shared
``LegacyGenerator``. Default keys (a keystream under a 256-bit OS key) have no integer seed: the search
returns None. Throughput: :func:`seed_rate`, measured in docs/audit.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..scheme.coefficients import check_bounds
from ..scheme.defaults import DOM, UPPER
from ..scheme.keys import Key
from ..scheme.legacy import LEGACY_SEED_BITS, LegacyGenerator, legacy_coefficients, legacy_key
from .inputs import check_count, check_encryption, check_label

__all__ = ["SeedRecovery", "recover_seed", "mt19937_outputs", "seed_candidates", "seed_rate",
           "replay_keys"]

# Outputs of the first twist that depend only on the initial state: output j needs state words
# j, j + 1 and j + 397, all from init_genrand, for j < 624 - 397 = 227.
_MAX_WORDS = 227
_LABEL_ATOL = 2e-6  # labels are float32 sums of float32 coefficients (eps 6e-8 near 0.5)


@dataclass
class SeedRecovery:
    """What :func:`recover_seed` returns when it finds the seed.

    Attributes:
        seed: the recovered integer seed of the reference's generators.
        recovered: ``(n, C, H, W)`` float32 private images (least squares on the unmasked mixtures).
        public: ``(n_pub, C, H, W)`` public-window images solved for alongside (None inside-dataset).
        decryption: ``(N, C, H, W)``: row ``r`` is the recovered image in its slot 1.
        key: the replayed :class:`~instahide.scheme.keys.Key` of all ``N`` rows.
        residual: relative RMS residual of the least-squares fit (below 1e-6 for the right seed).
        seeds_checked: number of seeds examined before the match.
        seconds: wall time of the search and the solve.
    """

    seed: int
    recovered: np.ndarray
    public: np.ndarray | None
    decryption: np.ndarray
    key: Key
    residual: float
    seeds_checked: int
    seconds: float
    info: dict = field(default_factory=dict)


# -- vectorised Mersenne Twister -------------------------------------------------------------------
def mt19937_outputs(seeds, count: int) -> np.ndarray:
    """The first ``count`` (1 to 227: the first twist's outputs that depend on the initial state only)
    32-bit outputs of ``numpy.random.RandomState(seed)`` for seeds ``(S,)`` in ``[0, 2**32)`` at once:
    uint32 ``(count, S)``, column ``s`` equal to ``RandomState(seeds[s]).randint(0, 2**32, size=count,
    dtype=np.uint64)``. Cost: 396 + count vector steps over ``S`` values."""
    if not 1 <= count <= _MAX_WORDS:
        raise ValueError(f"count must be in [1, {_MAX_WORDS}], got {count}")
    seeds = np.asarray(seeds)
    if seeds.ndim != 1:
        raise ValueError(f"seeds must be 1-D, got shape {seeds.shape}")
    if seeds.size and (seeds.min() < 0 or seeds.max() >= 2 ** LEGACY_SEED_BITS):
        raise ValueError("seeds must be integers in [0, 2**32)")
    x = seeds.astype(np.uint32)
    lo = np.empty((count + 1, x.size), np.uint32)  # state words 0..count
    hi = np.empty((count, x.size), np.uint32)      # state words 397..397+count-1
    lo[0] = x
    mult, tmp = np.uint32(1812433253), np.empty_like(x)
    for i in range(1, 397 + count):  # uint32 arithmetic wraps modulo 2**32, as the C code
        np.right_shift(x, 30, out=tmp)
        np.bitwise_xor(x, tmp, out=x)
        np.multiply(x, mult, out=x)
        np.add(x, np.uint32(i), out=x)
        if i <= count:
            lo[i] = x
        if i >= 397:
            hi[i - 397] = x
    y = (lo[:count] & np.uint32(0x80000000)) | (lo[1:] & np.uint32(0x7FFFFFFF))
    out = hi ^ (y >> np.uint32(1)) ^ np.where((y & np.uint32(1)).astype(bool), np.uint32(0x9908B0DF), np.uint32(0))
    out ^= out >> np.uint32(11)
    out ^= (out << np.uint32(7)) & np.uint32(0x9D2C5680)
    out ^= (out << np.uint32(15)) & np.uint32(0xEFC60000)
    out ^= out >> np.uint32(18)
    return out


def _legacy_normals(words: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` draws of numpy's legacy ``normal`` from MT outputs ``(W, S)``.

    Polar method as in numpy's ``legacy_gauss``: doubles ``(a >> 5, b >> 6)`` -> ``(a * 2**26 + b) /
    2**53``; a pair ``x1, x2 = 2u - 1`` is accepted when ``0 < r2 = x1^2 + x2^2 < 1`` and yields
    ``f * x2`` then ``f * x1`` with ``f = sqrt(-2 log r2 / r2)``. Returns ``(S, count)`` float64,
    NaN where the words ran out.
    """
    w = words[: (words.shape[0] // 4) * 4]
    u = ((w[0::2] >> np.uint32(5)).astype(np.float64) * 67108864.0
         + (w[1::2] >> np.uint32(6)).astype(np.float64)) / 9007199254740992.0
    x1, x2 = 2.0 * u[0::2] - 1.0, 2.0 * u[1::2] - 1.0  # (attempts, S)
    r2 = x1 * x1 + x2 * x2
    ok = (r2 < 1.0) & (r2 != 0.0)
    pairs = (count + 1) // 2
    rank = np.cumsum(ok, axis=0) - 1
    keep = ok & (rank < pairs)
    att, col = np.nonzero(keep)  # accepted attempts, scattered to their rank
    f = np.sqrt(-2.0 * np.log(r2[att, col]) / r2[att, col])
    out = np.full((2 * pairs, w.shape[1]), np.nan)
    out[2 * rank[att, col], col] = f * x2[att, col]  # f*x2 first, then f*x1
    out[2 * rank[att, col] + 1, col] = f * x1[att, col]
    return out[:count].T


# -- label consistency -----------------------------------------------------------------------------
def _label_values(label: np.ndarray, rows: int) -> np.ndarray:
    """Non-zero entries of the first ``rows`` label rows, padded with NaN: ``(rows, m)``."""
    vals = [np.sort(label[r][label[r] > 0]) for r in range(rows)]
    m = max(1, max(len(v) for v in vals))
    out = np.full((rows, m), np.nan)
    for r, v in enumerate(vals):
        out[r, : len(v)] = v
    return out


def _subset_matrix(p: int) -> np.ndarray:
    """``(p, 2**p - 1)`` 0/1 matrix: column ``s`` selects the non-empty subset ``s + 1``."""
    s = np.arange(1, 2 ** p)
    return ((s[None, :] >> np.arange(p)[:, None]) & 1).astype(np.float64)


def _consistent(lam: np.ndarray, values: np.ndarray, num_private: int, atol: float) -> np.ndarray:
    """Whether coefficients ``lam (..., R, k)`` can have produced label values ``values (R, m)``.

    Every non-zero label entry must equal a sum of a subset of the private coefficients, and the
    entries must sum to the private total. Returns bool ``(..., R)``.
    """
    priv = lam[..., :num_private]
    sums = priv @ _subset_matrix(num_private)  # (..., R, 2**p - 1)
    valid = ~np.isnan(values)
    diff = np.abs(sums[..., :, None, :] - np.nan_to_num(values)[:, :, None])  # (..., R, m, subsets)
    each = (diff.min(axis=-1) <= atol) | ~valid
    total = np.abs(priv.sum(-1) - np.nansum(values, axis=1)) <= atol * num_private
    return each.all(-1) & total


def _filter(seeds: np.ndarray, label: np.ndarray, rows: int, words: int, k: int, num_private: int,
            upper: float, dom: float | None, atol: float) -> tuple[np.ndarray, np.ndarray]:
    """One vectorised pass: (passed, undecided) boolean masks over ``seeds``."""
    values = _label_values(label, rows)
    z = _legacy_normals(mt19937_outputs(seeds, words), rows * k).reshape(len(seeds), rows, k)
    a = np.abs(z)
    lam = a / a.sum(-1, keepdims=True)
    known = ~np.isnan(lam).any(-1)
    lam = np.nan_to_num(lam, nan=1.0)
    known &= lam.max(-1) <= upper  # (S, rows): first draw accepted = final coefficients
    if dom is not None:
        known &= lam[..., 0] + lam[..., 1] >= dom
    bad = (known & ~_consistent(lam, values, num_private, atol)).any(-1)
    decided = known.any(-1)
    return decided & ~bad, ~decided & ~bad


def seed_candidates(seeds, label: np.ndarray, *, k: int, num_private: int, upper: float,
                    dom: float | None, check_rows: int = 10, atol: float = _LABEL_ATOL,
                    chunk: int = 8192) -> np.ndarray:
    """The seeds of ``seeds`` whose first epoch-0 coefficients agree with ``label`` (the filter).

    Two vectorised passes: the first 3 rows from the first 48 outputs of each seed's generator
    (rejects almost every seed), then up to ``check_rows`` rows from 227 outputs for the seeds the
    first pass could not decide; seeds still undecided are replayed with a real ``RandomState``.

    ``seeds``: ``(S,)`` in ``[0, 2**32)``; ``label``: ``(N, classes)``, rows ``0..check_rows-1`` (epoch 0)
    used; ``k, num_private, upper``: the scheme, ``dom``: c2 (None inside-dataset, as the reference);
    ``chunk``: seeds per vector operation. Returns the int64 seeds that pass (almost always just the
    true one).
    """
    seeds = np.asarray(seeds, dtype=np.int64)
    label = np.asarray(label, dtype=np.float64)
    rows1 = max(1, min(3, label.shape[0], 24 // k))
    rows2 = max(1, min(check_rows, label.shape[0], 64 // k))  # 64 normals: ~32 of the 56 attempts
    out = []
    for start in range(0, len(seeds), chunk):
        part = seeds[start:start + chunk]
        passed, undecided = _filter(part, label, rows1, 48, k, num_private, upper, dom, atol)
        out.extend(part[passed].tolist())
        again = part[undecided]
        if len(again):
            passed, undecided = _filter(again, label, rows2, _MAX_WORDS, k, num_private, upper, dom, atol)
            out.extend(again[passed].tolist())
            values = _label_values(label, rows2)
            for s in again[undecided]:  # rare: no checked row was accepted on its first draw
                lam_s = legacy_coefficients(rows2, k, upper, dom, np.random.RandomState(int(s)))
                if _consistent(lam_s, values, num_private, atol).all():
                    out.append(int(s))
    return np.array(sorted(out), dtype=np.int64)


def seed_rate(batch: int = 2 ** 16, *, k: int = 6, num_private: int = 2, upper: float = UPPER,
              dom: float | None = DOM, repeats: int = 2) -> float:
    """Measured filter throughput in seeds per second on this machine (one thread of numpy).

    Extrapolate: ``2**32 / seed_rate() / 3600`` CPU-hours for the whole 32-bit space.
    """
    label = np.zeros((10, 10), np.float32)
    label[:, 0] = 0.2
    label[:, 1] = 0.3
    best = np.inf
    for r in range(repeats):
        t0 = time.perf_counter()
        seed_candidates(np.arange(r * batch, (r + 1) * batch), label, k=k, num_private=num_private,
                        upper=upper, dom=dom)
        best = min(best, time.perf_counter() - t0)
    return batch / best


# -- replay and solve ------------------------------------------------------------------------------
def replay_keys(seed: int, n_private: int, epochs: int, *, k: int, num_private: int, upper: float,
                dom: float | None, image_shape: tuple[int, int, int], masked: bool = True) -> Key:
    """The keys of ``epochs`` reference-style epochs of ``n_private`` images from ``seed``.

    One :class:`LegacyGenerator` whose streams continue across epochs; each epoch is one
    :func:`legacy_key` call (pool size taken as ``n_private``: legacy public indices are a
    permutation of the window ``[0, n_private)`` whatever the pool's size). ``dom`` is applied in
    cross-dataset mode only. Rows are epoch-major; ``image_shape`` is ``(C, H, W)``.
    """
    gen = LegacyGenerator(seed)
    keys = [legacy_key(n_private, k, image_shape, upper=upper, dom=dom, num_private=num_private,
                       pool_size=n_private, masked=masked, generator=gen) for _ in range(epochs)]
    return Key.cat(keys)


def _design(key: Key, n_private: int, epochs: int, public_per_epoch: bool) -> tuple[np.ndarray, int]:
    """Coefficient matrix ``(N, n_private + n_public)``: private columns, then public unknowns."""
    lam = key.coefficients.double().numpy()
    idx = key.indices.numpy()
    p, k = key.num_private, key.k
    n_rows = lam.shape[0]
    n_pub = 0 if p == k else (n_private * epochs if public_per_epoch else n_private)
    a = np.zeros((n_rows, n_private + n_pub))
    rows = np.arange(n_rows)
    for j in range(k):
        col = idx[:, j].copy()
        if j >= p:
            if public_per_epoch:
                col += (rows // n_private) * n_private
            col += n_private
        np.add.at(a, (rows, col), lam[:, j])  # legacy partners can repeat inside one row
    return a, n_pub


def recover_seed(
    encryption,
    label,
    *,
    n_private: int,
    k: int,
    num_private: int,
    upper: float = UPPER,
    dom: float | None = DOM,
    seed_range: tuple[int, int] = (0, 2 ** 16),
    masked: bool = True,
    batch: int = 2 ** 14,
    check_rows: int = 10,
    public_per_epoch: bool = False,
    max_residual: float = 1e-3,
) -> SeedRecovery | None:
    """Search ``seed_range`` for the reference generators' seed; on success decrypt everything.

    Args:
        encryption: ``(N, C, H, W)`` encryptions, epoch-major (``N = n_private * T``).
        label: ``(N, classes)`` leaked soft labels (``lambda_1`` at class(p1) plus ``lambda_2`` at
            class(p2), or the sum over all private slots inside-dataset).
        n_private: private images per epoch ``n``.
        k, num_private: images per encryption and private slots (``num_private == k``
            inside-dataset); ``upper`` (c1) and ``dom`` (c2, used in cross-dataset mode only) as
            when encrypting.
        seed_range: ``[start, stop)`` of seeds to search (the reference's are below ``2**32``).
        masked: whether the challenge is InstaHide (mask drawn) or legacy Mixup (no mask draw).
        batch: seeds per vectorised filter step (memory about ``batch * 1 KB``).
        check_rows: epoch-0 rows checked per seed by the filter.
        public_per_epoch: the later reference fix that reshuffles the pool each epoch (from a stream
            of its own): ``n * T`` public unknowns, so only the minimum-norm solution. Default False:
            one fixed window of ``n`` public images (the published code, and ``legacy=True`` here).
        max_residual: relative RMS residual above which a candidate is rejected.

    Returns:
        :class:`SeedRecovery`, or None when no seed in ``seed_range`` reproduces the labels and
        encryptions (e.g. for keys from the default :class:`~instahide.scheme.rng.KeyGenerator`,
        which no integer seed produces).
    """
    t0 = time.perf_counter()
    enc = check_encryption(encryption, "encryption")
    lab = check_label(label, enc.shape[0])
    n_rows = enc.shape[0]
    n_private = check_count(n_private, "n_private")
    if n_rows % n_private:
        raise ValueError(f"{n_rows} rows are not a whole number of epochs of n_private={n_private} images")
    if k < 2:
        raise ValueError("with k=1 the coefficients are all 1 and leak nothing to filter seeds with")
    if not 1 <= num_private <= k:
        raise ValueError(f"num_private={num_private} out of range for k={k}")
    cross = num_private < k
    dom_used = dom if cross else None
    check_bounds(k, upper, dom_used, num_private if cross else 1)
    lo, hi = int(seed_range[0]), int(seed_range[1])
    if not 0 <= lo < hi <= 2 ** LEGACY_SEED_BITS:
        raise ValueError(f"seed_range must satisfy 0 <= start < stop <= 2**32, got {seed_range}")
    epochs = n_rows // n_private
    values0 = _label_values(lab[:n_private], n_private)
    for start in range(lo, hi, batch):
        seeds = np.arange(start, min(hi, start + batch), dtype=np.int64)
        for seed in seed_candidates(seeds, lab, k=k, num_private=num_private, upper=upper, dom=dom_used,
                                    check_rows=check_rows):
            lam0 = legacy_coefficients(n_private, k, upper, dom_used, np.random.RandomState(int(seed)))
            if not _consistent(lam0, values0, num_private, _LABEL_ATOL).all():
                continue
            result = _solve(int(seed), enc, n_private, epochs, k=k, num_private=num_private, upper=upper,
                            dom=dom_used, masked=masked, public_per_epoch=public_per_epoch)
            if result.residual <= max_residual:
                result.seeds_checked = int(seed) - lo + 1
                result.seconds = time.perf_counter() - t0
                return result
    return None


def _solve(seed: int, enc: np.ndarray, n_private: int, epochs: int, *, k: int, num_private: int,
           upper: float, dom: float | None, masked: bool, public_per_epoch: bool) -> SeedRecovery:
    n_rows, shape = enc.shape[0], enc.shape[1:]
    key = replay_keys(seed, n_private, epochs, k=k, num_private=num_private, upper=upper, dom=dom,
                      image_shape=shape, masked=masked)
    mix = enc.astype(np.float64)
    if masked:
        mix = mix * key.signs().numpy()  # e * sigma = the mixture, exactly
    y = mix.reshape(n_rows, -1)
    a, n_pub = _design(key, n_private, epochs, public_per_epoch)
    sol, *_ = np.linalg.lstsq(a, y, rcond=None)
    resid = float(np.sqrt(np.mean((a @ sol - y) ** 2)) / max(np.sqrt(np.mean(y ** 2)), 1e-12))
    images = sol.reshape(-1, *shape).astype(np.float32)
    recovered, public = images[:n_private], (images[n_private:] if n_pub else None)
    decryption = recovered[key.indices[:, 0].numpy()]
    return SeedRecovery(seed, recovered, public, decryption, key, resid, 0, 0.0,
                        info={"epochs": epochs, "public_unknowns": n_pub, "rank": int(np.linalg.matrix_rank(a))})
