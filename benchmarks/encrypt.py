"""Encryption throughput: this library against the plain streaming floor and the reference approach.

Rerun (from the repository root; CPU, the configuration recorded in docs/benchmarks.md)::

    .venv/bin/python benchmarks/encrypt.py --json docs/bench_encrypt_cpu.json

and on a GPU::

    .venv/bin/python benchmarks/encrypt.py --device cuda --no-reference --json docs/bench_encrypt_cuda.json

What it measures, for all ``--n`` (default 50,000) CIFAR-10 training images, in two settings:
inside-dataset k=4, and cross-dataset k=6 (2 private + 4 public slots, c2 = 0.3) with a public pool
of ``--pool`` (default 10,000) tiny-imagenet photographs downsampled to 32x32:

(a)  ``instahide.encrypt(x, y, k=..., num_classes=10)``: the real API with default keys (a fresh
     keystream keyed from OS entropy: ChaCha20 with the ``cryptography`` package, else SHAKE-256), input checks, mixing, mask and label mixing, and a
     freshly allocated output.
(a') the same with a preallocated ``out=`` buffer.
(c') (a') on the chunked torch path (``fused=False``), beside it: what the fused numba kernel
     (``instahide.scheme.kernel``, the ``fast`` extra) gains; absent without numba.
(f)  the plain streaming floor with a fresh output: the dataset and k-1 more dataset-sized tensors
     (distinct memory) summed into one newly allocated output with ``torch.add``, in cache-sized row
     chunks: k contiguous reads and one write; no gathers, no randomness, no keys.
(f') the same floor into a preallocated output (``out=``).
(b)  a faithful re-implementation of the reference code's approach: ``np.random.normal`` then a
     per-row Python rejection loop for the coefficients, one ``torch.randperm`` per slot, the mask
     drawn value by value with ``torch.randint(2, ...)`` and multiplied in, labels from one-hot vectors.

The methods of one setting run interleaved (a, a', f, f', b, a, a', ...), ``--repeats`` rounds after
one untimed warm-up (none for (b)), so that on a shared machine every method sees the same load; the
table reports the best (min) and the median, and the ratios a/f and a'/f' (target <= 1.5) and b/a
(target >= 10) from the best times of this one run.

Then the per-stage profile of (a) (``--no-profile`` skips it): every stage of the library call, each
a library call timed alone, next to its own floor, interleaved the same way:
    keys: coefficients, partners, mask bits, sample_key -- floor: the keystream's own speed (one raw
        SHAKE-256 digest of at least the bytes the stage consumes)
    gathers + mixing (apply_key without the mask, out=) -- floors: k chunked contiguous reads of a
        dataset-sized tensor, and k chunked random-row gathers (index_select of a random permutation
        into a cache-sized buffer)
    mask (apply_key with the mask minus without) -- floor: one chunked in-place pass over the output
    labels (the label checks and mix_labels, as encrypt runs them), centring check -- no floor
    allocation: first touch of a fresh dataset-sized output (torch.empty, one write per 4 KiB page)
The data come from the library's own loader (``instahide.data.load_dataset("cifar10", root=...)``,
normalised with the CIFAR-10 mean/std); loading is not timed. The header reports the CPU (lscpu's
model name), the torch thread count and the machine's load (runnable processes from /proc/loadavg).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # runnable without PYTHONPATH=src too
    sys.path.insert(0, str(REPO / "src"))

import instahide  # noqa: E402
from instahide.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset, normalize_images  # noqa: E402
from instahide.scheme import kernel  # noqa: E402
from instahide.scheme.rng import _chacha20  # noqa: E402
from instahide.scheme import (KeyGenerator, apply_key, mix_labels, sample_coefficients, sample_key,  # noqa: E402
                              sample_mask_bits, sample_partners)
from instahide.scheme.encrypt import check_centred, check_labels  # noqa: E402

DEFAULT_CIFAR = REPO.parent / "shared/data/cifar-10-batches-py"
DEFAULT_PUBLIC = REPO.parent / "shared/data/tiny-imagenet-200-test/images"
UPPER, DOM, NUM_CLASSES = 0.65, 0.3, 10


# -- data (not timed) ------------------------------------------------------------------------------
def load_private(root: Path, n: int, synthetic: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(x float32 (n,3,32,32) normalised, y int64 (n,), description of the source)."""
    if not synthetic:
        try:
            ds = load_dataset("cifar10", root=root, split="train")
        except FileNotFoundError:
            print(f"WARNING: CIFAR-10 not found at {root}: using SYNTHETIC random normal data of the same shape")
        else:
            if n > len(ds):
                raise SystemExit(f"--n {n} exceeds the {len(ds)} CIFAR-10 training images")
            x, y = ds.subset(slice(0, n)).to_tensor()  # / 255, then the CIFAR-10 mean/std
            return x.contiguous(), y, f"CIFAR-10 train ({root}, via instahide.data.load_dataset)"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(NUM_CLASSES, (n,), generator=g)
    return x, y, "synthetic N(0,1)"


def load_pool(folder: Path, size: int, synthetic: bool) -> tuple[torch.Tensor, str]:
    """Public pool (size,3,32,32) float32, ImageNet-normalised: tiny-imagenet 64x64 -> 2x2 average pool."""
    files = sorted(folder.glob("*.JPEG")) if (folder.is_dir() and not synthetic) else []
    if len(files) >= size:
        try:
            from PIL import Image
            arr = np.empty((size, 64, 64, 3), dtype=np.uint8)
            for i, p in enumerate(files[:size]):
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    if im.size != (64, 64):
                        im = im.resize((64, 64))
                    arr[i] = np.asarray(im)
            t = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
            t = F.avg_pool2d(t, 2).contiguous()
            return (normalize_images(t, IMAGENET_MEAN, IMAGENET_STD).contiguous(),
                    f"tiny-imagenet test ({folder}), 64->32 by 2x2 mean")
        except ImportError:
            print("WARNING: Pillow missing; public pool is synthetic")
    elif not synthetic:
        print(f"WARNING: {size} public photographs not found in {folder}: using a SYNTHETIC public pool")
    g = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, 32, 32, generator=g), "synthetic N(0,1)"


# -- (b) the reference code's approach -------------------------------------------------------------
def reference_encrypt(x, y, k, *, upper=UPPER, x_help=None, dom=DOM, num_classes=NUM_CLASSES):
    """The reference InstaHide ``mixup_data`` approach, written as the reference code does it.

    Global numpy/torch generators; coefficients by a per-row Python rejection loop; slot i >= 1 is
    ``x[torch.randperm(n)]`` (cross-dataset: slot 1 private, slots 2.. from the public window
    ``x_help``); mask ``torch.randint(2, size=x.shape) * 2.0 - 1`` multiplied in. Returns
    (encryptions, soft labels = sum over private slots of lam_j * onehot(y[index_j])).
    """
    device = x.device
    n = x.size()[0]
    cross = x_help is not None
    lams = np.random.normal(0, 1, size=(n, k))
    for i in range(n):
        lams[i] = np.abs(lams[i]) / np.sum(np.abs(lams[i]))
        if k > 1:
            while lams[i].max() > upper or (cross and lams[i][0] + lams[i][1] < dom):
                lams[i] = np.random.normal(0, 1, size=(1, k))
                lams[i] = np.abs(lams[i]) / np.sum(np.abs(lams[i]))
    lams = torch.from_numpy(lams).float().to(device)

    def vec_mul_ten(vec, tensor):  # the reference's helper: per-row scalar times image
        return vec.view(-1, *([1] * (tensor.dim() - 1))) * tensor

    mixed_x = vec_mul_ten(lams[:, 0], x)
    ys = [y]
    for i in range(1, k):
        index = torch.randperm(n).to(device)
        if cross and i >= 2:
            mixed_x += vec_mul_ten(lams[:, i], x_help[index, :])
        else:
            mixed_x += vec_mul_ten(lams[:, i], x[index, :])
            ys.append(y[index])
    sign = torch.randint(2, size=list(x.shape), device=device) * 2.0 - 1
    mixed_x *= sign.float().to(device)
    soft = sum(lams[:, j:j + 1] * F.one_hot(yj, num_classes).float() for j, yj in enumerate(ys))
    return mixed_x, soft


# -- floors -----------------------------------------------------------------------------------------
def streaming_floor(srcs, chunk_rows, out=None):
    """(f)/(f'): ``out = srcs[0] + ... + srcs[k-1]`` with ``torch.add``, in cache-sized row chunks."""
    n = srcs[0].shape[0]
    flats = [t.reshape(n, -1) for t in srcs]
    out = torch.empty_like(srcs[0]) if out is None else out
    of = out.view(n, -1)
    for s in range(0, n, chunk_rows):
        e = min(n, s + chunk_rows)
        o = of[s:e]
        torch.add(flats[0][s:e], flats[1][s:e], out=o)
        for t in flats[2:]:
            o.add_(t[s:e])
    return out


def contiguous_reads(x, k, chunk_rows):
    """k chunked contiguous reads of ``x`` (slot j starts n*j/k rows further, so none hits the cache)."""
    n = x.shape[0]
    xf = x.reshape(n, -1)
    acc = torch.zeros((), dtype=torch.float32, device=x.device)
    for j in range(k):
        off = (j * n) // k
        for s in range(0, n, chunk_rows):
            acc += xf[(s + off) % n:min(n, (s + off) % n + chunk_rows)].sum(dtype=torch.float32)
    return acc


def random_gathers(x, perms, chunk_rows):
    """One chunked random-row gather of ``x`` per permutation, into a cache-sized buffer."""
    n = x.shape[0]
    xf = x.reshape(n, -1)
    buf = torch.empty((chunk_rows, xf.shape[1]), dtype=x.dtype, device=x.device)
    for perm in perms:
        for s in range(0, len(perm), chunk_rows):
            rows = perm[s:s + chunk_rows]
            torch.index_select(xf, 0, rows, out=buf[:len(rows)])
    return buf


def inplace_pass(t, chunk_rows):
    """One chunked in-place read-write pass over ``t``."""
    tf = t.view(t.shape[0], -1)
    for s in range(0, t.shape[0], chunk_rows):
        tf[s:s + chunk_rows].neg_()
    return t


def first_touch(like):
    """A fresh output of ``like``'s size with every 4 KiB page written once (the page faults)."""
    t = torch.empty_like(like).view(-1)
    t[::1024].zero_()
    return t


# -- timing -----------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def race(fns: dict, repeats: int, device, no_warmup=()) -> dict:
    """Time every function of ``fns`` ``repeats`` times, interleaved, after one untimed warm-up each."""
    for name, fn in fns.items():
        if name not in no_warmup:
            fn()
            _sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            r = fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            del r
    return {name: {"best_s": min(t), "median_s": statistics.median(t), "all_s": t} for name, t in times.items()}


def profile_library(x, y, k, pool, repeats, device, chunk_rows):
    """Each stage of encrypt() timed alone (library calls), next to its floor; best of ``repeats``."""
    n = x.shape[0]
    cross = pool is not None
    p = 2 if cross else k
    dom = DOM if cross else None
    pool_size = None if pool is None else pool.shape[0]
    d = int(np.prod(x.shape[1:]))
    gen = KeyGenerator.from_entropy()
    key = sample_key(n, k, tuple(x.shape[1:]), upper=UPPER, dom=dom, num_private=p, pool_size=pool_size,
                     generator=gen)
    out = torch.empty_like(x)
    bits_bytes = n * ((d + 7) // 8)
    coef_bytes, part_bytes = 16 * n * k, 8 * n * (k - 1)  # at least: one uniform pair per draw, one per slot
    perms = [torch.randperm(n, device=device) for _ in range(k)]

    def shake(nbytes):  # the raw keystream of the generator's own stream
        if gen.stream == "chacha20":
            return lambda: _chacha20()(bytes(32), bytes(16), nbytes)
        return lambda: hashlib.shake_256(b"x" * 64).digest(nbytes)

    shake_gen = KeyGenerator(bytes(32), stream="shake256")  # the standard-library stream, for comparison

    fns = {
        "centring check": lambda: (check_centred(x, k, "images"), cross and check_centred(pool, k, "public")),
        "keys: coefficients": lambda: sample_coefficients(n, k, upper=UPPER, dom=dom, num_private=p, generator=gen),
        "keys: partners": lambda: sample_partners(n, k, num_private=p, pool_size=pool_size, generator=gen),
        "keys: mask bits": lambda: sample_mask_bits(n, d, gen),
        "keys: mask bits, SHAKE-256 stream": lambda: sample_mask_bits(n, d, shake_gen),
        "keys: sample_key total": lambda: sample_key(n, k, tuple(x.shape[1:]), upper=UPPER, dom=dom, num_private=p,
                                                     pool_size=pool_size, generator=gen),
        "gathers + mixing (apply_key, no mask)": lambda: apply_key(x, key.unmasked(), public=pool, out=out),
        "gathers + mixing + mask (apply_key)": lambda: apply_key(x, key, public=pool, out=out),
        "labels (checks + mix_labels)": lambda: mix_labels(check_labels(y, n, NUM_CLASSES, x.device, one_hot=False)[0],
                                                            key, NUM_CLASSES),
        "allocation (first touch, fresh output)": lambda: first_touch(x),
        "floor: keystream, coefficient bytes": shake(coef_bytes),
        "floor: keystream, partner bytes": shake(part_bytes),
        "floor: keystream, mask bytes": shake(bits_bytes),
        "floor: keystream, all key bytes": shake(coef_bytes + part_bytes + bits_bytes),
        "floor: k contiguous reads": lambda: contiguous_reads(x, k, chunk_rows),
        "floor: k random-row gathers": lambda: random_gathers(x, perms, chunk_rows),
        "floor: one in-place pass over the output": lambda: inplace_pass(out, chunk_rows),
    }
    t = {name: m["best_s"] for name, m in race(fns, repeats, device).items()}
    mask = max(0.0, t["gathers + mixing + mask (apply_key)"] - t["gathers + mixing (apply_key, no mask)"])
    rows = [  # (stage, library s, floor name, floor s)
        ("centring check", t["centring check"], None, None),
        ("keys: coefficients", t["keys: coefficients"], "keystream", t["floor: keystream, coefficient bytes"]),
        ("keys: partners", t["keys: partners"], "keystream", t["floor: keystream, partner bytes"]),
        (f"keys: mask bits ({gen.stream})", t["keys: mask bits"], "keystream", t["floor: keystream, mask bytes"]),
        ("keys: mask bits (shake256)", t["keys: mask bits, SHAKE-256 stream"], "keystream",
         t["floor: keystream, mask bytes"]),
        ("keys: sample_key total", t["keys: sample_key total"], "keystream", t["floor: keystream, all key bytes"]),
        ("gathers + mixing", t["gathers + mixing (apply_key, no mask)"], "k contiguous reads",
         t["floor: k contiguous reads"]),
        ("gathers + mixing", t["gathers + mixing (apply_key, no mask)"], "k random-row gathers",
         t["floor: k random-row gathers"]),
        ("mask (with - without)", mask, "in-place pass", t["floor: one in-place pass over the output"]),
        ("apply_key total (out=)", t["gathers + mixing + mask (apply_key)"], None, None),
        ("labels", t["labels (checks + mix_labels)"], None, None),
        ("allocation (fresh output)", t["allocation (first touch, fresh output)"], None, None),
    ]
    return {"stages_best_s": t, "rows": rows}


def _numba_version() -> str:
    import numba
    return numba.__version__


def machine() -> dict:
    """CPU model (lscpu), cores, and the load: runnable processes now (from /proc/loadavg)."""
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    try:
        fields = Path("/proc/loadavg").read_text().split()
        runnable = int(fields[3].split("/")[0]) - 1  # minus this process
        load1 = float(fields[0])
    except (OSError, ValueError, IndexError):
        runnable, load1 = None, None
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "runnable_others": runnable, "loadavg_1min": load1}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50000, help="private images encrypted per call (default 50000)")
    ap.add_argument("--pool", type=int, default=10000, help="public pool size for cross k=6 (default 10000)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement (default 5)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    ap.add_argument("--cifar-root", type=Path, default=DEFAULT_CIFAR, help=f"default {DEFAULT_CIFAR}")
    ap.add_argument("--public-root", type=Path, default=DEFAULT_PUBLIC, help=f"default {DEFAULT_PUBLIC}")
    ap.add_argument("--synthetic", action="store_true", help="random normal data instead of CIFAR-10/tiny-imagenet")
    ap.add_argument("--settings", default="inside,cross", help="comma list of inside,cross (default both)")
    ap.add_argument("--no-reference", action="store_true", help="skip (b) (slow: seconds per repeat)")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-stage profile of (a)")
    ap.add_argument("--json", type=Path, default=None, help="write results and configuration here")
    args = ap.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")

    t0 = time.perf_counter()
    x, y, data_src = load_private(args.cifar_root, args.n, args.synthetic)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    pool, pool_src = (load_pool(args.public_root, args.pool, args.synthetic) if "cross" in settings
                      else (None, None))
    x, y = x.to(device), y.to(device)
    pool = None if pool is None else pool.to(device)
    n, d = x.shape[0], int(np.prod(x.shape[1:]))
    load_s = time.perf_counter() - t0
    config = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "instahide": getattr(instahide, "__version__", "?"),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        **machine(), "threads": torch.get_num_threads(),
        "n": n, "image_shape": list(x.shape[1:]), "dtype": str(x.dtype), "pool_size": args.pool,
        "data": data_src, "public": pool_src, "repeats": args.repeats, "upper": UPPER, "dom": DOM,
        "load_s_not_timed": round(load_s, 2), "keystream": KeyGenerator.from_entropy().stream,
        "fused_kernel": _numba_version() if kernel.supports(x) else None,
    }
    print(f"# instahide encryption benchmark  {config['timestamp']}")
    print(f"# torch {torch.__version__}, device {device}{' (' + config['gpu'] + ')' if config['gpu'] else ''}, "
          f"CPU {config['cpu_model']}, {config['cpu_count']} cores, torch threads {torch.get_num_threads()}")
    print(f"# load at start: {config['runnable_others']} other runnable processes, load average "
          f"{config['loadavg_1min']} (a quiet machine has ~0)")
    print(f"# data: {n} x {tuple(x.shape[1:])} {x.dtype} from {data_src}; default keystream {config['keystream']}; "
          f"mixing: {'fused kernel (numba ' + config['fused_kernel'] + ')' if config['fused_kernel'] else 'chunked torch path'}")
    if pool is not None:
        print(f"# public pool: {pool.shape[0]} from {pool_src}")
    print(f"# {args.repeats} interleaved rounds (best and median), loading took {load_s:.1f} s (not timed)")

    chunk_rows = max(1, ((1 << 28) if device.type == "cuda" else (1 << 20)) // (d * x.element_size()))
    results = {}
    for setting in settings:
        if setting == "inside":
            k, pub, kw = 4, None, {}
        elif setting == "cross":
            k, pub, kw = 6, pool, {"public": pool, "num_private": 2, "dom": DOM}
        else:
            raise SystemExit(f"unknown setting {setting!r}")
        label = f"{setting} k={k}"
        buf, fbuf = torch.empty_like(x), torch.empty_like(x)
        srcs = [x] + [x.roll((j * n) // k, 0) for j in range(1, k)]  # distinct memory, built untimed
        fns = {
            "a": lambda: instahide.encrypt(x, y, k=k, num_classes=NUM_CLASSES, **kw),
            "a'": lambda: instahide.encrypt(x, y, k=k, num_classes=NUM_CLASSES, out=buf, **kw),
            **({"c'": lambda: instahide.encrypt(x, y, k=k, num_classes=NUM_CLASSES, out=buf, fused=False, **kw)}
               if kernel.supports(x) else {}),
            "f": lambda: streaming_floor(srcs, chunk_rows),
            "f'": lambda: streaming_floor(srcs, chunk_rows, out=fbuf),
        }
        if not args.no_reference:
            # The reference mixed public images from a window x_help of the first n rows of its public
            # set. A 10,000-image pool has no n=50,000-row window, so it is emulated by n rows drawn at
            # random from the pool, built once outside the timing (in the reference it is a slice).
            x_help = None if pub is None else pub[torch.randint(len(pub), (n,), device=device)]
            fns["b"] = lambda: reference_encrypt(x, y, k, x_help=x_help)
        r = race(fns, args.repeats, device, no_warmup=("b",))
        del srcs, buf, fbuf
        for m in r.values():
            m["images_per_s"] = n / m["best_s"]
        r["a_over_f"] = r["a"]["best_s"] / r["f"]["best_s"]
        r["a_out_over_f_out"] = r["a'"]["best_s"] / r["f'"]["best_s"]
        if "c'" in r:
            r["torch_over_fused"] = r["c'"]["best_s"] / r["a'"]["best_s"]
        if "b" in r:
            r["b_over_a"] = r["b"]["best_s"] / r["a"]["best_s"]
        if not args.no_profile:
            r["profile"] = profile_library(x, y, k, pub, args.repeats, device, chunk_rows)
        r["runnable_others_after"] = machine()["runnable_others"]
        results[label] = r

    names = {"a": "(a) encrypt, fresh output", "a'": "(a') encrypt, out=", "f": "(f) floor, fresh output",
             "f'": "(f') floor, out=", "b": "(b) reference approach", "c'": "(c') encrypt, out=, torch"}
    print()
    print(f"{'setting':<12} {'method':<27} {'best_s':>8} {'median_s':>9} {'img/s':>12}  ratio (best times)")
    for label, r in results.items():
        for key in ("a", "f", "a'", "f'", "c'", "b"):
            if key not in r:
                continue
            m = r[key]
            ratio = {"f": f"a/f = {r['a_over_f']:.2f}x (target <= 1.5)",
                     "f'": f"a'/f' = {r['a_out_over_f_out']:.2f}x (target <= 1.5)",
                     "c'": f"c'/a' = {r.get('torch_over_fused', 0):.2f}x (the fused kernel's gain)",
                     "b": f"b/a = {r.get('b_over_a', 0):.1f}x speed-up (target >= 10)"}.get(key, "")
            print(f"{label:<12} {names[key]:<27} {m['best_s']:8.3f} {m['median_s']:9.3f} "
                  f"{m['images_per_s']:12,.0f}  {ratio}")
    if not args.no_profile:
        for label, r in results.items():
            print(f"\nper-stage profile, {label} (best of {args.repeats} interleaved rounds, seconds):")
            print(f"  {'stage':<28} {'library':>8}  {'floor':<22} {'floor_s':>8} {'ratio':>7}")
            for stage, lib, fname, fs in r["profile"]["rows"]:
                tail = (f"{fname:<22} {fs:8.3f} {lib / fs:6.2f}x" if fname else f"{'-':<22} {'':>8} {'':>7}")
                print(f"  {stage:<28} {lib:8.3f}  {tail}")
        print(f"\n# other runnable processes after: "
              f"{', '.join(str(r['runnable_others_after']) for r in results.values())}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": config, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
