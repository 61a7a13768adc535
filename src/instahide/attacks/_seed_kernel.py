"""A compiled seed filter for :mod:`instahide.attacks.seed` (numba, the ``fast`` extra).

For a block of consecutive 32-bit seeds it runs ``numpy.random.RandomState(seed)``'s Mersenne-Twister
initialisation for every seed at once (lanes of a vector loop), reads the first outputs of the first
twist, turns them into numpy's legacy normals (the polar method, draw for draw) and the reference
code's first coefficient draw of each epoch-0 row, and keeps a seed only if every row whose first
draw the reference would accept agrees with the leaked labels. Two ways to agree:

* ``epoch-major`` rows: generated row ``r`` must explain label row ``r`` (each non-zero label value a
  sum of private coefficients, and the private total equal to the label's);
* rows in ANY order (a shuffled challenge): the row's private total must be the total of a label row
  with two or more values and the sum of the slots of slot 1's class (a proper subset of the private
  slots holding slot 1) one of that kind of row's values; or its total that of a one-value label row
  (all private images of one class), which at most as many rows as there are such label rows may
  claim. A looser test than the epoch-major one: a wrong seed passes a row with probability about
  1e-4 at k = 6, and it must pass every accepted row.

Seeds are marked 0 (rejected), 1 (passed) or 2 (undecided: no row's first draw was accepted within
the words available). Without numba :func:`available` is False and the numpy filter runs instead.
Threads: plain Python threads over blocks (the compiled scan releases the GIL), as the encryption
kernel does (:mod:`instahide.scheme.kernel`).
"""
from __future__ import annotations

import numpy as np

from ..scheme.kernel import load_compiled

_SCAN = None   # the compiled stages; False when numba is missing
LANES = 128    # seeds initialised together in one vector loop
FAST_WORDS = (64, 227)  # outputs read per seed by the vectorised stages, in turn
BITMAP_CELLS = 1 << 18  # cells of [0, 1] in the label bitmaps (32 KB each)
MAX_WORDS = 227  # outputs of the first twist that depend on the initial state only


def available() -> bool:
    """Whether the compiled seed filter can run (numba is installed and compiles)."""
    return _scan() is not None


def _scan():
    global _SCAN
    if _SCAN is None:
        _SCAN = load_compiled(_compile, "the compiled seed filter", "using the numpy filter")
    return _SCAN or None


def _compile() -> dict:
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    i32, i64 = ir.IntType(32), ir.IntType(64)

    @intrinsic
    def init_step(typingctx, v, i):
        """``(v ^ (v >> 30)) * 1812433253 + i`` in 32-bit arithmetic (numba would widen the uint32
        product to 64 bits and lose the vector multiply)."""
        def codegen(context, builder, signature, args):
            a, b = args
            t = builder.xor(a, builder.lshr(a, ir.Constant(i32, 30)))
            return builder.add(builder.mul(t, ir.Constant(i32, 1812433253)), b)
        return types.uint32(types.uint32, types.uint32), codegen

    @intrinsic
    def temper(typingctx, lo_j, lo_j1, hi_j):
        """Output ``j`` of the first twist from state words ``j``, ``j + 1`` and ``j + 397``, tempered;
        branch-free 32-bit arithmetic, so that the loop over lanes vectorises."""
        def codegen(context, builder, signature, args):
            a, b, c = args

            def k(v):
                return ir.Constant(i32, v)
            y = builder.or_(builder.and_(a, k(0x80000000)), builder.and_(b, k(0x7FFFFFFF)))
            mag = builder.and_(builder.neg(builder.and_(y, k(1))), k(0x9908B0DF))
            v = builder.xor(builder.xor(c, builder.lshr(y, k(1))), mag)
            v = builder.xor(v, builder.lshr(v, k(11)))
            v = builder.xor(v, builder.and_(builder.shl(v, k(7)), k(0x9D2C5680)))
            v = builder.xor(v, builder.and_(builder.shl(v, k(15)), k(0xEFC60000)))
            return builder.xor(v, builder.lshr(v, k(18)))
        return types.uint32(types.uint32, types.uint32, types.uint32), codegen

    @intrinsic
    def exponent_of(typingctx, x):
        """The unbiased binary exponent of a positive normal double, as a double (vectorisable: no
        64-bit integer to double conversion)."""
        def codegen(context, builder, signature, args):
            b = builder.bitcast(args[0], i64)
            e = builder.trunc(builder.lshr(b, ir.Constant(i64, 52)), i32)
            return builder.sitofp(builder.sub(e, ir.Constant(i32, 1023)), ir.DoubleType())
        return types.float64(types.float64), codegen

    @intrinsic
    def mantissa_of(typingctx, x):
        """The mantissa of a positive normal double, in [1, 2)."""
        def codegen(context, builder, signature, args):
            b = builder.bitcast(args[0], i64)
            m = builder.or_(builder.and_(b, ir.Constant(i64, 0x000FFFFFFFFFFFFF)), ir.Constant(i64, 0x3FF0000000000000))
            return builder.bitcast(m, ir.DoubleType())
        return types.float64(types.float64), codegen

    @njit(inline="always", boundscheck=False, error_model="numpy")
    def ln(x):
        """Natural log of a positive normal double, branch-free (so that it vectorises): the exponent
        and a mantissa in [sqrt(1/2), sqrt(2)), then ``2 atanh(s)`` to ``s^19`` (|s| <= 0.172:
        relative error below 1e-15)."""
        e = exponent_of(x)
        m = mantissa_of(x)
        big = m > 1.4142135623730951
        m = m * 0.5 if big else m
        e = e + 1.0 if big else e
        s = (m - 1.0) / (m + 1.0)
        s2 = s * s
        poly = 1.0 / 19.0
        poly = poly * s2 + 1.0 / 17.0
        poly = poly * s2 + 1.0 / 15.0
        poly = poly * s2 + 1.0 / 13.0
        poly = poly * s2 + 1.0 / 11.0
        poly = poly * s2 + 1.0 / 9.0
        poly = poly * s2 + 1.0 / 7.0
        poly = poly * s2 + 1.0 / 5.0
        poly = poly * s2 + 1.0 / 3.0
        poly = poly * s2 + 1.0
        return e * 0.6931471805599453 + 2.0 * s * poly

    @njit(inline="always", boundscheck=False)
    def member(sorted_vals, v, atol):
        """Whether some entry of ``sorted_vals`` lies within ``atol`` of ``v``."""
        i = np.searchsorted(sorted_vals, v - atol)
        return i < sorted_vals.shape[0] and sorted_vals[i] <= v + atol

    @njit(inline="always", boundscheck=False)
    def maybe(bits, v):
        """The bitmap's word for ``v`` in [0, 1]: False means no sorted value lies within the
        tolerance the bitmap was built with (a cheap test before the binary search)."""
        c = int(v * BITMAP_CELLS)
        c = min(max(c, 0), BITMAP_CELLS - 1)
        return (bits[c >> 3] >> (c & 7)) & 1

    @njit(inline="always", boundscheck=False, error_model="numpy")
    def consistent(lam, col, r, num_private, ordered, label_vals, label_count, tab, bits, atol):
        """How the accepted coefficients ``lam[:, col]`` agree with the labels (module docstring): 0 not
        at all, 1 as label row ``r`` (ordered) or as some label row with two or more values, 4 only as a
        row with ONE value (all private images of one class: only the total shows, so the caller counts
        these against the number of such rows). ``tab``: (multi-value totals, their values, one-value
        totals), each sorted; ``bits``: their bitmaps."""
        n_sub = 1 << num_private
        ptot = 0.0
        for s in range(num_private):
            ptot += lam[s, col]
        if ordered:
            lab = 0.0
            for v in range(label_count[r]):
                lab += label_vals[r, v]
                hit = False
                for sub in range(1, n_sub):
                    acc = 0.0
                    for s in range(num_private):
                        if (sub >> s) & 1:
                            acc += lam[s, col]
                    if abs(acc - label_vals[r, v]) <= atol:
                        hit = True
                        break
                if not hit:
                    return 0
            return 1 if abs(ptot - lab) <= atol * num_private else 0
        tol = atol * num_private
        multi_totals, multi_values, single_totals = tab
        tbits, vbits, sbits = bits
        if maybe(tbits, ptot) and member(multi_totals, ptot, tol):
            for sub in range(1, n_sub - 1, 2):  # proper subsets holding slot 1: the class of slot 1
                acc = 0.0
                for s in range(num_private):
                    if (sub >> s) & 1:
                        acc += lam[s, col]
                if maybe(vbits, acc) and member(multi_values, acc, tol):
                    return 1
        if maybe(sbits, ptot) and member(single_totals, ptot, tol):
            return 4
        return 0

    @njit(inline="always", boundscheck=False, error_model="numpy")
    def row_verdict(z, lam, r, k, num_private, upper, dom, ordered, label_vals, label_count, tab, bits, atol):
        """One row's first draw ``z (k,)`` against the labels, as numpy computes it: 2 rejected (no
        information), else :func:`consistent`'s code. ``lam``: ``(k, 1)`` scratch."""
        tot = 0.0
        for s in range(k):
            tot += abs(z[s])
        big = 0.0
        for s in range(k):
            lam[s, 0] = abs(z[s]) / tot
            big = max(big, lam[s, 0])
        if big > upper or (dom >= 0.0 and lam[0, 0] + lam[1, 0] < dom):
            return 2  # the reference redraws this row later
        return consistent(lam, 0, r, num_private, ordered, label_vals, label_count, tab, bits, atol)

    @njit(inline="always", boundscheck=False)
    def chain(seeds, base, x, lo, hi, words):
        """The initialisation (``init_genrand``) of the lanes' seeds ``seeds[base:base + LANES]`` (lanes
        past the end repeat the last seed), keeping state words ``0..words`` in ``lo`` and
        ``397..396+words`` in ``hi``; split where the kept words begin and end (no branch inside).
        Returns the number of real lanes."""
        lanes = x.shape[0]
        real = min(lanes, seeds.shape[0] - base)
        for lane in range(lanes):
            x[lane] = np.uint32(seeds[base + min(lane, real - 1)] & 0xFFFFFFFF)
            lo[0, lane] = x[lane]
        for i in range(1, words + 1):
            ii = np.uint32(i)
            for lane in range(lanes):
                v = init_step(x[lane], ii)
                x[lane] = v
                lo[i, lane] = v
        for i in range(words + 1, 397):
            ii = np.uint32(i)
            for lane in range(lanes):
                x[lane] = init_step(x[lane], ii)
        for i in range(397, 397 + words):
            ii = np.uint32(i)
            for lane in range(lanes):
                v = init_step(x[lane], ii)
                x[lane] = v
                hi[i - 397, lane] = v
        return real

    @njit(nogil=True, boundscheck=False, cache=True, error_model="numpy")
    def scan_fast(seeds, words, rows, k, num_private, upper, dom, ordered, label_vals, label_count, tab, bits,
                  budget, atol, out):
        """The vectorised stage: seeds ``seeds`` (int64) from their first ``words`` outputs. The
        initialisation, the tempering and the polar method's uniforms and acceptance run for all lanes
        at once; the normals' factor ``f = sqrt(-2 ln r2 / r2)`` (the log above instead of libm's, so
        that it vectorises) only for the attempts a row needs, row after row, over the lanes still
        undecided (most seeds fall at row 0 or 1). ``out``: 0 rejected, 1 passed, 2 undecided (the exact
        stage decides)."""
        count = seeds.shape[0]
        attempts = words // 4
        lo = np.empty((words + 1, LANES), np.uint32)
        hi = np.empty((words, LANES), np.uint32)
        w = np.empty((words, LANES), np.uint32)
        x1s = np.empty((attempts, LANES), np.float64)
        x2s = np.empty((attempts, LANES), np.float64)
        r2s = np.empty((attempts, LANES), np.float64)
        good = np.empty((attempts, LANES), np.bool_)
        accepted = np.empty((LANES, attempts), np.int64)  # each lane's accepted attempts, in order
        n_acc = np.empty(LANES, np.int64)
        active = np.empty(LANES, np.int64)
        verdict = np.empty(LANES, np.uint8)
        singles = np.empty(LANES, np.int64)  # rows consistent only as one-value label rows
        npairs = (k + 2) // 2  # pairs a row's k normals can touch (k odd: shared with the next row)
        px1 = np.empty((npairs, LANES), np.float64)
        px2 = np.empty((npairs, LANES), np.float64)
        pr2 = np.empty((npairs, LANES), np.float64)
        ff = np.empty((npairs, LANES), np.float64)
        x = np.empty(LANES, np.uint32)
        zz = np.empty((k, LANES), np.float64)
        lam = np.empty((k, LANES), np.float64)
        status = np.empty(LANES, np.int64)
        for base in range(0, count, LANES):
            lanes = chain(seeds, base, x, lo, hi, words)
            for j in range(words):
                for lane in range(LANES):
                    w[j, lane] = temper(lo[j, lane], lo[j + 1, lane], hi[j, lane])
            for a in range(attempts):
                for lane in range(LANES):
                    # numpy's legacy double (a >> 5, b >> 6) / 2**53; the shifted words fit in int32
                    x1 = 2.0 * ((np.int32(w[4 * a, lane] >> np.uint32(5)) * 67108864.0
                                 + np.int32(w[4 * a + 1, lane] >> np.uint32(6))) * 1.1102230246251565e-16) - 1.0
                    x2 = 2.0 * ((np.int32(w[4 * a + 2, lane] >> np.uint32(5)) * 67108864.0
                                 + np.int32(w[4 * a + 3, lane] >> np.uint32(6))) * 1.1102230246251565e-16) - 1.0
                    r2 = x1 * x1 + x2 * x2
                    x1s[a, lane] = x1
                    x2s[a, lane] = x2
                    r2s[a, lane] = r2
                    good[a, lane] = (r2 < 1.0) & (r2 != 0.0)
            n_active = 0
            for lane in range(lanes):
                c = 0
                for a in range(attempts):  # branch-free: write every attempt, advance on the accepted
                    accepted[lane, c] = a
                    c += np.int64(good[a, lane])
                n_acc[lane] = c
                verdict[lane] = 2
                singles[lane] = 0
                active[n_active] = lane
                n_active += 1
            for r in range(rows):
                if n_active == 0:
                    break
                q0 = (k * r) // 2          # first pair of row r
                q1 = (k * r + k - 1) // 2  # last pair
                npr = q1 - q0 + 1
                # the row's pairs gathered (accepted attempts q0..q1 of every active lane), then f and the
                # normals for all of them in vector loops
                for i in range(n_active):
                    lane = active[i]
                    last = n_acc[lane] - 1
                    for q in range(npr):
                        if last >= 0:
                            a = accepted[lane, min(q0 + q, last)]
                            px1[q, i] = x1s[a, lane]
                            px2[q, i] = x2s[a, lane]
                            pr2[q, i] = r2s[a, lane]
                        else:
                            px1[q, i] = 0.5
                            px2[q, i] = 0.5
                            pr2[q, i] = 0.5
                for q in range(npr):
                    for i in range(n_active):
                        v = pr2[q, i]
                        ff[q, i] = np.sqrt(-2.0 * ln(v) / v)
                for s in range(k):
                    nq = k * r + s
                    po = nq // 2 - q0
                    if nq % 2 == 0:  # numpy's legacy_gauss returns f * x2 first, then f * x1
                        for i in range(n_active):
                            zz[s, i] = ff[po, i] * px2[po, i]
                    else:
                        for i in range(n_active):
                            zz[s, i] = ff[po, i] * px1[po, i]
                # the coefficients and the acceptance test for all active lanes at once
                for i in range(n_active):
                    tot = 0.0
                    for s in range(k):
                        tot += abs(zz[s, i])
                    inv = 1.0 / tot
                    big = 0.0
                    for s in range(k):
                        v = abs(zz[s, i]) * inv
                        lam[s, i] = v
                        big = max(big, v)
                    two = lam[0, i] + lam[1, i]
                    near = (abs(big - upper) <= 1e-9) | ((dom >= 0.0) & (abs(two - dom) <= 1e-9))
                    rejected = (big > upper) | ((dom >= 0.0) & (two < dom))
                    status[i] = 3 if near else (2 if rejected else 1)
                kept = 0
                for i in range(n_active):
                    lane = active[i]
                    if q1 >= n_acc[lane] or status[i] == 3:
                        verdict[lane] = 2  # out of words, or too close to a bound for the fast log
                        continue
                    if status[i] == 1:
                        c = consistent(lam, i, r, num_private, ordered, label_vals, label_count, tab, bits, atol)
                        if c == 4:
                            singles[lane] += 1
                        if c == 0 or singles[lane] > budget:
                            verdict[lane] = 0
                            continue
                        verdict[lane] = 1
                    active[kept] = lane
                    kept += 1
                n_active = kept
            for i in range(n_active):
                lane = active[i]
                if (k * rows - 1) // 2 >= n_acc[lane]:
                    verdict[lane] = 2  # rows left unchecked for want of words: the exact stage reads more
            for lane in range(lanes):
                out[base + lane] = verdict[lane]
        return 0

    @njit(nogil=True, boundscheck=False, cache=True, error_model="numpy")
    def scan_exact(seeds, rows, k, num_private, upper, dom, ordered, label_vals, label_count, tab, bits, budget,
                   atol, out):
        """Stage 2 for the seeds ``seeds`` (int64) stage 1 left undecided: 227 outputs each, libm's log
        (numpy's), one seed at a time after the shared initialisation. ``out``: 0, 1 or 2 (still
        undecided: no row's first draw accepted within 227 outputs)."""
        words = MAX_WORDS
        lo = np.empty((words + 1, LANES), np.uint32)
        hi = np.empty((words, LANES), np.uint32)
        x = np.empty(LANES, np.uint32)
        z = np.empty(k, np.float64)
        lam = np.empty((k, 1), np.float64)
        count = seeds.shape[0]
        for base in range(0, count, LANES):
            lanes = chain(seeds, base, x, lo, hi, words)
            for lane in range(lanes):
                j = 0
                cached = False
                gauss = 0.0
                verdict = 2
                singles = 0
                for r in range(rows):
                    short = False
                    for s in range(k):
                        if cached:
                            z[s] = gauss
                            cached = False
                            continue
                        while True:
                            if j + 4 > words:
                                short = True
                                break
                            a0 = temper(lo[j, lane], lo[j + 1, lane], hi[j, lane]) >> np.uint32(5)
                            b0 = temper(lo[j + 1, lane], lo[j + 2, lane], hi[j + 1, lane]) >> np.uint32(6)
                            a1 = temper(lo[j + 2, lane], lo[j + 3, lane], hi[j + 2, lane]) >> np.uint32(5)
                            b1 = temper(lo[j + 3, lane], lo[j + 4, lane], hi[j + 3, lane]) >> np.uint32(6)
                            j += 4
                            x1 = 2.0 * ((a0 * 67108864.0 + b0) / 9007199254740992.0) - 1.0
                            x2 = 2.0 * ((a1 * 67108864.0 + b1) / 9007199254740992.0) - 1.0
                            r2 = x1 * x1 + x2 * x2
                            if r2 < 1.0 and r2 != 0.0:
                                f = np.sqrt(-2.0 * np.log(r2) / r2)
                                gauss = f * x1
                                cached = True
                                z[s] = f * x2
                                break
                        if short:
                            break
                    if short:
                        break
                    v = row_verdict(z, lam, r, k, num_private, upper, dom, ordered, label_vals, label_count,
                                    tab, bits, atol)
                    if v == 4:
                        singles += 1
                    if v == 0 or singles > budget:
                        verdict = 0
                        break
                    if v != 2:
                        verdict = 1
                out[base + lane] = verdict
        return 0

    @njit(nogil=True, boundscheck=False, cache=True, error_model="numpy")
    def ln_array(x, out):
        """``out[i] = ln(x[i])`` with the stage's log (for its test against numpy's)."""
        for i in range(x.shape[0]):
            out[i] = ln(x[i])
        return 0

    return {"fast": scan_fast, "exact": scan_exact, "ln": ln_array}


def _bitmap(sorted_vals: np.ndarray, tol: float) -> np.ndarray:
    """uint8 bits over :data:`BITMAP_CELLS` cells of [0, 1]: a cell is set when some value lies within
    ``tol`` of it (values outside [0, 1] land in the edge cells)."""
    bits = np.zeros(BITMAP_CELLS, bool)
    v = np.asarray(sorted_vals, np.float64)
    lo = np.clip(np.floor((v - tol) * BITMAP_CELLS).astype(np.int64) - 1, 0, BITMAP_CELLS - 1)
    hi = np.clip(np.floor((v + tol) * BITMAP_CELLS).astype(np.int64) + 1, 0, BITMAP_CELLS - 1)
    for a, b in zip(lo, hi):
        bits[a:b + 1] = True
    return np.packbits(bits, bitorder="little")


def scan_seeds(start: int, count: int, *, k: int, num_private: int, upper: float, dom: float | None,
               ordered: bool, label_vals: np.ndarray, label_count: np.ndarray, multi_totals: np.ndarray,
               multi_values: np.ndarray, single_totals: np.ndarray, atol: float, rows: int) -> np.ndarray:
    """uint8 verdicts ``(count,)`` for seeds ``start .. start + count - 1``: 0 rejected, 1 passed, 2
    undecided (no epoch-0 row's first draw accepted within 227 outputs; rare). All stages, one
    thread. Only called where :func:`available`.

    ``label_vals (R, m)`` float64, row ``r``'s non-zero label values (``label_count[r]`` of them, the
    rest 0), for ``ordered`` (epoch-major) rows. For rows in any order, sorted: ``multi_totals`` and
    ``multi_values``, the totals and non-zero values of the label rows with two or more non-zero values,
    and ``single_totals``, the totals of those with one (a generated row may pass as one of these at
    most as many times as there are such rows). ``atol``: the labels' rounding; ``rows``: epoch-0 rows
    checked at most (at most ``R`` when ordered).
    """
    fns = _scan()
    if ordered:
        rows = min(rows, label_vals.shape[0])
    tol = atol * num_private
    tab = tuple(np.ascontiguousarray(v, np.float64) for v in (multi_totals, multi_values, single_totals))
    bits = tuple(_bitmap(v, tol) for v in tab)
    args = (int(rows), int(k), int(num_private), float(upper), -1.0 if dom is None else float(dom), bool(ordered),
            np.ascontiguousarray(label_vals, np.float64), np.ascontiguousarray(label_count, np.int64), tab, bits,
            int(len(single_totals)), float(atol))
    seeds = np.arange(int(start), int(start) + int(count), dtype=np.int64)
    out = np.empty(count, np.uint8)
    fns["fast"](seeds, FAST_WORDS[0], *args, out)
    again = np.flatnonzero(out == 2)
    # the undecided: more words, vectorised, then one by one with libm's log
    for words in FAST_WORDS[1:] + (0,):
        if not len(again):
            break
        sub = np.empty(len(again), np.uint8)
        if words:
            fns["fast"](seeds[again], words, *args, sub)
        else:
            fns["exact"](seeds[again], *args, sub)
        out[again] = sub
        again = again[sub == 2]
    return out
