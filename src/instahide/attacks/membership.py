"""Membership inference against a trained model: was this example in its training set?

Two attacks, both black-box on the model's outputs for the example and its true label:

- **loss threshold** (Yeom et al. 2018): the lower the example's cross-entropy loss, the more likely
  a member; one threshold for all examples. :func:`loss_scores`.
- **LiRA** (Carlini et al. 2022, "Membership inference attacks from first principles"): per example,
  the logit-scaled confidence ``phi = log p_y - log(1 - p_y)`` of the target model is compared with
  its distribution under reference (shadow) models trained with the same recipe on data that did
  (IN) and did not (OUT) hold the example; the score is the Gaussian log-likelihood ratio
  ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)`` (online), or, where an example has no
  IN reference, ``(phi - mu_out) / s_out`` (offline). With few reference models the variances are
  global (pooled over examples), as the paper advises, and each example's two means come from equally
  many references (see :func:`lira_scores`).

A score is higher for "member". :func:`roc` gives the ROC curve, :func:`roc_auc` its area and
:func:`tpr_at_fpr` the true-positive rate at a low false-positive rate (the paper's headline: TPR at
1% FPR, which says whether the attack is confident about ANY example, where the AUC averages over
all). :func:`membership_attack` reports both attacks.

Example::

    phi = logit_confidence(model, x, y)                      # (N,) on the target
    refs = torch.stack([logit_confidence(m, x, y) for m in reference_models])  # (R, N)
    res = membership_attack(member, loss_scores(model, x, y), lira_scores(phi, refs, ref_member)[0])
    res["lira"]["auc"], res["lira"]["tpr_at_fpr"]          # TPR at res["fpr"] = 1% FPR
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["logit_confidence", "loss_scores", "lira_scores", "roc", "roc_auc", "tpr_at_fpr", "membership_attack"]


def _check_model_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a tensor of images (N, C, H, W), got {getattr(x, 'shape', type(x))}")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must be (N,) class indices with N = {len(x)}, got {getattr(y, 'shape', type(y))}")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("x holds NaN or infinite values")


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(x[s:s + batch_size]).float() for s in range(0, len(x), batch_size)])
    model.train(was)
    if out.ndim != 2 or len(out) != len(x):
        raise ValueError(f"the model must map (N, C, H, W) to logits (N, classes), got {tuple(out.shape)}")
    return out


def _check_labels(y: torch.Tensor, classes: int) -> torch.Tensor:
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"labels must be class indices in [0, {classes}), got [{int(y.min())}, {int(y.max())}]")
    return y


def logit_confidence(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """LiRA's statistic ``phi = log p_y - log(1 - p_y)`` ``(N,)`` of ``model`` (eval mode) on images ``x``
    ``(N, C, H, W)`` with labels ``y`` ``(N,)``, computed stably from the logits as
    ``z_y - logsumexp_{c != y} z_c``."""
    _check_model_inputs(x, y)
    z = _logits(model, x, batch_size).double()
    y = _check_labels(y.to(z.device), z.shape[1])
    own = z.gather(1, y[:, None])[:, 0]
    others = z.scatter(1, y[:, None], float("-inf"))
    return (own - torch.logsumexp(others, dim=1)).cpu()


def loss_scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The loss-threshold attack's scores ``(N,)``: minus the cross-entropy of ``model`` (eval mode) on
    each example (higher: more likely a member)."""
    _check_model_inputs(x, y)
    z = _logits(model, x, batch_size).double()
    y = _check_labels(y.to(z.device), z.shape[1])
    return (z.gather(1, y[:, None])[:, 0] - torch.logsumexp(z, dim=1)).cpu()


def _spread(r: torch.Tensor, sides) -> float:
    """The global standard deviation of the reference statistics about their example's mean on each
    side (IN, OUT), pooled over examples and sides with ``n - 1`` degrees of freedom per example and
    side; NaN when no example has two references on a side."""
    ss, dof = 0.0, 0
    for used in sides:
        n = used.sum(0)
        mean = torch.where(used, r, 0.0).sum(0) / n.clamp_min(1)
        ss += float(torch.where(used, (r - mean[None]) ** 2, 0.0).sum())
        dof += int((n - 1).clamp_min(0).sum())
    return max((ss / dof) ** 0.5, 1e-6) if dof else float("nan")


def _pick(mask: torch.Tensor, count: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``mask`` ``(R, N)`` keeping, per column, ``count[n]`` of its True entries drawn at random."""
    keys = torch.rand(mask.shape, generator=generator, dtype=torch.float64).masked_fill(~mask, float("inf"))
    rank = keys.argsort(0).argsort(0)
    return mask & (rank < count[None, :])


def _mean(r: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    return torch.where(used, r, 0.0).sum(0) / used.sum(0).clamp_min(1)


def lira_scores(target_phi, reference_phi, reference_member, *, seed: int = 0) -> tuple[torch.Tensor, str]:
    """LiRA's per-example scores (module docstring) and which variant gave them.

    Args:
        target_phi: ``(N,)`` :func:`logit_confidence` of the target model on the candidates.
        reference_phi: ``(R, N)`` the same for ``R`` reference models trained with the same recipe.
        reference_member: bool ``(R, N)``: whether candidate ``n`` was in reference model ``r``'s
            training set.

    Returns:
        ``(scores (N,), variant)``. ``"online"`` when every candidate has IN and OUT references: the
        Gaussian likelihood ratio with ONE global variance (pooled over candidates and both sides,
        the paper's fixed-variance variant for few references), each candidate's two means taken from
        the SAME number of references, ``min(#IN, #OUT)`` of each drawn at random (``seed``): with
        few references, unequal counts would bias the ratio (a mean of fewer models lies farther
        from a fresh draw, so that side would look less likely even where membership changes
        nothing), and a fixed choice (say the first) would pair the target with the same references
        for one side more often, whose overall confidence then shifts that side's scores.
        ``"offline"`` when some candidate has no IN reference: ``(phi - mu_out) / s_out`` for all
        candidates, so that the scores stay comparable.
    """
    t = torch.as_tensor(np.asarray(target_phi), dtype=torch.float64).flatten()
    r = torch.as_tensor(np.asarray(reference_phi), dtype=torch.float64)
    m = torch.as_tensor(np.asarray(reference_member)).bool()
    if r.ndim != 2 or r.shape[1] != len(t):
        raise ValueError(f"reference_phi must be (R, N) with N = {len(t)} candidates, got {tuple(r.shape)}")
    if m.shape != r.shape:
        raise ValueError(f"reference_member must be bool (R, N) = {tuple(r.shape)}, got {tuple(m.shape)}")
    if not (torch.isfinite(t).all() and torch.isfinite(r).all()):
        raise ValueError("target_phi and reference_phi must be finite (a diverged model?)")
    n_in, n_out = m.sum(0), (~m).sum(0)
    if int(n_out.min()) < 1:
        raise ValueError("every candidate needs at least one reference model that did NOT train on it (OUT)")
    if int(n_in.min()) < 1:
        s_out = _spread(r, [~m])
        return (t - _mean(r, ~m)) / (s_out if math.isfinite(s_out) else 1.0), "offline"
    count = torch.minimum(n_in, n_out)
    gen = torch.Generator().manual_seed(int(seed))
    mu_in, mu_out = _mean(r, _pick(m, count, gen)), _mean(r, _pick(~m, count, gen))
    s = _spread(r, [m, ~m])
    s = s if math.isfinite(s) else 1.0  # one global variance: it scales every score alike (ranks unchanged)
    return (((t - mu_out) / s) ** 2 - ((t - mu_in) / s) ** 2) / 2, "online"


def _check_scores(member, scores) -> tuple[np.ndarray, np.ndarray]:
    member = np.asarray(member)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if member.dtype != bool:
        if not np.isin(member, (0, 1)).all():
            raise ValueError("member must be booleans (or 0/1): True for a training-set member")
        member = member.astype(bool)
    member = member.ravel()
    if len(member) != len(s):
        raise ValueError(f"member ({len(member)}) and scores ({len(s)}) differ in length")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinite values")
    if member.all() or not member.any():
        raise ValueError("the candidates must hold both members and non-members")
    return member, s


def roc(member, scores) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve ``(fpr, tpr)`` of deciding "member" when ``score >= threshold``, over every
    threshold (ties move together), from ``(0, 0)`` to ``(1, 1)``."""
    member, s = _check_scores(member, scores)
    order = np.argsort(-s, kind="stable")
    s, member = s[order], member[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of equal scores
    tp = np.cumsum(member)[last]
    fp = np.cumsum(~member)[last]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def roc_auc(member, scores) -> float:
    """The area under the ROC curve: the probability that a random member scores above a random
    non-member (ties count one half). 0.5: the scores tell nothing."""
    member, s = _check_scores(member, scores)
    ranks = _average_ranks(s)
    n1, n0 = int(member.sum()), int((~member).sum())
    return float((ranks[member].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _average_ranks(s: np.ndarray) -> np.ndarray:
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2  # ranks a+1 .. b, averaged over ties
    return ranks


def tpr_at_fpr(member, scores, fpr: float = 0.01) -> float:
    """The highest true-positive rate among thresholds whose false-positive rate is at most ``fpr``
    (0 when no threshold lets so few non-members through). With ``n0`` non-members the lowest
    FPR above 0 is ``1 / n0``: below ``fpr = 1 / n0`` only FPR 0 counts."""
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    f, t = roc(member, scores)
    return float(t[f <= fpr + 1e-12].max())


def membership_attack(member, loss, lira=None, *, fpr: float = 0.01) -> dict:
    """The two attacks' measures on one target: ``{"loss": {"auc", "tpr_at_fpr"}, "lira": {...}
    or None, "members", "non_members", "fpr"}``. ``member``: bool ``(N,)``; ``loss``: :func:`loss_scores`;
    ``lira``: :func:`lira_scores`' scores (or None)."""
    member, _ = _check_scores(member, loss)
    out = {"members": int(member.sum()), "non_members": int((~member).sum()), "fpr": fpr}
    for name, scores in (("loss", loss), ("lira", lira)):
        out[name] = None if scores is None else {"auc": roc_auc(member, scores),
                                                 "tpr_at_fpr": tpr_at_fpr(member, scores, fpr)}
    return out
