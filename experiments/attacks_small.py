"""Attacks on a small challenge made here: what Mixup demixing, the oracle decoder and generator-seed
recovery reach, in numbers, against the scheme's settings and pixel scalings.

Challenge: the first ``--n`` CIFAR-10 test images, ``--T`` encryptions each (epoch-major), cross-dataset
k=6 (2 private + 4 public), c1 = 0.65, c2 = 0.3, a public pool of ``--pool`` patches of the photographs
that ship with scikit-image / scikit-learn; keys from research seed 0 (default scheme) or legacy seed
``--legacy-seed``. Scores: instahide.challenge.score (Max_SSIM as in docs/challenge.md, "Format").
Results: docs/audit.md.

  .venv/bin/python experiments/attacks_small.py --n 20 --T 50 --pool 4000 --json docs/attacks_small.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide import KeyGenerator, LegacyGenerator  # noqa: E402
from instahide.attacks import demix, oracle_decode, recover_seed  # noqa: E402
from instahide.challenge import make_challenge, score  # noqa: E402
from instahide.data import load_dataset, load_public_pool  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar-10-batches-py"))
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--pool", type=int, default=4000)
    p.add_argument("--legacy-seed", type=int, default=12345)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("cifar10", root=args.root, split="test")
    priv, lab = ds.images[:args.n], ds.labels[:args.n]
    pool = load_public_pool("builtin", n=args.pool, size=(32, 32), channels=3, seed=0).images
    rows = []

    def record(attack, setting, scaling, res, seconds, extra=None):
        s = res.summary() if res is not None else {}
        row = {"attack": attack, "setting": setting, "scaling": scaling, "Max_SSIM": s.get("Max_SSIM"),
               "Mean_SSIM": s.get("Mean_SSIM"), "share_above_0.8": s.get("share_max_ssim_above_0.8"),
               "seconds": round(seconds, 1), **(extra or {})}
        rows.append(row)
        print(json.dumps(row), flush=True)

    common = dict(T=args.T, k=6, num_private=2)
    for scaling in ("pm1", "unit"):
        for mode in ("mixup", "instahide"):
            enc, label, truth = make_challenge(priv, lab, pool, mode=mode, scaling=scaling,
                                               generator=KeyGenerator.from_seed(0), **common)
            t = time.perf_counter()
            d = demix(enc, label, n_private=args.n, num_private=2)
            record("Mixup demixing", mode, scaling, score(d.decryption, truth), time.perf_counter() - t)
            t = time.perf_counter()
            o = oracle_decode(enc, truth.indices, truth.coefficients, 2, args.n, masked=mode == "instahide",
                              pixel_range="unit" if scaling == "unit" else "pm1",
                              evaluate_with=truth.private if mode == "instahide" and scaling == "pm1" else None)
            record("oracle decoder", mode, scaling, score(o.decryption, truth), time.perf_counter() - t,
                   {"sign_chosen_by": o.sign_chosen_by})
    # generator-seed recovery: legacy keys vs the default keys
    enc, label, truth = make_challenge(priv, lab, pool, scaling="pm1", legacy=True,
                                       generator=LegacyGenerator(args.legacy_seed), **common)
    t = time.perf_counter()
    rec = recover_seed(enc, label, n_private=args.n, k=6, num_private=2, seed_range=(0, 2 ** 16))
    record("seed recovery", f"legacy keys, seed {args.legacy_seed} in [0, 2^16)", "pm1",
           score(rec.decryption, truth) if rec else None, time.perf_counter() - t,
           {"seed_found": None if rec is None else rec.seed})
    enc, label, truth = make_challenge(priv, lab, pool, scaling="pm1", generator=KeyGenerator.from_entropy(), **common)
    t = time.perf_counter()
    rec = recover_seed(enc, label, n_private=args.n, k=6, num_private=2, seed_range=(0, 2 ** 16))
    record("seed recovery", "default keys (SHAKE-256, 256-bit OS entropy)", "pm1",
           score(rec.decryption, truth) if rec else None, time.perf_counter() - t,
           {"seed_found": None if rec is None else rec.seed})
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "torch": torch.__version__,
                                               "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
