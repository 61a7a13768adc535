"""Gradient inversion (docs/attacks.md, "Gradient inversion") as an audit step: a client encrypts ``n``
private images (InstaHide, Mixup, or ``mode="vanilla"``) and takes steps of batch ``B`` on a model at its
initialisation; each step's gradient is inverted (labels unknown) and scored against the input
(``ssim_vs_input``) and the private images it hides (``max_ssim_vs_private``, also for ``|recovered|``).
The client's model takes ``|x|`` first when it trains on InstaHide (``sign_invariant="auto"``, as
``instahide train`` does): its gradient then carries no signs, so the recovered input is scored against
``|input|``; such a client is easier to invert (docs/gradient_inversion.md).
Defaults: the settings that converge on CPU budgets (docs/gradient_inversion.md).

Example::

    res = gradient_inversion_audit(images_u8, labels, mode="instahide", k=4, batch_size=1, n=4)
    res["summary"]["max_ssim_vs_private"], res["recovered"].shape
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..attacks.gradinv import invert_gradients, observed_gradient
from ..data.scaling import scale_images, scaling_data_range
from ..metrics import match_batches, ssim, window_for
from ..scheme import KeyGenerator, encrypt
from ..scheme.defaults import DOM, UPPER
from ..train.engine import sign_invariant_for
from ..train.models import build_model, sign_invariant as with_abs

__all__ = ["leakage_lenet", "gradient_inversion_audit"]


def leakage_lenet(in_channels: int, image_size: int, num_classes: int, act: type[nn.Module] = nn.Sigmoid) -> nn.Module:
    """The LeNet of the gradient-leakage papers (Zhu et al. 2019; Geiping et al. 2020): three 5x5 convs
    of width 12 (strides 2, 2, 1) with ``act`` and a linear head. ``(B, C, S, S) -> (B, classes)``."""
    side = -(-image_size // 4)
    return nn.Sequential(
        nn.Conv2d(in_channels, 12, 5, padding=2, stride=2), act(),
        nn.Conv2d(12, 12, 5, padding=2, stride=2), act(),
        nn.Conv2d(12, 12, 5, padding=2, stride=1), act(),
        nn.Flatten(), nn.Linear(12 * side * side, num_classes))


def _row_private_ssim(rec: torch.Tensor, private: torch.Tensor, idx: np.ndarray, num_private: int,
                      data_range: float) -> np.ndarray:
    out = np.empty(len(rec))
    for i in range(len(rec)):
        cand = private[torch.as_tensor(idx[i, :num_private])].double()
        r = rec[i:i + 1].double().expand_as(cand)
        out[i] = float(ssim(r, cand, data_range=data_range, win_size=window_for(rec), reduction="none").max())
    return out


def gradient_inversion_audit(images, labels, *, mode: str = "instahide", k: int = 4, num_private: int | None = None,
                             public=None, upper: float = UPPER, dom: float = DOM, scaling: str = "pm1",
                             num_classes: int | None = None, n: int = 4, batch_size: int = 1, model: str = "lenet",
                             steps: int = 2000, lr: float = 0.03, distance: str = "l2", tv_weight: float = 0.0,
                             restarts: int = 1, seed: int = 0, sign_invariant: str = "auto", log=None) -> dict:
    """Invert ``n // batch_size`` observed training steps (module docstring).

    Args:
        images: uint8 ``(M, C, H, W)`` private images (``M >= n``; inside-dataset partners come from all M).
        labels: ``(M,)`` class indices.
        mode: ``"vanilla"``, ``"mixup"`` or ``"instahide"``; k, num_private, public, upper, dom: the scheme.
        scaling: ``"pm1"`` ([-1, 1]) or ``"unit"`` ([0, 1]) pixels.
        n, batch_size: images attacked and the client's batch size.
        model: ``"lenet"`` (:func:`leakage_lenet`) or a name from :data:`instahide.train.MODELS`.
        steps, lr, distance, tv_weight, restarts, seed: the inversion (see ``invert_gradients``).
        sign_invariant: ``"auto"`` (|x| first for InstaHide, the training default), ``"on"`` or ``"off"``.

    Returns:
        a dict with ``recovered`` (float32 ``(rows, C, H, W)``), ``inputs`` (what was trained on),
        ``private_rows`` (the private image in each row's slot 1), per-row scores and ``summary``.
    """
    x8 = torch.as_tensor(np.asarray(images))
    if x8.dtype != torch.uint8 or x8.ndim != 4:
        raise ValueError(f"images must be uint8 (M, C, H, W), got {tuple(x8.shape)} {x8.dtype}")
    if mode not in ("vanilla", "mixup", "instahide"):
        raise ValueError(f"unknown mode {mode!r}; expected vanilla, mixup or instahide")
    if scaling not in ("pm1", "unit"):
        raise ValueError(f"scaling must be pm1 or unit, got {scaling!r}")
    if batch_size < 1 or n < batch_size:
        raise ValueError(f"need 1 <= batch_size <= n, got batch_size={batch_size}, n={n}")
    if len(x8) < n:
        raise ValueError(f"too few images: {len(x8)} for n={n}")
    if sign_invariant not in ("auto", "on", "off"):
        raise ValueError(f"sign_invariant must be auto, on or off, got {sign_invariant!r}")
    abs_first = sign_invariant_for(sign_invariant, mode)
    y = torch.as_tensor(np.asarray(labels)).long().flatten()
    classes = int(num_classes or int(y.max()) + 1)
    x = scale_images(x8, scaling)
    data_range = scaling_data_range(scaling)
    if mode == "vanilla":
        inputs, soft = x, nn.functional.one_hot(y, classes).float()
        idx, slots = np.arange(len(x))[:, None], 1
    else:
        pub = None if public is None else scale_images(torch.as_tensor(np.asarray(public)), scaling)
        slots = (num_private or 2) if pub is not None else k
        enc = encrypt(x, y, k=k, upper=upper, dom=dom, mode=mode, public=pub,
                      num_private=slots if pub is not None else None, num_classes=classes,
                      generator=KeyGenerator.from_seed(seed), return_key=True, allow_uncentred=scaling == "unit")
        inputs, soft, idx = enc.images, enc.soft_labels, enc.key.indices.numpy()
    c, h, w = x.shape[1:]
    rows = (n // batch_size) * batch_size
    rec_all, in_ssim = [], []
    t0 = time.perf_counter()
    for b in range(0, rows, batch_size):
        torch.manual_seed(seed)
        net = leakage_lenet(c, h, classes) if model == "lenet" else build_model(model, classes, c)
        net = with_abs(net) if abs_first else net
        xb, yb = inputs[b:b + batch_size], soft[b:b + batch_size]
        grads = observed_gradient(net, xb, yb)
        res = invert_gradients(net, grads, batch_size=batch_size, input_shape=(c, h, w), steps=steps, lr=lr,
                               distance=distance, tv_weight=tv_weight, restarts=restarts, seed=seed)
        found = res.images.detach().abs() if abs_first else res.images.detach()  # no signs to recover
        m = match_batches(found, xb.abs() if abs_first else xb, data_range=data_range)
        rec = torch.empty_like(xb)
        rec[torch.as_tensor(m.order)] = found  # put each recovered image on its row
        rec_all.append(rec)
        in_ssim.append(m.ssim[np.argsort(m.order)])
        if log:
            log(f"gradient inversion: batch {b // batch_size + 1}/{rows // batch_size}: SSIM to the input "
                f"{m.mean_ssim:.3f} ({time.perf_counter() - t0:.0f} s)")
    rec = torch.cat(rec_all)
    vs_private = _row_private_ssim(rec, x, idx[:rows], slots, data_range)
    abs_private = _row_private_ssim(rec.abs(), x, idx[:rows], slots, data_range)
    in_ssim = np.concatenate(in_ssim)
    summary = {"mode": mode, "k": k if mode != "vanilla" else 1, "num_private": slots, "scaling": scaling,
               "batch_size": batch_size, "rows": rows, "model": model, "sign_invariant": abs_first,
               "ssim_vs_input_is": "|recovered| vs |input|" if abs_first else "recovered vs input",
               "steps": steps, "distance": distance,
               "lr": lr, "tv_weight": tv_weight, "restarts": restarts, "labels": "recovered from the gradient",
               "ssim_vs_input": float(in_ssim.mean()), "max_ssim_vs_private": float(vs_private.mean()),
               "abs_max_ssim_vs_private": float(abs_private.mean()),
               "seconds": round(time.perf_counter() - t0, 1), "data_range": data_range}
    f32 = lambda t: t.numpy().astype(np.float32)  # noqa: E731
    return {"recovered": f32(rec), "inputs": f32(inputs[:rows]), "private_rows": f32(x[idx[:rows, 0]]),
            "ssim_vs_input": in_ssim, "max_ssim_vs_private": vs_private, "abs_max_ssim_vs_private": abs_private,
            "summary": summary}
