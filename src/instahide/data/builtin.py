"""Real data that ships inside the optional dependencies, so nothing has to be downloaded.

* :func:`load_digits`: scikit-learn's handwritten digits (1,797 real 8x8 scans, UCI "optdigits").
* :func:`builtin_photographs`: the natural photographs bundled with scikit-image and scikit-learn,
  raw material for a public pool (:func:`instahide.data.load_public_pool`).

Both need the ``data`` extra: ``pip install "instahide[data]"``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .dataset import ImageDataset
from .folders import read_image

__all__ = ["load_digits", "builtin_photographs", "BUILTIN_PHOTOGRAPHS", "DIGITS_MEAN", "DIGITS_STD"]

# Mean and std of the pixels of the default TRAIN split (test_fraction=0.2, seed=0: 1,438 images)
# after the uint8 conversion below, scaled to [0, 1]:
#   x = load_digits("train").images / 255;  x.mean(), x.std()
# (tests/data/test_builtin_public.py recomputes them).
DIGITS_MEAN = (0.3052,)
DIGITS_STD = (0.3761,)

# Natural photographs only, as (package, path inside the package). Left out on purpose: synthetic or
# rendered images (logo, chessboards, color, phantom, clock_motion's simulated blur), documents
# (page, text), silhouettes (horse), microscopy and medical images (cell, ihc, retina,
# microaneurysms) and tiny files (multipage.tif, the gif). brick, grass and gravel are photographs of
# textures; motorcycle_left/right are a stereo pair (two viewpoints of one scene).
BUILTIN_PHOTOGRAPHS: tuple[tuple[str, str], ...] = (
    ("skimage", "data/astronaut.png"),          # RGB 512x512, portrait
    ("skimage", "data/chelsea.png"),            # RGB 451x300, cat
    ("skimage", "data/coffee.png"),             # RGB 600x400, cup of coffee
    ("skimage", "data/rocket.jpg"),             # RGB 640x427, rocket on the launch pad
    ("skimage", "data/motorcycle_left.png"),    # RGB 741x500
    ("skimage", "data/motorcycle_right.png"),   # RGB 741x500
    ("skimage", "data/hubble_deep_field.jpg"),  # RGB 1000x872, galaxies (mostly dark sky)
    ("skimage", "data/camera.png"),             # gray 512x512, cameraman
    ("skimage", "data/coins.png"),              # gray 384x303
    ("skimage", "data/moon.png"),               # gray 512x512, lunar surface
    ("skimage", "data/brick.png"),              # gray 512x512, brick wall
    ("skimage", "data/grass.png"),              # gray 512x512
    ("skimage", "data/gravel.png"),             # gray 512x512
    ("sklearn", "datasets/images/china.jpg"),   # RGB 640x427, temple
    ("sklearn", "datasets/images/flower.jpg"),  # RGB 640x427
)

_EXTRA_HINT = 'pip install "instahide[data]"'


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits as ``(N, 1, 8, 8)`` uint8, classes ``"0"``..``"9"``.

    Values 0..16 are mapped to 0..255 as ``round(x * 255 / 16)``. The split is stratified and fixed:
    within each class, images are ordered by a 64-bit hash (splitmix64) of ``(seed, index)`` and the
    first ``round(n_class * test_fraction)`` go to "test". It depends on nothing but the arguments (no
    random generator), so it is the same on every machine and version. ``split="all"`` gives all 1,797.
    With the defaults: 1,438 train and 359 test images.

    Example: ``ds = load_digits("test")  # ds.images.shape == (359, 1, 8, 8)``
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise ImportError(f"the digits dataset ships with scikit-learn: {_EXTRA_HINT}") from exc
    bunch = sk_load_digits()
    x = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    if split != "all":
        test = _stratified_test_mask(y, test_fraction, seed)
        keep = test if split == "test" else ~test
        x, y = x[keep], y[keep]
    return ImageDataset(
        np.ascontiguousarray(x), y, [str(d) for d in range(10)], "digits", DIGITS_MEAN, DIGITS_STD,
        meta={"source": "sklearn.datasets.load_digits", "split": split,
              "test_fraction": test_fraction, "seed": seed},
    )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _stratified_test_mask(y: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    mask = np.zeros(len(y), dtype=bool)
    base = np.uint64(seed & 0xFFFFFFFF) << np.uint64(32)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        order = idx[np.argsort(_splitmix64(base | idx.astype(np.uint64)), kind="stable")]
        mask[order[: int(round(len(idx) * test_fraction))]] = True
    return mask


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules[package] is None
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def builtin_photograph_paths() -> list[Path]:
    """The files of :data:`BUILTIN_PHOTOGRAPHS` present in the installed scikit-image/scikit-learn.

    Found from the packages' install folders without importing them (no data fetcher runs, nothing
    is downloaded). Files a given version does not bundle are skipped.
    """
    paths = []
    for package, rel in BUILTIN_PHOTOGRAPHS:
        base = _package_dir(package)
        if base is not None and (base / rel).is_file():
            paths.append(base / rel)
    if not paths:
        raise ImportError(
            f"the built-in photographs ship with scikit-image and scikit-learn, neither of which is "
            f"installed: {_EXTRA_HINT}"
        )
    return paths


def builtin_photographs(channels: int = 3) -> list[np.ndarray]:
    """The bundled natural photographs as full-size ``(C, H, W)`` uint8 arrays (15 with current
    versions), converted to ``channels``: 1 = luminance, 3 = RGB (gray photos replicated).

    Example: ``photos = builtin_photographs()  # photos[0].shape == (3, 512, 512)``
    """
    return [read_image(path, channels=channels) for path in builtin_photograph_paths()]
