"""The two threat models that attack what leaves a party (the third, membership inference against the
final model, is :mod:`instahide.attacks.membership` on the trained models):

- (a) a federated eavesdropper inverting one client's update: the audit's gradient inversion
  (:func:`instahide.audit.gradient.gradient_inversion_audit`: a batch-1 step of the gradient-leakage
  LeNet at initialisation, inverted with labels unknown) for the rows without DP-SGD; for the DP-SGD
  rows the same step with the update DP-SGD would share: the gradient clipped to norm ``C`` plus
  Gaussian noise of standard deviation ``sigma * C`` (:func:`dp_gradient_inversion`). The measure is
  the mean over the attacked images of the SSIM of the recovered input to the closest private image
  it holds (for clients whose model takes ``|x|`` first, and for every row, the better of the
  recovered input and its absolute value: the attacker keeps the better).
- (b) the data handed over (Mixup and InstaHide rows): the audit (:func:`instahide.audit.run_audit`)
  on a challenge of the same scheme, its attacks that apply, and per private image the best recovery
  over them (:func:`instahide.report.best_over_attacks`), given as its spread over the images.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..attacks.gradinv import invert_gradients, observed_gradient
from ..audit import FUSION_STEPS, AuditConfig, run_audit
from ..audit.gradient import gradient_inversion_audit, leakage_lenet
from ..data.scaling import scale_images
from ..metrics import ssim, window_for
from ..scheme import KeyGenerator, encrypt
from ..train.engine import derive_seed, sign_invariant_for
from ..train.models import sign_invariant as with_abs
from .config import CompareConfig, Method

__all__ = ["dp_gradient_inversion", "gradient_threat", "handed_over_threat", "CHALLENGE_ATTACKS"]

# which audit attacks apply to which encoding (the others refuse it or need a secret)
CHALLENGE_ATTACKS = {"mixup": ("demix",), "instahide": ("demix", "carlini", "fusion")}
# the audit's gradient-inversion settings (its defaults; docs/gradient_inversion.md)
_INVERSION = {"lr": 0.03, "distance": "l2", "tv_weight": 0.0, "restarts": 1}


def dp_gradient_inversion(images, labels, *, mode: str = "vanilla", k: int = 4, public=None,
                          noise_multiplier: float = 0.0, max_grad_norm: float = math.inf, n: int = 4,
                          steps: int = 2000, seed: int = 0, num_classes: int | None = None) -> dict:
    """Gradient inversion of a DP-SGD client's batch-1 update, scored against the private images.

    The client (:func:`~instahide.audit.gradient.leakage_lenet` at its initialisation, ``|x|`` first
    when it trains on InstaHide) computes the gradient of one training row, clips it to norm
    ``max_grad_norm`` and adds Gaussian noise of standard deviation ``noise_multiplier *
    max_grad_norm`` per coordinate (DP-SGD's update of a batch of one, as Opacus makes it); the
    eavesdropper inverts that update with the audit's settings. With ``noise_multiplier=0`` and an
    infinite norm this is :func:`~instahide.audit.gradient.gradient_inversion_audit` at batch 1.

    Args:
        images: uint8 ``(M, C, H, W)`` private images (``M >= n``); labels: ``(M,)`` class indices.
        mode, k, public: the rows the client trains on (``vanilla``, ``mixup`` or ``instahide``;
            ``public``: uint8 ``(P, C, H, W)`` pool for cross-dataset rows, 2 private slots).
        noise_multiplier, max_grad_norm: DP-SGD's ``sigma`` and ``C``.
        n, steps, seed: images attacked, inversion steps, seed of the keys, noise and inversion.

    Returns:
        ``{"max_ssim_vs_private": (n,), "abs_max_ssim_vs_private": (n,), "summary": {...}}``.
    """
    x8 = torch.as_tensor(np.asarray(images))
    if x8.dtype != torch.uint8 or x8.ndim != 4 or len(x8) < n:
        raise ValueError(f"images must be uint8 (M, C, H, W) with M >= n={n}, got {tuple(x8.shape)} {x8.dtype}")
    if not (noise_multiplier >= 0 and max_grad_norm > 0):
        raise ValueError(f"need noise_multiplier >= 0 and max_grad_norm > 0, got {noise_multiplier}, {max_grad_norm}")
    y = torch.as_tensor(np.asarray(labels)).long().flatten()
    classes = int(num_classes or int(y.max()) + 1)
    x = scale_images(x8, "pm1")
    if mode == "vanilla":
        inputs, soft, idx, slots = x, nn.functional.one_hot(y, classes).float(), np.arange(len(x))[:, None], 1
    else:
        pub = None if public is None else scale_images(torch.as_tensor(np.asarray(public)), "pm1")
        slots = 2 if pub is not None else k
        enc = encrypt(x, y, k=k, mode=mode, public=pub, num_private=slots if pub is not None else None,
                      num_classes=classes, generator=KeyGenerator.from_seed(seed), return_key=True)
        inputs, soft, idx = enc.images, enc.soft_labels, enc.key.indices.numpy()
    abs_first = sign_invariant_for("auto", mode)
    c, h, w = x.shape[1:]
    plain, absolute = np.empty(n), np.empty(n)
    for i in range(n):
        torch.manual_seed(seed)
        net = leakage_lenet(c, h, classes)
        net = with_abs(net) if abs_first else net
        grads = observed_gradient(net, inputs[i:i + 1], soft[i:i + 1])
        norm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads)))
        factor = min(1.0, max_grad_norm / norm) if norm > 0 else 1.0
        if noise_multiplier > 0 or factor < 1:
            gen = torch.Generator().manual_seed(derive_seed(seed, "dp-update", i))
            std = noise_multiplier * max_grad_norm
            grads = [g * factor + std * torch.randn(g.shape, generator=gen, dtype=g.dtype) for g in grads]
        res = invert_gradients(net, grads, batch_size=1, input_shape=(c, h, w), steps=steps, seed=seed, **_INVERSION)
        found = res.images.detach().abs() if abs_first else res.images.detach()
        cand = x[torch.as_tensor(idx[i, :slots])].double()
        for out, rec in ((plain, found), (absolute, found.abs())):
            out[i] = float(ssim(rec.double().expand_as(cand), cand, data_range=2.0, win_size=window_for(rec),
                                reduction="none").max())
    summary = {"mode": mode, "k": k if mode != "vanilla" else 1, "rows": n, "steps": steps, "model": "lenet",
               "sign_invariant": abs_first, "noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm,
               "max_ssim_vs_private": float(plain.mean()), "abs_max_ssim_vs_private": float(absolute.mean()),
               **_INVERSION}
    return {"max_ssim_vs_private": plain, "abs_max_ssim_vs_private": absolute, "summary": summary}


def gradient_threat(cfg: CompareConfig, method: Method, images, labels, public, num_classes: int,
                    noise_multiplier: float | None = None) -> dict:
    """Threat (a) for one method: ``{"value", "per_image", "summary", "how"}`` (module docstring).
    ``noise_multiplier``: the DP rows' sigma (from their training)."""
    n = cfg.gradinv_images
    pub = public if method.cross else None
    if not method.dp:
        res = gradient_inversion_audit(images, labels, mode=method.mode, k=max(method.k, 2), public=pub,
                                       num_classes=num_classes, n=n, batch_size=1, steps=cfg.gradinv_steps,
                                       seed=cfg.seed, **_INVERSION)
        how = "instahide.audit.gradient.gradient_inversion_audit (batch 1, LeNet at initialisation)"
    else:
        res = dp_gradient_inversion(images, labels, mode=method.mode, k=max(method.k, 2), public=pub,
                                    noise_multiplier=float(noise_multiplier), max_grad_norm=cfg.max_grad_norm, n=n,
                                    steps=cfg.gradinv_steps, seed=cfg.seed, num_classes=num_classes)
        how = (f"the same step, the update clipped to norm {cfg.max_grad_norm:g} plus Gaussian noise of std "
               f"{float(noise_multiplier):.3g} x {cfg.max_grad_norm:g} (DP-SGD's update of a batch of one)")
    per = np.maximum(np.asarray(res["max_ssim_vs_private"]), np.asarray(res["abs_max_ssim_vs_private"]))
    return {"value": float(per.mean()), "per_image": per.tolist(), "summary": res["summary"], "how": how}


def handed_over_threat(cfg: CompareConfig, method: Method, folder: Path, *, resume: bool = True, log=None,
                       device: str = "cpu") -> dict:
    """Threat (b) for one encoding: the audit of a challenge of ``method``'s scheme in ``folder``;
    returns the best recovery over the attacks that used no secret, per image (its spread), and the
    control (every row the attacker's mean image) for scale."""
    attacks = tuple(a for a in cfg.challenge_attacks if a in CHALLENGE_ATTACKS[method.mode])
    if not attacks:
        raise ValueError(f"none of the attacks {list(cfg.challenge_attacks)} applies to {method.mode} "
                         f"(these do: {', '.join(CHALLENGE_ATTACKS[method.mode])})")
    scheme = method.scheme(cfg.public)
    acfg = AuditConfig(dataset=cfg.dataset, root=cfg.root, split="test", n_private=cfg.challenge_images,
                       scheme=scheme, T=cfg.challenge_T, research_seed=cfg.seed, attacks=attacks,
                       carlini={"preset": cfg.carlini_preset, "device": device},
                       fusion={"steps": FUSION_STEPS, "time_s": cfg.fusion_time or None})
    say = log or (lambda msg: None)
    result = run_audit(acfg, folder, resume=resume, formats=("md",), log=lambda msg: say(f"  {msg}"))
    summary = json.loads((Path(folder) / "summary.json").read_text())
    best = summary.get("best_over_attacks") or {}
    images = best.get("images") or {}
    control = ((summary.get("controls") or {}).get("attacker's mean image") or {}).get("images") or {}
    ran = [o.name for o in result.outcomes if o.score is not None]
    return {"median": images.get("median"), "p10": images.get("p10"), "p90": images.get("p90"),
            "above_0.8": (images.get("above") or {}).get("0.8"), "control_median": control.get("median"),
            "attacks": ran, "notes": summary.get("notes") or [], "images": cfg.challenge_images, "T": cfg.challenge_T,
            "report": str(Path(folder) / "report.md")}
