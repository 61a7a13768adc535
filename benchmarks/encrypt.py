"""Encryption throughput: this library against the reference code's approach and the memory floor.

Rerun (from the repository root; CPU, the configuration recorded in docs/benchmarks.md)::

    PYTHONPATH=src .venv/bin/python benchmarks/encrypt.py --json docs/bench_encrypt_cpu.json

and on a GPU::

    PYTHONPATH=src python benchmarks/encrypt.py --device cuda --json docs/bench_encrypt_cuda.json

What it measures, for all ``--n`` (default 50,000) CIFAR-10 training images, in two settings:
inside-dataset k=4, and cross-dataset k=6 (2 private + 4 public slots, c2 = 0.3) with a public pool
of ``--pool`` (default 10,000) tiny-imagenet photographs downsampled to 32x32:

(a)  ``instahide.encrypt(x, y, k=..., num_classes=10)``: the real API with default keys (a fresh
     SHAKE-256 keystream keyed from OS entropy), input checks, mixing, mask and label mixing.
(a') the same with a preallocated ``out=`` buffer (shows what allocating the output costs).
(b)  a faithful re-implementation of the reference code's approach: ``np.random.normal`` then a
     per-row Python rejection loop for the coefficients, one ``torch.randperm`` per slot, the mask
     drawn value by value with ``torch.randint(2, ...)`` and multiplied in, labels mixed from
     one-hot vectors.
(c)  the memory floor: the same bytes streamed with no gathers and no randomness: ``k`` contiguous
     reads of a dataset-sized tensor and one dataset-sized write, in cache-sized row chunks.

The data come from the library's own loader (``instahide.data.load_dataset("cifar10", root=...)``,
normalised with the CIFAR-10 mean/std); loading and normalising them is not timed. Every measurement
runs ``--repeats`` times (default 3); the table reports the best (min) and the median.

Columns of the table:
    setting     inside k=4 / cross k=6
    method      (a), (a'), (b), (c) as above
    best_s      fastest of the repeats, seconds for all n images
    median_s    median of the repeats, seconds
    img/s       n / best_s
    a/x         best_s(x) / best_s(a): for (b) the speed-up of the library over the reference
                approach (target >= 5), for (c) how many times slower than the memory floor the
                library is, printed as best_s(a) / best_s(c) (target <= 3)

A profile of (a) follows (``--no-profile`` skips it): the time of each stage of the library call,
measured separately: the centring check, key sampling (coefficients, partners, mask bits from the
SHAKE-256 keystream), ``apply_key`` with and without the mask bits (the latter is its chunked
``embedding_bag`` gathers and copy), label mixing, two inner steps of ``apply_key`` run by the library's
own calls over the whole output (the NaN/Inf guard's float32 sum, ``apply_mask_``), plus a raw SHAKE-256
digest of the mask's size. Every stage calls the library; nothing of it is re-implemented here.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
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
from instahide.scheme import (KeyGenerator, apply_key, apply_mask_, mix_labels, sample_coefficients,  # noqa: E402
                              sample_key, sample_mask_bits, sample_partners)
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


# -- (c) the memory floor ----------------------------------------------------------------------------
def memory_floor(x, k, chunk_rows, out=None):
    """k contiguous reads of an n-row tensor and one n-row write, no gathers, no randomness.

    Slot j reads x starting at row j*n/k (wrapping), so the k reads of one output chunk come from k
    different places in memory and none is served from cache by an earlier slot; the output chunk
    (cache-sized) is written back once.
    """
    n = x.shape[0]
    xf = x.reshape(n, -1)
    if out is None:
        out = torch.empty_like(x)
    of = out.view(n, -1)
    offs = [(j * n) // k for j in range(k)]
    c = [0.25 + 0.1 * j for j in range(k)]
    for s in range(0, n, chunk_rows):
        e = min(n, s + chunk_rows)
        o = of[s:e]
        for j in range(k):
            t = (s + offs[j]) % n
            m = min(e - s, n - t)  # contiguous piece, then the wrapped rest (rare)
            pieces = [(o[:m], xf[t:t + m])] + ([(o[m:], xf[:e - s - m])] if m < e - s else [])
            for dst, src in pieces:
                if j == 0:
                    torch.mul(src, c[j], out=dst)
                else:
                    dst.add_(src, alpha=c[j])
    return out


# -- timing -----------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, repeats, device, warmup=True):
    if warmup:
        fn()
        _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        r = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        del r
    return {"best_s": min(times), "median_s": statistics.median(times), "all_s": times}


def profile_library(x, y, k, pool, repeats, device):
    """Time each stage of encrypt() separately (best of repeats, seconds), with the library's functions."""
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
    bits = key.mask_bits.to(x.device)
    stages = {
        "centring check": lambda: (check_centred(x, k, "images"), cross and check_centred(pool, k, "public")),
        "key: coefficients": lambda: sample_coefficients(n, k, upper=UPPER, dom=dom, num_private=p, generator=gen),
        "key: partners": lambda: sample_partners(n, k, num_private=p, pool_size=pool_size, generator=gen),
        "key: mask bits (SHAKE-256)": lambda: sample_mask_bits(n, d, gen),
        "key: sample_key total": lambda: sample_key(n, k, tuple(x.shape[1:]), upper=UPPER, dom=dom, num_private=p,
                                                    pool_size=pool_size, generator=gen),
        # the same key without the mask: apply_key's embedding_bag gathers and copy to out, chunked
        "apply: mixing only (embedding_bag)": lambda: apply_key(x, key.unmasked(), public=pool, out=out),
        "apply: mixing + mask (apply_key)": lambda: apply_key(x, key, public=pool, out=out),
        "labels: mix_labels (incl. one-hot)": lambda: mix_labels(check_labels(y, n, NUM_CLASSES, x.device)[0], key),
        # two of apply_key's inner steps, each as one call over the whole output (apply_key runs them
        # per cache-sized chunk): the NaN/Inf guard's float32 sum and the sign-bit mask
        "  inner: finite check, float32 sum": lambda: out.sum(dtype=torch.float32),
        "  inner: mask apply_mask_ (sign-bit XOR)": lambda: apply_mask_(out.view(n, d), bits),
    }
    res = {name: timeit(fn, repeats, device)["best_s"] for name, fn in stages.items()}
    res["shake-256 raw digest of the mask bytes"] = timeit(
        lambda: __import__("hashlib").shake_256(b"x" * 64).digest(n * ((d + 7) // 8)), repeats, device)["best_s"]
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50000, help="private images encrypted per call (default 50000)")
    ap.add_argument("--pool", type=int, default=10000, help="public pool size for cross k=6 (default 10000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
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

    cpu_model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    config = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "instahide": getattr(instahide, "__version__", "?"),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_model": cpu_model, "cpu_count": __import__("os").cpu_count(), "threads": torch.get_num_threads(),
        "n": n, "image_shape": list(x.shape[1:]), "dtype": str(x.dtype), "pool_size": args.pool,
        "data": data_src, "public": pool_src, "repeats": args.repeats, "upper": UPPER, "dom": DOM,
        "load_s_not_timed": round(load_s, 2),
    }
    print(f"# instahide encryption benchmark  {config['timestamp']}")
    print(f"# torch {torch.__version__}, device {device}{' (' + config['gpu'] + ')' if config['gpu'] else ''}, "
          f"CPU {cpu_model}, {config['cpu_count']} cores, torch threads {torch.get_num_threads()}")
    print(f"# data: {n} x {tuple(x.shape[1:])} {x.dtype} from {data_src}")
    if pool is not None:
        print(f"# public pool: {pool.shape[0]} from {pool_src}")
    print(f"# repeats {args.repeats} (best and median), loading took {load_s:.1f} s (not timed)")

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
        r = {}
        buf = torch.empty_like(x)
        r["a"] = timeit(lambda: instahide.encrypt(x, y, k=k, num_classes=NUM_CLASSES, **kw), args.repeats, device)
        r["a'"] = timeit(lambda: instahide.encrypt(x, y, k=k, num_classes=NUM_CLASSES, out=buf, **kw),
                         args.repeats, device)
        del buf
        r["c"] = timeit(lambda: memory_floor(x, k, chunk_rows), args.repeats, device)
        if not args.no_reference:
            # The reference mixed public images from a window x_help of the first n rows of its public
            # set. A 10,000-image pool has no n=50,000-row window, so we emulate that window with n rows
            # drawn at random from the pool, built once outside the timing (in the reference it is a
            # slice, i.e. free).
            x_help = None if pub is None else pub[torch.randint(len(pub), (n,), device=device)]
            r["b"] = timeit(lambda: reference_encrypt(x, y, k, x_help=x_help), args.repeats, device,
                            warmup=False)
            del x_help
        for m in r.values():
            m["images_per_s"] = n / m["best_s"]
        if "b" in r:
            r["speedup_a_over_b"] = r["b"]["best_s"] / r["a"]["best_s"]
        r["a_over_floor_c"] = r["a"]["best_s"] / r["c"]["best_s"]
        if not args.no_profile:
            r["profile_a_best_s"] = profile_library(x, y, k, pub, args.repeats, device)
        results[label] = r

    names = {"a": "(a) library encrypt", "a'": "(a') library, out= buffer", "b": "(b) reference approach",
             "c": "(c) memory floor"}
    print()
    print(f"{'setting':<12} {'method':<28} {'best_s':>8} {'median_s':>9} {'img/s':>12}  ratio")
    for label, r in results.items():
        for key in ("a", "a'", "b", "c"):
            if key not in r:
                continue
            m = r[key]
            ratio = ""
            if key == "b":
                ratio = f"a/b speed-up {r['speedup_a_over_b']:.1f}x (target >= 5x)"
            elif key == "c":
                ratio = f"a/c {r['a_over_floor_c']:.2f}x the floor (target <= 3x)"
            elif key == "a'":
                ratio = f"{m['best_s'] / r['a']['best_s']:.2f}x of (a)"
            print(f"{label:<12} {names[key]:<28} {m['best_s']:8.3f} {m['median_s']:9.3f} "
                  f"{m['images_per_s']:12,.0f}  {ratio}")
    if not args.no_profile:
        for label, r in results.items():
            print(f"\nprofile of (a), {label} (best of {args.repeats}, seconds; stages timed separately):")
            for stage, s in r["profile_a_best_s"].items():
                print(f"  {stage:<42} {s:8.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": config, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
