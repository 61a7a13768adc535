"""The driver of Carlini et al.'s attack (docs/attacks.md, "Carlini et al."): :func:`carlini_attack`.

One function per step (:func:`pair_graph`, :func:`find_clusters`, :func:`assign_clusters`,
:func:`solve_images`, :func:`fix_signs`, :func:`decrypt_rows`; :func:`run_steps` chains them after the
pair network), each step's result cached by :class:`StepCache` under ``checkpoint_dir``, and
:func:`score_steps` (per-step accuracies against the truth, after the fact: the algorithm never
reads it, nor the row order). Example: :mod:`instahide.attacks.carlini`.
"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..._io import atomic_savez, atomic_write_text, load_plain_npz
from ...challenge import make_challenge
from ...data.arrays import default_stats
from ...data.scaling import SCALINGS, private_stats, scale_images
from ...metrics import ssim
from ...scheme import KeyGenerator
from ...scheme.defaults import DOM, UPPER
from ...train.ddp import resolve_device
from ..inputs import check_attacker_data, check_count, check_encryption, check_label
from . import graph as G
from . import reconstruct as R
from .config import CarliniConfig
from .network import (EncryptionSampler, PairNet, embed, load_pair_network, save_pair_network, train_pair_network,
                      train_sign_network)

__all__ = ["CarliniResult", "carlini_attack", "scheme_params", "Clusters", "Assignment", "Solution",
           "Steps", "StepCache", "pair_graph", "find_clusters", "assign_clusters",
           "solve_images", "fix_signs", "decrypt_rows", "run_steps", "score_steps"]


@dataclass
class CarliniResult:
    """What :func:`carlini_attack` returns.

    Attributes:
        decryption: float32 ``(N, C, H, W)``: per row, the recovered image of its best-fitting assigned
            cluster (the one it is most similar to).
        recovered: float32 ``(m, C, H, W)``, one image per cluster (``m = n_private`` normally).
        clusters: per cluster, the rows assigned to it; ``cores``: the grown cores (step 4).
        cluster_class: int ``(m,)``; assignment: int ``(N, num_private)``; coefficients: ``(N, num_private)``.
        public_mean: ``(C, H, W)`` estimated public mean (cross-dataset) or None.
        sign, sign_confidence: the global sign and its margin (the sign network: its vote per image; the
            public-mean prior: +1 and the share of positions kept minus flipped; the public-mean vote:
            the share of positions that agree with it minus those that do not; +1 on unit pixels).
        metrics: per-step accuracies against ``truth`` (empty without it), fit losses and the sign rule.
        timings: seconds per step. ``train_log``: the pair network's training log.
        network: the pair network (reuse it with ``network=`` on challenges of the same configuration).
    """

    decryption: np.ndarray
    recovered: np.ndarray
    clusters: list
    cores: list
    cluster_class: np.ndarray
    assignment: np.ndarray
    coefficients: np.ndarray
    public_mean: np.ndarray | None
    sign: int
    sign_confidence: float
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    train_log: list = field(default_factory=list)
    network: PairNet | None = None
    info: dict = field(default_factory=dict)


# -- step results ----------------------------------------------------------------------------------
@dataclass
class Clusters:
    """Step 4: per cluster, the rows of its grown core, and its class ``(m,)``."""

    cores: list
    cluster_class: np.ndarray


@dataclass
class Assignment:
    """Step 5: every row's ``num_private`` clusters and their coefficients, both ``(N, num_private)``."""

    assignment: np.ndarray
    coefficients: np.ndarray


@dataclass
class Solution:
    """Step 6: the images ``(m, C, H, W)``, the public mean ``(C, H, W)`` or None, the final assignment
    and coefficients, the assignment after each fit round, the fit losses; then the global ``sign``,
    its confidence and the rule that fixed the signs (:func:`fix_signs`)."""

    recovered: np.ndarray
    public_mean: np.ndarray | None
    assignment: np.ndarray
    coefficients: np.ndarray
    fit_assignments: list
    info: dict
    sign: int = 1
    sign_confidence: float = 0.0
    sign_rule: str = "none"


@dataclass
class Steps:
    """Everything :func:`run_steps` computed on one challenge."""

    graph: np.ndarray
    clusters: Clusters
    first: Assignment
    solution: Solution
    best: np.ndarray


def _assigned_rows(assignment: np.ndarray, cores: list) -> list[np.ndarray]:
    """Per cluster, the rows the assignment gives it (its core when none)."""
    return [r if len(r) else cores[j] for j, r in
            enumerate(np.nonzero((assignment == j).any(1))[0] for j in range(len(cores)))]


# -- the algorithm ---------------------------------------------------------------------------------
def scheme_params(k: int, num_private: int, upper: float, dom: float, mode: str, scaling: str) -> dict:
    """The public parameters a pair network is tied to."""
    return {"k": int(k), "num_private": int(num_private), "upper": float(upper),
            "dom": float(dom) if num_private < k else None, "mode": mode, "scaling": scaling}


def pair_graph(network: PairNet, magnitude: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Step 3: ``(N, N)`` pair probabilities of the magnitudes ``(N, C, H, W)``, class-impossible pairs 0."""
    emb = embed(network, torch.from_numpy(np.ascontiguousarray(magnitude, np.float32)))
    return G.similarity_graph(network, emb, G.label_support(label))


def find_clusters(graph: np.ndarray, label: np.ndarray, *, n_private: int, num_private: int,
                  config: CarliniConfig) -> Clusters:
    """Step 4: ``n_private`` dense clusters, cores of ``core_fraction * num_private * T`` rows."""
    T = len(graph) // n_private  # noqa: N806 - the paper's name
    core_size = max(2, int(round(config.core_fraction * num_private * T)))
    cores, cluster_class, _ = G.grow_clusters(graph, G.label_support(label), n_private, core_size,
                                              max_overlap=config.max_overlap, seed=config.seed)
    if len(cores) < num_private:
        raise ValueError(f"found only {len(cores)} clusters; the graph is too sparse (too few rows per image?)")
    return Clusters(cores, cluster_class)


def assign_clusters(graph: np.ndarray, clusters: Clusters, label: np.ndarray, *, num_private: int,
                    config: CarliniConfig) -> Assignment:
    """Step 5: every row to ``num_private`` clusters by mean similarity, coefficients from the label."""
    aff = G.cluster_affinity(graph, clusters.cores)
    a, c = G.assign_rows(aff, clusters.cluster_class, label, num_private)
    if config.refine_rounds:
        a, c = G.refine_assignment(graph, a, clusters.cluster_class, label, num_private, config.refine_rounds)
    return Assignment(a, c)


def _reconstruct(enc, mag, assignment, coefs, label, cluster_class, *, m, k, num_private, pixel_range,
                 config, progress, public_prior):
    pub = R.public_mass(label, num_private, k)
    info = {}
    if config.reconstruction in ("oracle", "oracle+gd"):
        if public_prior and config.public_variance == "likelihood":
            var, tried = R.likelihood_variance(
                enc, assignment, coefs, label, k=k, num_private=num_private, n_clusters=m,
                square_ratio=public_prior["square_ratio"], base=public_prior["public_variance"],
                grid=config.variance_grid, iterations=config.variance_iterations)
            public_prior = {**public_prior, "public_variance": var}
            info["public_variance_nll"] = tried
            info["public_variance_level"] = float(np.mean(var))
        rec, pmean = R.reconstruct_oracle(enc, assignment, coefs, label, k=k, num_private=num_private, n_clusters=m,
                                          pixel_range=pixel_range, iterations=config.oracle_iterations,
                                          propagate=config.propagate_sweeps, **(public_prior or {}))
        info["oracle_fit_loss"] = R.fit_loss(mag, rec, pmean, assignment, coefs, pub)
    if config.reconstruction in ("gd", "oracle+gd"):
        start = config.reconstruction == "oracle+gd"
        rec, pmean, coefs, _ = R.reconstruct_gd(mag, assignment, coefs, pub, n_clusters=m, cluster_class=cluster_class,
                                                pixel_range=pixel_range, steps=config.gd_steps,
                                                init=rec if start else None, init_public=pmean if start else None,
                                                seed=config.seed, progress=progress)
        if pixel_range == "pm1":
            rec, pmean = R.align_solution(rec, pmean)
        info["gd_fit_loss"] = R.fit_loss(mag, rec, pmean, assignment, coefs, pub)
    return rec, pmean, coefs, info


def solve_images(enc: np.ndarray, label: np.ndarray, clusters: Clusters, first: Assignment, *, k: int,
                 num_private: int, pixel_range: str, upper: float, config: CarliniConfig,
                 progress=None, public_prior: dict | None = None) -> Solution:
    """Step 6: the images from the assignment, then ``fit_rounds`` re-assignments by fit
    (``num_private == 2``), each followed by a new reconstruction. ``public_prior``: keywords
    ``square_ratio`` and ``public_variance`` of :func:`~.reconstruct.reconstruct_oracle` (the public
    part's statistics from the attacker's own pool and coefficient law)."""
    mag, m, cls = np.abs(enc), len(clusters.cores), clusters.cluster_class
    kw = dict(m=m, k=k, num_private=num_private, pixel_range=pixel_range, config=config, progress=progress,
              public_prior=public_prior)
    a = first.assignment
    rec, pmean, coefs, info = _reconstruct(enc, mag, a, first.coefficients, label, cls, **kw)
    pub = R.public_mass(label, num_private, k)
    history = []
    for _ in range(config.fit_rounds if num_private == 2 else 0):
        a, coefs = R.assign_by_fit(mag, rec, pmean, label, cls, a, coefs, pub, upper=upper)
        history.append(a)
        rec, pmean, coefs, info = _reconstruct(enc, mag, a, coefs, label, cls, **kw)
    return Solution(rec.astype(np.float32), pmean, a, coefs, history, info)


def fix_signs(solution: Solution, *, pixel_range: str, prior_mu: np.ndarray | None, sign_net,
              vote: bool = False) -> Solution:
    """The signs ``|e|`` cannot give (centred pixels), from the attacker's own data only: every
    position's sign from its own public pool's mean (``prior_mu (C, H, W)``, cross-dataset; ``vote``:
    one global sign voted by it instead), or one global sign from its sign network's vote; nothing on
    unit pixels."""
    rec, pmean, sign, conf = solution.recovered, solution.public_mean, 1, 0.0
    rule = "none (unit pixels)" if pixel_range == "unit" else "none"
    if pixel_range == "pm1" and pmean is not None and prior_mu is not None and not vote:
        flip = R.public_sign_field(pmean, prior_mu.reshape(pmean.shape))
        rec, pmean, conf, rule = rec * flip[None], pmean * flip, float(flip.mean()), "public-mean prior"
    elif pixel_range == "pm1" and pmean is not None and prior_mu is not None:
        sign = R.public_sign_vote(pmean, prior_mu.reshape(pmean.shape))
        f = np.asarray(pmean, np.float64) * prior_mu.reshape(pmean.shape) * sign
        rec, pmean, conf, rule = rec * sign, pmean * sign, float(np.mean(f >= 0) - np.mean(f < 0)), "public-mean vote"
    elif pixel_range == "pm1" and sign_net is not None:
        sign, conf = R.choose_sign(rec, sign_net)
        rec, pmean, rule = rec * sign, None if pmean is None else pmean * sign, "sign-network vote"
    return replace(solution, recovered=rec.astype(np.float32), public_mean=pmean, sign=sign, sign_confidence=conf,
                   sign_rule=rule)


def decrypt_rows(graph: np.ndarray, assignment: np.ndarray, cores: list) -> np.ndarray:
    """Per row, the assigned cluster it is most similar to ``(N,)``."""
    aff = G.cluster_affinity(graph, _assigned_rows(assignment, cores))
    return assignment[np.arange(len(graph)), np.argmax(np.take_along_axis(aff, assignment, 1), axis=1)]


def run_steps(enc: np.ndarray, label: np.ndarray, network: PairNet, *, n_private: int, k: int, num_private: int,
              pixel_range: str, upper: float, config: CarliniConfig, prior_mu=None, sign_net=None,
              public_prior: dict | None = None, cache: StepCache | None = None, timings: dict | None = None,
              progress=None) -> Steps:
    """Steps 3-6 on one challenge (also the attacker's own, for the colour correction)."""
    cache, timings = cache or StepCache(None, ""), {} if timings is None else timings
    with _timed(timings, "graph"):
        graph = pair_graph(network, np.abs(enc), label)
    with _timed(timings, "cluster_assign"):
        clusters = cache.step("clusters", Clusters, lambda: find_clusters(
            graph, label, n_private=n_private, num_private=num_private, config=config))
        first = cache.step("assignment", Assignment, lambda: assign_clusters(
            graph, clusters, label, num_private=num_private, config=config))
    with _timed(timings, "reconstruct"):
        solution = cache.step("solution", Solution, lambda: solve_images(
            enc, label, clusters, first, k=k, num_private=num_private, pixel_range=pixel_range, upper=upper,
            config=config, progress=progress, public_prior=public_prior))
        solution = fix_signs(solution, pixel_range=pixel_range, prior_mu=prior_mu, sign_net=sign_net,
                             vote=config.sign_rule == "public-mean-vote")
    return Steps(graph, clusters, first, solution, decrypt_rows(graph, solution.assignment, clusters.cores))


# -- caching ---------------------------------------------------------------------------------------
class StepCache:
    """Each step's result as an atomic ``<name>.npz`` in ``folder`` (None: nothing cached), reused only
    when written for the same ``fingerprint`` of input and options."""

    def __init__(self, folder, fingerprint: str):
        self.folder, self.fingerprint = (None if folder is None else Path(folder)), fingerprint
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, cls, compute):
        """``compute()`` (a result dataclass of arrays, lists of arrays, dicts and None) or its saved copy."""
        path = None if self.folder is None else self.folder / f"{name}.npz"
        try:
            saved = None if path is None or not path.exists() else load_plain_npz(path, "checkpoint")
        except ValueError:  # a corrupt checkpoint is computed again
            saved = None
        if saved is not None and str(saved.pop("fingerprint", "")) == self.fingerprint:
            return cls(**_decode(saved))
        out = compute()
        if path is not None:
            atomic_savez(path, {"fingerprint": np.array(self.fingerprint), **_encode(out)})
        return out

    def pair_network(self, scheme: dict, device: str, train) -> tuple[PairNet, list]:
        """The saved ``pairnet.pt`` when trained for ``scheme``, else ``train()`` (saved)."""
        path = None if self.folder is None else self.folder / "pairnet.pt"
        if path is not None and path.exists():
            net = load_pair_network(path)
            if net.config.scheme == scheme:
                return net.to(device), []
        net, log = train()
        if path is not None:
            save_pair_network(net, path)
        return net, log


def _encode(obj) -> dict:
    out = {}
    for name, v in vars(obj).items():
        if isinstance(v, list):
            out[f"{name}.lens"] = np.array([len(x) for x in v], np.int64)
            out[f"{name}.list"] = np.concatenate(v) if v else np.zeros(0, np.int64)
        elif isinstance(v, dict):
            out[f"{name}.json"] = np.array(json.dumps(v))
        else:
            out[f"{name}.none" if v is None else name] = np.zeros(0) if v is None else np.asarray(v)
    return out


def _decode(saved: dict) -> dict:
    kw = {}
    for key, v in saved.items():
        name, _, kind = key.partition(".")
        if kind == "list":
            lens = saved[f"{name}.lens"]
            kw[name] = np.split(v, np.cumsum(lens)[:-1]) if len(lens) else []
        elif kind in ("json", "none", ""):
            kw[name] = json.loads(str(v)) if kind == "json" else (None if kind == "none" else v)
    return kw


def _fingerprint(enc: np.ndarray, label: np.ndarray, params: dict) -> str:
    return hashlib.sha256(np.ascontiguousarray(enc, np.float32).tobytes() + np.ascontiguousarray(label, np.float32)
                          .tobytes() + json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:32]


@contextmanager
def _timed(timings: dict, name: str):
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


# -- scoring against the truth (reporting only) ----------------------------------------------------
def _assignment_scores(assignment, cores, members) -> tuple[dict, dict]:
    fm = G.cluster_metrics(_assigned_rows(assignment, cores), members)
    return fm, G.assignment_accuracy(assignment, fm["cluster_image"], members)


def score_steps(steps: Steps, label: np.ndarray, members: np.ndarray) -> dict:
    """Per-step accuracies of ``steps`` against the true member sets ``members (N, n)``."""
    cores = steps.clusters.cores
    cm = G.cluster_metrics(cores, members)
    fm, first = _assignment_scores(steps.first.assignment, cores, members)
    out = {"pairs": G.pair_metrics(steps.graph, members, G.label_support(label)),
           "clusters": {"core_purity": cm["purity"], "core_coverage": cm["coverage"], "purity": fm["purity"],
                        "coverage": fm["coverage"], "clusters": len(cores)},
           "assignment": first}
    for i, a in enumerate(steps.solution.fit_assignments):
        out[f"assignment_fit{i + 1}"] = _assignment_scores(a, cores, members)[1]
    fm, out["assignment_final"] = _assignment_scores(steps.solution.assignment, cores, members)
    out["cluster_image"] = fm["cluster_image"].tolist()
    return out


def _score_images(rec: np.ndarray, truth, cluster_image: list, pixel_range: str) -> dict:
    data_range = float(getattr(truth, "data_range", 2.0 if pixel_range == "pm1" else 1.0))
    ref = np.asarray(truth.private, np.float64)[np.array(cluster_image)]
    pos = float(ssim(np.asarray(rec, np.float64), ref, data_range=data_range))
    out = {"recovered_ssim_mean": pos}
    if pixel_range == "pm1":  # reporting only; never used to steer
        out["sign_correct"] = bool(pos >= float(ssim(-np.asarray(rec, np.float64), ref, data_range=data_range)))
    return out


# -- the entry point -------------------------------------------------------------------------------
def carlini_attack(
    encryption,
    label,
    *,
    n_private: int,
    k: int,
    num_private: int,
    attacker_images,
    attacker_labels,
    attacker_public=None,
    upper: float = UPPER,
    dom: float = DOM,
    mode: str = "instahide",
    scaling: str = "pm1",
    mean=None,
    std=None,
    config: CarliniConfig | None = None,
    network: PairNet | None = None,
    truth=None,
    progress=None,
    checkpoint_dir=None,
    **options,
) -> CarliniResult:
    """Carlini et al.'s attack on an InstaHide challenge, end to end (module docstring).

    Args:
        encryption: ``(N, C, H, W)`` float encryptions (any row order).
        label: ``(N, classes)`` leaked labels ``lambda_1 e_y1 + lambda_2 e_y2``.
        n_private: number of private images ``n`` (public in the challenge); must divide ``N``.
        k, num_private: the challenge's public parameters (``num_private < k``: cross-dataset).
        attacker_images, attacker_labels: the attacker's OWN labelled images, uint8 ``(M, C, H, W)``
            and ``(M,)`` (disjoint from the attacked ones), to train the networks on.
        attacker_public: the attacker's own public pool, uint8 ``(P, C, H, W)`` (cross-dataset).
        upper, dom, mode, scaling: the challenge's c1, c2, mode and pixel units (``"pm1"``, ``"unit"``,
            ``"normalize"`` with ``mean``/``std`` of the private set).
        config: the attack's options (:class:`CarliniConfig`; default ``CarliniConfig()``).
        network: a trained pair network (skips training; must be for the same scheme parameters).
        truth: the challenge's :class:`~instahide.challenge.ChallengeTruth` (rows in the SAME order as
            ``encryption``), ONLY to report per-step accuracies in ``result.metrics``.
        progress: ``callable(step_name, dict)`` called as the steps advance.
        checkpoint_dir: folder for the trained network and each step's output; a rerun with the same
            input and options resumes from them (atomic writes).
        options: fields of :class:`CarliniConfig` overriding ``config`` (e.g. ``train_steps=60``).

    Returns:
        :class:`CarliniResult`.
    """
    config = replace(config or CarliniConfig(), **options)
    resolve_device(config.device)  # CUDA asked for and absent: one clear error before any work
    enc = check_encryption(encryption, "encryption")
    n_rows = enc.shape[0]
    lab = check_label(label, n_rows)
    n_private, k, num_private = (check_count(v, name) for v, name in
                                 ((n_private, "n_private"), (k, "k"), (num_private, "num_private")))
    if n_rows % n_private:
        raise ValueError(f"n_private={n_private} does not divide the {n_rows} rows (N = n * T)")
    T = n_rows // n_private  # noqa: N806 - the paper's name
    if T < 2:
        raise ValueError(f"too few rows: {n_rows} rows for {n_private} images is T={T} encryption per image; "
                         "the clustering needs T >= 2")
    if not num_private <= min(k, n_private):
        raise ValueError(f"need num_private <= k and <= n_private, got num_private={num_private}, k={k}, "
                         f"n_private={n_private}")
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; expected one of {SCALINGS}")
    if mode != "instahide":
        raise ValueError(f"mode {mode!r}: this attack targets masked InstaHide (use instahide.attacks.demix on Mixup)")
    a_img, a_lab, a_pub = check_attacker_data(attacker_images, attacker_labels, attacker_public, enc.shape[1:],
                                              num_private, k)
    a_img, a_lab = a_img[:config.attacker_images], a_lab[:config.attacker_images]
    pixel_range = "unit" if scaling == "unit" else "pm1"
    params = scheme_params(k, num_private, upper, dom, mode, scaling)
    options = {key: v for key, v in asdict(config).items() if key != "device"}
    fp = _fingerprint(enc, lab, {**params, **options, "n_private": n_private})
    cache, timings = StepCache(checkpoint_dir, fp), {}

    if truth is not None and len(truth.indices) != n_rows:
        raise ValueError(f"truth has {len(truth.indices)} rows but encryption has {n_rows}")
    members = None if truth is None else G.true_member_sets(truth.indices, num_private, n_private)
    x_att = _scale(a_img, scaling, False, mean, std)
    p_att = None if a_pub is None else _scale(a_pub, scaling, True)
    with _timed(timings, "train_pair_network"):
        network, train_log = _pair_network(network, cache, params, config, lambda: train_pair_network(
            EncryptionSampler(x_att, torch.from_numpy(a_lab), p_att, k=k, num_private=num_private, upper=upper,
                              dom=dom, mode=mode, num_classes=max(lab.shape[1], int(a_lab.max()) + 1),
                              allow_uncentred=True, seed=config.seed),  # the attacker's own batches
            config, scheme=params, progress=progress))
    with _timed(timings, "train_sign_network"):
        prior_mu = None if p_att is None or config.sign_rule == "sign-network" else p_att.mean(0).double().numpy()
        use_net = pixel_range == "pm1" and config.sign_steps and (p_att is None or config.sign_rule == "sign-network")
        sign_net = train_sign_network(x_att, steps=config.sign_steps, seed=config.seed) if use_net else None
    public_prior = None
    if config.public_prior and p_att is not None and pixel_range == "pm1":
        var = p_att.double().var(0).numpy()  # per position; "likelihood" starts from its per-channel level
        if config.public_variance == "likelihood":
            var = np.broadcast_to(var.mean(axis=(1, 2), keepdims=True), var.shape).copy()
        public_prior = {"square_ratio": R.public_square_ratio(k, num_private, upper, dom, seed=config.seed),
                        "public_variance": var}
    common = dict(n_private=n_private, k=k, num_private=num_private, pixel_range=pixel_range, upper=upper,
                  config=config, prior_mu=prior_mu, sign_net=sign_net, public_prior=public_prior)
    steps = run_steps(enc, lab, network, **common, cache=cache, timings=timings, progress=progress)

    metrics = {**steps.solution.info, "sign_rule": steps.solution.sign_rule}
    rec = steps.solution.recovered
    if config.colour_correction:
        with _timed(timings, "colour_correction"):
            net, metrics["own_challenge"] = _colour_net(a_img, a_lab, a_pub, network, T=T, lab_width=lab.shape[1],
                                                        scaling=scaling, mean=mean, std=std, dom=dom, common=common)
            rec = R.apply_colour_correction(net, rec, pixel_range if scaling != "normalize" else "none")
    if members is not None:
        metrics.update(score_steps(steps, lab, members))
        metrics.update(_score_images(rec, truth, metrics["cluster_image"], pixel_range))
        if progress:
            for name in ("pairs", "clusters", "assignment", "assignment_final"):
                progress(name, metrics[name])
    sol = steps.solution
    result = CarliniResult(
        decryption=rec[steps.best], recovered=rec, clusters=[np.nonzero((sol.assignment == j).any(1))[0]
                                                             for j in range(len(steps.clusters.cores))],
        cores=steps.clusters.cores, cluster_class=steps.clusters.cluster_class, assignment=sol.assignment,
        coefficients=sol.coefficients, public_mean=sol.public_mean, sign=sol.sign,
        sign_confidence=sol.sign_confidence, metrics=metrics, timings=timings, train_log=train_log,
        network=network, info={"T": T, "params": params, "config": options, "n_private": n_private,
                               "fingerprint": fp})
    if cache.folder is not None:
        atomic_write_text(cache.folder / "summary.json", json.dumps(
            {"metrics": metrics, "timings": timings, "info": result.info}, indent=2, default=str) + "\n")
    return result


def _pair_network(network, cache: StepCache, params: dict, config: CarliniConfig, train) -> tuple[PairNet, list]:
    """The given network (checked against the scheme), the cached one, or a new one."""
    if network is None:
        return cache.pair_network(params, config.device, train)
    got = network.config.scheme
    if got and got != params:
        raise ValueError(f"the pair network was trained for {got}, the challenge is {params}: train one for "
                         "this configuration (network=None)")
    return network.to(config.device), []


def _scale(images: np.ndarray, scaling: str, public: bool, mean=None, std=None) -> torch.Tensor:
    """The attacker's uint8 images (``public``: its pool) in the challenge's pixel units."""
    x = torch.as_tensor(np.ascontiguousarray(images))
    if scaling != "normalize":
        return scale_images(x, scaling)
    return scale_images(x, scaling, *(default_stats(x.shape[1]) if public else private_stats(x.shape[1], mean, std)))


def _colour_net(a_img, a_lab, a_pub, network, *, T, lab_width, scaling, mean, std, dom, common):  # noqa: N803
    """Run the steps on ``colour_challenges`` challenges of the attacker's own images (same parameters
    and size) and train the colour-correction network on its reconstructions -> its originals."""
    config = common["config"]
    rng = np.random.default_rng(config.seed + 7)
    recs, origs, report = [], [], []
    for c in range(max(1, config.colour_challenges)):
        sel = rng.choice(len(a_img), min(common["n_private"], len(a_img)), replace=False)
        enc, lab, truth = make_challenge(
            a_img[sel], a_lab[sel], a_pub, T=T, k=common["k"], num_private=common["num_private"] if a_pub is not None
            else None, upper=common["upper"], dom=dom, scaling=scaling, mean=mean, std=std, num_classes=lab_width,
            generator=KeyGenerator.from_seed(f"carlini-attacker-own-{config.seed}" + (f"-{c}" if c else "")),
            allow_uncentred=True)
        own = run_steps(enc.astype(np.float64), lab.astype(np.float64), network, **{**common, "n_private": truth.n})
        scores = score_steps(own, lab, G.true_member_sets(truth.indices, truth.num_private, truth.n))
        recs.append(own.solution.recovered)
        origs.append(truth.private[np.array(scores["cluster_image"])])
        report.append({name: scores[name] for name in ("clusters", "assignment")})
    net = R.fit_colour_correction(np.concatenate(recs), np.concatenate(origs), steps=config.colour_steps,
                                  seed=config.seed)
    return net, report[0] if len(report) == 1 else report
