"""Flatness filters for public patches: a fast batched keypoint count in torch, and the SIFT reference.

The paper keeps a public patch only if SIFT finds enough keypoints on it, which drops flat patches
(sky, walls, blur). scikit-image's SIFT costs 3.5-6.5 ms a patch, one patch at a time. The fast
filter here runs the same detector's first stages on a whole batch at once with torch:

1. luminance in [0, 1] (Pillow's ITU-R 601-2 weights, as the SIFT path), upsampled x2 (linear);
2. a Gaussian scale space with SIFT's constants (3 scales per octave, sigma 1.6, octaves down to
   12 px: 3 on a 32x32 patch) and its difference-of-Gaussians;
3. extrema of each 3x3x3 neighbourhood (space and scale) whose DoG value exceeds SIFT's contrast
   threshold, that pass SIFT's edge test (principal-curvature ratio <= 10) and lie one blur radius
   inside the patch.

It skips what costs SIFT most and changes the count little: sub-pixel refinement of each extremum
and the orientation histograms (SIFT counts one keypoint per dominant orientation, so its count is
somewhat higher). Its threshold is calibrated against SIFT's decision on real photographs
(:data:`FAST_THRESHOLD`; agreement and speed in docs/pools.md, ``benchmarks/flatness_filter.py``).

Example: ``keep = fast_keep(patches)  # (N,) bool for (N, C, 32, 32) uint8 patches``
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from .public import sift_keypoint_count

__all__ = [
    "dog_keypoint_count", "fast_keep", "sift_keep", "keep_mask", "agreement", "FILTERS",
    "FAST_THRESHOLD", "SIFT_THRESHOLD",
]

# SIFT keeps a patch with MORE than this many keypoints (instahide.data.public: about the median on
# resize=40 patches of photographs; the paper's 40 is out of reach on 32x32 patches).
SIFT_THRESHOLD = 10
# The fast filter keeps a patch with MORE than this many DoG keypoints: chosen to maximise Cohen's
# kappa against "SIFT count > 10" on ImageNet and Tiny-ImageNet patches (docs/pools.md).
FAST_THRESHOLD = 9
# SIFT's constants (scikit-image defaults, instahide.data.public.SIFT_PARAMS): x2 upsampling, 3
# scales per octave, sigma 1.6 (0.8 after upsampling), assumed input blur 0.5, DoG contrast
# threshold 0.04 / 3 on [0, 1] images, curvature ratio 10, last octave at least 12 pixels.
_UPSAMPLING, _N_SCALES, _SIGMA_MIN, _SIGMA_IN = 2, 3, 1.6, 0.5
_C_DOG, _C_EDGE, _MIN_OCTAVE_SIZE = 0.04 / 3, 10.0, 12
FILTERS = ("fast", "sift", "none")


def _check(patches) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 patches (numpy or torch; C = 1, 3 or 4) as a tensor, or a clear error."""
    x = patches if isinstance(patches, torch.Tensor) else torch.as_tensor(np.asarray(patches))
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise TypeError(f"patches must be (N, C, H, W) uint8, got {tuple(x.shape)} {x.dtype}")
    if x.shape[1] not in (1, 3, 4):
        raise ValueError(f"patches must have 1, 3 or 4 channels (N, C, H, W), got C={x.shape[1]} in shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < 8:
        raise ValueError(f"patches must be at least 8x8 pixels, got {tuple(x.shape[-2:])}")
    return x


def _luminance(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 -> ``(N, 1, H, W)`` float32 in [0, 1], with Pillow's fixed-point
    luminance (:func:`instahide.data.arrays.convert_channels`)."""
    if x.shape[1] == 1:
        y = x.to(torch.float32)
    else:
        r, g, b = (x[:, i:i + 1].to(torch.int32) for i in range(3))  # 255 * 65536 fits
        y = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.float32)
    return y / 255.0


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` float64: a Gaussian blur of ``sigma`` pixels along one axis of length ``n``,
    truncated at 4 sigma, padded as scipy's ``mode='reflect'`` (``d c b a | a b c d | d c b a``),
    as scikit-image's ``gaussian``."""
    radius = int(4.0 * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    m = np.zeros((n, n))
    for i in range(n):
        j = (i + t) % (2 * n)
        np.add.at(m[i], np.where(j >= n, 2 * n - 1 - j, j), k)
    return m


def _upsample_matrix(n: int, factor: int) -> np.ndarray:
    """``(factor * n, n)`` float64: linear interpolation by ``factor`` along one axis, pixel centres
    aligned and the border mirrored (``c b | a b c``) as scikit-image's ``rescale(order=1)``."""
    src = (np.arange(factor * n) + 0.5) / factor - 0.5
    src = np.where(src < 0, -src, np.where(src > n - 1, 2 * (n - 1) - src, src))
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    m = np.zeros((factor * n, n))
    np.add.at(m, (np.arange(factor * n), lo), 1 - (src - lo))
    np.add.at(m, (np.arange(factor * n), hi), src - lo)
    return m


@functools.lru_cache(maxsize=16)
def _axis_operators(n: int) -> tuple:
    """For one image axis of length ``n``: per octave, a ``(n_scales + 3, m_o, n)`` float32 tensor
    whose slice ``s`` maps the input axis to scale ``s`` of octave ``o`` (upsampling, every blur and
    every subsampling before it composed into one matrix; Gaussian blurs are separable, so a scale
    image is ``rows[s] @ x @ cols[s].T``)."""
    octaves, _, steps = _scale_space_plan(n, n)
    sigma_min = _SIGMA_MIN / _UPSAMPLING
    base = _blur_matrix(_UPSAMPLING * n, _UPSAMPLING * math.sqrt(sigma_min ** 2 - _SIGMA_IN ** 2))
    base = base @ _upsample_matrix(n, _UPSAMPLING)
    out = []
    for o in range(octaves):
        scales = [base]
        for s in range(_N_SCALES + 2):
            scales.append(_blur_matrix(len(base), float(steps[o, s])) @ scales[-1])
        out.append(torch.tensor(np.stack(scales), dtype=torch.float32))
        base = scales[_N_SCALES][::2]  # the next octave: every second pixel of scale n_scales
    return tuple(out)


def _scale_space_plan(h: int, w: int) -> tuple[int, np.ndarray, np.ndarray]:
    """SIFT's octave count, the blur of every scale ``(octaves, n_scales + 3)`` in input pixels and
    the incremental blurs ``(octaves, n_scales + 2)`` in each octave's own pixels."""
    octaves = min(8, int(math.log2(min(h, w) * _UPSAMPLING / _MIN_OCTAVE_SIZE) + 1))
    deltas = (1 / _UPSAMPLING) * 2.0 ** np.arange(octaves)
    sigma_min = _SIGMA_MIN / _UPSAMPLING
    sigmas = deltas[:, None] / deltas[0] * (sigma_min * 2.0 ** (np.arange(_N_SCALES + 3) / _N_SCALES))[None]
    steps = np.sqrt(np.diff(sigmas ** 2, axis=1)) / deltas[:, None]
    return octaves, sigmas, steps


def _max3(x: torch.Tensor) -> torch.Tensor:
    """Maximum over each 3x3x3 neighbourhood (scale, y, x) of ``(S, h, N, w)``, interior only:
    ``(S-2, h-2, N, w-2)``."""
    for d in (0, 1, 3):
        n = x.shape[d]
        x = torch.maximum(torch.maximum(x.narrow(d, 0, n - 2), x.narrow(d, 1, n - 2)), x.narrow(d, 2, n - 2))
    return x


def _count_batch(gray: torch.Tensor, contrast: float, edge: float) -> torch.Tensor:
    # layout (scale, y, patch, x): contiguous out of the matrix products, so every step below
    # runs over contiguous memory
    n, _, h, w = gray.shape
    octaves, sigmas, _ = _scale_space_plan(h, w)
    rows_all, cols_all = _axis_operators(h), _axis_operators(w)
    x = gray.reshape(n * h, w)
    counts = torch.zeros(n, dtype=torch.int64)
    edge_limit = (edge + 1) ** 2 / edge
    for o in range(octaves):
        delta = 2.0 ** o / _UPSAMPLING
        rows, cols = rows_all[o], cols_all[o]  # (S, ho, h), (S, wo, w)
        s_, ho, wo = rows.shape[0], rows.shape[1], cols.shape[1]
        z = (x @ cols.reshape(s_ * wo, w).T).view(n, h, s_, wo).permute(2, 1, 0, 3).reshape(s_, h, n * wo)
        stack = torch.bmm(rows, z).view(s_, ho, n, wo)  # scale s of every patch
        dog = stack[1:] - stack[:-1]  # (n_scales + 2, ho, N, wo)
        centre = dog[1:-1, 1:-1, :, 1:-1]  # interior in scale and space
        extremum = ((centre > contrast) & (centre >= _max3(dog))) | ((centre < -contrast) & (centre <= -_max3(-dog)))
        # the few extrema (tens per patch): SIFT's edge test on the spatial Hessian of the DoG at the
        # extremum's own scale, and its border test (the blur radius inside the patch)
        s, y, b, xi = (extremum.nonzero() + torch.tensor([1, 1, 0, 1])).unbind(1)
        at = lambda dy, dx: dog[s, y + dy, b, xi + dx]  # noqa: E731
        c2 = 2 * at(0, 0)
        hyy, hxx = at(1, 0) + at(-1, 0) - c2, at(0, 1) + at(0, -1) - c2
        hxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
        # |trace^2 / det| <= limit, as scikit-image tests it (a saddle's negative ratio passes too)
        ok = (hxx + hyy) ** 2 <= edge_limit * (hxx * hyy - hxy * hxy).abs()
        sig = torch.as_tensor(sigmas[o], dtype=torch.float32)[s]
        yy, xx = y.to(torch.float32) * delta, xi.to(torch.float32) * delta
        ok &= (yy - sig > 0) & (yy + sig < h) & (xx - sig > 0) & (xx + sig < w)
        counts += torch.bincount(b[ok], minlength=n)
    return counts


def dog_keypoint_count(patches, *, contrast: float = _C_DOG, edge: float = _C_EDGE,
                       batch: int = 64) -> torch.Tensor:
    """Difference-of-Gaussians keypoints on each of ``(N, C, H, W)`` uint8 patches: ``(N,)`` int64.

    SIFT's scale space and its extremum, contrast, edge and border tests, batched (see the module
    docstring for what is left out). ``batch`` patches are processed at a time (memory about
    ``batch * 600`` KB on 32x32 patches; small batches stay in the CPU's cache). Patches must be at least 8x8 pixels.

    Example: ``dog_keypoint_count(patches) > FAST_THRESHOLD``
    """
    x = _check(patches)
    out = torch.empty(len(x), dtype=torch.int64)
    with torch.no_grad():
        for i in range(0, len(x), batch):  # luminance per batch: memory stays at one batch's
            out[i:i + batch] = _count_batch(_luminance(x[i:i + batch]), contrast, edge)
    return out


def fast_keep(patches, threshold: int = FAST_THRESHOLD) -> np.ndarray:
    """``(N,)`` bool: which ``(N, C, H, W)`` uint8 patches have MORE than ``threshold`` DoG
    keypoints (:func:`dog_keypoint_count`), i.e. are not flat.

    Example: ``pool = patches[fast_keep(patches)]``
    """
    return (dog_keypoint_count(patches) > threshold).numpy()


def sift_keep(patches, threshold: int = SIFT_THRESHOLD, **sift_params) -> np.ndarray:
    """``(N,)`` bool: which ``(N, C, H, W)`` uint8 patches have MORE than ``threshold`` SIFT keypoints
    (:func:`instahide.data.public.sift_keypoint_count`, scikit-image, one patch at a time).

    Example: ``pool = patches[sift_keep(patches, 10)]``
    """
    patches = np.asarray(patches)
    if patches.dtype != np.uint8 or patches.ndim != 4:
        raise TypeError(f"patches must be (N, C, H, W) uint8, got {patches.shape} {patches.dtype}")
    return np.array([sift_keypoint_count(p, **sift_params) > threshold for p in patches], dtype=bool)


def keep_mask(patches, filter: str = "fast", threshold: int | None = None) -> np.ndarray:
    """``(N,)`` bool for ``(N, C, H, W)`` uint8 patches under the named filter: ``"fast"``
    (:func:`fast_keep`, default threshold :data:`FAST_THRESHOLD`), ``"sift"`` (:func:`sift_keep`,
    default :data:`SIFT_THRESHOLD`) or ``"none"`` (keeps all).

    Example: ``keep_mask(patches, "sift", 10)``
    """
    if filter == "fast":
        return fast_keep(patches, FAST_THRESHOLD if threshold is None else threshold)
    if filter == "sift":
        return sift_keep(patches, SIFT_THRESHOLD if threshold is None else threshold)
    if filter == "none":
        return np.ones(len(patches), dtype=bool)
    raise ValueError(f"unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")


def agreement(decision, reference) -> dict:
    """How a keep/drop ``decision`` ``(N,)`` bool agrees with a ``reference`` ``(N,)`` bool: precision
    and recall of "keep" against the reference, accuracy, Cohen's kappa (agreement beyond chance:
    1 identical, 0 as chance), both keep rates and N.

    Example: ``agreement(fast_keep(p), sift_keep(p))["kappa"]``
    """
    a, b = np.asarray(decision, dtype=bool), np.asarray(reference, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"decision and reference must be non-empty (N,) arrays of one length, got {a.shape} and {b.shape}")
    n = len(a)
    tp, fp, fn = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    observed = float((a == b).mean())
    pa, pb = float(a.mean()), float(b.mean())
    chance = pa * pb + (1 - pa) * (1 - pb)
    kappa = 1.0 if chance == 1 else (observed - chance) / (1 - chance)
    return {
        "n": n, "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"), "accuracy": observed, "kappa": kappa,
        "keep_rate": pa, "reference_keep_rate": pb,
    }
