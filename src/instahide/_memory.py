"""Large CPU tensors in transparent huge pages (Linux).

A dataset-sized tensor in ordinary 4 KiB pages costs one page fault per 4 KiB when it is first written
(about 150,000 for 50,000 CIFAR-10 images) and one address-translation entry per 4 KiB when its rows
are read in random order, as the encryption's partner gathers read them. In 2 MiB pages both drop
about 500-fold: docs/benchmarks.md measures a fresh encryption output and the partner gathers with and
without them. :func:`empty_large` allocates such memory (anonymous, private, advised with
``MADV_HUGEPAGE``) where the system offers it, and plain ``torch.empty`` elsewhere: on other systems,
for tensors below :data:`LARGE_MIN_BYTES`, or with ``INSTAHIDE_HUGE_PAGES=0`` in the environment
(the kernel may compact memory to find free huge pages; this turns that off).
"""
from __future__ import annotations

import math
import mmap
import os

import torch

LARGE_MIN_BYTES = 32 << 20  # smaller tensors gain little and would round up to whole 2 MiB pages
_HUGE = 2 << 20


def huge_pages_enabled() -> bool:
    """Whether :func:`empty_large` uses huge pages here (Linux with ``madvise`` support, not turned off)."""
    return (hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_PRIVATE")
            and os.environ.get("INSTAHIDE_HUGE_PAGES", "1") != "0")


def empty_large(shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor of ``shape`` and ``dtype``; in transparent huge pages
    when it has at least :data:`LARGE_MIN_BYTES` and :func:`huge_pages_enabled`. It behaves as any
    tensor (the memory is released with its last reference; a forked worker shares it copy-on-write)."""
    shape = tuple(int(s) for s in shape)
    count = math.prod(shape)
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    if nbytes < LARGE_MIN_BYTES or not huge_pages_enabled():
        return torch.empty(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel without transparent huge pages: ordinary pages
        pass
    address = torch.frombuffer(buf, dtype=torch.uint8, count=1).data_ptr()
    offset = (-address) % _HUGE  # start on a 2 MiB boundary: every page of the tensor can be huge
    return torch.frombuffer(buf, dtype=dtype, count=count, offset=offset).view(shape)


def to_large(x: torch.Tensor) -> torch.Tensor:
    """``x`` copied into :func:`empty_large` memory if it is a CPU tensor of at least
    :data:`LARGE_MIN_BYTES` (``x`` itself otherwise), e.g. a dataset before it is encrypted many times."""
    if x.device.type != "cpu" or x.numel() * x.element_size() < LARGE_MIN_BYTES or not huge_pages_enabled():
        return x
    out = empty_large(x.shape, x.dtype)
    out.copy_(x)
    return out
