"""Large CPU tensors in huge pages (instahide._memory) and the loaders that use them."""
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

from instahide._memory import LARGE_MIN_BYTES, empty_large, huge_pages_enabled, to_large
from instahide.data import ImageDataset, normalize_images
from instahide.data.scaling import scale_images

LARGE = (LARGE_MIN_BYTES // (4 * 3 * 32 * 32) + 10, 3, 32, 32)  # just above the threshold in float32

needs_huge = pytest.mark.skipif(not huge_pages_enabled(), reason="no madvise(MADV_HUGEPAGE) here")


@needs_huge
def test_a_large_tensor_is_an_ordinary_tensor_on_a_2mib_boundary():
    t = empty_large(LARGE)
    assert t.shape == LARGE and t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
    assert t.data_ptr() % (2 << 20) == 0
    t.fill_(3.0)
    assert float(t.sum()) == 3.0 * t.numel()
    b = empty_large((LARGE_MIN_BYTES // 2 + 1,), torch.bfloat16)
    b.fill_(1.0)
    assert b.dtype == torch.bfloat16 and float(b[-1]) == 1.0


def test_small_tensors_and_the_switch_give_plain_torch_memory(monkeypatch):
    small = empty_large((10, 3, 32, 32))
    assert small.shape == (10, 3, 32, 32) and small.dtype == torch.float32
    x = torch.randn(10, 3)
    assert to_large(x) is x
    monkeypatch.setenv("INSTAHIDE_HUGE_PAGES", "0")
    assert not huge_pages_enabled()
    big = torch.zeros(LARGE)
    assert to_large(big) is big


@needs_huge
def test_memory_is_released_with_the_tensor():
    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    before = rss()
    for _ in range(8):  # 8 x 64 MiB: kept, this would add 512 MiB
        t = empty_large((16 << 20,))
        t.fill_(1.0)
        del t
    assert rss() - before < (256 << 20)


def _child_sum(t, q):
    q.put(float(t.double().sum()))


@needs_huge
def test_a_forked_worker_reads_the_same_values():
    t = to_large(torch.arange(float(np.prod(LARGE))).view(LARGE))
    assert t.data_ptr() % (2 << 20) == 0
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_sum, args=(t, q))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=60)
    assert got == float(t.double().sum())


def test_loaders_give_the_same_values_as_the_out_of_place_formulas():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=LARGE, dtype=np.uint8)
    ds = ImageDataset(images, np.zeros(len(images), np.int64), None, "synthetic", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    x, _ = ds.to_tensor()
    ref = normalize_images(torch.from_numpy(images).float().div_(255.0), ds.mean, ds.std)
    assert torch.equal(x, ref)
    unit, _ = ds.to_tensor(normalize=False)
    assert torch.equal(unit, torch.from_numpy(images).float() / 255.0)
    u8 = torch.from_numpy(images)
    assert torch.equal(scale_images(u8, "pm1"), u8.float() / 127.5 - 1.0)
    assert torch.equal(scale_images(u8, "normalize", ds.mean, ds.std),
                       (u8.float() / 255.0 - torch.tensor(ds.mean).view(1, -1, 1, 1)) / torch.tensor(ds.std).view(1, -1, 1, 1))
    f = u8.float()
    assert torch.equal(scale_images(f, "unit"), f / 255.0) and torch.equal(f, u8.float())  # input untouched
