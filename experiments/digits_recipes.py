"""Digits, InstaHide inside k=4 with |x| first: the demo's recipe against variants that might lift the
clean test accuracy (docs/accuracy.md, "The demo"): the short recipe, width 2, 120 or 200 epochs,
weight averaging, and their combinations. One JSON line per run in experiments/results/digits_recipes.jsonl.

Usage (one thread; about 15 s to 3 minutes a run on a busy 2-core machine):
  OMP_NUM_THREADS=1 .venv/bin/python experiments/digits_recipes.py [VARIANT ...] [--mode mixup] [--seeds 0 1 2]
(VARIANT: the keys of VARIANTS; default all, InstaHide inside k=4, seeds 0 and 1.) With --mode mixup
the same recipe trains Mixup k=4 (no |x| stage), the comparison at equal recipes.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.train import TrainConfig, load_train_data, train  # noqa: E402

VARIANTS = {"base": {}, "short": dict(recipe="short"), "width2": dict(width=2.0), "ep120": dict(epochs=120),
            "short_ep120": dict(recipe="short", epochs=120), "short_ep200": dict(recipe="short", epochs=200),
            "short_ep120_ema": dict(recipe="short", epochs=120, ema=0.998),
            "short_w2_ep120": dict(recipe="short", epochs=120, width=2.0)}
RESULTS = ROOT / "experiments" / "results" / "digits_recipes.jsonl"

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("variants", nargs="*", metavar="VARIANT", help=" | ".join(VARIANTS))
ap.add_argument("--mode", default="instahide", choices=["instahide", "mixup"])
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
args = ap.parse_args()
if set(args.variants) - set(VARIANTS):
    ap.error(f"unknown variant(s) {sorted(set(args.variants) - set(VARIANTS))}; choose from {list(VARIANTS)}")
torch.set_num_threads(1)
data = None
with tempfile.TemporaryDirectory() as tmp:
    for name in args.variants or list(VARIANTS):
        for seed in args.seeds:
            kw = dict(dataset="digits", epochs=60, batch_size=64, lr=0.05, progress=False, mode=args.mode, k=4)
            cfg = TrainConfig.make(**{**kw, **VARIANTS[name]}, research_seed=seed, out=f"{tmp}/{name}/s{seed}")
            data = data or load_train_data(cfg, "cpu")
            t0 = time.time()
            final = train(cfg, data=data)
            label = name if args.mode == "instahide" else f"{args.mode} {name}"
            print(f"{label} seed {seed}: final {100 * final['final_test_acc']:.1f}%, best "
                  f"{100 * final['best_test_acc']:.1f}% ({time.time() - t0:.0f} s)", flush=True)
            with open(RESULTS, "a") as f:
                f.write(json.dumps({"variant": label, "seed": seed, "final_test_acc": final["final_test_acc"],
                                    "best_test_acc": final["best_test_acc"], "seconds": time.time() - t0,
                                    "config": final["config"]}) + "\n")
