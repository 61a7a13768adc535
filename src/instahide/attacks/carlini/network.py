"""Step 2 of Carlini et al.'s attack: a network that says whether two encryptions share a private image.

A SIAMESE design (not Carlini's WideResNet on the 6-channel pair): an encoder ``f(|x|)`` shared by
both sides maps every magnitude to a unit-norm embedding once, and a pair's logit is
``scale * <f(a), f(b)> + bias``, so all ``N^2`` pairs are one product (:meth:`PairNet.logit_matrix`).
The encoder ``h + g(h)`` (``h`` the high-passed ``|e|``, ``g``'s last layer zero at initialisation)
starts as the hand-made correlation of high-passed magnitudes. It trains on the attacker's own
encryptions of its own images (:class:`EncryptionSampler`), all positive pairs of a batch against as
many hard negatives (labels share a class, not an image). Design and measurements: docs/carlini.md.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..._io import atomic_open
from ...scheme import KeyGenerator, encrypt
from ..demix import gaussian_kernel, highpass
from .config import CarliniConfig

__all__ = ["PairNetConfig", "PairNet", "SignNet", "EncryptionSampler", "train_pair_network",
           "save_pair_network", "load_pair_network", "train_sign_network", "embed", "PAIRNET_FORMAT"]

PAIRNET_FORMAT = "instahide-carlini-pairnet/1"


@dataclass
class PairNetConfig:
    """Architecture (image shape; ``width_mult``, ``depth``, ``sigma`` as in :class:`CarliniConfig`;
    ``input_scale``: the mean ``|e|`` of the training encryptions, divided out) and ``scheme``, the public
    parameters it was trained for (checked when it is reused on another challenge)."""

    channels: int
    height: int
    width: int
    width_mult: int = 16
    depth: int = 4
    sigma: float = 1.0
    input_scale: float = 1.0
    scheme: dict = field(default_factory=dict)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PairNet(nn.Module):
    """Siamese pair-similarity network on magnitudes ``(B, C, H, W)``: ``f = h + g(h)``, ``h`` the
    high-passed ``|e| / input_scale``, ``g`` ``depth`` dilated 3x3 convs (last layer zero at first),
    flattened, centred and normalised; ``logit = scale * <f(a), f(b)> + bias``."""

    def __init__(self, config: PairNetConfig):
        super().__init__()
        self.config = config
        c, w = config.channels, config.width_mult
        layers, cin = [], c
        for i in range(config.depth):
            dil = (1, 2, 4)[i % 3]
            layers += [nn.Conv2d(cin, w, 3, padding=dil, dilation=dil), nn.ReLU(inplace=True)]
            cin = w
        last = nn.Conv2d(cin, c, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.g = nn.Sequential(*layers, last)
        self.register_buffer("kernel", gaussian_kernel(config.sigma) if config.sigma > 0 else torch.ones(1))
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-2.0))

    def embed(self, magnitude: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` magnitudes ``|e|`` -> ``(B, C*H*W)`` unit-norm embeddings."""
        h = highpass(magnitude / self.config.input_scale, self.config.sigma, self.kernel)
        f = (h + self.g(h)).flatten(1)
        f = f - f.mean(1, keepdim=True)
        return f / (f.norm(dim=1, keepdim=True) + 1e-8)

    def logit_matrix(self, fa: torch.Tensor, fb: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of all pairs: ``(Na, D), (Nb, D) -> (Na, Nb)`` (``fb`` defaults to ``fa``)."""
        fb = fa if fb is None else fb
        return self.scale * (fa @ fb.T) + self.bias

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` that ``a[i]`` and ``b[i]`` (magnitudes ``(B, C, H, W)``) share a private image."""
        return self.scale * (self.embed(a) * self.embed(b)).sum(1) + self.bias


class SignNet(nn.Module):
    """Tiny CNN telling a natural image ``x`` (logit > 0) from ``-x`` (logit < 0), ``(B, C, H, W)``: the
    global sign ``|e|`` cannot give, from the attacker's OWN images (never the attacked ones)."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, width, 1), _conv(width, 2 * width, 2), _conv(2 * width, 2 * width, 2),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(1)


# -- training data: the attacker's own InstaHide ---------------------------------------------------
class EncryptionSampler:
    """Fresh training encryptions of the attacker's own images ``(M, C, H, W)`` (challenge units; labels
    ``(M,)``; ``public`` ``(P, C, H, W)`` or None; the scheme as keywords). :meth:`batch` returns
    ``magnitude (R, C, H, W)``, bool ``members (R, m)`` (which drawn images each row holds privately) and
    bool ``support (R, classes)`` (its label's classes), ``R = batch_images * batch_epochs``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, public: torch.Tensor | None, *, k: int,
                 num_private: int, upper: float, dom: float, mode: str, num_classes: int, allow_uncentred: bool,
                 seed: int = 0):
        self.images, self.labels, self.public = images, labels.long(), public
        self.kw = dict(k=k, upper=upper, mode=mode, public=public, num_private=num_private if public is not None else None,
                       dom=dom, num_classes=num_classes, allow_uncentred=allow_uncentred)
        self.num_private = num_private
        self.gen = KeyGenerator.from_seed(f"carlini-attacker-training-{seed}")
        self.rng = np.random.default_rng(seed)

    def batch(self, batch_images: int, batch_epochs: int):
        m = min(batch_images, len(self.images))
        sel = torch.from_numpy(self.rng.choice(len(self.images), m, replace=False))
        x, y = self.images[sel], self.labels[sel]
        mags, members, support = [], [], []
        for _ in range(batch_epochs):
            enc = encrypt(x, y, generator=self.gen, return_key=True, **self.kw)
            mags.append(enc.images.abs())
            idx = enc.key.indices[:, :self.num_private]
            mem = torch.zeros(m, m, dtype=torch.bool)
            mem[torch.arange(m)[:, None], idx] = True
            members.append(mem)
            support.append(enc.soft_labels > 1e-6)
        return torch.cat(mags), torch.cat(members), torch.cat(support)


def _pair_targets(members: torch.Tensor, support: torch.Tensor, rng: np.random.Generator):
    """Positive pairs (share a private image) and as many hard negatives (share a label class, no
    image) of one batch, as a weight matrix over the ``(R, R)`` logit matrix and the targets."""
    mf = members.float()
    share = (mf @ mf.T) > 0
    compat = (support.float() @ support.float().T) > 0
    off = ~torch.eye(len(members), dtype=torch.bool)
    pos = share & off
    neg = compat & ~share & off
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    weight = pos.float()
    if n_neg:
        keep = torch.from_numpy(rng.random(neg.shape) < min(1.0, n_pos / n_neg))
        weight = weight + (neg & keep).float()
    return pos.float(), weight


def embed(network: PairNet, magnitude: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Embeddings ``(N, D)`` of magnitudes ``(N, C, H, W)`` in eval mode, in batches, on the
    network's device."""
    network.eval()
    dev = next(network.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(magnitude), batch):
            out.append(network.embed(magnitude[s:s + batch].float().to(dev)))
    return torch.cat(out)


def train_pair_network(sampler: EncryptionSampler, config: CarliniConfig = CarliniConfig(), *,
                       scheme: dict | None = None, network: PairNet | None = None,
                       progress=None) -> tuple[PairNet, list[dict]]:
    """Train a :class:`PairNet` on fresh encryptions from ``sampler`` for ``config.train_steps`` steps
    (AdamW, cosine learning rate; ``config.train_time_s`` stops earlier) on ``config.device``.
    ``scheme``: the public parameters stored in it; ``network``: continue training it. Returns the
    network (eval mode) and a log (every 25 steps: step, loss, pair accuracy on the batch, seconds)."""
    steps, device = config.train_steps, config.device
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + 1)
    if network is None:
        c, h, w = sampler.images.shape[1:]
        with torch.no_grad():
            scale = float(sampler.batch(min(64, len(sampler.images)), 2)[0].mean()) or 1.0
        network = PairNet(PairNetConfig(c, h, w, config.width_mult, config.depth, config.sigma, scale,
                                        dict(scheme or {})))
    network = network.to(device)
    opt = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    log, t0 = [], time.perf_counter()
    run_loss = run_acc = 0.0
    for step in range(steps):
        network.train()
        mag, members, support = sampler.batch(config.batch_images, config.batch_epochs)
        target, weight = _pair_targets(members, support, rng)
        mag, target, weight = mag.to(device), target.to(device), weight.to(device)
        f = network.embed(mag)
        logits = network.logit_matrix(f)
        loss = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            acc = float((((logits > 0).float() == target).float() * weight).sum() / weight.sum())
        run_loss, run_acc = 0.9 * run_loss + 0.1 * float(loss.detach()), 0.9 * run_acc + 0.1 * acc
        elapsed = time.perf_counter() - t0
        if (step + 1) % 25 == 0 or step == steps - 1:
            corr = 1 - 0.9 ** (step + 1)
            entry = {"step": step + 1, "loss": run_loss / corr, "batch_pair_acc": run_acc / corr, "seconds": elapsed}
            log.append(entry)
            if progress is not None:
                progress("train", entry)
        if config.train_time_s is not None and elapsed > config.train_time_s:
            break
    network.eval()
    return network, log


def train_sign_network(images: torch.Tensor, *, steps: int = 300, batch: int = 128, width: int = 16,
                       noise: float = 0.3, seed: int = 0) -> SignNet:
    """Train a :class:`SignNet` on the attacker's own images ``(M, C, H, W)`` (centred units): half of
    each batch negated, with Gaussian noise of std ``noise`` x the images' std and a random
    brightness/contrast jitter, so it also works on noisy reconstructions."""
    torch.manual_seed(seed)
    net = SignNet(images.shape[1], width)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    std = float(images.std())
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        net.train()
        sel = torch.randint(len(images), (batch,), generator=g)
        x = images[sel].float()
        x = x * (0.6 + 0.8 * torch.rand(batch, 1, 1, 1, generator=g))
        x = x + noise * std * torch.randn(x.shape, generator=g)
        flip = torch.rand(batch, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], -x, x)
        loss = F.binary_cross_entropy_with_logits(net(x), (~flip).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    return net


# -- save / load -----------------------------------------------------------------------------------
def save_pair_network(network: PairNet, path) -> Path:
    """``torch.save`` of ``{"format", "config", "state_dict"}`` (plain types only), atomically."""
    path = Path(path)
    with atomic_open(path) as fh:
        torch.save({"format": PAIRNET_FORMAT, "config": asdict(network.config),
                    "state_dict": network.state_dict()}, fh)
    return path


def load_pair_network(path) -> PairNet:
    """Load a network written by :func:`save_pair_network` (``weights_only=True``: no code runs)."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no pair network at {path}") from None
    except Exception as exc:
        raise ValueError(f"cannot read pair network {path}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != PAIRNET_FORMAT:
        raise ValueError(f"{path} is not an instahide Carlini pair network ({PAIRNET_FORMAT})")
    net = PairNet(PairNetConfig(**blob["config"]))
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return net

