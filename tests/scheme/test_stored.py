"""uint8 stores normalised on the fly (:class:`Uint8Images`): the same research seed gives the same
bits as the in-memory float path (``ImageDataset.to_tensor``), on the fused kernel and on the torch
path, from channels-first and channels-last memory maps; partners come from the whole set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from instahide.data import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, ImageDataset, load_arrays
from instahide.scheme import Uint8Images, apply_key, encrypt, kernel, unpack_signs

PATHS = [False] + ([None] if kernel.available() else [])  # torch path; fused kernel where numba runs


def _files(tmp_path, n=120, shape=(9, 7, 3), seed=0):
    """The same uint8 images as a channels-last and a channels-first .npy, memory-mapped."""
    u = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    np.save(tmp_path / f"hwc{seed}.npy", u)
    np.save(tmp_path / f"chw{seed}.npy", np.ascontiguousarray(u.transpose(0, 3, 1, 2)))
    return u.transpose(0, 3, 1, 2), [load_arrays(tmp_path / f"{lay}{seed}.npy").images for lay in ("hwc", "chw")]


def _in_memory(u8, mean, std, normalize=True):
    return ImageDataset(np.ascontiguousarray(u8), None, None, "x", mean, std).to_tensor(normalize=normalize)[0]


def test_the_table_is_the_in_memory_normalisation_of_every_value():
    u = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16), (1, 3, 16, 16))
    st = Uint8Images(np.ascontiguousarray(u), CIFAR10_MEAN, CIFAR10_STD)
    ref = _in_memory(u, CIFAR10_MEAN, CIFAR10_STD).reshape(3, 256).numpy()
    assert np.array_equal(st.lut.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("mode", ["instahide", "mixup"])
def test_memory_mapped_and_in_memory_encryptions_are_identical(tmp_path, fused, mode):
    u8, maps = _files(tmp_path)
    x = _in_memory(u8, CIFAR10_MEAN, CIFAR10_STD)
    ref = encrypt(x, torch.arange(120) % 7, k=4, mode=mode, seed=11, fused=fused, return_key=True)
    for mm in maps:
        assert isinstance(mm, np.memmap)
        got = encrypt(Uint8Images(mm, CIFAR10_MEAN, CIFAR10_STD), torch.arange(120) % 7, k=4, mode=mode, seed=11,
                      fused=fused, return_key=True)
        assert torch.equal(got.images.view(torch.int32), ref.images.view(torch.int32))
        assert torch.equal(got.soft_labels, ref.soft_labels) and torch.equal(got.key.indices, ref.key.indices)


@pytest.mark.parametrize("fused", PATHS)
def test_cross_dataset_with_a_memory_mapped_pool_is_identical(tmp_path, fused):
    u8, (private, _) = _files(tmp_path, n=60)
    pool8, (pool, _) = _files(tmp_path, n=500, seed=1)
    x, px = _in_memory(u8, CIFAR10_MEAN, CIFAR10_STD), _in_memory(pool8, IMAGENET_MEAN, IMAGENET_STD)
    ref = encrypt(x, k=6, public=px, seed=5, fused=fused).images
    sp = Uint8Images(pool, IMAGENET_MEAN, IMAGENET_STD)
    for images in (Uint8Images(private, CIFAR10_MEAN, CIFAR10_STD), x):  # a uint8 pool beside float images too
        assert torch.equal(encrypt(images, k=6, public=sp, seed=5, fused=fused).images, ref)


@pytest.mark.parametrize("fused", PATHS)
def test_chunks_of_rows_from_a_map_equal_the_plain_loop(tmp_path, fused):
    """Chunks of ``rows`` (as the command line writes them): each output row is the plain loop's
    sigma * sum_j lambda_j x[idx_j] over the float images, partners drawn across the whole set."""
    u8, (mm, _) = _files(tmp_path, n=200, shape=(5, 6, 3))
    st, x = Uint8Images(mm, CIFAR10_MEAN, CIFAR10_STD), _in_memory(u8, CIFAR10_MEAN, CIFAR10_STD).double()
    seen = set()
    for epoch, s in [(e, s) for e in range(4) for s in range(0, 200, 25)]:
        rows = np.arange(s, s + 25)
        enc = encrypt(st, k=4, seed=1000 * epoch + s, rows=rows, fused=fused, return_key=True)
        key = enc.key
        assert key.indices[:, 0].tolist() == rows.tolist()
        partners = key.indices[:, 1:].flatten().tolist()
        assert any(not s <= i < s + 25 for i in partners)     # not confined to the chunk
        seen.update(partners)
        if epoch:
            continue
        sign = unpack_signs(key.mask_bits, 90).double().view(25, 3, 5, 6)
        loop = torch.stack([sign[r] * sum(float(key.coefficients[r, j]) * x[int(key.indices[r, j])] for j in range(4))
                            for r in range(25)])
        torch.testing.assert_close(enc.images.double(), loop, rtol=1e-5, atol=1e-5)
    assert seen == set(range(200))     # partners cover the whole set (2,400 draws: each missed w.p. e^-12)


@pytest.mark.parametrize("fused", PATHS)
def test_unnormalised_store_equals_the_unit_range_tensor(tmp_path, fused):
    u8, (mm, _) = _files(tmp_path, n=40)
    x = _in_memory(u8, CIFAR10_MEAN, CIFAR10_STD, normalize=False)
    st = Uint8Images(mm, normalize=False)
    assert torch.equal(st.to_tensor(), x)
    ref = encrypt(x, k=4, seed=2, fused=fused, allow_uncentred=True).images
    assert torch.equal(encrypt(st, k=4, seed=2, fused=fused, allow_uncentred=True).images, ref)


def test_apply_key_and_out_with_a_store(tmp_path):
    u8, (mm, _) = _files(tmp_path, n=50)
    st, x = Uint8Images(mm, CIFAR10_MEAN, CIFAR10_STD), _in_memory(u8, CIFAR10_MEAN, CIFAR10_STD)
    key = encrypt(x, k=4, seed=9, return_key=True).key
    out = torch.empty(50, 3, 9, 7)
    assert apply_key(st, key, out=out) is out and torch.equal(out, apply_key(x, key))


def test_uncentred_store_is_refused_like_its_tensor(tmp_path):
    u8, (mm, _) = _files(tmp_path, n=40)
    with pytest.raises(ValueError, match="are not centred"):
        encrypt(Uint8Images(mm, normalize=False), k=4)


def test_bad_stores_are_refused():
    with pytest.raises(TypeError, match="needs a uint8 numpy array"):
        Uint8Images(np.zeros((2, 3, 4, 4), np.float32), (0,) * 3, (1,) * 3)
    with pytest.raises(ValueError, match=r"expected \(N, C, H, W\)"):
        Uint8Images(np.zeros((3, 4, 4), np.uint8), (0,), (1,))
    with pytest.raises(ValueError, match="rows are contiguous"):
        Uint8Images(np.zeros((2, 3, 4, 6), np.uint8)[:, :, :, ::2], (0,) * 3, (1,) * 3)
    with pytest.raises(ValueError, match="3 entries for 1-channel"):
        Uint8Images(np.zeros((2, 1, 4, 4), np.uint8), (0,) * 3, (1,) * 3)
    with pytest.raises(ValueError, match="std finite and > 0"):
        Uint8Images(np.zeros((2, 1, 4, 4), np.uint8), (0,), (0,))
    with pytest.raises(TypeError, match=r"Uint8Images\(x, mean, std\)"):
        encrypt(torch.zeros(4, 1, 2, 2, dtype=torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_store_gathering_onto_cuda_equals_the_cuda_tensor(tmp_path):
    u8, (mm, _) = _files(tmp_path, n=80)
    ds = ImageDataset(np.ascontiguousarray(u8), None, None, "x", CIFAR10_MEAN, CIFAR10_STD)
    x = ds.to_tensor(device="cuda")[0]
    st = Uint8Images(mm, CIFAR10_MEAN, CIFAR10_STD, device="cuda")
    ref = encrypt(x, k=4, seed=1).images
    got = encrypt(st, k=4, seed=1).images
    assert got.device.type == "cuda" and torch.equal(got, ref)


def test_gathers_from_a_store_are_bounded_and_exact(tmp_path, monkeypatch):
    """The torch path and the centring check gather a store's rows a few at a time (large images:
    256 k rows of 224 x 224 would be 0.6 GB at once); the sums are those of one gather."""
    module = __import__("importlib").import_module("instahide.scheme.encrypt")

    u8, (mm, _) = _files(tmp_path, n=60)
    st, x = Uint8Images(mm, CIFAR10_MEAN, CIFAR10_STD), _in_memory(u8, CIFAR10_MEAN, CIFAR10_STD)
    sizes = []
    real = st.rows
    monkeypatch.setattr(st, "rows", lambda idx: sizes.append(len(idx)) or real(idx))
    monkeypatch.setattr(module, "GATHER_BYTES", 4 * 4 * 189 * 3)     # 3 output rows of k=4 per gather
    ref = encrypt(x, k=4, seed=8, fused=False).images
    assert torch.equal(encrypt(st, k=4, seed=8, fused=False).images, ref)
    assert sizes and max(sizes) <= 12
