"""Batched data augmentation: the reference recipe's random crop and horizontal flip, as tensor ops.

The reference code augments with torchvision's ``RandomCrop(32, padding=4)`` and
``RandomHorizontalFlip()`` on PIL images, before normalisation and before encryption, redrawn every
epoch. Here the same operations act on a whole batch ``(N, C, H, W)`` at once, on the batch's device,
each image with its own random draw. The crop pads with zeros in torchvision, i.e. with black *before*
normalisation; our images are already normalised, so :func:`random_crop` pads with a per-channel
``fill`` and the trainer passes what black becomes, ``fill = -mean / std``.

Randomness comes from an optional ``torch.Generator`` (``None``: torch's global generator). Numbers
are drawn on the generator's device and moved to the batch's, so a CPU generator drives a GPU batch
reproducibly. Augmentation randomness is not key material: it needs reproducibility, not secrecy.

Example::

    augment = Augment(padding=4, flip=True, fill=[-m / s for m, s in zip(CIFAR_MEAN, CIFAR_STD)])
    x = augment(x)          # (N, C, H, W) -> (N, C, H, W), fresh crops and flips
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

__all__ = ["random_crop", "random_flip", "Augment"]

Fill = Union[float, Sequence[float], torch.Tensor]


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"Invalid x shape, we expect (N, C, H, W). Got: {shape}")


def _device_of(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else x.device


def _fill_tensor(fill: Fill, x: torch.Tensor) -> torch.Tensor:
    """``fill`` as a ``(1, C, 1, 1)`` tensor of ``x``'s dtype and device."""
    channels = x.shape[1]
    f = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if f.numel() == 1:
        f = f.expand(channels)
    elif f.numel() != channels:
        raise ValueError(f"fill has {f.numel()} values for {channels} channels; give one per channel or one")
    return f.view(1, channels, 1, 1)


def random_crop(x: torch.Tensor, padding: int = 4, fill: Fill = 0.0, generator: torch.Generator | None = None,
                return_offsets: bool = False):
    """Pad every image by ``padding`` on each side, then crop it back to ``H x W`` at a random offset.

    The batched twin of torchvision's ``RandomCrop((H, W), padding=padding)`` with constant padding:
    output pixel ``(i, j)`` of image ``n`` is padded pixel ``(i + dy_n, j + dx_n)``, where the offsets
    ``dy_n, dx_n`` are drawn independently and uniformly from ``{0, ..., 2 * padding}`` for every
    image. ``dy = dx = padding`` is the identity.

    Args:
        x: images ``(N, C, H, W)``, any floating (or integer) dtype, any device.
        padding: pixels added on each side (0 returns ``x`` unchanged).
        fill: value of the padded pixels, one for all channels or one per channel. For normalised
            images pass ``-mean / std`` per channel (black before normalisation, as in the reference).
        generator: source of the offsets; ``None`` uses torch's global generator.
        return_offsets: also return the offsets, an int64 tensor ``(N, 2)`` of ``(dy, dx)`` on
            ``x``'s device.

    Returns:
        ``(N, C, H, W)`` tensor (a new tensor unless ``padding == 0``), and the offsets if asked.
    """
    _check_batch(x)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = x.shape
    if padding == 0:
        offsets = torch.zeros(n, 2, dtype=torch.long, device=x.device)
        return (x, offsets) if return_offsets else x
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator,
                            device=_device_of(generator, x)).to(x.device)
    padded = _fill_tensor(fill, x).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]
    return (out, offsets) if return_offsets else out


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None,
                return_mask: bool = False):
    """Flip each image left-right with probability ``p``, independently per image.

    Args:
        x: images ``(N, C, H, W)``.
        p: flip probability in ``[0, 1]`` (0 returns ``x`` unchanged).
        generator: source of the draws; ``None`` uses torch's global generator.
        return_mask: also return which images were flipped, a bool tensor ``(N,)`` on ``x``'s device.

    Returns:
        ``(N, C, H, W)`` tensor, and the flip mask if asked.
    """
    _check_batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if p == 0.0:
        flipped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        return (x, flipped) if return_mask else x
    flipped = (torch.rand(x.shape[0], generator=generator, device=_device_of(generator, x)) < p).to(x.device)
    out = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    return (out, flipped) if return_mask else out


class Augment(nn.Module):
    """Module twin of :func:`random_crop` followed by :func:`random_flip`, for a batch ``(N, C, H, W)``.

    Args:
        padding: crop padding (0 disables the crop).
        flip: whether to flip left-right with probability 1/2.
        fill: crop padding value, one or one per channel (``-mean / std`` for normalised images).
        generator: default source of randomness; ``None`` uses torch's global generator. A generator
            passed to :meth:`forward` takes precedence.

    It augments whenever called, in training and evaluation mode alike: call it on training batches
    only. Shape: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, padding: int = 4, flip: bool = True, fill: Fill = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.flip = int(padding), bool(flip)
        self.fill = fill.tolist() if isinstance(fill, torch.Tensor) else fill
        self.generator = generator

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(x)
        g = generator if generator is not None else self.generator
        if self.padding:
            x = random_crop(x, self.padding, self.fill, generator=g)
        if self.flip:
            x = random_flip(x, 0.5, generator=g)
        return x

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip={self.flip}, fill={self.fill}"
