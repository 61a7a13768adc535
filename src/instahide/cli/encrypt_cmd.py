"""``instahide encrypt``: a dataset -> ``encryption.npy``, ``label.npy`` (+ a key file if asked)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .._io import atomic_open, atomic_write_text
from ..scheme import Key, encrypt
from ._common import (CLIError, Progress, add_encryption_options, load_private, load_public,
                      make_generator, refuse_overwrite, scheme_kwargs)

HELP = "encrypt a dataset: writes encryption.npy (N*T, H, W, C) and label.npy (N*T, classes)"
DESCRIPTION = """\
Encrypt every image of a dataset T times (--epochs), each time under fresh one-time keys, and write
  OUT/encryption.npy  float32 (N*T, H, W, C), channels last, in normalised pixel units; row
                      e*N + i is the encryption of image i in epoch e
  OUT/label.npy       float32 (N*T, classes), the mixed soft labels
  OUT/meta.json       the configuration (no secrets): dataset, scheme, mean/std to undo normalisation
Keys are secrets (whoever holds one can undo the mask): none is written unless --key-out is given,
and it belongs somewhere else than the encryptions.

examples:
  instahide encrypt --out runs/enc                             # digits, inside-dataset k=4
  instahide encrypt --dataset cifar10 --root data/cifar-10-batches-py --out runs/c10 --epochs 2
  instahide encrypt --dataset cifar10 --root data/cifar-10-python.tar.gz --public builtin --k 6 --out runs/x
  instahide encrypt --mode mixup --out runs/mixup              # no mask (for comparison only)
"""


def add_parser(sub) -> None:
    p = sub.add_parser("encrypt", help=HELP, description=DESCRIPTION,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--epochs", type=int, default=1, metavar="T",
                   help="encryptions per image, each epoch with fresh keys (default 1)")
    p.add_argument("--key-out", default=None, metavar="PATH",
                   help="also write the keys (.npz) here; keep it apart from the encryptions")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    add_encryption_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    targets = [out / "encryption.npy", out / "label.npy", out / "meta.json"]
    if args.key_out:
        targets.append(Path(args.key_out))
    refuse_overwrite(targets, args.force)
    if args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {args.epochs}")
    kw = scheme_kwargs(args)
    ds, x, y = load_private(args)
    pool, public = load_public(args, tuple(x.shape[1:]))
    n, (c, h, w) = x.shape[0], x.shape[1:]
    num_classes = ds.num_classes
    if args.key_out and Path(args.key_out).resolve().parent == out.resolve():
        print(f"warning: the key file {args.key_out} sits next to the encryptions; anyone given the "
              "folder can undo the mask", file=sys.stderr)

    seed = kw.pop("seed")
    generator = make_generator(seed, kw["legacy"])
    out.mkdir(parents=True, exist_ok=True)
    keys = []
    progress = Progress(args.epochs, f"encrypting {n} {ds.name} images x {args.epochs} epoch(s)")
    t0 = time.perf_counter()
    try:
        with atomic_open(out / "encryption.npy") as fe, atomic_open(out / "label.npy") as fl:
            enc_mm = _npy_writer(fe, (n * args.epochs, h, w, c))
            lab_mm = _npy_writer(fl, (n * args.epochs, num_classes))
            for epoch in range(args.epochs):
                enc = encrypt(x, y, public=public, num_classes=num_classes, generator=generator,
                              return_key=args.key_out is not None, **kw)
                enc_mm(enc.images.permute(0, 2, 3, 1).numpy().astype(np.float32, copy=False))
                lab_mm(enc.soft_labels.numpy().astype(np.float32, copy=False))
                if enc.key is not None:
                    keys.append(enc.key)
                progress.update(1)
    except ValueError as exc:  # bad data or bounds: the scheme's message says which
        raise CLIError(str(exc)) from exc
    seconds = time.perf_counter() - t0
    meta = {
        "dataset": ds.name, "split": args.split, "root": args.root, "num_images": n,
        "epochs": args.epochs, "rows": n * args.epochs, "row_order": "epoch-major: row = epoch * N + i",
        "image_shape_hwc": [h, w, c], "num_classes": num_classes, "classes": ds.classes,
        "normalized": args.normalize, "mean": list(ds.mean) if args.normalize else None,
        "std": list(ds.std) if args.normalize else None,
        "public": None if pool is None else {"source": args.public, "size": len(pool),
                                             "mean": list(pool.mean), "std": list(pool.std)},
        "scheme": {**kw, "num_private": kw.get("num_private", kw["k"])},
        "keys": {"origin": "legacy-seed" if kw["legacy"] else generator.origin,
                 "research_seed": seed, "written_to": args.key_out},
        "subset": args.subset, "seconds": round(seconds, 3),
        "instahide_version": __import__("instahide").__version__,
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, default=str) + "\n")
    if args.key_out:
        key = Key.cat(keys)
        key.meta.update(epochs=args.epochs, row_order=meta["row_order"])
        key.save(args.key_out)
    print(f"wrote {out / 'encryption.npy'} {(n * args.epochs, h, w, c)}, {out / 'label.npy'} "
          f"{(n * args.epochs, num_classes)} in {seconds:.1f} s"
          + (f"; keys in {args.key_out}" if args.key_out else "; no key written"))
    if seed is not None:
        print(f"note: keys derive from research seed {seed}: anyone who knows it can undo the mask",
              file=sys.stderr)
    return 0


def _npy_writer(fh, shape):
    """Write a float32 .npy header for ``shape`` to ``fh``; return a function appending rows."""
    np.lib.format.write_array_header_1_0(
        fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
             "shape": tuple(int(s) for s in shape)})

    def append(rows: np.ndarray) -> None:
        fh.write(memoryview(np.ascontiguousarray(rows, dtype=np.float32)).cast("B"))

    return append
