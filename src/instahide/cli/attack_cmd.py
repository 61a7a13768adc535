"""``instahide attack NAME``: run one attack on a challenge folder; write decryption.npy, scores, pictures."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ._common import CLIError, refuse_overwrite

HELP = "run an attack (demix, carlini, seed, oracle) on a challenge; writes decryption.npy and scores"
DESCRIPTION = """\
Run one attack on a challenge folder (encryption.npy, label.npy, meta.json, as written by
`instahide challenge make` or any challenge in the published format with a meta.json giving
n_private, T, k, num_private, mode and scaling). Writes to --out:
  decryption.npy   float32 (N, H, W, C), one recovered image per row (the submission format)
  outcome.json     the attack's parameters, timings and facts (clusters, per-step accuracies, seed)
and, when the ground truth is at hand (<CHALLENGE>-truth.npz next to the folder, or --truth):
  scores.json, rows.csv, best_worst.png   as `instahide challenge score` writes them
  recovered.png                           originals, |encryption| and the best recovery of each image

attacks:
  demix     SPEC 5.A  clustering + least squares on raw pixels (Mixup; shows what the mask stops)
  carlini   SPEC 5.B  Carlini et al.: pair network trained on your own encryptions of DISJOINT images
                      (--attacker-dataset/--attacker-root), graph, clusters, assignment, reconstruction
  seed      SPEC 5.C  brute force of the reference code's 32-bit generator seed (legacy keys)
  oracle    SPEC 5.E  reconstruction from the TRUE keys (needs the truth): an upper bound, not an attack

examples:
  instahide challenge make --dataset digits --n-private 20 --T 20 --out runs/ch
  instahide attack demix --challenge runs/ch --out runs/ch-demix
  instahide attack seed --challenge runs/legacy --seed-range 0:4294967296 --out runs/legacy-seed
  instahide attack carlini --challenge runs/c10 --attacker-dataset cifar10 --attacker-root data/cifar-10-batches-py --out runs/c10-carlini
"""


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=["demix", "carlini", "seed", "oracle", "list"], metavar="NAME",
                   help="demix, carlini, seed, oracle (or list)")
    p.add_argument("--challenge", metavar="DIR", help="challenge folder (encryption.npy, label.npy, meta.json)")
    p.add_argument("--truth", default=None, metavar="FILE",
                   help="ground truth for scoring (default <DIR>-truth.npz if it exists; the oracle needs it)")
    p.add_argument("--out", metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    g = p.add_argument_group("seed")
    g.add_argument("--seed-range", default="0:65536", metavar="A:B",
                   help="seeds to search, [A, B) (default 0:65536; the reference's are below 2^32)")
    g = p.add_argument_group("carlini")
    g.add_argument("--attacker-dataset", default=None, metavar="NAME",
                   help="the attacker's own images, disjoint from the attacked ones (default: the "
                        "challenge's dataset, other split)")
    g.add_argument("--attacker-root", default=None, metavar="PATH", help="where the attacker's dataset is")
    g.add_argument("--attacker-split", default=None, choices=["train", "test"],
                   help="split of the attacker's images (default: the one the challenge did not use)")
    g.add_argument("--network", default=None, metavar="FILE",
                   help="a pair-similarity network saved by an earlier run (skips training)")
    g.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "full"],
                   help="budget of the pipeline: tiny (tests), cpu (minutes on 2 cores), full (GPU)")
    g.add_argument("--device", default="cpu", help="torch device for the networks (cpu, cuda)")
    p.set_defaults(func=run)


def _parse_range(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(":")
        return int(a), int(b)
    except ValueError:
        raise CLIError(f"--seed-range must be A:B with integers, got {text!r}") from None


def _load(folder: Path):
    from .challenge_cmd import _load_npy

    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise CLIError(f"{folder} has no meta.json: the attacks need the challenge's public parameters")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise CLIError(f"cannot read {meta_path}: {exc}") from exc
    enc = _load_npy(str(folder / "encryption.npy"), "encryption")
    lab = _load_npy(str(folder / "label.npy"), "label")
    return enc, lab, meta


def run(args) -> int:
    from ..audit import ATTACKS, run_attack
    from ..challenge import default_truth_path, load_truth

    if args.name == "list":
        for name, spec in ATTACKS.items():
            print(f"{name:<8} {spec['title']}" + ("  [needs the ground truth]" if spec["needs_truth"] else ""))
        print("gradient inversion (SPEC 5.D) attacks a training step: see experiments/gradient_inversion.py")
        return 0
    if not args.challenge or not args.out:
        raise CLIError("give --challenge DIR and --out DIR")
    folder, out = Path(args.challenge), Path(args.out)
    refuse_overwrite([out / "decryption.npy", out / "outcome.json"], args.force)
    enc, lab, meta = _load(folder)
    truth = None
    truth_path = Path(args.truth) if args.truth else default_truth_path(folder)
    if args.truth or truth_path.is_file():
        try:
            truth = load_truth(truth_path)
        except (FileNotFoundError, ValueError) as exc:
            raise CLIError(str(exc)) from exc
        if meta.get("challenge_id") and truth.params.get("challenge_id") not in (None, meta["challenge_id"]):
            raise CLIError(f"mismatched ground truth: {truth_path} belongs to another challenge")
    if ATTACKS[args.name]["needs_truth"] and truth is None:
        raise CLIError(f"the {args.name} attack needs the ground truth: pass --truth FILE")
    options = {}
    if args.name == "seed":
        options["seed_range"] = _parse_range(args.seed_range)
    if args.name == "carlini":
        options.update(attacker_dataset=args.attacker_dataset, attacker_root=args.attacker_root,
                       attacker_split=args.attacker_split, network=args.network, preset=args.preset,
                       device=args.device, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        outcome = run_attack(args.name, enc, lab, meta, truth=truth, **options)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    from ..audit.run import _save_outcome

    _save_outcome(out, outcome, truth, meta.get("challenge_id"))
    if outcome.score is not None:
        try:
            from ..report.audit_report import recovered_png

            recovered_png(outcome, truth, enc, out / "recovered.png")
        except ImportError:
            print('note: recovered.png skipped (needs matplotlib: pip install "instahide[plot]")', file=sys.stderr)
    if outcome.decryption is None:
        print(f"{args.name}: recovered nothing ({outcome.seconds:.1f} s): "
              f"{outcome.info.get('result', json.dumps(outcome.info, default=str))}")
    elif outcome.score is not None:
        s = outcome.score
        print(f"{args.name}: Max_SSIM {s.max_ssim:.4f}  Mean_SSIM {s.mean_ssim:.4f}  rows > {s.threshold}: "
              f"{s.share_above:.1%}  images > {s.threshold}: {int(np.sum(s.per_private_best_ssim > s.threshold))}"
              f"/{truth.n}  ({outcome.seconds:.1f} s)")
    else:
        print(f"{args.name}: wrote a decryption ({outcome.seconds:.1f} s); no ground truth to score it against")
    print(f"wrote {out}")
    return 0
