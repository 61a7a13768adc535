"""Inference with InstaHide on finished runs: clean accuracy against the accuracy of averaging the
model's probabilities over T = 8 encryptions of each test image (fresh keys from research seed 1),
with the reference coefficients and with the test image's own coefficient >= 0.5
(docs/accuracy.md, "Inference with InstaHide").

Usage (run folders of experiments/accuracy_table.py, seed 0):
  OMP_NUM_THREADS=1 .venv/bin/python experiments/inference_probe.py instahide-inside-k-4---x--first
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide import KeyGenerator  # noqa: E402
from instahide.train import evaluate, evaluate_instahide, load_model, load_train_data  # noqa: E402

torch.set_num_threads(1)
for name in sys.argv[1:]:
    model, cfg, _ = load_model(ROOT / "experiments" / "runs" / "cpu" / "cifar10" / name / "seed0" / "checkpoint.pt")
    data = load_train_data(cfg, "cpu")
    x, y = data.x_test, data.y_test
    s = cfg.scheme
    clean = evaluate(model, x, y)["accuracy"]
    for own in (None, 0.5):
        r = evaluate_instahide(model, x, y, T=8, k=s.k, public=data.public,
                               num_private=s.num_private if s.cross else None, own_min=own,
                               generator=KeyGenerator.from_seed(1))
        print(name, "clean", round(100 * clean, 1), "own_min", own, [round(100 * a, 1) for a in r["accuracy"]],
              flush=True)
