"""``instahide audit`` (docs/audit.md): build a challenge from a configuration and the user's own images
(``OUT/challenge/``, truth in ``OUT/challenge-truth.npz``), run the attacks that apply
(``OUT/attacks/<name>/``; Luo et al.'s fusion after Carlini et al.'s attack, on its clusters) and write
the report (``OUT/report.md``, ``OUT/report.html``): per attack and, per private image, the best
recovery over all the attacks run. Each result is written as soon as it exists, so ``resume=True``
picks up after an interruption.

Example::

    cfg = AuditConfig.make(dataset="digits", n_private=20, T=20, public="builtin", k=6)
    result = run_audit(cfg, "runs/audit")
    result.outcomes[0].score.max_ssim
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._config import Config
from .._io import atomic_save_npy, atomic_savez, atomic_write_text, check_file_destination, load_plain_npz
from ..challenge import load_challenge, load_truth, make_challenge, score, write_challenge
from ..data import load_dataset, load_public_pool
from ..scheme.config import SchemeConfig
from ..report import write_audit_report, write_score_report
from ..data.scaling import scale_images
from .attacks import (ATTACKS, FUSION_STEPS, FUSION_TIME_S, AttackOutcome, load_attacker_images, load_attacker_public,
                      run_attack)
from .recognition import Recognition

__all__ = ["AuditConfig", "AuditResult", "run_audit", "save_outcome", "DEFAULT_ATTACKS"]

DEFAULT_ATTACKS = ("demix", "seed", "oracle", "carlini", "fusion")
# The fields that make the challenge: a resumed audit must have the same ones.
_CHALLENGE_FIELDS = ("dataset", "root", "split", "n_private", "T", *SchemeConfig().to_dict(), "scaling",
                     "public_seed", "augment_padding", "research_seed")


@dataclass
class AuditConfig(Config):
    """What to audit: the user's images, the scheme (the same options as training, with a public pool
    by default, as in the published challenge), the epochs, pixel units, and the attacks."""

    # -- the user's images -------------------------------------------------------------------------
    dataset: str = "digits"              # a dataset name (digits needs no download)
    root: str | None = None              # where the images are (not for digits)
    split: str = "test"                  # which split
    n_private: int = 20                  # private images in the challenge: the first n (the published one: 100)
    # -- the configuration audited -----------------------------------------------------------------
    scheme: SchemeConfig = field(default_factory=lambda: SchemeConfig(public="builtin"))
    T: int = 50                          # epochs = encryptions per image, fresh keys each
    scaling: str = "pm1"                 # pixel units: pm1 [-1, 1], normalize (mean/std), unit [0, 1]
    public_seed: int = 0                 # which patches are cut for the public pool
    augment_padding: int | None = None   # crop padding of the per-epoch augmentation (None: none)
    research_seed: int | None = None     # reproducible keys for research (anyone knowing it undoes them)
    # -- the attacks -------------------------------------------------------------------------------
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    seed_range: tuple[int, ...] = (0, 2 ** 16)  # seeds searched by the seed attack
    carlini: dict = field(default_factory=dict)  # options of the Carlini et al. pipeline (attacker_* too)
    fusion: dict = field(default_factory=lambda: {"steps": FUSION_STEPS, "time_s": FUSION_TIME_S})  # Luo et al.'s
    threshold: float = 0.8               # SSIM counted as "recovered"
    distractors: int = 1000              # other images of the dataset among the identification candidates

    def validate(self) -> "AuditConfig":
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; expected some of {list(ATTACKS)}")
        if self.n_private < 2:
            raise ValueError(f"n_private must be >= 2 (an encryption mixes several private images), got {self.n_private}")
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}")
        if self.dataset != "digits" and self.root is None:
            raise ValueError(f"dataset {self.dataset!r} needs a root (a folder or file); digits is built in")
        if self.scheme.mode == "vanilla":
            raise ValueError("mode vanilla encrypts nothing: audit instahide or mixup")
        self.scheme.validate()
        return self


@dataclass
class AuditResult:
    config: AuditConfig
    meta: dict
    truth: object
    outcomes: list[AttackOutcome]
    paths: dict


def _load_images(cfg: AuditConfig):
    ds = load_dataset(cfg.dataset, root=cfg.root, split=cfg.split)
    if len(ds) < cfg.n_private:
        raise ValueError(f"too few images: {ds.name} ({cfg.split}) has {len(ds)}, the audit asks for "
                         f"n_private={cfg.n_private}")
    ds = ds.subset(slice(0, cfg.n_private))
    labels = ds.labels
    if labels is None:  # unlabelled images: one class (the labels then leak the private coefficient sums)
        labels = np.zeros(len(ds), dtype=np.int64)
    return ds, labels


def _challenge(cfg: AuditConfig, out: Path, resume: bool):
    folder, truth_path = out / "challenge", out / "challenge-truth.npz"
    recipe = {k: v for k, v in cfg.to_dict().items() if k in _CHALLENGE_FIELDS}
    if resume and (folder / "meta.json").is_file() and truth_path.is_file():
        enc, lab, meta = load_challenge(folder)
        truth = load_truth(truth_path)
        recipe_path = out / "challenge-recipe.json"  # next to the truth, outside what an attacker holds
        made_with = json.loads(recipe_path.read_text()) if recipe_path.is_file() else None
        if made_with is not None:
            diff = {k: (made_with.get(k), v) for k, v in json.loads(json.dumps(recipe)).items()
                    if made_with.get(k) != v}
            if diff:
                raise ValueError(f"cannot resume {out}: its challenge was made with another configuration "
                                 f"{diff} (then, now); use another --out or drop --resume")
        if meta.get("challenge_id") == truth.params.get("challenge_id"):
            return enc, lab, meta, truth, True
    ds, labels = _load_images(cfg)
    c, h, w = ds.shape
    scheme, pool = cfg.scheme, None
    if scheme.cross:
        pool = load_public_pool(scheme.public, n=scheme.public_size, size=(h, w), channels=c, seed=cfg.public_seed,
                                resize=scheme.public_resize).images
    info = {"private_source": {"dataset": cfg.dataset, "root": cfg.root, "split": cfg.split,
                               "selection": f"first {cfg.n_private}"},
            "public_source": None if pool is None else {"source": scheme.public, "size": len(pool),
                                                         "seed": cfg.public_seed},
            "instahide_version": __version__}
    enc, lab, truth = make_challenge(
        ds.images, labels, pool, T=cfg.T, **scheme.encrypt_kwargs(), scaling=cfg.scaling, research_seed=cfg.research_seed,
        num_classes=max(ds.num_classes or 1, int(labels.max()) + 1),
        mean=ds.mean if cfg.scaling == "normalize" else None, std=ds.std if cfg.scaling == "normalize" else None,
        info=info, augment_padding=cfg.augment_padding)
    out.mkdir(parents=True, exist_ok=True)
    write_challenge(folder, enc, lab, truth, truth_path=truth_path, force=True)
    # next to the truth (it holds the research seed): owner-only
    atomic_write_text(out / "challenge-recipe.json", json.dumps(recipe, indent=2) + "\n", secret=True)
    meta = json.loads((folder / "meta.json").read_text())
    return enc, lab, meta, truth, False


def save_outcome(folder: Path, outcome: AttackOutcome, truth, meta_id: str | None) -> None:
    """Write ``outcome`` to ``folder``: ``decryption.npy`` (channels last, the submission format),
    ``outcome.json`` and, when it was scored, the score report (rows.csv, scores.json, best_worst.png)."""
    folder.mkdir(parents=True, exist_ok=True)
    if outcome.decryption is not None:
        dec = np.asarray(outcome.decryption, dtype=np.float32)
        atomic_save_npy(folder / "decryption.npy", np.ascontiguousarray(dec.transpose(0, 2, 3, 1)))
        if outcome.score is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                write_score_report(outcome.score, folder, outcome.decryption, truth)
    groups = None
    if outcome.groups is not None:  # the rows grouped per recovered image (what fusion decodes)
        groups = "groups.npz"
        sizes = np.array([len(g) for g in outcome.groups], dtype=np.int64)
        atomic_savez(folder / groups, {"rows": np.concatenate([np.asarray(g, np.int64) for g in outcome.groups]
                                                              + [np.zeros(0, np.int64)]), "sizes": sizes})
    record = {"attack": outcome.name, "seconds": outcome.seconds, "info": outcome.info,
              "uses_truth": outcome.uses_truth, "challenge_id": meta_id, "recognition": outcome.recognition,
              "decryption": "decryption.npy" if outcome.decryption is not None else None, "groups": groups}
    atomic_write_text(folder / "outcome.json", json.dumps(record, indent=2, default=str) + "\n")


def load_groups(folder) -> list[np.ndarray] | None:
    """The row groups ``save_outcome`` wrote to ``folder/groups.npz`` (None when there are none)."""
    path = Path(folder) / "groups.npz"
    if not path.is_file():
        return None
    z = load_plain_npz(path, "the attack's row groups")
    return [np.asarray(g, np.int64) for g in np.split(z["rows"], np.cumsum(z["sizes"])[:-1])]


def _load_outcome(folder: Path, truth, meta_id: str, threshold: float) -> AttackOutcome | None:
    path = folder / "outcome.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("challenge_id") != meta_id:
        return None
    dec = None
    if record.get("decryption"):
        dec = np.load(folder / record["decryption"], allow_pickle=False).transpose(0, 3, 1, 2)
    outcome = AttackOutcome(record["attack"], dec, None, float(record["seconds"]), record.get("info", {}),
                            record.get("uses_truth", ""), groups=load_groups(folder))
    if dec is not None:
        outcome.score = score(dec, truth, threshold=threshold)
    return outcome


def _mean_image_control(meta: dict, truth, attacker: dict, threshold: float) -> AttackOutcome:
    """A decryption that knows nothing, for scale: every row is the mean of the attacker's own images
    (its first 5,000, in the challenge's pixel units)."""
    ds, split = load_attacker_images(meta, attacker.get("attacker_dataset"), attacker.get("attacker_root"),
                                     attacker.get("attacker_split"), 5000)
    mean = scale_images(torch.as_tensor(ds.images), truth.scaling, truth.params.get("private_mean"),
                        truth.params.get("private_std")).double().mean(0).float().numpy()
    dec = np.repeat(mean[None], truth.N, axis=0)
    outcome = AttackOutcome("attacker's mean image", dec, None, 0.0,
                            {"what": f"every row the mean of the attacker's {len(ds)} {ds.name} {split} images"})
    outcome.score = score(dec, truth, threshold=threshold)
    return outcome


class _AttackerPublic:
    """The public pool the attacker assumes (``cfg.carlini["attacker_public"]``, default the challenge's
    own public source: the scheme publishes it), loaded once, when an attack first needs it."""

    def __init__(self, cfg: AuditConfig, meta: dict):
        given = cfg.carlini.get("attacker_public")
        self.source = given if given is not None else (cfg.scheme.public or "builtin")
        self.resize = cfg.scheme.public_resize
        self.meta, self.loaded, self.pool, self.note = meta, False, None, None

    def options(self) -> dict:
        if not self.loaded:
            self.pool, self.note = load_attacker_public(self.meta, self.source, resize=self.resize)
            self.loaded = True
        return {"attacker_public": self.pool, "attacker_public_note": self.note}


def run_audit(cfg: AuditConfig, out, *, resume: bool = False, formats=("md", "html"), log=print) -> AuditResult:
    """Run the audit described by ``cfg`` into the folder ``out`` (module docstring)."""
    cfg.validate()
    out = Path(out)
    check_file_destination(out / "report.md")  # an unusable out fails now; nothing is created until the challenge exists
    t0 = time.perf_counter()
    enc, lab, meta, truth, reused = _challenge(cfg, out, resume)
    log(f"challenge: {truth.n} private images x T={truth.T} = {truth.N} encryptions "
        f"({'reused' if reused else 'made'} in {time.perf_counter() - t0:.1f} s) -> {out / 'challenge'}")
    outcomes, notes = [], []
    attacker = {k: v for k, v in cfg.carlini.items() if k.startswith("attacker_")}  # its own images
    if attacker.get("attacker_root") is None and attacker.get("attacker_dataset") in (None, cfg.dataset):
        attacker["attacker_root"] = cfg.root  # meta.json names no local path
    public = _AttackerPublic(cfg, meta)
    t1 = time.perf_counter()
    try:
        recognition = Recognition.build(cfg.dataset, cfg.root, cfg.split, truth, meta, distractors=cfg.distractors,
                                        attacker={k: v for k, v in attacker.items() if k != "attacker_public"})
        log(f"identification: {len(recognition.gallery)} candidates; labels: {recognition.classifier_note} "
            f"({time.perf_counter() - t1:.1f} s)")
    except (ValueError, FileNotFoundError) as exc:
        recognition = None
        notes.append(f"identification and labels not measured: {exc}")
    for name in sorted(cfg.attacks, key=lambda a: a == "fusion"):  # fusion decodes Carlini's clusters: last
        folder = out / "attacks" / name
        outcome = _load_outcome(folder, truth, meta["challenge_id"], cfg.threshold) if resume else None
        fresh = outcome is None
        if not fresh:
            log(f"{name}: reused the result in {folder}")
        else:
            options = {}
            try:
                if name == "seed":
                    options["seed_range"] = tuple(cfg.seed_range)
                if name == "carlini":
                    options.update({**cfg.carlini, **attacker, **public.options()})
                    options.setdefault("checkpoint_dir", str(folder / "work"))
                if name == "fusion":
                    carlini = next((o for o in outcomes if o.name == "carlini"), None)
                    if carlini is None or not carlini.groups:
                        raise ValueError("it decodes the rows Carlini et al.'s attack grouped per image; carlini "
                                         + ("found no groups" if carlini is not None else
                                            "did not run (its note says why)" if "carlini" in cfg.attacks else
                                            "was not run (add it to --attacks)"))
                    options.update({**attacker, **public.options(), **cfg.fusion, "groups": carlini.groups,
                                    "groups_from": "carlini"})
                    if "log" in cfg.carlini:
                        options["log"] = cfg.carlini["log"]
                log(f"{name}: running ...")
                outcome = run_attack(name, enc, lab, meta, truth=truth, threshold=cfg.threshold, **options)
            except (ValueError, ImportError, FileNotFoundError) as exc:
                notes.append(f"{name} not run: {exc}")
                log(f"{name}: not run: {exc}")
                continue
        s = outcome.score
        if recognition is not None and s is not None:
            outcome.recognition = recognition.measure(s, outcome.decryption)
        if fresh:
            save_outcome(folder, outcome, truth, meta["challenge_id"])
        outcomes.append(outcome)
        ident = (outcome.recognition or {}).get("identification")
        log(f"{name}: " + (f"Max_SSIM {s.max_ssim:.3f}, images > {cfg.threshold}: "
                           f"{int(np.sum(s.per_private_best_ssim > cfg.threshold))}/{truth.n}"
                           if s is not None else "recovered nothing")
            + (f", rows identified {ident['rate']:.1%} (chance {max(ident['chance'], ident['shuffled']):.1%})"
               if ident else "") + f" ({outcome.seconds:.1f} s)")
    controls = []
    if any(o.score is not None for o in outcomes):
        try:
            controls.append(_mean_image_control(meta, truth, attacker, cfg.threshold))
        except (ValueError, FileNotFoundError) as exc:
            notes.append(f"the attacker's-mean-image control not measured: {exc}")
    # the values the audit used, not the defaults' None
    config = {**cfg.to_dict(), "k": truth.k, "num_private": truth.num_private,
              "carlini": {k: v for k, v in cfg.carlini.items() if not callable(v)},
              "attacker_public": public.note if public.loaded else public.source}
    paths = write_audit_report(out, config, meta, outcomes, truth, enc, formats=formats,
                               threshold=cfg.threshold, notes=notes, controls=controls)
    return AuditResult(cfg, meta, truth, outcomes, paths)
