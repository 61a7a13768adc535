"""``instahide attack NAME``: run one attack on a challenge folder; write decryption.npy, scores, pictures."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_open, atomic_save_npy, atomic_write_text
from ..audit import ATTACKS, FUSION_STEPS, FUSION_TIME_S, load_groups, run_attack, save_outcome
from ..audit.gradient import gradient_inversion_audit
from ..challenge import default_truth_path, load_challenge, load_truth
from ..data import load_dataset, load_public_pool
from ..data.scaling import to_unit_range
from ..report import encryption_grid, to_display
from ..report.audit_report import recovered_png
from ..train.ddp import resolve_device
from ._common import CLIError, refuse_overwrite

HELP = ("run an attack (demix, carlini, fusion, seed, oracle) on a challenge, or gradient inversion of a "
        "training step; writes the recovered images, scores and pictures")
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
  demix     clustering + least squares on raw pixels (Mixup; shows what the mask stops)
  carlini   Carlini et al.: pair network trained on your own encryptions of DISJOINT images
            (--attacker-dataset/--attacker-root) and your own pool of the public dataset the scheme
            publishes (--attacker-public), graph, clusters, assignment, reconstruction; writes
            groups.npz, the rows of each cluster
  fusion    Luo et al.: a network trained on your own images fuses each group of rows a carlini
            run found (--groups DIR, that run's --out) into one image
  seed      brute force of the reference code's 32-bit generator seed (legacy keys)
  oracle    least squares given the TRUE keys (needs the truth): the bound of that family of
            reconstructions, not an attack, and not a bound on every attack
  gradient-inversion
            a client encrypts --dataset's first images and takes training steps of --batch-size;
            the eavesdropper inverts each step's gradient (no --challenge; writes
            recovered.npy, scores.json, rows.csv, recovered.png)
each is described, with measured results, in docs/attacks.md.

examples:
  instahide challenge make --dataset digits --n-private 20 --T 20 --out runs/ch
  instahide attack demix --challenge runs/ch --out runs/ch-demix
  instahide attack seed --challenge runs/legacy --seed-range 0:4294967296 --out runs/legacy-seed
  instahide attack carlini --challenge runs/c10 --attacker-dataset cifar10 --attacker-root data/cifar-10-batches-py --out runs/c10-carlini
  instahide attack fusion --challenge runs/c10 --groups runs/c10-carlini --attacker-dataset cifar10 --attacker-root data/cifar-10-batches-py --out runs/c10-fusion
  instahide attack gradient-inversion --mode instahide --k 4 --n 4 --out runs/gi      # digits
"""


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=["demix", "carlini", "fusion", "seed", "oracle", "gradient-inversion", "list"],
                   metavar="NAME", help="demix, carlini, fusion, seed, oracle, gradient-inversion (or list)")
    p.add_argument("--challenge", metavar="DIR", help="challenge folder (encryption.npy, label.npy, meta.json)")
    p.add_argument("--truth", default=None, metavar="FILE",
                   help="ground truth for scoring (default <DIR>-truth.npz if it exists; the oracle needs it)")
    p.add_argument("--out", metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    g = p.add_argument_group("seed")
    g.add_argument("--seed-range", default="0:65536", metavar="A:B",
                   help="seeds to search, [A, B) (default 0:65536; the reference's are below 2^32: 0:4294967296 "
                        "is the whole space, about 13 minutes on 2 cores here with numba, docs/attacks.md)")
    g = p.add_argument_group("carlini and fusion")
    g.add_argument("--attacker-public", default=None, metavar="SOURCE",
                   help="the public dataset the attacker assumes (the scheme publishes it), cut into its own pool "
                        "(cross-dataset): builtin (the built-in photographs, default), a folder of images (e.g. "
                        "tiny-imagenet test images) or a .npy/.npz file, as --public takes them")
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
    g = p.add_argument_group("fusion")
    g.add_argument("--groups", default=None, metavar="DIR",
                   help="the --out of `instahide attack carlini` on the same challenge: its groups.npz (the rows "
                        "of each cluster) are what the fusion network decodes")
    g.add_argument("--fusion-steps", type=int, default=FUSION_STEPS, metavar="N",
                   help=f"training steps of the fusion network, at most (default {FUSION_STEPS})")
    g.add_argument("--fusion-time", type=float, default=FUSION_TIME_S, metavar="S",
                   help=f"its training budget in seconds (default {FUSION_TIME_S:.0f}; 0: no limit)")
    g = p.add_argument_group("gradient-inversion (the client's data and scheme; no --challenge)")
    g.add_argument("--dataset", default="digits", metavar="NAME", help="the client's images (default digits)")
    g.add_argument("--root", default=None, metavar="PATH")
    g.add_argument("--split", default="test", choices=["train", "test"])
    g.add_argument("--mode", default="instahide", choices=["vanilla", "mixup", "instahide"])
    g.add_argument("--k", type=int, default=4, help="images per encryption (default 4)")
    g.add_argument("--public", default="none", metavar="SOURCE", help="public pool (cross-dataset): builtin, ... or none")
    g.add_argument("--scaling", default="pm1", choices=["pm1", "unit"])
    g.add_argument("--n", type=int, default=4, help="images the eavesdropper attacks (default 4)")
    g.add_argument("--pool-images", type=int, default=100, metavar="M",
                   help="the client's private set (partners come from it; default 100)")
    g.add_argument("--batch-size", type=int, default=1, help="the client's batch size (default 1)")
    g.add_argument("--model", default="lenet", help="victim model: lenet (default) or a registered model")
    g.add_argument("--steps", type=int, default=2000, help="inversion steps per batch (default 2000)")
    g.add_argument("--restarts", type=int, default=1)
    p.set_defaults(func=run)


def _parse_range(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(":")
        return int(a), int(b)
    except ValueError:
        raise CLIError(f"--seed-range must be A:B with integers, got {text!r}") from None


def check_device(text: str) -> str:
    """``--device`` checked before any work (one rule, :func:`instahide.train.ddp.resolve_device`):
    CUDA asked for on a machine without it is a one-line error; ``auto`` becomes cpu or cuda."""
    try:
        return str(resolve_device(text, option="--device"))
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from None


def _carlini_groups(folder, meta: dict) -> list:
    """The row groups a carlini run on this challenge wrote to ``folder`` (``--groups``)."""
    if not folder:
        raise CLIError("fusion decodes the groups of rows Carlini et al.'s attack found: run `instahide attack "
                       "carlini --challenge DIR --out RUN` first and pass --groups RUN")
    record = Path(folder) / "outcome.json"
    if not record.is_file():
        raise CLIError(f"--groups {folder}: no outcome.json there (the --out of `instahide attack carlini`)")
    made_on = json.loads(record.read_text()).get("challenge_id")
    if meta.get("challenge_id") and made_on != meta["challenge_id"]:
        raise CLIError(f"--groups {folder} was found on another challenge ({made_on}, this one is "
                       f"{meta['challenge_id']})")
    groups = load_groups(folder)
    if not groups:
        raise CLIError(f"--groups {folder} holds no groups.npz (a carlini run of this version writes it)")
    return groups


def run(args) -> int:
    if args.name == "list":
        for name, spec in ATTACKS.items():
            print(f"{name:<18} {spec['title']}" + ("  [needs the ground truth]" if spec["needs_truth"] else ""))
        print(f"{'gradient-inversion':<18} gradient inversion of a training step (no --challenge; docs/attacks.md)")
        return 0
    if args.name in ("carlini", "gradient-inversion"):
        args.device = check_device(args.device)
    if args.name == "gradient-inversion":
        return _gradient_inversion(args)
    if not args.challenge or not args.out:
        raise CLIError("give --challenge DIR and --out DIR")
    folder, out = Path(args.challenge), Path(args.out)
    refuse_overwrite([out / "decryption.npy", out / "outcome.json"], args.force)
    try:
        enc, lab, meta = load_challenge(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
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
        options.update(seed_range=_parse_range(args.seed_range), show_progress=True)
    if args.name in ("carlini", "fusion"):
        options.update(attacker_dataset=args.attacker_dataset, attacker_root=args.attacker_root,
                       attacker_split=args.attacker_split, attacker_public=args.attacker_public,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.name == "carlini":
        options.update(network=args.network, preset=args.preset, device=args.device)
    if args.name == "fusion":
        options.update(groups=_carlini_groups(args.groups, meta), steps=args.fusion_steps,
                       time_s=args.fusion_time or None)
    try:
        outcome = run_attack(args.name, enc, lab, meta, truth=truth, **options)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    save_outcome(out, outcome, truth, meta.get("challenge_id"))
    if outcome.score is not None:
        try:
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


def _gradient_inversion(args) -> int:
    if not args.out:
        raise CLIError("give --out DIR")
    if args.device != "cpu":
        raise CLIError(f"gradient-inversion runs on the CPU only (--device {args.device} is for carlini)")
    out = Path(args.out)
    refuse_overwrite([out / "recovered.npy", out / "scores.json"], args.force)
    try:
        ds = load_dataset(args.dataset, root=args.root, split=args.split)
        if ds.labels is None:
            raise ValueError(f"{ds.name} has no labels; the client trains on labelled images")
        m = max(args.n, min(args.pool_images, len(ds)))
        ds = ds.subset(slice(0, m))
        pool = None
        if args.public.lower() != "none":
            c, h, w = ds.shape
            pool = load_public_pool(args.public, n=500, size=(h, w), channels=c).images
        res = gradient_inversion_audit(ds.images, ds.labels, mode=args.mode, k=args.k, public=pool,
                                       scaling=args.scaling, num_classes=ds.num_classes, n=args.n,
                                       batch_size=args.batch_size, model=args.model, steps=args.steps,
                                       restarts=args.restarts,
                                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise CLIError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(out / "recovered.npy", np.ascontiguousarray(res["recovered"].transpose(0, 2, 3, 1)))
    summary = res["summary"]
    atomic_write_text(out / "scores.json", json.dumps(summary, indent=2) + "\n")
    with atomic_open(out / "rows.csv", "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["row", "ssim_vs_input", "max_ssim_vs_private", "abs_max_ssim_vs_private"])
        for r in range(len(res["recovered"])):
            w.writerow([r, f"{res['ssim_vs_input'][r]:.6f}", f"{res['max_ssim_vs_private'][r]:.6f}",
                        f"{res['abs_max_ssim_vs_private'][r]:.6f}"])
    try:
        stretch = lambda a: to_display(torch.from_numpy(a), stretch=True)  # noqa: E731
        rows = [("private\n(slot 1)", to_unit_range(res["private_rows"], args.scaling)),
                ("trained on" if args.mode == "vanilla" else "encryption\ntrained on", stretch(res["inputs"])),
                ("recovered", stretch(res["recovered"]))]
        encryption_grid(rows, out / "recovered.png",
                        title=f"gradient inversion, {args.mode}\nSSIM to the input {summary['ssim_vs_input']:.2f}\n"
                              f"to the private images {summary['max_ssim_vs_private']:.2f}")
    except ImportError:
        print('note: recovered.png skipped (needs matplotlib)', file=sys.stderr)
    print(f"gradient inversion ({args.mode}, batch {args.batch_size}, {summary['rows']} rows): SSIM to what was "
          f"trained on {summary['ssim_vs_input']:.3f}; Max_SSIM to the private images "
          f"{summary['max_ssim_vs_private']:.3f} (|recovered|: {summary['abs_max_ssim_vs_private']:.3f}) "
          f"in {summary['seconds']:.0f} s")
    print(f"wrote {out}")
    return 0
