"""Steps 3-5 of the scheme and the one-call entry point :func:`encrypt`.

``encrypt`` = sample a key (:func:`sample_key`) + apply it (:func:`apply_key`) + mix the labels
(:func:`mix_labels`). The mixing runs in one pass per output row with the fused kernel of
:mod:`instahide.scheme.kernel` (float32 on the CPU, with numba), else in chunks of rows that fit in
cache: one weighted gather-sum per chunk and the mask applied as a sign-bit XOR. Either way the only
full-size allocation is the output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import kernel
from .coefficients import check_bounds, sample_coefficients
from .defaults import DOM, K_INSIDE, UPPER
from .keys import Key
from .legacy import LegacyGenerator, legacy_key
from .masks import apply_mask_, sample_mask_bits
from .partners import check_rows, sample_partners
from .rng import KeyGenerator, fixed_generator, resolve_generator
from .stored import Uint8Images

MODES = ("instahide", "mixup")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Share of MIXED values of the rarer sign under which inputs count as "not centred": the mask hides
# only signs not already known; on non-negative mixtures |e| is the Mixup, on non-positive ones -|e|
# is (docs/scheme.md, "Pixel scaling"). So both the negative and the positive share must reach it.
CENTRED_MIN_SHARE = 0.10
CENTRED_MIN_NEGATIVE = CENTRED_MIN_SHARE  # its former name
# Widest soft labels: (N, num_classes) float32 is allocated for every encryption (10**6 classes is
# 4 MB per row); label values or num_classes beyond it are a mistake, not a dataset.
MAX_CLASSES = 10 ** 6
# Float32 rows gathered at once from a uint8 store on the torch path and in the centring check.
GATHER_BYTES = 16 << 20


class UncentredInputError(ValueError):
    """InstaHide was asked to mask images whose mixtures are (almost) all of one sign."""


@dataclass
class Encryption:
    """What :func:`encrypt` returns.

    Attributes:
        images: ``(N, C, H, W)`` encryptions, same dtype and device as the input.
        soft_labels: ``(N, num_classes)`` mixed labels (sum over the private slots of lambda_j y_j),
            or None when no labels were given.
        key: the one-time keys (:class:`~instahide.scheme.keys.Key`) when ``return_key=True``.
    """

    images: torch.Tensor
    soft_labels: torch.Tensor | None
    key: Key | None = None


def encrypt(
    images,
    labels=None,
    *,
    k: int = K_INSIDE,
    upper: float = UPPER,
    mode: str = "instahide",
    public=None,
    num_private: int | None = None,
    dom: float = DOM,
    num_classes: int | None = None,
    own_min: float | None = None,
    seed=None,
    generator: KeyGenerator | LegacyGenerator | None = None,
    return_key: bool = False,
    legacy: bool = False,
    allow_uncentred: bool = False,
    out: torch.Tensor | None = None,
    rows=None,
    progress=None,
    fused: bool | None = None,
) -> Encryption:
    """Encrypt every image of ``images`` with InstaHide (or Mixup), each under a fresh one-time key.

    For image ``i``: draw lambda (``k`` coefficients, each ``<= upper``; in cross-dataset mode the
    private ones sum to ``>= dom``), fill slot 1 with image ``i``, slots ``2..num_private`` with other
    private images and slots ``num_private+1..k`` with public images, mix
    ``m = sum_j lambda_j image_j``, and (``mode="instahide"``) flip the sign of every value at random:
    ``e = sigma * m``. Soft label: ``sum over private slots of lambda_j * y_j``.

    Args:
        images: private images ``(N, C, H, W)``, float (16, bf16, 32 or 64 bits), CPU or CUDA;
            partners are drawn from this tensor (pass the whole private set or one batch). Should be
            centred (e.g. normalised with :func:`instahide.data.normalize_images`). Or a
            :class:`~instahide.scheme.stored.Uint8Images` (uint8 images, e.g. memory-mapped, with their
            mean/std): rows are normalised as they are gathered, the same keys give the same bits as
            its float tensor, and memory is bounded by the output (use ``rows`` for chunks of it).
        labels: ``(N,)`` class indices or ``(N, num_classes)`` one-hot/soft labels, or None.
        k: images mixed into one encryption (the paper: 4 inside-dataset, 6 cross-dataset).
        upper: c1, the largest coefficient (reference 0.65).
        mode: ``"instahide"`` (mix and mask) or ``"mixup"`` (mix only; no privacy from the mask).
        public: public pool ``(M, C, H, W)`` for cross-dataset InstaHide (float, or a
            :class:`~instahide.scheme.stored.Uint8Images`), or None (inside-dataset).
        num_private: private slots; default ``k`` inside-dataset, 2 with a public pool.
        dom: c2, the smallest sum of the private coefficients; cross-dataset mode only (ref. 0.3).
        num_classes: width of the soft labels; default ``labels.max() + 1`` (pass it for batches).
        own_min: optional floor on each image's own coefficient (slot 1), e.g. 0.5 for inference
            with InstaHide; not part of the reference scheme.
        seed: FOR REPRODUCIBLE RESEARCH ONLY: anyone who knows the seed can recompute every key.
            Default: keys from a generator seeded with 256 bits of OS entropy.
        generator: a :class:`KeyGenerator` to draw from (instead of ``seed``); with ``legacy=True``
            a :class:`~instahide.scheme.legacy.LegacyGenerator`, whose streams continue across calls.
        return_key: also return the keys (secrets: store them apart from the encryptions).
        legacy: the reference code's key sampling with its defects (docs/scheme.md; ``seed`` a 32-bit
            integer, from OS entropy if None), for replaying the published challenge and attacks only.
        allow_uncentred: mask images whose mixtures are (almost) all of one sign anyway (the mask then
            hides nearly nothing: ``|e|`` or ``-|e|`` equals the Mixup). Without it such input is refused.
        out: optional preallocated output ``(N, C, H, W)`` (``(len(rows), C, H, W)`` with ``rows``) of
            the images' dtype and device, sharing no memory with ``images`` or ``public``.
        rows: optional indices of the images to encrypt (e.g. one batch of a DataLoader); partners
            are still drawn from all of ``images``. Default: every image, in order.
        progress: optional callable ``progress(rows_done)``, called as the mixing proceeds (every
            cache-sized chunk of rows), e.g. for a progress line.
        fused: the mixing path (:func:`apply_key`): None = the fused numba kernel where it runs
            (float32, CPU, ``numba`` installed), False = the chunked torch path everywhere (the same
            bits on machines with and without numba), True = the kernel or an error.

    Returns:
        :class:`Encryption` with ``images`` ``(N, C, H, W)`` (one per row of ``rows`` if given),
        ``soft_labels`` ``(N, num_classes)`` and
        ``key`` (if asked).

    Example:
        >>> x = torch.randn(8, 3, 32, 32); y = torch.arange(8) % 10
        >>> enc = encrypt(x, y, k=4, num_classes=10)
        >>> enc.images.shape, enc.soft_labels.shape
        (torch.Size([8, 3, 32, 32]), torch.Size([8, 10]))
    """
    images = check_images(images, "images")
    n = images.shape[0]
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if public is not None:
        public = check_images(public, "public")
        if tuple(public.shape[1:]) != tuple(images.shape[1:]):
            raise ValueError(f"public images have shape {tuple(public.shape[1:])} per image, private images "
                             f"{tuple(images.shape[1:])}; they must match")
        if public.device != images.device or public.dtype != images.dtype:
            raise ValueError(f"public pool is {public.dtype} on {public.device}, images are {images.dtype} "
                             f"on {images.device}; move/cast the pool once (public.to(images))")
    num_private = check_scheme(k, upper, num_private, dom, public is not None)
    num_classes = check_num_classes(num_classes)
    if mode == "instahide" and not allow_uncentred:
        check_centred(images, k, "images")
        if public is not None:
            check_centred(public, k, "public")
    soft_target = None
    if labels is not None:
        soft_target, num_classes = check_labels(labels, n, num_classes, images.device, one_hot=False)
    cross = num_private < k
    key = sample_key(
        n, k, tuple(images.shape[1:]), upper=upper, dom=dom if cross else None, num_private=num_private,
        pool_size=None if public is None else public.shape[0], masked=mode == "instahide",
        own_min=own_min, seed=seed, generator=generator, legacy=legacy, rows=rows,
    )
    key.meta.update(mode=mode, upper=upper, dom=dom if cross else None)
    enc = apply_key(images, key, public=public, out=out, progress=progress, fused=fused)
    soft = None if soft_target is None else mix_labels(soft_target, key, num_classes)
    return Encryption(enc, soft, key if return_key else None)


def sample_key(
    n: int,
    k: int,
    image_shape: tuple[int, int, int],
    *,
    upper: float = UPPER,
    dom: float | None = None,
    num_private: int | None = None,
    pool_size: int | None = None,
    masked: bool = True,
    own_min: float | None = None,
    seed=None,
    generator: KeyGenerator | LegacyGenerator | None = None,
    legacy: bool = False,
    rows=None,
) -> Key:
    """Draw the one-time keys of ``n`` encryptions (coefficients, partners, masks) without touching
    any image. ``dom`` applies to the first ``num_private`` coefficients; pass None inside-dataset.
    With ``rows`` (indices into a set of ``n`` private images), the keys of those images only, one per
    row, partners still drawn from all ``n``."""
    num_private = k if num_private is None else num_private
    check_bounds(k, upper, dom, num_private, own_min)
    if legacy:
        if own_min is not None:
            raise ValueError("own_min is not part of the reference code: it cannot be used with legacy=True")
        if rows is not None:
            raise ValueError("rows is not part of the reference code: it cannot be used with legacy=True")
        if generator is not None and not isinstance(generator, LegacyGenerator):
            raise TypeError("legacy=True draws from the reference's Mersenne-Twister generators: pass "
                            "seed=<int> or generator=LegacyGenerator(seed)")
        if generator is not None and seed is not None:
            raise ValueError("give either seed or generator, not both")
        gen = generator if generator is not None else LegacyGenerator(seed)
        return legacy_key(n, k, image_shape, upper=upper, dom=dom, num_private=num_private,
                          pool_size=pool_size, masked=masked, generator=gen)
    rows = check_rows(rows, n)
    gen = resolve_generator(seed, generator)
    m = n if rows is None else len(rows)
    lam = sample_coefficients(m, k, upper=upper, dom=dom, num_private=num_private, own_min=own_min,
                              generator=gen)
    idx = sample_partners(n, k, num_private=num_private, pool_size=pool_size, generator=gen, rows=rows)
    d = int(np.prod(image_shape))
    bits = sample_mask_bits(m, d, gen) if masked else None
    meta = {"origin": gen.origin, "legacy": False, **({} if gen.seed is None else {"seed": gen.seed})}
    return Key(lam, idx, num_private, bits, image_shape, meta)


def apply_key(images: torch.Tensor, key: Key, *, public: torch.Tensor | None = None,
              out: torch.Tensor | None = None, chunk_rows: int | None = None, progress=None,
              fused: bool | None = None) -> torch.Tensor:
    """Encryptions ``(len(key), C, H, W)`` of ``images`` under ``key``: ``sigma * sum_j lambda_j image_j``.

    Exactly reproduces :func:`encrypt` given its key (on the same path, below). Each output row is
    written once; ``progress(rows_done)`` is called as rows are done. Raises a ValueError if any mixed
    value is NaN or infinite.

    Two paths: float32 on the CPU with the optional ``numba`` installed runs the fused kernel of
    :mod:`instahide.scheme.kernel` (one pass); anything else, or ``fused=False``, runs cache-sized
    chunks of torch operations (``chunk_rows`` rows each; differentiable: images that require grad
    always take it). They agree to rounding (the multiply-adds run in another order) and apply the
    same mask. ``fused=True`` raises where the kernel cannot run. ``images`` and ``public`` may be
    :class:`~instahide.scheme.stored.Uint8Images` stores (``(N, C, H, W)`` uint8 + mean/std): the
    kernel normalises each gathered row, the torch path gathers each chunk's rows; on either path
    the result equals that of the store's float tensor bit for bit.
    """
    n, k = len(key), key.k
    d = int(np.prod(key.image_shape))
    if tuple(images.shape[1:]) != key.image_shape:
        raise ValueError(f"key is for images of shape {key.image_shape}, got {tuple(images.shape[1:])}")
    if key.num_private < k and public is None:
        raise ValueError(f"key has {k - key.num_private} public slot(s): pass the public pool")
    dev, dtype = images.device, images.dtype
    x = _rows_of(images, d)
    pub = None if public is None else _rows_of(public, d)
    fresh = out is None
    if fresh:
        out = torch.empty((n, *key.image_shape), dtype=dtype, device=dev)
    elif out.shape != (n, *key.image_shape) or out.dtype != dtype or out.device != dev or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {(n, *key.image_shape)} on {dev}")
    elif any(isinstance(t, torch.Tensor) and _overlaps(out, t) for t in (images, public)):
        raise ValueError("out overlaps images or public: rows would be overwritten before they are read; "
                         "pass a separate buffer")
    flat = out.view(n, d)
    p = key.num_private
    lam = key.coefficients.to(device=dev, dtype=dtype)
    idx = key.indices.to(dev)
    _check_indices(idx[:, :p], len(x), "private")
    if p < k:
        _check_indices(idx[:, p:], len(pub), "public")
    bits = None if key.mask_bits is None else key.mask_bits.to(dev)
    grad = torch.is_grad_enabled() and (images.requires_grad or (public is not None and public.requires_grad))
    if fused is None:
        fused = not grad and kernel.supports(out)
    elif fused and (grad or not kernel.supports(out)):
        raise ValueError("the fused kernel needs float32 on the CPU and the numba package, and no autograd "
                         f"through the images; got {dtype} on {dev}{'' if kernel.available() else ' without numba'}"
                         f"{', images that require grad' if grad else ''}")
    if fused:
        # a fresh output takes its page faults at the first store: ordinary stores are faster there
        if n and not kernel.mix_and_mask(x, pub, idx, lam, p, bits, flat, progress=progress,
                                         stream=False if fresh else None):
            _raise_nonfinite(images, public)
        return out
    if chunk_rows is None:  # ~1 MB of output per chunk on CPU (stays in cache), ~256 MB on GPU
        budget = (1 << 28) if dev.type == "cuda" else (1 << 20)
        chunk_rows = max(1, budget // (d * out.element_size()))
    sums = []
    for s in range(0, n, chunk_rows):
        e = min(n, s + chunk_rows)
        # embedding_bag(mode="sum", per_sample_weights) is a fused weighted gather-sum:
        # row i = sum_j lam[i, j] * x[idx[i, j]], one pass over the chunk.
        a = _weighted_sum(x, idx[s:e, :p], lam[s:e, :p], d)
        if p < k:
            a += _weighted_sum(pub, idx[s:e, p:], lam[s:e, p:], d)
        sums.append(a.sum(dtype=torch.float32))  # NaN/Inf anywhere makes the sum non-finite
        if bits is not None:  # the mask's XOR writes the chunk to out: each output row is written once
            apply_mask_(a, bits[s:e], out=flat[s:e])
        else:
            flat[s:e] = a
        if progress is not None:
            progress(e)
    # One cheap reduction per chunk (4x cheaper than isfinite().all()); the exact check runs only
    # when a sum is not finite (a NaN/Inf, or a sum that overflowed float32).
    if sums and not bool(torch.isfinite(torch.stack(sums)).all()) and not bool(torch.isfinite(out).all()):
        _raise_nonfinite(images, public)
    return out


def _rows_of(images, d: int):
    """Float images as ``(N, d)`` rows; a :class:`Uint8Images` store as it is (rows read on demand)."""
    return images if isinstance(images, Uint8Images) else images.reshape(images.shape[0], d)


def _weighted_sum(src, idx: torch.Tensor, lam: torch.Tensor, d: int) -> torch.Tensor:
    """``(m, d)`` rows ``sum_j lam[i, j] * src[idx[i, j]]``: one fused gather-sum over float rows, or
    over the chunk's rows gathered from a uint8 store and normalised (the same sums, in the same order)."""
    if not isinstance(src, Uint8Images):
        return F.embedding_bag(idx, src, per_sample_weights=lam, mode="sum")
    m, j = idx.shape
    step = max(1, GATHER_BYTES // (4 * j * d))  # output rows per gather: bounded memory for any image size
    out = []
    for s in range(0, m, step):
        rows = src.rows(idx[s:s + step].reshape(-1)).reshape(-1, d)
        bags = torch.arange(rows.shape[0], device=rows.device).view(-1, j)
        out.append(F.embedding_bag(bags, rows, per_sample_weights=lam[s:s + step], mode="sum"))
    return out[0] if len(out) == 1 else torch.cat(out)


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of ``a`` and ``b`` intersect (conservative for strided tensors)."""
    (a0, a1), (b0, b1) = ((t.data_ptr(), t.data_ptr() + t.element_size() * (
        1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())))) for t in (a, b))
    return a.device == b.device and a.numel() > 0 and b.numel() > 0 and a0 < b1 and b0 < a1


def _check_indices(idx: torch.Tensor, size: int, name: str) -> None:
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise ValueError(f"key indexes {name} images up to {int(idx.max())}, but only {size} were given")


def mix_labels(labels: torch.Tensor, key: Key, num_classes: int | None = None) -> torch.Tensor:
    """Soft labels ``(N, num_classes)``: ``sum over private slots j of lambda_j * labels[idx_j]``.

    ``labels`` is ``(N_private, num_classes)`` one-hot or soft, or ``(N_private,)`` int64 class
    indices with ``num_classes`` (then the coefficients are scattered into their classes, without a
    one-hot matrix). In cross-dataset mode the rows sum to the private coefficients' total (< 1), as
    in the reference code (not renormalised).
    """
    p = key.num_private
    idx = key.indices[:, :p].to(labels.device)
    if labels.ndim == 1:
        if num_classes is None:
            raise ValueError("class-index labels need num_classes")
        lam = key.coefficients[:, :p].to(device=labels.device, dtype=torch.float32)
        soft = torch.zeros((len(key), num_classes), dtype=torch.float32, device=labels.device)
        return soft.scatter_add_(1, labels[idx], lam)
    lam = key.coefficients[:, :p].to(device=labels.device, dtype=labels.dtype)
    return torch.einsum("np,npc->nc", lam, labels[idx])


# -- input checks ----------------------------------------------------------------------------------
def check_scheme(k: int, upper: float, num_private: int | None, dom: float, cross: bool) -> int:
    """Validate the scheme options before any image is seen; returns the number of private slots."""
    check_bounds(k, upper)
    if not cross:
        if num_private not in (None, k):
            raise ValueError(f"num_private={num_private} < k={k} needs a public pool (public=...)")
        return k
    num_private = 2 if num_private is None else num_private
    if num_private >= k:
        raise ValueError(f"cross-dataset mode with k={k} and num_private={num_private} leaves no public "
                         "slot; lower num_private or drop the public pool")
    check_bounds(k, upper, dom, num_private)
    return num_private


def check_images(images, name: str = "images") -> torch.Tensor:
    """A float tensor ``(N, C, H, W)`` or a clear TypeError/ValueError saying what is wrong."""
    if isinstance(images, Uint8Images):  # checked when it was made
        return images
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        hint = " (for one image use x[None])" if images.ndim == 3 else ""
        raise ValueError(f"Invalid {name} shape, expected (N, C, H, W). Got: {tuple(images.shape)}{hint}")
    if images.dtype not in _FLOAT_DTYPES:
        hint = ("; convert to float and normalise, e.g. instahide.data.normalize_images(x.float() / 255, "
                "mean, std), or wrap them with their mean/std: instahide.scheme.Uint8Images(x, mean, std) "
                "(normalised row by row, never expanded as a whole)") if images.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must be floating point, got dtype {images.dtype}{hint}")
    if images.shape[0] == 0:
        raise ValueError(f"too few images: {name} is empty")
    if 0 in images.shape[1:]:
        raise ValueError(f"{name} of shape {tuple(images.shape)} hold no values: every image needs C, H "
                         "and W of at least 1")
    if not images.is_contiguous():
        images = images.contiguous()
    return images


def check_num_classes(num_classes) -> int | None:
    """``num_classes`` as an int (Python or numpy integers, 1 to :data:`MAX_CLASSES`), or None."""
    if num_classes is None:
        return None
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be a positive integer or None, got {num_classes!r} "
                        f"({type(num_classes).__name__})")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be a positive integer of at most {MAX_CLASSES:,} (the soft labels "
                         f"are N x num_classes floats), got {int(num_classes)}")
    return int(num_classes)


def check_labels(labels, n: int, num_classes: int | None, device, one_hot: bool = True) -> tuple[torch.Tensor, int]:
    """Labels as a float ``(N, num_classes)`` tensor on ``device`` (class indices as an int64 ``(N,)``
    tensor if not ``one_hot``), and ``num_classes``."""
    num_classes = check_num_classes(num_classes)
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"labels must be a tensor or array of shape (N,) or (N, num_classes), got "
                            f"{type(labels).__name__}: {exc}") from None
    if labels.ndim == 0:
        raise ValueError(f"labels must have shape (N,) or (N, num_classes), one per image; got a scalar "
                         f"(0-d) {labels.dtype} for {n} images")
    if labels.shape[0] != n:
        raise ValueError(f"{n} images but {labels.shape[0]} labels")
    labels = labels.to(device)
    if labels.ndim == 1:
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"class-index labels must be integers, got dtype {labels.dtype}")
        lo, hi = int(labels.min()), int(labels.max())
        if num_classes is None:
            if hi >= MAX_CLASSES:
                raise ValueError(f"labels go up to {hi}, which would make num_classes={hi + 1}, above the "
                                 f"limit of {MAX_CLASSES:,}; labels must be class indices in [0, num_classes)")
            num_classes = max(hi, 0) + 1
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must be in [0, num_classes={num_classes}), got range [{lo}, {hi}]")
        if not one_hot:
            return labels.long(), num_classes
        return torch.nn.functional.one_hot(labels.long(), num_classes).float(), num_classes
    if labels.ndim == 2:
        if not labels.dtype.is_floating_point:
            raise TypeError(f"(N, num_classes) labels must be float, got dtype {labels.dtype}")
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(f"labels have {labels.shape[1]} columns but num_classes={num_classes}")
        if not bool(torch.isfinite(labels).all()):
            raise ValueError("labels contain NaN or Inf")
        return labels, labels.shape[1]
    raise ValueError(f"Invalid labels shape, expected (N,) or (N, num_classes). Got: {tuple(labels.shape)}")


def check_centred(x: torch.Tensor, k: int, name: str = "images") -> float:
    """The share of mixed values whose sign the mask hides, in 256 random ``k``-image mixtures of rows
    of ``x``: the smaller of the shares of negative and of positive values (on mixtures all of one sign
    the sign is known without the key, and ``|e|`` or ``-|e|`` is the Mixup).
    :class:`UncentredInputError` below :data:`CENTRED_MIN_SHARE`. Fixed seed (not key material): a
    verdict is reproducible."""
    g = fixed_generator("instahide/centring-check")
    rows = torch.from_numpy(g.integers(x.shape[0], (256, k))).to(x.device)
    z = g.half_normal((256, k))
    lam = torch.from_numpy(z / z.sum(axis=1, keepdims=True)).to(device=x.device, dtype=x.dtype)
    mixed = _weighted_sum(_rows_of(x, int(np.prod(x.shape[1:]))), rows, lam, int(np.prod(x.shape[1:])))
    negative = float((mixed < 0).float().mean())
    positive = float((mixed > 0).float().mean())
    share, rarer = (negative, "negative") if negative <= positive else (positive, "positive")
    if share < CENTRED_MIN_SHARE:
        raise UncentredInputError(
            f"{name} are not centred: only {share:.2%} of mixed values are {rarer} (k={k}; at least "
            f"{CENTRED_MIN_SHARE:.0%} of each sign needed): the sign mask hides almost nothing. Centre "
            "them (instahide.data.normalize_images with their own mean/std: another dataset's statistics "
            "can leave nearly every value of one sign), or pass allow_uncentred=True "
            "(CLI: --allow-uncentred) if this is what you want to measure."
        )
    return share


def _raise_nonfinite(images: torch.Tensor, public: torch.Tensor | None) -> None:
    for name, t in (("images", images), ("public", public)):
        if not isinstance(t, torch.Tensor):  # None, or uint8 rows: finite by construction
            continue
        bad = (~torch.isfinite(t.reshape(t.shape[0], -1))).any(dim=1).nonzero().flatten()
        if len(bad):
            rows = bad[:5].tolist()
            raise ValueError(f"{name} contain NaN or Inf in {len(bad)} image(s), first rows {rows}")
    raise ValueError("encryption produced NaN or Inf (coefficients overflow the dtype?)")
