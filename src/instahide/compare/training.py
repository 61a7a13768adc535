"""Training one model of one method on one half of the pool, with the engine of ``instahide train``
(:func:`~instahide.train.recipe.epoch_inputs`, :func:`~instahide.train.engine.make_optimizer`,
:func:`~instahide.train.engine.train_epoch`, :func:`~instahide.train.evaluate`), and DP-SGD through
Opacus (optional extra ``dp``, imported where used): per-sample clipping, Gaussian noise and Poisson
sampling as Opacus's ``PrivacyEngine.make_private`` does them, the noise set by its accountant for
the target epsilon at ``delta``.

The halves: :func:`member_splits` puts every pool image in exactly half of the ``M`` models (the
same halves for every method); model ``m`` trains on ``members[m]`` and never sees the rest, which
are its non-members for membership inference.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.membership import logit_confidence, loss_scores
from ..train import TrainConfig, TrainData, build_model, derive_seed, evaluate, make_optimizer, train_epoch
from ..train.engine import augment_for, index_batches, model_for, seeded, sign_invariant_for
from ..train.recipe import epoch_inputs
from .config import CompareConfig, Method

__all__ = ["member_splits", "group_norm", "dp_noise", "train_member_model", "build_network"]


def member_splits(n: int, models: int, seed: int) -> np.ndarray:
    """bool ``(models, n)``: which of ``n`` pool images each model trains on. Every image is in exactly
    ``models // 2`` models (``(models + 1) // 2`` for every other image when ``models`` is odd), drawn
    at random from ``seed``; every model gets about half of the pool."""
    if models < 2 or n < 2:
        raise ValueError(f"need models >= 2 and n >= 2, got models={models}, n={n}")
    rng = np.random.default_rng(derive_seed(seed, "compare", "splits"))
    member = np.zeros((models, n), dtype=bool)
    for i in range(n):
        take = models // 2 if models % 2 == 0 or i % 2 == 0 else (models + 1) // 2
        member[rng.permutation(models)[:take], i] = True
    return member


def group_norm(model: nn.Module) -> nn.Module:
    """``model`` with every ``BatchNorm2d(C)`` replaced by ``GroupNorm(gcd(32, C), C)`` (what Opacus's
    ``ModuleValidator.fix`` does, with a group count that always divides C) and in-place activations
    made out-of-place (Opacus's backward hooks refuse them; the outputs are the same), in place;
    returned."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(model, name, nn.GroupNorm(math.gcd(32, c), c, affine=child.affine))
        else:
            if getattr(child, "inplace", False):
                child.inplace = False
            group_norm(child)
    return model


def build_network(cfg: CompareConfig, method: Method, num_classes: int, in_channels: int) -> nn.Module:
    """The network every method trains (``|x|`` first for InstaHide rows, as ``instahide train``)."""
    net = build_model(model_for(cfg.model, in_channels), num_classes, in_channels, cfg.width,
                      sign_invariant=sign_invariant_for("auto", method.mode))
    return group_norm(net) if cfg.norm == "group" else net


def dp_noise(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The noise multiplier Opacus's accountant (``rdp`` or ``prv``) gives for ``(epsilon, delta)``
    after ``steps`` steps of the sampled Gaussian mechanism at ``sample_rate`` (needs ``opacus``)."""
    try:
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError as exc:
        raise ImportError('the DP-SGD rows need Opacus: pip install "instahide[dp]"') from exc
    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=accountant))


def _train_config(cfg: CompareConfig, method: Method, index: int) -> TrainConfig:
    scheme = method.scheme(cfg.public)
    lr = cfg.dp_lr if method.dp and cfg.dp_lr is not None else cfg.lr
    return TrainConfig(dataset=cfg.dataset, root=cfg.root, model=cfg.model, width=cfg.width, scheme=scheme,
                       epochs=cfg.epochs, batch_size=cfg.batch_size, lr=lr, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, recipe=cfg.recipe, augment=cfg.augment,
                       research_seed=derive_seed(cfg.seed, "compare", index), progress=False).validate()


def train_member_model(cfg: CompareConfig, method: Method, data: TrainData, member: np.ndarray, index: int,
                       delta: float | None = None) -> dict:
    """Train model ``index`` of ``method`` on the pool images ``member`` (bool ``(N,)``) of ``data``
    (the whole pool in ``x_train``), then score it.

    Returns a dict: ``accuracy`` (clean test accuracy), ``epoch_seconds`` (list), ``phi`` and ``loss``
    (float64 ``(N,)``: LiRA's logit-scaled confidence and minus the loss of every pool image, members
    and not), and for DP rows ``epsilon`` (Opacus's accountant after training), ``delta``,
    ``noise_multiplier``, ``sample_rate``, ``steps``, ``accountant``, ``max_grad_norm``.
    """
    idx = torch.as_tensor(np.flatnonzero(member), device=data.x_train.device)
    sub = dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx],
                              public=data.public if method.cross else None)
    n = len(sub.x_train)
    if method.mode != "vanilla" and n < method.scheme(cfg.public).private_slots:
        raise ValueError(f"{method.name}: {n} training images are too few for k={method.k}")
    tcfg = _train_config(cfg, method, index)
    torch.manual_seed(derive_seed(tcfg.research_seed, "init"))  # the same initial weights for every method
    c = sub.x_train.shape[1]
    net = build_network(cfg, method, data.num_classes, c).to(sub.x_train.device)
    opt, sched = make_optimizer(net, tcfg)
    augment = augment_for(cfg.augment, sub.x_train.shape[1:], data.mean, data.std)
    onehot = F.one_hot(sub.y_train, data.num_classes).float()
    buffer = torch.empty_like(sub.x_train) if method.mode != "vanilla" else None
    short = cfg.recipe == "short"
    out: dict = {}
    model, step_opt, loader = net, opt, None
    if method.dp:
        model, step_opt, loader, out = _make_private(cfg, method, net, opt, sub, tcfg, delta)
    times = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="opacus")
        warnings.filterwarnings("ignore", message=".*[Ss]ecure.*")
        warnings.filterwarnings("ignore", message=".*full_backward_hook.*")
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            xs, ys = epoch_inputs(tcfg, sub, epoch, augment, onehot, out=buffer)
            if short:  # label smoothing 0.1, keeping each row's label mass (as instahide train)
                ys = 0.9 * ys + 0.1 * ys.sum(1, keepdim=True) / data.num_classes
            if loader is None:
                order = torch.randperm(n, generator=seeded(tcfg.research_seed, epoch, "order")).to(xs.device)
                batches = index_batches(xs, ys, order, cfg.batch_size)
            else:  # Opacus's Poisson batches over this epoch's rows (the loader reads these tensors)
                loader.dataset.tensors[0].copy_(xs)
                loader.dataset.tensors[1].copy_(ys)
                batches = ((xb, yb, 1.0 / max(len(xb), 1)) for xb, yb in loader)
            train_epoch(model, step_opt, batches)
            sched.step()
            times.append(time.perf_counter() - t0)
    if method.dp:
        out["epsilon"] = float(out.pop("engine").get_epsilon(out["delta"]))
    test = evaluate(net, data.x_test, data.y_test, flip=short and augment is not None)
    phi = logit_confidence(net, data.x_train, data.y_train).numpy()
    loss = loss_scores(net, data.x_train, data.y_train).numpy()
    return {"accuracy": float(test["accuracy"]), "epoch_seconds": times, "train_images": n, "phi": phi,
            "loss": loss, **out}


def _make_private(cfg: CompareConfig, method: Method, net, opt, sub: TrainData, tcfg: TrainConfig, delta):
    """Opacus's ``make_private`` around the network, optimiser and a loader over this epoch's rows."""
    try:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator
    except ImportError as exc:
        raise ImportError('the DP-SGD rows need Opacus: pip install "instahide[dp]"') from exc
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        raise ValueError(f"{method.name}: Opacus cannot compute per-sample gradients of this network: {errors[0]}")
    n = len(sub.x_train)
    rows = torch.utils.data.TensorDataset(torch.empty_like(sub.x_train),
                                          torch.empty(n, sub.num_classes, device=sub.x_train.device))
    loader = torch.utils.data.DataLoader(rows, batch_size=cfg.batch_size,
                                         generator=seeded(tcfg.research_seed, "poisson") or torch.Generator())
    sample_rate = 1 / len(loader)  # what make_private's Poisson loader uses
    steps = cfg.epochs * len(loader)
    delta = float(delta if delta is not None else 1.0 / n)
    sigma = dp_noise(method.epsilon, delta, sample_rate, steps, cfg.accountant)
    noise = seeded(tcfg.research_seed, "dp-noise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus's notice that its secure RNG is off (research runs)
        engine = PrivacyEngine(accountant=cfg.accountant)
        model, dp_opt, dp_loader = engine.make_private(module=net, optimizer=opt, data_loader=loader,
                                                       noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm,
                                                       poisson_sampling=True, noise_generator=noise)
    info = {"engine": engine, "delta": delta, "noise_multiplier": sigma, "sample_rate": sample_rate, "steps": steps,
            "accountant": cfg.accountant, "max_grad_norm": cfg.max_grad_norm, "target_epsilon": method.epsilon}
    return model, dp_opt, dp_loader, info
