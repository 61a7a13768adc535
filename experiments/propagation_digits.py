"""Why the oracle's propagation is off below 16 x 16 pixels: on the 8 x 8 digits it lowers Max_SSIM.

Per challenge (10 random digits x T = 40, cross-dataset k = 6 with built-in photograph patches, [-1, 1]
pixels, fresh keys from the research seed), the oracle on the TRUE keys without and with 12 sweeps of
propagation, the global sign chosen by the truth.

  OMP_NUM_THREADS=1 .venv/bin/python experiments/propagation_digits.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from instahide.attacks import oracle_decode  # noqa: E402
from instahide.challenge import make_challenge, score  # noqa: E402
from instahide.data import load_dataset, load_public_pool  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    ds = load_dataset("digits")
    pool = load_public_pool("builtin", 500, (8, 8), 1).images
    for seed in args.seeds:
        sel = np.random.default_rng(seed).choice(len(ds.images), 10, replace=False)
        enc, _, truth = make_challenge(ds.images[sel], ds.labels[sel], pool, T=40, k=6, num_private=2,
                                       scaling="pm1", research_seed=f"propagation-digits-{seed}")
        got = {}
        for sweeps in (0, 12):
            o = oracle_decode(enc, truth.indices, truth.coefficients, truth.num_private, truth.n,
                              evaluate_with=truth.private, propagate=sweeps)
            got[sweeps] = score(o.decryption, truth).max_ssim
        print(f"seed {seed}: Max_SSIM without propagation {got[0]:.3f}, with 12 sweeps {got[12]:.3f}", flush=True)


if __name__ == "__main__":
    main()
