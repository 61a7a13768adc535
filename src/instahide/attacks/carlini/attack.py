"""The driver of Carlini et al.'s attack (SPEC 5.B): :func:`carlini_attack`.

Steps (each a function of its own in :mod:`.network`, :mod:`.graph`, :mod:`.reconstruct`):

1. ``|e|`` (removes the mask exactly).
2. Pair network trained on the attacker's OWN encryptions (its images, its public pool, the attacked
   challenge's public parameters), or a given one (reused across challenges of one configuration).
3. Similarity graph over all ``N^2`` pairs, class-impossible pairs masked with the leaked labels.
4. Dense clusters, one per private image (greedy growth inside each class).
5. Assignment of every row to ``num_private`` clusters, coefficients from the labels.
6. Reconstruction (``"oracle"``: the oracle solver on the estimated keys; ``"gd"``: Carlini's
   gradient descent; ``"oracle+gd"``: the descent started from the oracle's solution), then on
   centred pixels the per-position sign alignment and ONE global sign from the attacker's own
   data prior (:func:`~.reconstruct.choose_sign`).
7. Optional colour correction trained on the attacker's own reconstructions of its own images.

The row order is never used (the challenge's rows are epoch-major; the attack works on any order),
and the ground truth (``truth=``) is only read to REPORT each step's accuracy in ``result.metrics``.

Example::

    from instahide.attacks.carlini import carlini_attack
    res = carlini_attack(encryption, label, n_private=20, k=6, num_private=2,
                         attacker_images=train.images, attacker_labels=train.labels,
                         attacker_public=pool.images, scaling="pm1", train_steps=600, truth=truth)
    res.decryption      # (N, H, W, C), one recovered image per row
    res.metrics         # per-step accuracies against the truth (reporting only)
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..._io import atomic_savez, atomic_write_text, load_plain_npz
from ..oracle import check_encryption, check_label
from . import graph as G
from . import reconstruct as R
from .network import (EncryptionSampler, PairNet, embed, load_pair_network, save_pair_network,
                      train_pair_network, train_sign_network)

__all__ = ["CarliniResult", "carlini_attack", "RECONSTRUCTIONS", "scheme_params"]

RECONSTRUCTIONS = ("oracle", "gd", "oracle+gd")
_SCALINGS = ("pm1", "unit", "normalize")


@dataclass
class CarliniResult:
    """What :func:`carlini_attack` returns.

    Attributes:
        decryption: float32 ``(N, H, W, C)``: per row, the recovered image of its best-fitting assigned
            cluster (the one it is most similar to).
        recovered: float32 ``(m, H, W, C)``, one image per cluster (``m = n_private`` normally).
        clusters: per cluster, the rows assigned to it; ``cores``: the grown cores (step 4).
        cluster_class: int ``(m,)``; assignment: int ``(N, num_private)``; coefficients: ``(N, num_private)``.
        public_mean: ``(H, W, C)`` estimated public mean (cross-dataset) or None.
        sign: global sign applied by the sign network's vote (+1/-1; +1 on unit pixels and with the
            public-mean prior, which fixes every position's sign itself) and ``sign_confidence`` (the
            vote per image, or the share of positions kept by the prior minus those flipped).
        metrics: per-step accuracies against ``truth`` (empty without it) and fit losses.
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


def scheme_params(k: int, num_private: int, upper: float, dom: float, mode: str, scaling: str) -> dict:
    """The public parameters a pair network is tied to."""
    return {"k": int(k), "num_private": int(num_private), "upper": float(upper),
            "dom": float(dom) if num_private < k else None, "mode": mode, "scaling": scaling}


def _scale(images, scaling: str, public: bool, mean=None, std=None) -> torch.Tensor:
    from ...challenge.make import _private_stats, scale_images
    from ...data.arrays import default_stats

    x = torch.as_tensor(np.ascontiguousarray(images))
    if scaling == "normalize":
        m, s = default_stats(x.shape[1]) if public else _private_stats(x.shape[1], mean, std)
        return scale_images(x, scaling, m, s)
    return scale_images(x, scaling)


def _check_attacker(images, labels, public, shape_chw, num_private: int, k: int, num_classes: int):
    if images is None:
        raise ValueError("no attacker images: the pair network is trained on the attacker's own images "
                         "(attacker_images=uint8 (M, C, H, W), disjoint from the attacked ones)")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"attacker_images must be uint8 (M, C, H, W) as loaded, got {images.dtype} {images.shape}")
    if tuple(images.shape[1:]) != shape_chw:
        raise ValueError(f"attacker images of another shape: {tuple(images.shape[1:])} (C, H, W), the encryptions "
                         f"are {shape_chw}")
    need = max(2 * k, 8)
    if len(images) < need:
        raise ValueError(f"too few attacker images: {len(images)}, at least {need} needed")
    labels = np.asarray(labels).astype(np.int64).ravel()
    if labels.shape != (len(images),):
        raise ValueError(f"{len(images)} attacker images but attacker_labels of shape {labels.shape}")
    if labels.min() < 0:
        raise ValueError("attacker labels must be class indices >= 0")
    if num_private < k:
        if public is None:
            raise ValueError(f"cross-dataset challenge (num_private={num_private} < k={k}): give attacker_public, "
                             "the attacker's own public pool uint8 (P, C, H, W)")
        public = np.asarray(public)
        if public.dtype != np.uint8 or public.ndim != 4 or tuple(public.shape[1:]) != shape_chw:
            raise ValueError(f"attacker_public must be uint8 (P, C, H, W) with (C, H, W) = {shape_chw}, got "
                             f"{public.dtype} {public.shape}")
    return images, labels, public if num_private < k else None


def _fingerprint(enc: np.ndarray, label: np.ndarray, params: dict) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(enc, np.float32).tobytes())
    h.update(np.ascontiguousarray(label, np.float32).tobytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _load_step(ckpt: Path | None, name: str, fp: str):
    if ckpt is None or not (ckpt / name).exists():
        return None
    try:
        d = load_plain_npz(ckpt / name, "checkpoint")
    except ValueError:
        return None
    return d if str(d.get("fingerprint")) == fp else None


def _pack(rows_list: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([len(r) for r in rows_list], dtype=np.int64)
    flat = np.concatenate(rows_list) if rows_list else np.zeros(0, np.int64)
    return flat.astype(np.int64), lens


def _unpack(flat: np.ndarray, lens: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(lens)[:-1]) if len(lens) else []


def _truth_arrays(truth, n_private: int, num_private: int, n_rows: int):
    if truth is None:
        return None, None
    idx = np.asarray(truth.indices)
    if idx.shape[0] != n_rows:
        raise ValueError(f"truth has {idx.shape[0]} rows but encryption has {n_rows}")
    return G.true_member_sets(idx, num_private, n_private), np.asarray(truth.private)


def _image_ssim(rec: np.ndarray, ref: np.ndarray, data_range: float) -> np.ndarray:
    from ...metrics import ssim

    return np.asarray(ssim(torch.from_numpy(np.asarray(rec, np.float64)), torch.from_numpy(np.asarray(ref, np.float64)),
                           data_range=data_range, reduction="none"))


def _solve(enc, mag, assignment, coefs, label, cluster_class, *, m, k, num_private, pixel_range, method, gd_steps,
           oracle_iterations, seed, progress):
    pub = R.public_mass(label, num_private, k)
    info = {}
    if method in ("oracle", "oracle+gd"):
        rec, pmean = R.reconstruct_oracle(enc, assignment, coefs, label, k=k, num_private=num_private, n_clusters=m,
                                          pixel_range=pixel_range, iterations=oracle_iterations)
        info["oracle_fit_loss"] = R.fit_loss(mag, rec, pmean, assignment, coefs, pub)
    if method in ("gd", "oracle+gd"):
        init = rec if method == "oracle+gd" else None
        init_pub = pmean if method == "oracle+gd" else None
        rec, pmean, coefs, _ = R.reconstruct_gd(mag, assignment, coefs, pub, n_clusters=m, cluster_class=cluster_class,
                                                pixel_range=pixel_range, steps=gd_steps, init=init,
                                                init_public=init_pub, seed=seed, progress=progress)
        if pixel_range == "pm1":
            rec, pmean = R.align_solution(rec, pmean)
        info["gd_fit_loss"] = R.fit_loss(mag, rec, pmean, assignment, coefs, pub)
    return rec, pmean, coefs, info


def _pipeline(enc, label, network, *, n_private, k, num_private, pixel_range, core_fraction, max_overlap,
              refine_rounds, fit_rounds, upper, prior_mu, method, gd_steps, oracle_iterations, sign_net, seed, progress, timings, metrics,
              members=None, ckpt=None, fp=""):
    """Steps 1 and 3-6 on one challenge (also used on the attacker's own challenge)."""
    n_rows = len(enc)
    T = n_rows // n_private  # noqa: N806 - the paper's name
    support = G.label_support(label)
    t = time.perf_counter()
    mag = np.abs(enc)
    mag_t = torch.from_numpy(np.ascontiguousarray(mag, np.float32)).permute(0, 3, 1, 2)
    graph = G.similarity_graph(network, embed(network, mag_t), support)
    timings["graph"] = time.perf_counter() - t
    if members is not None:
        metrics["pairs"] = G.pair_metrics(graph, members, support)
        if progress:
            progress("pairs", metrics["pairs"])

    t = time.perf_counter()
    saved = _load_step(ckpt, "clusters.npz", fp)
    if saved is not None:
        cores = _unpack(saved["cores"], saved["core_lens"])
        cluster_class, assignment, coefs = saved["cluster_class"], saved["assignment"], saved["coefficients"]
    else:
        core_size = max(2, int(round(core_fraction * num_private * T)))
        cores, cluster_class, quality = G.grow_clusters(graph, support, n_private, core_size, max_overlap=max_overlap,
                                                        seed=seed)
        if len(cores) < num_private:
            raise ValueError(f"found only {len(cores)} clusters; the graph is too sparse (too few rows per image?)")
        aff = G.cluster_affinity(graph, cores)
        assignment, coefs = G.assign_rows(aff, cluster_class, label, num_private)
        if refine_rounds:
            assignment, coefs = G.refine_assignment(graph, assignment, cluster_class, label, num_private, refine_rounds)
        if ckpt is not None:
            flat, lens = _pack(cores)
            atomic_savez(ckpt / "clusters.npz", {"fingerprint": np.array(fp), "cores": flat, "core_lens": lens,
                                                 "cluster_class": cluster_class, "assignment": assignment,
                                                 "coefficients": coefs})
    timings["cluster_assign"] = time.perf_counter() - t
    m = len(cores)
    clusters = [np.nonzero((assignment == j).any(1))[0] for j in range(m)]
    if members is not None:
        cm = G.cluster_metrics(cores, members)
        fm = G.cluster_metrics([c if len(c) else cores[j] for j, c in enumerate(clusters)], members)
        metrics["clusters"] = {"core_purity": cm["purity"], "core_coverage": cm["coverage"],
                               "purity": fm["purity"], "coverage": fm["coverage"], "clusters": m}
        metrics["assignment"] = G.assignment_accuracy(assignment, fm["cluster_image"], members)
        metrics["cluster_image"] = fm["cluster_image"].tolist()
        if progress:
            progress("clusters", metrics["clusters"])
            progress("assignment", metrics["assignment"])

    t = time.perf_counter()
    saved = _load_step(ckpt, "recovered.npz", fp)
    if saved is not None:
        rec, coefs, assignment = saved["recovered"], saved["coefficients"], saved["assignment"]
        pmean = saved["public_mean"] if saved["public_mean"].size else None
        info = json.loads(str(saved["info"]))
    else:
        solve = dict(m=m, k=k, num_private=num_private, pixel_range=pixel_range, method=method, gd_steps=gd_steps,
                     oracle_iterations=oracle_iterations, seed=seed, progress=progress)
        rec, pmean, coefs, info = _solve(enc, mag, assignment, coefs, label, cluster_class, **solve)
        pub = R.public_mass(label, num_private, k)
        for it in range(fit_rounds if num_private == 2 else 0):
            assignment, coefs = R.assign_by_fit(mag, rec, pmean, label, cluster_class, assignment, coefs, pub,
                                                upper=upper)
            if members is not None:
                fm = G.cluster_metrics([np.nonzero((assignment == j).any(1))[0] for j in range(m)], members)
                metrics[f"assignment_fit{it + 1}"] = G.assignment_accuracy(assignment, fm["cluster_image"], members)
                if progress:
                    progress(f"assignment_fit{it + 1}", metrics[f"assignment_fit{it + 1}"])
            rec, pmean, coefs, info = _solve(enc, mag, assignment, coefs, label, cluster_class, **solve)
        if ckpt is not None:
            atomic_savez(ckpt / "recovered.npz", {"fingerprint": np.array(fp), "recovered": rec, "coefficients": coefs,
                                                  "assignment": assignment,
                                                  "public_mean": np.zeros(0) if pmean is None else pmean,
                                                  "info": np.array(json.dumps(info))})
    clusters = [np.nonzero((assignment == j).any(1))[0] for j in range(m)]
    if members is not None:
        fm = G.cluster_metrics([c if len(c) else cores[j] for j, c in enumerate(clusters)], members)
        metrics["assignment_final"] = G.assignment_accuracy(assignment, fm["cluster_image"], members)
        metrics["cluster_image"] = fm["cluster_image"].tolist()
    metrics.update(info)
    sign, conf, rule = 1, 0.0, "none (unit pixels)" if pixel_range == "unit" else "none"
    if pixel_range == "pm1" and pmean is not None and prior_mu is not None:
        field_ = R.public_sign_field(pmean, prior_mu.reshape(pmean.shape))
        rec, pmean = rec * field_[None], pmean * field_
        conf, rule = float(field_.mean()), "public-mean prior"
    elif pixel_range == "pm1" and sign_net is not None:
        sign, conf = R.choose_sign(rec, sign_net)
        rec = rec * sign
        pmean = None if pmean is None else pmean * sign
        rule = "sign-network vote"
    metrics["sign_rule"] = rule
    timings["reconstruct"] = time.perf_counter() - t
    aff = G.cluster_affinity(graph, [c if len(c) else cores[j] for j, c in enumerate(clusters)])
    best = assignment[np.arange(n_rows), np.argmax(np.take_along_axis(aff, assignment, 1), axis=1)]
    return dict(rec=rec.astype(np.float32), pmean=pmean, coefs=coefs, assignment=assignment, cores=cores,
                clusters=clusters, cluster_class=cluster_class, sign=sign, conf=conf, best=best, graph=graph)


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
    upper: float = 0.65,
    dom: float = 0.3,
    mode: str = "instahide",
    scaling: str = "pm1",
    mean=None,
    std=None,
    network: PairNet | None = None,
    train_steps: int = 600,
    train_time_s: float | None = None,
    batch_images: int = 64,
    batch_epochs: int = 4,
    width_mult: int = 16,
    depth: int = 4,
    core_fraction: float = 0.5,
    max_overlap: float = 0.3,
    refine_rounds: int = 0,
    fit_rounds: int = 1,
    reconstruction: str = "oracle",
    gd_steps: int = 1000,
    oracle_iterations: int = 150,
    sign_steps: int = 300,
    sign_rule: str = "auto",
    colour_correction: bool = False,
    colour_steps: int = 400,
    truth=None,
    seed: int = 0,
    progress=None,
    checkpoint_dir=None,
    device: str = "cpu",
) -> CarliniResult:
    """Carlini et al.'s attack on an InstaHide challenge, end to end (module docstring).

    Args:
        encryption: ``(N, H, W, C)`` float encryptions (any row order), channels-last.
        label: ``(N, classes)`` leaked labels ``lambda_1 e_y1 + lambda_2 e_y2``.
        n_private: number of private images ``n`` (public in the challenge); must divide ``N``.
        k, num_private: the challenge's public parameters (``num_private < k``: cross-dataset).
        attacker_images, attacker_labels: the attacker's OWN labelled images, uint8 ``(M, C, H, W)``
            and ``(M,)`` (disjoint from the attacked ones), to train the networks on.
        attacker_public: the attacker's own public pool, uint8 ``(P, C, H, W)`` (cross-dataset).
        upper, dom, mode, scaling: the challenge's c1, c2, mode and pixel units (``"pm1"``, ``"unit"``,
            ``"normalize"`` with ``mean``/``std`` of the private set).
        network: a trained pair network (skips training; must be for the same scheme parameters).
        train_steps, train_time_s, batch_images, batch_epochs, width_mult, depth: pair network training.
        core_fraction: cluster core size as a share of the ``num_private * T`` rows expected per image.
        max_overlap, refine_rounds: clustering and assignment knobs (see :mod:`.graph`).
        fit_rounds: rounds of re-assignment by fit (:func:`~.reconstruct.assign_by_fit`, ``num_private == 2``)
            each followed by a new reconstruction.
        reconstruction: ``"oracle"`` (default: the better on the measured challenges, see
            docs/carlini.md), ``"gd"`` or ``"oracle+gd"``.
        gd_steps, oracle_iterations: reconstruction effort.
        sign_rule: centred pixels: ``"auto"`` (the public-mean prior cross-dataset, the sign network's
            vote inside-dataset) or ``"sign-network"`` (always the vote); ``sign_steps`` trains that network.
        colour_correction: also run the pipeline on an attacker-made challenge of its own images (same
            parameters and size) and train a colour-correction network on it.
        truth: the challenge's :class:`~instahide.challenge.ChallengeTruth` (rows in the SAME order as
            ``encryption``), ONLY to report per-step accuracies in ``result.metrics``.
        seed: seeds the attacker's own randomness (training data, initialisations).
        progress: ``callable(step_name, dict)`` called as the steps advance.
        device: where the pair network trains and scores (``"cuda"`` for the full-scale challenge); the
            rest runs on the CPU.
        checkpoint_dir: folder for the trained network and each step's output; a rerun with the same
            input and parameters resumes from them (atomic writes).

    Returns:
        :class:`CarliniResult`.
    """
    enc = check_encryption(encryption, "encryption")
    n_rows, h, w, c = enc.shape
    lab = check_label(label, n_rows)
    if not isinstance(n_private, (int, np.integer)) or n_private < 1:
        raise ValueError(f"n_private must be a positive integer, got {n_private!r}")
    if n_rows % n_private:
        raise ValueError(f"n_private={n_private} does not divide the {n_rows} rows (N = n * T)")
    T = n_rows // n_private  # noqa: N806 - the paper's name
    if T < 2:
        raise ValueError(f"too few rows: {n_rows} rows for {n_private} images is T={T} encryption per image; "
                         "the clustering needs T >= 2")
    if not (isinstance(k, (int, np.integer)) and isinstance(num_private, (int, np.integer))) or not 1 <= num_private <= k:
        raise ValueError(f"need 1 <= num_private <= k, got num_private={num_private}, k={k}")
    if n_private < num_private:
        raise ValueError(f"n_private={n_private} is smaller than num_private={num_private}")
    if scaling not in _SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; expected one of {_SCALINGS}")
    if mode != "instahide":
        raise ValueError(f"mode {mode!r}: this attack targets masked InstaHide (use instahide.attacks.demix on Mixup)")
    if sign_rule not in ("auto", "sign-network"):
        raise ValueError(f"unknown sign_rule {sign_rule!r}; expected 'auto' or 'sign-network'")
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"unknown reconstruction {reconstruction!r}; expected one of {RECONSTRUCTIONS}")
    a_img, a_lab, a_pub = _check_attacker(attacker_images, attacker_labels, attacker_public, (c, h, w), num_private, k,
                                          lab.shape[1])
    pixel_range = "unit" if scaling == "unit" else "pm1"
    params = scheme_params(k, num_private, upper, dom, mode, scaling)
    members, private = _truth_arrays(truth, n_private, num_private, n_rows)
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    knobs = dict(core_fraction=core_fraction, max_overlap=max_overlap, refine_rounds=refine_rounds,
                 fit_rounds=fit_rounds,
                 reconstruction=reconstruction, gd_steps=gd_steps, oracle_iterations=oracle_iterations, seed=seed,
                 n_private=int(n_private))
    fp = _fingerprint(enc, lab, {**params, **knobs})
    timings, metrics = {}, {}

    # step 2: the pair network (trained on the attacker's own encryptions)
    t = time.perf_counter()
    x_att = _scale(a_img, scaling, False, mean, std)
    p_att = None if a_pub is None else _scale(a_pub, scaling, True)
    train_log: list = []
    if network is None and ckpt is not None and (ckpt / "pairnet.pt").exists():
        cand = load_pair_network(ckpt / "pairnet.pt")
        network = cand.to(device) if cand.config.scheme == params else None
    if network is None:
        sampler = EncryptionSampler(x_att, torch.from_numpy(a_lab), p_att, k=k, num_private=num_private, upper=upper,
                                    dom=dom, mode=mode, num_classes=max(lab.shape[1], int(a_lab.max()) + 1), allow_uncentred=scaling == "unit",
                                    seed=seed)
        network, train_log = train_pair_network(sampler, steps=train_steps, batch_images=batch_images,
                                                batch_epochs=batch_epochs, width_mult=width_mult, depth=depth,
                                                seed=seed, scheme=params, progress=progress, time_budget_s=train_time_s,
                                                device=device)
        if ckpt is not None:
            save_pair_network(network, ckpt / "pairnet.pt")
    else:
        network = network.to(device)
        got = network.config.scheme
        if got and got != params:
            raise ValueError(f"the pair network was trained for {got}, the challenge is {params}: train one for "
                             "this configuration (network=None)")
    timings["train_pair_network"] = time.perf_counter() - t
    t = time.perf_counter()
    prior_mu = None if p_att is None else p_att.permute(0, 2, 3, 1).mean(0).numpy().astype(np.float64)
    use_net = pixel_range == "pm1" and sign_steps and (p_att is None or sign_rule == "sign-network")
    sign_net = train_sign_network(x_att, steps=sign_steps, seed=seed) if use_net else None
    if sign_rule == "sign-network":
        prior_mu = None
    timings["train_sign_network"] = time.perf_counter() - t

    common = dict(n_private=int(n_private), k=int(k), num_private=int(num_private), pixel_range=pixel_range,
                  core_fraction=core_fraction, max_overlap=max_overlap, refine_rounds=refine_rounds,
                  fit_rounds=fit_rounds, upper=upper, prior_mu=prior_mu, method=reconstruction, gd_steps=gd_steps, oracle_iterations=oracle_iterations, sign_net=sign_net,
                  seed=seed, progress=progress)
    out = _pipeline(enc, lab, network, timings=timings, metrics=metrics, members=members, ckpt=ckpt, fp=fp, **common)
    rec = out["rec"]

    if colour_correction:
        t = time.perf_counter()
        rec = R.apply_colour_correction(_colour_net(a_img, a_lab, a_pub, network, T=T, lab_width=lab.shape[1],
                                                    scaling=scaling, mean=mean, std=std, upper=upper, dom=dom,
                                                    steps=colour_steps, common=common, metrics=metrics),
                                        rec, pixel_range if scaling != "normalize" else "none")
        timings["colour_correction"] = time.perf_counter() - t

    if members is not None:
        data_range = float(getattr(truth, "data_range", 2.0 if pixel_range == "pm1" else 1.0))
        img = np.array(metrics["cluster_image"])
        s_pos = _image_ssim(rec, private[img], data_range)
        metrics["recovered_ssim_mean"] = float(s_pos.mean())
        if pixel_range == "pm1":
            s_neg = _image_ssim(-rec, private[img], data_range)
            metrics["sign_correct"] = bool(s_pos.mean() >= s_neg.mean())  # reporting only; never used to steer
    result = CarliniResult(
        decryption=rec[out["best"]], recovered=rec, clusters=out["clusters"], cores=out["cores"],
        cluster_class=out["cluster_class"], assignment=out["assignment"], coefficients=out["coefs"],
        public_mean=out["pmean"], sign=out["sign"], sign_confidence=out["conf"], metrics=metrics, timings=timings,
        train_log=train_log, network=network,
        info={"T": T, "params": params, **knobs, "fingerprint": fp},
    )
    if ckpt is not None:
        atomic_write_text(ckpt / "summary.json", json.dumps({"metrics": metrics, "timings": timings,
                                                            "info": result.info}, indent=2, default=str) + "\n")
    return result


def _colour_net(a_img, a_lab, a_pub, network, *, T, lab_width, scaling, mean, std, upper, dom, steps, common, metrics):  # noqa: N803
    """Run the pipeline on the attacker's own challenge (its own images, same parameters and size) and
    train the colour-correction network on its reconstructions -> its originals."""
    from ...challenge import make_challenge
    from ...scheme import KeyGenerator

    n = common["n_private"]
    rng = np.random.default_rng(common["seed"] + 7)
    sel = rng.choice(len(a_img), min(n, len(a_img)), replace=False)
    enc, lab, truth = make_challenge(a_img[sel], a_lab[sel], a_pub, T=T, k=common["k"],
                                     num_private=common["num_private"] if a_pub is not None else None, upper=upper,
                                     dom=dom, scaling=scaling, mean=mean, std=std, num_classes=lab_width,
                                     generator=KeyGenerator.from_seed(f"carlini-attacker-own-{common['seed']}"))
    members = G.true_member_sets(truth.indices, truth.num_private, truth.n)
    own_metrics: dict = {}
    own = _pipeline(enc.astype(np.float64), lab.astype(np.float64), network, timings={}, metrics=own_metrics,
                    members=members, **{**common, "n_private": truth.n, "progress": None})
    img = np.array(own_metrics["cluster_image"])
    metrics["own_challenge"] = {kk: own_metrics[kk] for kk in ("clusters", "assignment") if kk in own_metrics}
    return R.fit_colour_correction(own["rec"], truth.private[img], steps=steps, seed=common["seed"])
