"""One entry point for every dataset: ``load_dataset(name, root, split)``."""
from __future__ import annotations

import os
from pathlib import Path

from . import downloads  # looked up at call time so a redirected downloads.download_* is used
from .arrays import load_arrays
from .builtin import load_digits
from .cifar import load_cifar10, load_cifar100
from .dataset import ImageDataset
from .folders import load_image_folder
from .mnist import load_mnist

__all__ = ["load_dataset", "DATASETS", "default_data_root"]

# name -> one-line description (printed by the command line).
DATASETS: dict[str, str] = {
    "digits": "scikit-learn's 1,797 handwritten 8x8 digits, 10 classes; ships with scikit-learn (default, no root)",
    "cifar10": "CIFAR-10, 50,000 + 10,000 32x32 colour images, 10 classes (python-version files or .tar.gz)",
    "cifar100": "CIFAR-100, 50,000 + 10,000 32x32 colour images, 100 fine / 20 coarse classes",
    "mnist": "MNIST, 60,000 + 10,000 28x28 handwritten digits (the four idx files, .gz or raw)",
    "fashion-mnist": "Fashion-MNIST, 60,000 + 10,000 28x28 clothing images (idx files like MNIST)",
    "folder": "a folder of images: one sub-folder per class, or flat (unlabelled); root/<split>/ if present",
    "arrays": "a .npy/.npz file with 'images' (and 'labels'); a folder root means root/<split>.npz",
}

_NEEDS_DOWNLOAD = ("cifar10", "cifar100", "mnist", "fashion-mnist")


def default_data_root() -> Path:
    """Where ``download=True`` puts files when no root is given: ``$INSTAHIDE_DATA`` or
    ``~/.cache/instahide/data``."""
    return Path(os.environ.get("INSTAHIDE_DATA", Path.home() / ".cache" / "instahide" / "data"))


def load_dataset(
    name: str = "digits",
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = False,
    **kw,
) -> ImageDataset:
    """Load dataset ``name`` (see :data:`DATASETS`) from ``root``; extra keywords go to the loader.

    ``download=True`` fetches the official files first when they are not already under ``root``
    (default root: :func:`default_data_root`); without it nothing is ever downloaded.

    Example: ``ds = load_dataset("cifar10", root="data", split="test")``
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits(split, **kw)
    if root is None:
        if not (download and name in _NEEDS_DOWNLOAD):
            hint = " or download=True" if name in _NEEDS_DOWNLOAD else ""
            raise ValueError(f"dataset {name!r} needs a root: pass root={hint}")
        root = default_data_root()
    root = Path(root).expanduser()
    if name in ("folder", "arrays"):
        return _load_local(name, root, split, **kw)
    loader, fetch = _loader(name)
    try:
        return loader(root, split, **kw)
    except FileNotFoundError:
        if not download:
            raise
    fetch(root)
    return loader(root, split, **kw)


def _loader(name: str):
    if name == "cifar10":
        return load_cifar10, downloads.download_cifar10
    if name == "cifar100":
        return load_cifar100, downloads.download_cifar100
    if name == "mnist":
        return (lambda r, s, **kw: load_mnist(r, s, name="mnist", **kw)), downloads.download_mnist
    return (lambda r, s, **kw: load_mnist(r, s, name="fashion-mnist", **kw)), downloads.download_fashion_mnist


def _load_local(name: str, root: Path, split: str, **kw) -> ImageDataset:
    if name == "folder":
        folder = root / split if (root / split).is_dir() else root
        return load_image_folder(folder, **kw)
    if root.is_dir():
        candidates = [root / f"{split}.npz", root / f"{split}.npy"]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"no {split}.npz or {split}.npy in {root}")
        return load_arrays(path, **kw)
    return load_arrays(root, **kw)
