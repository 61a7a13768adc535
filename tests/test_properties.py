"""Property-based tests of the public encryption API (hypothesis).

Random shapes, dtypes, bounds, labels and public pools are thrown at ``encrypt``,
``sample_coefficients``, the ``InstaHide`` module and ``InstaHideLoader``. Each call must either raise a
ValueError/TypeError whose message names a faulty argument (the faults are predicted here, from
docs/scheme.md, not from the implementation), or return a result with the scheme's invariants:
``|e|`` equals the Mixup under the same key, coefficients in ``[0, upper]`` summing to 1,
``lambda_1 + lambda_2 >= dom`` in cross mode, distinct partners, soft labels equal to the sum of the
private coefficients at the classes (a plain loop), shapes and dtypes.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import instahide
from instahide import InstaHide, InstaHideLoader, KeyGenerator, UncentredInputError, apply_key, encrypt
from instahide.scheme import sample_coefficients
from instahide.scheme.encrypt import CENTRED_MIN_SHARE, MAX_CLASSES

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def mostly(good, bad):
    """``good`` three times out of four, else ``bad`` (so that most examples reach the invariants)."""
    return st.integers(0, 3).flatmap(lambda i: bad if i == 3 else good)


KS = mostly(st.integers(1, 6), st.sampled_from([-1, 0, 2.5, True]))
UPPERS = mostly(st.sampled_from([0.65, 0.9, 1.0]), st.sampled_from([0.1, 0.25, 0.4, 0.5, 1.5, float("nan")]))
DOMS = mostly(st.sampled_from([0.0, 0.3, 0.5]), st.sampled_from([-0.1, 0.8, 1.0, 1.2]))
NUM_PRIVATE = mostly(st.none(), st.integers(0, 6))
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def scheme_faults(k, upper, dom, num_private, cross):
    """Names of the arguments a call with these options must be refused for ([] if none)."""
    if not is_int(k) or k < 1:
        return ["k"]
    if not math.isfinite(upper) or upper > 1 or (k > 1 and upper * k <= 1):
        return ["upper"]
    if num_private is not None and not is_int(num_private):
        return ["num_private"]
    if not cross:
        return ["num_private"] if num_private not in (None, k) else []
    p = 2 if num_private is None else num_private
    if not 1 <= p < k:
        return ["num_private"]
    if not 0 <= dom <= 1:
        return ["dom"]
    if dom > 0 and dom >= min(1.0, p * upper):
        return ["dom"]
    return []


def assert_names(exc: Exception, faults: list[str]) -> None:
    msg = str(exc)
    assert isinstance(exc, (ValueError, TypeError)), repr(exc)
    assert faults, f"refused valid input: {exc!r}"
    assert "\n" not in msg
    assert any(f in msg for f in faults), f"{msg!r} names none of {faults}"


def check_key(key, n, k, upper, dom, pool):
    lam, idx, p = key.coefficients.double(), key.indices, key.num_private
    assert lam.shape == idx.shape == (n, k)
    assert torch.allclose(lam.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-5)
    assert (lam >= 0).all() and (k == 1 or lam.max() <= upper + 1e-6)
    if p < k:
        assert (lam[:, :p].sum(1) >= dom - 1e-6).all()
    assert torch.equal(idx[:, 0], torch.arange(n))
    for row in idx.tolist():
        priv, pub = row[:p], row[p:]
        assert len(set(priv)) == p and len(set(pub)) == k - p
        assert all(0 <= i < n for i in priv) and all(0 <= i < (pool or 0) for i in pub)


def plain_soft_labels(onehot, key):
    out = torch.zeros(len(key), onehot.shape[1], dtype=torch.float64)
    for i in range(len(key)):
        for j in range(key.num_private):
            out[i] += float(key.coefficients[i, j]) * onehot[int(key.indices[i, j])].double()
    return out


@st.composite
def encrypt_calls(draw):
    n = draw(mostly(st.integers(6, 10), st.integers(1, 5)))
    shape = (draw(st.sampled_from([1, 3])), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dtype = draw(DTYPES)
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))).to(dtype)
    pool = draw(st.one_of(st.none(), st.integers(5, 8), st.integers(0, 4)))
    public = None if pool is None else torch.randn(pool, *shape).to(dtype)
    labels_kind = draw(st.sampled_from(["none", "index", "soft"]))
    num_classes = draw(mostly(st.one_of(st.none(), st.integers(1, 6), st.integers(1, 6).map(np.int64)),
                              st.sampled_from([0, True, 4.0, "4", 10 ** 12])))
    labels = None
    if labels_kind == "index":
        labels = torch.randint(0, draw(st.integers(1, 6)), (n,))
    elif labels_kind == "soft":
        labels = torch.softmax(torch.randn(n, draw(st.integers(1, 5))), 1)
    opts = dict(k=draw(KS), upper=draw(UPPERS), dom=draw(DOMS), mode=draw(st.sampled_from(["instahide", "mixup"])),
                num_private=draw(NUM_PRIVATE), num_classes=num_classes)
    return x, labels, public, opts


@FAST
@given(encrypt_calls())
def test_encrypt_refuses_with_the_argument_named_or_keeps_the_invariants(call):
    x, labels, public, opts = call
    n, cross = len(x), public is not None
    faults = scheme_faults(opts["k"], opts["upper"], opts["dom"], opts["num_private"], cross)
    nc = opts["num_classes"]
    if cross and len(public) == 0:
        faults += ["public is empty"]
    if nc is not None and not (is_int(nc) and 1 <= nc <= MAX_CLASSES):
        faults += ["num_classes"]
    elif labels is not None and nc is not None and (
            labels.shape[1] != nc if labels.ndim == 2 else int(labels.max()) >= nc):
        faults += ["labels", "num_classes"]
    if not faults:  # the options are fine: does the data fill the slots?
        k = opts["k"]
        p = opts["num_private"] if opts["num_private"] is not None else (2 if cross else k)
        if n < p:
            faults += ["too few images"]
        if cross and len(public) < k - p:
            faults += ["too few public images"]
    try:
        enc = encrypt(x, labels, public=public, seed=0, return_key=True, allow_uncentred=True, **opts)
    except (ValueError, TypeError) as exc:
        assert_names(exc, faults)
        return
    assert not faults, f"accepted input with faulty {faults}"
    key = enc.key
    assert enc.images.shape == x.shape and enc.images.dtype == x.dtype
    check_key(key, n, opts["k"], opts["upper"], opts["dom"], None if public is None else len(public))
    mixup = apply_key(x, key.unmasked(), public=public)
    assert torch.equal(enc.images.abs(), mixup.abs())          # the mask flips signs and nothing else
    assert (key.mask_bits is None) == (opts["mode"] == "mixup")
    if labels is None:
        assert enc.soft_labels is None
    else:
        onehot = (torch.nn.functional.one_hot(labels, opts["num_classes"] or int(labels.max()) + 1)
                  if labels.ndim == 1 else labels)
        assert enc.soft_labels.shape == (n, onehot.shape[1])
        assert torch.allclose(enc.soft_labels.double(), plain_soft_labels(onehot, key), atol=1e-5)


@FAST
@given(n=mostly(st.integers(0, 30), st.sampled_from([-1, 2.7, True, np.int64(5)])), k=KS, upper=UPPERS,
       dom=st.one_of(st.none(), DOMS), num_private=mostly(st.integers(1, 3), st.integers(0, 6)),
       dtype=mostly(st.sampled_from([torch.float16, torch.float32, torch.float64]),
                    st.sampled_from([torch.int64, torch.bool])))
def test_sample_coefficients_refuses_or_samples_the_bounded_law(n, k, upper, dom, num_private, dtype):
    faults = []
    if not is_int(n):
        faults = ["n "]
    elif n < 0:
        faults = ["n must be >= 0"]
    elif not dtype.is_floating_point:
        faults = ["dtype"]
    else:
        faults = scheme_faults(k, upper, 0.0, None, False)
        if not faults and dom is not None:
            if not 1 <= num_private <= k:
                faults = ["num_private"]
            elif not 0 <= dom <= 1:
                faults = ["dom"]
            elif num_private < k and dom > 0 and dom >= (min(1.0, num_private * upper) if k > 1 else 1.0):
                faults = ["dom"]
    try:
        lam = sample_coefficients(n, k, upper=upper, dom=dom, num_private=num_private, dtype=dtype, seed=1)
    except (ValueError, TypeError) as exc:
        if "accept only" in str(exc):  # feasible but below the documented acceptance floor
            assert "upper" in str(exc) and "dom" in str(exc)
            return
        assert_names(exc, faults)
        return
    assert not faults, f"accepted input with faulty {faults}"
    tol = 2e-3 if dtype == torch.float16 else 1e-6
    assert lam.shape == (n, k) and lam.dtype == dtype
    assert torch.allclose(lam.double().sum(1), torch.ones(n, dtype=torch.float64), atol=k * tol)
    assert (lam >= 0).all() and (k == 1 or n == 0 or lam.double().max() <= upper + tol)
    if dom is not None:
        assert (lam.double()[:, :num_private].sum(1) >= dom - k * tol).all()


@FAST
@given(k=KS, upper=UPPERS, dom=DOMS, num_private=NUM_PRIVATE, pool=st.one_of(st.none(), st.integers(1, 8)),
       batch=st.integers(1, 8),
       num_classes=mostly(st.one_of(st.integers(1, 4), st.integers(1, 4).map(np.int64)),
                          st.sampled_from([None, 0, True, 3.0, "3", 10 ** 12, np.float32(3)])),
       labelled=st.booleans())
def test_module_refuses_when_built_or_equals_encrypt(k, upper, dom, num_private, pool, batch, num_classes,
                                                    labelled):
    public = None if pool is None else torch.randn(pool, 3, 4, 4)
    faults = scheme_faults(k, upper, dom, num_private, public is not None)
    if not faults and num_classes is not None and not (is_int(num_classes) and 1 <= num_classes <= MAX_CLASSES):
        faults = ["num_classes"]
    opts = dict(upper=upper, dom=dom, num_private=num_private, public=public, num_classes=num_classes)
    try:
        hide = InstaHide(k, seed=2, allow_uncentred=True, **opts)
    except (ValueError, TypeError) as exc:
        assert_names(exc, faults)
        return
    assert not faults, f"built with faulty {faults}"
    x = torch.randn(batch, 3, 4, 4)
    y = torch.arange(batch) % max(1, num_classes or 1) if labelled else None
    p = hide.num_private or (2 if public is not None else k)
    late = ["too few images"] if batch < p else (["too few", "public"] if pool is not None and pool < k - p else [])
    if labelled and num_classes is None:
        late = late + ["num_classes"]
    try:
        xe, ye = hide(x, y)
    except (ValueError, TypeError) as exc:
        assert_names(exc, late)
        return
    assert not late, f"encrypted a batch that should fail for {late}"
    ref = encrypt(x, y, k=k, generator=KeyGenerator.from_seed(2), allow_uncentred=True, **opts)
    assert torch.equal(xe, ref.images) and xe.shape == x.shape and xe.dtype == x.dtype
    assert (ye is None) == (y is None) and (ye is None or torch.equal(ye, ref.soft_labels))
    if ye is not None:
        private_sum = ye.sum(1)  # one-hot labels: the sum of the private coefficients
        assert ((private_sum <= 1 + 1e-5) & (private_sum >= (dom if public is not None else 1) - 1e-5)).all()


@FAST
@given(n=st.integers(1, 40), shuffle=st.booleans(), drop_last=st.booleans(),
       batch_size=mostly(st.integers(-1, 16), st.sampled_from([True, False, 2.0, "4", np.int64(3)])),
       k=st.integers(1, 5), classes=st.integers(1, 6))
def test_loader_yields_every_row_once_per_epoch_with_valid_labels(n, batch_size, shuffle, drop_last, k, classes):
    x, y = torch.randn(n, 1, 3, 3), torch.arange(n) % classes
    try:
        loader = InstaHideLoader(x, y, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, k=k, seed=3,
                                 allow_uncentred=True)
        batches = list(loader)
    except (ValueError, TypeError) as exc:
        assert_names(exc, ["batch_size"] if not is_int(batch_size) or batch_size < 1
                     else ["too few images"] if n < k else [])
        return
    assert is_int(batch_size) and batch_size >= 1 and n >= k
    sizes = [len(b) for b, _ in batches]
    assert len(batches) == len(loader) == (n // batch_size if drop_last else -(-n // batch_size))
    assert all(s == batch_size for s in sizes[:-1]) and sum(sizes) == (n - n % batch_size if drop_last else n)
    nc = int(y.max()) + 1
    for xb, yb in batches:
        assert xb.shape[1:] == x.shape[1:] and yb.shape == (len(xb), nc) and xb.dtype == x.dtype
        assert torch.allclose(yb.sum(1), torch.ones(len(xb)), atol=1e-5) and (yb >= 0).all()


@FAST
@given(n=st.integers(1, 12), d=st.integers(1, 6), shift=st.floats(-2.5, 2.5), k=st.integers(1, 6))
def test_centring_check_refuses_only_sets_whose_mixtures_are_mostly_of_one_sign(n, d, shift, k):
    k = min(k, n)
    x = torch.randn(n, 1, 1, d, generator=torch.Generator().manual_seed(n * 7 + d)) + shift
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(n, (4000, k), generator=g)
    lam = torch.randn(4000, k, generator=g).abs()
    lam = lam / lam.sum(1, keepdim=True)
    mixed = (lam[..., None] * x.view(n, d)[rows]).sum(1)  # reference estimate: the sign the mask hides
    neg, pos = float((mixed < 0).float().mean()), float((mixed > 0).float().mean())
    share = min(neg, pos)
    try:
        encrypt(x, k=k, seed=0)
    except UncentredInputError as exc:
        assert "images are not centred" in str(exc)
        if abs(neg - pos) > 0.2:  # the message names the sign that is (almost) never seen
            assert f"of mixed values are {'negative' if neg < pos else 'positive'}" in str(exc), (str(exc), neg, pos)
        assert share < CENTRED_MIN_SHARE + 0.15, share  # refused: few mixed values of one sign
        return
    assert share > CENTRED_MIN_SHARE - 0.15, share  # accepted: enough mixed values of each sign
    assert instahide.encrypt(x, k=1, mode="mixup").images.shape == x.shape  # mixup has no mask to check


# -- the keystream under threads and processes -----------------------------------------------------
SCHEME_TESTS = Path(__file__).resolve().parent / "scheme"
KINDS = ["seed", "shake256"] + (["chacha20"] if instahide.scheme.rng._chacha20() is not None else [])


def keystream(kind: str) -> KeyGenerator:
    return KeyGenerator.from_seed(7) if kind == "seed" else KeyGenerator(os.urandom(32), stream=kind)


def _workers():
    sys.path.insert(0, str(SCHEME_TESTS))
    try:
        import _spawn_workers
    finally:
        sys.path.remove(str(SCHEME_TESTS))
    return _spawn_workers


class ThreadedDraws(torch.utils.data.Dataset):
    """Each item: 16-byte blocks drawn by several threads at once, in whichever worker reads it."""

    def __init__(self, gen, items, threads, draws):
        self.gen, self.items, self.threads, self.draws = gen, items, threads, draws

    def __len__(self):
        return self.items

    def __getitem__(self, i):
        return _workers().draw_blocks(self.gen, self.threads, self.draws)


def assert_no_block_repeats(blocks: list[bytes]) -> None:
    repeats = len(blocks) - len(set(blocks))
    assert repeats == 0, f"{repeats} of {len(blocks)} keystream blocks repeated: a repeated block is a reused key"


@pytest.mark.skipif(sys.platform == "win32", reason="needs the fork start method")
@pytest.mark.parametrize("kind", KINDS)
def test_keystream_blocks_never_repeat_across_threads_and_forked_processes(kind):
    """8 threads x 20,000 draws of 16 bytes on one generator (the report: 22-23 repeated blocks out of
    160,000), then copies of it in forked DataLoader workers over 2 epochs and, for OS-entropy keys,
    in plain forks, each with threads of its own: no 16-byte block ever comes out twice."""
    draw_blocks = _workers().draw_blocks
    gen = keystream(kind)
    blocks = draw_blocks(gen, threads=8, draws=20_000)
    assert len(blocks) == 160_000
    assert_no_block_repeats(blocks)
    loader = torch.utils.data.DataLoader(ThreadedDraws(gen, items=4, threads=4, draws=500), batch_size=None,
                                         num_workers=2, multiprocessing_context="fork", collate_fn=lambda b: b)
    for _ in range(2):  # workers are forked again every epoch
        for part in loader:
            blocks += part
    if gen.is_private:  # a research-seeded generator refuses a plain fork (tests/scheme/test_fork_safety.py)
        for _ in range(2):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                try:
                    with os.fdopen(w, "wb") as out:
                        out.write(b"".join(draw_blocks(gen, threads=4, draws=1000)))
                finally:
                    os._exit(0)
            os.close(w)
            with os.fdopen(r, "rb") as inp:
                data = inp.read()
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 and len(data) == 16 * 4000
            blocks += [data[i:i + 16] for i in range(0, len(data), 16)]
    blocks += draw_blocks(gen, threads=4, draws=1000)  # the parent's stream goes on, unlike any copy's
    assert len(blocks) == 160_000 + 2 * 4 * 2000 + (8000 if gen.is_private else 0) + 4000
    assert_no_block_repeats(blocks)


@pytest.mark.slow
def test_keystream_blocks_never_repeat_across_spawned_processes():
    """Under the spawn start method a generator does not travel (it is never pickled): each process
    makes its own, a research seed split by rank. 2 spawned processes x every kind x 2 ranks, each
    drawing with 8 threads, and the parent's own seeded stream: no block repeats."""
    import multiprocessing
    import pickle

    workers = _workers()
    gen = keystream("seed")
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(gen)
    tasks = [(kind, rank, 2, 8, 5000) for kind in KINDS for rank in (0, 1)]
    sys.path.insert(0, str(SCHEME_TESTS))  # a spawned child imports its target by name
    try:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            parts = pool.starmap(workers.spawned_keystream, tasks)
    finally:
        sys.path.remove(str(SCHEME_TESTS))
    blocks = [b for part in parts for b in part] + workers.draw_blocks(gen, threads=4, draws=2000)
    assert len(blocks) == len(tasks) * 40_000 + 8000
    assert_no_block_repeats(blocks)
