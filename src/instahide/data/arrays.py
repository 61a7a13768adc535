"""Images from ``.npy`` / ``.npz`` arrays, and the array conversions shared by the other loaders."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset

__all__ = ["load_arrays", "open_npy", "nchw_view", "to_nchw_uint8", "convert_channels", "default_stats",
           "MAX_CONVERTED_BYTES"]

# One-channel counterpart of the ImageNet statistics (the mean of the three channels' values), used
# for grayscale images that come with no statistics of their own.
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)
# Class names default to "0".."max label": a larger max is refused (ImageNet-21k has 21,841 classes).
_MAX_CLASSES = 1 << 20
# A non-uint8 array file is loaded whole and converted to uint8: above this many bytes it is refused (a
# uint8 .npy of any size is memory-mapped instead).
MAX_CONVERTED_BYTES = 2 << 30


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

    A uint8 ``.npy`` file is memory-mapped, read-only, never copied: ``images`` is then a view of the
    map (a channels-last file gives a transposed, non-contiguous ``(N, C, H, W)`` view), and pages
    are read from disk only when rows are used, so the file may be far larger than memory. Such a
    file may come with ``<stem>.labels.npy`` (``(N,)`` integers) and ``<stem>.json`` (``mean``,
    ``std``, ``classes``) beside it, as :func:`instahide.data.write_uint8_cache` writes them. Other
    dtypes are loaded whole and converted (refused above :data:`MAX_CONVERTED_BYTES`); a header that
    promises more bytes than the file holds is refused as truncated.

    Example: ``ds = load_arrays("pool.npz", layout="nhwc")``
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file {path} does not exist")
    labels, kind = None, ".npz archive" if path.suffix == ".npz" else ".npy file"
    side = {}
    try:
        if path.suffix != ".npz" and _is_npy(path):
            images = open_npy(path)
            side = _sidecar(path)
            if labels_key is not None and path.with_name(f"{path.stem}.{labels_key}.npy").is_file():
                labels = np.load(path.with_name(f"{path.stem}.{labels_key}.npy"), allow_pickle=False)
        else:
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
        if "Object arrays" in str(exc) or isinstance(exc, _ObjectArrayError):
            raise ValueError(f"{path} holds pickled (object) data; refusing to load it. Save plain numeric arrays "
                             f"instead: np.savez(path, images=uint8_array, labels=int_array)") from exc
        if str(path) in str(exc):
            raise
        detail = "neither a zip archive nor a .npy header" if "allow_pickle" in str(exc) else exc
        raise ValueError(f"not a valid {kind}: {path}: truncated or corrupt array file ({detail})") from exc
    if images.dtype == np.uint8:
        images = nchw_view(images, layout=layout, source=str(path))  # no copy: a view of the map
    else:
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
        mean, std = (side["mean"], side["std"]) if "mean" in side and "std" in side else default_stats(images.shape[1])
    if labels is not None and classes is None:
        classes = side.get("classes") or [str(c) for c in range(int(labels.max()) + 1)]
    meta = {"source": str(path), **({"memory_mapped": True} if isinstance(images, np.memmap) else {})}
    return ImageDataset(images, labels, classes, name or side.get("name") or path.stem, tuple(mean), tuple(std),
                        meta=meta)


class _ObjectArrayError(ValueError):
    """A .npy header with an object dtype (pickled data)."""


def _is_npy(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(6) == b"\x93NUMPY"


def open_npy(path: str | os.PathLike) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped read-only when it is uint8 (loaded otherwise, up to
    :data:`MAX_CONVERTED_BYTES`), after checking its header against the file: an object dtype, a
    Fortran-order array or a file shorter than its header promises is a ``ValueError`` naming it."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                shape, fortran, dtype = np.lib.format._read_array_header(fh, version)
        except (ValueError, SyntaxError, EOFError) as exc:
            raise ValueError(f"not a valid .npy file: {path}: truncated or corrupt array file (bad header: {exc})") from exc
        offset = fh.tell()
    if dtype.hasobject:
        raise _ObjectArrayError(f"{path} holds pickled (object) data")
    count = int(np.prod(shape, dtype=np.int64))
    need, size = offset + count * dtype.itemsize, path.stat().st_size
    if size < need:
        raise ValueError(f"not a valid .npy file: {path}: truncated or corrupt array file (its header says "
                         f"{dtype} {tuple(shape)}, {need:,} bytes, but the file holds {size:,})")
    if dtype == np.uint8 and not fortran:
        if count == 0:
            return np.zeros(shape, np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=tuple(shape))
    if count * max(dtype.itemsize, 1) > MAX_CONVERTED_BYTES:
        raise ValueError(f"{path} holds {dtype} images {tuple(shape)} ({count * dtype.itemsize / 1e9:.1f} GB): only "
                         f"uint8 .npy files are memory-mapped, other dtypes are loaded whole and converted, up to "
                         f"{MAX_CONVERTED_BYTES / 1e9:.0f} GB; convert it to uint8 once "
                         f"(instahide.data.write_uint8_cache)")
    return np.load(path, allow_pickle=False)


def _sidecar(path: Path) -> dict:
    """The known entries (name, mean, std, classes) of ``<stem>.json`` beside an array file, if any."""
    side = path.with_name(f"{path.stem}.json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{side}: unreadable sidecar of {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        return {}
    out = {}
    for key in ("mean", "std"):
        if isinstance(data.get(key), list) and all(isinstance(v, (int, float)) for v in data[key]):
            out[key] = tuple(float(v) for v in data[key])
    if isinstance(data.get("classes"), list) and all(isinstance(c, str) for c in data["classes"]):
        out["classes"] = list(data["classes"])
    if isinstance(data.get("name"), str):
        out["name"] = data["name"]
    return out


def nchw_view(images: np.ndarray, layout: str = "auto", *, source: str = "array") -> np.ndarray:
    """``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` images as an ``(N, C, H, W)`` VIEW (no copy;
    a channels-last array gives a transposed, non-contiguous view). Layout rules as
    :func:`to_nchw_uint8`."""
    x = images
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
    return x


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
    x = nchw_view(np.asarray(images), layout, source=source)
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
