"""A uint8 ``.npy`` cache of a dataset, written once and memory-mapped afterwards.

:func:`write_uint8_cache` writes ``X.npy`` (uint8 ``(N, H, W, C)``, channels last, as users keep
images), ``X.labels.npy`` (``(N,)`` int64, labelled data only) and ``X.json`` (name, mean, std,
classes, what it was made from); :func:`instahide.data.load_arrays` reads ``X.npy`` back as a
read-only memory map with those labels and statistics. A folder of images is streamed file by file
(never held whole); CIFAR, MNIST and the other loaders' datasets are written chunk by chunk. ::

    write_uint8_cache("my_scans/", "scans.npy", size=(224, 224))
    ds = load_arrays("scans.npy")      # memory-mapped; instahide encrypt --dataset arrays --root scans.npy
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._io import atomic_open, atomic_save_npy, atomic_write_text
from .arrays import default_stats, load_arrays
from .dataset import ImageDataset
from .folders import list_image_files, read_image
from .registry import load_dataset

__all__ = ["write_uint8_cache", "cached_dataset"]

_CHUNK = 4096  # rows converted and written at a time


def write_uint8_cache(source, path: str | os.PathLike, *, size: tuple[int, int] | None = None, channels: int = 3,
                      made_from: dict | None = None) -> Path:
    """Write ``source`` as a uint8 cache at ``path`` (a ``.npy``); returns the path.

    Args:
        source: an :class:`ImageDataset` (any loader's: ``load_cifar10``, ``load_mnist``, ...) or a
            folder of images (one sub-folder per class, or flat), read one file at a time.
        path: the ``.npy`` to write; ``<stem>.labels.npy`` and ``<stem>.json`` go beside it. Each file
            is written atomically (the images last).
        size: ``(H, W)`` to resize folder images to (required when they differ in size).
        channels: 1 or 3, for folder images.
        made_from: what to record in the ``.json`` as ``made_from`` (e.g. the dataset's name and root),
            which :func:`cached_dataset` compares before reusing a cache.
    """
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"a uint8 cache is a .npy file, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, ImageDataset):
        n, (c, h, w) = len(source), source.shape
        rows = (source.images[s:s + _CHUNK] for s in range(0, n, _CHUNK))
        labels, classes, name = source.labels, source.classes, source.name
        mean, std = source.mean, source.std
    else:
        files, labels, classes = _folder(Path(source))
        first = read_image(files[0], channels, size)
        n, (c, h, w) = len(files), first.shape
        rows = _folder_rows(files, channels, size, first.shape)
        (mean, std), name = default_stats(c), "folder"
    if labels is not None:
        atomic_save_npy(path.with_name(f"{path.stem}.labels.npy"), np.asarray(labels, dtype=np.int64))
    else:
        path.with_name(f"{path.stem}.labels.npy").unlink(missing_ok=True)
    side = {"name": name, "mean": list(mean), "std": list(std), "classes": classes, "num_images": n,
            "layout": "nhwc", "made_from": made_from}
    atomic_write_text(path.with_name(f"{path.stem}.json"), json.dumps(side, indent=2) + "\n")
    with atomic_open(path) as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (n, h, w, c)})
        written = 0
        for chunk in rows:  # (m, C, H, W) uint8 -> channels last
            fh.write(memoryview(np.ascontiguousarray(np.asarray(chunk).transpose(0, 2, 3, 1))).cast("B"))
            written += len(chunk)
        if written != n:
            raise RuntimeError(f"wrote {written} of {n} images to {path}")
    return path


def cached_dataset(name: str, root, cache: str | os.PathLike, split: str = "train", **kw) -> ImageDataset:
    """``load_dataset(name, root, split)`` through a uint8 cache: read ``cache`` (memory-mapped) when
    it was made from the same dataset, root and split, else load the dataset once and write it there."""
    cache = Path(cache)
    made_from = {"dataset": name, "root": None if root is None else str(Path(root).expanduser().resolve()),
                 "split": split}
    side = cache.with_name(f"{cache.stem}.json")
    if cache.is_file() and side.is_file():
        try:
            if json.loads(side.read_text()).get("made_from") == made_from:
                return load_arrays(cache)
        except (OSError, ValueError):
            pass
    write_uint8_cache(load_dataset(name, root=root, split=split, **kw), cache, made_from=made_from)
    return load_arrays(cache)


def _folder(root: Path):
    """Files, labels (by class sub-folder, or None for a flat folder) and class names of an image folder."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and list_image_files(d))
    if not class_dirs:
        files = list_image_files(root, recursive=False)
        if not files:
            raise ValueError(f"no images in {root}")
        return files, None, None
    files, labels = [], []
    for label, d in enumerate(class_dirs):
        found = list_image_files(d)
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs]


def _folder_rows(files, channels: int, size, shape):
    """Chunks ``(m, C, H, W)`` of the folder's images, read one file at a time."""
    for s in range(0, len(files), _CHUNK):
        part = files[s:s + _CHUNK]
        chunk = np.empty((len(part), *shape), np.uint8)
        for i, f in enumerate(part):
            x = read_image(f, channels, size)
            if x.shape != shape:
                raise ValueError(f"{f} is {x.shape[2]}x{x.shape[1]} (WxH) but {files[0]} is {shape[2]}x{shape[1]}; "
                                 "pass size=(H, W) to resize every image")
            chunk[i] = x
        yield chunk
