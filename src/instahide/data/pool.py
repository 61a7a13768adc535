"""Public pools at ImageNet scale: millions of patches built in parallel, resumable, stored as uint8.

A pool is ONE plain ``.npy`` file ``(M, H, W, C)`` uint8 (channels-last, C-order, as users already
keep image arrays) and a JSON sidecar ``<stem>.json`` beside it (docs/pools.md has the format):
readers memory-map the file (:func:`load_pool`) and never expand it to float32 as a whole.

:func:`build_pool` cuts ``count`` distinct patches from photographs (a folder, the built-in photos,
or an array file), filters flat ones (:mod:`instahide.data.flatness`: ``"fast"``, ``"sift"`` or
``"none"``), and writes the pool. The work is split into shards of ``shard_size`` candidate
patches, each a pure function of the research ``seed`` and the shard's index, computed by
``workers`` processes and written atomically to ``<out>.parts/``. A killed build run again with
``resume=True`` reuses the finished shards and gives the same pool, byte for byte, as an
uninterrupted build with any number of workers.

Sampling: candidates visit the photographs round-robin, in a keyed random order of the photographs,
and each visit takes the next crop position of that photograph in a keyed random order of its crop
positions (a Feistel permutation: no position is used twice, nothing is held per position). Every
photograph thus gives about the same number of patches until its positions run out, however large
it is: a pool of 10^6 patches from 10^6 photographs takes about one patch from each.

Example: ``build_pool(["imagenet/train"], "pool.npy", 1_000_000, resize=64, workers=16)``
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from .._io import atomic_open, atomic_savez, atomic_write_text, check_file_destination, load_plain_npz
from .arrays import convert_channels, load_arrays, open_npy
from .builtin import builtin_photographs
from .flatness import FAST_THRESHOLD, FILTERS, SIFT_THRESHOLD, keep_mask
from .folders import _pil, list_image_files, read_image
from .public import _short_side_shape, resize_short_side

__all__ = ["build_pool", "load_pool", "read_pool_meta", "pool_sidecar", "POOL_VERSION", "SHARD_SIZE"]

POOL_VERSION = 1  # the sidecar's "version": bump when the file format or the sampling changes
SHARD_SIZE = 32768  # candidates per shard: 100 MB of 32x32 RGB patches per worker; a photograph
# visited several times in one shard is decoded once
_BUILD_FORMAT = "instahide-pool-build/1"
_VALUES = np.arange(256, dtype=np.int64)


# -- the sources: photographs as a catalogue of (source, item, height, width) ----------------------

def _catalogue(sources: Sequence[str], channels: int) -> list[tuple[int, str, int, int]]:
    """Every photograph of ``sources`` as ``(source index, item, H, W)``: ``item`` is a file path, an
    index into the built-in photographs or into an array file. Only file headers are read."""
    out: list[tuple[int, str, int, int]] = []
    for s, source in enumerate(sources):
        if str(source) == "builtin":
            out += [(s, str(i), p.shape[1], p.shape[2]) for i, p in enumerate(builtin_photographs(channels))]
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            files = list_image_files(path)
            if not files:
                raise ValueError(f"no image files in {path}")
            Image = _pil()
            for f in files:
                try:
                    with Image.open(f) as img:
                        w, h = img.size
                except Exception as exc:
                    raise ValueError(f"cannot read image {f}: {type(exc).__name__}: {exc}") from exc
                out.append((s, str(f.relative_to(path)), h, w))
        elif path.is_file() and path.suffix in (".npy", ".npz"):
            images = load_arrays(path, labels_key=None).images
            out += [(s, str(i), images.shape[2], images.shape[3]) for i in range(len(images))]
        else:
            raise FileNotFoundError(f"pool source {path} is neither 'builtin', a folder of images, nor a .npy/.npz file")
    return out


class _Photos:
    """Reads photograph ``i`` of the catalogue as ``(C, H, W)`` uint8, resized if asked."""

    def __init__(self, sources: Sequence[str], catalogue, channels: int, resize: int | None):
        self.sources, self.catalogue, self.channels, self.resize = list(sources), catalogue, channels, resize
        self._loaded: dict[int, object] = {}

    def _source(self, s: int):
        if s not in self._loaded:
            source = self.sources[s]
            if source == "builtin":
                self._loaded[s] = builtin_photographs(self.channels)
            elif Path(source).expanduser().is_dir():
                self._loaded[s] = Path(source).expanduser()
            else:
                self._loaded[s] = convert_channels(load_arrays(Path(source).expanduser(), labels_key=None).images, self.channels)
        return self._loaded[s]

    def __getitem__(self, i: int) -> np.ndarray:
        s, item, h, w = self.catalogue[i]
        src = self._source(s)
        x = read_image(src / item, self.channels) if isinstance(src, Path) else np.asarray(src[int(item)])
        if x.shape[1:] != (h, w):
            raise ValueError(f"photo {item} of source {self.sources[s]} is {x.shape[1]}x{x.shape[2]} now, "
                             f"{h}x{w} when the build started: the source changed")
        return x if self.resize is None else resize_short_side(x, self.resize)


# -- keyed permutations (Feistel network with cycle walking), vectorised over numpy arrays ----------

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def _permute(x: np.ndarray, n: np.ndarray, key: np.ndarray, rounds: int = 6) -> np.ndarray:
    """``x[i]``'s image under a keyed random permutation of ``[0, n[i])`` (elementwise ``n`` and
    ``key``: one permutation per element's domain and key). ``x < n`` required; uint64 in and out."""
    x, n, key = (np.asarray(a, dtype=np.uint64) for a in (x, n, key))
    x, n, key = np.broadcast_arrays(x, n, key)
    bits = np.maximum(np.ceil(np.log2(np.maximum(n, 2).astype(np.float64))).astype(np.uint64), np.uint64(2))
    half = (bits + np.uint64(1)) // np.uint64(2)
    mask = (np.uint64(1) << half) - np.uint64(1)
    out = x.copy()
    todo = np.ones(out.shape, dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():  # cycle walking: re-apply until the value falls inside [0, n)
            v, hf, m, k = out[todo], half[todo], mask[todo], key[todo]
            left, right = v >> hf, v & m
            for r in range(rounds):
                f = _mix(right ^ _mix(k + np.uint64(r + 1) * _GOLD)) & m
                left, right = right, left ^ f
            out[todo] = (left << hf) | right
            todo = out >= n
    return out


def _keys(seed: int, what: str, count: int = 1) -> np.ndarray:
    """``count`` uint64 keys drawn from the research ``seed`` for one use (``what``)."""
    entropy = [int(seed) & (2 ** 64 - 1), int(hashlib.sha256(what.encode()).hexdigest()[:15], 16)]
    return np.random.SeedSequence(entropy).generate_state(count, dtype=np.uint64)


# -- the plan: shapes, positions and candidates ----------------------------------------------------

class _Plan:
    """Which candidate patch is which: candidate ``i`` visits photograph ``order[i % P]`` for the
    ``i // P``-th time and takes that photograph's crop position ``perm_p(i // P)``."""

    def __init__(self, catalogue, size: tuple[int, int], resize: int | None, seed: int):
        h, w = size
        shapes = [(ph, pw) if resize is None else _short_side_shape(ph, pw, resize) for _, _, ph, pw in catalogue]
        self.shapes = np.array(shapes, dtype=np.int64).reshape(-1, 2)
        self.widths = np.maximum(self.shapes[:, 1] - w + 1, 0)
        self.counts = np.maximum(self.shapes[:, 0] - h + 1, 0) * self.widths
        self.photos = len(catalogue)
        self.total = int(self.counts.sum())
        self.end = self.photos * int(self.counts.max(initial=0))  # candidate indices run over [0, end)
        self.order_key = _keys(seed, "photo order")[0]
        self.photo_keys = _mix(_keys(seed, "crop positions")[0] ^ np.arange(self.photos, dtype=np.uint64) * _GOLD)

    def positions(self, start: int, stop: int) -> np.ndarray:
        """``(k, 4)`` int64 rows (candidate index, photo, top, left) of the candidates in
        ``[start, stop)`` that have a crop position left, in candidate order."""
        i = np.arange(start, min(stop, self.end), dtype=np.int64)
        visit, slot = i // self.photos, i % self.photos
        photo = _permute(slot, self.photos, self.order_key).astype(np.int64)
        live = visit < self.counts[photo]
        i, visit, photo = i[live], visit[live], photo[live]
        local = _permute(visit, self.counts[photo], self.photo_keys[photo]).astype(np.int64)
        widths = self.widths[photo]
        return np.stack([i, photo, local // widths, local % widths], axis=1)


# -- one shard: cut, filter, keep ------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker process
    _WORKER.clear()
    _WORKER.update(spec=spec, photos=_Photos(spec["sources"], spec["catalogue"], spec["channels"], spec["resize"]),
                   plan=_Plan(spec["catalogue"], tuple(spec["size"]), spec["resize"], spec["seed"]))


def _run_shard(b: int) -> tuple[int, int, int]:
    """Compute shard ``b`` and write it atomically; returns (b, kept, examined)."""
    spec, photos, plan = _WORKER["spec"], _WORKER["photos"], _WORKER["plan"]
    h, w = spec["size"]
    pos = plan.positions(b * spec["shard_size"], (b + 1) * spec["shard_size"])
    patches = np.empty((len(pos), spec["channels"], h, w), dtype=np.uint8)
    for p in np.unique(pos[:, 1]):  # each photograph decoded once per shard
        rows = np.flatnonzero(pos[:, 1] == p)
        x = photos[int(p)]
        for r in rows:
            top, left = pos[r, 2], pos[r, 3]
            patches[r] = x[:, top:top + h, left:left + w]
    keep = keep_mask(patches, spec["filter"], spec["threshold"]) if len(patches) else np.zeros(0, bool)
    kept = np.ascontiguousarray(patches[keep].transpose(0, 2, 3, 1))  # (k, H, W, C)
    atomic_savez(_shard_path(Path(spec["parts"]), b), {
        "patches": kept, "positions": pos[keep], "examined": np.array([len(pos)]),
    })
    return b, len(kept), len(pos)


def _shard_path(parts: Path, b: int) -> Path:
    return parts / f"shard-{b:06d}.npz"


def _read_shard(parts: Path, b: int, spec: dict) -> dict:
    """Shard ``b`` checked against the build: a truncated or foreign file is a ValueError naming it."""
    path = _shard_path(parts, b)
    try:
        data = load_plain_npz(path, "pool shard")
    except ValueError as exc:
        raise ValueError(f"{exc}; the shard is damaged: delete {path} and run the build again with "
                         f"--resume to recompute it") from None
    h, w = spec["size"]
    p, pos = data.get("patches"), data.get("positions")
    ok = (p is not None and pos is not None and p.dtype == np.uint8 and p.ndim == 4
          and p.shape[1:] == (h, w, spec["channels"]) and pos.shape == (len(p), 4) and "examined" in data)
    if not ok:
        raise ValueError(f"{path} is not a shard of this build (expected patches (k, {h}, {w}, "
                         f"{spec['channels']}) uint8 and their positions); delete it and run again with --resume")
    return data


# -- the build -------------------------------------------------------------------------------------

def pool_sidecar(path: str | os.PathLike) -> Path:
    """The JSON sidecar of pool file ``path``: ``pool.npy`` -> ``pool.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.json")


def build_pool(
    sources: str | Sequence[str],
    out: str | os.PathLike,
    count: int,
    size: int | tuple[int, int] = 32,
    *,
    filter: str = "fast",
    threshold: int | None = None,
    resize: int | None = None,
    channels: int = 3,
    seed: int = 0,
    workers: int | None = None,
    resume: bool = False,
    force: bool = False,
    shard_size: int = SHARD_SIZE,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Build a pool of ``count`` distinct ``size`` patches at ``out`` (``(count, H, W, C)`` uint8
    ``.npy``) and its sidecar; returns the sidecar's dict.

    ``sources``: ``"builtin"``, folders of photographs (searched recursively), or ``.npy``/``.npz``
    image files, one or several. ``resize``: photographs are first resized so their short side has
    that many pixels (the paper's 40; it also evens out how many crop positions each photo has).
    ``filter``/``threshold``: ``"fast"`` (DoG keypoints > :data:`~instahide.data.flatness.FAST_THRESHOLD`),
    ``"sift"`` (SIFT keypoints > :data:`~instahide.data.flatness.SIFT_THRESHOLD`) or ``"none"``.
    ``workers``: processes (default: every core; 1 runs in this process). ``seed``: the research seed;
    the pool depends on it and on the parameters, not on ``workers`` or on interruptions.
    ``resume``: continue from ``<out>.parts/`` (refused if it was started with other parameters);
    without it an existing ``<out>.parts/`` is refused. ``force``: replace an existing pool.
    ``progress``: called after every shard with a dict (kept, examined, count, shards, elapsed_s, and
    resumed_shards / resumed_examined: what an earlier run had done).

    Example: ``build_pool("builtin", "pool.npy", 10_000, workers=2)``
    """
    sources = [str(sources)] if isinstance(sources, (str, os.PathLike)) else [str(s) for s in sources]
    size = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
    if threshold is None:  # the filter's calibrated default (none for "none")
        threshold = {"fast": FAST_THRESHOLD, "sift": SIFT_THRESHOLD}.get(filter)
    else:
        threshold = int(threshold)
    _check_args(sources, count, size, filter, resize, channels, shard_size, workers)
    out = Path(out).expanduser()
    if out.suffix != ".npy":
        raise ValueError(f"the pool file must end in .npy, got {out}")
    check_file_destination(out)
    parts = out.with_name(out.name + ".parts")
    if (out.exists() or pool_sidecar(out).exists()) and not force and not (resume and parts.is_dir()):
        raise FileExistsError(f"{out} (or its sidecar {pool_sidecar(out).name}) exists; pass force=True (--force) to replace it")
    if parts.exists() and not resume:
        raise FileExistsError(f"{parts} holds a partial build: pass resume=True (--resume) to continue it, or delete it")

    sources = [s if s == "builtin" else str(Path(s).expanduser().resolve()) for s in sources]
    catalogue = _catalogue(sources, channels)
    plan = _Plan(catalogue, size, resize, seed)
    if plan.total == 0:
        raise ValueError(f"no photograph is at least {size[0]}x{size[1]} pixels"
                         + ("" if resize is None else f" after resizing to short side {resize}"))
    if count > plan.total:
        raise ValueError(f"asked for {count:,} distinct {size[0]}x{size[1]} patches but the {plan.photos:,} photos only "
                         f"have {plan.total:,} crop positions" + ("" if resize is None else f" at resize={resize}")
                         + "; use more photos or a larger --resize")
    digest = hashlib.sha256(json.dumps(catalogue).encode()).hexdigest()
    params = {
        "format": _BUILD_FORMAT, "sources": sources, "photos": plan.photos, "catalogue_sha256": digest,
        "count": int(count), "size": list(size), "channels": channels, "resize": resize, "filter": filter,
        "threshold": threshold, "seed": int(seed), "shard_size": int(shard_size),
    }
    _start_parts(parts, params, resume)
    spec = {**params, "catalogue": catalogue, "parts": str(parts)}
    n_shards = math.ceil(plan.end / shard_size)
    done = _existing_shards(parts, spec, n_shards)
    state = {"kept": sum(k for k, _ in done.values()), "examined": sum(e for _, e in done.values()),
             "count": int(count), "shards": len(done), "started": time.monotonic(), "resumed_shards": len(done)}
    state["resumed_examined"] = state["examined"]

    def record(b: int, kept: int, examined: int) -> None:
        done[b] = (kept, examined)
        state.update(kept=state["kept"] + kept, examined=state["examined"] + examined, shards=len(done))
        if progress is not None:
            progress({**state, "elapsed_s": time.monotonic() - state["started"]})

    workers = workers or os.cpu_count() or 1
    if _needed(done, count, n_shards) is None:
        if workers == 1:
            _init_worker(spec)
            b = 0
            while _needed(done, count, n_shards) is None:
                while b in done:
                    b += 1
                if b >= n_shards:
                    break
                record(*_run_shard(b))
        else:
            _run_parallel(spec, workers, done, count, n_shards, record)
    last = _needed(done, count, n_shards)
    if last is None:
        kept = sum(k for k, _ in done.values())
        raise RuntimeError(f"only {kept:,} of {count:,} patches pass the {filter} filter (threshold {threshold}) among all "
                           f"{plan.total:,} crop positions; lower the threshold, use more photos or a larger --resize "
                           f"(the finished shards stay in {parts})")
    meta = _assemble(out, parts, spec, plan, last, done)
    shutil.rmtree(parts, ignore_errors=True)
    return meta


def _check_args(sources, count, size, filter, resize, channels, shard_size, workers) -> None:
    if not sources:
        raise ValueError("no pool source given")
    if int(count) != count or count < 1:
        raise ValueError(f"count must be a positive integer, got {count}")
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"patch size must be (H, W) with both at least 8 pixels, got {size}")
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")
    if resize is not None and resize < max(size):
        raise ValueError(f"resize={resize} is smaller than the patch size {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


def _start_parts(parts: Path, params: dict, resume: bool) -> None:
    build = parts / "build.json"
    if resume and build.is_file():
        try:
            stored = json.loads(build.read_text())
        except ValueError as exc:
            raise ValueError(f"{build} is unreadable ({exc}); delete {parts} and start again") from None
        diff = sorted(k for k in set(stored) | set(params) if stored.get(k) != json.loads(json.dumps(params)).get(k))
        if diff:
            detail = ", ".join(f"{k}: {stored.get(k)!r} then, {params.get(k)!r} now" for k in diff if k != "catalogue_sha256")
            if "catalogue_sha256" in diff:
                detail = (detail + ", " if detail else "") + "the source photographs changed"
            raise ValueError(f"{parts} was started with other parameters ({detail}); run with the same ones, "
                             f"or delete it to start again")
        return
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_text(build, json.dumps(params, indent=1))


def _existing_shards(parts: Path, spec: dict, n_shards: int) -> dict:
    done = {}
    for f in sorted(parts.glob("shard-*.npz")):
        b = int(f.stem.split("-")[1])
        if b >= n_shards:
            raise ValueError(f"{f} is not a shard of this build (it has {n_shards} shards); delete it")
        data = _read_shard(parts, b, spec)
        done[b] = (len(data["patches"]), int(data["examined"][0]))
    return done


def _needed(done: dict, count: int, n_shards: int) -> int | None:
    """The last shard of the shortest finished prefix 0..b that holds ``count`` patches, else None."""
    total = 0
    for b in range(n_shards):
        if b not in done:
            return None
        total += done[b][0]
        if total >= count:
            return b
    return None


def _run_parallel(spec: dict, workers: int, done: dict, count: int, n_shards: int, record) -> None:
    ctx = multiprocessing.get_context("spawn")  # no forked torch state; every worker starts clean
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(spec,)) as pool:
        pending: dict = {}
        b = 0
        try:
            while _needed(done, count, n_shards) is None:
                examined = sum(e for _, e in done.values())
                rate = sum(k for k, _ in done.values()) / examined if examined else 1.0
                missing = count - sum(k for k, _ in done.values()) - len(pending) * spec["shard_size"] * max(rate, 0.05)
                while len(pending) < 2 * workers and b < n_shards and (missing > 0 or not pending):
                    if b not in done:
                        pending[pool.submit(_run_shard, b)] = b
                        missing -= spec["shard_size"] * max(rate, 0.05)
                    b += 1
                if not pending:
                    if b >= n_shards:
                        return
                    continue
                finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for f in finished:
                    pending.pop(f)
                    record(*f.result())
        finally:
            for f in pending:
                f.cancel()


def _assemble(out: Path, parts: Path, spec: dict, plan: _Plan, last: int, done: dict) -> dict:
    """Write shards 0..last (the final one cut to the count) as one ``.npy``, then the sidecar."""
    h, w = spec["size"]
    c, count = spec["channels"], spec["count"]
    shape = (count, h, w, c)
    sums = np.zeros(c, dtype=np.int64)
    squares = np.zeros(c, dtype=np.int64)
    examined = 0
    pool_sidecar(out).unlink(missing_ok=True)  # a kill before the new sidecar: no stale pair is left
    with atomic_open(out) as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
        written = 0
        for b in range(last + 1):
            data = _read_shard(parts, b, spec)
            p = data["patches"][: count - written]
            examined += int(data["examined"][0])
            fh.write(np.ascontiguousarray(p).tobytes())
            for ch in range(c):  # exact integer sums from a histogram: no int64 copy of the shard
                hist = np.bincount(p[..., ch].ravel(), minlength=256).astype(np.int64)
                sums[ch] += hist @ _VALUES
                squares[ch] += hist @ _VALUES ** 2
            written += len(p)
    pixels = count * h * w
    mean = sums / pixels / 255.0
    std = np.sqrt(np.maximum(squares / pixels / 255.0 ** 2 - mean ** 2, 0.0))
    described = [s if s == "builtin" else Path(s).name for s in spec["sources"]]
    meta = {
        "format": "instahide-pool", "version": POOL_VERSION, "name": f"pool-{out.stem}",
        "count": count, "shape": list(shape), "dtype": "uint8", "layout": "NHWC",
        "patch_size": [h, w], "channels": c,
        "source": {"description": f"{count:,} random {h}x{w} patches of {plan.photos:,} photographs from "
                                  f"{', '.join(described)}" + ("" if spec["resize"] is None else
                                                               f", short side resized to {spec['resize']} first"),
                   "sources": spec["sources"], "photos": plan.photos, "crop_positions": plan.total,
                   "resize": spec["resize"], "catalogue_sha256": spec["catalogue_sha256"]},
        "filter": {"name": spec["filter"], "threshold": spec["threshold"],
                   "rule": {"fast": "DoG keypoints > threshold (instahide.data.flatness.dog_keypoint_count)",
                            "sift": "SIFT keypoints > threshold (instahide.data.public.sift_keypoint_count)",
                            "none": "every patch kept"}[spec["filter"]],
                   "candidates_examined": examined,  # in the shards used, the last one whole
                   "keep_rate": round(sum(done[b][0] for b in range(last + 1)) / examined, 6) if examined else None},
        "seed": spec["seed"], "shard_size": spec["shard_size"],
        "mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std],
        "instahide_version": __version__,
    }
    atomic_write_text(pool_sidecar(out), json.dumps(meta, indent=1) + "\n")
    return meta


# -- reading a pool --------------------------------------------------------------------------------

def read_pool_meta(path: str | os.PathLike) -> dict:
    """The sidecar of pool ``path`` (``<stem>.json``) as a dict; ValueError naming it if it is missing
    or not a pool sidecar."""
    side = pool_sidecar(path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no sidecar {side} next to pool {path} (instahide pool build writes both)") from None
    except ValueError as exc:
        raise ValueError(f"{side}: unreadable pool sidecar: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != "instahide-pool":
        raise ValueError(f"{side} is not an instahide pool sidecar (no \"format\": \"instahide-pool\")")
    if meta.get("version") != POOL_VERSION:
        raise ValueError(f"{side}: pool version {meta.get('version')!r}, this instahide reads version {POOL_VERSION}")
    return meta


def load_pool(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """A pool as ``(images, meta)``: ``images`` is the ``(M, H, W, C)`` uint8 file memory-mapped
    read-only (pages are read when rows are used), ``meta`` its sidecar. A truncated file, another
    dtype or shape, or a sidecar that disagrees with the file is a ValueError naming the problem.

    Example: ``images, meta = load_pool("pool.npy"); x = images[idx]  # (k, H, W, C) uint8``
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no pool file {path}")
    meta = read_pool_meta(path)
    images = open_npy(path)  # checks the header against the file size (truncation)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: a pool is (M, H, W, C) uint8 with C = 1 or 3, got {images.shape} {images.dtype}")
    if list(images.shape) != list(meta.get("shape", [])):
        raise ValueError(f"{path} holds {tuple(images.shape)} but its sidecar {pool_sidecar(path).name} says "
                         f"{tuple(meta.get('shape', []))}: the pair does not belong together")
    return images, meta
