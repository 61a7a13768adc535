"""``instahide show``: a PNG grid of originals, Mixup, encryptions and |encryption|."""
from __future__ import annotations

import argparse
from pathlib import Path

from .._io import check_file_destination
from ..report.figures import encryption_grid, to_display
from ..scheme import apply_key, encrypt
from ._common import (CLIError, add_encryption_options, load_public, make_generator, refuse_overwrite,
                      scheme_kwargs)
from .encrypt_cmd import load_images

HELP = "draw originals, their Mixup, their InstaHide encryption and |encryption| as a PNG grid"
DESCRIPTION = """\
Encrypt a few images and draw, one row each: the originals, the Mixup of the same key (no mask), the
InstaHide encryption (sign-masked), and its absolute value. Encryptions are shown stretched to each
image's own range. The last row is what every published attack starts from: the mask hides the signs,
not the magnitudes.

examples:
  instahide show --out grid.png
  instahide show --dataset cifar10 --root data/cifar-10-batches-py --public builtin --out grid.png
"""


def add_parser(sub) -> None:
    p = sub.add_parser("show", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="instahide-show.png", metavar="PNG", help="output picture")
    p.add_argument("--n", type=int, default=8, help="images to show (default 8)")
    p.add_argument("--force", action="store_true", help="overwrite an existing picture")
    add_encryption_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    check_file_destination(out)
    refuse_overwrite([out], args.force)
    if args.n < 1:
        raise CLIError("--n must be >= 1")
    kw = scheme_kwargs(args)
    kw["mode"] = "instahide"
    ds, x, _ = load_images(args)
    _, public = load_public(args, tuple(x.shape[1:]))
    paths = show(x, public, ds.mean if args.normalize else None, ds.std if args.normalize else None,
                 args.n, out, title=f"{ds.name}: InstaHide k={kw['k']}"
                 + (f", {kw['num_private']} private + {kw['k'] - kw['num_private']} public" if public is not None else ""),
                 **kw)
    print(f"wrote {paths}")
    return 0


def show(x, public, mean, std, n, out, title=None, **kw):
    """Encrypt all of ``x`` (partners from the whole set) and draw the first ``n``."""
    seed = kw.pop("seed")
    gen = make_generator(seed, kw["legacy"])
    try:
        enc = encrypt(x, public=public, generator=gen, return_key=True, **kw)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    key = enc.key[:n]
    mixed = apply_key(x, key.unmasked(), public=public)
    e = enc.images[:n]
    rows = [
        ("original", to_display(x[:n], mean, std)),
        ("Mixup\n(no mask)", to_display(mixed, mean, std)),
        ("InstaHide\nencryption", to_display(e, stretch=True)),
        ("|encryption|", to_display(e.abs(), stretch=True)),
    ]
    encryption_grid(rows, out, title=title)
    return out
