"""The recurring public images of a legacy challenge (docs/carlini.md, "Legacy challenges"), measured.

Challenge: as ``experiments/carlini.py --legacy``: the first ``--n`` CIFAR-10 TEST images, T = ``--T``,
cross k = 6 (2 private + 4 public), c1 = 0.65, c2 = 0.3, keys from the reference code's replay with
legacy seed ``--seed`` (public partners from the first ``n`` of 4,000 built-in patches, pool seed 0),
pixels in [-1, 1], rows shuffled. :func:`instahide.attacks.legacy.legacy_decode` is run from three
starts (``--start``), each one JSON line in ``--out``:

- ``true-images``: the TRUE private keys and the TRUE private images as the fixed private part (the
  best case of the public step: how well the public images and memberships are found at all);
- ``true-keys``: the TRUE private keys, the private images from the oracle solver's public-mean model
  on them (what a perfect assignment gives an attacker), refined jointly;
- ``pipeline``: Carlini et al.'s pipeline (``cpu`` preset, the cached 100-step pair network of
  ``experiments/carlini.py``): its assignment, label coefficients and recovered images, refined jointly.

Scores (truth read only here): the recovered public images matched to the true window images
(Hungarian on |correlation|), their SSIM (each with the sign of its correlation), the share of every
row's 4 public images found, Max_SSIM of the decryption.

  OMP_NUM_THREADS=1 .venv/bin/python experiments/legacy_attack.py --start true-images true-keys pipeline
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.attacks import oracle_decode  # noqa: E402
from instahide.attacks.carlini import CarliniConfig, carlini_attack, load_pair_network  # noqa: E402
from instahide.attacks.legacy import legacy_decode, public_slots  # noqa: E402
from instahide.challenge import make_challenge, score  # noqa: E402
from instahide.data import load_dataset, load_public_pool  # noqa: E402
from instahide.metrics import ssim  # noqa: E402


def public_scores(found: np.ndarray, membership: np.ndarray, truth, n_public: int) -> dict:
    """The recovered public images against the true window images ``truth.public[:n_public]``."""
    true = truth.public[:n_public].astype(np.float64)
    f, t = found.reshape(len(found), -1).astype(np.float64), true.reshape(n_public, -1)
    corr = np.corrcoef(np.vstack([f, t]))[:len(f), len(f):]
    r, c = linear_sum_assignment(-np.abs(corr))
    sgn = np.sign(corr[r, c])
    s = np.array([float(ssim(sgn[i] * found[r[i]][None], true[c[i]][None], data_range=2.0)) for i in range(len(r))])
    mapping = np.full(len(found), -1)
    mapping[r] = c
    top, _ = public_slots(membership, truth.indices.shape[1] - truth.num_private)
    est = mapping[top]
    true_sets = truth.indices[:, truth.num_private:]
    recall = np.mean([len(set(est[i]) & set(true_sets[i])) / len(set(true_sets[i])) for i in range(len(est))])
    return {"abs_corr_mean": float(np.abs(corr[r, c]).mean()), "ssim_mean": float(s.mean()),
            "ssim_per_image": np.round(s, 3).tolist(), "above_0.9": int((s > 0.9).sum()),
            "above_0.8": int((s > 0.8).sum()), "membership_recall": float(recall)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar-10-batches-py"))
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", nargs="+", default=["true-images", "true-keys", "pipeline"],
                   choices=("true-images", "true-keys", "pipeline"))
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--trim", type=float, default=1.0)
    p.add_argument("--net", default=str(ROOT / "experiments" / "results" / "carlini_nets"
                                        / "cross-k6-pm1-s100-w16-d4-cpu.pt"))
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "legacy" / "legacy_attack.jsonl"))
    p.add_argument("--tag", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    k, n = 6, args.n
    test = load_dataset("cifar10", root=args.root, split="test")
    pool = load_public_pool("builtin", n=4000, size=(32, 32), channels=3, seed=0).images
    enc, lab, truth = make_challenge(test.images[:n], test.labels[:n], pool, T=args.T, k=k, num_private=2,
                                     scaling="pm1", num_classes=10, legacy=True, research_seed=args.seed)
    perm = np.random.default_rng(args.seed).permutation(len(enc))
    enc, lab = enc[perm], lab[perm]
    truth = replace(truth, indices=truth.indices[perm], coefficients=truth.coefficients[perm])
    mass = 1.0 - lab.sum(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for start in args.start:
        t0 = time.perf_counter()
        info = {}
        if start == "pipeline":
            train = load_dataset("cifar10", root=args.root, split="train")
            a_pool = load_public_pool("builtin", n=4000, size=(32, 32), channels=3, seed=1).images
            res = carlini_attack(enc, lab, n_private=n, k=k, num_private=2, attacker_images=train.images[:20000],
                                 attacker_labels=train.labels[:20000], attacker_public=a_pool, scaling="pm1",
                                 network=load_pair_network(args.net), config=CarliniConfig.preset("cpu"), truth=truth)
            assign, coefs, x0 = res.assignment, res.coefficients, res.recovered
            image_of = np.array(res.metrics["cluster_image"])
            info["pipeline_Max_SSIM"] = score(res.decryption, truth).max_ssim
            info["pipeline_assignment"] = res.metrics.get("assignment")
        else:
            assign, coefs = truth.indices[:, :2], truth.coefficients[:, :2].astype(np.float64)
            image_of = np.arange(n)
            if start == "true-images":
                x0 = truth.private
            else:  # the oracle solver's public-mean model, the attacker's pool variance given
                a_pool = load_public_pool("builtin", n=4000, size=(32, 32), channels=3, seed=1).images
                var = (a_pool.astype(np.float64) / 127.5 - 1).var(0)
                o = oracle_decode(enc, np.hstack([assign, np.zeros((len(enc), k - 2), int)]),
                                  np.hstack([coefs, np.repeat(mass[:, None] / (k - 2), k - 2, 1)]), 2, n,
                                  public_variance=var)
                x0 = o.recovered
        base = float(max(ssim(s * np.asarray(x0)[:len(image_of)], truth.private[image_of], data_range=2.0)
                         for s in (1, -1)))
        o, fit = legacy_decode(enc, assign, coefs, x0, mass, n_public=n, slots=k - 2, steps=args.steps,
                               joint_private=start != "true-images", trim=args.trim, seed=args.seed,
                               progress=lambda it, e, start=start: print(
                                   f"{start}: step {it}, loss {e['loss']:.4g}, entropy {e['entropy']:.3f}", flush=True))
        wall = time.perf_counter() - t0
        sc = max((score(s * o.decryption, truth) for s in (1, -1)), key=lambda v: v.max_ssim)
        row = {"tag": args.tag, "start": start, "n": n, "T": args.T, "k": k, "legacy_seed": args.seed,
               "steps": args.steps, "trim": args.trim, "start_private_ssim": base,
               "fit_public": public_scores(fit.public, fit.membership, truth, n),
               "oracle_public": public_scores(o.public_images, fit.membership, truth, n)
               if o.public_images is not None and len(o.public_images) == n else None,
               "Max_SSIM": sc.max_ssim, "Mean_SSIM": sc.mean_ssim, "share_above_0.8": sc.share_above,
               "sign": "the better global sign by the truth (reported)", "fit_loss": fit.loss,
               "reseeded": {str(kk): v for kk, v in fit.reseeded.items()}, "wall_s": wall, **info,
               "threads": 1, "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__}
        with out.open("a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        print(json.dumps({kk: row[kk] for kk in ("start", "start_private_ssim", "Max_SSIM", "wall_s")}),
              row["fit_public"]["above_0.9"], row["fit_public"]["membership_recall"], flush=True)


if __name__ == "__main__":
    main()
