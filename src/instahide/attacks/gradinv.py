"""Gradient inversion (docs/attacks.md, "Gradient inversion"; API, settings and measurements in
docs/gradient_inversion.md): recover a training batch from the gradient one client shares.

The "inverting gradients" family (Geiping et al., NeurIPS 2020): dummy inputs (and labels, when not
known) optimised by Adam on the SIGN of the gradient of ``distance(g(x'), g) + tv_weight * TV``,
several restarts. The loss is :func:`instahide.train.loss.soft_cross_entropy`, mean over the batch;
the model runs in the mode it is given (the client's), BatchNorm buffers restored afterwards. Against
InstaHide the recovered inputs are ENCRYPTIONS (``prior="tv-abs"`` puts the prior on ``|x'|``).

Example::

    from instahide.attacks.gradinv import observed_gradient, invert_gradients
    from instahide.metrics import match_batches
    grads = observed_gradient(model, x, y_soft)                        # what the client shares
    res = invert_gradients(model, grads, batch_size=1, input_shape=x.shape[1:], steps=2000)
    m = match_batches(res.images, x, data_range=2.0)                   # SSIM, best permutation
    print(m.mean_ssim, res.labels)
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..train.loss import soft_cross_entropy
from .inputs import check_batch, check_gradients, check_labels_tensor

__all__ = [
    "GradientInversionResult", "observed_gradient", "gradient_from_update", "gradient_distance",
    "invert_gradients", "recover_label_from_gradient", "total_variation", "DISTANCES", "PRIORS",
]

DISTANCES = ("cosine", "cosine-global", "l2")
PRIORS = ("tv", "tv-abs")
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


# -- what the client shares ------------------------------------------------------------------------
def _trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters: there is no gradient to observe")
    return params


def observed_gradient(model: nn.Module, inputs: torch.Tensor, soft_labels: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of one training step, as a client of federated SGD shares it: of
    ``soft_cross_entropy(model(inputs), soft_labels)`` (``(B, C, H, W)``, ``(B, classes)``; mean over
    the batch), one detached tensor per trainable parameter in ``model.named_parameters()`` order.
    The model runs in its current mode; BatchNorm buffers are restored, no ``.grad`` is touched."""
    check_batch(inputs, soft_labels)
    names, params = zip(*_trainable(model))
    with _buffers_kept(model):
        return [g.detach() for g in _param_grads(soft_cross_entropy(model(inputs), soft_labels), params)]


def _param_grads(loss: torch.Tensor, params, create_graph: bool = False) -> list[torch.Tensor]:
    """``d loss / d p`` for every parameter (zeros for those the loss does not use)."""
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def gradient_from_update(before_state, after_state, lr: float, *, model: nn.Module | None = None,
                         weight_decay: float = 0.0) -> list[torch.Tensor]:
    """The gradient implied by ONE local step of plain SGD (a FedAvg client's update):
    ``(before - after) / lr - wd * before``.

    Args:
        before_state, after_state: the weights before and after the step, as state dicts
            (name -> tensor/array) or, with ``model``, as sequences of arrays in
            ``model.state_dict()`` order (Flower's ``parameters_to_ndarrays`` convention).
        lr: the client's learning rate (> 0).
        model: selects and orders the result as ``model.named_parameters()`` (trainable ones), so
            it lines up with :func:`observed_gradient` and :func:`invert_gradients`. Without it, every
            floating entry of the state dict except BatchNorm buffers, in the dict's order.
        weight_decay: the client's (coupled, SGD-style) weight decay, subtracted back out.

    Returns:
        list of float tensors, one per parameter.
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    keys_all = list(model.state_dict().keys()) if model is not None else None
    before = _as_state(before_state, keys_all, "before_state")
    after = _as_state(after_state, keys_all, "after_state")
    if set(before) != set(after):
        diff = sorted(set(before) ^ set(after))
        raise ValueError(f"before_state and after_state have different entries: {diff[:5]}")
    if model is not None:
        names = [n for n, _ in _trainable(model)]
        missing = [n for n in names if n not in before]
        if missing:
            raise ValueError(f"state lacks the model's parameters {missing[:5]}")
    else:
        names = [n for n, v in before.items() if v.is_floating_point() and not n.endswith(_BN_BUFFERS)]
    out = []
    for n in names:
        b, a = before[n], after[n]
        if b.shape != a.shape:
            raise ValueError(f"parameter {n!r} has shape {tuple(b.shape)} before and {tuple(a.shape)} after the step")
        if not (bool(torch.isfinite(b).all()) and bool(torch.isfinite(a).all())):
            raise ValueError(f"parameter {n!r} contains NaN or Inf")
        b64, a64 = b.double(), a.double()
        g = (b64 - a64) / lr - weight_decay * b64
        out.append(g.to(b.dtype if b.is_floating_point() else torch.float32))
    return out


def _as_state(state, keys, name: str) -> dict[str, torch.Tensor]:
    if isinstance(state, Sequence) and not isinstance(state, (str, bytes)):
        if keys is None:
            raise ValueError(f"{name} is a list of arrays: pass model=... to say which entry is which")
        if len(state) != len(keys):
            raise ValueError(f"{name} has {len(state)} arrays but model.state_dict() has {len(keys)} entries")
        state = dict(zip(keys, state))
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} must be a state dict or a list of arrays, got {type(state).__name__}")
    return {k: torch.as_tensor(v if isinstance(v, torch.Tensor) else np.asarray(v)).detach().cpu()
            for k, v in state.items()}


@contextmanager
def _buffers_kept(model: nn.Module):
    """Restore the model's buffers (BatchNorm statistics) on exit."""
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved:
                    b.copy_(saved[n])


# -- the objective ---------------------------------------------------------------------------------
def gradient_distance(trial: Sequence[torch.Tensor], target: Sequence[torch.Tensor], distance: str = "cosine") -> torch.Tensor:
    """Distance between two gradient lists (differentiable in ``trial``).

    ``"cosine"``: ``sum_l (1 - cos(trial_l, target_l))`` over the parameter tensors (a tensor
    whose target is all zeros contributes nothing); ``"cosine-global"``: ``1 - cos`` of the
    concatenated gradients (Geiping et al.'s code); ``"l2"``: ``sum_l |trial_l - target_l|^2``
    (Zhu et al.'s "deep leakage from gradients").
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    if distance == "l2":
        return sum(((a - b) ** 2).sum() for a, b in zip(trial, target))
    if distance == "cosine-global":
        dot = sum((a * b).sum() for a, b in zip(trial, target))
        na = sum((a * a).sum() for a in trial)
        nb = sum((b * b).sum() for b in target)
        return 1 - dot / (na.sqrt() * nb.sqrt() + 1e-12)
    total = 0.0
    for a, b in zip(trial, target):
        nb = b.norm()
        if float(nb) == 0.0:
            continue
        total = total + 1 - (a * b).sum() / (a.norm() * nb + 1e-12)
    return torch.as_tensor(total) if not isinstance(total, torch.Tensor) else total


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontally and vertically neighbouring values of ``(B, C, H, W)``."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean() if x.shape[-1] > 1 else x.new_zeros(())
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() if x.shape[-2] > 1 else x.new_zeros(())
    return dx + dy


# -- label recovery --------------------------------------------------------------------------------
def _head_index(params: list[tuple[str, torch.Tensor]], num_classes: int | None) -> tuple[int, int | None]:
    """Index of the last layer's weight (last 2-D parameter) and of its bias (the 1-D parameter
    of matching size right after it), or None if it has none."""
    w = max((i for i, (_, p) in enumerate(params) if p.dim() == 2), default=None)
    if w is None:
        raise ValueError("no 2-D parameter (linear head) found: cannot read the labels from the gradient")
    classes = params[w][1].shape[0]
    if num_classes is not None and classes != num_classes:
        raise ValueError(f"the last linear layer has {classes} outputs, expected {num_classes} classes")
    b = w + 1 if w + 1 < len(params) and params[w + 1][1].shape == (classes,) else None
    return w, b


def recover_label_from_gradient(model: nn.Module, gradients: Sequence[torch.Tensor]) -> int:
    """The class of a batch-of-one hard label, read off the last layer's gradient (iDLG-style): the
    only negative entry of the bias gradient ``p - y`` (without a bias: of the weight gradient's row
    sums, exact when the head's input is non-negative). Not guaranteed for soft labels."""
    params = _trainable(model)
    grads = check_gradients(params, gradients)
    w, b = _head_index(params, None)
    signal = grads[b] if b is not None else grads[w].sum(dim=1)
    return int(torch.argmin(signal))


# -- the inversion ---------------------------------------------------------------------------------
@dataclass
class GradientInversionResult:
    """What :func:`invert_gradients` returns.

    Attributes:
        images: ``(B, C, H, W)`` recovered inputs of the best restart (for InstaHide: encryptions).
        labels: ``(B, classes)`` the labels used (given, recovered one-hot, or jointly optimised).
        label_source: ``"given"``, ``"bias"`` / ``"weight-rows"`` (one-hot read off the last layer),
            ``"bias-implied"`` (``s * p(x') - dL/db``) or ``"joint"`` (optimised).
        loss_history: gradient-matching objective (distance + prior) every step, best restart.
        best_restart: index of the restart kept.
        restart_losses: final objective of every restart.
        gradient_distance: final distance (without the prior) of the kept restart.
    """

    images: torch.Tensor
    labels: torch.Tensor
    label_source: str
    loss_history: list[float]
    best_restart: int
    restart_losses: list[float] = field(default_factory=list)
    gradient_distance: float = float("nan")


def invert_gradients(
    model: nn.Module,
    gradients,
    *,
    batch_size: int,
    input_shape: Sequence[int],
    labels=None,
    num_classes: int | None = None,
    steps: int = 2000,
    lr: float = 0.1,
    tv_weight: float = 1e-4,
    prior: str = "tv",
    distance: str = "cosine",
    restarts: int = 1,
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    progress_every: int = 100,
) -> GradientInversionResult:
    """Find a batch whose gradient matches ``gradients`` (Geiping et al.'s "inverting gradients").

    Args:
        model: the model the client trained (same weights, same train/eval mode).
        gradients: the observed gradient, one tensor per trainable parameter in
            ``model.named_parameters()`` order (or a dict name -> tensor), e.g. from
            :func:`observed_gradient` or :func:`gradient_from_update`.
        batch_size: ``B``, the client's batch size (assumed known).
        input_shape: ``(C, H, W)`` of one input.
        labels: ``(B,)`` class indices or ``(B, classes)`` labels if known; None to recover them
            (batch 1: off the last layer, or tied to the input as ``s * p(x') - dL/db`` for a soft
            label; batch > 1: jointly); ``"bias-implied"`` / ``"joint"`` force either way.
        num_classes: classes of the head (default: read off the last linear layer).
        steps: optimisation steps per restart.
        lr: Adam learning rate (on signed gradients; divided by 10 at 3/8, 5/8, 7/8 of ``steps``).
        tv_weight: weight of the total-variation prior (0 to disable).
        prior: ``"tv"`` on the images or ``"tv-abs"`` on their absolute values (for sign-masked
            inputs such as InstaHide encryptions, whose magnitudes are the natural image).
        distance: ``"cosine"`` (summed over parameter tensors), ``"cosine-global"`` or ``"l2"``.
        restarts: independent random starts; the lowest final objective is kept.
        bounds: optional ``(low, high)`` box for the inputs, applied after every step.
        seed: seed of the random starts (this is an attack, not key material).
        progress: optional callback ``(restart, step, objective)`` every ``progress_every`` steps.

    Returns:
        :class:`GradientInversionResult` with ``images (B, C, H, W)`` and ``labels (B, classes)``.
    """
    params = _trainable(model)
    target = check_gradients(params, gradients)
    for name, v in (("batch_size", batch_size), ("steps", steps), ("restarts", restarts)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (math.isfinite(tv_weight) and tv_weight >= 0):
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight!r}")
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; expected one of {PRIORS}")
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    if bounds is not None:
        lo, hi = (float(b) for b in bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    w_idx, b_idx = _head_index(params, num_classes)
    classes = params[w_idx][1].shape[0]
    device, dtype = params[0][1].device, params[0][1].dtype

    # Labels: given, read off the head (batch 1), or optimised jointly.
    fixed_labels, label_source = None, "joint"
    if isinstance(labels, str):
        if labels not in ("joint", "bias-implied"):
            raise ValueError(f"labels must be a tensor, None, 'joint' or 'bias-implied', got {labels!r}")
        if labels == "bias-implied":
            if batch_size != 1 or b_idx is None:
                raise ValueError("labels='bias-implied' needs batch_size=1 and a last layer with a bias")
            label_source = "bias-implied"
    elif labels is not None:
        fixed_labels = check_labels_tensor(labels, batch_size, classes).to(device=device, dtype=dtype)
        label_source = "given"
    elif batch_size == 1:
        # A hard label gives p - y: exactly one negative entry (softmax p > 0 elsewhere). More than
        # one negative entry means a soft label (Mixup/InstaHide): optimise it jointly instead.
        signal = target[b_idx] if b_idx is not None else target[w_idx].sum(dim=1)
        if int((signal < 0).sum()) <= 1:
            fixed_labels = torch.zeros(1, classes, device=device, dtype=dtype)
            fixed_labels[0, int(torch.argmin(signal))] = 1.0
            label_source = "bias" if b_idx is not None else "weight-rows"
        elif b_idx is not None:
            label_source = "bias-implied"
    implied = label_source == "bias-implied"
    if implied:  # t = s * p(x) - dL/db, with p from the model's weights held constant
        bias_grad = target[b_idx][None]
        frozen = {n: p.detach() for n, p in model.named_parameters()}
        frozen.update(dict(model.named_buffers()))

    names, plist = zip(*params)
    gen = torch.Generator().manual_seed(int(seed))
    best = None
    restart_losses = []
    milestones = [int(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    with _buffers_kept(model):
        for r in range(restarts):
            x = torch.randn((batch_size, *input_shape), generator=gen, dtype=dtype).to(device)
            if bounds is not None:
                x.clamp_(lo, hi)
            x.requires_grad_(True)
            variables = [x]
            logit = scale = None
            if implied:
                scale = torch.ones(1, device=device, dtype=dtype, requires_grad=True)
                variables.append(scale)
            elif fixed_labels is None:
                logit = torch.randn((batch_size, classes), generator=gen, dtype=dtype).to(device).requires_grad_(True)
                variables.append(logit)

            def current_labels(x_):
                if implied:
                    p_ = torch.softmax(torch.func.functional_call(model, frozen, (x_,)), dim=1)
                    return p_ * scale.clamp(0.05, 1.0) - bias_grad
                return fixed_labels if logit is None else torch.softmax(logit, dim=1)

            opt = torch.optim.Adam(variables, lr=lr)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
            history = []
            for step in range(steps):
                opt.zero_grad(set_to_none=True)
                y = current_labels(x)
                loss = soft_cross_entropy(model(x), y)
                dist = gradient_distance(_param_grads(loss, plist, create_graph=True), target, distance)
                obj = dist
                if tv_weight:
                    obj = obj + tv_weight * total_variation(x.abs() if prior == "tv-abs" else x)
                if not bool(torch.isfinite(obj.detach())):
                    raise FloatingPointError(f"restart {r}, step {step}: the objective became {float(obj)}; "
                                             "lower lr or use bounds")
                grads = torch.autograd.grad(obj, variables)
                for v, g in zip(variables, grads):
                    v.grad = g.sign()
                opt.step()
                sched.step()
                if bounds is not None:
                    with torch.no_grad():
                        x.clamp_(lo, hi)
                history.append(float(obj.detach()))
                if progress is not None and (step % progress_every == 0 or step == steps - 1):
                    progress(r, step, history[-1])
            # score the final point
            with torch.no_grad():
                y = current_labels(x.detach())
            final_dist = _final_distance(model, plist, x.detach(), y.detach(), target, distance)
            final = final_dist + (tv_weight * float(total_variation(x.detach().abs() if prior == "tv-abs" else x.detach()))
                                  if tv_weight else 0.0)
            restart_losses.append(final)
            if best is None or final < best[0]:
                best = (final, r, x.detach().clone(), y.detach().clone(), history, final_dist)
    _, r, x, y, history, final_dist = best
    return GradientInversionResult(x, y, label_source, history, r, restart_losses, final_dist)


def _final_distance(model, plist, x, y, target, distance) -> float:
    x = x.clone().requires_grad_(False)
    loss = soft_cross_entropy(model(x), y)
    return float(gradient_distance(_param_grads(loss, plist), target, distance))
