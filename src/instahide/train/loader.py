"""Training from data larger than memory: uint8 images encrypted batch by batch in ``DataLoader`` workers.

``instahide train`` keeps the whole private set on the device as float32 and re-encrypts all of it at
the start of every epoch (``--workers 0``): fast, and bounded by N. Here the private set stays uint8
where it is (a memory-mapped ``.npy``, any ``(N, C, H, W)`` uint8 array, a strided view included) and
every batch is made where it is read, in a ``DataLoader`` worker:

1. draw the keys of the batch's rows with :func:`~instahide.scheme.sample_key` (``rows=``): partners are
   indices into the WHOLE private set (and the whole public pool), uniform as in :func:`~instahide.encrypt`;
2. in chunks of rows: gather the unique rows the chunk needs from the array, scale and normalise them
   exactly as :meth:`~instahide.data.ImageDataset.to_tensor` does (and augment them), remap the key's
   indices into the gathered rows and apply it (:func:`~instahide.scheme.apply_key`);
3. mix the labels with the original key (:func:`~instahide.scheme.mix_labels`).

For the same key the result is bit for bit the encryption :func:`~instahide.encrypt` makes of the
in-memory float set (tests/train/test_loader.py). Memory: the output batch, one chunk of gathered rows
(:data:`CHUNK_BYTES`) and the DataLoader's prefetched batches (``prefetch_factor`` per worker), never N.

Keys: batch ``b`` of an epoch draws from ``root.spawn(b)``. The root is made in every process that
encrypts, by a factory: ``KeyGenerator.from_entropy`` (each worker its own OS entropy), or, for a research
seed, a function that derives the epoch's generator from the seed (the same root in every process, so a
seeded run gives the same keys for any number of workers). A :class:`~instahide.scheme.KeyGenerator`
given instead of a factory is copied into forked workers, whose copies rekey at their first draw
(:mod:`instahide.scheme.rng`): no two workers, batches or epochs share key material.

Encryption folders (``instahide train-shared``) are read the same way: :class:`FolderBatches`.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data import normalize_images
from ..scheme import Encryption, KeyGenerator, apply_key, mix_labels, sample_key
from ..scheme import kernel
from ..scheme.defaults import DOM
from ..scheme.encrypt import check_centred, check_scheme
from .evaluate import evaluate

# Gathered float32 rows per chunk of an encrypted batch (64 MiB: 340 rows of 224 x 224 x 3).
CHUNK_BYTES = 1 << 26
# --workers auto streams memory-mapped data whose float32 copy would take more than this (1 GiB);
# smaller sets, and sets already in memory, keep the whole-set path (their results unchanged).
STREAM_ABOVE_BYTES = 1 << 30
# Batches each worker prepares ahead (torch's default): with W workers, 2 W batches in flight.
PREFETCH = 2


# -- choosing the path ----------------------------------------------------------------------------
def is_memory_mapped(array) -> bool:
    """Whether ``array`` (or the array it is a view of) is backed by a memory-mapped file."""
    seen = 0
    while array is not None and seen < 64:
        if isinstance(array, np.memmap) or type(array).__name__ == "mmap":
            return True
        array, seen = getattr(array, "base", None), seen + 1
    return False


def auto_workers() -> int:
    """Worker processes for ``--workers auto`` on streamed data: the usable CPUs less one for the
    training loop, between 1 and 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 2
    return min(4, max(1, cpus - 1))


def resolve_workers(workers, arrays, float_bytes: int) -> int:
    """The number of ``DataLoader`` workers to use: 0 means the whole-set, in-memory path.

    ``workers`` is an int >= 0, or None / ``"auto"``: :func:`auto_workers` when one of ``arrays`` is
    memory-mapped and the float32 data would take more than :data:`STREAM_ABOVE_BYTES` (``float_bytes``),
    else 0."""
    if workers is None or workers == "auto":
        big = float_bytes > STREAM_ABOVE_BYTES and any(is_memory_mapped(a) for a in arrays)
        return auto_workers() if big else 0
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be 'auto' or an integer >= 0, got {workers!r}")
    if workers > 0 and "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError("workers > 0 needs the fork start method (Linux): key generators are never pickled "
                         "and memory maps must not be copied into workers")
    return int(workers)


def parse_workers(text: str):
    """``--workers`` on the command line: ``auto`` or an integer >= 0."""
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"--workers must be 'auto' or an integer >= 0, got {text!r}")
    return value


# -- uint8 images, read by rows --------------------------------------------------------------------
class PixelSource:
    """uint8 images ``(N, C, H, W)`` read a few rows at a time, as normalised float32.

    Args:
        images: any uint8 array-like ``(N_array, C, H, W)`` indexable by an integer array: a numpy array,
            a (read-only, non-contiguous) ``np.memmap`` view such as an NHWC map transposed to NCHW, or
            a CPU uint8 tensor.
        mean, std: per-channel statistics of the images scaled to [0, 1].
        index: optional int64 ``(N,)``: row ``i`` of this source is row ``index[i]`` of ``images`` (a
            subset or a rank's shard, without copying the images).
        name: what to call the images in messages.

    Example:
        >>> src = PixelSource(np.zeros((5, 1, 2, 2), np.uint8), (0.5,), (0.25,))
        >>> src.gather(np.array([0, 3])).shape
        torch.Size([2, 1, 2, 2])
    """

    def __init__(self, images, mean, std, index=None, name: str = "images") -> None:
        shape = tuple(getattr(images, "shape", ()))
        dtype = getattr(images, "dtype", None)
        if len(shape) != 4 or 0 in shape[1:]:
            raise ValueError(f"{name} must be (N, C, H, W) with C, H, W >= 1, got shape {shape}")
        if dtype not in (np.uint8, torch.uint8):
            raise TypeError(f"{name} must be uint8 (N, C, H, W), got dtype {dtype}; float sets take the "
                            "in-memory path (--workers 0)")
        if len(mean) != shape[1] or len(std) != shape[1]:
            raise ValueError(f"{len(mean)}/{len(std)} channel statistics for {shape[1]}-channel {name}")
        self.images, self.mean, self.std, self.name = images, tuple(mean), tuple(std), name
        if index is not None:
            index = np.asarray(index, dtype=np.int64)
            if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= shape[0])):
                raise ValueError(f"index must be 1-D rows of the {shape[0]} {name}")
        self.index = index

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def array_bytes(self) -> int:
        """Bytes of the whole set as float32 (what the in-memory path would hold)."""
        return len(self) * int(np.prod(self.shape)) * 4

    def subset(self, rows) -> "PixelSource":
        """The source restricted to ``rows`` (indices into this source), still without copying."""
        rows = np.asarray(rows, dtype=np.int64)
        return PixelSource(self.images, self.mean, self.std, rows if self.index is None else self.index[rows],
                           self.name)

    def gather(self, rows) -> torch.Tensor:
        """Rows ``rows`` (indices into this source, any order) as float32 ``(len(rows), C, H, W)``:
        ``(x / 255 - mean) / std``, the same operations as ``ImageDataset.to_tensor``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        phys = rows if self.index is None else self.index[rows]
        if isinstance(self.images, torch.Tensor):
            raw = self.images[torch.from_numpy(phys)].contiguous()
        else:
            order = np.argsort(phys, kind="stable")       # read a memory map front to back
            got = np.empty((len(phys), *self.shape), dtype=np.uint8)
            try:
                got[order] = self.images[phys[order]]
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read rows of {self.name}: {exc}") from exc
            raw = torch.from_numpy(got)
        return normalize_images(raw.to(torch.float32).div_(255.0), self.mean, self.std)


# -- encrypting a batch of rows --------------------------------------------------------------------
def encrypt_rows(private: PixelSource, labels, rows, *, k: int, upper: float, mode: str = "instahide",
                 num_private: int | None = None, dom: float = DOM, public: PixelSource | None = None,
                 num_classes: int | None = None, generator: KeyGenerator, augment=None,
                 augment_generator: torch.Generator | None = None, fused: bool | None = None,
                 chunk_bytes: int = CHUNK_BYTES, return_key: bool = False) -> Encryption:
    """Encrypt rows ``rows`` of a uint8 private set, partners drawn from the whole set.

    Args:
        private: the private set (:class:`PixelSource`, ``N`` images).
        labels: ``(N,)`` int64 class indices of the whole set (or ``(N, num_classes)`` float), or None.
        rows: indices in ``[0, N)`` of the images to encrypt (one batch, ``B`` of them).
        k, upper, mode, num_private, dom: the scheme, as for :func:`~instahide.encrypt`.
        public: the public pool (:class:`PixelSource`), cross-dataset mode.
        num_classes: width of the soft labels.
        generator: where the keys come from (one :func:`~instahide.scheme.sample_key` call, with the
            arguments :func:`~instahide.encrypt` uses: the same generator gives the same key).
        augment: optional ``f(x, generator=...)`` applied to the gathered private rows before mixing
            (every image of a chunk gets its own draw; the public pool, as in the in-memory path, is not
            augmented).
        augment_generator: the augmentation's torch generator (None: torch's global one).
        fused: the mixing path of :func:`~instahide.scheme.apply_key`.
        chunk_bytes: bound on the float32 rows gathered at once.
        return_key: also return the key (indices into the whole set).

    Returns:
        :class:`~instahide.scheme.Encryption`: images ``(B, C, H, W)`` float32, soft labels
        ``(B, num_classes)`` (None without labels), and the key if asked. Without augmentation, equal
        to ``encrypt(x, labels, rows=rows, generator=...)`` on the whole set ``x`` as float32.
    """
    n, shape = len(private), private.shape
    if public is not None and public.shape != shape:
        raise ValueError(f"public images have shape {public.shape} per image, private images {shape}; they must match")
    num_private = check_scheme(k, upper, num_private, dom, public is not None)
    cross = num_private < k
    key = sample_key(n, k, shape, upper=upper, dom=dom if cross else None, num_private=num_private,
                     pool_size=None if public is None else len(public), masked=mode == "instahide",
                     generator=generator, rows=rows)
    key.meta.update(mode=mode, upper=upper, dom=dom if cross else None)
    m, d = len(key), int(np.prod(shape))
    out = torch.empty((m, *shape), dtype=torch.float32)
    step = max(1, chunk_bytes // (4 * d * k))
    idx = key.indices.numpy()
    for s in range(0, m, step):
        e = min(m, s + step)
        sub = key[s:e]
        cols = []
        x, x_idx = _gathered(private, idx[s:e, :num_private], augment, augment_generator)
        cols.append(x_idx)
        pub = None
        if cross:
            pub, p_idx = _gathered(public, idx[s:e, num_private:], None, None)  # the pool is not augmented
            cols.append(p_idx)
        sub = replace(sub, indices=torch.from_numpy(np.concatenate(cols, axis=1)))
        apply_key(x, sub, public=pub, out=out[s:e], fused=fused)
    soft = None
    if labels is not None:
        labels = torch.as_tensor(labels)
        soft = mix_labels(labels, key, num_classes)
    return Encryption(out, soft, key if return_key else None)


def _gathered(source: PixelSource, idx: np.ndarray, augment, generator):
    """The unique rows ``idx`` names, gathered (and augmented), and ``idx`` remapped into them."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    x = source.gather(uniq)
    if augment is not None:
        x = augment(x, generator=generator)
    return x.contiguous(), inverse.reshape(idx.shape).astype(np.int64)


def check_centred_sample(source: PixelSource, k: int, name: str = "images", rows: int | None = None) -> float:
    """:func:`~instahide.scheme.encrypt.check_centred` on ``rows`` evenly spaced images of ``source``
    (default: as many as :data:`CHUNK_BYTES` holds twice, 256 to 4,096; the whole set is never loaded):
    refuses a set whose mixtures are almost all of one sign."""
    if rows is None:
        rows = min(4096, max(256, 2 * CHUNK_BYTES // (4 * int(np.prod(source.shape)))))
    pick = np.unique(np.linspace(0, len(source) - 1, min(rows, len(source))).astype(np.int64))
    return check_centred(source.gather(pick), k, name)


# -- one epoch's batches, made where they are read ------------------------------------------------
class EncryptedBatches(Dataset):
    """Batch ``b`` of one epoch of a uint8 private set: ``(inputs (B, C, H, W), soft labels (B, classes))``.

    ``ds[b]`` encrypts the rows ``batches[b]`` with :func:`encrypt_rows` (``scheme=None``: vanilla, the
    normalised images and one-hot labels), keys from ``root.spawn(b)`` (see the module docstring), the
    augmentation from ``augment_seed`` and ``b`` (or torch's global generator of the process). Read it
    with :func:`batch_loader`.

    Args:
        private: :class:`PixelSource` of the private set (``N`` images).
        labels: ``(N,)`` int64 class indices.
        batches: the epoch's batches, 1-D index tensors into ``[0, N)``.
        num_classes: width of the labels.
        scheme: keyword arguments of :func:`encrypt_rows` (``k``, ``upper``, ``mode``, ``num_private``,
            ``dom``), or None for vanilla training.
        keys: a zero-argument factory of the epoch's root :class:`~instahide.scheme.KeyGenerator`, called
            once per process, or a generator (its copies in workers rekey at their first draw).
        public: the public pool (:class:`PixelSource`), cross-dataset mode.
        augment: optional ``f(x, generator=...)`` on the gathered rows.
        augment_seed: seeds batch ``b``'s augmentation with ``(augment_seed, b)``; None: not seeded.
        return_key: also return each batch's key (tests, audits).
    """

    def __init__(self, private: PixelSource, labels, batches, num_classes: int, *, scheme: dict | None,
                 keys=KeyGenerator.from_entropy, public: PixelSource | None = None, augment=None,
                 augment_seed: int | None = None, return_key: bool = False, fused: bool | None = None) -> None:
        self.private, self.public, self.batches = private, public, list(batches)
        self.labels = torch.as_tensor(labels)
        self.num_classes, self.scheme, self.augment = num_classes, scheme, augment
        self.augment_seed, self.return_key, self.fused = augment_seed, return_key, fused
        if scheme is not None and scheme.get("legacy"):
            raise ValueError("legacy keys replay the reference code's sequential generator: they cannot be drawn "
                             "batch by batch in workers (use the in-memory path, workers=0)")
        self.scheme = None if scheme is None else {k: v for k, v in scheme.items() if k != "legacy"}
        self._keys, self._root, self._pid = keys, None, None
        if scheme is not None and kernel.available():
            kernel.warm()  # forked workers inherit the compiled kernel

    def __len__(self) -> int:
        return len(self.batches)

    def root(self) -> KeyGenerator:
        """This process's root generator of the epoch (made here on first use)."""
        if isinstance(self._keys, KeyGenerator):
            return self._keys
        if self._root is None or self._pid != os.getpid():
            self._root, self._pid = self._keys(), os.getpid()
        return self._root

    def __getitem__(self, b: int):
        rows = self.batches[b].numpy() if isinstance(self.batches[b], torch.Tensor) else np.asarray(self.batches[b])
        gen = None
        if self.augment is not None and self.augment_seed is not None:
            gen = torch.Generator().manual_seed((self.augment_seed + 1_000_003 * int(b)) % 2 ** 63)
        if self.scheme is None:
            x = self.private.gather(rows)
            if self.augment is not None:
                x = self.augment(x, generator=gen)
            y = F.one_hot(self.labels[torch.from_numpy(rows)], self.num_classes).float()
            return (x, y, None) if self.return_key else (x, y)
        enc = encrypt_rows(self.private, self.labels, rows, **self.scheme, public=self.public,
                           num_classes=self.num_classes, generator=self.root().spawn(int(b)), augment=self.augment,
                           augment_generator=gen, fused=self.fused, return_key=self.return_key)
        return (enc.images, enc.soft_labels, enc.key) if self.return_key else (enc.images, enc.soft_labels)


class FolderBatches(Dataset):
    """Batch ``i`` of one training epoch of encryption folders: ``union.take(epoch, positions[i])``,
    float32 ``(B, C, H, W)`` and soft labels ``(B, classes)`` read from the memory maps (in a worker)."""

    def __init__(self, union, epoch: int, positions) -> None:
        self.union, self.epoch, self.positions = union, epoch, list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        pos = self.positions[i]
        return self.union.take(self.epoch, pos.numpy() if isinstance(pos, torch.Tensor) else pos)


def batch_loader(dataset: Dataset, workers: int, *, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` over a dataset of whole batches (``ds[b]`` is batch ``b``), read in order by
    ``workers`` forked processes (0: in this process), each at most :data:`PREFETCH` batches ahead."""
    extra = {"prefetch_factor": PREFETCH, "multiprocessing_context": "fork",
             "worker_init_fn": _return_freed_memory} if workers > 0 else {}
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory, **extra)


def _return_freed_memory(_worker_id: int = 0) -> None:
    """In a worker: allocations of 1 MiB and more straight from (and back to) the OS. glibc's default
    raises that threshold to the largest block freed so far (up to 32 MiB), after which a worker's
    batch-sized blocks stay in its heap: measured on 128 x 128 batches, a worker's anonymous memory
    grew from 0.26 to 1.2 GiB over 64 batches, and stayed at 0.26 GiB with this (docs/outofcore_training.md)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; also fixes the dynamic threshold
    except (OSError, AttributeError):  # not glibc: nothing to set
        pass


class Waited:
    """Iterate ``iterable``, adding the time spent waiting for each item to ``self.seconds``."""

    def __init__(self, iterable) -> None:
        self.iterable, self.seconds = iterable, 0.0

    def __iter__(self):
        it = iter(self.iterable)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - t0
            yield item


def evaluate_source(model, source: PixelSource, labels, *, device, batch_size: int = 512, amp: bool = False,
                    flip: bool = False, chunk_rows: int | None = None) -> dict:
    """:func:`~instahide.train.evaluate.evaluate` over a uint8 test set read chunk by chunk: the
    accuracy and mean cross-entropy of all ``len(source)`` images, ``labels`` ``(M,)``."""
    labels = torch.as_tensor(labels)
    m = len(source)
    if chunk_rows is None:
        chunk_rows = max(batch_size, (CHUNK_BYTES // (4 * int(np.prod(source.shape)))) // batch_size * batch_size)
    correct = loss = 0.0
    for s in range(0, m, chunk_rows):
        e = min(m, s + chunk_rows)
        x = source.gather(np.arange(s, e)).to(device)
        ev = evaluate(model, x, labels[s:e].to(device), batch_size=batch_size, amp=amp, flip=flip)
        correct += ev["accuracy"] * (e - s)
        loss += ev["loss"] * (e - s)
    return {"accuracy": correct / m, "loss": loss / m}
