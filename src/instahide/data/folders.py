"""Images from a folder of files (needs Pillow: ``pip install "instahide[data]"``).

Two layouts: one sub-folder per class (``root/cat/*.png``, ``root/dog/*.png``; classes are the
sub-folder names, sorted) or a flat folder of images (unlabelled).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .arrays import default_stats, to_nchw_uint8
from .dataset import ImageDataset

__all__ = ["load_image_folder", "list_image_files", "read_image", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - exercised only without Pillow
        raise ImportError(
            'reading image files needs Pillow: pip install "instahide[data]"'
        ) from exc
    return Image


def list_image_files(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (by extension, case-insensitive; hidden entries skipped), sorted.

    Example: ``files = list_image_files("imagenet-sample")``
    """
    root = Path(root)
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = [
        p for p in pattern
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files)


def read_image(path: str | os.PathLike, channels: int = 3, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as a ``(C, H, W)`` uint8 array, ``C = channels`` (1 = luminance, 3 = RGB).

    Palette images are expanded and alpha is dropped (as :func:`convert_channels` does). 16-bit
    images (and Pillow's 32-bit integer mode "I", taken as 16-bit) keep their high byte, ``v >> 8``
    as scikit-image's ``img_as_ubyte``; float images (mode "F") must lie in [0, 1], as for
    :func:`to_nchw_uint8`. ``size=(H, W)`` resizes with Pillow's antialiased bilinear filter. A
    file Pillow cannot decode raises ``ValueError`` naming it.

    Example: ``x = read_image("cat.jpg", size=(32, 32))  # (3, 32, 32)``
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size is not None and (np.shape(size) != (2,) or np.asarray(size).dtype.kind not in "iu" or min(size) < 1):
        raise ValueError(f"size must be (H, W) with positive integers, got {size!r}")
    Image = _pil()
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):  # convert("L") would clip them
                x = np.asarray(img)
                if x.dtype.kind == "i" and (x.min() < 0 or x.max() > 65535):
                    raise ValueError(f"{x.dtype} pixel values {x.min()}..{x.max()} are outside the 16-bit range")
                x = to_nchw_uint8(x[None], source="mode F")[0, 0] if x.dtype.kind == "f" else x >> 8
                img = Image.fromarray(x.astype(np.uint8))
            img = img.convert("RGB" if channels == 3 else "L")
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated), SyntaxError, ...
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    if size is not None:
        h, w = size
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None])


def load_image_folder(
    root: str | os.PathLike,
    size: tuple[int, int] | None = None,
    channels: int = 3,
    *,
    name: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ImageDataset:
    """A folder of images as ``(N, C, H, W)`` uint8, labelled by sub-folder or unlabelled if flat.

    With sub-folders, every image must sit in one (searched recursively); loose images next to
    class folders are an error. Without ``size=(H, W)`` all images must share one size. Mean/std
    default to the ImageNet values (their one-channel average for ``channels=1``). The dataset's
    ``name`` is ``"folder"`` unless given: a folder's name can be private (a patient's), and the
    name goes into reports; ``meta["source"]`` keeps the path, on this machine only. The class names
    (sub-folder names) are as private: what is handed out (``instahide encrypt``, ``challenge
    make``) holds opaque ids instead unless asked (``--publish-class-names``).

    Example: ``ds = load_image_folder("my_photos", size=(32, 32))``
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    class_dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and list_image_files(d)
    )
    if class_dirs:
        loose = list_image_files(root, recursive=False)
        if loose:
            raise ValueError(f"{root} mixes class sub-folders ({', '.join(d.name for d in class_dirs[:3])}, ...) "
                             f"with loose images ({loose[0].name}); put every image in a class folder")
        classes = [d.name for d in class_dirs]
        files, labels = [], []
        for label, d in enumerate(class_dirs):
            found = list_image_files(d)
            files += found
            labels += [label] * len(found)
        label_array: np.ndarray | None = np.asarray(labels, dtype=np.int64)
    else:
        files, classes, label_array = list_image_files(root, recursive=False), None, None
    if not files:
        raise ValueError(f"no images in {root} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    first = read_image(files[0], channels, size)
    images = np.empty((len(files),) + first.shape, dtype=np.uint8)
    images[0] = first
    for i, path in enumerate(files[1:], start=1):
        x = read_image(path, channels, size)
        if x.shape != first.shape:
            raise ValueError(f"{path} is {x.shape[2]}x{x.shape[1]} (WxH) but {files[0]} is "
                             f"{first.shape[2]}x{first.shape[1]}; pass size=(H, W) to resize every image")
        images[i] = x
    if mean is None or std is None:
        mean, std = default_stats(channels)
    return ImageDataset(
        images, label_array, classes, name or "folder", tuple(mean), tuple(std),
        meta={"source": str(root), "files": [str(f.relative_to(root)) for f in files]},
    )
