"""Options shared by several commands: which data, which scheme, which keys."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch

from .._config import add_arguments, from_args, parse_bool
from ..data import load_arrays, load_dataset, load_public_pool
from ..scheme import KeyGenerator, LegacyGenerator, Uint8Images
from ..scheme.config import SchemeConfig
from ..train.engine import Progress  # noqa: F401  (the one progress line; commands import it from here)


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


def add_scheme_options(p: argparse.ArgumentParser, **defaults) -> None:
    """The :class:`~instahide.scheme.SchemeConfig` options: the same names, defaults and help in every
    command (``defaults`` overrides a command's own defaults by name, e.g. the challenge's public pool)."""
    add_arguments(p, SchemeConfig, title="scheme (the paper's names; defaults are the reference code's)",
                  defaults=defaults)


def add_key_options(p: argparse.ArgumentParser, *, uncentred: bool = True) -> None:
    """``--research-seed`` (and, for commands that encrypt a dataset, ``--allow-uncentred``)."""
    g = p.add_argument_group("keys")
    g.add_argument("--research-seed", type=int, default=None, metavar="N",
                   help="REPRODUCIBLE RESEARCH ONLY: derive every key from N (with --legacy: the 32-bit legacy "
                        "seed), so anyone who knows or guesses N can undo the encryption. Default: OS entropy")
    if uncentred:
        g.add_argument("--allow-uncentred", action="store_true",
                       help="mask non-negative pixels anyway (to measure that the mask then hides nothing)")


def add_pool_options(p: argparse.ArgumentParser) -> None:
    """How the public pool's patches are chosen (the pool is public: these are not key material)."""
    g = p.add_argument_group("public pool patches")
    g.add_argument("--public-min-keypoints", type=int, default=None, metavar="K",
                   help="keep only patches with more than K SIFT keypoints (the paper's filter; slow)")
    g.add_argument("--public-cache", default=None, metavar="NPZ", help="reuse/build the pool in this .npz")


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """``--progress [BOOL]``, read as ``instahide train`` reads it (true/false, yes/no, on/off, 1/0)."""
    def parse(text: str) -> bool:
        try:
            return parse_bool(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = "progress"
    p.add_argument("--progress", type=parse, nargs="?", const=True, default=True, metavar="BOOL",
                   help="progress line on stderr (default: true; the option alone means true)")


LOCAL_DATASETS = ("folder", "arrays")  # the user's own files: their names stay on this machine


def add_class_names_option(p: argparse.ArgumentParser) -> None:
    """``--publish-class-names``: hand out a local dataset's class names (off: opaque ids)."""
    p.add_argument("--publish-class-names", action="store_true",
                   help="write the class names of a --dataset folder or arrays (its sub-folder names) into "
                        "the handed-out meta.json; by default they are replaced by opaque ids class-0, "
                        "class-1, ... (the built-in datasets' public class names are always written)")


def handed_out_name(ds, kind: str) -> str:
    """The dataset's name as handed out: the kind for local data (not the folder's or file's name)."""
    return kind if kind in LOCAL_DATASETS else ds.name


def handed_out_classes(ds, kind: str, publish: bool):
    """The class names as handed out: a local dataset's only with ``publish``, else opaque ids."""
    if ds.classes is None or publish or kind not in LOCAL_DATASETS:
        return ds.classes
    return [f"class-{i}" for i in range(len(ds.classes))]


def refuse_k1(scheme: SchemeConfig) -> None:
    """``--k 1`` mixes nothing: every command that encrypts refuses it (the library allows it)."""
    if scheme.mode != "vanilla" and scheme.k == 1:
        raise CLIError("--k 1 mixes each image with nothing: its encryption is the image itself with random "
                       "pixel signs, which |x| undoes; use --k 2 or more")


def scheme_from_args(args) -> SchemeConfig:
    """The validated :class:`~instahide.scheme.SchemeConfig` of the parsed options (and, for commands
    with keys, ``--research-seed``'s range)."""
    try:
        scheme = from_args(args, SchemeConfig).validate()
    except ValueError as exc:  # the message names fields; on the command line they are options
        raise CLIError(_OPTION_NAMES.sub(lambda m: "--" + (m.group(1) or m.group(2)).replace("_", "-"), str(exc))) from exc
    refuse_k1(scheme)
    seed = getattr(args, "research_seed", None)
    if seed is not None:
        if seed < 0:
            raise CLIError(f"--research-seed must be >= 0, got {seed}")
        if scheme.legacy and seed >= 2 ** 32:
            raise CLIError(f"--research-seed {seed} is out of range for --legacy: legacy seeds are 32-bit, "
                           "in [0, 4294967295]")
    return scheme


_OPTION_NAMES = re.compile(r"\b(num_private|public_size|public_resize|upper|dom|legacy)\b(?=[ :,)]|$)"
                           r"|\b(public)\b$")


def scheme_kwargs(args) -> dict:
    """``encrypt`` keyword arguments of the parsed scheme options (plus ``allow_uncentred``, ``seed``)."""
    scheme = scheme_from_args(args)
    if scheme.mode == "vanilla":
        raise CLIError("--mode vanilla encrypts nothing: pick instahide or mixup")
    return dict(**scheme.encrypt_kwargs(), allow_uncentred=args.allow_uncentred, seed=args.research_seed)


def add_encryption_options(p: argparse.ArgumentParser) -> None:
    """Everything a command that encrypts a dataset takes: data, scheme (with the public pool), keys."""
    add_data_options(p)
    add_scheme_options(p)
    add_pool_options(p)
    add_key_options(p)


def refuse_overwrite(paths, force: bool) -> None:
    existing = [str(t) for t in paths if Path(t).exists()]
    if existing and not force:
        raise CLIError(f"refusing to overwrite {', '.join(existing)} (pass --force)")


def make_generator(seed, legacy: bool):
    """The key generator for ``--research-seed``/``--legacy``: legacy MT streams, a research-seeded
    keystream, or (no seed) a keystream keyed from OS entropy."""
    if legacy:
        return LegacyGenerator(seed)
    return KeyGenerator.from_seed(seed) if seed is not None else KeyGenerator.from_entropy()


_API_ARGUMENT = re.compile(r"\b([a-z][a-z_]*)=(?:True\b|(?=[\s,;)]|$))")


def cli_message(text: str) -> str:
    """A library message in the command line's words: ``pass download=True`` -> ``pass --download``,
    ``pass root=`` -> ``pass --root`` (the library names its arguments, the command its options)."""
    text = _API_ARGUMENT.sub(lambda m: "--" + m.group(1).replace("_", "-"), text)
    return re.sub(r"(--[a-z][a-z-]*) \(\1\)", r"\1", text)  # "--root (--root)" -> "--root"


def load_private(args):
    """The private dataset: ``(ImageDataset, images (N, C, H, W), labels (N,))``. The images are a
    float tensor (normalised unless ``--no-normalize``), or, for a command that streams (``args.stored``,
    set by ``encrypt``), a :class:`~instahide.scheme.Uint8Images` over the dataset's uint8 images (a
    read-only memory map for a uint8 ``.npy``), normalised row by row as they are used."""
    try:
        ds = load_dataset(args.dataset, root=args.root, split=args.split, download=args.download)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise CLIError(cli_message(str(exc))) from exc
    if args.subset is not None:
        if not 1 <= args.subset <= len(ds):
            raise CLIError(f"--subset {args.subset} is out of range: {ds.name} has {len(ds)} images")
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: args.subset]
        ds = ds.subset(order.sort().values.numpy())
    if getattr(args, "stored", False):
        x = Uint8Images(ds.images, ds.mean, ds.std, normalize=args.normalize)
        return ds, x, None if ds.labels is None else torch.from_numpy(ds.labels)
    x, y = ds.to_tensor(normalize=args.normalize)
    return ds, x, y


def load_public(args, shape):
    """The public pool matching the private ``shape`` ``(C, H, W)``: ``(ImageDataset, images)``, or
    ``(None, None)`` without ``--public``. Images as :func:`load_private` gives them (float, or a
    :class:`~instahide.scheme.Uint8Images` with ``args.stored``). With ``args.stored``, a uint8 ``.npy``
    of ready patches of exactly ``shape`` (``(M, H, W, C)`` or ``(M, C, H, W)``, as ``instahide``'s pool
    builder writes them) is memory-mapped and used whole, every patch a candidate partner
    (``--public-size`` applies where patches are cut from photographs)."""
    if args.public is None:
        return None, None
    c, h, w = shape
    if getattr(args, "stored", False):
        pool = _patch_file(args.public, shape)
        if pool is not None:
            return pool, Uint8Images(pool.images, pool.mean, pool.std, normalize=args.normalize)
    try:
        pool = load_public_pool(args.public, n=args.public_size, size=(h, w), channels=c,
                                min_keypoints=args.public_min_keypoints, resize=args.public_resize,
                                cache=args.public_cache)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        raise CLIError(f"public pool: {exc}") from exc
    if getattr(args, "stored", False):
        return pool, Uint8Images(pool.images, pool.mean, pool.std, normalize=args.normalize)
    px, _ = pool.to_tensor(normalize=args.normalize)
    return pool, px


def _patch_file(source: str, shape):
    """A uint8 ``.npy`` pool whose images are ``shape`` ``(C, H, W)``, memory-mapped (an ImageDataset,
    ImageNet mean/std unless its ``.json`` sidecar has others), or None for any other source."""
    path = Path(source).expanduser()
    if path.suffix != ".npy" or not path.is_file():
        return None
    try:
        pool = load_arrays(path, labels_key=None)
    except ValueError as exc:
        raise CLIError(f"public pool: {exc}") from exc
    if not isinstance(pool.images, np.memmap) or pool.shape != tuple(shape):
        return None  # other sizes or dtypes: patches are cut from it as from photographs
    return pool


def report_run(what: str, final: dict, unit: str, cfg) -> None:
    """The closing lines of a training command: what ran (from which epoch or round), the clean test
    accuracy, where the results are, and the research-seed warning."""
    done, now, start = final[f"{unit}s_run"], final[f"{unit}s_this_run"], final[f"resumed_from_{unit}"]
    acc = final["final_test_acc"]
    if start and not now:
        ran = f"all {done} {unit}s were already run, nothing to do (a larger --{unit}s extends the run)"
    elif start:
        ran = f"resumed after {unit} {start}, ran {unit}s {start + 1}-{done} ({now} this run)"
    else:
        ran = f"{now} {unit}s"
    if final.get(f"extended_from_{unit}s"):
        ran += f"; extended from {final[f'extended_from_{unit}s']} to {done} {unit}s"
    print(f"{what}: {ran}; clean test accuracy {'n/a' if acc is None else f'{acc:.4f}'}; "
          f"results in {cfg.out}/final.json")
    scheme = getattr(cfg, "scheme", None)
    if cfg.research_seed is not None and scheme is not None and scheme.mode == "instahide":
        print(f"note: keys derive from research seed {cfg.research_seed}: anyone who knows it can undo the mask")
