"""Demixing attack on Mixup without the mask (docs/attacks.md, "Mixup demixing"): why the mask matters.

Uses only the encryptions and the leaked labels (no keys, no row order): (a) anchors (rows whose
label puts ``dominance`` of its private mass on one class) clustered by the correlation of their
high-passed pixels, never across classes; (b) every row's images and coefficients by least squares
against the current images; (c) one least-squares solve for the images; (b)-(c) alternate. With the
mask on, the correlations vanish and nothing is recovered. Measured: docs/audit.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .inputs import check_count, check_encryption, check_label

__all__ = ["DemixResult", "demix", "highpass", "gaussian_kernel", "find_anchors", "cluster_anchors"]

_EPS = 1e-9


@dataclass
class DemixResult:
    """What :func:`demix` returns.

    Attributes:
        recovered: ``(m, C, H, W)`` float32, one image per cluster found (``m`` = ``n_private`` when
            enough clusters were found).
        decryption: ``(N, C, H, W)`` float32, per row the assigned image with the largest coefficient.
        assignment: ``(N, s)`` int, the recovered image in each of the row's ``s`` private slots
            (``s = num_private``), ordered by decreasing coefficient; -1 for unused slots.
        coefficients: ``(N, s)`` float, the coefficient of each assigned image.
        clusters: per recovered image, the anchor rows of its cluster.
        cluster_class: ``(m,)`` int, each recovered image's class (from the labels).
        anchors: rows used as anchors; ``public_mean``: ``(C, H, W)`` (None without public slots).
    """

    recovered: np.ndarray
    decryption: np.ndarray
    assignment: np.ndarray
    coefficients: np.ndarray
    clusters: list
    cluster_class: np.ndarray
    anchors: np.ndarray
    public_mean: np.ndarray | None
    info: dict = field(default_factory=dict)


def gaussian_kernel(sigma: float, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of std ``sigma``, radius ``max(1, round(3 sigma))``."""
    r = max(1, int(round(3 * sigma)))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=dtype) ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def highpass(x, sigma: float = 2.0, kernel: torch.Tensor | None = None):
    """``x - GaussianBlur(x)`` per image and channel (separable, replicate padding) for ``x (N, C, H, W)``,
    a tensor (returned as one) or an array (computed and returned in float64); ``kernel``, when given,
    replaces :func:`gaussian_kernel` of ``sigma``."""
    if sigma <= 0:
        return x
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    g = gaussian_kernel(sigma, t.dtype) if kernel is None else kernel.to(t.dtype)
    n, c, h, w = t.shape
    r = (len(g) - 1) // 2
    flat = t.reshape(n * c, 1, h, w)
    blur = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    blur = F.conv2d(F.pad(blur, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
    out = t - blur.reshape(n, c, h, w)
    return out if isinstance(x, torch.Tensor) else out.numpy()


def find_anchors(label: np.ndarray, dominance: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose largest label entry holds at least ``dominance`` of the label's mass, and that
    entry's class. Rows with a single non-zero entry are skipped (their split is unknown)."""
    nonzero = (label > _EPS).sum(1)
    share = label.max(1) / np.maximum(label.sum(1), _EPS)
    rows = np.nonzero((nonzero >= 2) & (share >= dominance))[0]
    return rows, label[rows].argmax(1)


def cluster_anchors(features: np.ndarray, classes: np.ndarray, *, threshold: float = 0.7,
                    min_cluster: int = 3, max_clusters: int | None = None) -> list[np.ndarray]:
    """Group rows of ``features (A, D)`` whose correlation is high, never across ``classes``.

    Average-linkage agglomerative clustering on ``1 - correlation`` (cross-class pairs at distance
    3), cut at ``threshold``; clusters smaller than ``min_cluster`` are dropped, the others are
    returned largest first (at most ``max_clusters``), each as an array of positions into
    ``features``.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(features) < 2:
        return [np.arange(len(features))] if len(features) >= min_cluster else []
    z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), _EPS)
    dist = 1.0 - z @ z.T
    dist[classes[:, None] != classes[None, :]] = 3.0
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(np.clip(dist, 0.0, None), checks=False), "average")
    labels = fcluster(tree, threshold, criterion="distance")
    groups = [np.nonzero(labels == c)[0] for c in np.unique(labels)]
    groups = sorted((g for g in groups if len(g) >= min_cluster), key=len, reverse=True)
    return groups[:max_clusters] if max_clusters is not None else groups


def _solve_images(y: np.ndarray, assign: np.ndarray, coef: np.ndarray, public_mass: np.ndarray | None,
                  m: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Least squares for ``m`` images (+ the public mean) given every row's images/coefficients."""
    n_rows = y.shape[0]
    a = np.zeros((n_rows, m + (public_mass is not None)))
    rows = np.repeat(np.arange(n_rows), assign.shape[1])
    ok = assign.ravel() >= 0
    np.add.at(a, (rows[ok], assign.ravel()[ok]), coef.ravel()[ok])
    if public_mass is not None:
        a[:, m] = public_mass
    g = a.T @ a
    g += np.eye(len(g)) * (1e-8 * np.trace(g) / len(g) + 1e-12)
    z = np.linalg.solve(g, a.T @ y)
    return z[:m], (z[m] if public_mass is not None else None)


def _assign_pairs(target, protos, proto_class, label):
    """Best pair of images for every row of ``target`` (the rows minus their public part; cross-dataset,
    two private slots), vectorised. Two-class rows: image i of the first class with the first
    coefficient and j of the second with the second. One-class rows: i, j of that class (i == j
    allowed) with the split fitted."""
    n_rows = target.shape[0]
    m = len(protos)
    gram = protos @ protos.T  # (m, m)
    corr = target @ protos.T  # (N, m)
    sq = np.diag(gram)
    order = np.argsort(-label, axis=1)
    c1, c2 = order[:, 0], order[:, 1]
    v1 = label[np.arange(n_rows), c1]
    v2 = label[np.arange(n_rows), c2]
    single = v2 <= _EPS
    in1 = proto_class[None, :] == c1[:, None]  # (N, m)
    in2 = np.where(single[:, None], in1, proto_class[None, :] == c2[:, None])
    # two-class rows: cost(i, j) = v1^2 |p_i|^2 + v2^2 |p_j|^2 + 2 v1 v2 <p_i, p_j> - 2 v1 <t, p_i> - 2 v2 <t, p_j>
    cost = (v1[:, None, None] ** 2 * sq[None, :, None] + v2[:, None, None] ** 2 * sq[None, None, :]
            + 2 * (v1 * v2)[:, None, None] * gram[None] - 2 * v1[:, None, None] * corr[:, :, None]
            - 2 * v2[:, None, None] * corr[:, None, :])
    alpha = np.broadcast_to(v1[:, None, None], cost.shape).copy()
    if single.any():  # split s = v1 between i (alpha) and j (s - alpha), alpha in [0, s]
        r = np.nonzero(single)[0]
        s = v1[r][:, None, None]
        diff2 = sq[:, None] + sq[None, :] - 2 * gram  # |p_i - p_j|^2
        num = corr[r][:, :, None] - corr[r][:, None, :] - s * (gram - sq[None, :])[None]
        al = np.clip(num / np.maximum(diff2[None], _EPS), 0.0, s)
        al = np.where(diff2[None] <= _EPS, s, al)
        cst = (al ** 2 * sq[None, :, None] + (s - al) ** 2 * sq[None, None, :]
               + 2 * al * (s - al) * gram[None] - 2 * al * corr[r][:, :, None] - 2 * (s - al) * corr[r][:, None, :])
        cost[r], alpha[r] = cst, al
    valid = in1[:, :, None] & in2[:, None, :]
    cost = np.where(valid, cost, np.inf)
    flat = cost.reshape(n_rows, -1).argmin(1)
    i, j = np.divmod(flat, m)
    found = np.isfinite(cost.reshape(n_rows, -1)[np.arange(n_rows), flat])
    a1 = alpha[np.arange(n_rows), i, j]
    a2 = np.where(single, v1 - a1, v2)
    assign = np.stack([i, j], 1)
    coef = np.stack([a1, a2], 1)
    assign[~found] = -1
    coef[~found] = 0.0
    swap = coef[:, 1] > coef[:, 0]
    assign[swap] = assign[swap][:, ::-1]
    coef[swap] = coef[swap][:, ::-1]
    return assign, coef


def _assign_nnls(target, protos, proto_class, label, slots: int, penalty: float = 1e3):
    """Per row: non-negative coefficients on the images of the label's classes, each class's
    coefficients summing to its label entry (penalty rows); the ``slots`` largest are kept."""
    from scipy.optimize import nnls

    n_rows = target.shape[0]
    scale = np.sqrt(np.mean(protos ** 2) * protos.shape[1]) + _EPS
    assign = -np.ones((n_rows, slots), dtype=np.int64)
    coef = np.zeros((n_rows, slots))
    for r in range(n_rows):
        classes = np.nonzero(label[r] > _EPS)[0]
        cand = np.nonzero(np.isin(proto_class, classes))[0]
        if len(cand) == 0:
            continue
        cons = (proto_class[cand][None, :] == classes[:, None]).astype(float) * penalty * scale
        mat = np.vstack([protos[cand].T, cons])
        rhs = np.concatenate([target[r], label[r, classes] * penalty * scale])
        a, _ = nnls(mat, rhs, maxiter=50 * len(cand))
        top = np.argsort(-a)[:slots]
        top = top[a[top] > _EPS]
        assign[r, : len(top)] = cand[top]
        coef[r, : len(top)] = a[top]
    return assign, coef


def demix(
    encryption,
    label,
    *,
    n_private: int | None = None,
    num_private: int = 2,
    dominance: float | None = None,
    threshold: float = 0.7,
    min_cluster: int = 3,
    highpass_sigma: float = 2.0,
    iterations: int = 5,
    public: bool | None = None,
) -> DemixResult:
    """Recover private images from UNMASKED mixtures (Mixup) and their leaked labels.

    Args:
        encryption: ``(N, C, H, W)`` encryptions (any pixel scaling).
        label: ``(N, classes)`` leaked soft labels (private coefficients at their classes).
        n_private: number of private images if known: the ``n_private`` largest clusters are kept,
            even ones smaller than ``min_cluster`` when there are not enough larger ones (counted
            in ``info["clusters_below_min_size"]``); None: every cluster of at least
            ``min_cluster`` anchors.
        num_private: private slots per row (2 cross-dataset, ``k`` inside-dataset).
        dominance: anchor threshold on the largest label entry's share; default 0.75 for two
            private slots, 0.5 otherwise.
        threshold: clustering cut on ``1 - correlation`` of high-passed encryptions.
        min_cluster: smallest cluster kept as a private image.
        highpass_sigma: Gaussian blur width (pixels) removed before correlating (0: raw pixels).
        iterations: assignment / least-squares rounds.
        public: model public slots (``(1 - label sum) * mu``); default: when labels sum below 1.

    Returns:
        :class:`DemixResult`.
    """
    enc = check_encryption(encryption, "encryption", min_rows=2)
    lab = check_label(label, enc.shape[0])
    n_rows, shape = enc.shape[0], enc.shape[1:]
    num_private = check_count(num_private, "num_private")
    n_private = None if n_private is None else check_count(n_private, "n_private")
    iterations = check_count(iterations, "iterations", minimum=0)
    if (lab.sum(1) <= _EPS).any():
        raise ValueError("some label rows are all zero: the attack needs the leaked coefficients")
    if dominance is None:
        dominance = 0.75 if num_private == 2 else 0.5
    y = enc.reshape(n_rows, -1)
    public_mass = 1.0 - lab.sum(1)
    if public is None:
        public = bool(np.mean(public_mass) > 1e-3)
    public_mass = np.clip(public_mass, 0.0, None) if public else None

    # (a) anchors and clusters
    anchors, anchor_class = find_anchors(lab, dominance)
    if len(anchors) < min_cluster:
        raise ValueError(f"too few anchor rows ({len(anchors)}) with dominance >= {dominance}: "
                         "lower dominance, or give more encryptions")
    feats = highpass((y - y.mean(0)).reshape(enc.shape), highpass_sigma).reshape(n_rows, -1)
    groups = cluster_anchors(feats[anchors], anchor_class, threshold=threshold,
                             min_cluster=min_cluster if n_private is None else 1, max_clusters=n_private)
    small = sum(len(g) < min_cluster for g in groups)  # only when n_private asks for more clusters
    if not groups:
        raise ValueError("no cluster of anchors found: raise threshold or lower min_cluster")
    clusters = [anchors[g] for g in groups]
    proto_class = np.array([np.bincount(anchor_class[g]).argmax() for g in groups])
    m = len(clusters)

    # initial images: each anchor row is its dominant coefficient times its cluster's image, the
    # rest (other private image + public part) is modelled by one common mean image
    rows = np.concatenate(clusters)
    which = np.concatenate([np.full(len(g), i) for i, g in enumerate(clusters)])
    lmax = lab[rows].max(1)
    protos, mu = _solve_images(y[rows], which[:, None], lmax[:, None], 1.0 - lmax, m)

    # (b)-(c) alternate assignment (on high-passed images, where rows are told apart; the model
    # is linear, so it holds there too) and least squares (on the raw pixels)
    def hp(v):
        return highpass(v.reshape(-1, *shape), highpass_sigma).reshape(len(v), -1)

    y_hp = hp(y)
    mass = public_mass if public else np.zeros(n_rows)
    assign = coef = None
    for _ in range(max(1, iterations)):
        target = y_hp - mass[:, None] * hp(mu[None])
        if num_private == 2:
            assign, coef = _assign_pairs(target, hp(protos), proto_class, lab)
        else:
            assign, coef = _assign_nnls(target, hp(protos), proto_class, lab, num_private)
        if iterations == 0:
            break
        protos, mu = _solve_images(y, assign, coef, public_mass, m)
        if mu is None:
            mu = np.zeros(y.shape[1])
    recovered = protos.reshape(m, *shape).astype(np.float32)
    best = assign[:, 0]
    decryption = np.where((best >= 0)[:, None, None, None], recovered[np.maximum(best, 0)], 0.0).astype(np.float32)
    return DemixResult(
        recovered=recovered, decryption=decryption, assignment=assign, coefficients=coef, clusters=clusters,
        cluster_class=proto_class, anchors=anchors,
        public_mean=None if not public else mu.reshape(shape).astype(np.float32),
        info={"dominance": dominance, "threshold": threshold, "unassigned_rows": int((best < 0).sum()),
              "clusters_below_min_size": small},
    )

