"""``instahide audit``: a configuration and your own images -> challenge -> attacks -> report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..audit import DEFAULT_ATTACKS, FUSION_STEPS, FUSION_TIME_S, AuditConfig, attack_names, run_audit
from ._common import CLIError, add_key_options, add_scheme_options, scheme_from_args
from .attack_cmd import _parse_range, check_device

HELP = "measure what a configuration leaks: challenge from your images, attacks, report (md/html)"
DESCRIPTION = """\
Before sharing data encrypted with InstaHide: take a sample of your own images and the configuration
you intend to use (mode, k, public pool, number of epochs T, augmentation), build a challenge from
them, run the attacks that apply, and write a report of the measured leakage to OUT:
  OUT/report.md, OUT/report.html   led by the best recovery of each private image over all the
                                   attacks run (an attacker runs them all): the spread over the
                                   images (median, 10th/90th percentile, shares above 0.5 and 0.8)
                                   beside the per-row scores; then the measure with the most
                                   leakage above chance: the share of decrypted rows identified
                                   among the private images and --distractors other images (rank
                                   1), the share whose label a classifier trained on the attacker's
                                   images reads, or the share above SSIM 0.8; SSIM distribution,
                                   pictures
  OUT/summary.json                 the same measures (best_over_attacks, then most leakage first)
  OUT/best_per_image.csv           each private image's best SSIM, the attack and row that gave it
  OUT/challenge/                   what an attacker would hold (encryption.npy, label.npy, meta.json)
  OUT/challenge-truth.npz          your images and the keys (secret)
  OUT/attacks/<name>/              decryption.npy, scores.json, rows.csv, pictures, per attack
Each step is saved as it finishes; --resume picks up where an interrupted audit stopped.
Luo et al.'s fusion runs after Carlini et al.'s attack, on its clusters, its network trained
within --fusion-time seconds (--no-fusion skips it). The oracle is least squares given the TRUE
keys: the bound of that family of reconstructions, not an attack, not a bound on every attack.

The numbers measure the attacks run here at this scale; they are not a proof that the
configuration hides anything from other attacks.

examples:
  instahide audit --out runs/audit                                  # digits (built in), k=6 cross
  instahide audit --dataset folder --root my_images/ --n-private 50 --T 20 --out runs/mine
  instahide audit --dataset cifar10 --root data/cifar-10-batches-py --n-private 20 --T 50 \\
      --attacker-root data/cifar-10-batches-py --out runs/c10-audit
  instahide audit --public none --k 4 --augment-padding 4 --out runs/inside   # inside-dataset, with crops
"""


def add_parser(sub) -> None:
    p = sub.add_parser("audit", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument("--resume", action="store_true", help="reuse the challenge and the attack results already in OUT")
    p.add_argument("--format", default="both", choices=["md", "html", "both"], help="report format (default both)")
    g = p.add_argument_group("your images")
    g.add_argument("--dataset", default="digits", metavar="NAME",
                   help="digits (built in, default), folder (a folder of your images), arrays (.npy/.npz), "
                        "cifar10, mnist, ...")
    g.add_argument("--root", default=None, metavar="PATH", help="where the images are (not for digits)")
    g.add_argument("--split", default="test", choices=["train", "test"], help="split (default test)")
    g.add_argument("--n-private", type=int, default=20, metavar="n", help="images to audit: the first n (default 20)")
    add_scheme_options(p, public="builtin")
    g = p.add_argument_group("the configuration audited")
    g.add_argument("--T", type=int, default=50, help="epochs: encryptions of each image, fresh keys each (default 50)")
    g.add_argument("--scaling", default="pm1", choices=["pm1", "normalize", "unit"],
                   help="pixel units the encryption works in (default pm1 = [-1, 1]; unit = [0, 1])")
    g.add_argument("--augment-padding", type=int, default=None, metavar="PAD",
                   help="random crop with this padding + flip before every epoch (training augmentation)")
    add_key_options(p, uncentred=False)
    g = p.add_argument_group("attacks")
    g.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS), metavar="LIST",
                   help=f"comma-separated, from {','.join(attack_names())} (default all)")
    g.add_argument("--seed-range", default="0:65536", metavar="A:B", help="seeds the seed attack searches")
    g.add_argument("--distractors", type=int, default=1000, metavar="N",
                   help="other images of --dataset (never the audited ones) among the identification "
                        "candidates (default 1000)")
    g.add_argument("--attacker-dataset", default=None, metavar="NAME",
                   help="Carlini: the attacker's own images (default: --dataset, other split)")
    g.add_argument("--attacker-root", default=None, metavar="PATH")
    g.add_argument("--attacker-split", default=None, choices=["train", "test"])
    g.add_argument("--attacker-public", default=None, metavar="SOURCE",
                   help="Carlini and fusion: the public dataset the attacker assumes (the scheme publishes it), "
                        "cut into its own pool: builtin, a folder of images or a .npy/.npz file, as --public "
                        "(default: the challenge's own --public source, other patches)")
    g.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "full"], help="Carlini's budget")
    g.add_argument("--no-fusion", action="store_true", help="skip Luo et al.'s fusion attack")
    g.add_argument("--fusion-steps", type=int, default=FUSION_STEPS, metavar="N",
                   help=f"training steps of the fusion network, at most (default {FUSION_STEPS})")
    g.add_argument("--fusion-time", type=float, default=FUSION_TIME_S, metavar="S",
                   help=f"its training budget in seconds (default {FUSION_TIME_S:.0f}; 0: no limit)")
    g.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip() and not (args.no_fusion and
                                                                                     a.strip() == "fusion"))
    carlini = {"attacker_dataset": args.attacker_dataset, "attacker_root": args.attacker_root,
               "attacker_split": args.attacker_split, "attacker_public": args.attacker_public,
               "preset": args.preset, "device": check_device(args.device),
               "log": lambda msg: print(msg, file=sys.stderr, flush=True)}
    cfg = AuditConfig(
        dataset=args.dataset, root=args.root, split=args.split, n_private=args.n_private,
        scheme=scheme_from_args(args), T=args.T, scaling=args.scaling, augment_padding=args.augment_padding,
        research_seed=args.research_seed, attacks=attacks, seed_range=_parse_range(args.seed_range),
        distractors=args.distractors, carlini=carlini,
        fusion={"steps": args.fusion_steps, "time_s": args.fusion_time or None})
    formats = ("md", "html") if args.format == "both" else (args.format,)
    try:
        result = run_audit(cfg, Path(args.out), resume=args.resume, formats=formats,
                           log=lambda msg: print(msg, flush=True))
    except (ValueError, FileNotFoundError, ImportError, TypeError) as exc:
        raise CLIError(str(exc)) from exc
    print("report: " + ", ".join(str(result.paths[f]) for f in formats if f in result.paths))
    return 0
