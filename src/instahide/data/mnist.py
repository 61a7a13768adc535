"""MNIST and Fashion-MNIST from the four standard idx files (gzipped or not).

The idx format: a big-endian header ``0x00 0x00 <type> <ndim>`` (type 0x08 = uint8), then ``ndim``
big-endian uint32 sizes, then the raw bytes. Images are magic 0x00000803 ``(N, 28, 28)``, labels
0x00000801 ``(N,)``. Every size in the header is checked against the bytes actually present, and
every error names the file.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .dataset import MNIST_MEAN, MNIST_STD, ImageDataset

__all__ = ["load_mnist", "read_idx", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD"]

# Per-channel statistics of the Fashion-MNIST training images scaled to [0, 1] (commonly quoted).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}
_MAX_BYTES = 1 << 34  # what read_idx accepts (MNIST's training images are 47 MB)
_STATS = {"mnist": (MNIST_MEAN, MNIST_STD), "fashion-mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD)}


def load_mnist(root: str | os.PathLike, split: str = "train", name: str = "mnist") -> ImageDataset:
    """MNIST (or Fashion-MNIST with ``name="fashion-mnist"``) as ``(N, 1, 28, 28)`` uint8.

    The idx files are looked for in ``root/<name>/``, ``root/`` and ``root/MNIST/raw/`` (torchvision's
    layout), each as ``<file>`` or ``<file>.gz``; the first folder holding the image file wins.

    Example: ``ds = load_mnist("data/mnist")  # 60,000 images, ds.labels[0] == 5``
    """
    if name not in _CLASSES:
        raise ValueError(f"name must be one of {sorted(_CLASSES)}, got {name!r}")
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} root {root} is not a folder")
    image_file, label_file = _FILES[split]
    folders = [root / name, root, root / "MNIST" / "raw"]
    folder = next((d for d in folders if _find(d, image_file)), None)
    if folder is None:
        raise FileNotFoundError(f"no {image_file}[.gz] in {root} (also looked in {root / name}); pass the folder "
                                f"that holds the idx files, or pass download=True to fetch them")
    image_path, label_path = _find(folder, image_file), _find(folder, label_file)
    if label_path is None:
        raise FileNotFoundError(f"{folder / label_file}[.gz] is missing (next to {image_path.name})")
    images, labels = read_idx(image_path, ndim=3), read_idx(label_path, ndim=1)
    if len(images) != len(labels):
        raise ValueError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    if not len(labels):
        raise ValueError(f"{image_path} holds no images")
    if labels.max() > 9:
        raise ValueError(f"{label_path}: labels must be in [0, 10), found maximum {labels.max()}")
    mean, std = _STATS[name]
    return ImageDataset(
        np.ascontiguousarray(images[:, None]), labels.astype(np.int64), list(_CLASSES[name]),
        name, mean, std, meta={"source": str(folder), "split": split},
    )


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """A uint8 idx file (``.gz`` or raw) as an array of the shape its header gives.

    A ``.gz`` file is decompressed only as far as its header says, so no gzip bomb fills memory.

    Example: ``labels = read_idx("t10k-labels-idx1-ubyte.gz", ndim=1)  # shape (10000,)``
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file {path} does not exist")
    try:  # the ValueErrors below pass through; only read errors are caught
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(f"{path}: {len(head)} bytes, too short for an idx header")
            zero, dtype_code, dims = struct.unpack(">HBB", head)
            magic = (dtype_code << 8) | dims
            if zero != 0 or dtype_code != 0x08:
                raise ValueError(f"{path}: not a uint8 idx file (magic number 0x{zero << 16 | magic:08x})")
            if ndim is not None and dims != ndim:
                raise ValueError(f"{path}: magic number 0x{magic:08x} means {dims} dimensions, expected "
                                 f"0x{0x800 | ndim:08x} ({ndim} dimensions)")
            sizes = f.read(4 * dims)
            if len(sizes) < 4 * dims:
                raise ValueError(f"{path}: truncated idx header ({4 + len(sizes)} of {4 + 4 * dims} bytes)")
            shape = struct.unpack(f">{dims}I", sizes)
            expected = math.prod(shape)  # exact: the sizes can multiply past any fixed-width integer
            if expected > _MAX_BYTES:
                raise ValueError(f"{path}: header says shape {shape} = {expected} bytes, more than 16 GiB")
            data = bytearray()  # in chunks: never more than the header says (and one byte to spot extra)
            while len(data) <= expected and (chunk := f.read(min(1 << 24, expected + 1 - len(data)))):
                data += chunk
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: truncated or corrupt gzip file ({exc})") from exc
    if len(data) != expected:
        what, found = ("truncated", len(data)) if len(data) < expected else ("trailing bytes in", "more")
        raise ValueError(f"{path}: {what} idx file: header says shape {shape} = {expected} bytes of data, "
                         f"found {found} bytes")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None
