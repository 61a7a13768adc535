"""``instahide compare``: every method trained with the same network, budget and halves of the pool,
and the attacks of every threat model that applies to it, in one table (docs/compare.md).

Steps, each saved under ``OUT/work/`` as it finishes (``resume=True`` reuses them):

1. per method, ``models`` models, model ``m`` on the ``m``-th half of the pool
   (:func:`~instahide.compare.training.member_splits`): clean test accuracy, wall time per epoch, and
   for DP-SGD rows Opacus's epsilon; per pool image the statistics membership inference needs;
2. membership inference: each model in turn the target, the others its LiRA reference models;
3. threat (a), gradient inversion of one client's update; threat (b), the audit's attacks on a
   challenge of the encoding (Mixup and InstaHide rows; :mod:`instahide.compare.threats`);
4. ``OUT/results.csv``, ``OUT/frontier.png``, ``OUT/report.md`` (rewritten after every method).

Example::

    from instahide.compare import CompareConfig, run_compare
    result = run_compare(CompareConfig.make(methods=("vanilla", "instahide-k4", "dp-eps3"), out="runs/cmp"))
    result.rows[0]["accuracy_mean"], result.paths["csv"]
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_savez, atomic_write_text, check_file_destination, load_plain_npz
from ..attacks.membership import lira_scores, membership_attack
from ..data import load_dataset, load_public_pool
from ..scheme import KeyGenerator, encrypt
from ..train import TrainConfig, load_train_data
from ..train.ddp import resolve_device
from ..train.engine import versions
from .config import CompareConfig, Method
from .report import NA, write_outputs
from .threats import gradient_threat, handed_over_threat
from .training import member_splits, train_member_model

__all__ = ["CompareResult", "run_compare", "membership_measures", "RUN_ONLY"]

RUN_ONLY = ("out", "threads", "device")  # options that may differ on resume (where and how fast it runs)


@dataclass
class CompareResult:
    config: CompareConfig
    rows: list[dict]
    paths: dict
    seconds: float


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), for the record next to the timings."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def membership_measures(member: np.ndarray, phi: np.ndarray, loss: np.ndarray) -> dict:
    """Membership inference on every model in turn: ``member`` bool ``(M, N)``, ``phi`` and ``loss``
    ``(M, N)`` (:func:`~instahide.attacks.membership.logit_confidence`, ``loss_scores`` of each model
    on the pool). Model ``t`` is the target, the other models its LiRA references (LiRA needs
    ``M >= 4`` so that every image has references with and without it). Returns per attack the mean,
    standard deviation and values over the targets of the AUC and of the TPR at 1% FPR."""
    M = len(member)
    per = {"loss": [], "lira": []}
    variants = set()
    for t in range(M):
        refs = [r for r in range(M) if r != t]
        lira = None
        if M >= 4:
            lira, variant = lira_scores(phi[t], phi[refs], member[refs])
            variants.add(variant)
        res = membership_attack(member[t], loss[t], None if lira is None else lira.numpy())
        for name in per:
            if res[name] is not None:
                per[name].append(res[name])
    out = {"targets": M, "fpr": 0.01, "lira_variant": "/".join(sorted(variants)) or None}
    for name, values in per.items():
        if not values:
            out[name] = None
            continue
        auc = np.array([v["auc"] for v in values])
        tpr = np.array([v["tpr_at_fpr"] for v in values])
        out[name] = {"auc": float(auc.mean()), "auc_std": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
                     "tpr_at_1pct_fpr": float(tpr.mean()), "tpr_std": float(tpr.std(ddof=1)) if len(tpr) > 1 else 0.0,
                     "auc_values": auc.tolist(), "tpr_values": tpr.tolist()}
    return out


def _prepare_out(cfg: CompareConfig, resume: bool, force: bool) -> Path:
    out = Path(cfg.out)
    check_file_destination(out / "results.csv")
    saved = out / "config.json"
    if saved.exists() and not resume:
        if not force:
            raise FileExistsError(f"{out} holds a comparison: pass resume=True (--resume) to continue it, "
                                  "force=True (--force) to start it again, or use another out")
        shutil.rmtree(out / "work", ignore_errors=True)
    if saved.exists() and resume:
        before = json.loads(saved.read_text())
        now = json.loads(json.dumps(cfg.to_dict()))
        diff = {k: (before.get(k), v) for k, v in now.items() if k not in RUN_ONLY and before.get(k) != v}
        if diff:
            raise ValueError(f"cannot resume {out}: its configuration differs in {diff} (saved, given); "
                             "use another out or --force")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(cfg.to_dict(), indent=2) + "\n")
    return out


def _load_pool(cfg: CompareConfig, methods: list[Method], device):
    """The pool (train split) and test set, normalised, with the public pool when a row needs it."""
    cross = next((m for m in methods if m.cross), None)
    scheme = cross.scheme(cfg.public) if cross is not None else methods[0].scheme(cfg.public)
    tcfg = TrainConfig(dataset=cfg.dataset, root=cfg.root, subset=cfg.subset, test_subset=cfg.test_subset,
                       scheme=scheme)
    return load_train_data(tcfg, device)


def _model_record(cfg, method, data, member, m, delta, work: Path, log) -> dict:
    """Model ``m`` of ``method``: trained, or reloaded from ``work`` when it finished before."""
    folder = work / "models" / method.name
    meta, arrays = folder / f"{m}.json", folder / f"{m}.npz"
    if meta.is_file() and arrays.is_file():
        record = json.loads(meta.read_text())
        z = load_plain_npz(arrays, "a compare model's scores")
        return {**record, "phi": z["phi"], "loss": z["loss"]}
    t0 = time.perf_counter()
    res = train_member_model(cfg, method, data, member[m], m, delta)
    record = {k: v for k, v in res.items() if k not in ("phi", "loss")}
    record["seconds"] = time.perf_counter() - t0
    atomic_savez(arrays, {"phi": np.asarray(res["phi"]), "loss": np.asarray(res["loss"])})
    atomic_write_text(meta, json.dumps(record, indent=2) + "\n")
    eps = f", epsilon {record['epsilon']:.2f}" if "epsilon" in record else ""
    log(f"{method.name}: model {m + 1}/{cfg.models}: test accuracy {record['accuracy']:.4f}{eps} "
        f"({record['seconds']:.0f} s)")
    return {**record, "phi": res["phi"], "loss": res["loss"]}


def _cached(path: Path, compute):
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    atomic_write_text(path, json.dumps(value, indent=2, default=float) + "\n")
    return value


def run_compare(cfg: CompareConfig, *, resume: bool = False, force: bool = False, log=print) -> CompareResult:
    """Run the comparison described by ``cfg`` into ``cfg.out`` (module docstring)."""
    cfg.validate()
    methods = cfg.method_list()
    device = resolve_device(cfg.device)
    out = _prepare_out(cfg, resume, force)
    work = out / "work"
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    data = _load_pool(cfg, methods, device)
    n_pool = len(data.x_train)
    member = member_splits(n_pool, cfg.models, cfg.seed)
    delta = cfg.delta if cfg.delta is not None else 1.0 / int(member.sum(1).max())
    log(f"pool: {n_pool} {data.name} train images, each model trains on about {n_pool // 2} "
        f"({cfg.models} models per method); test: {len(data.x_test)} images; delta {delta:.3g}")
    needs_images = cfg.gradinv_images > 0
    images = labels = public_u8 = None
    if needs_images:
        ds = load_dataset(cfg.dataset, root=cfg.root, split="test")
        # the attacked images first; inside-dataset partners come from all of them (as in the audit)
        take = min(len(ds), max(cfg.gradinv_images, 100))
        if take < cfg.gradinv_images + 6:
            raise ValueError(f"gradinv_images={cfg.gradinv_images}: the test split has only {len(ds)} images")
        images, labels = ds.images[:take], ds.labels[:take]
        if any(m.cross for m in methods):
            c, h, w = ds.shape
            public_u8 = load_public_pool(cfg.public, n=methods[0].scheme(cfg.public).public_size, size=(h, w),
                                         channels=c).images
    if any(m.encodes for m in methods):  # compile the fast encryption kernel (if any) before timing epochs
        encrypt(data.x_train[:8], data.y_train[:8], k=2, num_classes=data.num_classes,
                generator=KeyGenerator.from_seed(0))
    environment = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "device": str(device), **versions(),
                   "opacus": _opacus_version(), "resumed": resume}
    rows, handed_cache = [], {}
    paths: dict = {}
    for method in methods:
        t0 = time.perf_counter()
        records = [_model_record(cfg, method, data, member, m, delta, work, log) for m in range(cfg.models)]
        phi = np.stack([np.asarray(r["phi"]) for r in records])
        loss = np.stack([np.asarray(r["loss"]) for r in records])
        mi = membership_measures(member, phi, loss)
        dp = None
        if method.dp:
            top = max(records, key=lambda r: r["epsilon"])
            dp = {k: top[k] for k in ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant",
                                      "max_grad_norm", "target_epsilon")}
        grad = None
        if needs_images:
            grad = _cached(work / "gradinv" / f"{method.name}.json",
                           lambda: gradient_threat(cfg, method, images, labels, public_u8, data.num_classes,
                                                   dp["noise_multiplier"] if dp else None))
            log(f"{method.name}: gradient inversion: SSIM {grad['value']:.3f} over {cfg.gradinv_images} images")
        handed = None
        if method.encodes and cfg.challenge_images > 0:
            enc = Method.parse(method.encoding)
            if enc.name not in handed_cache:
                log(f"{method.name}: the challenge attacks on {enc.name} ({cfg.challenge_images} images x "
                    f"T = {cfg.challenge_T}) ...")
                handed_cache[enc.name] = _cached(
                    work / "challenge" / f"{enc.name}.json",
                    lambda: handed_over_threat(cfg, enc, work / "challenge" / enc.name, resume=True, log=log,
                                               device=str(device)))
            handed = handed_cache[enc.name]
            if handed.get("median") is not None:
                log(f"{method.name}: challenge: best over attacks, median image SSIM {handed['median']:.3f} "
                    f"(control {handed['control_median'] if handed['control_median'] is not None else NA})")
        rows.append(_row(cfg, method, records, mi, dp, grad, handed, time.perf_counter() - t0))
        paths = write_outputs(out, cfg, rows, environment, time.perf_counter() - t_start, n_pool, len(data.x_test),
                              delta)
    seconds = time.perf_counter() - t_start
    paths = write_outputs(out, cfg, rows, environment, seconds, n_pool, len(data.x_test), delta, done=True)
    log(f"done in {seconds:.0f} s: {', '.join(str(p) for p in paths.values())}")
    return CompareResult(cfg, rows, paths, seconds)


def _opacus_version() -> str | None:
    try:
        import opacus
    except ImportError:
        return None
    return opacus.__version__


def _row(cfg: CompareConfig, method: Method, records, mi, dp, grad, handed, seconds) -> dict:
    """One line of results.csv: values, and beside every measure that does not apply, "n/a" and why."""
    acc = np.array([r["accuracy"] for r in records])
    epoch_s = np.mean([np.mean(r["epoch_seconds"]) for r in records])
    row = {"method": method.name, "mode": method.mode, "k": method.k if method.mode != "vanilla" else NA,
           "public_pool": cfg.public if method.cross else NA, "dp_sgd": method.dp,
           "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
           "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()), "models": len(acc),
           "train_images": int(np.mean([r["train_images"] for r in records])), "epoch_seconds": float(epoch_s)}
    if dp:
        row.update({"epsilon": dp["epsilon"], "delta": dp["delta"], "noise_multiplier": dp["noise_multiplier"],
                    "sample_rate": dp["sample_rate"], "dp_steps": dp["steps"], "accountant": dp["accountant"],
                    "max_grad_norm": dp["max_grad_norm"]})
        row["epsilon_note"] = (f"Opacus's {dp['accountant']} accountant for one training row; each private image "
                               f"is in about {method.k} encryptions per epoch, so per image the guarantee is that "
                               f"of a group of about {method.k} rows (weaker)" if method.mode != "vanilla"
                               else f"Opacus's {dp['accountant']} accountant, per training image")
    else:
        row.update({k: NA for k in ("epsilon", "delta", "noise_multiplier", "sample_rate", "dp_steps", "accountant",
                                    "max_grad_norm")})
        row["epsilon_note"] = "no DP-SGD: no (epsilon, delta) guarantee"
    if grad is not None:
        row["gradinv_ssim"], row["gradinv_images"], row["gradinv_note"] = grad["value"], cfg.gradinv_images, ""
    else:
        row["gradinv_ssim"], row["gradinv_images"] = NA, 0
        row["gradinv_note"] = "skipped (gradinv_images 0)"
    keys = ("challenge_median_ssim", "challenge_p10", "challenge_p90", "challenge_above_0.8", "challenge_control_median")
    if handed is not None and handed.get("median") is not None:
        row.update(dict(zip(keys, (handed["median"], handed["p10"], handed["p90"], handed["above_0.8"],
                                   handed["control_median"] if handed["control_median"] is not None else NA))))
        row["challenge_attacks"] = "+".join(handed["attacks"])
        row["challenge_note"] = (f"the same encryptions as {method.encoding} (DP-SGD changes the training, not what "
                                 "is handed over)" if method.dp else "")
    else:
        row.update({k: NA for k in keys})
        row["challenge_attacks"] = NA
        row["challenge_note"] = (
            "plain training hands over the images themselves: nothing is encoded" if method.mode == "vanilla"
            and not method.dp else
            "DP-SGD hands over no data: it protects the model and its updates, not data given away"
            if method.mode == "vanilla" else "skipped (challenge_images 0)" if cfg.challenge_images == 0 else
            "no attack recovered anything: " + "; ".join((handed or {}).get("notes", [])))
    for name in ("loss", "lira"):
        res = mi[name]
        if res is None:
            row.update({f"mi_{name}_auc": NA, f"mi_{name}_auc_std": NA, f"mi_{name}_tpr_at_1pct_fpr": NA})
        else:
            row.update({f"mi_{name}_auc": res["auc"], f"mi_{name}_auc_std": res["auc_std"],
                        f"mi_{name}_tpr_at_1pct_fpr": res["tpr_at_1pct_fpr"]})
    row["mi_lira_variant"] = mi["lira_variant"] or NA
    row["mi_note"] = ("" if mi["lira"] is not None else
                      f"LiRA needs models >= 4 (reference models with and without every image); models = {cfg.models}")
    row["train_seconds"] = float(sum(r.get("seconds", 0.0) for r in records))
    row["seconds_this_run"] = float(seconds)
    return row
