"""CIFAR-10 and CIFAR-100 from the official "python version" files.

``root`` may be the extracted folder (``cifar-10-batches-py/`` or ``cifar-100-python/``), the folder
that holds it, or the ``.tar.gz`` archive itself (members are read straight from the archive; nothing
is extracted to disk). A folder holding only the archive works too (what :func:`download_cifar10`
leaves). Pickles are read with :func:`safe_load_pickle`, which refuses anything but numpy arrays.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ._safe_pickle import safe_load_pickle
from .dataset import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, ImageDataset

__all__ = ["load_cifar10", "load_cifar100"]

# name -> (folder inside the archive, archive file name, train files, test files, meta file)
_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
    ),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], "meta"),
}


def load_cifar10(root: str | os.PathLike, split: str = "train") -> ImageDataset:
    """CIFAR-10 ``split`` ("train": 50,000 images, "test": 10,000) as ``(N, 3, 32, 32)`` uint8.

    Example: ``ds = load_cifar10("data/cifar-10-batches-py")  # ds.images.shape == (50000, 3, 32, 32)``
    """
    files, meta, source = _read_files("cifar10", root, split)
    names = _names(meta, "label_names", source)
    images, labels = _stack(files, "labels", len(names))
    return ImageDataset(
        images, labels, names, "cifar10", CIFAR10_MEAN, CIFAR10_STD,
        meta={"source": source, "split": split},
    )


def load_cifar100(
    root: str | os.PathLike, split: str = "train", label_mode: str = "fine"
) -> ImageDataset:
    """CIFAR-100 ``split`` as ``(N, 3, 32, 32)`` uint8 with 100 "fine" or 20 "coarse" labels.

    Example: ``ds = load_cifar100("data", split="test", label_mode="coarse")``
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    files, meta, source = _read_files("cifar100", root, split)
    names = _names(meta, f"{label_mode}_label_names", source)
    images, labels = _stack(files, f"{label_mode}_labels", len(names))
    return ImageDataset(
        images, labels, names, "cifar100" if label_mode == "fine" else "cifar100-coarse",
        CIFAR100_MEAN, CIFAR100_STD,
        meta={"source": source, "split": split, "label_mode": label_mode},
    )


def _read_files(kind: str, root, split: str) -> tuple[list[tuple[str, dict]], dict, str]:
    """[(file name, unpickled dict)] for ``split``, the meta dict, and a description of the source."""
    folder, archive, train, test, meta_name = _LAYOUT[kind]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    wanted = (train if split == "train" else test) + [meta_name]
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{kind} root {root} does not exist")
    if root.is_file():
        loaded, source = _read_archive(root, folder, wanted), str(root)
    else:
        found = (d for d in (root / folder, root) if d.is_dir() and any((d / w).exists() for w in wanted))
        directory = next(found, None)
        if directory is None and (root / archive).is_file():
            loaded, source = _read_archive(root / archive, folder, wanted), str(root / archive)
        elif directory is None:
            raise FileNotFoundError(f"no {kind} files in {root}: expected {folder}/{wanted[0]} (or {archive}); "
                                    f"pass the folder that holds {folder}/, or pass download=True "
                                    f"to fetch it")
        else:
            loaded, source = {}, str(directory)
            for w in wanted:
                path = directory / w
                if not path.is_file():
                    raise FileNotFoundError(f"{kind} file {path} is missing")
                loaded[w] = safe_load_pickle(path)
    sep = ":" + folder + "/" if root.is_file() or source.endswith(archive) else "/"
    for w, obj in loaded.items():
        if not isinstance(obj, dict):
            raise ValueError(f"{source}{sep}{w} holds a {type(obj).__name__}, expected a dict")
    return [(source + sep + w, loaded[w]) for w in wanted[:-1]], loaded[meta_name], source


def _read_archive(path: Path, folder: str, wanted: list[str]) -> dict[str, Any]:
    """Unpickle the ``wanted`` members of a CIFAR ``.tar.gz`` in one sequential pass."""
    found: dict[str, Any] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                parent = member.name.rsplit("/", 1)[0] if "/" in member.name else ""
                if base in wanted and base not in found and member.isfile() and parent.endswith(folder):
                    found[base] = safe_load_pickle(tar.extractfile(member), name=f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: truncated or corrupt archive ({type(exc).__name__}: {exc})") from exc
    missing = [w for w in wanted if w not in found]
    if missing:
        raise FileNotFoundError(f"{path} has no member {folder}/{missing[0]}")
    return found


def _names(meta: dict, key: str, source: str) -> list[str]:
    if key not in meta:
        keys = ", ".join(sorted(map(repr, meta))) or "none"
        raise ValueError(f"{source}: the meta file has no {key!r} entry (keys: {keys})")
    if not isinstance(meta[key], (list, tuple)) or not meta[key]:
        raise ValueError(f"{source}: the meta file's {key!r} must be a non-empty list, got {meta[key]!r:.60}")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[key]]


def _stack(files: list[tuple[str, dict]], label_key: str, num_classes: int):
    images, labels = [], []
    for name, batch in files:
        data, lab = batch.get("data"), batch.get(label_key)
        if data is None or lab is None:
            keys = ", ".join(sorted(map(repr, batch))) or "none"
            raise ValueError(f"{name}: expected keys 'data' and {label_key!r}, found {keys}")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,) or not len(data):
            raise ValueError(
                f"{name}: 'data' must be a (N, 3072) uint8 array, N >= 1, got "
                f"{getattr(data, 'shape', type(data).__name__)} {getattr(data, 'dtype', '')}"
            )
        try:
            lab = np.asarray(lab)
        except ValueError:  # ragged lists
            lab = np.asarray(lab, dtype=object)
        if lab.shape != (len(data),) or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"{name}: {len(data)} images but {label_key} of shape {lab.shape} ({lab.dtype})")
        if lab.min() < 0 or lab.max() >= num_classes:
            raise ValueError(f"{name}: labels must be in [0, {num_classes}), found {lab.min()}..{lab.max()}")
        images.append(data)
        labels.append(lab.astype(np.int64))
    x = np.concatenate(images) if len(images) > 1 else images[0]
    return np.ascontiguousarray(x.reshape(-1, 3, 32, 32)), np.concatenate(labels)
