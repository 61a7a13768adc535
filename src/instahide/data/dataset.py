"""The in-memory dataset every loader returns.

Images stay ``uint8`` in ``(N, C, H, W)`` layout on the host (what is on disk); they become float,
normalised tensors on the training device only when asked (:meth:`ImageDataset.to_tensor`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

# Per-channel statistics of the reference code (docs/scheme.md). Images in [0, 1] are normalised as
# (x - mean) / std, which centres them: the sign mask only hides anything on centred pixels.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


@dataclass
class ImageDataset:
    """A labelled (or unlabelled) image dataset held as uint8 arrays.

    Attributes:
        images: ``(N, C, H, W)`` uint8 array.
        labels: ``(N,)`` int64 array of class indices, or ``None`` for an unlabelled set
            (public pools).
        classes: class names, ``len(classes)`` is the number of classes; ``None`` if unlabelled.
        name: short name used in file names and reports (``"cifar10"``, ``"digits"``, ...).
        mean, std: per-channel statistics (of images scaled to [0, 1]) used by
            :meth:`to_tensor` to centre the pixels.
    """

    images: np.ndarray
    labels: np.ndarray | None
    classes: list[str] | None
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8:
            raise TypeError(f"ImageDataset.images must be a uint8 numpy array, got "
                            f"{type(self.images).__name__} of dtype {getattr(self.images, 'dtype', None)}")
        if self.images.ndim != 4 or 0 in self.images.shape[1:]:
            raise ValueError(f"ImageDataset.images must be (N, C, H, W), C, H, W >= 1; got {self.images.shape}")
        c = self.images.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean/std have {len(self.mean)}/{len(self.std)} entries for {c}-channel images")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise ValueError(f"mean must be finite and std finite and > 0; got mean {self.mean}, std {self.std}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
            if self.labels.shape != (len(self.images),):
                raise ValueError(
                    f"{len(self.images)} images but labels of shape {self.labels.shape}; "
                    f"expected ({len(self.images)},)"
                )
            if not np.issubdtype(self.labels.dtype, np.integer):
                raise TypeError(f"labels must be integers, got dtype {self.labels.dtype}")
            self.labels = self.labels.astype(np.int64, copy=False)
            if len(self.labels) and self.labels.min() < 0:
                raise ValueError(f"labels must be >= 0, got minimum {self.labels.min()}")
            if self.classes is not None and len(self.labels) and self.labels.max() >= len(self.classes):
                raise ValueError(
                    f"label {self.labels.max()} out of range for {len(self.classes)} classes"
                )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices) -> "ImageDataset":
        """The images (and labels) at ``indices``, a slice, an index array or a boolean mask."""
        idx = indices
        return replace(self, images=np.ascontiguousarray(self.images[idx]),
                       labels=None if self.labels is None else self.labels[idx], meta=dict(self.meta))

    def to_tensor(
        self,
        *,
        normalize: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float images ``(N, C, H, W)`` on ``device`` (normalised with ``mean``/``std`` unless
        ``normalize=False``, in which case they are scaled to [0, 1]) and int64 labels ``(N,)``."""
        x = torch.from_numpy(self.images).to(device=device).to(dtype).div_(255.0)
        if normalize:
            x = normalize_images(x, self.mean, self.std)
        y = None if self.labels is None else torch.from_numpy(self.labels).to(device)
        return x, y


def normalize_images(x: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x - mean) / std`` per channel for ``x`` of shape ``(N, C, H, W)`` scaled to [0, 1]."""
    m, s = (torch.as_tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in (mean, std))
    if m.shape[1] != x.shape[1]:
        raise ValueError(f"{m.shape[1]} channel statistics for {x.shape[1]}-channel images")
    return (x - m) / s


def denormalize_images(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of :func:`normalize_images`: back to the [0, 1] scale (not clipped)."""
    m, s = (torch.as_tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in (mean, std))
    return x * s + m
