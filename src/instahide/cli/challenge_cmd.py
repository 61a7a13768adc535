"""``instahide challenge make|score``: generate an InstaHide challenge, and score a decryption of it."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from ..challenge import (default_truth_path, load_challenge, load_truth, make_challenge, read_npy, score,
                         write_challenge)
from ..data import load_dataset, load_public_pool
from ..report import write_score_report
from ._common import (CLIError, add_class_names_option, add_key_options, add_scheme_options, cli_message,
                      handed_out_classes, handed_out_name, refuse_overwrite, scheme_from_args)

HELP = "generate an InstaHide challenge (make) or score a decryption of one (score)"
MAKE_DESCRIPTION = """\
Generate an InstaHide challenge in the published format (docs/challenge.md): the first --n-private
images of the --split (default test) split, each encrypted --T times (one epoch = one encryption of
each image, fresh keys every time), cross-dataset InstaHide with --k 6 = --num-private 2 private +
4 public slots, public partners drawn from a pool of --public-size photograph patches. Writes
  OUT/encryption.npy  float32 (n*T, H, W, C), channels last; row t*n + i encrypts image i in epoch t
  OUT/label.npy       float32 (n*T, classes): lambda_1 e_y1 + lambda_2 e_y2
  OUT/meta.json       the public parameters (no secrets, no local paths; a folder's or array file's
                      class names only with --publish-class-names, opaque ids otherwise)
and the ground truth (private images, keys, seeds) to --truth, by default <OUT>-truth.npz NEXT TO
OUT, never inside it, readable by you only: OUT is what you hand to the attacker. OUT is replaced
as a whole: an interrupted run leaves the old challenge or the new one.

Pixels are --scaling pm1 ([-1, 1], what the published attacks assume) by default; normalize =
the training normalisation (CIFAR-10 / ImageNet mean and std); unit = [0, 1], on which the mask
hides nothing (said in meta.json).

examples:
  instahide challenge make --dataset cifar10 --root data/cifar-10-batches-py --out runs/challenge
  instahide challenge make --dataset digits --n-private 50 --T 10 --out runs/tiny     # no download
  instahide challenge make --dataset cifar10 --root data/cifar-10-batches-py --legacy --out runs/legacy
"""
SCORE_DESCRIPTION = """\
Score a decryption (a .npy of the encryption's shape (N, H, W, C), one recovered image per row, in
the encryption's pixel units) against the challenge's ground truth: Max_SSIM = mean over rows of
max(SSIM(dec, p1), SSIM(dec, p2)), p1 and p2 the private images in slots 1 and 2 (the ranking metric);
Mean_SSIM, Best_L2, Mean_L2 and the SSIM conventions (scikit-image's): docs/challenge.md.

examples:
  instahide challenge score --challenge runs/challenge --decryption dec.npy --out runs/score
  instahide challenge score --truth runs/challenge-truth.npz --decryption dec.npy
"""


def add_parser(sub) -> None:
    """Register ``instahide challenge`` (with ``make`` and ``score``) on the subparsers ``sub``."""
    p = sub.add_parser("challenge", help=HELP, description=HELP)
    csub = p.add_subparsers(dest="challenge_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))
    _add_make(csub)
    _add_score(csub)


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _add_make(csub) -> None:
    p = csub.add_parser("make", help="generate a challenge: encryption.npy, label.npy, meta.json (+ truth apart)",
                        description=MAKE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="challenge folder (what attackers get)")
    p.add_argument("--truth", default=None, metavar="FILE",
                   help="ground-truth file (default: <OUT>-truth.npz next to OUT; never inside OUT)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    g = p.add_argument_group("private images")
    g.add_argument("--dataset", default="cifar10", metavar="NAME",
                   help="cifar10 (default; needs --root), digits (built in, no download), cifar100, mnist, ...")
    g.add_argument("--root", default=None, metavar="PATH",
                   help="where the dataset is, e.g. the cifar-10-batches-py folder or the .tar.gz "
                        "(nothing is downloaded); not needed for digits")
    g.add_argument("--split", default="test", choices=["train", "test"],
                   help="split the private images come from (default test)")
    g.add_argument("--n-private", type=int, default=100, metavar="n",
                   help="number of private images: the FIRST n of the split (default 100)")
    add_scheme_options(p, k=6, public="builtin")  # the published challenge: cross-dataset, k = 6 (2 + 4)
    g = p.add_argument_group("the challenge")
    g.add_argument("--T", type=int, default=50, help="encryptions per private image, one per epoch (default 50)")
    g.add_argument("--scaling", default="pm1", choices=["pm1", "normalize", "unit"],
                   help="pixel units: pm1 = [-1, 1] (default), normalize = mean/std, unit = [0, 1] "
                        "(mask hides nothing)")
    g.add_argument("--public-seed", type=int, default=0, metavar="S",
                   help="seed of the patch positions (the pool is public; default 0)")
    g.add_argument("--public-min-keypoints", type=int, default=None, metavar="K",
                   help="keep only patches with more than K SIFT keypoints (slow)")
    add_key_options(p, uncentred=False)
    add_class_names_option(p)
    p.set_defaults(func=run_make)


def _add_score(csub) -> None:
    p = csub.add_parser("score", help="score a decryption: Max_SSIM, Mean_SSIM, Best_L2, Mean_L2",
                        description=SCORE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--challenge", default=None, metavar="DIR",
                   help="challenge folder; its truth is read from <DIR>-truth.npz unless --truth is given, "
                        "and its meta.json and encryption.npy are checked against the truth")
    p.add_argument("--truth", default=None, metavar="FILE", help="ground-truth file")
    p.add_argument("--decryption", required=True, metavar="FILE", help="decryption.npy (N, H, W, C)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write rows.csv, scores.json and best_worst.png here (default: print only)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.set_defaults(func=run_score)


# -- make ----------------------------------------------------------------------------------------------
def run_make(args) -> int:
    out = Path(args.out)
    truth_path = Path(args.truth) if args.truth else default_truth_path(out)
    # every argument first (scheme, --research-seed, sizes), then the destinations
    scheme = scheme_from_args(args)
    if scheme.mode == "vanilla":
        raise CLIError("--mode vanilla encrypts nothing: pick instahide or mixup")
    if args.dataset != "digits" and args.root is None:
        raise CLIError(f"--dataset {args.dataset} needs --root PATH (e.g. the cifar-10-batches-py folder or "
                       "cifar-10-python.tar.gz; nothing is downloaded), or use --dataset digits (built in)")
    for flag, value in (("--n-private", args.n_private), ("--T", args.T)):
        if value < 1:
            raise CLIError(f"{flag} must be >= 1, got {value}")
    refuse_overwrite([out / "encryption.npy", out / "label.npy", out / "meta.json", truth_path], args.force)
    try:
        ds = load_dataset(args.dataset, root=args.root, split=args.split)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise CLIError(cli_message(str(exc))) from exc
    if ds.labels is None:
        raise CLIError(f"{ds.name} has no labels; the challenge needs labelled private images")
    if args.n_private > len(ds):
        raise CLIError(f"--n-private {args.n_private} is more than the {len(ds)} images of {ds.name} ({args.split})")
    ds = ds.subset(slice(0, args.n_private))
    c, h, w = ds.shape
    pool = None
    public_info = None
    if scheme.cross:
        options = dict(min_keypoints=args.public_min_keypoints, seed=args.public_seed, resize=scheme.public_resize)
        try:
            pool = load_public_pool(scheme.public, n=scheme.public_size, size=(h, w), channels=c, **options)
        except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
            raise CLIError(f"public pool: {exc}") from exc
        public_info = {"source": pool.meta.get("source"), "size": len(pool), "seed": args.public_seed,
                       "resize": scheme.public_resize, "min_keypoints": args.public_min_keypoints}
    info = {
        "private_source": {"dataset": handed_out_name(ds, args.dataset), "split": args.split,
                           "selection": f"first {args.n_private}", "root": args.root,
                           "classes": handed_out_classes(ds, args.dataset, args.publish_class_names)},
        "public_source": public_info,
        "instahide_version": __version__,
    }
    t0 = time.perf_counter()
    try:
        enc, lab, truth = make_challenge(
            ds.images, ds.labels, None if pool is None else pool.images, T=args.T, **scheme.encrypt_kwargs(),
            scaling=args.scaling, research_seed=args.research_seed, num_classes=ds.num_classes,
            mean=ds.mean if args.scaling == "normalize" else None,
            std=ds.std if args.scaling == "normalize" else None, info=info)
        paths = write_challenge(out, enc, lab, truth, truth_path=truth_path, force=args.force)
    except (ValueError, TypeError, OSError) as exc:  # OSError: an unwritable or invalid --out/--truth
        raise CLIError(str(exc)) from exc
    seconds = time.perf_counter() - t0
    print(f"wrote {paths['encryption']} {(len(enc), h, w, c)}, {paths['label']} {lab.shape}, {paths['meta']} "
          f"in {seconds:.1f} s")
    print(f"ground truth (keep it from attackers): {paths['truth']}")
    if args.scaling == "unit":
        print("warning: --scaling unit: pixels are non-negative, so the mask hides nothing", file=sys.stderr)
    if args.research_seed is not None:
        print(f"note: keys derive from research seed {args.research_seed}: anyone who knows it can undo the "
              "mask", file=sys.stderr)
    return 0


# -- score ---------------------------------------------------------------------------------------------
def _decryption(path: str, truth) -> np.ndarray:
    """``decryption.npy`` (N, H, W, C) as the (N, C, H, W) array :func:`score` takes."""
    try:
        dec = read_npy(path, "decryption")
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    n, c, h, w = truth.encryption_shape
    if dec.ndim != 4 or dec.shape[1:] != (h, w, c):
        raise CLIError(f"wrong decryption shape {dec.shape} in {path}: it must equal the encryption's "
                       f"{(n, h, w, c)} (N, H, W, C), channels last")
    return dec.transpose(0, 3, 1, 2)


def run_score(args) -> int:
    if args.challenge is None and args.truth is None:
        raise CLIError("give --challenge DIR (truth read from <DIR>-truth.npz) or --truth FILE")
    truth_path = Path(args.truth) if args.truth else default_truth_path(args.challenge)
    if args.out:
        out = Path(args.out)
        refuse_overwrite([out / "rows.csv", out / "scores.json", out / "best_worst.png"], args.force)
    try:
        truth = load_truth(truth_path)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if args.challenge is not None:
        _check_challenge_matches(Path(args.challenge), truth, truth_path)
    dec = _decryption(args.decryption, truth)
    try:
        result = score(dec, truth)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from exc
    summary = result.summary()
    print(f"Max_SSIM {result.max_ssim:.4f}  Mean_SSIM {result.mean_ssim:.4f}  Best_L2 {result.best_l2:.4f}  "
          f"Mean_L2 {result.mean_l2:.4f}  (rows with max SSIM > {result.threshold}: {result.share_above:.1%}; "
          f"{summary['private_images_recovered_above_threshold']}/{truth.n} private images recovered above it)")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.out:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            paths = write_score_report(result, args.out, dec, truth)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _check_challenge_matches(folder: Path, truth, truth_path: Path) -> None:
    try:
        enc, _, meta = load_challenge(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    a, b = meta.get("challenge_id"), truth.params.get("challenge_id")
    if a is not None and b is not None and a != b:
        raise CLIError(f"mismatched ground truth: {truth_path} belongs to challenge {b}, but {folder} is "
                       f"challenge {a}")
    if enc.shape != truth.encryption_shape:
        raise CLIError(f"mismatched ground truth: {folder} holds {len(enc)} encryptions of {enc.shape[1:]} "
                       f"(C, H, W) but {truth_path} describes {truth.encryption_shape}")
