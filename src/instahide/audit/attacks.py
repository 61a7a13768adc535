"""One interface over the attacks (docs/attacks.md), for ``instahide attack NAME`` and ``instahide audit``.

Every runner takes a challenge (``encryption (N, C, H, W)``, ``label (N, classes)``) and its PUBLIC
``meta`` (what ``meta.json`` holds) and returns an :class:`AttackOutcome`. The truth is used only where
the attack is defined by it (the oracle: the least-squares family's reconstruction given the true keys,
not an attack and not a bound on every attack) or, as ``truth``, to score afterwards; it never steers
an attack. Luo et al.'s fusion decodes the groups of rows another attack found (``groups=``: Carlini
et al.'s clusters, :attr:`AttackOutcome.groups`). Gradient inversion attacks a training step instead:
:mod:`instahide.audit.gradient`.

Example::

    outcome = run_attack("demix", encryption, label, meta, truth=truth)
    outcome.score.max_ssim, outcome.seconds
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..attacks import demix, oracle_decode, recover_seed
from ..attacks.carlini import CarliniConfig, carlini_attack, load_pair_network
from ..attacks.fusion import fusion_attack, train_fusion_network
from ..challenge import score
from ..data import load_dataset, load_public_pool
from ..scheme import UncentredInputError
from ..scheme.defaults import DOM, UPPER
from ..train import Progress

__all__ = ["AttackOutcome", "ATTACKS", "run_attack", "attack_names", "load_attacker_images", "load_attacker_public",
           "FUSION_STEPS", "FUSION_TIME_S"]

FUSION_STEPS = 800    # the fusion network's training steps at most (docs/fusion.md's networks)
FUSION_TIME_S = 300.0  # ...and its training budget in seconds (fewer steps where a step is slower)


@dataclass
class AttackOutcome:
    """What a runner returns.

    Attributes:
        name: the attack's name (a key of :data:`ATTACKS`).
        decryption: float32 ``(N, C, H, W)``, one recovered image per row, or None when the attack
            recovered nothing (e.g. no seed found).
        recovered: float32 ``(m, C, H, W)``, the attack's recovered private images (unordered), or None.
        seconds: wall time.
        info: attack-specific facts (parameters, per-step accuracies, the seed found, ...), JSON-ready.
        uses_truth: what of the ground truth the attack used (``""``: nothing).
        score: the :class:`~instahide.challenge.ScoreResult` when a truth was given and a decryption made.
        recognition: the audit's identification and label measures (:mod:`instahide.audit.recognition`).
        groups: per recovered image, the rows the attack grouped as holding it (Carlini et al.'s
            clusters; what Luo et al.'s fusion decodes), int64 arrays, or None.
    """

    name: str
    decryption: np.ndarray | None
    recovered: np.ndarray | None
    seconds: float
    info: dict = field(default_factory=dict)
    uses_truth: str = ""
    score: object | None = None
    recognition: dict | None = None
    groups: list | None = None


def _meta_int(meta: dict, key: str) -> int:
    if meta.get(key) is None:
        raise ValueError(f"the challenge's meta.json has no {key!r}; the attacks need the public parameters "
                         "(n_private, T, k, num_private, mode, scaling)")
    return int(meta[key])


def _check(encryption, label, meta) -> tuple[np.ndarray, np.ndarray]:
    enc = np.asarray(encryption)
    lab = np.asarray(label)
    if enc.ndim != 4:
        raise ValueError(f"encryption must be (N, C, H, W), got shape {enc.shape}")
    if lab.ndim != 2 or len(lab) != len(enc):
        raise ValueError(f"label must be (N, classes) with N = {len(enc)} rows, got {lab.shape}")
    n = _meta_int(meta, "n_private")
    if len(enc) % n:
        raise ValueError(f"{len(enc)} rows are not a whole number of epochs of n_private={n} images")
    return enc, lab


# -- runners ---------------------------------------------------------------------------------------------
def _run_demix(enc, lab, meta, truth=None, **opt) -> AttackOutcome:
    t0 = time.perf_counter()
    res = demix(enc, lab, n_private=_meta_int(meta, "n_private"), num_private=_meta_int(meta, "num_private"), **opt)
    info = {"clusters_found": int(len(res.recovered)), **{k: v for k, v in res.info.items()
                                                          if isinstance(v, (int, float, str, bool))}}
    return AttackOutcome("demix", res.decryption, res.recovered, time.perf_counter() - t0, info)


def _run_oracle(enc, lab, meta, truth=None, **opt) -> AttackOutcome:
    if truth is None:
        raise ValueError("the oracle decoder needs the ground truth (the true keys): it is the least-squares "
                         "reconstruction given the true keys, the bound of that family, not an attack (pass --truth)")
    t0 = time.perf_counter()
    pixel_range = "unit" if meta.get("scaling") == "unit" else "pm1"
    masked = meta.get("mode", "instahide") == "instahide"
    opt.setdefault("public_model", "solve" if meta.get("legacy") and truth.num_private < truth.k else "mean")
    evaluate = masked and pixel_range == "pm1"
    res = oracle_decode(enc, truth.indices, truth.coefficients, truth.num_private, truth.n, masked=masked,
                        pixel_range=pixel_range, evaluate_with=truth.private if evaluate else None, **opt)
    info = {"method": res.method, "public_model": opt["public_model"], "sign_chosen_by": res.sign_chosen_by}
    uses = "the true keys (indices, coefficients)" + (", and the true images to pick the one global sign "
                                                      "|e| cannot tell" if evaluate else "")
    return AttackOutcome("oracle", res.decryption, res.recovered, time.perf_counter() - t0, info, uses)


def _run_seed(enc, lab, meta, truth=None, seed_range=(0, 2 ** 16), show_progress: bool = False,
              **opt) -> AttackOutcome:
    k, num_private = _meta_int(meta, "k"), _meta_int(meta, "num_private")
    start, stop = (int(v) for v in seed_range)
    if not 0 <= start < stop <= 2 ** 32:
        raise ValueError(f"seed range [{start}, {stop}) must lie in [0, 2^32) and be non-empty")
    batch = 2 ** 20  # seeds per filter task: progress comes in these steps
    bar = Progress(stop - start, "seed: search", enabled=show_progress, unit=" seeds",
                   every=batch * max(1, (stop - start) // batch // 50))
    t0 = time.perf_counter()
    found = recover_seed(enc, lab, n_private=_meta_int(meta, "n_private"), k=k, num_private=num_private,
                         upper=float(meta.get("upper", UPPER)),
                         dom=float(meta["dom"]) if meta.get("dom") is not None and num_private < k else None,
                         seed_range=(start, stop), masked=meta.get("mode", "instahide") == "instahide",
                         batch=batch, progress=lambda done, total: bar.update(done - bar.done), **opt)
    seconds = time.perf_counter() - t0
    info = {"seed_range": [start, stop], "seeds_searched": stop - start,
            "seed_found": None if found is None else int(found.seed),
            "seeds_per_second": round((stop - start) / max(seconds, 1e-9))}
    if found is None:
        whole = "" if (start, stop) == (0, 2 ** 32) else (
            "; legacy keys hide their seed anywhere in [0, 2^32): --seed-range 0:4294967296 searches it all, "
            "about 13 min on 2 cores with numba, docs/benchmarks.md")
        info["result"] = (f"no seed in [{start}, {stop}) replays these encryptions: nothing recovered "
                          f"(default keys come from a 256-bit keystream, not a 32-bit seed{whole})")
        return AttackOutcome("seed", None, None, seconds, info)
    return AttackOutcome("seed", found.decryption, found.recovered, seconds, info)


def load_attacker_images(meta: dict, dataset=None, root=None, split=None, n_images: int | None = None):
    """The attacker's own labelled images: by default the challenge's dataset, the OTHER split (disjoint
    from the attacked images). The root of the challenge's dataset is not in ``meta`` (meta.json names
    no local path): pass it. Returns the :class:`~instahide.data.ImageDataset` (first ``n_images``) and
    the split."""
    source = meta.get("private_source") or {}
    dataset = dataset or source.get("dataset")
    if dataset is None:
        raise ValueError("the attacks that learn train on the attacker's own images: give attacker_dataset "
                         "(and attacker_root), disjoint from the attacked images")
    if split is None:
        split = "train" if source.get("split", "test") == "test" else "test"
    if dataset == source.get("dataset") and split == source.get("split"):
        raise ValueError(f"the attacker's images must be disjoint from the attacked ones: {dataset} {split} is "
                         "the split the challenge was made from; use the other split or another dataset")
    ds = load_dataset(dataset, root=root, split=split)
    if ds.labels is None:
        raise ValueError(f"the attacker's dataset {ds.name} has no labels; the pair network needs labelled images")
    if n_images is not None and len(ds) > n_images:
        ds = ds.subset(slice(0, n_images))
    h, w, c = meta["image_shape_hwc"]
    if tuple(ds.shape) != (c, h, w):
        raise ValueError(f"the attacker's images are {tuple(ds.shape)} (C, H, W) but the challenge's are {(c, h, w)}")
    return ds, split


def _readable(info: dict) -> str:
    """``{"core_purity": 0.7461, "clusters": 20}`` -> ``core_purity 0.746, clusters 20``."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()
                     if not isinstance(v, (list, dict)))


def _carlini_progress(log, config: CarliniConfig):
    """The pipeline's ``progress(step, dict)``: the pair network's training on the project's progress
    display (stderr, rate and ETA), every other report as one readable line through ``log``."""
    bar = None

    def show(step: str, info: dict) -> None:
        nonlocal bar
        if step != "train":
            if bar is not None and bar.done < bar.total:  # stopped early (a time budget)
                bar.close(f"stopped at step {bar.done} of {bar.total}")
            bar = None
            log(f"carlini: {step}: {_readable(info)}")
            return
        if bar is None or info["step"] <= bar.done:  # reports come every 25 steps
            bar = Progress(config.train_steps, "carlini: train", every=25 * max(1, config.train_steps // 250))
            bar.start -= float(info.get("seconds", 0.0))  # the first report comes after 25 steps
        bar.update(int(info["step"]) - bar.done, _readable({k: v for k, v in info.items()
                                                           if k not in ("step", "seconds")}))
    return show


def load_attacker_public(meta: dict, source=None, shape=None, *, resize: int | None = None,
                         seed: int = 1) -> tuple[np.ndarray | None, str | None]:
    """The attacker's own public pool for a cross-dataset challenge (None, None inside-dataset).

    ``source``: the public dataset the attacker assumes (the scheme publishes it), as the ``--public``
    options take it: ``"builtin"`` (the default: the photographs that ship with scikit-image and
    scikit-learn), a folder of photographs, a ``.npy``/``.npz`` file, or the images themselves, uint8
    ``(P, C, H, W)``. Patches are cut at ``seed`` (1: other patches than the challenge's pool, seed 0),
    as many as the challenge's pool holds (``meta["public_pool_size"]``, default 4000), of ``shape``
    ``(C, H, W)`` (default the challenge's). Returns ``(pool uint8 (P, C, H, W), description)``."""
    if int(meta["num_private"]) >= int(meta["k"]):
        return None, None
    if source is None:
        source = "builtin"
    if not isinstance(source, (str, bytes)) and not hasattr(source, "__fspath__"):
        pool = np.asarray(source)
        return pool, f"given images, {len(pool)}"
    if shape is None:
        h, w, c = meta["image_shape_hwc"]
        shape = (c, h, w)
    pool = load_public_pool(source, n=int(meta.get("public_pool_size") or 4000), size=tuple(shape[1:]),
                            channels=int(shape[0]), seed=seed, resize=resize).images
    name = "builtin photographs" if str(source) == "builtin" else str(source)
    return pool, f"{name}, {len(pool)} patches, seed {seed}" + (f", resize {resize}" if resize else "")


def _run_carlini(enc, lab, meta, truth=None, *, attacker_dataset=None, attacker_root=None, attacker_split=None,
                 attacker_public=None, attacker_public_note=None, network=None, preset: str = "cpu", log=None,
                 checkpoint_dir=None, **opt) -> AttackOutcome:
    """``attacker_public``: the public dataset the attacker assumes (:func:`load_attacker_public`'s
    ``source``; default the built-in photographs), ``attacker_public_note`` its description when given
    as images."""
    config = CarliniConfig.preset(preset, **opt)  # opt: CarliniConfig fields (device, train_steps, ...)
    ds, split = load_attacker_images(meta, attacker_dataset, attacker_root, attacker_split, config.attacker_images)
    pool, note = load_attacker_public(meta, attacker_public, ds.shape)
    attacker = {"dataset": ds.name, "split": split, "images": len(ds), "public": attacker_public_note or note}
    if isinstance(network, (str, bytes)) or hasattr(network, "__fspath__"):
        network = load_pair_network(network)
    progress = None if log is None else _carlini_progress(log, config)
    t0 = time.perf_counter()
    res = carlini_attack(
        enc, lab, n_private=_meta_int(meta, "n_private"), k=_meta_int(meta, "k"),
        num_private=_meta_int(meta, "num_private"), attacker_images=ds.images, attacker_labels=ds.labels,
        attacker_public=pool, upper=float(meta.get("upper", UPPER)), dom=float(meta.get("dom") or DOM),
        mode=meta.get("mode", "instahide"), scaling=meta.get("scaling", "pm1"), mean=meta.get("private_mean"),
        std=meta.get("private_std"), config=config, network=network, truth=truth, progress=progress,
        checkpoint_dir=checkpoint_dir)
    seconds = time.perf_counter() - t0
    info = {"preset": preset, "attacker": attacker, "steps_seconds": res.timings,
            "per_step": res.metrics, "sign": res.sign}
    # the rows of each cluster (its core when nothing was assigned to it): what fusion decodes
    groups = [np.asarray(rows if len(rows) else core, dtype=np.int64) for rows, core in zip(res.clusters, res.cores)]
    return AttackOutcome("carlini", res.decryption, res.recovered, seconds, info,
                         groups=[g for g in groups if len(g)])


def _fusion_steps(train, steps: int, time_s: float | None, probe: int = 8, warm_up: int = 4) -> tuple[int, float | None]:
    """How many training steps fit ``time_s`` seconds: ``train(steps=warm_up)`` (the process's first
    steps are 2-3 times slower: measured 1.25 against 0.43 s a step on CIFAR-10), then a timed
    ``train(steps=probe)``; the probes' time comes off the budget. At least 50, at most ``steps``."""
    if time_s is None:
        return steps, None
    t0 = time.perf_counter()
    train(steps=warm_up)
    t1 = time.perf_counter()
    train(steps=probe)
    per_step = (time.perf_counter() - t1) / probe
    left = max(0.0, float(time_s) - (time.perf_counter() - t0))
    return int(min(steps, max(50, left // per_step))), per_step


def _run_fusion(enc, lab, meta, truth=None, *, groups=None, groups_from: str = "carlini", attacker_dataset=None,
                attacker_root=None, attacker_split=None, attacker_public=None, attacker_public_note=None,
                attacker_images: int | None = 20000, steps: int = FUSION_STEPS, time_s: float | None = FUSION_TIME_S,
                seed: int = 1, log=None, **opt) -> AttackOutcome:
    """Luo et al.'s fusion (docs/fusion.md): a :class:`~instahide.attacks.fusion.FusionNet` trained on the
    attacker's OWN images (and its own public pool, as Carlini's) decodes each group of ``groups``
    (Carlini et al.'s clusters: :attr:`AttackOutcome.groups` of the carlini runner). Training takes at
    most ``steps`` steps and about ``time_s`` seconds (None: no time limit). ``opt``: other arguments of
    :func:`~instahide.attacks.fusion.train_fusion_network` (``width``, ``batch_images``, ...)."""
    if not groups:
        raise ValueError("fusion decodes the groups of rows another attack found (Carlini et al.'s clusters): "
                         "run carlini first, on the same challenge")
    if meta.get("mode", "instahide") != "instahide":
        raise ValueError(f"mode {meta.get('mode')!r}: fusion decodes |e| of masked InstaHide encryptions")
    ds, split = load_attacker_images(meta, attacker_dataset, attacker_root, attacker_split, attacker_images)
    pool, note = load_attacker_public(meta, attacker_public, ds.shape)
    augment = (meta.get("augment") or {}).get("crop_padding")
    say = log or (lambda msg: None)

    def train(steps: int, progress=None):
        return train_fusion_network(
            ds.images, ds.labels, pool, T=_meta_int(meta, "T"), k=_meta_int(meta, "k"),
            num_private=_meta_int(meta, "num_private"), upper=float(meta.get("upper", UPPER)),
            dom=float(meta.get("dom") or DOM), scaling=meta.get("scaling", "pm1"), augment_padding=augment,
            steps=steps, num_classes=max(lab.shape[1], int(ds.labels.max()) + 1), seed=seed, progress=progress,
            **opt)

    t0 = time.perf_counter()
    bar = None
    try:
        n_steps, per_step = _fusion_steps(train, int(steps), time_s)
        say(f"fusion: training {n_steps} steps" + (f" (about {per_step:.2f} s a step, budget {time_s:.0f} s)"
                                                   if per_step else ""))
        bar = Progress(n_steps, "fusion: train", enabled=log is not None, every=50)
        net, train_log = train(n_steps, progress=lambda _, entry: bar.update(entry["step"] - bar.done,
                                                                              f"loss {entry['loss']:.3f}"))
    except UncentredInputError as exc:
        # the network trains on the attacker's OWN encryptions of 8 of its images per step; the scheme's
        # centring check refuses a batch of dark images (seen on CIFAR-10 about once in 500 steps)
        raise ValueError(f"its training stopped after {0 if bar is None else bar.done}+ steps: the scheme refused to "
                         f"encrypt one batch of 8 of the ATTACKER's own training images ({str(exc).split('. ')[0]}); "
                         f"the audited images are not at fault. A known limit of "
                         f"train_fusion_network's batches; another fusion seed draws other batches") from exc
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = fusion_attack(enc, lab, groups, net)
    info = {"groups_from": groups_from, "groups": len(groups), "attacker": {
                "dataset": ds.name, "split": split, "images": len(ds), "public": attacker_public_note or note},
            "train": {"steps": n_steps, "max_steps": int(steps), "budget_s": time_s, "seconds": train_s,
                      "loss_first": train_log[0]["loss"] if train_log else None,
                      "loss_last": train_log[-1]["loss"] if train_log else None, "seed": seed,
                      "augment_padding": augment, "parameters": sum(p.numel() for p in net.parameters())},
            "decode_seconds": time.perf_counter() - t1, "group_sizes": res.info.get("group_sizes"),
            "group_class": res.group_class.tolist()}
    return AttackOutcome("fusion", res.decryption, res.recovered, time.perf_counter() - t0, info,
                         groups=[np.asarray(g, np.int64) for g in groups])


ATTACKS = {
    "demix": {"run": _run_demix, "title": "Mixup demixing", "needs_truth": False},
    "carlini": {"run": _run_carlini, "title": "Carlini et al.", "needs_truth": False},
    "fusion": {"run": _run_fusion, "title": "Luo et al.'s fusion, on Carlini et al.'s clusters (--groups)",
               "needs_truth": False},
    "seed": {"run": _run_seed, "title": "generator-seed recovery", "needs_truth": False},
    "oracle": {"run": _run_oracle, "title": "oracle decoder: least squares given the TRUE keys (that family's "
                                            "bound, not every attack's)", "needs_truth": True},
}


def attack_names() -> list[str]:
    return list(ATTACKS)


def run_attack(name: str, encryption, label, meta: dict, *, truth=None, threshold: float = 0.8,
               **options) -> AttackOutcome:
    """Run attack ``name`` on a challenge; with ``truth`` the decryption is scored too.

    Args:
        name: one of :func:`attack_names`.
        encryption: ``(N, C, H, W)``; label: ``(N, classes)``; meta: the challenge's public parameters.
        truth: a :class:`~instahide.challenge.ChallengeTruth` (needed by ``oracle``; otherwise only
            used to score afterwards and to report per-step accuracies).
        threshold: SSIM above which a row or image counts as recovered.
        options: passed to the attack.
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected one of {attack_names()}")
    enc, lab = _check(encryption, label, meta)
    if truth is not None and tuple(enc.shape) != truth.encryption_shape:
        raise ValueError(f"mismatched ground truth: encryption {enc.shape} vs truth {truth.encryption_shape}")
    outcome = ATTACKS[name]["run"](enc, lab, meta, truth=truth, **options)
    if truth is not None and outcome.decryption is not None:
        outcome.score = score(np.asarray(outcome.decryption, dtype=np.float32), truth, threshold=threshold)
    return outcome
