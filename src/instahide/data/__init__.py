"""Datasets: loaders for the standard formats, built-in data, public pools and explicit downloads.

Every loader returns an :class:`ImageDataset` (uint8 ``(N, C, H, W)`` images, int64 labels or
``None``, and the dataset's normalisation constants). The core needs only numpy and torch; image
files, the built-in data and the SIFT filter need ``pip install "instahide[data]"``.

Example: ``from instahide.data import load_dataset; ds = load_dataset("digits")``
"""
from __future__ import annotations

from ._safe_pickle import UntrustedPickleError, safe_load_pickle
from .arrays import convert_channels, load_arrays, open_npy, to_nchw_uint8
from .cache import cached_dataset, write_uint8_cache
from .builtin import BUILTIN_PHOTOGRAPHS, DIGITS_MEAN, DIGITS_STD, builtin_photographs, load_digits
from .cifar import load_cifar10, load_cifar100
from .dataset import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    ImageDataset,
    denormalize_images,
    normalize_images,
)
from .downloads import (
    ChecksumError,
    DownloadError,
    download,
    download_cifar10,
    download_cifar100,
    download_fashion_mnist,
    download_mnist,
)
from .flatness import dog_keypoint_count, fast_keep
from .folders import list_image_files, load_image_folder, read_image
from .mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_mnist
from .pool import build_pool, load_pool
from .public import load_public_pool, random_patches, sift_keypoint_count
from .registry import DATASETS, load_dataset

__all__ = [
    "ImageDataset", "normalize_images", "denormalize_images",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD",
    "MNIST_MEAN", "MNIST_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "DIGITS_MEAN", "DIGITS_STD",
    "load_dataset", "DATASETS",
    "load_cifar10", "load_cifar100", "load_mnist", "load_image_folder", "load_arrays",
    "load_digits", "builtin_photographs", "BUILTIN_PHOTOGRAPHS", "write_uint8_cache", "cached_dataset",
    "load_public_pool", "random_patches", "sift_keypoint_count",
    "build_pool", "load_pool", "dog_keypoint_count", "fast_keep",
    "list_image_files", "read_image", "to_nchw_uint8", "convert_channels", "open_npy",
    "safe_load_pickle", "UntrustedPickleError",
    "download", "download_cifar10", "download_cifar100", "download_mnist", "download_fashion_mnist",
    "DownloadError", "ChecksumError",
]
