"""Pixel scaling of ``(N, C, H, W)`` images: uint8 to the float units the scheme and the challenge work
in (``pm1`` [-1, 1], ``normalize`` per-channel mean/std, ``unit`` [0, 1]), back to [0, 1] for display,
and the SSIM data range of each."""
from __future__ import annotations

import numpy as np
import torch

from .dataset import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["SCALINGS", "scale_images", "to_unit_range", "private_stats", "scaling_data_range"]

SCALINGS = ("pm1", "normalize", "unit")


def private_stats(channels: int, mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The private set's per-channel ``(mean, std)`` for ``scaling="normalize"``: the given ones,
    checked, or CIFAR-10's when both are None (3 channels only)."""
    if mean is None and std is None:
        if channels != 3:
            raise ValueError(f"scaling 'normalize' of {channels}-channel images needs the private set's "
                             "mean= and std= (the default is CIFAR-10's, for 3 channels)")
        return CIFAR10_MEAN, CIFAR10_STD
    if mean is None or std is None:
        raise ValueError("give both mean= and std= (or neither)")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"mean/std must have {channels} entries (std > 0), got {mean} / {std}")
    return mean, std


def scale_images(images: torch.Tensor, scaling: str, mean=None, std=None) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> float32 in the pixel units ``scaling`` (``normalize`` needs
    ``mean``/``std``)."""
    x = images.to(torch.float32)
    if scaling == "pm1":
        return x / 127.5 - 1.0
    if scaling == "unit":
        return x / 255.0
    if scaling == "normalize":
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x / 255.0 - m) / s
    raise ValueError(f"unknown scaling {scaling!r}; expected one of {SCALINGS}")


def to_unit_range(images: np.ndarray, scaling: str, mean=None, std=None) -> np.ndarray:
    """Images ``(N, C, H, W)`` in the pixel units ``scaling`` -> [0, 1] (clipped), for display."""
    x = np.asarray(images, dtype=np.float32)
    if scaling == "pm1":
        x = (x + 1.0) / 2.0
    elif scaling == "normalize":
        shape = (1, -1, 1, 1)
        x = x * np.asarray(std, np.float32).reshape(shape) + np.asarray(mean, np.float32).reshape(shape)
    return np.clip(x, 0.0, 1.0)


def scaling_data_range(scaling: str, std=None) -> float:
    """The SSIM data range of the pixel units: 2 for pm1, 1 for unit, mean 1/std for normalize."""
    if scaling == "pm1":
        return 2.0
    if scaling == "unit":
        return 1.0
    return float(np.mean([1.0 / s for s in std]))
