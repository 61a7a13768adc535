"""Oracle decoder (docs/attacks.md, "The oracle decoder"): the private images from the TRUE assignment
and coefficients, a yardstick that bounds the Carlini et al. family.

Unmasked, or ``pixel_range="unit"`` (``|e|`` IS the mixture): one least-squares solve. Masked centred
pixels (``"pm1"``, any centred scaling): phase retrieval: a per-position Gram fit (signs from its
leading eigenvector), sign alignment across neighbouring positions (:func:`align_signs`), then
alternating soft signs and least squares (:func:`_refine`), then likelihood-selected propagation of
the per-position solutions between neighbouring positions (:func:`_propagate`). One global sign stays unknown; evaluation
mode (``evaluate_with=``) picks it with the truth and says so. Public slots: ``public_model="mean"``
(their sum is ``(public coefficients) * mu``), ``"solve"`` (every distinct public image an unknown)
or ``"none"``; the public images' per-position variance is fitted, or given (``public_variance=``:
needed when the public coefficients are guessed, e.g. equal shares, whose sum of squares is then
proportional to the squared public mass and cannot be told from ``mu^2`` in the fit). Measured: docs/carlini.md (yardstick table) and docs/audit.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import ssim
from .inputs import check_count, check_encryption, check_images, check_key_arrays

__all__ = ["OracleResult", "oracle_decode", "design_matrix", "align_signs", "PIXEL_RANGES", "PUBLIC_MODELS"]

PIXEL_RANGES = ("pm1", "unit")
# The propagation's default: sweeps, on images whose shorter side has at least PROPAGATE_MIN_SIDE pixels.
# Measured: CIFAR-10 (32 x 32) +0.16 mean Max_SSIM for the attack on ImageNet-photograph pools
# (docs/attacks_protocol.md); on the 8 x 8 digits the likelihood's better solutions score LOWER SSIM
# (the oracle: mean Max_SSIM 0.454 -> 0.391 over 4 challenges, 3 of them lower;
# experiments/propagation_digits.py), so off there.
PROPAGATE_SWEEPS = 12
PROPAGATE_MIN_SIDE = 16
PUBLIC_MODELS = ("mean", "solve", "none")


# -- result ----------------------------------------------------------------------------------------
@dataclass
class OracleResult:
    """What :func:`oracle_decode` returns.

    Attributes:
        recovered: ``(n, C, H, W)`` float32 recovered private images.
        decryption: ``(N, C, H, W)`` float32; row ``r`` is the recovered image in its slot 1.
        public_mean: ``(C, H, W)`` estimated mean of the public slots (``public_model="mean"``).
        method: ``"least-squares"`` or ``"phase-retrieval"``.
        sign: global sign applied to the phase-retrieval solution (+1 unless evaluation mode chose -1).
        sign_chosen_by: ``"none"`` or ``"evaluation-mode"`` (the ground truth picked the sign).
        scores: in evaluation mode, mean SSIM of the recovered images for each global sign.
        public_images: ``(P, C, H, W)`` float32, the public images solved for (``public_model="solve"``:
            an attacker who has them removes them from every row), else None.
        public_indices: ``(P,)`` the pool index of each of them (sorted), else None.
    """

    recovered: np.ndarray
    decryption: np.ndarray
    public_mean: np.ndarray | None
    method: str
    sign: int = 1
    sign_chosen_by: str = "none"
    scores: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    public_images: np.ndarray | None = None
    public_indices: np.ndarray | None = None


# -- the linear model ------------------------------------------------------------------------------
def design_matrix(indices: np.ndarray, coefficients: np.ndarray, num_private: int, n_private: int,
                  public_model: str = "mean") -> tuple[np.ndarray, int]:
    """Coefficient matrix of the linear model ``y = A z`` and its number of private columns.

    Columns: the ``n_private`` private images (coefficients of repeated images add up), then the
    public unknowns: one column holding each row's public coefficient sum (``"mean"``), one column
    per distinct public index (``"solve"``), or none (``"none"``). Shape ``(N, n_private + extra)``.
    """
    if public_model not in PUBLIC_MODELS:
        raise ValueError(f"unknown public_model {public_model!r}; expected one of {PUBLIC_MODELS}")
    n_rows, k = indices.shape
    rows = np.arange(n_rows)
    a_priv = np.zeros((n_rows, n_private))
    for j in range(num_private):
        np.add.at(a_priv, (rows, indices[:, j]), coefficients[:, j])
    if num_private == k or public_model == "none":
        return a_priv, n_private
    if public_model == "mean":
        return np.hstack([a_priv, coefficients[:, num_private:].sum(1, keepdims=True)]), n_private
    uniq, inv = np.unique(indices[:, num_private:], return_inverse=True)
    inv = inv.reshape(n_rows, k - num_private)
    a_pub = np.zeros((n_rows, len(uniq)))
    for j in range(k - num_private):
        np.add.at(a_pub, (rows, inv[:, j]), coefficients[:, num_private + j])
    return np.hstack([a_priv, a_pub]), n_private


def _ls_operator(a: np.ndarray, ridge: float, n_private: int) -> np.ndarray:
    """``(u, N)`` operator of ``min |A z - y|^2 + ridge * |z_public|^2``: ``z = op @ y``.

    The ridge applies to the public unknowns only, relative to the mean squared column norm
    (the private columns get 1e-10 of it, which only guards against exact rank deficiency)."""
    g = a.T @ a
    reg = np.full(a.shape[1], 1e-10)
    reg[n_private:] = ridge
    return np.linalg.solve(g + np.diag(reg * np.trace(g) / a.shape[1]), a.T)


# -- phase retrieval for masked, centred pixels ----------------------------------------------------
def _gram_init(a: np.ndarray, y2: np.ndarray, q: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Per position, fit ``e_r^2 ~ a_r^T G a_r + q_r v`` for the Gram matrix ``G = z z^T`` (entries
    on co-occurring pairs only) and the public variance ``v``; return ``z`` (leading eigenvector's
    signs, diagonal's magnitudes) ``(u, d)`` and ``v`` ``(d,)``."""
    n_rows, u = a.shape
    nz = a != 0
    co = (nz.T.astype(np.float64) @ nz) > 0  # pairs that share a row
    ii, jj = np.nonzero(np.triu(co))
    feats = a[:, ii] * a[:, jj] * np.where(ii == jj, 1.0, 2.0)
    if q is not None:
        feats = np.hstack([feats, q[:, None]])
    gram = feats.T @ feats
    reg = ridge * np.trace(gram) / gram.shape[0] + 1e-12
    coef = np.linalg.solve(gram + reg * np.eye(gram.shape[0]), feats.T @ y2)  # (P[+1], d)
    d = y2.shape[1]
    var = np.maximum(coef[-1], 0.0) if q is not None else np.zeros(d)
    g = np.zeros((d, u, u))
    g[:, ii, jj] = coef[: len(ii)].T
    g[:, jj, ii] = coef[: len(ii)].T
    diag = np.maximum(np.diagonal(g, axis1=1, axis2=2), 0.0)  # (d, u)
    scale = np.sqrt(diag) + 1e-12
    corr = g / scale[:, :, None] / scale[:, None, :]
    _, vecs = torch.linalg.eigh(torch.from_numpy(corr))
    lead = vecs[..., -1].numpy()  # (d, u)
    signs = np.where(lead >= 0, 1.0, -1.0)
    return (signs * np.sqrt(diag)).T, var


def _blur(t: np.ndarray, shape: tuple[int, int, int], radius: int, channel_weight: float) -> np.ndarray:
    """Box-average ``t (N, d)`` over ``(2r+1)^2`` spatial windows, then blend in the channel mean."""
    c, h, w = shape
    x = torch.from_numpy(t.reshape(-1, c, h, w))
    n = x.shape[0]
    if radius:
        x = x.reshape(n * c, 1, h, w)
        x = F.avg_pool2d(F.pad(x, (radius,) * 4, mode="replicate"), 2 * radius + 1, stride=1)
        x = x.reshape(n, c, h, w)
    if c > 1 and channel_weight:
        x = (1 - channel_weight) * x + channel_weight * x.mean(1, keepdim=True)
    return x.reshape(n, -1).numpy()


def _radius_schedule(iterations: int) -> list[int]:
    """Coarse to fine: sign coupling radius 3 (first quarter), 2, 1, then 0 (last eighth)."""
    r3, r2, r0 = iterations // 4, iterations // 8, iterations // 8
    return [3] * r3 + [2] * r2 + [1] * (iterations - r3 - r2 - r0) + [0] * r0


def _refine(a: np.ndarray, mag: np.ndarray, z: np.ndarray, noise: np.ndarray, n_private: int,
            shape: tuple[int, int, int], iterations: int, spatial: bool, align: bool, ridge: float,
            align_every: int = 5, channel_weight: float = 0.5) -> np.ndarray:
    """Alternate signs and least squares.

    Signs: the posterior mean ``tanh(|e| (a . z) / s^2)`` under Gaussian public noise of variance
    ``s^2``; with ``spatial``, the log-odds ``|e| (a . z) / s^2`` of every row are first averaged
    over neighbouring positions and channels (the mixture is a natural image, so its sign is
    locally constant), coarse to fine. Least squares: ``z = argmin |A z - s |e||^2``, one solve for
    all positions. Every ``align_every`` steps the positions' signs are re-aligned (the spatial
    averaging assumes aligned positions).
    """
    solve = _ls_operator(a, ridge, n_private)
    radii = _radius_schedule(iterations) if spatial else [0] * iterations
    for it, radius in enumerate(radii):
        if align and it % align_every == 0:
            z = z * align_signs(z[:n_private], shape)[None, :]
        logodds = mag * (a @ z) / noise
        if spatial and radius:  # the last steps (radius 0) fit every position on its own
            logodds = _blur(logodds, shape, radius, channel_weight)
        z = solve @ (np.tanh(logodds) * mag)
    return z


def position_nll(a: np.ndarray, mag: np.ndarray, z: np.ndarray, noise) -> np.ndarray:
    """``(d,)`` negative log-likelihood of every position's solution ``z[:, p]`` (``z (u, d)``): the
    magnitudes ``mag (N, d)`` as folded normals of mean ``A z`` and variance ``noise`` (``(N, d)`` or
    broadcastable), up to terms that do not depend on ``z`` (so only differences mean anything):
    ``sum_r m^2 / (2 s^2) - log cosh(|e| m / s^2)``. Invariant to ``z -> -z`` at any position, as
    ``|e|`` is. Works in the dtype of its inputs."""
    m = a @ z
    u = np.abs(mag * m / noise)
    return (m * m / (2 * noise) - u - np.log1p(np.exp(-2 * u))).sum(0)


def _shifted(z: np.ndarray, shape: tuple[int, int, int], axis: int, step: int) -> np.ndarray:
    """``z (u, d)`` with every position given the solution of its neighbour ``step`` away along
    ``axis`` of the ``(C, H, W)`` image (wrapping at the border: only a candidate, never kept unless
    it fits better)."""
    return np.roll(z.reshape(z.shape[0], *shape), step, axis=axis + 1).reshape(z.shape)


def _propagate(a: np.ndarray, mag: np.ndarray, z: np.ndarray, noise, shape: tuple[int, int, int],
               solve: np.ndarray, *, sweeps: int, steps: int = 4, random_starts: int = 0, seed: int = 0,
               tol: float = 0.002) -> tuple[np.ndarray, list[int]]:
    """Likelihood-selected propagation of per-position solutions.

    The soft-sign / least-squares iteration (:func:`_refine`) is a local method: at many positions it
    stops in a solution whose likelihood is far below that of the true images. Measured on the attack
    protocol's draws (docs/attacks_protocol.md, TRUE keys, two ImageNet-photograph and two built-in
    draws): started from the truth, the same iteration stays at Max_SSIM 0.73-0.82 where it reaches
    0.43-0.71 from the Gram start, and the truth's solution fits the magnitudes better at 66-93% of
    the positions. Neighbouring positions of natural images have
    nearly the same solution, so a good solution found at one position is a good start for its
    neighbours. Every sweep tries, at every position at once, the solutions of the four neighbouring
    pixels and of the other channels (and ``random_starts`` re-signed copies of the current one), each
    refined by ``steps`` iterations at that position alone, and keeps a candidate where its
    :func:`position_nll` is lower. Stops after ``sweeps`` or when fewer than ``tol`` of the positions
    changed. No position ends with a worse likelihood. Float32 inside (the choices agreed with float64
    on the draws measured). Returns ``(z (u, d) float64, positions changed per sweep)``; deterministic
    for a given ``seed``.
    """
    f32 = np.float32
    a32, solve32, mag32 = a.astype(f32), solve.astype(f32), mag.astype(f32)
    noise = np.broadcast_to(np.asarray(noise, np.float64), mag.shape)
    w32, half32 = (mag / noise).astype(f32), (0.5 / noise).astype(f32)
    rng = np.random.default_rng(seed)

    def nll(cand):
        m = a32 @ cand
        u = np.abs(w32 * m)
        return (half32 * m * m - u - np.log1p(np.exp(-2 * u))).sum(0, dtype=np.float64)

    def refine(cand):
        for _ in range(steps):
            cand = solve32 @ (np.tanh(w32 * (a32 @ cand)) * mag32)
        return cand

    z = z.astype(f32)
    best = nll(z)
    moves = [(1, 1), (1, -1), (2, 1), (2, -1)] + [(0, s) for s in range(1, shape[0])]
    changed = []
    for _ in range(sweeps):
        n_changed = 0
        for i in range(len(moves) + random_starts):
            if i < len(moves):
                cand = _shifted(z, shape, *moves[i])
            else:
                cand = z * rng.choice(np.array([-1.0, 1.0], f32), size=z.shape)
            cand = refine(cand)
            score = nll(cand)
            better = score < best - 1e-7 * np.abs(best)
            z = np.where(better[None, :], cand, z)
            best = np.where(better, score, best)
            n_changed += int(better.sum())
        changed.append(n_changed)
        if n_changed < tol * z.shape[1]:
            break
    return z.astype(np.float64), changed


def _neighbour_pairs(c: int, h: int, w: int, offsets=(1, 2, 4)) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of value positions ``o`` pixels apart (rows and columns, for each offset ``o``)
    and of neighbouring channels, in a ``(C, H, W)`` flattening."""
    pos = np.arange(c * h * w).reshape(c, h, w)
    pairs = []
    for o in offsets:
        if o < w:
            pairs.append((pos[..., :-o], pos[..., o:]))
        if o < h:
            pairs.append((pos[:, :-o], pos[:, o:]))
    if c > 1:
        pairs.append((pos[:-1], pos[1:]))
    src = np.concatenate([p[0].ravel() for p in pairs])
    dst = np.concatenate([p[1].ravel() for p in pairs])
    return src, dst


def align_signs(z: np.ndarray, shape: tuple[int, int, int], *, sweeps: int = 10) -> np.ndarray:
    """Signs ``(d,)`` that make the per-position solutions ``z (u, d)`` agree with their neighbours;
    ``shape`` is the image's ``(C, H, W)`` (``d = C * H * W``).

    Spectral sign synchronisation: edge weight = cosine similarity of the two positions' vectors
    (positions 1, 2 and 4 pixels apart, and neighbouring channels), leading eigenvector of the
    weighted adjacency, then ``sweeps`` rounds of local majority votes. The result is fixed up to
    one global sign (returned with more +1 than -1).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import eigsh

    src, dst = _neighbour_pairs(*shape)
    unit = z / (np.linalg.norm(z, axis=0, keepdims=True) + 1e-12)
    wgt = np.sum(unit[:, src] * unit[:, dst], axis=0)
    d = z.shape[1]
    adj = coo_matrix((np.concatenate([wgt, wgt]), (np.concatenate([src, dst]), np.concatenate([dst, src]))),
                     shape=(d, d)).tocsr()
    s = np.ones(d)
    if d > 2:
        _, vec = eigsh(adj, k=1, which="LA", v0=np.ones(d))
        s = np.where(vec[:, 0] >= 0, 1.0, -1.0)
    for _ in range(sweeps):
        new = np.where(adj @ s >= 0, 1.0, -1.0)
        if np.array_equal(new, s):
            break
        s = new
    if s.sum() < 0:
        s = -s
    return s


def _smooth(img: np.ndarray, strength: float) -> np.ndarray:
    """Blend each value with the mean of its 4 neighbours: ``(1 - s) x + s * mean`` on ``(n,C,H,W)``."""
    pad = np.pad(img, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    avg = (pad[..., :-2, 1:-1] + pad[..., 2:, 1:-1] + pad[..., 1:-1, :-2] + pad[..., 1:-1, 2:]) / 4.0
    return (1 - strength) * img + strength * avg


# -- entry point -----------------------------------------------------------------------------------
def oracle_decode(
    encryption,
    indices,
    coefficients,
    num_private: int,
    n_private: int,
    *,
    masked: bool = True,
    pixel_range: str = "pm1",
    public_model: str = "mean",
    iterations: int = 150,
    propagate: int | None = None,
    spatial: bool = True,
    align: bool = True,
    smooth: float = 0.0,
    ridge: float = 1e-3,
    public_variance=None,
    evaluate_with=None,
) -> OracleResult:
    """Recover the private images from encryptions and their TRUE keys (minus the masks).

    Args:
        encryption: ``(N, C, H, W)`` encryptions.
        indices: ``(N, k)`` int, the image in every slot (columns ``< num_private`` index the
            private set, the others the public pool); column 0 is the row's own image.
        coefficients: ``(N, k)`` the true lambdas.
        num_private: private slots per row (``k`` inside-dataset).
        n_private: number of private images ``n``.
        masked: whether the sign mask was applied (False for Mixup).
        pixel_range: ``"pm1"`` (centred, e.g. ``[-1, 1]``) or ``"unit"`` (``[0, 1]``, non-negative:
            the mask then hides nothing, ``|e|`` is the mixture).
        public_model: ``"mean"``, ``"solve"`` or ``"none"``.
        iterations, spatial, align, smooth (masked ``pm1`` only): alternating sign / least-squares
            steps (0 = the Gram step alone); coupling each row's signs across neighbouring positions;
            sign synchronisation across positions; a light smoothing in ``[0, 1)`` of the result.
        propagate: masked ``pm1`` only: sweeps of likelihood-selected propagation after those steps
            (:func:`_propagate`: every position tries its neighbours' solutions and keeps what fits
            its magnitudes better); 0 = none (the solver before it was added); None =
            :data:`PROPAGATE_SWEEPS` on images whose shorter side is at least
            :data:`PROPAGATE_MIN_SIDE` pixels, else 0 (measured to hurt on 8 x 8 digits).
        ridge: ridge weight on the public unknowns (relative to the mean squared column norm).
        public_variance: masked ``pm1`` with public slots: the variance of a public image at every
            position, ``(C, H, W)`` or a number (e.g. from an attacker's own pool), instead of fitting it.
        evaluate_with: EVALUATION MODE: the true private images ``(n, C, H, W)``; both global
            signs are scored (mean SSIM, data range from ``pixel_range``) and the better is kept.

    Returns:
        :class:`OracleResult` with ``recovered (n, C, H, W)`` and ``decryption (N, C, H, W)``.
    """
    enc = check_encryption(encryption, "encryption")
    n_rows, shape = enc.shape[0], enc.shape[1:]
    n_private = check_count(n_private, "n_private")
    idx, lam = check_key_arrays(indices, coefficients, num_private, n_private, n_rows)
    if pixel_range not in PIXEL_RANGES:
        raise ValueError(f"unknown pixel_range {pixel_range!r}; expected one of {PIXEL_RANGES}")
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    if propagate is not None and (isinstance(propagate, bool) or not isinstance(propagate, (int, np.integer))
                                  or propagate < 0):
        raise ValueError(f"propagate must be None or an integer >= 0 (sweeps), got {propagate!r}")
    missing = np.setdiff1d(np.arange(n_private), idx[:, :num_private])
    if len(missing):
        raise ValueError(f"private images {missing[:5].tolist()} appear in no row: they cannot be recovered")
    truth = None if evaluate_with is None else check_images(evaluate_with, "evaluate_with", (n_private, *shape))
    try:
        pv = None if public_variance is None else np.asarray(public_variance, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"public_variance must be a number or an array, got {type(public_variance).__name__}") from None
    if pv is not None and (pv.shape not in ((), tuple(shape)) or not np.all(np.isfinite(pv)) or np.any(pv < 0)):
        raise ValueError(f"public_variance must be a number or a {tuple(shape)} array of finite values >= 0, "
                         f"got shape {pv.shape}")
    a, n_priv = design_matrix(idx, lam, num_private, n_private, public_model)
    y = enc.reshape(n_rows, -1)
    data_range = 2.0 if pixel_range == "pm1" else 1.0
    has_mean = public_model == "mean" and num_private < idx.shape[1]
    if not masked or pixel_range == "unit":
        z = _ls_operator(a, ridge, n_priv) @ (np.abs(y) if masked else y)
        method, info = "least-squares", {}
    else:
        mag = np.abs(y)
        q = (lam[:, num_private:] ** 2).sum(1) if num_private < idx.shape[1] else None
        a_gram = a if public_model != "solve" else design_matrix(idx, lam, num_private, n_private, "mean")[0]
        if q is not None and pv is not None:  # known variance: fit e^2 - q v, the Gram matrix alone
            var = np.broadcast_to(pv.reshape(-1) if pv.ndim else pv, (mag.shape[1],))
            z, _ = _gram_init(a_gram, mag ** 2 - q[:, None] * var[None, :], None, ridge)
        else:
            z, var = _gram_init(a_gram, mag ** 2, q, ridge)
        if public_model == "solve":  # start the public unknowns at the fitted mean
            z = _ls_operator(a, ridge, n_priv) @ (a_gram @ z)
        noise = 1e-3 * np.mean(mag ** 2) + (0.0 if q is None else q[:, None] * var[None, :])
        if iterations:
            z = _refine(a, mag, z, noise, n_priv, shape, iterations, spatial, align, ridge)
        swept = []
        if propagate is None:
            propagate = PROPAGATE_SWEEPS if min(shape[1:]) >= PROPAGATE_MIN_SIDE else 0
        if propagate:
            z, swept = _propagate(a, mag, z, noise, shape, _ls_operator(a, ridge, n_priv), sweeps=propagate)
        if align:
            z = z * align_signs(z[:n_priv], shape)[None, :]
        method, info = "phase-retrieval", {"public_variance_mean": float(var.mean()), "propagation_changed": swept}
    recovered = z[:n_priv].reshape(n_private, *shape)
    public_mean = z[n_priv].reshape(shape) if has_mean else None
    if method == "phase-retrieval" and smooth:
        recovered = _smooth(recovered, smooth)
    result = OracleResult(recovered.astype(np.float32), np.empty(0), public_mean, method, info=info)
    if public_model == "solve" and num_private < idx.shape[1]:
        result.public_indices = np.unique(idx[:, num_private:])  # design_matrix's column order
        result.public_images = z[n_priv:].reshape(-1, *shape).astype(np.float32)
    if truth is not None:
        pos = float(ssim(recovered, truth, data_range=data_range))
        result.scores = {"+1": pos}
        if method == "phase-retrieval":
            neg = float(ssim(-recovered, truth, data_range=data_range))
            result.scores["-1"] = neg
            if neg > pos:
                result.recovered = (-recovered).astype(np.float32)
                result.public_mean = None if public_mean is None else -public_mean
                result.public_images = None if result.public_images is None else -result.public_images
                result.sign = -1
            result.sign_chosen_by = "evaluation-mode"
    result.decryption = result.recovered[idx[:, 0]]
    return result
