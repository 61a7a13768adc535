"""A fused CPU kernel for steps 3-4: gather, mix and mask every row in one pass over the output.

With the optional ``numba`` package (the ``fast`` extra), :func:`mix_and_mask` computes each output
row ``sigma_i * sum_j lambda_ij * source_j[idx_ij]`` in a row-sized buffer that stays in cache (up to
four slots per pass, so the k partner rows stream together) and writes it once, its sign bits already
XORed in: the output is touched once, no intermediate reaches memory. Without numba,
:func:`available` is False and :func:`~instahide.scheme.encrypt.apply_key` keeps its chunked torch
path; the two agree to rounding (the order of the multiply-adds differs) and apply the same mask.

Threads: plain Python threads over blocks of rows (the compiled kernel releases the GIL), as many as
``torch.get_num_threads()``; one thread (e.g. in a DataLoader worker) runs inline. Numba's own
thread pool is not used: with GNU OpenMP (its choice on these machines) it terminated a forked child
(a DataLoader worker) that called it, and its fallback work queue is documented as not thread-safe.
"""
from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_KERNEL = None      # the compiled kernel; False when numba is missing
_POOL = None        # (pid, threads, executor)
_POOL_LOCK = threading.Lock()
MIN_ROWS_PER_THREAD = 64  # fewer rows than this per thread are not worth a thread


def available() -> bool:
    """Whether the fused kernel can run (numba is installed and compiles)."""
    return _kernel() is not None


def warm() -> bool:
    """Load (or compile) the kernel now, with one tiny call; False without numba. Call it before
    forking DataLoader workers: they inherit the loaded kernel instead of each loading it again at
    its first batch (0.7-0.8 s per worker and epoch here, docs/benchmarks.md)."""
    kernel = _kernel()
    if kernel is None:
        return False
    x = np.zeros((1, 8), np.float32)
    kernel(x, x, np.zeros((1, 1), np.int64), np.ones((1, 1), np.float32), 1, np.zeros((1, 1), np.uint8), True,
           np.empty_like(x), np.zeros(1, np.uint32), 0, 1)
    return True


def supports(x: torch.Tensor) -> bool:
    """Whether :func:`mix_and_mask` handles tensors like ``x``: float32 on the CPU, numba present."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and available()


def mix_and_mask(x: torch.Tensor, pub: torch.Tensor | None, idx: torch.Tensor, lam: torch.Tensor, p: int,
                 bits: torch.Tensor | None, out: torch.Tensor, progress=None, step_rows: int = 8192) -> bool:
    """``out[i] = sigma_i * sum_j lam[i, j] * src_j[idx[i, j]]`` for every row; returns False if any
    output value is NaN or infinite.

    Args:
        x: private images ``(N, d)`` float32, contiguous; slots ``j < p`` index it.
        pub: public images ``(M, d)`` like ``x`` for slots ``j >= p``, or None when ``p == k``.
        idx: ``(n, k)`` int64 partner indices, already checked to be in range.
        lam: ``(n, k)`` float32 coefficients.
        bits: packed masks ``(n, ceil(d / 8))`` uint8 (see :mod:`instahide.scheme.masks`), or None
            (Mixup: no mask).
        out: ``(n, d)`` float32, contiguous, sharing no memory with the inputs.
        progress: optional ``progress(rows_done)``, called every ``step_rows`` rows.
    """
    kernel = _kernel()
    n = out.shape[0]
    xs = x.numpy()
    ps = xs if pub is None else pub.numpy()
    ids, lams = idx.contiguous().numpy(), lam.contiguous().numpy()
    masked = bits is not None
    bs = bits.contiguous().numpy() if masked else np.zeros((1, 1), np.uint8)
    os_ = out.numpy()
    flags = np.zeros(n, np.uint32)  # per row: the largest exponent field written
    threads = max(1, min(torch.get_num_threads(), -(-n // MIN_ROWS_PER_THREAD)))
    pool = _pool(threads) if threads > 1 else None
    for s in range(0, n, step_rows):
        e = min(n, s + step_rows)
        if pool is None:
            kernel(xs, ps, ids, lams, p, bs, masked, os_, flags, s, e)
        else:
            cut = np.linspace(s, e, threads + 1).astype(int)
            futures = [pool.submit(kernel, xs, ps, ids, lams, p, bs, masked, os_, flags, a, b)
                       for a, b in zip(cut[:-1], cut[1:]) if b > a]
            for f in futures:
                f.result()
        if progress is not None:
            progress(e)
    return not bool((flags == 0x7F800000).any())


def _pool(threads: int) -> ThreadPoolExecutor:
    """A thread pool of ``threads`` workers for this process (a forked child builds its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != threads:
            _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="instahide-mix"))
        return _POOL[2]


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        try:
            _KERNEL = _compile()
        except ImportError:
            _KERNEL = False
        except Exception as exc:  # a numba that imports but cannot compile: the torch path still works
            warnings.warn(f"instahide: the fused numba kernel is unavailable ({type(exc).__name__}: {exc}); "
                          "encrypting on the chunked torch path", RuntimeWarning, stacklevel=3)
            _KERNEL = False
    return _KERNEL or None


def _compile():
    """Build the kernel (numba compiles it at its first call and caches the machine code on disk)."""
    from numba import njit

    sign, one, exponent = np.uint32(31), np.uint32(1), np.uint32(0x7F800000)

    @njit(nogil=True, boundscheck=False, cache=True)
    def kernel(x, pub, idx, lam, p, bits, masked, out, flags, start, stop):
        d = out.shape[1]
        k = idx.shape[1]
        acc = np.empty(d, np.float32)
        accu = acc.view(np.uint32)
        for i in range(start, stop):
            top = np.uint32(0)  # the largest exponent field written: all ones = NaN or Inf
            acc[:] = 0.0
            j = 0
            while j < k:  # up to four partner rows stream through one pass
                g = min(4, k - j)
                a = x[idx[i, j]] if j < p else pub[idx[i, j]]
                la = lam[i, j]
                if g == 1:
                    for v in range(d):
                        acc[v] += la * a[v]
                else:
                    b = x[idx[i, j + 1]] if j + 1 < p else pub[idx[i, j + 1]]
                    lb = lam[i, j + 1]
                    if g == 2:
                        for v in range(d):
                            acc[v] += la * a[v] + lb * b[v]
                    else:
                        c = x[idx[i, j + 2]] if j + 2 < p else pub[idx[i, j + 2]]
                        lc = lam[i, j + 2]
                        if g == 3:
                            for v in range(d):
                                acc[v] += la * a[v] + lb * b[v] + lc * c[v]
                        else:
                            e = x[idx[i, j + 3]] if j + 3 < p else pub[idx[i, j + 3]]
                            le = lam[i, j + 3]
                            for v in range(d):
                                acc[v] += la * a[v] + lb * b[v] + lc * c[v] + le * e[v]
                j += g
            row = out[i].view(np.uint32)
            if masked:  # bit t of byte q flips value 8q + t: XOR it into the IEEE sign bit
                for q in range(d >> 3):
                    byte = np.uint32(bits[i, q])
                    for t in range(8):
                        w = accu[8 * q + t] ^ (((byte >> np.uint32(t)) & one) << sign)
                        row[8 * q + t] = w
                        top = max(top, w & exponent)
                for v in range(d & ~7, d):
                    w = accu[v] ^ (((np.uint32(bits[i, v >> 3]) >> np.uint32(v & 7)) & one) << sign)
                    row[v] = w
                    top = max(top, w & exponent)
            else:
                for v in range(d):
                    row[v] = accu[v]
                    top = max(top, accu[v] & exponent)
            flags[i] = top

    return kernel
