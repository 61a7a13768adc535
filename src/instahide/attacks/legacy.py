"""Legacy challenges (docs/carlini.md, "Legacy challenges"): the recurring public images as unknowns.

A challenge made by the reference code (``challenge make --legacy``) draws its public partners from a
window of ``n`` pool images, so each of them sits in ``(k - num_private) * T`` rows (200 at T = 50,
k = 6): ``n`` more unknown images, recurring twice as often as the private ones. Given the private
assignment and coefficients of every row (Carlini et al.'s pipeline, or the truth for a yardstick),
:func:`solve_recurring_public` fits, in the ``|e|`` domain, the private images, the ``n_public``
public images and every row's public coefficients at once::

    |e_r| ~ | sum_s c_rs x_{a_rs} + sum_m b_rm p_m |,   b_r = P_r * softmax(l_r)  (P_r: the label's public mass)

by Adam on the mean squared error, with an entropy penalty ramped up after a warm start (each row
holds only ``k - num_private`` public images: the soft memberships must become sparse, else any
stochastic mixing of the public images fits as well) and duplicates re-seeded from the worst-fitted
rows' residual. :func:`public_slots` reads each row's top public images off the memberships, and
:func:`legacy_decode` hands them, with the private keys, to the oracle solver with the public images
as unknowns (``oracle_decode(public_model="solve")``). The truth is never read here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .inputs import as_array, check_count, check_encryption, check_key_arrays
from .oracle import OracleResult, oracle_decode

__all__ = ["RecurringPublic", "solve_recurring_public", "public_slots", "legacy_decode"]


@dataclass
class RecurringPublic:
    """What :func:`solve_recurring_public` returns.

    Attributes:
        public: ``(n_public, C, H, W)`` float32 recovered public images (their order is arbitrary).
        membership: ``(N, n_public)`` float32 public coefficients of every row (each row sums to its
            public mass).
        private: ``(m, C, H, W)`` float32 private images (the start, refined when ``joint_private``).
        loss: final mean squared error of the magnitudes; ``reseeded``: step -> re-seeded components.
    """

    public: np.ndarray
    membership: np.ndarray
    private: np.ndarray
    loss: float
    reseeded: dict = field(default_factory=dict)
    log: list = field(default_factory=list)


def _duplicates(p: np.ndarray, usage: np.ndarray, threshold: float) -> list[int]:
    """Components ``p (P, d)`` whose |correlation| with another exceeds ``threshold``: the less used of
    each such pair."""
    c = np.abs(np.corrcoef(p))
    np.fill_diagonal(c, 0.0)
    out: set[int] = set()
    for a, b in zip(*np.nonzero(np.triu(c > threshold))):
        if a not in out and b not in out:
            out.add(int(a) if usage[a] < usage[b] else int(b))
    return sorted(out)


def solve_recurring_public(
    encryption,
    assignment,
    coefficients,
    private_init,
    public_mass,
    *,
    n_public: int,
    steps: int = 2500,
    lr: float = 0.02,
    entropy: float = 0.1,
    warm_steps: int = 300,
    ramp_steps: int = 1000,
    reseed_every: int = 300,
    reseed_from: int = 1300,
    duplicate_threshold: float = 0.8,
    joint_private: bool = False,
    trim: float = 1.0,
    seed: int = 0,
    progress=None,
) -> RecurringPublic:
    """Fit the recurring public images and every row's public coefficients (module docstring).

    Args:
        encryption: ``(N, C, H, W)`` encryptions (only ``|e|`` is used).
        assignment: ``(N, num_private)`` int, the private image (cluster) of every private slot.
        coefficients: ``(N, num_private)`` their coefficients (e.g. read off the label).
        private_init: ``(m, C, H, W)`` the private images (signed, one global sign), e.g. the oracle
            solver's or the pipeline's; kept fixed unless ``joint_private``.
        public_mass: ``(N,)`` each row's public mass ``1 - sum(label)``.
        n_public: number of distinct public images (``n`` for the reference code's window).
        steps, lr: Adam steps and learning rate. ``entropy``: weight of the memberships' mean entropy
            (in units of the variance of ``|e|``), 0 for ``warm_steps`` then ramped linearly over
            ``ramp_steps``. ``reseed_every`` (0: never), from step ``reseed_from`` up to 80% of
            ``steps``: a component correlated above
            ``duplicate_threshold`` with another is re-seeded with a principal direction of the signed
            residual of the 100 worst-fitted rows.
        joint_private: also refine the private images. ``trim``: fit only the rows whose error is at
            most this quantile (1: all rows; below 1 discounts rows whose private keys are wrong).
        seed: the public images' random start. ``progress``: ``callable(step, dict)`` every 250 steps.

    Returns:
        :class:`RecurringPublic`.
    """
    enc = check_encryption(encryption, "encryption")
    n_rows, shape = enc.shape[0], enc.shape[1:]
    n_public = check_count(n_public, "n_public")
    a_idx = np.asarray(assignment)
    if a_idx.ndim != 2 or len(a_idx) != n_rows:
        raise ValueError(f"assignment must be (N={n_rows}, num_private), got shape {a_idx.shape}")
    m = int(a_idx.max()) + 1 if a_idx.size else 0
    x0 = as_array(private_init, "private_init").astype(np.float64)
    if x0.ndim != 4 or x0.shape[1:] != shape or len(x0) < m or not np.all(np.isfinite(x0)):
        raise ValueError(f"private_init must be finite (>= {m}, {', '.join(map(str, shape))}), got {x0.shape}")
    idx, lam = check_key_arrays(a_idx, coefficients, a_idx.shape[1], len(x0), n_rows)
    mass = np.asarray(public_mass, dtype=np.float64).reshape(-1)
    if len(mass) != n_rows or not np.all(np.isfinite(mass)) or np.any(mass < 0):
        raise ValueError(f"public_mass must be {n_rows} finite values >= 0, got shape {mass.shape}")
    if not 0.0 < trim <= 1.0:
        raise ValueError(f"trim must be in (0, 1], got {trim}")
    gen = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    mag = torch.from_numpy(np.abs(enc).reshape(n_rows, d)).float()
    scale = float(mag.std())
    at, ct = torch.from_numpy(idx).long(), torch.from_numpy(lam).float()
    mt = torch.from_numpy(mass).float()
    x = torch.from_numpy(x0.reshape(len(x0), d)).float().requires_grad_(joint_private)
    p = (0.1 * torch.randn(n_public, d, generator=gen)).requires_grad_()
    logits = torch.zeros(n_rows, n_public, requires_grad=True)

    def optimiser():
        return torch.optim.Adam([p, logits] + ([x] if joint_private else []), lr=lr)

    opt, reseeded, log = optimiser(), {}, []
    loss = torch.tensor(0.0)
    for it in range(steps + 1):
        soft = torch.softmax(logits, 1)
        b = mt[:, None] * soft
        model = (ct[:, :, None] * x[at]).sum(1) + b @ p
        per = (model.abs() - mag) ** 2
        rows = per.mean(1)
        if trim < 1.0:
            rows = rows[rows.detach() <= torch.quantile(rows.detach(), trim)]
        loss = rows.mean()
        ent = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
        weight = entropy * min(1.0, max(0.0, (it - warm_steps) / max(ramp_steps, 1)))
        opt.zero_grad()
        (loss + weight * scale ** 2 * ent).backward()
        opt.step()
        if reseed_every and it >= reseed_from and it % reseed_every == 0 and it <= 0.8 * steps:
            with torch.no_grad():
                bad = _duplicates(p.numpy().astype(np.float64), b.sum(0).numpy(), duplicate_threshold)
                if bad:
                    worst = torch.argsort(per.mean(1), descending=True)[:100]
                    res = (torch.sign(model) * mag - model)[worst].double().numpy()
                    res = res - res.mean(0)
                    vt = np.linalg.svd(res, full_matrices=False)[2]
                    for q, j in enumerate(bad):
                        v = vt[q % len(vt)] * float(p.std()) * np.sqrt(d)
                        p[j] = torch.from_numpy(v * np.sign(res.sum(0) @ v + 1e-12)).float()
                        logits[:, j] = logits.mean(1)
                    opt = optimiser()
                    reseeded[it] = bad
        if it % 250 == 0:
            entry = {"step": it, "loss": float(loss.detach()), "entropy": float(ent.detach())}
            log.append(entry)
            if progress:
                progress(it, entry)
    with torch.no_grad():
        member = (mt[:, None] * torch.softmax(logits, 1)).numpy()
    return RecurringPublic(p.detach().numpy().reshape(n_public, *shape).astype(np.float32), member.astype(np.float32),
                           x.detach().numpy().reshape(len(x0), *shape).astype(np.float32), float(loss.detach()),
                           reseeded, log)


def public_slots(membership, slots: int, public_mass=None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``slots`` largest public memberships: indices ``(N, slots)`` and coefficients
    ``(N, slots)``, rescaled to sum to ``public_mass`` (default: the memberships' row sums)."""
    b = np.asarray(membership, dtype=np.float64)
    if b.ndim != 2 or not 1 <= slots <= b.shape[1]:
        raise ValueError(f"membership must be (N, P) with P >= slots={slots}, got shape {b.shape}")
    mass = b.sum(1) if public_mass is None else np.asarray(public_mass, dtype=np.float64).reshape(-1)
    top = np.argsort(-b, 1)[:, :slots]
    val = np.take_along_axis(b, top, 1)
    val = val / np.maximum(val.sum(1, keepdims=True), 1e-12) * mass[:, None]
    return top, val


def legacy_decode(encryption, assignment, coefficients, private_init, public_mass, *, n_public: int, slots: int,
                  fit: RecurringPublic | None = None, **options) -> tuple[OracleResult, RecurringPublic]:
    """The private images of a legacy challenge: :func:`solve_recurring_public` (``options``; skipped
    when ``fit`` is given), then the oracle solver on the given private keys plus each row's ``slots``
    public images (:func:`public_slots`) as unknowns. The oracle's global sign is aligned with
    ``private_init`` (truth-free). Returns the :class:`~instahide.attacks.OracleResult` (its
    ``decryption``: slot 1's image of every row; ``public_images``: the solved public images) and the fit."""
    fit = fit or solve_recurring_public(encryption, assignment, coefficients, private_init, public_mass,
                                        n_public=n_public, **options)
    a = np.asarray(assignment)
    top, val = public_slots(fit.membership, slots, public_mass)
    used, comp = np.unique(a, return_inverse=True)
    comp = comp.reshape(a.shape)
    o = oracle_decode(encryption, np.hstack([comp, top]), np.hstack([np.asarray(coefficients, np.float64), val]),
                      a.shape[1], len(used), public_model="solve")
    x0 = np.asarray(private_init, dtype=np.float64)[used]
    if float(np.sum(o.recovered * x0)) < 0:  # one global sign: the one that agrees with the start
        o.recovered, o.sign = -o.recovered, -o.sign
        o.public_images = None if o.public_images is None else -o.public_images
    rec = np.zeros((int(a.max()) + 1, *o.recovered.shape[1:]), np.float32)
    rec[used] = o.recovered
    o.recovered = rec
    o.decryption = rec[a[:, 0]]
    return o, fit
