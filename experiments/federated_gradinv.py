"""The gradient eavesdropper on one federated party: what the Flower reply (weights only) gives away.

One party holds B private digits (8x8, the federated default data), the global model is at its seeded
initialisation (round 1), the party runs ONE local SGD step (local_epochs=1, batch_size=B, momentum 0,
weight decay 0) through :func:`instahide.federated.local_train` - the same function the ClientApp
wraps - and replies with the new weights. The eavesdropper holds the global weights and the reply,
recovers the gradient with :func:`instahide.attacks.gradinv.gradient_from_update` and inverts it with
:func:`~instahide.attacks.gradinv.invert_gradients` (labels unknown). Scores (SSIM, best pairing):
vanilla - recovered vs the private images; InstaHide k=4 - recovered vs the encryptions the party
actually trained on, and |recovered| vs the private images.

Usage:
  OMP_NUM_THREADS=1 .venv/bin/python experiments/federated_gradinv.py --steps 1000
Writes experiments/results/federated_gradinv.jsonl and docs/img/federated_gradinv.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.attacks.gradinv import gradient_from_update, invert_gradients  # noqa: E402
from instahide.federated import FedConfig, build_global_model, load_party, local_train  # noqa: E402
from instahide.federated.local import party_key_generator  # noqa: E402
from instahide.metrics import match_batches  # noqa: E402
from instahide.scheme import encrypt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--distance", default="cosine", help="gradient distance: cosine (published) or l2")
    ap.add_argument("--lr", type=float, default=0.1, help="inversion learning rate")
    ap.add_argument("--tv-weight", type=float, default=1e-4)
    ap.add_argument("--restarts", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, pics = [], []
    for mode in ("vanilla", "instahide"):
        cfg = FedConfig.make(mode=mode, k=4, num_parties=2, batch_size=args.batch, local_epochs=1, momentum=0.0,
                        weight_decay=0.0, lr=0.01, width=args.width, research_seed=0, min_party_size=4)
        party = load_party(cfg, 0)
        party.x, party.y = party.x[:args.batch], party.y[:args.batch]   # the party's B images: one step
        model = build_global_model(cfg, 1, 10)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        after, _ = local_train(before, party, cfg, server_round=1)     # exactly what the ClientApp sends
        grads = gradient_from_update(before, after, cfg.lr, model=model)
        model.load_state_dict(before)
        model.train()
        t0 = time.perf_counter()
        res = invert_gradients(model, grads, batch_size=args.batch, input_shape=party.shape, steps=args.steps,
                               seed=0, distance=args.distance, lr=args.lr, tv_weight=args.tv_weight,
                               restarts=args.restarts)
        seconds = time.perf_counter() - t0
        data_range = 1.0 / party.std[0]                                   # [0, 1] pixels after normalisation
        rec = res.images.detach()
        row = {"mode": mode, "batch": args.batch, "steps": args.steps, "width": args.width, "seconds": seconds,
               "distance": args.distance, "lr": args.lr, "tv_weight": args.tv_weight, "restarts": args.restarts,
               "gradient_distance": float(res.gradient_distance)}
        if mode == "vanilla":
            m = match_batches(rec, party.x, data_range=data_range)
            row["ssim_recovered_vs_private"] = m.mean_ssim
            pics.append((mode, party.x, rec))
        else:
            enc = encrypt(party.x, party.y, k=4, upper=cfg.scheme.upper, num_classes=10,
                          generator=party_key_generator(cfg, 0, 1)).images   # the same keys the party drew
            row["ssim_recovered_vs_encryption"] = match_batches(rec, enc, data_range=data_range).mean_ssim
            row["ssim_abs_recovered_vs_private"] = match_batches(rec.abs(), party.x, data_range=data_range).mean_ssim
            row["ssim_abs_encryption_vs_private"] = match_batches(enc.abs(), party.x, data_range=data_range).mean_ssim
            pics.append((mode, enc, rec))
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(ROOT / "experiments" / "results" / "federated_gradinv.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(4, args.batch, figsize=(1.6 * args.batch + 1, 6.6), squeeze=False)
    titles = ["vanilla: private", "vanilla: recovered", "InstaHide: encryption", "InstaHide: recovered"]
    imgs = [pics[0][1], pics[0][2], pics[1][1], pics[1][2]]
    for r in range(4):
        for c in range(args.batch):
            ax = axes[r, c]
            ax.imshow(imgs[r][c, 0].numpy(), cmap="gray")
            ax.set_xticks([]); ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(titles[r], fontsize=7)
    fig.tight_layout()
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    fig.savefig(ROOT / "docs" / "img" / "federated_gradinv.png", dpi=100)


if __name__ == "__main__":
    main()
