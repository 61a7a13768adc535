"""``instahide encrypt``: a dataset -> ``encryption.npy``, ``label.npy`` (+ a key file if asked)."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__
from .._io import atomic_open, check_file_destination, output_folder, sha256_file
from ..distributed.encrypted import ENCRYPTION, LABEL, META, write_meta
from ..scheme import Key, encrypt
from ._common import (CLIError, Progress, add_encryption_options, load_private, load_public,
                      make_generator, refuse_overwrite, scheme_kwargs)

HELP = "encrypt a dataset: writes encryption.npy (N*T, H, W, C) and label.npy (N*T, classes)"
DESCRIPTION = """\
Encrypt every image of a dataset T times (--epochs), each time under fresh one-time keys, and write
  OUT/encryption.npy  float32 (N*T, H, W, C), channels last, in normalised pixel units; row
                      e*N + i is the encryption of image i in epoch e
  OUT/label.npy       float32 (N*T, classes), the mixed soft labels; not written for unlabelled
                      data (a flat image folder, arrays without labels): meta.json says labelled: false
  OUT/meta.json       the configuration (no secrets): dataset, scheme, mean/std to undo normalisation,
                      and the size and SHA-256 of each array (readers refuse a folder that differs)
The files are written into a temporary folder that replaces OUT in one step when all are complete:
an interrupted run leaves the previous OUT as it was. OUT must be new, empty, or (with --force) a
folder this command wrote.
Keys are secrets (whoever holds one can undo the mask): none is written unless --key-out is given;
the key file is readable by you only (mode 0600) and belongs somewhere else than the encryptions.

examples:
  instahide encrypt --out runs/enc                             # digits, inside-dataset k=4
  instahide encrypt --dataset cifar10 --root data/cifar-10-batches-py --out runs/c10 --epochs 2
  instahide encrypt --dataset cifar10 --root data/cifar-10-python.tar.gz --public builtin --k 6 --out runs/x
  instahide encrypt --mode mixup --out runs/mixup              # no mask (for comparison only)
"""
OUTPUTS = (ENCRYPTION, LABEL, META)


def add_parser(sub) -> None:
    p = sub.add_parser("encrypt", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--epochs", type=int, default=1, metavar="T",
                   help="encryptions per image, each epoch with fresh keys (default 1)")
    p.add_argument("--key-out", default=None, metavar="PATH",
                   help="also write the keys (.npz) here, readable by you only (mode 0600); keep it apart "
                        "from the encryptions")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier output folder (and key file) of this command")
    add_encryption_options(p)
    p.set_defaults(func=run)


def load_images(args):
    """:func:`load_private`, refusing image shapes the scheme cannot encrypt (a zero C, H or W)."""
    ds, x, y = load_private(args)
    if x.ndim != 4 or 0 in x.shape[1:]:
        raise CLIError(f"{ds.name} images have shape (C, H, W) = {tuple(x.shape[1:])}: every image needs "
                       "at least one channel, row and column")
    return ds, x, y


def run(args) -> int:
    out = Path(args.out)
    key_out = Path(args.key_out) if args.key_out else None
    if args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {args.epochs}")
    key_inside = False
    if key_out is not None:  # every destination is checked before anything is written
        key_inside = key_out.resolve().parent == out.resolve()
        if key_inside and key_out.name in OUTPUTS:
            raise CLIError(f"--key-out {key_out} would replace one of the encryption files")
        if not key_inside and out.resolve() in key_out.resolve().parents:
            raise CLIError(f"--key-out {key_out} lies in a subfolder of --out {out}, which is replaced as a whole")
        check_file_destination(key_out)
    refuse_overwrite([out / name for name in OUTPUTS] + ([key_out] if key_out else []), args.force)
    kw = scheme_kwargs(args)
    owned = OUTPUTS + ((key_out.name,) if key_inside else ())
    with output_folder(out, args.force, owned=owned) as tmp:
        done = _encrypt_into(tmp, args, kw, key_out if not key_inside else tmp / key_out.name)
    print(done)
    if kw["seed"] is not None:
        print(f"note: keys derive from research seed {kw['seed']}: anyone who knows it can undo the mask",
              file=sys.stderr)
    return 0


def _encrypt_into(tmp: Path, args, kw: dict, key_path: Path | None) -> str:
    """Encrypt the dataset into the (temporary) folder ``tmp`` and the key into ``key_path``."""
    out = Path(args.out)
    ds, x, y = load_images(args)
    pool, public = load_public(args, tuple(x.shape[1:]))
    n, (c, h, w) = x.shape[0], x.shape[1:]
    labelled = y is not None  # labelled datasets name their classes
    num_classes = ds.num_classes if labelled else None
    if key_path is not None and key_path.parent == tmp:
        print(f"warning: the key file {args.key_out} sits next to the encryptions; anyone given the "
              "folder can undo the mask", file=sys.stderr)
    kw = dict(kw)
    seed = kw.pop("seed")
    generator = make_generator(seed, kw["legacy"])
    keys = []
    # one progress line per chunk of ~1/20 of an epoch (images/s and ETA), fed by encrypt's progress
    progress = Progress(n * args.epochs, f"encrypting {n} {ds.name} images x {args.epochs} epoch(s)",
                        unit=" img", every=1)
    step, shown = -(-n // 20), [0]

    def report(done: int) -> None:
        if done > shown[0] and (done - shown[0] >= step or done % n == 0):
            progress.update(done - shown[0])
            shown[0] = done

    t0 = time.perf_counter()
    try:
        with atomic_open(tmp / ENCRYPTION) as fe, \
                atomic_open(tmp / LABEL) if labelled else contextlib.nullcontext() as fl:
            enc_rows = _npy_writer(fe, (n * args.epochs, h, w, c))
            lab_rows = _npy_writer(fl, (n * args.epochs, num_classes)) if labelled else None
            for epoch in range(args.epochs):
                enc = encrypt(x, y, public=public, num_classes=num_classes, generator=generator,
                              return_key=key_path is not None, progress=lambda rows, e=epoch: report(e * n + rows),
                              **kw)
                enc_rows(enc.images.permute(0, 2, 3, 1).numpy())
                if labelled:
                    lab_rows(enc.soft_labels.numpy())
                if enc.key is not None:
                    keys.append(enc.key)
    except (ValueError, TypeError) as exc:  # bad data or bounds: the scheme's message says which
        raise CLIError(str(exc)) from exc
    seconds = time.perf_counter() - t0
    rows = n * args.epochs
    meta = {
        "dataset": ds.name, "split": args.split, "num_images": n,
        "epochs": args.epochs, "rows": rows, "row_order": "epoch-major: row = epoch * N + i",
        "image_shape_hwc": [h, w, c], "labelled": labelled, "num_classes": num_classes, "classes": ds.classes,
        "normalized": args.normalize, "mean": list(ds.mean) if args.normalize else None,
        "std": list(ds.std) if args.normalize else None,
        "public": None if pool is None else {"source": args.public if args.public == "builtin" else "local files",
                                             "size": len(pool),
                                             "mean": list(pool.mean), "std": list(pool.std)},
        "scheme": {**kw, "num_private": kw.get("num_private", kw["k"])},
        "keys": {"origin": "legacy-seed" if kw["legacy"] else generator.origin,
                 "research_seed": seed, "written": key_path is not None},
        "subset": args.subset, "seconds": round(seconds, 3), "instahide_version": __version__,
    }
    if key_path is not None:
        key = Key.cat(keys)
        key.meta.update(epochs=args.epochs, row_order=meta["row_order"])
        mask = os.umask(0o077)  # the key is secret: 0600 (and any folder made for it 0700)
        try:
            key.save(key_path)
        finally:
            os.umask(mask)
        meta["keys"]["sha256"] = sha256_file(key_path)  # which key file belongs to these encryptions
    write_meta(tmp, meta)  # last: the sizes and checksums of the arrays above
    return (f"wrote {out / ENCRYPTION} {(rows, h, w, c)}, "
            + (f"{out / LABEL} {(rows, num_classes)}" if labelled else "no label.npy (unlabelled images)")
            + f" in {seconds:.1f} s" + (f"; keys in {args.key_out}" if key_path is not None else "; no key written"))


def _npy_writer(fh, shape):
    """Write a float32 .npy header for ``shape`` to ``fh``; return a function appending rows."""
    np.lib.format.write_array_header_1_0(
        fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
             "shape": tuple(int(s) for s in shape)})

    def append(rows: np.ndarray) -> None:
        fh.write(memoryview(np.ascontiguousarray(rows, dtype=np.float32)).cast("B"))

    return append
