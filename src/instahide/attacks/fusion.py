"""Luo et al.'s fusion-and-denoising attack on InstaHide (AAAI 2022; docs/fusion.md): given the
encryptions that a clustering step grouped as sharing one private image, a network fuses the set and
outputs that image.

:class:`FusionNet` is permutation-invariant over the set: a small encoder shared by every encryption
(its ``|e|`` and the label's coefficient of the group's class), mean and standard deviation of the
features across the set, then a U-Net decoder to one image. ``|e|`` carries no sign, so the sign of
every output pixel is what the network learned from natural images. :func:`train_fusion_network`
trains it only on the attacker's OWN images, encrypted by the attacker with the challenge's public
parameters (and augmentation) through :func:`instahide.challenge.make_challenge` and its own public
pool, where the groups are known. :func:`fusion_attack` decodes the groups of a challenge, from
Carlini et al.'s clustering (``CarliniResult.clusters``) or, as an upper bound, from the truth
(:func:`true_groups`).

Example::

    net, log = train_fusion_network(own.images, own.labels, own_pool.images, T=50, k=6, num_private=2,
                                    augment_padding=4, steps=800)
    res = fusion_attack(encryption, label, carlini_result.clusters, net)
    res.decryption.shape   # (N, C, H, W)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..challenge import make_challenge
from ..scheme import KeyGenerator
from ..scheme.defaults import DOM, UPPER
from .carlini import label_support, true_member_sets
from .inputs import as_array, check_attacker_data, check_count, check_encryption, check_label

__all__ = ["FusionNet", "FusionResult", "train_fusion_network", "fusion_attack", "true_groups"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class FusionNet(nn.Module):
    """``(S, C, H, W)`` magnitudes and ``(S,)`` coefficients of one set -> the image ``(C, H, W)``, in
    [-1, 1] in eval mode; batched, ``(B, S, C, H, W)`` and ``(B, S)`` -> ``(B, C, H, W)``. The output does not
    depend on the order of the set (mean and standard deviation pooling)."""

    def __init__(self, channels: int = 3, width: int = 16, decoder_width: int = 24):
        super().__init__()
        self.channels, self.width, self.decoder_width = int(channels), int(width), int(decoder_width)
        w, d = self.width, self.decoder_width
        self.encoder = nn.Sequential(nn.Conv2d(channels + 1, w, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(w, w, 3, padding=2, dilation=2), nn.ReLU(),
                                     nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
        self.down = nn.ModuleList([_block(2 * w + channels, d), _block(d, 2 * d), _block(2 * d, 2 * d),
                                   _block(2 * d, 2 * d)])
        self.up = nn.ModuleList([_block(4 * d, 2 * d), _block(4 * d, d), _block(2 * d, d)])
        self.out = nn.Conv2d(d, channels, 1)

    def forward(self, magnitude: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
        single = isinstance(magnitude, torch.Tensor) and magnitude.dim() == 4
        x, lam = self._check(magnitude, coefficient)
        b, s, c, h, w = x.shape
        lam_plane = lam.reshape(b * s, 1, 1, 1).expand(b * s, 1, h, w)
        f = self.encoder(torch.cat([x.reshape(b * s, c, h, w), lam_plane], 1)).reshape(b, s, self.width, h, w)
        mean = f.mean(1)
        std = (f.pow(2).mean(1) - mean.pow(2)).clamp_min(0).add(1e-6).sqrt()
        z, skips = torch.cat([mean, std, x.mean(1)], 1), []
        for i, block in enumerate(self.down):
            z = block(z if i == 0 else F.avg_pool2d(z, 2, ceil_mode=True))
            skips.append(z)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            z = block(torch.cat([F.interpolate(z, size=skip.shape[-2:], mode="nearest"), skip], 1))
        out = self.out(z)
        out = out if self.training else out.clamp(-1, 1)  # unclamped in training: no saturated gradient
        return out[0] if single else out

    def _check(self, magnitude, coefficient) -> tuple[torch.Tensor, torch.Tensor]:
        for name, t in (("magnitude", magnitude), ("coefficient", coefficient)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be floating point, got {t.dtype}")
        if magnitude.dim() not in (4, 5) or magnitude.shape[-3] != self.channels:
            raise ValueError(f"Invalid magnitude shape, expected (S, {self.channels}, H, W) or "
                             f"(B, S, {self.channels}, H, W). Got: {tuple(magnitude.shape)}")
        x = magnitude if magnitude.dim() == 5 else magnitude[None]
        lam = coefficient if coefficient.dim() == 2 else coefficient[None]
        if tuple(lam.shape) != tuple(x.shape[:2]):
            raise ValueError(f"coefficient must be (S,) or (B, S) matching the magnitudes' {tuple(x.shape[:2])}, "
                             f"got {tuple(coefficient.shape)}")
        if x.shape[1] < 1:
            raise ValueError("empty set: give at least one encryption")
        if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(lam).all()):
            raise ValueError("magnitude or coefficient contains NaN or Inf")
        p = next(self.parameters())
        return x.to(p), lam.to(p)


def _group_inputs(label: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """The coefficients ``(S,)`` of a group's rows for the network, and the group's class: the class
    most of its rows' labels hold (ties: the larger label mass), and per row its label mass there."""
    support = label_support(label[rows])
    cls = int(np.argmax(support.sum(0) + 1e-6 * label[rows].sum(0)))
    return label[rows, cls].astype(np.float32), cls


@dataclass
class FusionResult:
    """What :func:`fusion_attack` returns.

    Attributes:
        decryption: float32 ``(N, C, H, W)``: per row, the recovered image of the group it belongs to
            that its ``|e|`` correlates with best (among all groups for a row in none).
        recovered: float32 ``(m, C, H, W)``, one image per group.
        group_class: int64 ``(m,)``, each group's class read off the labels.
        row_group: int64 ``(N,)``, the group each row's decryption comes from.
    """

    decryption: np.ndarray
    recovered: np.ndarray
    group_class: np.ndarray
    row_group: np.ndarray
    info: dict = field(default_factory=dict)


def _check_groups(groups, n_rows: int) -> list[np.ndarray]:
    if isinstance(groups, (np.ndarray, torch.Tensor)) and np.ndim(groups) != 2 or isinstance(groups, (str, bytes)):
        raise TypeError("groups must be a list of row-index arrays (one per private image)")
    try:
        groups = [as_array(g, "groups") for g in groups]
    except TypeError:
        raise TypeError("groups must be a list of row-index arrays (one per private image)") from None
    if not groups:
        raise ValueError("groups is empty: give at least one group of rows")
    out = []
    for j, g in enumerate(groups):
        if g.ndim != 1 or g.size == 0 or not np.issubdtype(g.dtype, np.integer):
            raise ValueError(f"group {j} must be a non-empty 1-D array of integer row indices, got "
                             f"dtype {g.dtype} shape {g.shape}")
        if g.min() < 0 or g.max() >= n_rows:
            raise ValueError(f"group {j} has row indices outside [0, {n_rows}): {int(g.min())}..{int(g.max())}")
        out.append(g.astype(np.int64))
    return out


def _centred(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1)
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fusion_attack(encryption, label, groups, network: FusionNet) -> FusionResult:
    """Decode every group of rows with ``network`` (module docstring).

    Args:
        encryption: ``(N, C, H, W)`` float encryptions (any row order).
        label: ``(N, classes)`` leaked labels.
        groups: one array of row indices per private image (e.g. ``CarliniResult.clusters``, or
            :func:`true_groups` as an upper bound).
        network: a :class:`FusionNet` trained by :func:`train_fusion_network` for this scheme.
    """
    if not isinstance(network, FusionNet):
        raise TypeError(f"network must be a FusionNet (train_fusion_network), got {type(network).__name__}")
    enc = check_encryption(encryption, "encryption")
    lab = check_label(label, len(enc))
    if enc.shape[1] != network.channels:
        raise ValueError(f"the network is for {network.channels} channels, the encryptions have {enc.shape[1]}")
    groups = _check_groups(groups, len(enc))
    mag = np.abs(enc).astype(np.float32)
    network.eval()
    rec, cls = [], []
    with torch.no_grad():
        for g in groups:
            lam, c = _group_inputs(lab, g)
            rec.append(network(torch.from_numpy(mag[g]), torch.from_numpy(lam)).cpu().numpy())
            cls.append(c)
    rec = np.stack(rec).astype(np.float32)
    corr = _centred(mag) @ _centred(np.abs(rec)).T            # (N, m): |e| against each |recovered|
    member = np.zeros(corr.shape, dtype=bool)
    for j, g in enumerate(groups):
        member[g, j] = True
    member[~member.any(1)] = True                              # rows in no group: any group
    row_group = np.argmax(np.where(member, corr, -np.inf), axis=1)
    return FusionResult(rec[row_group], rec, np.array(cls, np.int64), row_group.astype(np.int64),
                        {"group_sizes": [len(g) for g in groups]})


def true_groups(indices, num_private: int, n_private: int) -> list[np.ndarray]:
    """From the TRUTH (an upper bound, not an attack): per private image, the rows holding it in one of
    the ``num_private`` private slots (``indices`` ``(N, k)``, e.g. ``ChallengeTruth.indices``)."""
    members = true_member_sets(indices, num_private, n_private)
    return [np.nonzero(members[:, i])[0] for i in range(n_private)]


def train_fusion_network(
    attacker_images,
    attacker_labels,
    attacker_public=None,
    *,
    T: int,  # noqa: N803 - the paper's name
    k: int,
    num_private: int,
    upper: float = UPPER,
    dom: float = DOM,
    scaling: str = "pm1",
    augment_padding: int | None = None,
    steps: int = 1000,
    batch_images: int = 8,
    max_set: int = 32,
    width: int = 16,
    decoder_width: int = 24,
    lr: float = 2e-3,
    num_classes: int | None = None,
    seed: int = 0,
    progress=None,
) -> tuple[FusionNet, list[dict]]:
    """Train a :class:`FusionNet` on the attacker's OWN images (module docstring).

    Every step makes a small challenge of ``batch_images`` of them (``make_challenge`` with the
    challenge's public parameters, the attacker's pool ``attacker_public`` for the public slots, the
    same ``augment_padding``, keys and crops from ``seed``) and trains on each image's group (the
    rows holding it in a private slot), cut to ``s`` rows, ``s`` drawn per step from
    ``[2, min(2 * T, max_set)]`` (a group of a ``T``-epoch challenge has about ``2 T`` rows; pooling by
    mean and deviation carries over to larger sets), against the image itself (L1). Returns the
    network (eval mode) and a log of ``{"step", "loss", "seconds"}`` every 50 steps.
    """
    T, k, num_private, steps, batch_images, max_set = (check_count(v, name) for v, name in (
        (T, "T"), (k, "k"), (num_private, "num_private"), (steps, "steps"), (batch_images, "batch_images"),
        (max_set, "max_set")))
    a_img = np.asarray(attacker_images)
    a_img, a_lab, a_pub = check_attacker_data(a_img, attacker_labels, attacker_public,
                                              tuple(a_img.shape[1:]) if a_img.ndim == 4 else (), num_private, k)
    if batch_images < 2 or batch_images > len(a_img):
        raise ValueError(f"batch_images must be in [2, {len(a_img)}] (the attacker's images), got {batch_images}")
    num_classes = int(a_lab.max()) + 1 if num_classes is None else int(num_classes)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = KeyGenerator.from_seed(f"fusion-attacker-training-{seed}")
    net = FusionNet(a_img.shape[1], width, decoder_width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    top = max(2, min(2 * T, max_set))
    log, t0, running = [], time.perf_counter(), 0.0
    net.train()
    for step in range(steps):
        s = int(rng.integers(2, top + 1))
        sel = rng.choice(len(a_img), batch_images, replace=False)
        enc, lab, truth = make_challenge(
            a_img[sel], a_lab[sel], a_pub, T=(s + 1) // 2 + 1, k=k, num_private=num_private if a_pub is not None
            else None, upper=upper, dom=dom, scaling=scaling, generator=gen, num_classes=num_classes,
            augment_padding=augment_padding, augment_seed=None if augment_padding is None else int(rng.integers(2**62)),
            allow_uncentred=True)  # the attacker's own small batches: no centring guard (make_challenge)
        mag = np.abs(enc)
        rows = [rng.choice(g, s, replace=len(g) < s) for g in true_groups(truth.indices, truth.num_private, len(sel))]
        lam = np.stack([_group_inputs(lab, r)[0] for r in rows])
        out = net(torch.from_numpy(mag[np.stack(rows)]), torch.from_numpy(lam))
        loss = F.l1_loss(out, torch.from_numpy(truth.private))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            entry = {"step": step + 1, "loss": running / ((step % 50) + 1), "seconds": time.perf_counter() - t0}
            log.append(entry)
            running = 0.0
            if progress:
                progress("train_fusion", entry)
    net.eval()
    return net, log
