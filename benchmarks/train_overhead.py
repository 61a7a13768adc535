"""Training overhead of InstaHide: one InstaHide epoch against one vanilla epoch, side by side.

Same model, data, device and recipe (the engine's loop); the only differences are the per-epoch
encryption of the whole training set (fresh keys) before the SGD steps and, in the third column, the
sign-invariant stage (|x| first). Augmentation runs in all. Each mode runs ``--repeats`` epochs in
turn (vanilla, InstaHide, InstaHide |x|, vanilla, ...) from the same initial weights; the best epoch
time of each is compared and the ratios printed (the authors claim < 5% overhead).

  .venv/bin/python benchmarks/train_overhead.py                           # CIFAR-10 subset, fastnet, CPU
  .venv/bin/python benchmarks/train_overhead.py --subset 50000 --model preact_resnet18 --device cuda
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.train import TrainConfig, build_model, load_train_data, train_epoch  # noqa: E402
from instahide.train.engine import augment_for, index_batches  # noqa: E402
from instahide.train.recipe import epoch_inputs  # noqa: E402

MODES = ("vanilla", "instahide", "instahide |x|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar-10-batches-py"))
    p.add_argument("--subset", type=int, default=5000, help="training images (default 5000 on CPU)")
    p.add_argument("--model", default="fastnet")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--public", default=None, help="public pool: measure cross-dataset mode instead")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = dict(dataset=args.dataset, root=args.root, subset=args.subset, test_subset=100, model=args.model,
                width=args.width, k=args.k, batch_size=args.batch_size, public=args.public, progress=False)
    cfgs = {"vanilla": TrainConfig.make(**{**base, "mode": "vanilla", "public": None}),
            "instahide": TrainConfig.make(**base, mode="instahide"), "instahide |x|": TrainConfig.make(**base)}
    data = load_train_data(cfgs["instahide"], device)
    c, h, w = data.x_train.shape[1:]
    torch.manual_seed(0)
    model0 = build_model(args.model, data.num_classes, c, width=args.width).to(device)
    augment = augment_for("auto", (c, h, w), data.mean, data.std)
    onehot = F.one_hot(data.y_train, data.num_classes).float()
    buffer = torch.empty_like(data.x_train)
    amp = device.type == "cuda"
    times = {m: [] for m in MODES}
    enc_times = []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for r in range(args.repeats + 1):  # the first round is a warm-up
        for mode in MODES:
            model = copy.deepcopy(model0) if mode != "instahide |x|" else build_model(
                args.model, data.num_classes, c, width=args.width, sign_invariant=True).to(device)
            if mode == "instahide |x|":
                model.model.load_state_dict(model0.state_dict())
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            sync()
            t0 = time.perf_counter()
            xs, ys = epoch_inputs(cfgs[mode], data, r, augment, onehot, out=buffer)
            sync()
            t_in = time.perf_counter() - t0
            order = torch.randperm(len(xs), device=device)
            train_epoch(model, opt, index_batches(xs, ys, order, args.batch_size), amp=amp)
            sync()
            if r > 0:
                times[mode].append(time.perf_counter() - t0)
                if mode != "vanilla":
                    enc_times.append(t_in)
    best = {m: min(t) for m, t in times.items()}
    ratio = best["instahide"] / best["vanilla"]
    ratio_abs = best["instahide |x|"] / best["vanilla"]
    n = len(data.x_train)
    print(f"# {args.dataset} {n} images {tuple(data.x_train.shape[1:])}, {args.model} width {args.width}, "
          f"batch {args.batch_size}, device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"# InstaHide k={args.k}{' cross-dataset, public ' + str(args.public) if args.public else ' inside-dataset'}; "
          f"best of {args.repeats} epochs after a warm-up")
    for m in MODES:
        print(f"{m:<14} epoch {best[m]:8.3f} s   {n / best[m]:9.1f} images/s   (all: "
              f"{', '.join(f'{t:.3f}' for t in times[m])})")
    print(f"augment + encrypt (InstaHide epoch inputs): best {min(enc_times):.3f} s")
    print(f"ratio InstaHide / vanilla epoch: {ratio:.3f}, with |x| first {ratio_abs:.3f}  (target <= 1.05 on GPU)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "best_seconds": best, "all_seconds": times, "encrypt_seconds": enc_times,
            "ratio": ratio, "ratio_sign_invariant": ratio_abs, "images": n, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "device": str(device),
            "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
