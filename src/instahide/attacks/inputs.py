"""The input checks of every attack (encryptions, labels, images, keys, gradients): each returns the
input as the attacks compute on it (images channels-first ``(N, C, H, W)``), or raises a one-line
ValueError/TypeError naming the argument and the problem."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..metrics import refuse_channels_last

__all__ = ["as_array", "check_count", "check_seed_range", "check_encryption", "check_label", "check_key_arrays",
           "check_images", "check_attacker_data", "check_batch", "check_gradients", "check_labels_tensor"]


def as_array(x, name: str) -> np.ndarray:
    """``x`` (array, tensor or nested sequence) as a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(f"{name} must be an array, got {type(x).__name__}") from exc
    return x


def check_count(value, name: str, *, minimum: int = 1) -> int:
    """A plain integer ``>= minimum`` (``n_private``, ``k``, ...)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_seed_range(seed_range, name: str = "seed_range", *, bits: int = 32, empty: bool = False) -> tuple[int, int]:
    """``[start, stop)`` of generator seeds: exactly two integers with ``0 <= start < stop <= 2**bits``
    (``start == stop`` too when ``empty``); floats, booleans and other lengths are refused, not cut.

    >>> check_seed_range((0, 2 ** 16))
    (0, 65536)
    >>> check_seed_range((0, 10, 2))
    Traceback (most recent call last):
    ...
    ValueError: seed_range must be (start, stop), two integers, got (0, 10, 2)
    """
    if isinstance(seed_range, (str, bytes)) or not isinstance(seed_range, Sequence) or len(seed_range) != 2:
        raise ValueError(f"{name} must be (start, stop), two integers, got {seed_range!r}")
    lo, hi = seed_range
    if not (_is_int(lo) and _is_int(hi)):
        raise TypeError(f"{name} must be two integers, got {type(lo).__name__} {lo!r} and {type(hi).__name__} {hi!r}")
    lo, hi = int(lo), int(hi)
    if not (0 <= lo <= hi <= 2 ** bits) or (lo == hi and not empty):
        rule = "<=" if empty else "<"
        raise ValueError(f"{name} must satisfy 0 <= start {rule} stop <= 2**{bits} (the generator's seeds), "
                         f"got ({lo}, {hi})")
    return lo, hi


def check_encryption(x, name: str = "encryption", *, min_rows: int = 1) -> np.ndarray:
    """Encryptions as a float64 ``(N, C, H, W)`` array, or a clear error."""
    x = as_array(x, name)
    if x.ndim != 4:
        raise ValueError(f"Invalid {name} shape, expected (N, C, H, W) channels-first. Got: {tuple(x.shape)}")
    refuse_channels_last(x.shape, name, ", or read a challenge with instahide.challenge.load_challenge")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    if x.shape[0] < min_rows:
        raise ValueError(f"too few rows: {name} has {x.shape[0]}, at least {min_rows} needed")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x.astype(np.float64, copy=False)


def check_label(label, n_rows: int) -> np.ndarray:
    """Leaked soft labels as float64 ``(N, classes)``, non-negative, or a clear error."""
    y = as_array(label, "label")
    if y.ndim != 2:
        raise ValueError(f"Invalid label shape, expected (N, classes). Got: {tuple(y.shape)}")
    if y.shape[0] != n_rows:
        raise ValueError(f"label has {y.shape[0]} rows but encryption has {n_rows}")
    if not np.issubdtype(y.dtype, np.floating):
        raise TypeError(f"label must be floating point (soft labels), got dtype {y.dtype}")
    if not np.isfinite(y).all():
        raise ValueError("label contains NaN or Inf")
    if (y < 0).any():
        raise ValueError("label has negative entries; expected mixed one-hot labels")
    return y.astype(np.float64, copy=False)


def check_key_arrays(indices, coefficients, num_private: int, n_private: int, n_rows: int):
    """Ground-truth key arrays: int64 ``(N, k)`` indices and float64 ``(N, k)`` coefficients."""
    idx, lam = as_array(indices, "indices"), as_array(coefficients, "coefficients")
    if idx.ndim != 2 or idx.shape != lam.shape or idx.shape[0] != n_rows:
        raise ValueError(f"key arrays have shapes {tuple(idx.shape)} (indices) and {tuple(lam.shape)} "
                         f"(coefficients); both must be (N, k) with N = {n_rows} rows of the encryption")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    if not np.isfinite(lam).all():
        raise ValueError("coefficients contain NaN or Inf")
    if not 1 <= num_private <= idx.shape[1]:
        raise ValueError(f"num_private={num_private} out of range for k={idx.shape[1]}")
    if (idx < 0).any():
        raise ValueError("indices must be >= 0")
    if idx[:, :num_private].max() >= n_private:
        raise ValueError(f"private indices go up to {idx[:, :num_private].max()} but n_private={n_private}")
    return idx.astype(np.int64), lam.astype(np.float64)


def check_images(x, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Float images of exactly ``shape`` (e.g. the true private images ``(n, C, H, W)``) as float64."""
    x = as_array(x, name)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must be (n, C, H, W) = {tuple(shape)}, got {tuple(x.shape)}")
    return x.astype(np.float64)


def _uint8_stack(x, name: str, shape_chw: tuple[int, int, int]) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise TypeError(f"{name} must be uint8 (M, C, H, W) as loaded, got {x.dtype} {x.shape}")
    if tuple(x.shape[1:]) != shape_chw:
        raise ValueError(f"{name} of another shape: {tuple(x.shape[1:])} (C, H, W), the encryptions are {shape_chw}")
    return x


def check_attacker_data(images, labels, public, shape_chw: tuple[int, int, int], num_private: int, k: int):
    """The attacker's OWN labelled images uint8 ``(M, C, H, W)``, labels int64 ``(M,)`` and, cross-dataset,
    public pool uint8 ``(P, C, H, W)`` (None inside-dataset)."""
    if images is None:
        raise ValueError("no attacker images: the pair network is trained on the attacker's own images "
                         "(attacker_images=uint8 (M, C, H, W), disjoint from the attacked ones)")
    images = _uint8_stack(images, "attacker_images", shape_chw)
    need = max(2 * k, 8)
    if len(images) < need:
        raise ValueError(f"too few attacker images: {len(images)}, at least {need} needed")
    labels = np.asarray(labels).astype(np.int64).ravel()
    if labels.shape != (len(images),):
        raise ValueError(f"{len(images)} attacker images but attacker_labels of shape {labels.shape}")
    if labels.min() < 0:
        raise ValueError("attacker labels must be class indices >= 0")
    if num_private == k:
        return images, labels, None
    if public is None:
        raise ValueError(f"cross-dataset challenge (num_private={num_private} < k={k}): give attacker_public, "
                         "the attacker's own public pool uint8 (P, C, H, W)")
    return images, labels, _uint8_stack(public, "attacker_public", shape_chw)


# -- gradient inversion ----------------------------------------------------------------------------
def check_batch(inputs: torch.Tensor, soft_labels: torch.Tensor) -> None:
    """A training batch ``(B, C, H, W)`` and its labels ``(B, classes)``, float and finite."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"Invalid inputs shape, expected (B, C, H, W). Got: {shape}")
    if not isinstance(soft_labels, torch.Tensor) or soft_labels.dim() != 2 or soft_labels.shape[0] != inputs.shape[0]:
        shape = tuple(soft_labels.shape) if isinstance(soft_labels, torch.Tensor) else type(soft_labels).__name__
        raise ValueError(f"Invalid soft_labels shape, expected (B, classes) with B={inputs.shape[0]}. Got: {shape}")
    for name, t in (("inputs", inputs), ("soft_labels", soft_labels)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf")


def check_gradients(params: list[tuple[str, torch.Tensor]], gradients) -> list[torch.Tensor]:
    """An observed gradient: one finite tensor per trainable parameter (list, or dict name -> tensor),
    not all zero; returned on the parameters' device and dtype."""
    if isinstance(gradients, Mapping):
        missing = [n for n, _ in params if n not in gradients]
        if missing:
            raise ValueError(f"gradients lack the parameters {missing[:5]}")
        gradients = [gradients[n] for n, _ in params]
    if isinstance(gradients, torch.Tensor) or not isinstance(gradients, Sequence):
        raise TypeError(f"gradients must be a list of tensors (one per trainable parameter), got {type(gradients).__name__}")
    if len(gradients) != len(params):
        raise ValueError(f"got {len(gradients)} gradient tensors but the model has {len(params)} trainable "
                         "parameters (pass them in model.named_parameters() order)")
    out = []
    for (name, p), g in zip(params, gradients):
        g = torch.as_tensor(g)
        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"gradient for {name!r} has shape {tuple(g.shape)}, the parameter has {tuple(p.shape)}")
        if not g.is_floating_point():
            raise TypeError(f"gradient for {name!r} must be floating point, got {g.dtype}")
        if not bool(torch.isfinite(g).all()):
            raise ValueError(f"gradient for {name!r} contains NaN or Inf")
        out.append(g.detach().to(device=p.device, dtype=p.dtype))
    if all(float(g.abs().max()) == 0.0 for g in out):
        raise ValueError("the observed gradient is zero everywhere: there is nothing to invert")
    return out


def check_labels_tensor(labels, batch_size: int, classes: int) -> torch.Tensor:
    """Known labels: ``(B,)`` class indices (made one-hot) or ``(B, classes)`` soft labels, as float."""
    t = torch.as_tensor(labels)
    if t.dim() == 1:
        if t.is_floating_point():
            raise TypeError("1-D labels must be integer class indices; soft labels are (B, classes)")
        if t.shape[0] != batch_size:
            raise ValueError(f"labels has {t.shape[0]} entries but batch_size={batch_size}")
        if int(t.min()) < 0 or int(t.max()) >= classes:
            raise ValueError(f"labels must be class indices in [0, {classes}), got {t.tolist()[:5]}")
        return torch.nn.functional.one_hot(t.long(), classes).float()
    if t.dim() != 2 or t.shape != (batch_size, classes):
        raise ValueError(f"Invalid labels shape, expected ({batch_size},) or ({batch_size}, {classes}). Got: {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("labels contain NaN or Inf")
    return t if t.is_floating_point() else t.float()
