"""Generator-seed search: the compiled filter against the numpy one, side by side in one run.

Rerun (from the repository root; the configuration recorded in docs/benchmarks.md)::

    .venv/bin/python benchmarks/seed_search.py --json docs/bench_seed_search.json

The labels are those of a legacy challenge (``--n`` private images x ``--T`` epochs, cross-dataset
k = 6 with 2 private slots, c1 = 0.65, c2 = 0.3, the reference code's keys from one 32-bit seed,
classes at random, rows shuffled), so every filter runs its "rows in any order" test. Methods, run
interleaved for ``--repeats`` rounds after one untimed warm-up (which also loads the compiled code):

(n)  ``seed_candidates``: the numpy filter, ``--numpy-seeds`` seeds;
(c1) ``scan_seeds`` with the compiled filter on one thread, ``--seeds`` seeds;
(cT) the same on ``--threads`` threads (default: all cores), ``--threads`` x ``--seeds`` seeds.

Each round scans a fresh stretch of the seed space (no seed is scanned twice). The table reports seeds
per second (best and median of the rounds), the ratios c1/n and cT/c1 from the best rates, and the
hours the whole space of 2^32 seeds takes at each rate. The header reports the CPU and the load.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encrypt import machine  # noqa: E402  (the CPU and load header of the encryption benchmark)

from instahide.attacks import _seed_kernel  # noqa: E402
from instahide.attacks.seed import scan_seeds, seed_candidates  # noqa: E402
from instahide.scheme.legacy import LegacyGenerator, legacy_key  # noqa: E402


def challenge_labels(n: int, T: int, seed: int) -> np.ndarray:  # noqa: N803 - the paper's name
    """float32 ``(n * T, 10)`` soft labels of a legacy cross-dataset k = 6 challenge, rows shuffled."""
    gen = LegacyGenerator(seed)
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 10, n)
    rows = []
    for _ in range(T):
        key = legacy_key(n, 6, (1, 1, 1), upper=0.65, dom=0.3, num_private=2, pool_size=n, masked=False, generator=gen)
        lam, idx = key.coefficients.numpy(), key.indices.numpy()
        lab = np.zeros((n, 10), np.float32)
        for r in range(n):
            for s in range(2):
                lab[r, cls[idx[r, s]]] += lam[r, s]
        rows.append(lab)
    lab = np.concatenate(rows)
    return lab[rng.permutation(len(lab))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20, help="private images per epoch (default 20)")
    p.add_argument("--T", type=int, default=50, help="epochs (default 50)")
    p.add_argument("--seeds", type=int, default=2 ** 22, help="seeds per compiled round and thread")
    p.add_argument("--numpy-seeds", type=int, default=2 ** 16, help="seeds per numpy round")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if not _seed_kernel.available():
        print("the compiled filter needs numba (pip install 'instahide[fast]')", file=sys.stderr)
        return 2
    true_seed = 3_000_000_000
    label = challenge_labels(args.n, args.T, true_seed)
    kw = dict(k=6, num_private=2, upper=0.65, dom=0.3)
    cursor = [2 ** 31]  # each call scans a fresh stretch

    def fresh(count: int) -> int:
        cursor[0] += count
        return cursor[0] - count

    def numpy_round() -> float:
        a = fresh(args.numpy_seeds)
        t0 = time.perf_counter()
        seed_candidates(np.arange(a, a + args.numpy_seeds), label, row_order="any", **kw)
        return args.numpy_seeds / (time.perf_counter() - t0)

    def compiled_round(threads: int) -> float:
        count = args.seeds * threads
        a = fresh(count)
        t0 = time.perf_counter()
        scan_seeds(a, a + count, label, row_order="any", threads=threads, batch=2 ** 20, **kw)
        return count / (time.perf_counter() - t0)

    methods = {"numpy": numpy_round, "compiled, 1 thread": lambda: compiled_round(1),
               f"compiled, {args.threads} threads": lambda: compiled_round(args.threads)}
    for fn in methods.values():  # warm-up: loads the compiled code
        fn()
    rates = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            rates[name].append(fn())
    # the seed itself is found (a check that the filter works on these labels)
    hit = scan_seeds(true_seed - 2 ** 16, true_seed + 2 ** 16, label, row_order="any", **kw)
    config = {"date": _dt.datetime.now().isoformat(timespec="seconds"), **machine(), "n": args.n, "T": args.T,
              "rows": args.n * args.T, "k": 6, "num_private": 2, "c1": 0.65, "c2": 0.3, "row_order": "any",
              "threads": args.threads, "seeds_per_compiled_round_and_thread": args.seeds,
              "seeds_per_numpy_round": args.numpy_seeds, "repeats": args.repeats,
              "true_seed_found": bool(true_seed in hit.tolist()), "candidates_around_true_seed": len(hit)}
    print(f"# seed search, {config['cpu_model']}, {config['cpu_count']} cores, load {config['loadavg_1min']}, "
          f"{args.n} x {args.T} shuffled legacy labels")
    print(f"{'method':<22} {'best seeds/s':>14} {'median':>14} {'2^32 seeds, hours':>18}")
    result = {}
    for name, r in rates.items():
        best, med = max(r), statistics.median(r)
        result[name] = {"best": best, "median": med, "rounds": r, "full_space_hours": 2 ** 32 / best / 3600}
        print(f"{name:<22} {best:>14.4g} {med:>14.4g} {2 ** 32 / best / 3600:>18.3f}")
    names = list(rates)
    ratio_c = result[names[1]]["best"] / result[names[0]]["best"]
    ratio_t = result[names[2]]["best"] / result[names[1]]["best"]
    print(f"compiled / numpy (1 thread each): {ratio_c:.1f}x; {args.threads} threads / 1 thread: {ratio_t:.2f}x; "
          f"the whole 2^32 space on {args.threads} threads: {result[names[2]]['full_space_hours'] * 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config, "rates": result,
                                               "ratios": {"compiled_over_numpy": ratio_c,
                                                          "threads_over_one": ratio_t}}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
