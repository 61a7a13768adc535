"""The evaluation protocol for attack numbers: one attack over many independent draws and public-pool
sources, beside the oracle on the same draws, with every step's accuracy against the truth.

A draw is one challenge made afresh: ``--n`` private images drawn at random from the CIFAR-10 TEST
split (without replacement, from the draw's own seed), fresh keys (research seed of the draw, so that
the run can be repeated), a public pool of ``--pool`` patches cut at the draw's own seed from the pool
source, rows shuffled. Draw ids ``0 .. --draws - 1`` are the tuning draws; ``--holdout`` runs the draws
kept aside (ids 1000, 1001, ...: never looked at while tuning; run them last).

Pool sources (``--pools``): ``builtin`` (the photographs shipped with scikit-image / scikit-learn),
``imagenet`` (the 50 full-size ImageNet photographs of ../shared/data/imagenet-sample) and ``tiny``
(Tiny-ImageNet test images, 64x64, cut to 32x32). The attacker's own data: the first
``--train-images`` CIFAR-10 TRAIN images, and a public pool given by ``--attacker-public``:
``same`` (the challenge's source, another seed: the scheme publishes its public dataset) or
``builtin`` (the photographs, whatever the challenge used: a stand-in for an unknown public set).
``--public-variance`` picks how the solver's public variance is set: ``pool`` (per position, from the
attacker's pool) or ``likelihood`` (its level chosen on the encryptions themselves, by the likelihood
of ``|e|``: what the attacker does when its pool may not match).

Per draw it writes one JSON line (``--out``): the attack's Max_SSIM / Mean_SSIM, the oracle's on the
same challenge (TRUE keys, the sign chosen by the truth: the bound of the least-squares family), the
per-step accuracies (pair AUC, core purity and coverage, assignment exact / slot, coefficient error on
the rows assigned right, per-position sign agreement), and the timings. ``--summary`` prints the
spread (mean, standard deviation, minimum, worst ratio to the oracle) per pool source.

  # the protocol of docs/attacks_protocol.md (8 tuning draws x 2 pool sources, presets side by side):
  OMP_NUM_THREADS=2 .venv/bin/python experiments/attack_draws.py --draws 8 --pools imagenet builtin --presets tiny cpu --tag protocol
  # the held-out draws, once, last:
  OMP_NUM_THREADS=2 .venv/bin/python experiments/attack_draws.py --holdout 2 --pools imagenet builtin --presets tiny cpu --tag holdout
  # T = 10, inside-dataset k = 4, an attacker whose pool is not the challenge's source:
  OMP_NUM_THREADS=2 .venv/bin/python experiments/attack_draws.py --T 10 --tag T10
  OMP_NUM_THREADS=2 .venv/bin/python experiments/attack_draws.py --setting inside --k 4 --pools builtin --tag inside-k4
  OMP_NUM_THREADS=2 .venv/bin/python experiments/attack_draws.py --pools imagenet --attacker-public builtin --tag mismatched
  # DIAGNOSTIC: the solver alone, on the TRUE private keys, sign rules side by side (own output file):
  OMP_NUM_THREADS=2 .venv/bin/python experiments/attack_draws.py --true-key-checks --draw-ids 0 2 4 6 --pools imagenet \
      --out experiments/results/attack_draws_truekeys.jsonl --tag true-keys
  # DIAGNOSTIC: where the oracle's solver loses (signs known, starts, propagation), on the TRUE keys:
  OMP_NUM_THREADS=2 .venv/bin/python experiments/attack_draws.py --solver-checks --draw-ids 0 3 --pools imagenet builtin \
      --out experiments/results/attack_draws_solver.jsonl --tag solver
  # the table:
  .venv/bin/python experiments/attack_draws.py --summary experiments/results/attack_draws.jsonl
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.attacks import oracle_decode  # noqa: E402
from instahide.attacks.carlini import CarliniConfig, carlini_attack, load_pair_network, save_pair_network  # noqa: E402
from instahide.challenge import make_challenge, score  # noqa: E402
from instahide.data import load_dataset, load_public_pool  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
POOLS = {"builtin": "builtin", "imagenet": str(DATA / "imagenet-sample"),
         "tiny": str(DATA / "tiny-imagenet-200-test" / "images")}
HOLDOUT_BASE = 1000


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_draw(draw: int, pool_name: str, test, *, n: int, T: int, k: int, setting: str, pool_size: int):  # noqa: N803
    """Challenge of draw ``draw``: random test images, the pool cut at the draw's seed, rows shuffled."""
    rng = np.random.default_rng([draw, 7919])
    sel = np.sort(rng.choice(len(test.images), n, replace=False))
    pool = None
    if setting == "cross":
        pool = load_public_pool(POOLS[pool_name], n=pool_size, size=(32, 32), channels=3, seed=10_000 + draw).images
    enc, lab, truth = make_challenge(test.images[sel], test.labels[sel], pool, T=T, k=k,
                                     num_private=2 if setting == "cross" else None, scaling="pm1",
                                     research_seed=f"attack-draws-{draw}-{pool_name}-{setting}-k{k}")
    perm = np.random.default_rng([draw, 104729]).permutation(len(enc))
    truth.indices, truth.coefficients = truth.indices[perm], truth.coefficients[perm]
    if truth.mask_bits is not None:
        truth.mask_bits = truth.mask_bits[perm]
    return enc[perm], lab[perm], truth, sel


def oracle_score(enc, truth, **kw) -> dict:
    """The oracle on the TRUE keys, the global sign by the truth (evaluation mode)."""
    t0 = time.perf_counter()
    o = oracle_decode(enc, truth.indices, truth.coefficients, truth.num_private, truth.n,
                      evaluate_with=truth.private, **kw)
    sc = score(o.decryption, truth)
    return {"Max_SSIM": sc.max_ssim, "Mean_SSIM": sc.mean_ssim, "seconds": time.perf_counter() - t0}


def step_accuracy(res, truth) -> dict:
    """Coefficient error on the rows assigned right, per-position sign agreement with the truth."""
    m = res.metrics
    cl_img = np.array(m["cluster_image"])
    a = cl_img[res.assignment]                              # (N, s) image of every assigned cluster
    true = truth.indices[:, :truth.num_private]
    right = np.all(np.sort(a, 1) == np.sort(true, 1), axis=1)
    err = []
    for r in np.nonzero(right)[0]:
        for s in range(a.shape[1]):
            j = np.nonzero(true[r] == a[r, s])[0]
            err.append(abs(res.coefficients[r, s] - truth.coefficients[r, j[0]]))
    rec = res.recovered.reshape(len(res.recovered), -1).astype(np.float64)
    ref = truth.private[cl_img].reshape(len(cl_img), -1).astype(np.float64)
    agree = float(np.mean((rec * ref).sum(0) > 0))
    return {"coef_abs_err": float(np.mean(err)) if err else None, "rows_assigned_right": float(right.mean()),
            "sign_agreement": agree}


def true_key_checks(args, test, out: Path, rev: str) -> None:
    """DIAGNOSTIC (reads the truth): per draw, the solver of the attack on the TRUE private keys with the
    attack's public model (public shares' squares from the coefficient law, the attacker's pool
    variance), its signs by the per-position public-mean field, by the global public-mean vote and by
    the truth; beside the oracle on every true key. Separates the solver from the clustering."""
    from instahide.attacks.carlini import reconstruct as R

    ratio = R.public_square_ratio(args.k, 2, 0.65, 0.3)
    for pool_name in args.pools:
        a_pub, _ = attacker_pool(args.attacker_public, pool_name, args.pool)
        pa = a_pub.astype(np.float64) / 127.5 - 1  # the attacker's pool in [-1, 1] pixels
        mu = pa.mean(0)
        for draw in (args.draw_ids or list(range(args.draws))):
            enc, lab, truth, _ = make_draw(draw, pool_name, test, n=args.n, T=args.T, k=args.k, setting="cross",
                                           pool_size=args.pool)
            idx = truth.indices[:, :2]
            rec, pm = R.reconstruct_oracle(enc.astype(np.float64), idx, truth.coefficients[:, :2].astype(np.float64),
                                           lab, k=args.k, num_private=2, n_clusters=args.n, square_ratio=ratio,
                                           public_variance=pa.var(0))

            def max_ssim(x):
                return score(x[idx[:, 0]].astype(np.float32), truth).max_ssim

            row = {"tag": args.tag, "diagnostic": "true private keys, the attack's public model", "draw": draw,
                   "pool_source": pool_name, "attacker_public": args.attacker_public, "n": args.n, "T": args.T,
                   "k": args.k, "sign_field": max_ssim(rec * R.public_sign_field(pm, mu)[None]),
                   "sign_vote": max_ssim(rec * R.public_sign_vote(pm, mu)),
                   "sign_truth": max(max_ssim(rec), max_ssim(-rec)), "oracle": oracle_score(enc, truth),
                   "commit": rev, "date": time.strftime("%Y-%m-%d %H:%M")}
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{pool_name} draw {draw}: true private keys, signs by field {row['sign_field']:.3f} vote "
                  f"{row['sign_vote']:.3f} truth {row['sign_truth']:.3f}; oracle {row['oracle']['Max_SSIM']:.3f}",
                  flush=True)


def solver_checks(args, test, out: Path, rev: str) -> None:
    """DIAGNOSTIC (reads the truth): where the oracle's solver loses, per draw, all on the TRUE keys:
    the plain least squares with the mask's signs known (what the signs cost), the soft-sign / least-
    squares iteration from its Gram start and from the true images (what its local optima cost), the
    share of positions where the truth's solution fits the magnitudes better (whether the likelihood
    can tell), and the oracle with and without the propagation sweeps."""
    from instahide.attacks import oracle as O

    for pool_name in args.pools:
        for draw in (args.draw_ids or list(range(args.draws))):
            enc, lab, truth, _ = make_draw(draw, pool_name, test, n=args.n, T=args.T, k=args.k, setting="cross",
                                           pool_size=args.pool)
            n, shape = truth.n, enc.shape[1:]
            idx, lam = truth.indices, truth.coefficients.astype(np.float64)
            a, n_priv = O.design_matrix(idx, lam, truth.num_private, n, "mean")
            y = enc.reshape(len(enc), -1).astype(np.float64)
            mag = np.abs(y)
            bits = np.unpackbits(truth.mask_bits, axis=1, bitorder="little")[:, :y.shape[1]]
            q = (lam[:, truth.num_private:] ** 2).sum(1)
            z0, var = O._gram_init(a, mag ** 2, q, 1e-3)
            noise = 1e-3 * np.mean(mag ** 2) + q[:, None] * var[None, :]

            def max_ssim(z):
                z = z * O.align_signs(z[:n_priv], shape)[None, :]
                rec = z[:n].reshape(n, *shape).astype(np.float32)[idx[:, 0]]
                return max(score(rec, truth).max_ssim, score(-rec, truth).max_ssim)

            known = O.oracle_decode((y * (1.0 - 2.0 * bits)).reshape(enc.shape), idx, lam, truth.num_private, n, masked=False)
            start = np.vstack([truth.private.reshape(n, -1), np.zeros((1, y.shape[1]))]).astype(np.float64)
            from_gram = O._refine(a, mag, z0, noise, n_priv, shape, 150, True, True, 1e-3)
            from_truth = O._refine(a, mag, start, noise, n_priv, shape, 30, False, True, 1e-3)
            better = O.position_nll(a, mag, from_truth, noise) < O.position_nll(a, mag, from_gram, noise)
            row = {"tag": args.tag, "diagnostic": "solver on the true keys", "draw": draw, "pool_source": pool_name,
                   "n": args.n, "T": args.T, "k": args.k,
                   "signs_known_least_squares": score(known.decryption, truth).max_ssim,
                   "iteration_from_gram": max_ssim(from_gram), "iteration_from_truth": max_ssim(from_truth),
                   "truth_fits_better_share": float(better.mean()),
                   "oracle_no_propagation": oracle_score(enc, truth, propagate=0)["Max_SSIM"],
                   "oracle": oracle_score(enc, truth)["Max_SSIM"], "commit": rev,
                   "date": time.strftime("%Y-%m-%d %H:%M")}
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def attacker_pool(kind: str, pool_name: str, size: int):
    src = POOLS[pool_name] if kind == "same" else "builtin"
    return (load_public_pool(src, n=size, size=(32, 32), channels=3, seed=1).images,
            f"{'the challenge source' if kind == 'same' else 'builtin photographs'}, {size} patches, seed 1")


def run(args) -> None:
    torch.set_num_threads(args.threads)
    root = DATA / "cifar-10-batches-py"
    test = load_dataset("cifar10", root=root, split="test")
    train = load_dataset("cifar10", root=root, split="train")
    a_img, a_lab = train.images[:args.train_images], train.labels[:args.train_images]
    draws = ([HOLDOUT_BASE + i for i in range(args.holdout)] if args.holdout else
             (args.draw_ids if args.draw_ids else list(range(args.draws))))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net_dir = Path(args.net_dir)
    net_dir.mkdir(parents=True, exist_ok=True)
    rev = commit()
    if args.true_key_checks:
        true_key_checks(args, test, out, rev)
        return
    if args.solver_checks:
        solver_checks(args, test, out, rev)
        return
    for pool_name in args.pools:
        a_pub, a_desc = attacker_pool(args.attacker_public, pool_name, args.pool) if args.setting == "cross" else (None, None)
        configs, networks = {}, {}
        for preset in args.presets:
            over = {"train_steps": args.train_steps} if args.train_steps else {}
            if args.public_variance:
                over["public_variance"] = args.public_variance
            for item in args.set:
                key, _, value = item.partition("=")
                over[key] = json.loads(value)
            configs[preset] = CarliniConfig.preset(preset, **over)
            net_path = net_dir / (f"{preset}_{args.setting}_k{args.k}_{args.attacker_public}_{pool_name}_"
                                  f"{configs[preset].train_steps}.pt")
            networks[preset] = (load_pair_network(net_path) if net_path.exists() else None, net_path)
        for draw in draws:
            enc, lab, truth, sel = make_draw(draw, pool_name, test, n=args.n, T=args.T, k=args.k,
                                             setting=args.setting, pool_size=args.pool)
            orc = oracle_score(enc, truth) if not args.no_oracle else None
            for preset, config in configs.items():
                network, net_path = networks[preset]
                t0 = time.perf_counter()
                res = carlini_attack(enc, lab, n_private=args.n, k=args.k, num_private=truth.num_private,
                                     attacker_images=a_img, attacker_labels=a_lab, attacker_public=a_pub,
                                     scaling="pm1", config=config, network=network, truth=truth)
                seconds = time.perf_counter() - t0
                if network is None:
                    networks[preset] = (res.network, net_path)
                    save_pair_network(res.network, net_path)
                write_row(args, out, rev, draw, pool_name, a_desc, preset, config, enc, lab, truth, sel, res, orc,
                          seconds)


def write_row(args, out, rev, draw, pool_name, a_desc, preset, config, enc, lab, truth, sel, res, orc, seconds):
    """One JSON line for one attack on one draw, and a line on stdout."""
    sc = score(res.decryption, truth)
    m = res.metrics
    classes = np.bincount(truth.private_labels, minlength=10)
    train_s = res.timings.get("train_pair_network", 0.0)
    row = {
        "tag": args.tag, "draw": draw, "holdout": draw >= HOLDOUT_BASE, "pool_source": pool_name,
        "attacker_public": args.attacker_public, "attacker_public_desc": a_desc, "preset": preset,
        "public_variance": config.public_variance,
        "n": args.n, "T": args.T, "k": args.k, "setting": args.setting, "pool": args.pool,
        "private_indices": sel.tolist(), "classes_shared": int((classes > 1).sum()),
        "Max_SSIM": sc.max_ssim, "Mean_SSIM": sc.mean_ssim, "share_above_0.8": sc.share_above,
        "oracle": orc,
        "steps": {"pair_auc": m["pairs"].get("auc"), "core_purity": m["clusters"]["core_purity"],
                  "core_coverage": m["clusters"]["core_coverage"],
                  "assignment_exact": m["assignment_final"].get("exact"),
                  "assignment_slot": m["assignment_final"].get("slot"),
                  "recovered_ssim_mean": m.get("recovered_ssim_mean"), "sign_correct": m.get("sign_correct"),
                  **step_accuracy(res, truth)},
        "public_variance_level": m.get("public_variance_level"),
        "public_variance_nll": m.get("public_variance_nll"),
        "seconds": seconds - train_s, "train_seconds": train_s, "timings": res.timings,
        "threads": torch.get_num_threads(), "commit": rev, "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    with out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    o = orc["Max_SSIM"] if orc else float("nan")
    print(f"{pool_name} draw {draw} {preset}: Max_SSIM {sc.max_ssim:.3f} oracle {o:.3f} "
          f"exact {row['steps']['assignment_exact']:.2f} sign {row['steps']['sign_agreement']:.2f} "
          f"{seconds:.0f}s", flush=True)


def summary(path: Path, tag: str | None) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    same_draw = {}  # the oracle of a draw is computed once; rows run with --no-oracle borrow it
    for r in rows:
        if r.get("oracle"):
            same_draw[(r["draw"], r["pool_source"], r["setting"], r["k"], r["T"], r["n"], r["pool"])] = r["oracle"]
    for r in rows:
        if not r.get("oracle"):
            r["oracle"] = same_draw.get((r["draw"], r["pool_source"], r["setting"], r["k"], r["T"], r["n"], r["pool"]))
    if tag:
        rows = [r for r in rows if r["tag"] == tag]
    groups: dict = {}
    for r in rows:
        key = (r["tag"], r["preset"], r["pool_source"], r["attacker_public"], r.get("public_variance"), r["setting"], r["k"], r["T"],
               r["holdout"])
        groups.setdefault(key, []).append(r)
    print("| tag | preset | pool source | attacker's pool | public variance | setting, k, T | draws | Max_SSIM mean +- sd | min | oracle mean "
          "| worst attack / oracle | assignment exact (mean) | sign agreement (mean) | s / draw (mean) | pair network s |")
    print("|" + " --- |" * 15)
    for (tg, pr, pool, ap, pv, setting, k, T, hold), rs in groups.items():  # noqa: N806
        ms = np.array([r["Max_SSIM"] for r in rs])
        orc = np.array([r["oracle"]["Max_SSIM"] if r.get("oracle") else np.nan for r in rs])
        ratio = np.nanmin(ms / orc) if np.isfinite(orc).any() else np.nan
        ex = np.mean([r["steps"]["assignment_exact"] for r in rs])
        sg = np.mean([r["steps"]["sign_agreement"] for r in rs])
        sec = np.mean([r["seconds"] for r in rs])
        train_s = max(r.get("train_seconds", 0.0) for r in rs)
        print(f"| {tg}{' (held out)' if hold else ''} | {pr} | {pool} | {ap} | {pv} | {setting}, {k}, {T} | {len(rs)} | "
              f"{ms.mean():.3f} +- {ms.std(ddof=1) if len(ms) > 1 else 0:.3f} | {ms.min():.3f} | {np.nanmean(orc):.3f} | "
              f"{ratio:.2f} | {ex:.2f} | {sg:.2f} | {sec:.0f} | {train_s:.0f} |")


def main() -> None:
    if "--summary" in sys.argv:
        i = sys.argv.index("--summary")
        tag = sys.argv[sys.argv.index("--tag") + 1] if "--tag" in sys.argv else None
        summary(Path(sys.argv[i + 1]), tag)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", type=int, default=8, help="tuning draws 0 .. DRAWS-1")
    p.add_argument("--draw-ids", type=int, nargs="+", default=None, help="these draw ids instead")
    p.add_argument("--holdout", type=int, default=0, help="run this many held-out draws (ids 1000, ...) instead")
    p.add_argument("--pools", nargs="+", choices=sorted(POOLS), default=["imagenet", "builtin"])
    p.add_argument("--attacker-public", choices=("same", "builtin"), default="same")
    p.add_argument("--public-variance", choices=("pool", "likelihood"), default=None,
                   help="override the preset's public_variance")
    p.add_argument("--presets", nargs="+", choices=("tiny", "cpu", "full"), default=["cpu"],
                   help="attack presets, each run on every draw (side by side)")
    p.add_argument("--train-steps", type=int, default=None, help="override the preset's pair-network steps")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                   help="CarliniConfig fields over the presets, e.g. fit_rounds=1 oracle_iterations=40")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--setting", choices=("cross", "inside"), default="cross")
    p.add_argument("--pool", type=int, default=4000, help="public pool size")
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--no-oracle", action="store_true")
    p.add_argument("--true-key-checks", action="store_true",
                   help="DIAGNOSTIC: the solver on the TRUE private keys (sign rules side by side) instead of the attack")
    p.add_argument("--solver-checks", action="store_true",
                   help="DIAGNOSTIC: where the oracle's solver loses, on the TRUE keys (signs known, starts, propagation)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "attack_draws.jsonl"))
    p.add_argument("--net-dir", default=str(ROOT / "experiments" / "results" / "attack_draws_nets"))
    p.add_argument("--tag", default="")
    run(p.parse_args())


if __name__ == "__main__":
    main()
