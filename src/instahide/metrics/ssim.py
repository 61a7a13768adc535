"""SSIM and L2 (root-mean-square error) for batches of images ``(N, C, H, W)``, in torch.

:func:`ssim` is ``skimage.metrics.structural_similarity(a_i, b_i, data_range=R, channel_axis=0)`` with
its defaults (uniform window, K1 = 0.01, K2 = 0.03, sample covariance, mean over the region where the
window fits, per channel then averaged: an average pool with stride 1 and no padding), computed in
float64 and returned in the input's float dtype. The tests assert agreement with scikit-image within
1e-9 on float64 input and 1e-5 on float32 input (scikit-image then computes in float32).
:func:`l2` is ``sqrt(mean over C, H, W of (a - b)^2)`` per image, in the images' own pixel units.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ssim", "SSIM", "l2", "L2", "K1", "K2", "window_for", "refuse_channels_last"]

K1 = 0.01  # scikit-image's (and Wang et al.'s) constants
K2 = 0.03
_REDUCTIONS = ("mean", "sum", "none")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array (N, C, H, W), got {type(x).__name__}")
    if not (x.dtype in _FLOATS or x.dtype == torch.uint8):
        raise TypeError(f"{name} must be float (or uint8), got {x.dtype}")
    return x


def refuse_channels_last(shape, name: str, hint: str = "") -> None:
    """Refuse a 4-d shape that can only be channels-last ``(N, H, W, C)``: more than 4 "channels" and
    a last axis of 1, 3 or 4 (the ``.npy`` files are channels-last; the library is channels-first)."""
    if len(shape) == 4 and shape[1] > 4 and shape[3] in (1, 3, 4):
        raise ValueError(f"{name} of shape {tuple(shape)} is channels-last (N, H, W, C); expected (N, C, H, W): "
                         f"transpose(0, 3, 1, 2){hint}")


def check_pair(a, b, *, min_size: int = 1, names: tuple[str, str] = ("a", "b")) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of images ``(N, C, H, W)`` of the same shape, finite, at least ``min_size``
    pixels high and wide, as tensors; or a TypeError/ValueError saying exactly what is wrong."""
    a, b = _as_tensor(a, names[0]), _as_tensor(b, names[1])
    for name, x in zip(names, (a, b)):
        if x.ndim != 4:
            hint = " (for one image use x[None]; grayscale images need a channel axis: x[:, None])" \
                if x.ndim in (2, 3) else ""
            raise ValueError(f"Invalid {name} shape, expected (N, C, H, W) channels first. Got: {tuple(x.shape)}{hint}")
        refuse_channels_last(x.shape, name)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {names[0]} is {tuple(a.shape)}, {names[1]} is {tuple(b.shape)}; "
                         "they differ in shape")
    if a.device != b.device:
        raise ValueError(f"{names[0]} is on {a.device}, {names[1]} on {b.device}; put them on the same device")
    h, w = a.shape[2:]
    if h < min_size or w < min_size:
        raise ValueError(f"images of {h}x{w} pixels are too small for a {min_size}x{min_size} window; "
                         f"pass a smaller odd win_size (at least 3)")
    for name, x in zip(names, (a, b)):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).nonzero().flatten()
            raise ValueError(f"{name} contains NaN or Inf in {len(bad)} image(s), first rows {bad[:5].tolist()}")
    return a, b


def window_for(x) -> int:
    """The SSIM window for images ``(..., H, W)``: 7, or the largest odd size that fits smaller images."""
    side = min(x.shape[-2:])
    win = 7 if side >= 7 else (side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"images of {tuple(x.shape[-2:])} pixels are too small for SSIM")
    return win


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {_REDUCTIONS}")


def ssim(a, b, *, data_range: float, win_size: int = 7, reduction: str = "mean") -> torch.Tensor:
    """Mean structural similarity of every pair of images, as scikit-image's ``structural_similarity``.

    Args:
        a, b: images ``(N, C, H, W)``, channels first, float (or uint8), same shape; torch tensors
            (CPU or CUDA; differentiable) or numpy arrays. ``H, W >= win_size``.
        data_range: the pixels' range (max - min possible value), e.g. 2.0 for [-1, 1], 1.0 for
            [0, 1], 255 for uint8. Required: scikit-image guesses it wrongly for floats.
        win_size: side of the uniform window, odd, >= 3 (scikit-image's default 7).
        reduction: ``"mean"`` (a scalar, the mean over the batch), ``"sum"`` or ``"none"`` (``(N,)``).

    Returns:
        The SSIM of each image pair (mean over the valid region, then over channels), reduced;
        in the input's float dtype (float32 for uint8 input).

    Example:
        >>> a = torch.rand(4, 3, 32, 32); b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
        >>> ssim(a, b, data_range=1.0, reduction="none").shape
        torch.Size([4])
    """
    _check_reduction(reduction)
    if not isinstance(win_size, (int, np.integer)) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size!r}")
    if not (isinstance(data_range, (int, float, np.floating, np.integer)) and np.isfinite(data_range)
            and data_range > 0):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    a, b = check_pair(a, b, min_size=win_size)
    out_dtype = a.dtype if a.is_floating_point() else torch.float32
    # (N, C, H, W) -> (N*C, 1, H, W) float64: one "image" per channel, pooled together.
    n, c, h, w = a.shape
    x = a.to(torch.float64).reshape(n * c, 1, h, w)
    y = b.to(torch.float64).reshape(n * c, 1, h, w)
    # One pooling call for the five local moments: mean a, mean b, mean a^2, mean b^2, mean ab.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    mu_x, mu_y, m_xx, m_yy, m_xy = F.avg_pool2d(stack, win_size, stride=1).unbind(dim=1)
    cov_norm = win_size ** 2 / (win_size ** 2 - 1)  # sample covariance (use_sample_covariance=True)
    var_x = cov_norm * (m_xx - mu_x * mu_x)
    var_y = cov_norm * (m_yy - mu_y * mu_y)
    cov_xy = cov_norm * (m_xy - mu_x * mu_y)
    c1, c2 = (K1 * float(data_range)) ** 2, (K2 * float(data_range)) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    per_image = s.mean(dim=(1, 2)).view(n, c).mean(dim=1)
    return _reduce(per_image, reduction).to(out_dtype)


def l2(a, b, *, reduction: str = "none") -> torch.Tensor:
    """Root-mean-square error of every pair of images: ``sqrt(mean over C, H, W of (a - b)^2)``.

    Args:
        a, b: images ``(N, C, H, W)``, same shape, finite (torch or numpy).
        reduction: ``"none"`` (default: ``(N,)``), ``"mean"`` or ``"sum"`` over the batch.

    Returns:
        The RMSE per image, in the images' pixel units (computed in float64, returned in the
        input's float dtype).

    Example:
        >>> l2(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
        tensor([1., 1.])
    """
    _check_reduction(reduction)
    a, b = check_pair(a, b)
    out_dtype = a.dtype if a.is_floating_point() else torch.float32
    diff = a.to(torch.float64) - b.to(torch.float64)
    per_image = diff.pow(2).flatten(1).mean(dim=1).sqrt()
    return _reduce(per_image, reduction).to(out_dtype)


class SSIM(nn.Module):
    """Module twin of :func:`ssim` (same arguments). As a loss, use ``1 - SSIM(...)(a, b)``.

    Example:
        >>> metric = SSIM(data_range=2.0, reduction="none")
        >>> metric(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
        tensor([1., 1.])
    """

    def __init__(self, data_range: float, win_size: int = 7, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.data_range, self.win_size, self.reduction = data_range, win_size, reduction

    def forward(self, a, b) -> torch.Tensor:
        return ssim(a, b, data_range=self.data_range, win_size=self.win_size, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"data_range={self.data_range}, win_size={self.win_size}, reduction={self.reduction!r}"


class L2(nn.Module):
    """Module twin of :func:`l2` (root-mean-square error per image)."""

    def __init__(self, reduction: str = "none") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction

    def forward(self, a, b) -> torch.Tensor:
        return l2(a, b, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
