"""Steps 3-5 of Carlini et al.'s attack: similarity graph (:func:`similarity_graph`), dense clusters
(:func:`grow_clusters`), assignment and coefficients (:func:`assign_rows`). Nothing reads the row order;
the metrics against the truth (:func:`pair_metrics`, ...) are for REPORTING only.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["label_support", "compatibility", "similarity_graph", "grow_clusters", "cluster_affinity",
           "assign_rows", "refine_assignment", "pair_metrics", "cluster_metrics", "assignment_accuracy",
           "true_member_sets", "roc_auc"]

_EPS = 1e-6


def label_support(label: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """bool ``(N, classes)``: the classes with mass in each leaked label."""
    return np.asarray(label) > eps


def compatibility(support: np.ndarray) -> np.ndarray:
    """bool ``(N, N)``: rows whose label supports share a class (the only pairs that can share an image)."""
    s = support.astype(np.float32)
    return (s @ s.T) > 0


def similarity_graph(network, embeddings: torch.Tensor, support: np.ndarray, *, chunk: int = 2048) -> np.ndarray:
    """float32 ``(N, N)`` pair probabilities ``sigmoid(logit)``, symmetrised, zero on the diagonal
    and on class-impossible pairs. ``embeddings``: ``(N, D)`` from :func:`embed`."""
    n = len(embeddings)
    graph = np.empty((n, n), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, n, chunk):
            graph[s:s + chunk] = torch.sigmoid(network.logit_matrix(embeddings[s:s + chunk], embeddings)).float().cpu().numpy()
    graph = (graph + graph.T) / 2
    graph *= compatibility(support)
    np.fill_diagonal(graph, 0.0)
    return graph


def grow_clusters(graph: np.ndarray, support: np.ndarray, n_clusters: int, core_size: int, *,
                  max_overlap: float = 0.3, max_seeds_per_class: int = 600, seed: int = 0):
    """Dense clusters of the graph, one per private image: greedy growth inside every class, adding the
    row most similar to the cluster up to ``core_size`` rows; the densest cores that overlap little win.

    Args:
        graph: ``(N, N)`` similarities (zero on the diagonal).
        support: bool ``(N, classes)`` label supports.
        n_clusters: how many to keep (the number of private images ``n``).
        core_size: rows per grown cluster (default in the driver: half the expected
            ``num_private * T`` rows that hold one image).
        max_overlap: largest share of a core that may also be in an already kept core (rows holding
            two images of one class legitimately belong to two clusters).
        max_seeds_per_class: seeds grown per class (all rows of the class when fewer).

    Returns:
        ``(cores, classes, quality)``: a list of ``n_clusters`` int arrays (row indices; fewer when
        the graph has too few rows), int ``(m,)`` each cluster's class, float ``(m,)`` its mean
        internal similarity.
    """
    rng = np.random.default_rng(seed)
    cands = []  # (quality, class, rows)
    for c in range(support.shape[1]):
        rows = np.nonzero(support[:, c])[0]
        m = min(core_size, len(rows))
        if m < 2:
            continue
        a = torch.from_numpy(np.ascontiguousarray(graph[np.ix_(rows, rows)], dtype=np.float32))
        seeds = rows if len(rows) <= max_seeds_per_class else rng.choice(rows, max_seeds_per_class, replace=False)
        local = torch.from_numpy(np.searchsorted(rows, seeds))
        s = len(local)
        member = torch.zeros(s, len(rows), dtype=torch.bool)
        member[torch.arange(s), local] = True
        sums = a[local].clone()
        for _ in range(m - 1):
            nxt = sums.masked_fill(member, -np.inf).argmax(1)
            member[torch.arange(s), nxt] = True
            sums += a[nxt]
        mf = member.float()
        quality = ((mf @ a) * mf).sum(1) / (m * (m - 1))
        for i in range(s):
            cands.append((float(quality[i]), c, rows[member[i].numpy()]))
    cands.sort(key=lambda t: -t[0])
    cores, classes, quality = [], [], []
    for limit in (max_overlap, 0.5, 0.7, 1.01):  # relax the overlap only if too few clusters were found
        for q, c, rows in cands:
            if len(cores) >= n_clusters:
                break
            if any(c == c2 and len(np.intersect1d(rows, r2)) == len(rows) for r2, c2 in zip(cores, classes)):
                continue
            overlaps = [len(np.intersect1d(rows, r2)) / len(rows) for r2 in cores]
            if not overlaps or max(overlaps) < limit:
                cores.append(rows)
                classes.append(c)
                quality.append(q)
        if len(cores) >= n_clusters:
            break
    return cores, np.array(classes, dtype=np.int64), np.array(quality)


def cluster_affinity(graph: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    """``(N, m)`` mean similarity of every row to each cluster's rows."""
    aff = np.zeros((len(graph), len(members)), dtype=np.float64)
    for j, rows in enumerate(members):
        if len(rows):
            aff[:, j] = graph[:, rows].mean(1)
    return aff


def assign_rows(affinity: np.ndarray, cluster_class: np.ndarray, label: np.ndarray, num_private: int, *,
                eps: float = _EPS):
    """Assign every row to ``num_private`` distinct clusters.

    Each class in the row's label first gets its best cluster of that class; the remaining slots go
    to the best remaining clusters whose class is in the label (so a one-class label, both private
    images of one class, gets two clusters of that class); clusters of the label's classes are
    preferred, and when a class has no cluster the best cluster of any class stands in.

    Returns ``(assignment, coefficients)``: int ``(N, num_private)`` cluster indices ordered by
    affinity, float ``(N, num_private)`` coefficients from the label (a class's mass split equally
    among its assigned clusters).
    """
    n_rows, m = affinity.shape
    if m < num_private:
        raise ValueError(f"only {m} clusters for {num_private} private slots per row")
    assignment = np.empty((n_rows, num_private), dtype=np.int64)
    coefs = np.empty((n_rows, num_private), dtype=np.float64)
    for r in range(n_rows):
        classes = np.nonzero(label[r] > eps)[0]
        classes = classes[np.argsort(-label[r, classes])][:num_private]
        chosen: list[int] = []
        order = np.argsort(-affinity[r])
        for c in classes:
            pick = next((j for j in order if cluster_class[j] == c and j not in chosen), None)
            if pick is not None:
                chosen.append(int(pick))
        in_label = np.isin(cluster_class, classes)
        for j in [j for j in order if in_label[j]] + list(order):  # then, if none is left, the best others
            if len(chosen) < num_private and j not in chosen:
                chosen.append(int(j))
        chosen.sort(key=lambda j: -affinity[r, j])
        assignment[r] = chosen
        cls = cluster_class[chosen]
        for s, (j, c) in enumerate(zip(chosen, cls)):
            same = int(np.sum(cls == c))
            coefs[r, s] = label[r, c] / same if label[r, c] > eps else 0.0
    return assignment, coefs


def refine_assignment(graph: np.ndarray, assignment: np.ndarray, cluster_class: np.ndarray, label: np.ndarray,
                      num_private: int, rounds: int = 2):
    """Alternate: clusters = the rows assigned to them; rows re-assigned by mean similarity to those."""
    coefs = None
    m = len(cluster_class)
    for _ in range(rounds):
        members = [np.nonzero((assignment == j).any(1))[0] for j in range(m)]
        aff = cluster_affinity(graph, members)
        assignment, coefs = assign_rows(aff, cluster_class, label, num_private)
    return assignment, coefs


# -- metrics against the ground truth (reporting only) ----------------------------------------------
def true_member_sets(indices: np.ndarray, num_private: int, n_private: int) -> np.ndarray:
    """bool ``(N, n)``: which private images each row holds (from the truth's indices)."""
    idx = np.asarray(indices)[:, :num_private]
    out = np.zeros((len(idx), n_private), dtype=bool)
    out[np.arange(len(idx))[:, None], idx] = True
    return out


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, np.float64))  # 1-based, ties get their average rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pair_metrics(graph_or_prob: np.ndarray, members: np.ndarray, support: np.ndarray, *, max_rows: int = 2000,
                 seed: int = 0) -> dict:
    """Pair accuracy and ROC-AUC of ``(N, N)`` probabilities against the truth ``members (N, n)``.

    Over the class-compatible pairs ``i < j`` of up to ``max_rows`` rows: ``auc``, ``balanced_acc``
    (mean of the accuracies on positive and negative pairs at threshold 0.5), ``acc`` (plain), and
    the share of positive pairs among them (``positive_rate``)."""
    n = len(members)
    rows = np.arange(n) if n <= max_rows else np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    p = graph_or_prob[np.ix_(rows, rows)]
    mem = members[rows].astype(np.float32)
    share = (mem @ mem.T) > 0
    comp = compatibility(support[rows])
    iu = np.triu_indices(len(rows), 1)
    keep = comp[iu]
    s, y = p[iu][keep], share[iu][keep]
    pred = s > 0.5
    tpr = float(pred[y].mean()) if y.any() else float("nan")
    tnr = float((~pred[~y]).mean()) if (~y).any() else float("nan")
    return {"auc": roc_auc(s, y), "balanced_acc": (tpr + tnr) / 2, "acc": float((pred == y).mean()),
            "true_positive_rate": tpr, "true_negative_rate": tnr, "positive_rate": float(y.mean()),
            "pairs": int(len(y))}


def cluster_metrics(cores: list[np.ndarray], members: np.ndarray) -> dict:
    """Purity (share of core rows holding the cluster's majority image, averaged over clusters),
    coverage (distinct private images that are some cluster's majority / ``n``), and the
    cluster -> image map ``cluster_image (m,)``."""
    images, purity = [], []
    for rows in cores:
        counts = members[rows].sum(0)
        j = int(np.argmax(counts))
        images.append(j)
        purity.append(counts[j] / max(len(rows), 1))
    images = np.array(images, dtype=np.int64)
    return {"purity": float(np.mean(purity)) if purity else 0.0,
            "coverage": len(set(images.tolist())) / members.shape[1], "clusters": len(cores),
            "cluster_image": images}


def assignment_accuracy(assignment: np.ndarray, cluster_image: np.ndarray, members: np.ndarray) -> dict:
    """Share of rows whose assigned clusters map (by ``cluster_image``) exactly onto their true private
    images (``exact``), and the share of assigned slots that hold a true image (``slot``)."""
    mapped = cluster_image[assignment]  # (N, s)
    hit = members[np.arange(len(members))[:, None], mapped]
    exact = np.array([set(m.tolist()) == set(np.nonzero(t)[0].tolist()) for m, t in zip(mapped, members)])
    return {"exact": float(exact.mean()), "slot": float(hit.mean()), "any": float(hit.any(1).mean())}
