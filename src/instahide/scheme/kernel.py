"""A fused CPU kernel for steps 3-4: gather, mix and mask every row in one pass over the output.

With the optional ``numba`` package (the ``fast`` extra), :func:`mix_and_mask` computes each output
row ``sigma_i * sum_j lambda_ij * source_j[idx_ij]`` in a row-sized buffer that stays in cache (up to
four slots per pass, so the k partner rows stream together) and writes it once, its sign bits already
XORed in: the output is touched once, no intermediate reaches memory. A large preallocated output
(at least :data:`STREAM_MIN_BYTES`, more than a last-level cache holds) is written with non-temporal
stores, which skip reading each output line before overwriting it (about a sixth of the traffic at
k=4); a small one (a batch the model reads next) stays in cache, and a fresh one, whose page faults
dominate, takes ordinary stores (measured both ways in docs/benchmarks.md).
Without numba,
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
STREAM_MIN_BYTES = 64 << 20  # outputs at least this large bypass the cache (non-temporal stores)


def available() -> bool:
    """Whether the fused kernel can run (numba is installed and compiles)."""
    return _kernel() is not None


def warm() -> bool:
    """Load (or compile) the kernel and the coefficient sampler now, with one tiny call each; False
    without numba. Call it before forking DataLoader workers: they inherit the loaded code instead of
    each loading it again at its first batch (0.7-0.8 s per worker and epoch here, docs/benchmarks.md)."""
    kernel = _kernel()
    if kernel is None:
        return False
    x = np.zeros((1, 8), np.float32)
    u, lut = np.zeros((1, 8), np.uint8), np.zeros((1, 256), np.float32)
    kernel(x, u, 0, lut, x, u, 0, lut, np.zeros((1, 1), np.int64), np.ones((1, 1), np.float32), 1,
           np.zeros((1, 1), np.uint8), True, False, np.empty_like(x), np.zeros(1, np.uint32), 0, 1)
    coefficient_rows(np.full(8, 1 << 62, np.uint64), 2, 1.0, None, 2, None, np.empty((1, 2)), 0)
    return True


def supports(x: torch.Tensor) -> bool:
    """Whether :func:`mix_and_mask` handles tensors like ``x``: float32 on the CPU, numba present."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and available()


def coefficient_rows(words: np.ndarray, k: int, upper: float, dom: float | None, num_private: int,
                     own_min: float | None, out: np.ndarray, filled: int) -> tuple[int, int]:
    """Rejection-sample coefficient rows into ``out[filled:]`` from the 64-bit random ``words`` until
    ``out`` is full or the words run out; returns ``(filled, rows_drawn)``.

    The law of :func:`~instahide.scheme.coefficients.sample_coefficients` (``|z| / sum |z|`` for
    ``z ~ N(0, I_k)``, kept when every value is ``<= upper``, the first ``num_private`` sum to
    ``>= dom`` and the first is ``>= own_min``), with the normals from Marsaglia's polar method: two
    uniforms in (-1, 1) accepted inside the unit disc give two independent normals with one log and
    one square root, no trigonometry. ``out`` is ``(n, k)`` float64, ``k >= 2``.
    """
    return _compiled("coefficients")(words, k, float(upper), -1.0 if dom is None else float(dom), num_private,
                                     -1.0 if own_min is None else float(own_min), out, filled)


def mix_and_mask(x: torch.Tensor, pub: torch.Tensor | None, idx: torch.Tensor, lam: torch.Tensor, p: int,
                 bits: torch.Tensor | None, out: torch.Tensor, progress=None, step_rows: int = 8192,
                 stream: bool | None = None) -> bool:
    """``out[i] = sigma_i * sum_j lam[i, j] * src_j[idx[i, j]]`` for every row; returns False if any
    output value is NaN or infinite.

    Args:
        x: private images ``(N, d)`` float32, contiguous, or a
            :class:`~instahide.scheme.stored.Uint8Images` (its uint8 rows are normalised inside the
            kernel through its per-channel table of the 256 values, channels-last rows read in
            ``(C, H, W)`` value order); slots ``j < p`` index it.
        pub: public images ``(M, d)`` like ``x`` (either kind) for slots ``j >= p``, or None when ``p == k``.
        idx: ``(n, k)`` int64 partner indices, already checked to be in range.
        lam: ``(n, k)`` float32 coefficients.
        bits: packed masks ``(n, ceil(d / 8))`` uint8 (see :mod:`instahide.scheme.masks`), or None
            (Mixup: no mask).
        out: ``(n, d)`` float32, contiguous, sharing no memory with the inputs.
        progress: optional ``progress(rows_done)``, called every ``step_rows`` rows.
        stream: non-temporal stores (the same bits; only where each row starts on a 32-byte
            boundary); default: for outputs of at least :data:`STREAM_MIN_BYTES`.
    """
    kernel = _kernel()
    n = out.shape[0]
    xs, xu, xk, xl = _source(x)
    ps, pu, pk, pl = (xs, xu, xk, xl) if pub is None else _source(pub)
    ids, lams = idx.contiguous().numpy(), lam.contiguous().numpy()
    masked = bits is not None
    bs = bits.contiguous().numpy() if masked else np.zeros((1, 1), np.uint8)
    os_ = out.numpy()
    aligned = out.data_ptr() % 32 == 0 and out.shape[1] % 8 == 0  # every row on a 32-byte boundary
    stream = aligned and (out.numel() * 4 >= STREAM_MIN_BYTES if stream is None else stream)
    flags = np.zeros(n, np.uint32)  # per row: the largest exponent field written
    threads = max(1, min(torch.get_num_threads(), -(-n // MIN_ROWS_PER_THREAD)))
    pool = _pool(threads) if threads > 1 else None
    for s in range(0, n, step_rows):
        e = min(n, s + step_rows)
        if pool is None:
            kernel(xs, xu, xk, xl, ps, pu, pk, pl, ids, lams, p, bs, masked, stream, os_, flags, s, e)
        else:
            cut = np.linspace(s, e, threads + 1).astype(int)
            futures = [pool.submit(kernel, xs, xu, xk, xl, ps, pu, pk, pl, ids, lams, p, bs, masked, stream, os_,
                                   flags, a, b)
                       for a, b in zip(cut[:-1], cut[1:]) if b > a]
            for f in futures:
                f.result()
        if progress is not None:
            progress(e)
    return not bool((flags == 0x7F800000).any())


_NO_FLOAT = np.zeros((1, 1), np.float32)
_NO_UINT8 = np.zeros((1, 1), np.uint8)
_NO_TABLE = np.zeros((1, 256), np.float32)


def _source(src):
    """The kernel's four arguments for one source: ``(float rows, uint8 rows, kind, table)``; kind 0 =
    float32 rows, 1 = uint8 rows in ``(C, H, W)`` order, 2 = uint8 rows in ``(H, W, C)`` order."""
    if isinstance(src, torch.Tensor):
        return src.numpy(), _NO_UINT8, 0, _NO_TABLE
    return _NO_FLOAT, src.raw, 1 if src.layout == "chw" else 2, src.lut


def _pool(threads: int) -> ThreadPoolExecutor:
    """A thread pool of ``threads`` workers for this process (a forked child builds its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != threads:
            _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="instahide-mix"))
        return _POOL[2]


def _compiled(name: str):
    """One of the compiled functions (``kernel`` or ``coefficients``); only called where available()."""
    _kernel()
    return _KERNEL[name]


def load_compiled(build, what: str, fallback: str):
    """``build()`` (numba code, compiled or loaded from its cache), or False when numba is missing or
    cannot compile it; the second case warns, naming ``what`` is unavailable and the ``fallback`` used."""
    try:
        return build()
    except ImportError:
        return False
    except Exception as exc:  # a numba that imports but cannot compile: the slower path still works
        warnings.warn(f"instahide: {what} is unavailable ({type(exc).__name__}: {exc}); {fallback}",
                      RuntimeWarning, stacklevel=4)
        return False


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = load_compiled(_compile, "the fused numba kernel", "encrypting on the chunked torch path")
    return _KERNEL["kernel"] if _KERNEL else None


def _compile() -> dict:
    """Build the kernel (numba compiles it at its first call and caches the machine code on disk)."""
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def stream8(typingctx, dst, dst_at, src, src_at):
        """``dst[dst_at:dst_at + 8] = src[src_at:src_at + 8]`` (uint32) as one non-temporal 32-byte
        store; ``dst`` at that offset must lie on a 32-byte boundary."""
        def codegen(context, builder, signature, args):
            dty, _, sty, _ = signature.args
            vec = ir.VectorType(ir.IntType(32), 8).as_pointer()
            dp = cgutils.get_item_pointer(context, builder, dty, context.make_array(dty)(context, builder, args[0]),
                                          [args[1]], wraparound=False)
            sp = cgutils.get_item_pointer(context, builder, sty, context.make_array(sty)(context, builder, args[2]),
                                          [args[3]], wraparound=False)
            store = builder.store(builder.load(builder.bitcast(sp, vec), align=4), builder.bitcast(dp, vec), align=32)
            store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
            return context.get_dummy_value()
        return types.void(dst, dst_at, src, src_at), codegen

    @intrinsic
    def store_fence(typingctx):
        """Order the non-temporal stores before anything that follows (they are weakly ordered)."""
        def codegen(context, builder, signature, args):
            builder.fence("seq_cst")
            return context.get_dummy_value()
        return types.void(), codegen

    sign, one, exponent, zero = np.uint32(31), np.uint32(1), np.uint32(0x7F800000), np.float32(0.0)

    @njit(inline="always", boundscheck=False)
    def mix(acc, first, g, a, la, b, lb, c, lc, e, le):
        """``acc (+)= la * a + ... `` over the first ``g`` of the rows; the first group assigns
        (``+ zero``: the same bits as adding to a zeroed buffer, -0.0 included) instead of zeroing
        ``acc`` and reading it back."""
        d = acc.size
        if g == 1:
            if first:
                for v in range(d):
                    acc[v] = la * a[v] + zero
            else:
                for v in range(d):
                    acc[v] += la * a[v]
        elif g == 2:
            if first:
                for v in range(d):
                    acc[v] = la * a[v] + lb * b[v] + zero
            else:
                for v in range(d):
                    acc[v] += la * a[v] + lb * b[v]
        elif g == 3:
            if first:
                for v in range(d):
                    acc[v] = la * a[v] + lb * b[v] + lc * c[v] + zero
            else:
                for v in range(d):
                    acc[v] += la * a[v] + lb * b[v] + lc * c[v]
        elif first:
            for v in range(d):
                acc[v] = la * a[v] + lb * b[v] + lc * c[v] + le * e[v] + zero
        else:
            for v in range(d):
                acc[v] += la * a[v] + lb * b[v] + lc * c[v] + le * e[v]

    @njit(inline="always", boundscheck=False)
    def fetch(r, f, u, kind, lut, buf):
        """Row ``r`` of a source as float32 values in ``(C, H, W)`` order: the float row itself
        (``kind`` 0), or the uint8 row normalised into ``buf`` through the per-channel table ``lut``
        (``kind`` 1: stored ``(C, H, W)``, 2: stored ``(H, W, C)``)."""
        if kind == 0:
            return f[r]
        src = u[r]
        channels = lut.shape[0]
        plane = buf.size // channels
        if kind == 1:
            for c in range(channels):
                t = lut[c]
                for q in range(plane):
                    buf[c * plane + q] = t[src[c * plane + q]]
        else:
            for q in range(plane):
                for c in range(channels):
                    buf[c * plane + q] = lut[c, src[q * channels + c]]
        return buf

    # The kernel reaches its helpers as module globals, not closure variables: numba's cache key hashes a
    # closure's variables, and a dispatcher pickles with a per-process id, so a closure over them missed
    # the on-disk cache in every process (a full compile, 10-30 s, at each start).
    globals().update(_nb_mix=mix, _nb_fetch=fetch, _nb_stream8=stream8, _nb_store_fence=store_fence)

    @njit(nogil=True, boundscheck=False, cache=True)
    def kernel(x, xu, xk, xl, pub, pu, pk, pl, idx, lam, p, bits, masked, stream, out, flags, start, stop):
        d = out.shape[1]
        k = idx.shape[1]
        acc = np.empty(d, np.float32)
        accu = acc.view(np.uint32)
        bufs = np.empty((4, d if xk or pk else 1), np.float32)  # normalised uint8 rows of one pass
        for i in range(start, stop):
            j = 0
            while j < k:  # up to four partner rows stream through one pass
                g = min(4, k - j)
                a = _nb_fetch(idx[i, j], x, xu, xk, xl, bufs[0]) if j < p else _nb_fetch(idx[i, j], pub, pu, pk, pl, bufs[0])
                b = a
                if g >= 2:
                    b = (_nb_fetch(idx[i, j + 1], x, xu, xk, xl, bufs[1]) if j + 1 < p
                         else _nb_fetch(idx[i, j + 1], pub, pu, pk, pl, bufs[1]))
                c = a
                if g >= 3:
                    c = (_nb_fetch(idx[i, j + 2], x, xu, xk, xl, bufs[2]) if j + 2 < p
                         else _nb_fetch(idx[i, j + 2], pub, pu, pk, pl, bufs[2]))
                e = a
                if g >= 4:
                    e = (_nb_fetch(idx[i, j + 3], x, xu, xk, xl, bufs[3]) if j + 3 < p
                         else _nb_fetch(idx[i, j + 3], pub, pu, pk, pl, bufs[3]))
                _nb_mix(acc, j == 0, g, a, lam[i, j], b, lam[i, min(j + 1, k - 1)], c, lam[i, min(j + 2, k - 1)],
                    e, lam[i, min(j + 3, k - 1)])
                j += g
            top = np.uint32(0)  # the largest exponent field: all ones = NaN or Inf somewhere in the row
            for v in range(d):
                top = max(top, accu[v] & exponent)
            flags[i] = top
            if masked:  # bit t of byte q flips value 8q + t: XOR it into the IEEE sign bit
                for q in range(d >> 3):
                    byte = np.uint32(bits[i, q])
                    for t in range(8):
                        accu[8 * q + t] ^= ((byte >> np.uint32(t)) & one) << sign
                for v in range(d & ~7, d):
                    accu[v] ^= ((np.uint32(bits[i, v >> 3]) >> np.uint32(v & 7)) & one) << sign
            row = out[i].view(np.uint32)
            if stream:  # the caller checked: d % 8 == 0 and every row 32-byte aligned
                for q in range(d >> 3):
                    _nb_stream8(row, 8 * q, accu, 8 * q)
            else:
                for v in range(d):
                    row[v] = accu[v]
        if stream:
            _nb_store_fence()

    @njit(nogil=True, cache=True)
    def coefficients(words, k, upper, dom, num_private, own_min, out, filled):
        n = out.shape[0]
        z = np.empty(k)
        w, tried, spare, have_spare = 0, 0, 0.0, False
        scale = 1.0 / 4503599627370496.0  # 2**-52: 53-bit uniforms on (-1, 1)
        while filled < n:
            total = 0.0
            for j in range(k):
                if have_spare:
                    z[j], have_spare = spare, False
                else:
                    while True:
                        if w + 2 > words.size:
                            return filled, tried
                        u = (np.float64(words[w] >> np.uint64(11)) + 0.5) * scale - 1.0
                        v = (np.float64(words[w + 1] >> np.uint64(11)) + 0.5) * scale - 1.0
                        w += 2
                        r = u * u + v * v
                        if r < 1.0:
                            break
                    f = np.sqrt(-2.0 * np.log(r) / r)
                    z[j], spare, have_spare = abs(u * f), abs(v * f), True
                total += z[j]
            have_spare = False  # an odd k leaves one normal of the last pair unused
            tried += 1
            ok = True
            head = 0.0
            for j in range(k):
                z[j] /= total
                if z[j] > upper:
                    ok = False
                if j < num_private:
                    head += z[j]
            if ok and dom >= 0.0 and head < dom:
                ok = False
            if ok and own_min >= 0.0 and z[0] < own_min:
                ok = False
            if ok:
                for j in range(k):
                    out[filled, j] = z[j]
                filled += 1
        return filled, tried

    return {"kernel": kernel, "coefficients": coefficients}
