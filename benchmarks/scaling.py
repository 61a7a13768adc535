"""Out-of-core encryption: time and peak anonymous memory against N, in memory against memory-mapped,
one rank against two.

Rerun (from the repository root; large inputs and outputs go under ``--work``, deleted at the end)::

    .venv/bin/python benchmarks/scaling.py targets --work /tmp/ooc --json docs/bench_outofcore_targets.json
    .venv/bin/python benchmarks/scaling.py sweep --work /tmp/ooc --json docs/bench_scaling_cpu.json \\
        --plot docs/img/scaling.png

``targets`` runs the two memory targets of docs/outofcore.md as the command line runs them:
``instahide encrypt --dataset arrays --root private.npy`` on 150,000 synthetic 64x64 RGB images
(uint8, channels last, 1.8 GB on disk; 7.4 GB as float32), and CIFAR-10's 50,000 training images with
``--public pool.npy`` of 1,000,000 synthetic 32x32 patches (3.1 GB on disk; 12.3 GB as float32).

``sweep`` measures, for each N of a grid (32x32 images: 10^4 .. 10^6; 224x224: 10^3 .. 10^4), inside
k=4, one epoch, each in a fresh process:

(m1) ``instahide encrypt --dataset arrays --root X.npy`` (memory-mapped uint8, chunks of rows);
(m2) the same under ``torchrun --standalone --nproc-per-node=2`` (each rank half the rows, its own folder);
(mem) the in-memory path the command used before: ``load_arrays`` -> ``to_tensor()`` (the whole set as
      float32) -> one ``encrypt`` call -> the output written whole; skipped where input and output would
      not fit in this machine's memory (``--mem-limit``);
(floor) the streaming floor from the same memory-mapped input: every row read once, normalised to
      float32 and written to a ``.npy`` of the output's size, in the command's chunks; no mixing, no keys.

Each process's peak anonymous memory is sampled from ``/proc/<pid>/status`` (``RssAnon``, summed
over the process tree: torchrun's ranks included) every 20 ms; ``VmHWM`` of the main process is
reported beside it (it counts the memory map's file pages too). Times include starting Python,
loading the data and writing the output to disk (the disk and page cache are shared with whatever
else runs on the machine: absolute times are noisy, the ratios measured side by side less so).
The header records the CPU model, the core count and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
CIFAR = ROOT.parent / "shared" / "data" / "cifar-10-batches-py"


# -- inputs --------------------------------------------------------------------------------------
def make_npy(path: Path, n: int, size: int, channels: int = 3, seed: int = 0, chunk: int = 1 << 28) -> Path:
    """A synthetic uint8 ``(n, size, size, channels)`` ``.npy`` (smooth random blobs plus noise, so
    that the values are spread over 0..255), written in chunks; reused if it exists with that shape."""
    shape = (n, size, size, channels)
    if path.is_file():
        try:
            if np.load(path, mmap_mode="r").shape == shape:
                return path
        except ValueError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    rng = np.random.default_rng(seed)
    rows = max(1, chunk // (size * size * channels))
    base = rng.integers(0, 256, (64, size, size, channels), dtype=np.uint8)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        pick = rng.integers(0, 64, e - s)
        noise = rng.integers(0, 32, (e - s, 1, 1, channels), dtype=np.uint8)
        out[s:e] = base[pick] // 2 + noise * 3
    out.flush()
    del out
    return path


# -- measuring a process -------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return pids


def _status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def measured(argv: list[str], *, env=None, period: float = 0.02) -> dict:
    """Run ``argv``; its wall time, return code, and the peak of its process tree's RssAnon."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_anon, hwm = 0, 0
    while proc.poll() is None:
        pids = _tree(proc.pid)
        stats = [_status(p) for p in pids]
        peak_anon = max(peak_anon, sum(s.get("RssAnon", 0) for s in stats))
        hwm = max(hwm, stats[0].get("VmHWM", 0) if stats else 0)
        time.sleep(period)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    return {"argv": argv, "rc": proc.returncode, "seconds": round(seconds, 2), "peak_rss_anon_bytes": peak_anon,
            "main_vmhwm_bytes": hwm, "stdout_tail": out[-400:], "stderr_tail": err[-600:] if proc.returncode else ""}


def machine() -> dict:
    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_at_start": open("/proc/loadavg").read().split()[:3],
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def encrypt_cli(root: Path, out: Path, *extra: str, dataset: str = "arrays", ranks: int = 1) -> list[str]:
    head = [PY, "-m", "instahide"] if ranks == 1 else [PY, "-m", "torch.distributed.run", "--standalone",
                                                       f"--nproc-per-node={ranks}", "-m", "instahide"]
    return [*head, "encrypt", "--dataset", dataset, "--root", str(root), "--out", str(out), "--force",
            "--progress", "false", *extra]


IN_MEMORY = r"""
import sys, numpy as np, torch
from instahide.data import load_arrays
from instahide.scheme import encrypt
ds = load_arrays(sys.argv[1])
x, _ = ds.to_tensor()                       # the whole set as float32
enc = encrypt(x, k=4)                       # one call, the whole output in memory
with open(sys.argv[2], "wb") as fh:         # written whole, as the command wrote an epoch
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                              "shape": (len(x), *x.shape[2:], x.shape[1])})
    fh.write(memoryview(np.ascontiguousarray(enc.images.permute(0, 2, 3, 1).numpy())).cast("B"))
"""

FLOOR = r"""
import sys, numpy as np, torch
from instahide.cli.encrypt_cmd import chunk_rows
from instahide.data import load_arrays
from instahide.scheme import Uint8Images
ds = load_arrays(sys.argv[1])
st = Uint8Images(ds.images, ds.mean, ds.std)
n, (c, h, w) = len(ds), ds.shape
step = chunk_rows(c * h * w, n)
with open(sys.argv[2], "wb") as fh:         # every row read once, normalised, written once
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (n, h, w, c)})
    for s in range(0, n, step):
        rows = st.rows(np.arange(s, min(n, s + step)))
        fh.write(memoryview(np.ascontiguousarray(rows.permute(0, 2, 3, 1).numpy())).cast("B"))
"""


# -- the two targets -----------------------------------------------------------------------------
def targets(work: Path, keep: bool) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "limit_bytes": int(1.5e9), "runs": []}
    try:
        private = make_npy(work / "private.npy", 150_000, 64)
        r = measured(encrypt_cli(private, work / "enc64"))
        r["what"] = "150,000 x 64x64x3 --dataset arrays --root private.npy (inside k=4, 1 epoch)"
        results["runs"].append(r)
        print(json.dumps({k: r[k] for k in ("what", "rc", "seconds", "peak_rss_anon_bytes")}), flush=True)
        shutil.rmtree(work / "enc64", ignore_errors=True)
        if not keep:
            private.unlink()
        pool = make_npy(work / "pool.npy", 1_000_000, 32, seed=1)
        r = measured(encrypt_cli(CIFAR, work / "encpool", "--public", str(pool), dataset="cifar10"))
        r["what"] = "CIFAR-10 train (50,000) --public pool.npy of 1,000,000 32x32x3 patches (k=6, 2 private)"
        results["runs"].append(r)
        print(json.dumps({k: r[k] for k in ("what", "rc", "seconds", "peak_rss_anon_bytes")}), flush=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


# -- the sweep -----------------------------------------------------------------------------------
def sweep(work: Path, grid32, grid224, mem_limit: float, ranks2: bool, keep: bool, json_path,
          only=("m1", "m2", "floor", "mem")) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "runs": []}
    try:
        for size, grid in ((32, grid32), (224, grid224)):
            for n in grid:
                src = make_npy(work / f"x{size}_{n}.npy", n, size)
                out_bytes = n * size * size * 3 * 4
                methods = [("m1", encrypt_cli(src, work / "out"))]
                if ranks2:
                    methods.append(("m2", encrypt_cli(src, work / "out", ranks=2)))
                methods.append(("floor", [PY, "-c", FLOOR, str(src), str(work / "floor.npy")]))
                if 2 * out_bytes + n * size * size * 3 <= mem_limit:
                    methods.append(("mem", [PY, "-c", IN_MEMORY, str(src), str(work / "mem.npy")]))
                for name, argv in methods:
                    if name not in only:
                        continue
                    started = time.strftime("%H:%M:%S", time.gmtime())
                    r = measured(argv)
                    r["started_utc"] = started
                    r.update(method=name, size=size, n=n)
                    results["runs"].append(r)
                    print(json.dumps({k: r[k] for k in ("method", "size", "n", "rc", "seconds", "peak_rss_anon_bytes")}),
                          flush=True)
                    for junk in (work / "out", work / "floor.npy", work / "mem.npy"):
                        shutil.rmtree(junk, ignore_errors=True) if junk.is_dir() else junk.unlink(missing_ok=True)
                    if json_path:
                        Path(json_path).write_text(json.dumps(results, indent=1))
                if not keep:
                    src.unlink()
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


def table(results: dict) -> str:
    """The sweep as a markdown table: per size and N, each method's seconds and peak RssAnon, and the
    ratio of the memory-mapped encryption to the streaming floor."""
    rows = ["| images | N | m1: mmap, 1 rank | m2: mmap, 2 ranks | mem: in memory | floor | m1 / floor |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    keys = sorted({(r["size"], r["n"]) for r in results["runs"]})
    for size, n in keys:
        got = {r["method"]: r for r in results["runs"] if (r["size"], r["n"]) == (size, n) and r["rc"] == 0}
        cell = [f"{got[m]['seconds']:.0f} s, {got[m]['peak_rss_anon_bytes'] / 2 ** 30:.2f} GiB" if m in got else "-"
                for m in ("m1", "m2", "mem", "floor")]
        ratio = f"{got['m1']['seconds'] / got['floor']['seconds']:.2f}" if "m1" in got and "floor" in got else "-"
        rows.append(f"| {size}x{size}x3 | {n:,} | " + " | ".join(cell) + f" | {ratio} |")
    return "\n".join(rows)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    names = {"m1": "memory-mapped, 1 rank", "m2": "memory-mapped, 2 ranks", "mem": "in memory (float32)",
             "floor": "streaming floor (read, normalise, write)"}
    for col, size in enumerate((32, 224)):
        for method, label in names.items():
            runs = sorted((r for r in results["runs"] if r["size"] == size and r["method"] == method and r["rc"] == 0),
                          key=lambda r: r["n"])
            if not runs:
                continue
            ns = [r["n"] for r in runs]
            axes[0, col].plot(ns, [r["seconds"] for r in runs], "o-", label=label)
            axes[1, col].plot(ns, [r["peak_rss_anon_bytes"] / 2 ** 30 for r in runs], "o-", label=label)
        for row, ylabel in enumerate(("seconds", "peak RssAnon (GiB)")):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"N ({size}x{size}x3 images)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        axes[0, col].legend(fontsize=7)
    fig.suptitle(f"instahide encrypt, k=4, 1 epoch: {results['machine']['cpu']}, {results['machine']['cores']} cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["targets", "sweep", "plot", "table"])
    ap.add_argument("--work", default="/tmp/instahide-scaling", help="scratch folder for inputs and outputs")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--plot", default=None, help="(sweep, plot) write the figure here")
    ap.add_argument("--n32", default="10000,30000,100000,300000,1000000")
    ap.add_argument("--n224", default="1000,3000,10000")
    ap.add_argument("--mem-limit", type=float, default=0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    help="skip the in-memory path where input + 2 outputs exceed this many bytes")
    ap.add_argument("--no-ranks2", action="store_true", help="skip the two-rank runs")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs")
    ap.add_argument("--methods", default="m1,m2,floor,mem", help="(sweep) which of m1, m2, floor, mem to run")
    args = ap.parse_args()
    work = Path(args.work)
    if args.what == "targets":
        results = targets(work, args.keep)
    elif args.what == "sweep":
        results = sweep(work, [int(v) for v in args.n32.split(",") if v], [int(v) for v in args.n224.split(",") if v],
                        args.mem_limit, not args.no_ranks2, args.keep, args.json, tuple(args.methods.split(",")))
    else:
        results = json.loads(Path(args.json).read_text())
        if args.what == "table":
            print(table(results))
    if args.json and args.what in ("targets", "sweep"):
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, Path(args.plot))


if __name__ == "__main__":
    main()
