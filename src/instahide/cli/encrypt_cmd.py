"""``instahide encrypt``: a dataset -> ``encryption.npy``, ``label.npy`` (+ a key file if asked)."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import __version__
from .._io import atomic_open, atomic_write_text, check_file_destination, output_set, require_free_space, sha256_file
from ..distributed.encrypted import ENCRYPTION, LABEL, MANIFEST, MANIFEST_FORMAT, META, SHARD_PREFIX, write_meta
from ..scheme import Key, encrypt
from ..train.ddp import all_agree, cleanup, init_distributed
from ._common import (CLIError, Progress, add_class_names_option, add_encryption_options, add_progress_option,
                      handed_out_classes, handed_out_name, load_private, load_public, make_generator,
                      refuse_overwrite, scheme_kwargs)

HELP = "encrypt a dataset: writes encryption.npy (N*T, H, W, C) and label.npy (N*T, classes)"
DESCRIPTION = """\
Encrypt every image of a dataset T times (--epochs), each time under fresh one-time keys, and write
  OUT/encryption.npy  float32 (N*T, H, W, C), channels last, in normalised pixel units; row
                      e*N + i is the encryption of image i in epoch e
  OUT/label.npy       float32 (N*T, classes), the mixed soft labels; not written for unlabelled
                      data (a flat image folder, arrays without labels): meta.json says labelled: false
  OUT/meta.json       the configuration (no secrets: no research seed, nothing computed from a key, no
                      local path; a folder's or array file's class names only with
                      --publish-class-names), mean/std to undo normalisation, and the size and
                      SHA-256 of each array (readers refuse a folder that differs)
OUT is what you hand to trainers. The files are written into a temporary folder that replaces OUT in
one step when all are complete: an interrupted run (a kill, SIGTERM, an error) leaves the previous
OUT as it was. OUT must be new, empty, or (with --force) a folder this command wrote; of two runs to
the same OUT the one that finishes second fails instead of replacing the other's work.
Keys are secrets (whoever holds one can undo the mask): none is written unless --key-out is given,
outside OUT; the key file is readable by you only (mode 0600) and also records the research seed,
if any. The key file and OUT are replaced together (--force): the old pair or the new pair, never
one of each (a kill between the two renames is completed by the next run writing beside OUT);
meta.json's keys.key_id (random) names the key file that belongs to it.

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
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (what you hand out)")
    p.add_argument("--epochs", type=int, default=1, metavar="T",
                   help="encryptions per image, each epoch with fresh keys (default 1)")
    p.add_argument("--key-out", default=None, metavar="PATH",
                   help="also write the keys (.npz) here, readable by you only (mode 0600); outside --out")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier output folder (and key file) of this command")
    add_progress_option(p)
    add_encryption_options(p)
    add_class_names_option(p)
    p.set_defaults(func=run, stored=True)  # images stay uint8 (memory-mapped where they can), normalised per chunk


def load_images(args):
    """:func:`load_private`, refusing image shapes the scheme cannot encrypt (a zero C, H or W)."""
    ds, x, y = load_private(args)
    if len(x.shape) != 4 or 0 in x.shape[1:]:
        raise CLIError(f"{ds.name} images have shape (C, H, W) = {tuple(x.shape[1:])}: every image needs "
                       "at least one channel, row and column")
    return ds, x, y


def run(args) -> int:
    out = Path(args.out)
    key_out = Path(args.key_out) if args.key_out else None
    # every argument first, then every destination, before anything is read or written
    if args.epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {args.epochs}")
    kw = scheme_kwargs(args)
    if key_out is not None:
        if key_out.resolve() == out.resolve() or out.resolve() in key_out.resolve().parents:
            raise CLIError(f"--key-out {key_out} lies inside --out {out}, which is handed out: anyone given the "
                           "folder could undo the mask; put the key elsewhere")
        try:
            check_file_destination(key_out)
        except OSError as exc:
            raise CLIError(f"--key-out: {exc}") from exc
    if world_size() > 1:
        return _run_sharded(args, kw, out, key_out)
    refuse_overwrite([out / name for name in OUTPUTS] + ([key_out] if key_out else []), args.force)
    with output_set(out, args.force, owned=OUTPUTS, secret=key_out) as (tmp, key_tmp):
        done = _encrypt_into(tmp, args, kw, key_tmp)
    print(done)
    if kw["seed"] is not None:
        print(f"note: keys derive from research seed {kw['seed']}: anyone who knows it can undo the mask",
              file=sys.stderr)
    return 0


def _sizes(rows: int, shape, num_classes, key_rows: int, k: int, masked: bool) -> tuple[int, int]:
    """Bytes of the arrays (encryption and labels) and of the key file a run writes (upper bounds)."""
    h, w, c = shape
    arrays = 256 + rows * h * w * c * 4 + (256 + rows * num_classes * 4 if num_classes else 0)
    key = 4096 + key_rows * (k * (4 + 8) + (-(-(c * h * w) // 8) if masked else 0))
    return arrays, key


def _encrypt_into(tmp: Path, args, kw: dict, key_path: Path | None, shard=None, out: Path | None = None) -> str:
    """Encrypt the dataset into the (temporary) folder ``tmp`` and the key into ``key_path``; with
    ``shard = (rank, world_size)`` only that rank's contiguous share of the images (their partners
    still drawn from the whole set), the folder's ``meta.json`` saying which."""
    out = Path(args.out) if out is None else out
    ds, x, y = load_images(args)
    pool, public = load_public(args, tuple(x.shape[1:]))
    total, (c, h, w) = x.shape[0], x.shape[1:]
    first, stop = (0, total) if shard is None else shard_rows(total, *shard)
    n = stop - first
    if n < 1:
        raise CLIError(f"{shard[1]} ranks for {total} images: rank {shard[0]} has none; use fewer ranks")
    labelled = y is not None  # labelled datasets name their classes
    num_classes = ds.num_classes if labelled else None
    rows = n * args.epochs
    arrays, key_bytes = _sizes(rows, (h, w, c), num_classes, rows, kw["k"], kw["mode"] == "instahide")
    try:  # before anything is written: --epochs 100000000 is refused here, not after filling the disk
        require_free_space({out: arrays, **({Path(args.key_out): key_bytes} if key_path is not None else {})})
    except OSError as exc:
        raise CLIError(f"{exc.strerror} (--epochs {args.epochs} x {n} images)") from exc
    kw = dict(kw)
    seed = kw.pop("seed")
    generator = make_generator(seed, kw["legacy"])
    keys = []
    # one progress line per chunk of ~1/20 of an epoch (images/s and ETA), fed by encrypt's progress
    progress = Progress(rows, f"encrypting {n} {ds.name} images x {args.epochs} epoch(s)",
                        enabled=args.progress and (shard is None or shard[0] == 0), unit=" img", every=1)
    step, shown = -(-n // 20), [0]

    def report(done: int) -> None:
        if done > shown[0] and (done - shown[0] >= step or done % n == 0):
            progress.update(done - shown[0])
            shown[0] = done

    # chunks of rows, each encrypted into one buffer and appended to the file: memory is bounded by a
    # chunk, not by N (partners are still drawn from all N); --legacy keys are drawn for a whole epoch
    chunk = n if kw["legacy"] else chunk_rows(c * h * w, n)
    buf = torch.empty((chunk, c, h, w)) if chunk < n or shard is not None else None
    t0 = time.perf_counter()
    digests: dict = {}
    try:
        with atomic_open(tmp / ENCRYPTION) as fe, \
                atomic_open(tmp / LABEL) if labelled else contextlib.nullcontext() as fl:
            fe = digests[ENCRYPTION] = _Hashing(fe)  # the checksums meta.json records, taken as the bytes go out
            enc_rows = _npy_writer(fe, (rows, h, w, c))
            if labelled:
                fl = digests[LABEL] = _Hashing(fl)
            lab_rows = _npy_writer(fl, (rows, num_classes)) if labelled else None
            for epoch in range(args.epochs):
                for s in range(0, n, chunk):
                    e = min(n, s + chunk)
                    whole = chunk >= n and shard is None
                    enc = encrypt(x, y, public=public, num_classes=num_classes, generator=generator,
                                  return_key=key_path is not None,
                                  rows=None if whole else np.arange(first + s, first + e),
                                  out=None if buf is None else buf[:e - s],
                                  progress=lambda done, at=epoch * n + s: report(at + done),
                                  **{**kw, **({"allow_uncentred": True} if epoch or s else {})})  # checked once
                    enc_rows(enc.images.permute(0, 2, 3, 1).numpy())
                    if labelled:
                        lab_rows(enc.soft_labels.numpy())
                    if enc.key is not None:
                        keys.append(enc.key)
    except (ValueError, TypeError) as exc:  # bad data or bounds: the scheme's message says which
        raise CLIError(str(exc)) from exc
    seconds = time.perf_counter() - t0
    # meta.json is handed out with the encryptions: no seed, nothing computed from key material, no path
    meta = {
        "dataset": handed_out_name(ds, args.dataset), "split": args.split, "num_images": n,
        "epochs": args.epochs, "rows": rows, "row_order": "epoch-major: row = epoch * N + i",
        "image_shape_hwc": [h, w, c], "labelled": labelled, "num_classes": num_classes,
        "classes": handed_out_classes(ds, args.dataset, args.publish_class_names) if labelled else None,
        "normalized": args.normalize, "mean": list(ds.mean) if args.normalize else None,
        "std": list(ds.std) if args.normalize else None,
        "public": None if pool is None else {"source": args.public if args.public == "builtin" else "local files",
                                             "size": len(pool),
                                             "mean": list(pool.mean), "std": list(pool.std)},
        "scheme": {**kw, "num_private": kw.get("num_private", kw["k"])},
        "keys": {"origin": "legacy-seed" if kw["legacy"] else generator.origin, "written": key_path is not None},
        "subset": args.subset, "seconds": round(seconds, 3), "instahide_version": __version__,
    }
    if shard is not None:  # which images: rows first..stop-1 of the private set (partners from all of it)
        meta["shard"] = {"rank": shard[0], "world_size": shard[1], "first": first, "stop": stop, "of": total}
    if key_path is not None:
        key_id = os.urandom(8).hex()  # random: pairs the key file with this folder, tells nothing of the key
        key = Key.cat(keys)
        key.meta.update(epochs=args.epochs, row_order=meta["row_order"], key_id=key_id, research_seed=seed)
        key.save(key_path)  # mode 0600; output_set moves it to --key-out together with the folder
        meta["keys"]["key_id"] = key_id
    write_meta(tmp, meta, digests={name: (h.bytes, h.hexdigest()) for name, h in digests.items()})  # last
    return (f"wrote {out / ENCRYPTION} {(rows, h, w, c)}, "
            + (f"{out / LABEL} {(rows, num_classes)}" if labelled else "no label.npy (unlabelled images)")
            + f" in {seconds:.1f} s" + (f"; keys in {args.key_out}" if key_path is not None else "; no key written"))


def world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise CLIError(f"cannot read WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} as an integer") from None


def shard_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[first, stop)`` of ``n`` images (sizes differ by at most 1)."""
    return rank * n // world, (rank + 1) * n // world


def shard_folder(out: Path, rank: int) -> Path:
    return out / f"{SHARD_PREFIX}{rank:05d}"


def shard_key(key_out: Path | None, rank: int) -> Path | None:
    """Rank ``rank``'s key file: ``--key-out`` with ``.rank00001`` before the suffix."""
    return None if key_out is None else key_out.with_name(f"{key_out.stem}.rank{rank:05d}{key_out.suffix}")


def _run_sharded(args, kw: dict, out: Path, key_out: Path | None) -> int:
    """``encrypt`` as one rank of ``torchrun``: each rank encrypts its contiguous share of the images
    under its own keys (a research seed is folded with the rank: scheme/rng.py) into
    ``OUT/rank-NNNNN`` (a complete folder, written as the single-process command writes ``OUT``),
    partners drawn from the whole set; when every rank has committed, rank 0 writes
    ``OUT/manifest.json`` (each shard's rows and the SHA-256 of its ``meta.json``), which
    :func:`~instahide.distributed.load_encrypted` (so ``train-shared``) reads as one folder."""
    if kw["legacy"]:
        raise CLIError("--legacy keys (one Mersenne-Twister stream from the seed) would repeat on every rank: "
                       "run --legacy without torchrun")
    info = init_distributed("cpu")
    try:
        rank, world = info.rank, info.world_size
        folder, key_path = shard_folder(out, rank), shard_key(key_out, rank)
        error = None
        try:
            if (out / META).exists():
                raise CLIError(f"{out} holds a single-process encryption ({META}); give another --out for a "
                               "sharded run")
            foreign = [p.name for p in out.iterdir() if not (p.name == MANIFEST or p.name.startswith(SHARD_PREFIX)
                                                              or p.name.startswith("."))] if out.is_dir() else []
            if foreign:
                raise CLIError(f"{out} holds files a sharded encrypt did not write ({', '.join(sorted(foreign)[:5])})")
            refuse_overwrite([out / MANIFEST, folder] + ([key_path] if key_path else []), args.force)
            out.mkdir(parents=True, exist_ok=True)
        except (CLIError, OSError) as exc:
            error = exc
        _agree(info, error)
        error, done = None, ""
        try:
            with output_set(folder, args.force, owned=OUTPUTS, secret=key_path) as (tmp, key_tmp):
                done = _encrypt_into(tmp, args, kw, key_tmp, shard=(rank, world), out=folder)
        except Exception as exc:  # noqa: BLE001  every rank must hear of it before the manifest
            error = exc
        _agree(info, error)
        metas = [None] * world
        dist.all_gather_object(metas, sha256_file(folder / META))
        if rank == 0:
            n = json.loads((folder / META).read_text())["shard"]["of"]
            manifest = {"format": MANIFEST_FORMAT, "world_size": world, "num_images": n, "epochs": args.epochs,
                        "shards": [{"folder": shard_folder(Path("."), r).name, "first": shard_rows(n, r, world)[0],
                                    "stop": shard_rows(n, r, world)[1], "meta_sha256": metas[r]}
                                   for r in range(world)]}
            atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
            for stale in sorted(out.glob(f"{SHARD_PREFIX}*")):  # a --force run with fewer ranks than before
                if stale.is_dir() and stale.name not in {s["folder"] for s in manifest["shards"]}:
                    shutil.rmtree(stale)
        print(f"rank {rank}/{world}: {done}")
    finally:
        cleanup(info)
    if kw["seed"] is not None and rank == 0:
        print(f"note: keys derive from research seed {kw['seed']} (folded with each rank): anyone who knows it "
              "can undo the mask", file=sys.stderr)
    return 0


def _agree(info, error) -> None:
    """:func:`all_agree`: this rank's own error as it is, another rank's as a one-line CLIError."""
    try:
        all_agree(info, error)
    except RuntimeError as exc:
        if exc is error:
            raise
        raise CLIError(str(exc)) from None


CHUNK_BYTES = 32 << 20  # float32 output per chunk of rows (and about as much gathered input)


def chunk_rows(values_per_image: int, n: int) -> int:
    """Rows per chunk: :data:`CHUNK_BYTES` of float32 output, at least 64 rows, at most ``n``."""
    return max(1, min(n, max(64, CHUNK_BYTES // (4 * values_per_image))))


class _Hashing:
    """A file object's ``write`` that also feeds SHA-256 and counts the bytes."""

    def __init__(self, fh):
        self.fh, self.sha, self.bytes = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.bytes += memoryview(data).nbytes
        return self.fh.write(data)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def _npy_writer(fh, shape):
    """Write a float32 .npy header for ``shape`` to ``fh``; return a function appending rows."""
    np.lib.format.write_array_header_1_0(
        fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
             "shape": tuple(int(s) for s in shape)})

    def append(rows: np.ndarray) -> None:
        fh.write(memoryview(np.ascontiguousarray(rows, dtype=np.float32)).cast("B"))

    return append
