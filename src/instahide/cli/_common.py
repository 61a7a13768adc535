"""Options shared by several commands: which data, which scheme, which keys."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


class CLIError(Exception):
    """A user error: printed as ``instahide: error: ...`` with exit code 2, no traceback."""


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (default: scikit-learn's digits, no download)")
    g.add_argument("--dataset", default="digits", metavar="NAME",
                   help="digits (default), cifar10, cifar100, mnist, fashion-mnist, folder, arrays; "
                        "`instahide datasets` lists them")
    g.add_argument("--root", default=None, metavar="PATH",
                   help="where the dataset is (a folder or archive); not needed for digits")
    g.add_argument("--split", default="train", choices=["train", "test"], help="which split (default train)")
    g.add_argument("--download", action="store_true",
                   help="download the official files (checksum-verified) if they are not under --root")
    g.add_argument("--subset", type=int, default=None, metavar="N",
                   help="use N images drawn at random (fixed order, seed 0) instead of the whole split")
    g.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="keep pixels in [0, 1] instead of normalising with the dataset's mean/std "
                        "(InstaHide then refuses unless --allow-uncentred: the mask hides nothing there)")


def add_public_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("public pool (cross-dataset InstaHide)")
    g.add_argument("--public", default=None, metavar="SOURCE",
                   help="enable cross-dataset mode with this pool: 'builtin' (photographs shipped with "
                        "scikit-image/scikit-learn), a folder of photographs, or a .npy/.npz array")
    g.add_argument("--public-size", type=int, default=4000, metavar="M",
                   help="number of public patches to cut (default 4000)")
    g.add_argument("--public-resize", type=int, default=None, metavar="S",
                   help="resize photographs so the short side is S before cropping (the paper: 40 for 32x32)")
    g.add_argument("--public-min-keypoints", type=int, default=None, metavar="K",
                   help="keep only patches with more than K SIFT keypoints (the paper's filter; slow)")
    g.add_argument("--public-cache", default=None, metavar="NPZ", help="reuse/build the pool in this .npz")


def add_scheme_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scheme (the paper's names; defaults are the reference code's)")
    g.add_argument("--k", type=int, default=None,
                   help="images mixed into one encryption (default 4; 6 with --public)")
    g.add_argument("--upper", type=float, default=0.65, help="c1: the largest coefficient (default 0.65)")
    g.add_argument("--dom", type=float, default=0.3,
                   help="c2: smallest sum of the private coefficients, cross-dataset only (default 0.3)")
    g.add_argument("--num-private", type=int, default=None,
                   help="private slots in cross-dataset mode (default 2)")
    g.add_argument("--mode", default="instahide", choices=["instahide", "mixup"],
                   help="instahide (mix and mask, default) or mixup (mix only: no mask)")
    g.add_argument("--legacy", action="store_true",
                   help="reproduce the reference code's keys and defects (public window, self-mixing, "
                        "Mersenne-Twister seeded with a 32-bit integer); for replaying attacks only")
    g.add_argument("--research-seed", type=int, default=None, metavar="N",
                   help="REPRODUCIBLE RESEARCH ONLY: derive every key from N, so anyone who knows or "
                        "guesses N can undo the encryption. Default: 256 bits of OS entropy")
    g.add_argument("--allow-uncentred", action="store_true",
                   help="mask non-negative pixels anyway (to measure that the mask then hides nothing)")


def scheme_kwargs(args) -> dict:
    cross = args.public is not None
    k = args.k if args.k is not None else (6 if cross else 4)
    kw = dict(k=k, upper=args.upper, mode=args.mode, legacy=args.legacy,
              allow_uncentred=args.allow_uncentred, seed=args.research_seed)
    if cross:
        kw.update(dom=args.dom, num_private=args.num_private if args.num_private is not None else 2)
    elif args.num_private is not None:
        raise CLIError("--num-private needs a public pool (--public SOURCE)")
    return kw


def add_encryption_options(p: argparse.ArgumentParser) -> None:
    """Everything a command that encrypts a dataset takes: data, public pool, scheme."""
    add_data_options(p)
    add_public_options(p)
    add_scheme_options(p)


def refuse_overwrite(paths, force: bool) -> None:
    existing = [str(t) for t in paths if Path(t).exists()]
    if existing and not force:
        raise CLIError(f"refusing to overwrite {', '.join(existing)} (pass --force)")


def make_generator(seed, legacy: bool):
    """The key generator for ``--research-seed``/``--legacy``: legacy MT streams, a research-seeded
    keystream, or (no seed) a keystream keyed from OS entropy."""
    from ..scheme import KeyGenerator, LegacyGenerator

    if legacy:
        return LegacyGenerator(seed)
    return KeyGenerator.from_seed(seed) if seed is not None else KeyGenerator.from_entropy()


def load_private(args):
    """The private dataset: ``(ImageDataset, float images (N, C, H, W), labels (N,))``."""
    from ..data import load_dataset

    try:
        ds = load_dataset(args.dataset, root=args.root, split=args.split, download=args.download)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise CLIError(str(exc)) from exc
    if args.subset is not None:
        if not 1 <= args.subset <= len(ds):
            raise CLIError(f"--subset {args.subset} is out of range: {ds.name} has {len(ds)} images")
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: args.subset]
        ds = ds.subset(order.sort().values.numpy())
    x, y = ds.to_tensor(normalize=args.normalize)
    return ds, x, y


def load_public(args, shape):
    """The public pool as float images matching the private ``shape`` ``(C, H, W)``, or None."""
    if args.public is None:
        return None, None
    from ..data import load_public_pool

    c, h, w = shape
    try:
        pool = load_public_pool(args.public, n=args.public_size, size=(h, w), channels=c,
                                min_keypoints=args.public_min_keypoints, resize=args.public_resize,
                                cache=args.public_cache)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        raise CLIError(f"public pool: {exc}") from exc
    px, _ = pool.to_tensor(normalize=args.normalize)
    return pool, px


class Progress:
    """A small progress line on stderr (``\\r`` updates on a terminal, a line per step otherwise)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, n: int = 1, info: str = "") -> None:
        self.done += n
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        line = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"({rate:.1f}/s) {info}")
        if self.tty:
            print("\r" + line, end="" if self.done < self.total else "\n", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)
