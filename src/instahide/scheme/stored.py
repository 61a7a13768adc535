"""Images at rest as uint8, normalised on the fly: :class:`Uint8Images`.

A private set or a public pool held as uint8 (in memory, or a read-only memory map of a ``.npy``
file far larger than memory) plus its per-channel mean and std. :func:`~instahide.scheme.encrypt`
and :func:`~instahide.scheme.apply_key` take one wherever they take float images: the fused kernel
normalises each gathered row inside the kernel, the torch path gathers uint8 rows chunk by chunk, so
the only float32 memory is a chunk (and the output), never the whole set.

The normalised value of a pixel ``u`` of channel ``c`` is computed as the in-memory path computes it
(``ImageDataset.to_tensor``: float32 ``u / 255``, then ``(x - mean_c) / std_c`` in float32), so the
same keys give bit-identical encryptions from a uint8 store and from its float tensor.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Uint8Images"]


class Uint8Images:
    """uint8 images ``(N, C, H, W)`` with their per-channel ``mean``/``std``, read as float32 rows
    ``(u / 255 - mean_c) / std_c`` (``normalize=False``: ``u / 255``) only when used.

    Args:
        images: uint8 ``(N, C, H, W)`` numpy array or CPU tensor whose rows are contiguous either
            channels-first (a C-contiguous array) or channels-last (the ``(N, C, H, W)`` transposed
            view of an ``(N, H, W, C)`` array, as :func:`instahide.data.load_arrays` returns for a
            channels-last ``.npy`` file); a memory map is never copied. Value order is always
            ``(C, H, W)``: the masks' bit ``v`` is value ``v`` of that order, whatever the file's.
        mean, std: per-channel statistics (of images scaled to [0, 1]), ``C`` entries, std > 0.
        normalize: False keeps ``u / 255`` (mean and std then unused).
        device: where gathered rows (and the encryptions of the torch path) go; default CPU.

    Example:
        >>> u8 = np.random.default_rng(0).integers(0, 256, (10, 3, 4, 4), dtype=np.uint8)
        >>> store = Uint8Images(u8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        >>> store.shape, store.rows([0, 3]).shape
        ((10, 3, 4, 4), torch.Size([2, 3, 4, 4]))
    """

    requires_grad = False
    dtype = torch.float32
    ndim = 4

    def __init__(self, images, mean=None, std=None, *, normalize: bool = True, device=None) -> None:
        if isinstance(images, torch.Tensor):
            if images.device.type != "cpu":
                raise ValueError(f"Uint8Images holds images on the CPU (a memory map or host array), got {images.device}")
            images = images.numpy()
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise TypeError(f"Uint8Images needs a uint8 numpy array (N, C, H, W), got {type(images).__name__} of "
                            f"dtype {getattr(images, 'dtype', None)}")
        if images.ndim != 4 or images.shape[0] == 0 or 0 in images.shape[1:]:
            raise ValueError(f"Invalid images shape, expected (N, C, H, W) with N, C, H, W >= 1. Got: {images.shape}")
        n, c, h, w = images.shape
        if images[0].flags.c_contiguous:
            self.layout, raw = "chw", images
        elif images[0].transpose(1, 2, 0).flags.c_contiguous:
            self.layout, raw = "hwc", images.transpose(0, 2, 3, 1)
        else:
            raise ValueError(f"Uint8Images needs images whose rows are contiguous, channels-first or channels-last; "
                             f"got strides {images.strides} for shape {images.shape} (np.ascontiguousarray them)")
        # (N, C*H*W) view of the rows in their stored order: no copy (a memory map stays one)
        self.raw = np.lib.stride_tricks.as_strided(raw, (n, c * h * w), (raw.strides[0], 1), writeable=False)
        self.images = images
        self.shape = (n, c, h, w)
        self.normalize = bool(normalize)
        if normalize:
            if mean is None or std is None:
                raise ValueError("Uint8Images(normalize=True) needs mean= and std= (per channel)")
            mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
            if len(mean) != c or len(std) != c:
                raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {c}-channel images")
            if not all(math.isfinite(v) for v in (*mean, *std)) or min(std) <= 0:
                raise ValueError(f"mean must be finite and std finite and > 0; got mean {mean}, std {std}")
        self.mean, self.std = mean, std
        self.device = torch.device("cpu" if device is None else device)
        # the value of every uint8 of every channel, computed by the in-memory path's operations
        self.lut = self._normalise(torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, c, 256, 1),
                                   "cpu").reshape(c, 256).contiguous().numpy()

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        kind = "memory-mapped" if isinstance(self.images, np.memmap) else "in-memory"
        return f"Uint8Images({kind}, shape={self.shape}, layout={self.layout!r}, normalize={self.normalize})"

    def _normalise(self, u8: torch.Tensor, device) -> torch.Tensor:
        """uint8 ``(m, C, H, W)`` -> float32 as ``ImageDataset.to_tensor`` computes it."""
        x = u8.to(device=device).to(torch.float32).div_(255.0)
        if not self.normalize:
            return x
        m = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    def uint8_rows(self, indices) -> np.ndarray:
        """The stored uint8 images at ``indices`` as a C-contiguous ``(m, C, H, W)`` array (read from the
        map: only these rows' pages are touched)."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
        n, c, h, w = self.shape
        rows = self.raw[idx]  # (m, D) in stored order: one contiguous read per row
        if self.layout == "hwc":
            return np.ascontiguousarray(rows.reshape(-1, h, w, c).transpose(0, 3, 1, 2))
        return rows.reshape(-1, c, h, w)

    def rows(self, indices) -> torch.Tensor:
        """Float32 images ``(m, C, H, W)`` at ``indices`` on :attr:`device`, normalised."""
        return self._normalise(torch.from_numpy(self.uint8_rows(indices)), self.device)

    def to_tensor(self) -> torch.Tensor:
        """Every image as float32 ``(N, C, H, W)`` (the whole set in memory: for small sets and tests)."""
        return self.rows(np.arange(len(self)))

