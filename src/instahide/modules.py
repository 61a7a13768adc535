"""Training-loop twins of :func:`instahide.encrypt`: a module, an epoch-wise loader, and a dataset
that encrypts batch by batch in ``DataLoader`` worker processes.

Example (three lines added to an existing loop)::

    hide = instahide.InstaHide(k=4, num_classes=10)
    for x, y in loader:
        x, soft_y = hide(x, y)               # encrypt the batch with fresh one-time keys
        loss = instahide.soft_cross_entropy(model(x), soft_y)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .scheme import kernel
from .scheme.defaults import DOM, K_INSIDE, UPPER
from .scheme.encrypt import (MODES, check_centred, check_images, check_labels, check_num_classes, check_scheme,
                             encrypt)
from .scheme.legacy import LegacyGenerator
from .scheme.rng import KeyGenerator, resolve_generator


class _SchemeOptions:
    """The scheme options shared by :class:`InstaHide` and :class:`InstaHideLoader`."""

    def _init_scheme(self, k, upper, mode, public, num_private, dom, num_classes, seed, generator,
                     legacy, allow_uncentred):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if public is not None:
            public = check_images(public, "public")
        check_scheme(k, upper, num_private, dom, public is not None)
        num_classes = check_num_classes(num_classes)  # Python or numpy integers, as encrypt takes
        self.k, self.upper, self.mode, self.num_private, self.dom = k, upper, mode, num_private, dom
        self.num_classes, self.legacy, self.allow_uncentred = num_classes, legacy, allow_uncentred
        if legacy:
            if generator is not None and seed is not None:
                raise ValueError("give either seed or generator, not both")
            self.generator = generator if generator is not None else LegacyGenerator(seed)
        else:
            self.generator = resolve_generator(seed, generator)
        return public

    def _encrypt(self, x, y, public, *, return_key=False, out=None, rows=None, checked=False):
        return encrypt(
            x, y, k=self.k, upper=self.upper, mode=self.mode, public=public,
            num_private=self.num_private, dom=self.dom, num_classes=self.num_classes,
            generator=self.generator, legacy=self.legacy, allow_uncentred=self.allow_uncentred or checked,
            return_key=return_key, out=out, rows=rows,
        )

    def _order_generator(self) -> torch.Generator:
        """The (not secret) shuffling order's torch generator, seeded from the key stream so that a
        research seed reproduces the whole run (legacy: from the legacy seed, without drawing from
        the streams being replayed)."""
        order_seed = (int.from_bytes(bytes(self.generator.random_bytes(8)), "little") >> 1
                      if isinstance(self.generator, KeyGenerator) else self.generator.seed)
        return torch.Generator().manual_seed(order_seed)


class InstaHide(nn.Module, _SchemeOptions):
    """Encrypt each batch with fresh one-time keys: ``(x, y) -> (encrypted x, soft labels)``.

    Same options as :func:`instahide.encrypt`; partners are drawn from within the batch (and from
    ``public``, which is kept as a non-persistent buffer so ``.to(device)`` moves it). Always
    encrypts, in training and in eval mode: it is a data transform, not a layer.

    Shapes: ``x`` ``(B, C, H, W)`` float, centred; ``y`` ``(B,)`` class indices or
    ``(B, num_classes)``; returns ``(B, C, H, W)`` and ``(B, num_classes)`` (None if ``y`` is None).
    Options are checked when the module is built. Labels need ``num_classes``: a batch need not hold
    every class, so a width taken from the batch would change from batch to batch. With
    ``legacy=True`` the module draws from one pair of Mersenne-Twister streams that cannot be split:
    called in any process other than the one that built it (a ``DataLoader`` worker's ``collate_fn``),
    it raises a RuntimeError rather than give every worker the same keys.

    Example:
        >>> hide = InstaHide(k=4, num_classes=10, seed=0)
        >>> xe, ye = hide(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
        >>> xe.shape, ye.shape
        (torch.Size([16, 3, 32, 32]), torch.Size([16, 10]))
    """

    def __init__(self, k: int = K_INSIDE, *, upper: float = UPPER, mode: str = "instahide", public=None,
                 num_private: int | None = None, dom: float = DOM, num_classes: int | None = None,
                 seed=None, generator: KeyGenerator | LegacyGenerator | None = None, legacy: bool = False,
                 allow_uncentred: bool = False) -> None:
        super().__init__()
        public = self._init_scheme(k, upper, mode, public, num_private, dom, num_classes, seed, generator,
                                   legacy, allow_uncentred)
        self.register_buffer("public", public, persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        if y is not None and self.num_classes is None:
            raise ValueError("InstaHide needs num_classes=... to encrypt labels (a batch may not hold every "
                             "class, so the soft-label width would vary from batch to batch)")
        public = self.public
        if public is not None and (public.device != x.device or public.dtype != x.dtype):
            public = public.to(device=x.device, dtype=x.dtype)
        enc = self._encrypt(x, y, public)
        return enc.images, enc.soft_labels

    def extra_repr(self) -> str:
        pub = "" if self.public is None else f", public={tuple(self.public.shape)}"
        return (f"k={self.k}, upper={self.upper}, mode={self.mode!r}{pub}, legacy={self.legacy}, "
                f"keys={self.generator!r}")


class InstaHideLoader(_SchemeOptions):
    """Batches of a private set that is re-encrypted, whole, at the start of every epoch.

    Every epoch draws fresh one-time keys for all ``N`` images (partners from the whole set, as in
    the paper), after the optional ``augment`` (a function ``(N, C, H, W) -> (N, C, H, W)``, e.g. random
    crop and flip as batched tensor operations), then yields shuffled batches of
    ``(encryptions (B, C, H, W), soft labels (B, num_classes))``. The encrypted set lives in one
    buffer reused across epochs; batches are copies.

    Args:
        images: ``(N, C, H, W)`` float, centred private images (on the training device).
        labels: ``(N,)`` class indices or ``(N, num_classes)``.
        batch_size, shuffle, drop_last: as for ``torch.utils.data.DataLoader``.
        augment: optional batched augmentation applied before encryption, every epoch.
        **scheme: the options of :func:`instahide.encrypt` (``k``, ``upper``, ``mode``, ``public``,
            ``num_private``, ``dom``, ``num_classes``, ``seed``, ``generator``, ``legacy``,
            ``allow_uncentred``).

    Example:
        >>> loader = InstaHideLoader(torch.randn(100, 3, 8, 8), torch.arange(100) % 10, batch_size=32, seed=0)
        >>> [tuple(xb.shape) for xb, yb in loader][-1]
        (4, 3, 8, 8)
    """

    def __init__(self, images, labels, *, batch_size: int = 128, shuffle: bool = True,
                 drop_last: bool = False, augment=None, k: int = K_INSIDE, upper: float = UPPER,
                 mode: str = "instahide", public=None, num_private: int | None = None, dom: float = DOM,
                 num_classes: int | None = None, seed=None, generator=None, legacy: bool = False,
                 allow_uncentred: bool = False) -> None:
        self.images = check_images(images, "images")
        if labels is None:
            raise ValueError("InstaHideLoader needs labels (N,) or (N, num_classes)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be an integer, got {batch_size!r} ({type(batch_size).__name__})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch_size = int(batch_size)
        # checked once for the whole set (the width comes from it, not from a batch)
        self.labels, num_classes = check_labels(labels, self.images.shape[0], num_classes, self.images.device,
                                                one_hot=False)
        self.public = self._init_scheme(k, upper, mode, public, num_private, dom, num_classes, seed,
                                        generator, legacy, allow_uncentred)
        self.batch_size, self.shuffle, self.drop_last, self.augment = batch_size, shuffle, drop_last, augment
        self.epoch = 0
        self._buffer = None
        self._order = self._order_generator()

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def encrypt_epoch(self):
        """Encrypt the whole set once with fresh keys: ``(encryptions (N, ...), soft labels)``."""
        x = self.images if self.augment is None else self.augment(self.images)
        if self._buffer is None or self._buffer.shape != x.shape or self._buffer.dtype != x.dtype:
            self._buffer = torch.empty_like(x, memory_format=torch.contiguous_format)
        enc = self._encrypt(x, self.labels, self.public, out=self._buffer)
        self.epoch += 1
        return enc.images, enc.soft_labels

    def __iter__(self):
        xe, ye = self.encrypt_epoch()
        n = xe.shape[0]
        order = (torch.randperm(n, generator=self._order) if self.shuffle else torch.arange(n)).to(xe.device)
        stop = n - n % self.batch_size if self.drop_last else n
        for s in range(0, stop, self.batch_size):
            b = order[s:s + self.batch_size]
            yield xe[b], ye[b]


class InstaHideDataset(Dataset, _SchemeOptions):
    """A private set encrypted batch by batch where it is read, e.g. in ``DataLoader`` worker processes.

    ``ds[rows]`` (a list or 1-D tensor of indices: one batch) is ``(encryptions (B, C, H, W), soft
    labels (B, num_classes))`` of those images under fresh one-time keys, partners drawn from the
    whole private set (as :class:`InstaHideLoader`, unlike :class:`InstaHide` on a batch).
    :meth:`loader` wraps it in a ``DataLoader`` that hands whole batches of indices to the workers.

    Keys in workers: every forked worker rekeys its copy of the generator at its first draw (from OS
    entropy; for a research seed from the seed, the worker id and the fork count, so a seeded run is
    reproducible for a fixed ``num_workers``): no two workers, epochs or ranks share a stream
    (docs/reliability.md). Needs the fork start method (the default on Linux): a generator is never
    pickled. The images are checked, and the centring test run, once here rather than per batch.

    Args:
        images, labels: as for :class:`InstaHideLoader` (labels: ``(N,)`` or ``(N, num_classes)``).
        **scheme: the options of :func:`instahide.encrypt` except ``legacy`` (the reference's
            sequential streams cannot be split between workers: use :class:`InstaHideLoader`).

    Example:
        >>> ds = InstaHideDataset(torch.randn(100, 3, 8, 8), torch.arange(100) % 10, seed=0)
        >>> [tuple(xb.shape) for xb, yb in ds.loader(batch_size=32, num_workers=0)][-1]
        (4, 3, 8, 8)
    """

    def __init__(self, images, labels, *, k: int = K_INSIDE, upper: float = UPPER, mode: str = "instahide",
                 public=None, num_private: int | None = None, dom: float = DOM,
                 num_classes: int | None = None, seed=None, generator: KeyGenerator | None = None,
                 allow_uncentred: bool = False) -> None:
        self.images = check_images(images, "images")
        if labels is None:
            raise ValueError("InstaHideDataset needs labels (N,) or (N, num_classes)")
        self.labels, num_classes = check_labels(labels, self.images.shape[0], num_classes, self.images.device)
        self.public = self._init_scheme(k, upper, mode, public, num_private, dom, num_classes, seed,
                                        generator, False, allow_uncentred)
        if self.public is not None and (self.public.device != self.images.device
                                        or self.public.dtype != self.images.dtype):
            self.public = self.public.to(self.images)
        if mode == "instahide" and not allow_uncentred:
            check_centred(self.images, k, "images")
            if self.public is not None:
                check_centred(self.public, k, "public")
        self._order = self._order_generator()
        if kernel.supports(self.images):
            kernel.warm()  # forked workers inherit the loaded kernel (docs/benchmarks.md)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, rows):
        if isinstance(rows, int):
            raise TypeError("InstaHideDataset is indexed by a batch of indices (a list or 1-D tensor), not "
                            "one index; use loader(), or a DataLoader with batch_size=None and a BatchSampler")
        enc = self._encrypt(self.images, self.labels, self.public, rows=rows, checked=True)
        return enc.images, enc.soft_labels

    def loader(self, batch_size: int = 128, *, shuffle: bool = True, drop_last: bool = False,
               num_workers: int = 0, **dataloader) -> DataLoader:
        """A ``DataLoader`` of encrypted batches: a ``BatchSampler`` of indices (shuffled every epoch
        with the dataset's order generator), each batch encrypted by whichever worker reads it."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        index = range(len(self))
        sampler = RandomSampler(index, generator=self._order) if shuffle else SequentialSampler(index)
        return DataLoader(self, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last),
                          num_workers=num_workers, **dataloader)
