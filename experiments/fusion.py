"""Luo et al.'s fusion-and-denoising attack (docs/fusion.md) against T and augmentation, next to
Carlini et al.'s attack on the same challenges.

Challenge: the first ``--n`` CIFAR-10 TEST images, ``--T`` encryptions each, rows SHUFFLED, keys from
research seed ``--seed``, cross-dataset k=6 (2 private + 4 public slots from 4,000 built-in patches,
pool seed 0), pixels in [-1, 1]; ``--augment 0`` none, ``4``: the training recipe's random crop
(padding 4) and flip before every epoch's encryption (augmentation seed ``--seed``). The attacker
trains on the first ``--train-images`` CIFAR-10 TRAIN images with its own pool (pool seed 1): one
fusion network per augmentation setting (cached in ``--net-dir``, reused across T) and Carlini's
pair network (``cpu`` preset, cached in experiments/results/carlini_nets/ by experiments/carlini.py).
Per challenge, one JSON line per attack appended to ``--out``:

  fusion-true     the fusion network on the TRUE groups (an upper bound on the grouping)
  mean-abs-true   the mean |e| of each true group (what the network starts from; no sign)
  carlini         carlini_attack, preset cpu
  fusion-carlini  the fusion network on Carlini's clusters (the rows assigned to each)

  fusion-other    each row given the fusion network's image of a group it is NOT in (the control)
  attacker's mean image  every row decrypted as the mean of the attacker's images (no information)

Rows already in ``--out`` are not measured again. With ``--pair-net-augmented`` (and ``--augment 4``),
the last two again, Carlini's pair network trained (preset cpu, cached in ``--net-dir``) on the
attacker's encryptions made WITH the challenge's augmentation.

  OMP_NUM_THREADS=1 .venv/bin/python experiments/fusion.py --T 10 20 50 --augment 0 4
  OMP_NUM_THREADS=1 .venv/bin/python experiments/fusion.py --T 10 20 50 --augment 4 --pair-net-augmented
  .venv/bin/python experiments/fusion.py --table experiments/results/fusion.jsonl
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))

from _common import append_jsonl, done_keys, read_jsonl  # noqa: E402

from instahide import KeyGenerator  # noqa: E402
from instahide.attacks.carlini import (CarliniConfig, carlini_attack, load_pair_network, save_pair_network,  # noqa: E402
                                       scheme_params, train_pair_network, true_member_sets)
from instahide.attacks.fusion import FusionNet, fusion_attack, train_fusion_network, true_groups  # noqa: E402
from instahide.challenge import make_challenge, score  # noqa: E402
from instahide.data import load_dataset, load_public_pool  # noqa: E402
from instahide.scheme.defaults import DOM, UPPER  # noqa: E402

K, NUM_PRIVATE = 6, 2


def fusion_net(args, a_img, a_lab, a_pool, augment: int, log: dict) -> FusionNet:
    """The cached fusion network of this augmentation setting, or a newly trained (and cached) one."""
    path = Path(args.net_dir) / f"fusion-cross-k6-pm1-aug{augment}-s{args.steps}-n{args.train_images}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        net = FusionNet(**saved["config"])
        net.load_state_dict(saved["state"])
        log.update(saved["log"], trained_in_this_run=False)
        return net.eval()
    t0 = time.perf_counter()
    net, train_log = train_fusion_network(
        a_img, a_lab, a_pool, T=max(args.T), k=K, num_private=NUM_PRIVATE, augment_padding=augment or None,
        steps=args.steps, seed=1, progress=lambda _, d: print("train", d, flush=True))
    log.update(train_s=time.perf_counter() - t0, final_loss=train_log[-1]["loss"], trained_in_this_run=True,
               load_at_training=os.getloadavg()[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": {"channels": net.channels, "width": net.width, "decoder_width": net.decoder_width},
                "state": net.state_dict(), "log": {k: v for k, v in log.items() if k != "trained_in_this_run"}}, path)
    return net


def picture(path: Path, rows: dict, title: str) -> None:
    """One row of images per entry of ``rows`` (name -> ``(m, C, H, W)`` in [-1, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = len(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), m, figsize=(1.1 * m, 1.25 * len(rows) + 0.3), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for j in range(m):
            axes[r, j].imshow(np.clip((images[j] + 1) / 2, 0, 1).transpose(1, 2, 0), interpolation="nearest")
            axes[r, j].axis("off")
        axes[r, 0].set_title(name, fontsize=7, loc="left")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


class AugmentedSampler:
    """Training batches for Carlini's pair network (``EncryptionSampler``'s interface) made by
    ``make_challenge`` with the challenge's augmentation: ``(|e|, members, label support)``."""

    def __init__(self, images, labels, pool, augment: int, seed: int = 1):
        self.images, self.labels, self.pool, self.augment = images, labels, pool, augment
        self.rng, self.gen = np.random.default_rng(seed), KeyGenerator.from_seed(f"pair-net-augmented-{seed}")

    def batch(self, batch_images: int, batch_epochs: int):
        sel = self.rng.choice(len(self.images), batch_images, replace=False)
        enc, lab, truth = make_challenge(self.images[sel], self.labels[sel], self.pool, T=batch_epochs, k=K,
                                         num_private=NUM_PRIVATE, num_classes=10, generator=self.gen,
                                         augment_padding=self.augment, augment_seed=int(self.rng.integers(2**62)))
        members = true_member_sets(truth.indices, NUM_PRIVATE, len(sel))
        return torch.from_numpy(np.abs(enc)), torch.from_numpy(members), torch.from_numpy(lab > 1e-6)


def augmented_pair_net(args, a_img, a_lab, a_pool, augment: int):
    """Carlini's pair network (preset cpu) trained on augmented encryptions of the attacker's images."""
    config = CarliniConfig.preset("cpu")
    path = Path(args.net_dir) / f"pairnet-cross-k6-pm1-aug{augment}-s{config.train_steps}-w{config.width_mult}-cpu.pt"
    if path.exists():
        return load_pair_network(path), 0.0
    t0 = time.perf_counter()
    net, _ = train_pair_network(AugmentedSampler(a_img, a_lab, a_pool, augment), config,
                                scheme=scheme_params(K, NUM_PRIVATE, UPPER, DOM, "instahide", "pm1"),
                                progress=lambda _, d: print("pair net", d, flush=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_pair_network(net, path)
    return net, time.perf_counter() - t0


def scores(dec, truth) -> dict:
    """The challenge's scores, and Max_SSIM with each row's decryption also tried mirrored (with
    augmentation a row may hold the flipped image; the truth keeps the un-augmented one)."""
    sc, mirrored = score(dec, truth), score(np.ascontiguousarray(dec[..., ::-1]), truth)
    return {"Max_SSIM": sc.max_ssim, "Mean_SSIM": sc.mean_ssim, "share_above_0.8": sc.share_above,
            "images_best_above_0.8": int(np.sum(sc.per_private_best_ssim > 0.8)),
            "Max_SSIM_flip_allowed": float(np.maximum(sc.row_max_ssim, mirrored.row_max_ssim).mean())}


def table(path: Path) -> None:
    print("| T | augmentation | attack | groups | Max_SSIM | Mean_SSIM | Max_SSIM, flip allowed | share > 0.8 "
          "| seconds | load |")
    print("|" + " --- |" * 10)
    for r in read_jsonl(path):
        attack = r["attack"].replace("|", "\\|")
        print(f"| {r['T']} | {'crop 4 + flip' if r['augment'] else 'none'} | {attack} | {r['groups']} | "
              f"{r['Max_SSIM']:.3f} | {r['Mean_SSIM']:.3f} | {r['Max_SSIM_flip_allowed']:.3f} | "
              f"{r['share_above_0.8']:.3f} | {r['seconds']:.0f} | {r['load']:.1f} |")


def main() -> None:
    if "--table" in sys.argv:
        table(Path(sys.argv[sys.argv.index("--table") + 1]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar-10-batches-py"))
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--T", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--augment", type=int, nargs="+", default=[0, 4], help="crop padding (0: no augmentation)")
    p.add_argument("--steps", type=int, default=800, help="fusion network training steps")
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--no-carlini", action="store_true", help="skip Carlini's attack (and fusion on its clusters)")
    p.add_argument("--pair-net-augmented", action="store_true",
                   help="only Carlini's attack and fusion on its clusters, its pair network trained with augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "fusion.jsonl"))
    p.add_argument("--net-dir", default=str(ROOT / "experiments" / "results" / "fusion_nets"))
    p.add_argument("--carlini-net", default=str(ROOT / "experiments" / "results" / "carlini_nets" /
                                                "cross-k6-pm1-s300-w16-d4-cpu.pt"))
    p.add_argument("--img-dir", default=str(ROOT / "docs" / "img"))
    p.add_argument("--tag", default="")
    args = p.parse_args()
    torch.set_num_threads(1)

    test = load_dataset("cifar10", root=args.root, split="test")
    train = load_dataset("cifar10", root=args.root, split="train")
    a_img, a_lab = train.images[:args.train_images], train.labels[:args.train_images]
    pool = load_public_pool("builtin", n=4000, size=(32, 32), channels=3, seed=0).images
    a_pool = load_public_pool("builtin", n=4000, size=(32, 32), channels=3, seed=1).images
    mean_image = (a_img.astype(np.float32).mean(0) / 127.5 - 1).astype(np.float32)
    pair_net = None if args.no_carlini or not Path(args.carlini_net).exists() else load_pair_network(args.carlini_net)
    for augment in args.augment:
        net_log: dict = {}
        net = fusion_net(args, a_img, a_lab, a_pool, augment, net_log)
        pair_train_s = 0.0
        if args.pair_net_augmented and augment:
            pair_net, pair_train_s = augmented_pair_net(args, a_img, a_lab, a_pool, augment)
        for T in args.T:  # noqa: N806
            enc, lab, truth = make_challenge(test.images[:args.n], test.labels[:args.n], pool, T=T, k=K,
                                             num_private=NUM_PRIVATE, scaling="pm1", num_classes=10,
                                             generator=KeyGenerator.from_seed(args.seed),
                                             augment_padding=augment or None, augment_seed=args.seed)
            perm = np.random.default_rng(args.seed).permutation(len(enc))
            enc, lab = enc[perm], lab[perm]
            truth = replace(truth, indices=truth.indices[perm], coefficients=truth.coefficients[perm])
            common = {"tag": args.tag, "n": args.n, "T": T, "k": K, "pool": 4000, "scaling": "pm1", "augment": augment,
                      "seed": args.seed, "train_images": args.train_images, "fusion_steps": args.steps,
                      "fusion_net": net_log, "threads": 1, "date": time.strftime("%Y-%m-%d %H:%M"),
                      "torch": torch.__version__}
            groups = true_groups(truth.indices, NUM_PRIVATE, args.n)
            pics = {"original": truth.private}
            pair_rule = "carlini, pair net trained with augmentation" if args.pair_net_augmented else "carlini"

            def record(attack, group_rule, dec, seconds, **extra):
                row = {**common, "attack": attack, "groups": group_rule, **scores(dec, truth), "seconds": seconds,
                       "load": os.getloadavg()[0], **extra}
                append_jsonl(args.out, row)
                print({k: row[k] for k in ("T", "augment", "attack", "Max_SSIM", "Mean_SSIM", "seconds")}, flush=True)

            have = done_keys(args.out, ("n", "seed", "T", "augment", "attack", "groups"))

            def todo(attack, group_rule):
                return (args.n, args.seed, T, augment, attack, group_rule) not in have

            t0 = time.perf_counter()
            res = fusion_attack(enc, lab, groups, net)
            pics["fusion, true groups"] = res.recovered
            if todo("fusion", "true"):
                record("fusion", "true", res.decryption, time.perf_counter() - t0)
            if todo("mean |e|", "true"):
                mean_abs = np.stack([np.abs(enc[g]).mean(0) for g in groups]).astype(np.float32)
                record("mean |e|", "true", mean_abs[res.row_group], 0.0)
            if todo("fusion", "true, each row given another image's group"):  # what is not image-specific
                held = true_member_sets(truth.indices, NUM_PRIVATE, args.n)
                other = [next(j % args.n for j in range(g + 1, g + args.n) if not held[r, j % args.n])
                         for r, g in enumerate(res.row_group)]
                record("fusion", "true, each row given another image's group", res.recovered[other], 0.0)
            if todo("attacker's mean image", "none"):  # knows nothing of the challenge
                record("attacker's mean image", "none", np.broadcast_to(mean_image, enc.shape).copy(), 0.0)
            ran = pair_net is None
            if pair_net is not None and (todo("carlini (cpu preset)", pair_rule) or todo("fusion", pair_rule)):
                ran = True
                common["pair_net_train_s"] = pair_train_s
                t0 = time.perf_counter()
                car = carlini_attack(enc, lab, n_private=args.n, k=K, num_private=NUM_PRIVATE, attacker_images=a_img,
                                     attacker_labels=a_lab, attacker_public=a_pool, scaling="pm1", network=pair_net,
                                     config=CarliniConfig.preset("cpu", seed=args.seed), truth=truth)
                cm = car.metrics
                metrics = {"pair_auc": cm["pairs"].get("auc"), "core_purity": cm["clusters"]["core_purity"],
                           "coverage": cm["clusters"]["core_coverage"],
                           "assignment_exact": cm["assignment_final"].get("exact"), "config": car.info["config"]}
                record("carlini (cpu preset)", pair_rule, car.decryption, time.perf_counter() - t0, carlini=metrics)
                t0 = time.perf_counter()
                fc = fusion_attack(enc, lab, car.clusters, net)
                record("fusion", pair_rule, fc.decryption, time.perf_counter() - t0, carlini=metrics)
                # each image's picture: the cluster whose majority it is (black where none is)
                img = np.array(car.metrics["cluster_image"])
                for name, rec in (("Carlini", car.recovered), ("fusion, Carlini's groups", fc.recovered)):
                    pics[name] = np.full_like(truth.private, -1.0)
                    pics[name][img[::-1]] = rec[::-1]
            m = min(10, args.n)
            suffix = "_pairnet-aug" if args.pair_net_augmented else ""
            if ran:
                picture(Path(args.img_dir) / f"fusion_n{args.n}_k6_pm1_T{T}_aug{augment}{suffix}.png",
                        {name: v[:m] for name, v in pics.items()},
                        f"cross k=6, [-1, 1] pixels, T={T}, {'crop 4 + flip' if augment else 'no augmentation'}"
                        f"{', pair net trained with augmentation' if args.pair_net_augmented else ''}")


if __name__ == "__main__":
    main()
