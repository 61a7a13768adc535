"""Encryptions handed over by several parties, read as one training set (never their keys).

Each party runs ``instahide encrypt --epochs T`` and hands over one folder: ``encryption.npy``
``(N*T, H, W, C)`` (row ``e*N + i`` is image ``i`` in encryption epoch ``e``), ``label.npy`` and
``meta.json``, written last by :func:`write_meta` with the size and SHA-256 of each array.
:func:`load_encrypted` memory-maps the arrays (``allow_pickle=False``) and refuses, before any
training, a folder whose bytes differ from its ``meta.json``, truncated, non-float or unlabelled
arrays, parties that disagree on shape, classes or normalisation, and any folder holding a key file
(:class:`KeyMaterialError`). In training epoch ``e`` party ``p`` contributes its rows of encryption
epoch ``e mod T_p`` (reused past ``T_p``: docs/distributed.md). ::

    union = load_encrypted(["runs/alice", "runs/bob"])
    x, y = union.take(epoch=0, positions=np.arange(128))   # (128, C, H, W), (128, classes)
"""
from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write_text, finish_commits, sha256_file

ENCRYPTION, LABEL, META = "encryption.npy", "label.npy", "meta.json"
# A sharded run (`torchrun ... -m instahide encrypt`): OUT/rank-NNNNN/ per rank (each a complete folder
# of the three files above) and OUT/manifest.json, written by rank 0 once every rank has committed.
MANIFEST, MANIFEST_FORMAT, SHARD_PREFIX = "manifest.json", "instahide-encrypt-shards/1", "rank-"
_KEY_FORMAT = b"instahide-key/1"


class KeyMaterialError(ValueError):
    """An encryption folder holds key material: the trainer must never receive keys."""


@dataclass
class Party:
    """One party's folder: memory-mapped arrays and its ``meta.json``."""

    path: Path
    encryption: np.ndarray          # (N*T, H, W, C) memory map
    labels: np.ndarray              # (N*T, classes) memory map
    num_images: int                 # N
    epochs: int                     # T
    meta: dict = field(repr=False)

    def epoch_start(self, epoch: int) -> int:
        """First row of the encryption epoch used in training epoch ``epoch`` (``epoch mod T``)."""
        return (epoch % self.epochs) * self.num_images


@dataclass
class EncryptedUnion:
    """The union of several parties' encryptions: per training epoch, ``rows_per_epoch`` rows, party
    by party in the order given (party ``p`` at positions ``offsets[p] .. offsets[p] + N_p``)."""

    parties: list[Party]
    image_shape: tuple[int, int, int]   # (C, H, W)
    num_classes: int
    classes: list | None
    normalized: bool
    mean: tuple | None
    std: tuple | None

    @property
    def rows_per_epoch(self) -> int:
        return sum(p.num_images for p in self.parties)

    def __len__(self) -> int:
        return self.rows_per_epoch

    @property
    def offsets(self) -> list[int]:
        out, acc = [], 0
        for p in self.parties:
            out.append(acc)
            acc += p.num_images
        return out

    @property
    def fresh_epochs(self) -> int:
        """Training epochs in which every party still contributes encryptions not seen before."""
        return min(p.epochs for p in self.parties)

    def take(self, epoch: int, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``positions`` (indices into this epoch's ``rows_per_epoch`` rows) of training epoch
        ``epoch``: float32 images ``(M, C, H, W)`` and soft labels ``(M, num_classes)``, in the order
        of ``positions``. Raises a ValueError naming the folder if a row is NaN or infinite."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= self.rows_per_epoch):
            raise IndexError(f"positions must lie in [0, {self.rows_per_epoch}), got {pos.min()}..{pos.max()}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        c, h, w = self.image_shape
        x = np.empty((pos.size, h, w, c), dtype=np.float32)
        y = np.empty((pos.size, self.num_classes), dtype=np.float32)
        for p, off in zip(self.parties, self.offsets):
            sel = np.nonzero((pos >= off) & (pos < off + p.num_images))[0]
            if sel.size == 0:
                continue
            rows = pos[sel] - off + p.epoch_start(epoch)
            order = np.argsort(rows, kind="stable")      # read the file front to back
            try:
                xs = np.asarray(p.encryption[rows[order]], dtype=np.float32)
                ys = np.asarray(p.labels[rows[order]], dtype=np.float32)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read rows of {p.path}: {exc}") from exc
            if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
                bad = rows[order][~(np.isfinite(xs).reshape(len(xs), -1).all(1) & np.isfinite(ys).all(1))]
                raise ValueError(f"{p.path}: rows {bad[:5].tolist()} hold NaN or infinite values "
                                 "(a corrupt or tampered encryption file)")
            x[sel[order]] = xs
            y[sel[order]] = ys
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)

    def describe(self) -> list[dict]:
        """What each party handed over (for reports): folder, N, T, dataset, scheme, key origin."""
        return [{"folder": str(p.path), "num_images": p.num_images, "epochs": p.epochs,
                 "dataset": p.meta.get("dataset"), "scheme": p.meta.get("scheme"),
                 "keys_origin": (p.meta.get("keys") or {}).get("origin")} for p in self.parties]


# -- reading --------------------------------------------------------------------------------------
def load_encrypted(paths, *, check_keys: bool = True) -> EncryptedUnion:
    """Memory-map and validate one or more ``instahide encrypt`` folders as one training set.

    Args:
        paths: a folder or a list of folders, each with ``encryption.npy``, ``label.npy``, ``meta.json``
            (as :func:`write_meta` writes it), or the output of a sharded run (``torchrun ... -m
            instahide encrypt``: ``manifest.json`` and one such folder per rank), read as its ranks'
            folders in rank order (each checked against the SHA-256 the manifest records).
        check_keys: refuse folders that hold key material (default; leave it on).

    Raises:
        KeyMaterialError: a folder holds a key file.
        FileNotFoundError: a folder or one of its three files is missing.
        ValueError: a truncated/corrupt array, mismatched row counts, shapes or checksums, unlabelled
            encryptions, or parties that
            disagree on image shape, classes or normalisation (the message names the folder).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no encryption folder given")
    paths = [shard for p in paths for shard in shard_folders(p, check_keys)]
    seen = {}
    for p in paths:
        finish_commits(p)  # a killed `encrypt --force` left its commit half-done: finish it before reading
        r = p.resolve()
        if r in seen:
            raise ValueError(f"{p} is given twice (as {seen[r]}): its rows would count double")
        seen[r] = p
    parties = [_read_party(p, check_keys) for p in paths]
    first = parties[0]
    ref = _summary(first)
    for p in parties[1:]:
        s = _summary(p)
        for name, what in (("shape", "image shape (H, W, C)"), ("num_classes", "number of classes"),
                           ("normalized", "normalisation (normalized flag)")):
            if s[name] != ref[name]:
                raise ValueError(f"{p.path}: {what} is {s[name]}, but {first.path} has {ref[name]}; "
                                 "all parties must encrypt the same kind of data")
        if s["classes"] is not None and ref["classes"] is not None and s["classes"] != ref["classes"]:
            raise ValueError(f"{p.path}: class names {s['classes']} differ from {first.path}'s {ref['classes']}")
        if s["normalized"]:
            for stat in ("mean", "std"):
                if s[stat] is None or ref[stat] is None or not np.allclose(s[stat], ref[stat], rtol=1e-4, atol=1e-6):
                    raise ValueError(f"{p.path}: normalisation {stat} {s[stat]} differs from {first.path}'s "
                                     f"{ref[stat]}; the model would see differently scaled pixels")
    h, w, c = ref["shape"]
    for p in parties:
        origin = (p.meta.get("keys") or {}).get("origin")
        if origin in ("research-seed", "legacy-seed"):
            warnings.warn(f"{p.path}: the keys derive from a seed ({origin}); anyone who knows it can undo "
                          "the mask. Use research seeds for experiments only.", stacklevel=2)
    return EncryptedUnion(parties, (c, h, w), ref["num_classes"], ref["classes"], ref["normalized"],
                          None if ref["mean"] is None else tuple(ref["mean"]),
                          None if ref["std"] is None else tuple(ref["std"]))


def shard_folders(folder: Path, check_keys: bool = True) -> list[Path]:
    """The folders a path stands for: itself, or, for a sharded run's output (``manifest.json`` and no
    ``meta.json``), its ranks' folders in rank order, after checking that the manifest is complete
    (the shards tile the images ``[0, num_images)`` in order) and that each shard's ``meta.json`` is
    the one the manifest records (a shard replaced by another run's is refused)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file() or (folder / META).exists():
        return [folder]
    finish_commits(folder)
    if check_keys:
        keys = [k for k in find_key_files(folder) if k.parent == folder]
        if keys:
            raise KeyMaterialError(f"{folder} holds key material ({', '.join(str(k) for k in keys)}): the trainer "
                                   "must never receive keys; move them out of the folder")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        shards, n = manifest["shards"], int(manifest["num_images"])
        if not isinstance(shards, list) or len(shards) != int(manifest["world_size"]) or not shards:
            raise ValueError(f"{len(shards) if isinstance(shards, list) else shards!r} shards for world size "
                             f"{manifest['world_size']}")
        at = 0
        for s in shards:
            if int(s["first"]) != at or int(s["stop"]) <= at:
                raise ValueError(f"shard {s.get('folder')!r} covers rows {s['first']}..{s['stop']}, expected to start at {at}")
            at = int(s["stop"])
        if at != n:
            raise ValueError(f"the shards cover {at} of {n} images")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{folder / MANIFEST}: not a complete manifest of a sharded encrypt ({exc})") from exc
    out = []
    for s in shards:
        name = str(s["folder"])
        sub = folder / name
        if not name.startswith(SHARD_PREFIX) or "/" in name or not sub.is_dir():
            raise FileNotFoundError(f"{folder / MANIFEST} lists shard {name!r}, which is not a folder in {folder}")
        if not (sub / META).is_file() or sha256_file(sub / META) != s.get("meta_sha256"):
            raise ValueError(f"{sub / META} is not the one {folder / MANIFEST} records: the shards come from "
                             "different runs; re-run the sharded encrypt")
        out.append(sub)
    return out


def _summary(p: Party) -> dict:
    m = p.meta
    return {"shape": tuple(p.encryption.shape[1:]), "num_classes": p.labels.shape[1],
            "classes": m.get("classes"), "normalized": bool(m.get("normalized", True)),
            "mean": m.get("mean"), "std": m.get("std")}


def find_key_files(folder: Path) -> list[Path]:
    """Files under ``folder`` that hold (or are named like) InstaHide key material."""
    found = []
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.name in (ENCRYPTION, LABEL, META):
            continue
        if "key" in f.name.lower():
            found.append(f)
            continue
        if f.suffix == ".npz":
            try:
                with zipfile.ZipFile(f) as z:
                    names = set(z.namelist())
                    fmt = z.read("format.npy") if "format.npy" in names else b""
            except Exception:  # unreadable archive: not ours to judge, but not a key we can see either
                continue
            if _KEY_FORMAT in fmt or {"coefficients.npy", "indices.npy"} <= names:
                found.append(f)
    return found


def write_meta(folder: str | os.PathLike, meta: dict, *, digests: dict | None = None) -> dict:
    """Write ``folder/meta.json`` (atomically; call it after the arrays): ``meta`` plus ``"files"``,
    the size and SHA-256 of ``encryption.npy`` and (if present) ``label.npy``, which
    :func:`load_encrypted` verifies. ``digests``: ``{name: (bytes, sha256 hex)}`` taken while the
    file was written (so a large file is not read back); a size that differs from the file's is an
    error. Returns what was written."""
    folder = Path(folder)
    digests = digests or {}
    files = {}
    for name in (ENCRYPTION, LABEL):
        if not (folder / name).exists():
            continue
        size = (folder / name).stat().st_size
        if name in digests and digests[name][0] != size:
            raise ValueError(f"{folder / name} holds {size} bytes, {digests[name][0]} were written")
        files[name] = {"bytes": size, "sha256": digests[name][1] if name in digests else sha256_file(folder / name)}
    meta = dict(meta, files=files)
    atomic_write_text(folder / META, json.dumps(meta, indent=2, default=str) + "\n")
    return meta


def _verify_files(folder: Path, meta: dict) -> None:
    files = meta.get("files")
    for name in (ENCRYPTION, LABEL):
        record = files.get(name) if isinstance(files, dict) else None
        if not isinstance(record, dict) or "sha256" not in record:
            raise ValueError(f"{folder / META} records no checksum of {name}: not a complete folder written "
                             "by `instahide encrypt` (re-run it)")
        size = (folder / name).stat().st_size
        if size != record.get("bytes") or sha256_file(folder / name) != record["sha256"]:
            raise ValueError(f"{folder / name} is not the file {META} records (size or SHA-256 differ): the "
                             "folder mixes two runs or was altered; re-run `instahide encrypt`")


def _read_party(folder: Path, check_keys: bool) -> Party:
    if not folder.is_dir():
        raise FileNotFoundError(f"encryption folder {folder} does not exist (or is not a folder)")
    if check_keys:
        keys = find_key_files(folder)
        if keys:
            raise KeyMaterialError(
                f"{folder} holds key material ({', '.join(str(k) for k in keys)}): whoever holds a key can "
                "undo the mask, so the trainer refuses the folder. The party must move the key out of the "
                "folder (keys never leave the party) and hand over only encryption.npy, label.npy, meta.json")
    if not (folder / META).is_file():
        raise FileNotFoundError(f"{folder} has no {META}: expected a folder written by `instahide encrypt`")
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {folder / META}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{folder / META} is not a JSON object")
    if meta.get("labelled") is False:
        raise ValueError(f"{folder} holds encryptions of unlabelled images (no {LABEL}): there is nothing "
                         "to train on; encrypt labelled data")
    for name in (ENCRYPTION, LABEL):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: expected a folder written by `instahide encrypt`")
    enc = _map(folder / ENCRYPTION)
    lab = _map(folder / LABEL)
    if enc.ndim != 4:
        raise ValueError(f"{folder / ENCRYPTION}: expected (rows, H, W, C), got shape {enc.shape}")
    if lab.ndim != 2:
        raise ValueError(f"{folder / LABEL}: expected (rows, classes), got shape {lab.shape}")
    if enc.shape[0] != lab.shape[0]:
        raise ValueError(f"{folder}: encryption.npy has {enc.shape[0]} rows but label.npy has {lab.shape[0]}")
    if enc.shape[0] == 0:
        raise ValueError(f"{folder}: no encryptions (0 rows)")
    if enc.shape[-1] not in (1, 3, 4) and enc.shape[1] in (1, 3, 4):
        raise ValueError(f"{folder / ENCRYPTION}: shape {enc.shape} looks channels-first; expected (rows, H, W, C)")
    try:
        n, t = int(meta["num_images"]), int(meta["epochs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{folder / META} lacks num_images/epochs ({exc})") from exc
    if n < 1 or t < 1 or n * t != enc.shape[0]:
        raise ValueError(f"{folder}: meta.json says {n} images x {t} epochs = {n * t} rows, "
                         f"but encryption.npy has {enc.shape[0]}")
    hwc = meta.get("image_shape_hwc")
    if hwc is not None and tuple(hwc) != tuple(enc.shape[1:]):
        raise ValueError(f"{folder}: meta.json says images are {tuple(hwc)}, encryption.npy holds {enc.shape[1:]}")
    nc = meta.get("num_classes")
    if nc is not None and int(nc) != lab.shape[1]:
        raise ValueError(f"{folder}: meta.json says {nc} classes, label.npy has {lab.shape[1]} columns")
    order = meta.get("row_order", "epoch-major")
    if not str(order).startswith("epoch-major"):
        raise ValueError(f"{folder}: row order {order!r} is not epoch-major")
    _verify_files(folder, meta)
    return Party(folder, enc, lab, n, t, meta)


def _map(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"cannot read {path}: {exc} (truncated or not a .npy array?)") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        raise ValueError(f"{path}: expected a floating-point array, got dtype {getattr(arr, 'dtype', type(arr))}")
    expected = arr.offset + arr.size * arr.itemsize if isinstance(arr, np.memmap) else None
    if expected is not None and os.path.getsize(path) < expected:
        raise ValueError(f"{path} is truncated: {os.path.getsize(path)} bytes, the header announces {expected}")
    if math.prod(arr.shape) == 0 and arr.ndim == 0:
        raise ValueError(f"{path}: empty array")
    return arr
