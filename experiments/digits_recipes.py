"""Digits, InstaHide inside k=4 with |x| first: the demo's recipe against variants that might lift the
clean test accuracy (docs/accuracy.md, "The demo"): the short recipe, width 2, 120 or 200 epochs,
weight averaging, and their combinations. One JSON line per run in experiments/results/digits_recipes.jsonl.

Usage (one thread; about 1-8 minutes a run on a busy 2-core machine):
  OMP_NUM_THREADS=1 .venv/bin/python experiments/digits_recipes.py [base short width2 ep120]
"""
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

torch.set_num_threads(1)
data = None
with tempfile.TemporaryDirectory() as tmp:
    for name in sys.argv[1:] or list(VARIANTS):
        for seed in (0, 1):
            kw = dict(dataset="digits", epochs=60, batch_size=64, lr=0.05, progress=False, mode="instahide", k=4)
            cfg = TrainConfig.make(**{**kw, **VARIANTS[name]}, research_seed=seed, out=f"{tmp}/{name}/s{seed}")
            data = data or load_train_data(cfg, "cpu")
            t0 = time.time()
            final = train(cfg, data=data)
            print(f"{name} seed {seed}: final {100 * final['final_test_acc']:.1f}%, best "
                  f"{100 * final['best_test_acc']:.1f}% ({time.time() - t0:.0f} s)", flush=True)
            with open(RESULTS, "a") as f:
                f.write(json.dumps({"variant": name, "seed": seed, "final_test_acc": final["final_test_acc"],
                                    "best_test_acc": final["best_test_acc"], "seconds": time.time() - t0,
                                    "config": final["config"]}) + "\n")
