"""The fused CPU kernel (numba) against a plain per-row loop and against the chunked torch path."""
import multiprocessing as mp
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from instahide.scheme import apply_key, encrypt, kernel
from instahide.scheme.encrypt import sample_key

pytest.importorskip("numba")


def loop_reference(x, key, pub=None):
    """docs/scheme.md, "The scheme": one row at a time in float64, signs from the unpacked bits."""
    n, k = key.coefficients.shape
    signs = key.signs()
    out = torch.zeros((n, *x.shape[1:]), dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            src = x if j < key.num_private else pub
            out[i] += float(key.coefficients[i, j]) * src[int(key.indices[i, j])].double()
        if signs is not None:
            out[i] *= signs[i].double()
    return out


@pytest.mark.parametrize("k,num_private,pool,shape", [
    (1, 1, 0, (2, 3, 3)), (2, 2, 0, (3, 8, 8)), (3, 3, 0, (1, 5, 5)), (4, 4, 0, (3, 32, 32)),
    (5, 5, 0, (3, 7, 7)), (9, 9, 0, (1, 4, 4)), (6, 2, 30, (3, 8, 8)), (4, 2, 30, (1, 9, 9)),
    (7, 3, 30, (2, 5, 3)),
])
def test_fused_matches_the_plain_loop_and_the_torch_path(k, num_private, pool, shape):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(40, *shape, generator=g)
    pub = torch.randn(pool, *shape, generator=g) if pool else None
    for masked in (True, False):
        key = sample_key(40, k, shape, num_private=num_private, dom=0.3 if pool else None,
                         pool_size=pool or None, masked=masked, seed=k)
        fused = apply_key(x, key, public=pub, fused=True)
        chunked = apply_key(x, key, public=pub, fused=False)
        ref = loop_reference(x, key, pub)
        assert torch.allclose(fused.double(), ref, rtol=1e-5, atol=1e-6)
        # the same mask: signs agree wherever rounding cannot carry a value across zero
        clear = ref.abs() > 1e-5
        assert torch.equal(torch.signbit(fused)[clear], torch.signbit(chunked)[clear])
        assert torch.equal(torch.signbit(fused)[clear], torch.signbit(ref)[clear])
        # the two paths differ only in the order of the multiply-adds: a few float32 ulps at most
        assert torch.allclose(fused, chunked, rtol=4e-7 * k, atol=1e-6)


def test_encrypt_uses_the_fused_kernel_by_default_and_its_output_is_exact_where_it_matters():
    x = torch.randn(300, 3, 8, 8)
    enc = encrypt(x, k=4, seed=0, return_key=True)
    assert torch.equal(enc.images, apply_key(x, enc.key, fused=True))
    # |e| does not depend on the mask, bit for bit
    assert torch.equal(enc.images.abs(), encrypt(x, k=4, seed=0, mode="mixup").images.abs())


def test_threads_and_blocks_do_not_change_a_bit():
    x = torch.randn(1000, 3, 8, 8)
    key = sample_key(1000, 4, (3, 8, 8), seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = apply_key(x, key, fused=True)
        torch.set_num_threads(2)
        two = apply_key(x, key, fused=True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    flat = torch.empty_like(one).view(1000, -1)
    seen = []
    ok = kernel.mix_and_mask(x.view(1000, -1), None, key.indices, key.coefficients, 4, key.mask_bits, flat,
                             progress=seen.append, step_rows=300)
    assert ok and seen == [300, 600, 900, 1000] and torch.equal(flat.view_as(one), one)


@pytest.mark.parametrize("k,num_private,pool", [(4, 4, 0), (6, 2, 50), (1, 1, 0)])
def test_non_temporal_stores_write_the_same_bits(k, num_private, pool):
    # 3x8x8 = 192 values per row (a multiple of 8): rows of an aligned output start on 32-byte boundaries
    x = torch.randn(700, 3, 8, 8)
    pub = torch.randn(pool, 3, 8, 8) if pool else None
    key = sample_key(700, k, (3, 8, 8), num_private=num_private, dom=0.3 if pool else None,
                     pool_size=pool or None, seed=k)
    src, ps = x.view(700, -1), None if pub is None else pub.view(pool, -1)
    cached, streamed = torch.full((700, 192), 7.0), torch.full((700, 192), 7.0)
    assert streamed.data_ptr() % 32 == 0  # torch's CPU allocator aligns to 64 bytes
    assert kernel.mix_and_mask(src, ps, key.indices, key.coefficients, num_private, key.mask_bits, cached,
                               stream=False)
    assert kernel.mix_and_mask(src, ps, key.indices, key.coefficients, num_private, key.mask_bits, streamed,
                               stream=True, step_rows=128)
    assert torch.equal(streamed, cached)
    assert torch.allclose(streamed.double(), loop_reference(x, key, pub).view(700, -1), rtol=1e-5, atol=1e-6)
    # an output whose rows are not 32-byte aligned falls back to ordinary stores, with the same bits
    store = torch.zeros(700 * 192 + 1)
    shifted = store[1:].view(700, 192)
    assert shifted.data_ptr() % 32 != 0
    assert kernel.mix_and_mask(src, ps, key.indices, key.coefficients, num_private, key.mask_bits, shifted,
                               stream=True)
    assert torch.equal(shifted, cached) and store[0] == 0


def test_nan_and_inf_are_named_on_the_fused_path():
    x = torch.randn(50, 3, 4, 4)
    x[17, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"images contain NaN or Inf in 1 image\(s\), first rows \[17\]"):
        encrypt(x, k=4, seed=0)
    pub = torch.randn(20, 3, 4, 4)
    pub[3] = float("inf")
    with pytest.raises(ValueError, match="public contain NaN or Inf"):
        encrypt(torch.randn(50, 3, 4, 4), k=6, public=pub, seed=0)


def test_fused_true_refuses_what_it_cannot_run(monkeypatch):
    x = torch.randn(10, 3, 4, 4, dtype=torch.float64)
    key = sample_key(10, 4, (3, 4, 4), seed=0)
    with pytest.raises(ValueError, match="fused kernel needs float32 on the CPU"):
        apply_key(x, key, fused=True)
    monkeypatch.setattr(kernel, "_KERNEL", False)
    assert not kernel.available()
    with pytest.raises(ValueError, match="without numba"):
        apply_key(x.float(), key, fused=True)
    assert torch.allclose(apply_key(x.float(), key), loop_reference(x, key).float(), atol=1e-6)  # torch path


def test_images_that_require_grad_take_the_differentiable_path():
    x = torch.randn(20, 3, 4, 4, requires_grad=True)
    key = sample_key(20, 4, (3, 4, 4), seed=0)
    apply_key(x, key.unmasked()).sum().backward()  # the mixture (Mixup) is differentiable in the images
    assert torch.allclose(x.grad.view(20, -1).sum(1),  # d(sum of all mixtures)/dx_i = 48 * (sum of i's weights)
                          48 * torch.zeros(20).index_add_(0, key.indices.flatten(), key.coefficients.flatten()))
    with pytest.raises(ValueError, match="images that require grad"):
        apply_key(x, key, fused=True)
    with torch.no_grad():  # without autograd the kernel runs
        assert torch.equal(apply_key(x, key), apply_key(x.detach(), key, fused=True))


def _child(q, x, key):
    q.put(apply_key(x, key).numpy())


@pytest.mark.skipif(sys.platform == "win32", reason="needs the fork start method")
def test_a_forked_child_and_concurrent_threads_encrypt_correctly():
    x = torch.randn(2000, 3, 8, 8)
    key = sample_key(2000, 4, (3, 8, 8), seed=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref = apply_key(x, key)  # the parent has used its worker threads before the fork
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(q, x, key))
        p.start()
        got = q.get(timeout=120)
        p.join(timeout=60)
        assert p.exitcode == 0 and np.array_equal(got, ref.numpy())
        results = [None] * 4

        def run(i):
            results[i] = apply_key(x, key)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(r is not None and torch.equal(r, ref) for r in results)
    finally:
        torch.set_num_threads(before)


def test_the_dataset_loads_the_kernel_before_workers_fork():
    code = ("import torch; from instahide.modules import InstaHideDataset; from instahide.scheme import kernel; "
            "k, c = kernel._compiled('kernel'), kernel._compiled('coefficients'); "
            "before = (len(k.signatures), len(c.signatures)); "
            "InstaHideDataset(torch.randn(64, 3, 4, 4), torch.arange(64) % 10, seed=0); "
            "warm = (len(k.signatures), len(c.signatures)); "
            "from instahide.scheme import sample_coefficients; sample_coefficients(300, 4); "
            "sample_coefficients(300, 6, dom=0.3, own_min=0.2); "
            "print(*before, *warm, len(c.signatures))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    # loaded in the parent (forked workers inherit both), and real draws need no other compilation
    assert out.stdout.split() == ["0", "0", "1", "1", "1"]
