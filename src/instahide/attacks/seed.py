"""Generator-seed recovery against ``legacy`` keys (docs/attacks.md, "Generator-seed recovery"; the
reference code's defect in docs/scheme.md, "Defects of the reference code, and what we do instead").

1. **Filter**: for many seeds at once, the first outputs of ``numpy.random.RandomState(seed)``
   (:func:`mt19937_outputs`), turned into the first coefficient draw of each epoch-0 row as numpy's
   legacy ``normal`` and the reference's rejection test would; a seed survives when every row the
   reference would accept at its first draw agrees with the leaked labels (tolerance 2e-6). With
   ``row_order="epoch-major"`` generated row ``r`` must explain label row ``r``; with ``"any"`` (rows
   shuffled) its private total and a private sum holding slot 1 must be among the labels' values.
   With numba (the ``fast`` extra) a compiled, vectorised filter (:mod:`._seed_kernel`) runs on every
   thread; without it, :func:`seed_candidates` in numpy. Throughput: :func:`seed_rate`.
2. **Verify, replay and solve**: a surviving seed's whole epoch 0 must agree with the labels; then the
   reference's draws are replayed epoch after epoch (:func:`replay_keys`), each replayed row matched
   to the challenge row with its label (any order), the masks undone (``e * sigma`` is the mixture),
   and the private and public-window images solved for by least squares; a small residual confirms
   the seed.

Each epoch must be ONE ``encrypt(..., legacy=True, generator=g)`` call on a shared ``LegacyGenerator``
(what ``make_challenge(legacy=True)`` does). Default keys (a keystream under a 256-bit OS key) have no
integer seed: the search returns None.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..scheme.coefficients import check_bounds
from ..scheme.defaults import DOM, UPPER
from ..scheme.keys import Key
from ..scheme.legacy import LEGACY_SEED_BITS, LegacyGenerator, legacy_coefficients, legacy_key
from . import _seed_kernel
from .inputs import check_count, check_encryption, check_label, check_seed_range

__all__ = ["SeedRecovery", "recover_seed", "mt19937_outputs", "seed_candidates", "scan_seeds", "seed_rate",
           "replay_keys", "match_rows"]

# Outputs of the first twist that depend only on the initial state: output j needs state words
# j, j + 1 and j + 397, all from init_genrand, for j < 624 - 397 = 227.
_MAX_WORDS = 227
_LABEL_ATOL = 2e-6  # labels are float32 sums of float32 coefficients (eps 6e-8 near 0.5)
ROW_ORDERS = ("any", "epoch-major")


@dataclass
class SeedRecovery:
    """What :func:`recover_seed` returns when it finds the seed.

    Attributes:
        seed: the recovered integer seed of the reference's generators.
        recovered: ``(n, C, H, W)`` float32 private images (least squares on the unmasked mixtures).
        public: ``(n_pub, C, H, W)`` public-window images solved for alongside (None inside-dataset).
        decryption: ``(N, C, H, W)``: row ``r`` is the recovered image in its slot 1.
        key: the replayed :class:`~instahide.scheme.keys.Key` of all ``N`` rows, epoch-major (replayed
            row ``i`` is challenge row ``info["rows"][i]`` when the rows were matched).
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


def _any_order_sets(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted: the totals and the non-zero values of the label rows with two or more non-zero values,
    and the totals of those with one (what a row in any order must hit)."""
    lab = np.asarray(label, dtype=np.float64)
    nz = (lab > 0).sum(1)
    multi, single = lab[nz >= 2], lab[nz == 1]
    return np.sort(multi.sum(1)), np.sort(multi[multi > 0]), np.sort(single.sum(1))


def _member(sorted_vals: np.ndarray, v: np.ndarray, tol: float) -> np.ndarray:
    """Elementwise: some entry of ``sorted_vals`` lies within ``tol`` of ``v``."""
    i = np.searchsorted(sorted_vals, v - tol)
    hit = i < len(sorted_vals)
    hit[hit] = sorted_vals[i[hit]] <= v[hit] + tol
    return hit


def _consistent_any(lam: np.ndarray, sets: tuple, num_private: int, atol: float) -> np.ndarray:
    """How each row of ``lam (..., R, k)`` can be SOME label row: int ``(..., R)``, 1 as a row with two
    or more values (its private total is such a row's total and the sum of a proper subset of the
    private slots holding slot 1 one of their values), 4 only as a one-value row (its total is such a
    row's total), 0 not at all."""
    multi_totals, multi_values, single_totals = sets
    priv = lam[..., :num_private]
    tol = atol * num_private
    total = priv.sum(-1)
    subsets = _subset_matrix(num_private)
    subsets = subsets[:, (subsets[0] > 0) & (subsets.sum(0) < num_private)]  # proper, holding slot 1
    multi = _member(multi_totals, total.ravel(), tol).reshape(total.shape)
    if subsets.shape[1]:
        sums = priv @ subsets
        multi &= _member(multi_values, sums.ravel(), tol).reshape(sums.shape).any(-1)
    else:
        multi[:] = False
    single = _member(single_totals, total.ravel(), tol).reshape(total.shape)
    return np.where(multi, 1, np.where(single, 4, 0))


def _filter(seeds: np.ndarray, label: np.ndarray, rows: int, words: int, k: int, num_private: int,
            upper: float, dom: float | None, atol: float, row_order: str = "epoch-major"
            ) -> tuple[np.ndarray, np.ndarray]:
    """One vectorised pass: (passed, undecided) boolean masks over ``seeds``."""
    z = _legacy_normals(mt19937_outputs(seeds, words), rows * k).reshape(len(seeds), rows, k)
    a = np.abs(z)
    lam = a / a.sum(-1, keepdims=True)
    known = ~np.isnan(lam).any(-1)
    lam = np.nan_to_num(lam, nan=1.0)
    known &= lam.max(-1) <= upper  # (S, rows): first draw accepted = final coefficients
    if dom is not None:
        known &= lam[..., 0] + lam[..., 1] >= dom
    if row_order == "epoch-major":
        bad = (known & ~_consistent(lam, _label_values(label, rows), num_private, atol)).any(-1)
    else:
        sets = _any_order_sets(label)
        code = _consistent_any(lam, sets, num_private, atol)
        bad = (known & (code == 0)).any(-1) | ((known & (code == 4)).sum(-1) > len(sets[2]))
    decided = known.any(-1)
    return decided & ~bad, ~decided & ~bad


def seed_candidates(seeds, label: np.ndarray, *, k: int, num_private: int, upper: float,
                    dom: float | None, check_rows: int = 10, atol: float = _LABEL_ATOL,
                    chunk: int = 8192, row_order: str = "epoch-major") -> np.ndarray:
    """The seeds of ``seeds`` whose first epoch-0 coefficients agree with ``label`` (the numpy filter).

    Two vectorised passes: the first 3 rows from the first 48 outputs of each seed's generator
    (rejects almost every seed), then up to ``check_rows`` rows from 227 outputs for the seeds the
    first pass could not decide; seeds still undecided are replayed with a real ``RandomState``.

    ``seeds``: ``(S,)`` in ``[0, 2**32)``; ``label``: ``(N, classes)``; ``k, num_private, upper``: the
    scheme, ``dom``: c2 (None inside-dataset, as the reference); ``row_order``: ``"epoch-major"`` (label
    rows ``0..check_rows-1`` are epoch 0's first rows) or ``"any"`` (rows shuffled: every generated row
    must match SOME label row); ``chunk``: seeds per vector operation. Returns the int64 seeds that
    pass (almost always just the true one).
    """
    if row_order not in ROW_ORDERS:
        raise ValueError(f"row_order must be one of {ROW_ORDERS}, got {row_order!r}")
    seeds = np.asarray(seeds)
    if seeds.size and not np.issubdtype(seeds.dtype, np.integer):
        raise TypeError(f"seeds must be integers, got dtype {seeds.dtype}")
    seeds = seeds.astype(np.int64)
    if seeds.size and (seeds.min() < 0 or seeds.max() >= 2 ** LEGACY_SEED_BITS):
        raise ValueError(f"seeds must be in [0, 2**{LEGACY_SEED_BITS}), got {seeds.min()}..{seeds.max()}")
    check_rows = check_count(check_rows, "check_rows")
    chunk = check_count(chunk, "chunk")
    label = np.asarray(label, dtype=np.float64)
    n_lab = label.shape[0]  # any order: the first N blocks of k normals are all draws of some row
    rows1 = max(1, min(3, n_lab, 24 // k))
    rows2 = max(1, min(check_rows, n_lab, 64 // k))  # 64 normals: ~32 of the 56 attempts
    out = []
    for start in range(0, len(seeds), chunk):
        part = seeds[start:start + chunk]
        passed, undecided = _filter(part, label, rows1, 48, k, num_private, upper, dom, atol, row_order)
        out.extend(part[passed].tolist())
        again = part[undecided]
        if len(again):
            passed, undecided = _filter(again, label, rows2, _MAX_WORDS, k, num_private, upper, dom, atol,
                                        row_order)
            out.extend(again[passed].tolist())
            for s in again[undecided]:  # rare: no checked row was accepted on its first draw
                lam_s = legacy_coefficients(rows2, k, upper, dom, np.random.RandomState(int(s)))
                if _epoch0_agrees(lam_s, label, num_private, atol, row_order):
                    out.append(int(s))
    return np.array(sorted(out), dtype=np.int64)


def _epoch0_agrees(lam: np.ndarray, label: np.ndarray, num_private: int, atol: float, row_order: str) -> bool:
    """Whether the replayed coefficients ``lam (R, k)`` of epoch 0's first ``R`` rows agree with the
    labels: row for row (epoch-major), or each with a label row of its own (any order)."""
    if row_order == "epoch-major":
        return bool(_consistent(lam, _label_values(label, len(lam)), num_private, atol).all())
    return match_rows(lam, label, num_private, atol) is not None


def _kernel_tables(label: np.ndarray, rows: int) -> dict:
    lab = np.asarray(label, dtype=np.float64)
    vals = _label_values(lab, min(rows, lab.shape[0]))
    count = (~np.isnan(vals)).sum(1).astype(np.int64)
    multi_totals, multi_values, single_totals = _any_order_sets(lab)
    return {"label_vals": np.nan_to_num(vals), "label_count": count, "multi_totals": multi_totals,
            "multi_values": multi_values, "single_totals": single_totals}


def _default_threads() -> int:
    return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))


def scan_seeds(start: int, stop: int, label: np.ndarray, *, k: int, num_private: int, upper: float,
               dom: float | None, row_order: str = "any", check_rows: int = 40, atol: float = _LABEL_ATOL,
               threads: int | None = None, batch: int = 2 ** 20, progress=None, stop_when=None) -> np.ndarray:
    """The candidate seeds of ``[start, stop)`` (the filter of the module docstring), in order.

    With numba, the compiled filter on ``threads`` threads (default: torch's thread count), ``batch``
    seeds per task; without it, :func:`seed_candidates` (numpy, one thread). ``progress``:
    ``callable(done, total)`` after each batch. ``stop_when``: ``callable(candidates) -> bool`` called
    with each batch's candidates in seed order; True ends the scan early (the search found its seed).
    Returns the int64 candidates scanned so far.
    """
    if row_order not in ROW_ORDERS:
        raise ValueError(f"row_order must be one of {ROW_ORDERS}, got {row_order!r}")
    start, stop = check_seed_range((start, stop), "start, stop", bits=LEGACY_SEED_BITS, empty=True)
    batch = check_count(batch, "batch")
    if threads is not None:
        threads = check_count(threads, "threads")
    lab = np.asarray(label, dtype=np.float64)
    # only the first len(label) blocks of k normals are rows of these labels (epoch-major: pass epoch 0's)
    check_rows = max(1, min(check_count(check_rows, "check_rows"), lab.shape[0]))
    total = stop - start
    starts = list(range(start, stop, batch))
    if not _seed_kernel.available():
        found = []
        for i, a in enumerate(starts):
            part = seed_candidates(np.arange(a, min(stop, a + batch)), lab, k=k, num_private=num_private,
                                   upper=upper, dom=dom, check_rows=min(check_rows, 10), atol=atol,
                                   row_order=row_order)
            found.extend(part.tolist())
            if progress is not None:
                progress(min(stop, a + batch) - start, total)
            if stop_when is not None and len(part) and stop_when(part):
                break
        return np.array(found, dtype=np.int64)
    tables = _kernel_tables(lab, check_rows)

    def task(a: int) -> np.ndarray:
        verdict = _seed_kernel.scan_seeds(a, min(stop, a + batch) - a, k=k, num_private=num_private, upper=upper,
                                          dom=dom, ordered=row_order == "epoch-major", atol=atol, rows=check_rows,
                                          **tables)
        return a + np.flatnonzero(verdict).astype(np.int64)

    threads = _default_threads() if threads is None else threads
    found = []
    with ThreadPoolExecutor(threads) as pool:
        window = 2 * threads  # tasks in flight; results are read in seed order
        futures = [pool.submit(task, a) for a in starts[:window]]
        nxt = len(futures)
        for i in range(len(starts)):
            part = futures[i].result()
            futures[i] = None
            if nxt < len(starts):
                futures.append(pool.submit(task, starts[nxt]))
                nxt += 1
            found.extend(part.tolist())
            if progress is not None:
                progress(min(stop, starts[i] + batch) - start, total)
            if stop_when is not None and len(part) and stop_when(part):
                for f in futures[i + 1:]:
                    f.cancel()
                break
    return np.array(found, dtype=np.int64)


def seed_rate(batch: int = 2 ** 16, *, k: int = 6, num_private: int = 2, upper: float = UPPER,
              dom: float | None = DOM, repeats: int = 2, threads: int = 1, row_order: str = "any",
              compiled: bool | None = None) -> float:
    """Measured filter throughput in seeds per second on this machine (``threads`` threads; the
    compiled filter when numba is there, unless ``compiled=False``).

    Extrapolate: ``2**32 / seed_rate() / 3600`` hours for the whole 32-bit space.
    """
    rs = np.random.RandomState(12345)
    label = np.zeros((100, 10), np.float32)  # labels like a real challenge's: 2 private shares per row
    for r in range(100):
        lam = legacy_coefficients(1, k, upper, dom, rs)[0]
        label[r, r % 10] += np.float32(lam[0])
        label[r, (r * 7 + 3) % 10] += np.float32(lam[1])
    use = _seed_kernel.available() if compiled is None else bool(compiled) and _seed_kernel.available()
    best = np.inf
    for r in range(repeats + (1 if use else 0)):  # the compiled filter's first call loads the machine code
        lo = 2 ** 20 + r * batch
        t0 = time.perf_counter()
        if use:
            scan_seeds(lo, lo + batch, label, k=k, num_private=num_private, upper=upper, dom=dom,
                       row_order=row_order, threads=threads, batch=max(1, batch // max(1, threads)))
        else:
            seed_candidates(np.arange(lo, lo + batch), label, k=k, num_private=num_private, upper=upper, dom=dom,
                            row_order=row_order)
        if r or not use:
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
    row_order: str = "any",
    batch: int = 2 ** 20,
    check_rows: int = 40,
    threads: int | None = None,
    public_per_epoch: bool = False,
    max_residual: float = 1e-3,
    progress=None,
) -> SeedRecovery | None:
    """Search ``seed_range`` for the reference generators' seed; on success decrypt everything.

    Args:
        encryption: ``(N, C, H, W)`` encryptions (``N = n_private * T``), rows in any order (the default
            ``row_order``) or epoch-major.
        label: ``(N, classes)`` leaked soft labels (``lambda_1`` at class(p1) plus ``lambda_2`` at
            class(p2), or the sum over all private slots inside-dataset), row for row with ``encryption``.
        n_private: private images per epoch ``n``.
        k, num_private: images per encryption and private slots (``num_private == k``
            inside-dataset); ``upper`` (c1) and ``dom`` (c2, used in cross-dataset mode only) as
            when encrypting.
        seed_range: ``[start, stop)`` of seeds to search (the reference's are below ``2**32``).
        masked: whether the challenge is InstaHide (mask drawn) or legacy Mixup (no mask draw).
        row_order: ``"any"`` (rows may be shuffled: each replayed row is matched to the challenge row
            its label names) or ``"epoch-major"`` (row ``t * n + i`` is image ``i`` in epoch ``t``, as
            ``make_challenge`` writes them: a stricter filter, no matching).
        batch: seeds per filter task. ``check_rows``: epoch-0 rows the filter checks at most (``n`` at
            most with ``"epoch-major"``; the compiled filter reads 227 outputs, about 14 rows at k = 6).
        threads: filter threads (default: torch's thread count; one without numba).
        public_per_epoch: the later reference fix that reshuffles the pool each epoch (from a stream
            of its own): ``n * T`` public unknowns, so only the minimum-norm solution. Default False:
            one fixed window of ``n`` public images (the published code, and ``legacy=True`` here).
        max_residual: relative RMS residual above which a candidate is rejected.
        progress: ``callable(seeds_done, seeds_total)`` after each filter task.

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
    k, num_private = check_count(k, "k"), check_count(num_private, "num_private")
    lo, hi = check_seed_range(seed_range, bits=LEGACY_SEED_BITS)
    batch, check_rows = check_count(batch, "batch"), check_count(check_rows, "check_rows")
    if threads is not None:
        threads = check_count(threads, "threads")
    if n_rows % n_private:
        raise ValueError(f"{n_rows} rows are not a whole number of epochs of n_private={n_private} images")
    if k < 2:
        raise ValueError("with k=1 the coefficients are all 1 and leak nothing to filter seeds with")
    if not 1 <= num_private <= k:
        raise ValueError(f"num_private={num_private} out of range for k={k}")
    if row_order not in ROW_ORDERS:
        raise ValueError(f"row_order must be one of {ROW_ORDERS}, got {row_order!r}")
    cross = num_private < k
    dom_used = dom if cross else None
    check_bounds(k, upper, dom_used, num_private if cross else 1)
    epochs = n_rows // n_private
    lab64 = np.asarray(lab, dtype=np.float64)
    # epoch-major: only epoch 0's rows are first draws of generated rows 0..n-1
    filter_label = lab64[:n_private] if row_order == "epoch-major" else lab64
    # epoch-major: generated rows 0..n-1 are label rows 0..n-1; any order: the first N blocks of k normals
    # are all draws of the T epochs' coefficients (first draws and redraws; numpy draws nothing else)
    rows = min(check_rows, n_private if row_order == "epoch-major" else n_rows)
    found: list[SeedRecovery] = []
    tried = {"candidates": 0}

    def verify(candidates) -> bool:
        for seed in candidates:
            tried["candidates"] += 1
            lam0 = legacy_coefficients(n_private, k, upper, dom_used, np.random.RandomState(int(seed)))
            if not _epoch0_agrees(lam0, filter_label, num_private, _LABEL_ATOL, row_order):
                continue
            result = _solve(int(seed), enc, lab64, n_private, epochs, k=k, num_private=num_private, upper=upper,
                            dom=dom_used, masked=masked, public_per_epoch=public_per_epoch, row_order=row_order)
            if result is not None and result.residual <= max_residual:
                found.append(result)
                return True
        return False

    scan_seeds(lo, hi, filter_label, k=k, num_private=num_private, upper=upper, dom=dom_used, row_order=row_order,
               check_rows=rows, threads=threads, batch=batch, progress=progress, stop_when=verify)
    if not found:
        return None
    result = found[0]
    result.seeds_checked = result.seed - lo + 1
    result.seconds = time.perf_counter() - t0
    result.info.update({"candidates_verified": tried["candidates"], "row_order": row_order,
                        "filter": "compiled" if _seed_kernel.available() else "numpy"})
    return result


def match_rows(coefficients: np.ndarray, label: np.ndarray, num_private: int,
               atol: float = _LABEL_ATOL) -> np.ndarray | None:
    """For replayed keys' ``coefficients (R, k)``, a distinct row of ``label (N, classes)`` (N >= R)
    for each: int64 ``(R,)``, or None when some replayed row fits no free label row.

    A label row fits when its total is the row's private total and each of its non-zero values is a
    sum of the row's private coefficients (the classes are not known). Candidates come from the label
    rows' largest value (a sum of private coefficients, so it sits at one of the row's ``2^p - 1``
    subset sums); rows with fewer candidates are placed first.
    """
    lam = np.asarray(coefficients, dtype=np.float64)[:, :num_private]
    lab = np.asarray(label, dtype=np.float64)
    n = len(lam)
    if lab.shape[0] < n:
        return None
    top = lab.max(1)
    order = np.argsort(top, kind="stable")
    sorted_top = top[order]
    totals = lab.sum(1)
    tol = atol * num_private
    subsets = _subset_matrix(num_private)
    sums = lam @ subsets                                       # (R, 2^p - 1)
    lo_i = np.searchsorted(sorted_top, sums - tol)
    hi_i = np.searchsorted(sorted_top, sums + tol, side="right")
    options = []
    for i in range(n):
        cands = np.unique(np.concatenate([order[a:b] for a, b in zip(lo_i[i], hi_i[i])]))
        if len(cands):
            rows = lab[cands]
            each = (np.abs(rows[:, :, None] - sums[i][None, None, :]).min(-1) <= atol) | (rows <= 0)
            cands = cands[each.all(1) & (np.abs(totals[cands] - sums[i][-1]) <= tol)]
        options.append(cands)
    perm = np.full(n, -1, dtype=np.int64)
    taken = np.zeros(lab.shape[0], dtype=bool)
    for i in sorted(range(n), key=lambda i: len(options[i])):
        free = options[i][~taken[options[i]]]
        if not len(free):
            return None
        perm[i] = free[0]
        taken[free[0]] = True
    return perm


def _solve(seed: int, enc: np.ndarray, label: np.ndarray, n_private: int, epochs: int, *, k: int, num_private: int,
           upper: float, dom: float | None, masked: bool, public_per_epoch: bool,
           row_order: str) -> SeedRecovery | None:
    n_rows, shape = enc.shape[0], enc.shape[1:]
    key = replay_keys(seed, n_private, epochs, k=k, num_private=num_private, upper=upper, dom=dom,
                      image_shape=shape, masked=masked)
    if row_order == "epoch-major":
        perm = np.arange(n_rows)
    else:
        perm = match_rows(key.coefficients.numpy(), label, num_private)
        if perm is None:
            return None
    mix = enc[perm].astype(np.float64)  # replayed (epoch-major) order
    if masked:
        mix = mix * key.signs().numpy()  # e * sigma = the mixture, exactly
    y = mix.reshape(n_rows, -1)
    a, n_pub = _design(key, n_private, epochs, public_per_epoch)
    sol, *_ = np.linalg.lstsq(a, y, rcond=None)
    resid = float(np.sqrt(np.mean((a @ sol - y) ** 2)) / max(np.sqrt(np.mean(y ** 2)), 1e-12))
    images = sol.reshape(-1, *shape).astype(np.float32)
    recovered, public = images[:n_private], (images[n_private:] if n_pub else None)
    decryption = np.empty((n_rows, *shape), np.float32)
    decryption[perm] = recovered[key.indices[:, 0].numpy()]
    return SeedRecovery(seed, recovered, public, decryption, key, resid, 0, 0.0,
                        info={"epochs": epochs, "public_unknowns": n_pub, "rank": int(np.linalg.matrix_rank(a)),
                              "rows": perm.tolist() if row_order == "any" else None})
