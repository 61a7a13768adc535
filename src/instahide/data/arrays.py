"""Images from ``.npy`` / ``.npz`` arrays, and the array conversions shared by the other loaders."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset

__all__ = ["load_arrays", "to_nchw_uint8", "convert_channels", "default_stats"]

# One-channel counterpart of the ImageNet statistics (the mean of the three channels' values), used
# for grayscale images that come with no statistics of their own.
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)
# Class names default to "0".."max label": a larger max is refused (ImageNet-21k has 21,841 classes).
_MAX_CLASSES = 1 << 20


def default_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for 3 channels, their one-channel average for 1 channel."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD
    raise ValueError(f"no default mean/std for {channels}-channel images; pass mean= and std=")


def load_arrays(
    path: str | os.PathLike,
    images_key: str = "images",
    labels_key: str | None = "labels",
    layout: str = "auto",
    *,
    name: str | None = None,
    classes: list[str] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ImageDataset:
    """Images (and labels, if the ``.npz`` has ``labels_key``) from a ``.npy`` or ``.npz`` file.

    Images may be ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)`` (see :func:`to_nchw_uint8` for
    ``layout`` and value ranges); they come back as ``(N, C, H, W)`` uint8, N >= 1. Labels must be
    ``(N,)`` integer class indices below 2**20. Files are read with ``allow_pickle=False``: object
    arrays are refused. Mean/std default to the ImageNet values (:func:`default_stats`).

    Example: ``ds = load_arrays("pool.npz", layout="nhwc")``
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file {path} does not exist")
    labels, kind = None, ".npz archive" if path.suffix == ".npz" else ".npy file"
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            images = data
        else:
            with data:
                if images_key not in data.files:
                    found = ", ".join(data.files) or "none: an empty archive"
                    raise ValueError(f"{path} has no array {images_key!r} (arrays: {found}); pass images_key=")
                images = data[images_key]
                if labels_key is not None and labels_key in data.files:
                    labels = data[labels_key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if "Object arrays" in str(exc):
            raise ValueError(f"{path} holds pickled (object) data; refusing to load it. Save plain numeric arrays "
                             f"instead: np.savez(path, images=uint8_array, labels=int_array)") from exc
        if str(path) in str(exc):
            raise
        detail = "neither a zip archive nor a .npy header" if "allow_pickle" in str(exc) else exc
        raise ValueError(f"not a valid {kind}: {path}: truncated or corrupt array file ({detail})") from exc
    images = to_nchw_uint8(images, layout=layout, source=str(path))
    if len(images) == 0:
        raise ValueError(f"{path}: {images_key!r} holds no images (shape {images.shape})")
    if labels is not None:
        labels = np.asarray(labels)
        ok = labels.shape == (len(images),) and np.issubdtype(labels.dtype, np.integer)
        if not ok or labels.min() < 0 or labels.max() >= _MAX_CLASSES:
            got = f"{labels.min()}..{labels.max()}" if ok else f"{labels.shape} {labels.dtype}"
            raise ValueError(f"{path}: {labels_key!r} must be ({len(images)},) integers in [0, {_MAX_CLASSES}), "
                             f"got {got}")
    if mean is None or std is None:
        mean, std = default_stats(images.shape[1])
    if labels is not None and classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1)]
    meta = {"source": str(path)}
    return ImageDataset(images, labels, classes, name or path.stem, tuple(mean), tuple(std), meta=meta)


def to_nchw_uint8(images: np.ndarray, layout: str = "auto", *, source: str = "array") -> np.ndarray:
    """``images`` as a C-contiguous ``(N, C, H, W)`` uint8 array.

    Layouts: ``(N, H, W)`` is grayscale; for 4-D arrays ``layout="auto"`` takes channels-last when
    the last dimension is 1, 3 or 4 and dimension 1 is not, channels-first in the opposite case, and
    refuses to guess otherwise (pass ``"nchw"`` or ``"nhwc"``). Values: uint8 as is; bool as 0/255;
    other integers must lie in [0, 255]; floats must lie in [0, 1] (a tolerance of 1e-6 is clipped)
    and are scaled by 255 and rounded. NaN or out-of-range values, or a zero C, H or W, raise
    ``ValueError``.

    Example: ``x = to_nchw_uint8(np.random.rand(5, 32, 32, 3))  # (5, 3, 32, 32) uint8``
    """
    x = np.asarray(images)
    if layout not in ("auto", "nchw", "nhwc"):
        raise ValueError(f"layout must be 'auto', 'nchw' or 'nhwc', got {layout!r}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if layout == "auto":
            last, first = x.shape[-1] in (1, 3, 4), x.shape[1] in (1, 3, 4)
            if last == first:
                raise ValueError(
                    f"{source}: cannot tell the channel axis of shape {x.shape}; "
                    f"pass layout='nchw' or layout='nhwc'"
                )
            layout = "nhwc" if last else "nchw"
        if layout == "nhwc":
            x = x.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{source}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C); got {x.shape}")
    if 0 in x.shape[1:]:
        raise ValueError(f"{source}: images (N, C, H, W) = {x.shape} have no channels or no pixels")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype == np.bool_:  # a binary image, as Pillow reads mode "1": False -> 0, True -> 255
        return np.ascontiguousarray(x.astype(np.uint8) * 255)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{source}: integer images must lie in [0, 255], found {x.min()}..{x.max()}")
        return np.ascontiguousarray(x.astype(np.uint8))
    if np.issubdtype(x.dtype, np.floating):
        if x.size == 0:
            return np.zeros(x.shape, np.uint8)
        if np.isnan(x).any():
            raise ValueError(f"{source}: float images contain NaN")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"{source}: float images must lie in [0, 1], found {lo:.4g}..{hi:.4g} "
                f"(scale them to [0, 1] or convert to uint8 first)"
            )
        return np.ascontiguousarray(np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8))
    raise ValueError(f"{source}: unsupported image dtype {x.dtype}")


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """``(N, C, H, W)`` or ``(C, H, W)`` uint8 images converted to ``channels`` (1 or 3).

    RGB to gray is Pillow's ITU-R 601-2 luminance ``L = 0.299 R + 0.587 G + 0.114 B`` in Pillow's
    exact fixed-point arithmetic (so it equals ``Image.convert("L")``);
    gray to RGB replicates the plane; RGBA drops alpha.

    Example: ``gray = convert_channels(rgb_batch, 1)``
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if getattr(images, "dtype", None) != np.uint8 or images.ndim not in (3, 4):
        raise TypeError(f"images must be (N, C, H, W) or (C, H, W) uint8, got "
                        f"{getattr(images, 'shape', type(images).__name__)} {getattr(images, 'dtype', '')}")
    axis = images.ndim - 3
    c = images.shape[axis]
    if c == 4:
        images, c = np.take(images, [0, 1, 2], axis=axis), 3
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return np.ascontiguousarray(np.repeat(images, 3, axis=axis))
    if c == 3 and channels == 1:
        r, g, b = (np.take(images, [i], axis=axis).astype(np.uint32) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
