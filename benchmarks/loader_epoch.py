"""One training epoch with InstaHide encryption in DataLoader workers, in the main process, and none.

Same model (fastnet), data, batches and SGD recipe in every mode; only where the encryption runs
differs:
    vanilla      plain batches (one-hot labels), no encryption
    main/batch   InstaHideDataset.loader(num_workers=0): each batch encrypted in the main process
                 (partners from the whole set)
    main/epoch   InstaHideLoader: the whole set encrypted in the main process at the epoch's start
    workers      InstaHideDataset.loader(num_workers=W): each batch encrypted in a forked worker
The modes run interleaved for ``--repeats`` rounds after one warm-up round; the best epoch of each
is compared with vanilla's (ratios printed). Data: CIFAR-10 training images from ``--root`` if
present (``--subset`` of them), else synthetic CIFAR-sized normal data.

  .venv/bin/python benchmarks/loader_epoch.py                          # CPU, 4000 images, 2 workers
  .venv/bin/python benchmarks/loader_epoch.py --device cuda --subset 50000 --workers 8
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from encrypt import machine  # noqa: E402
from instahide.data import load_dataset  # noqa: E402
from instahide.modules import InstaHideDataset, InstaHideLoader  # noqa: E402
from instahide.train import build_model, train_epoch  # noqa: E402

MODES = ("vanilla", "main/batch", "main/epoch", "workers")


def load(root: str, n: int):
    try:
        x, y = load_dataset("cifar10", root=root, split="train").subset(slice(0, n)).to_tensor()
        return x.contiguous(), y, f"CIFAR-10 train ({root})"
    except (FileNotFoundError, ValueError):
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 3, 32, 32, generator=g), torch.randint(10, (n,), generator=g), "synthetic N(0,1)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar-10-batches-py"))
    p.add_argument("--subset", type=int, default=4000)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    x, y, src = load(args.root, args.subset)
    onehot = F.one_hot(y, 10).float()
    n, bs = len(x), args.batch_size
    torch.manual_seed(0)
    model0 = build_model("fastnet", 10, 3, width=args.width)
    ds = InstaHideDataset(x, y, k=args.k, num_classes=10)
    pin = device.type == "cuda"

    def batches(mode):
        if mode == "vanilla":
            order = torch.randperm(n)
            it = ((x[b], onehot[b]) for b in order.split(bs))
        elif mode == "main/epoch":
            it = InstaHideLoader(x, y, batch_size=bs, k=args.k, num_classes=10)
        else:
            it = ds.loader(bs, num_workers=0 if mode == "main/batch" else args.workers, pin_memory=pin)
        for xb, yb in it:
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True), 1.0 / len(xb)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {m: [] for m in MODES}
    for r in range(args.repeats + 1):  # round 0 is a warm-up
        for mode in MODES:
            model = build_model("fastnet", 10, 3, width=args.width)
            model.load_state_dict(model0.state_dict())
            model.to(device)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            sync()
            t0 = time.perf_counter()
            train_epoch(model, opt, batches(mode), amp=device.type == "cuda")
            sync()
            if r:
                times[mode].append(time.perf_counter() - t0)
    best = {m: min(t) for m, t in times.items()}
    mach = machine()
    print(f"# {n} images from {src}, fastnet width {args.width}, batch {bs}, InstaHide k={args.k} inside-dataset, "
          f"device {device}, torch threads {torch.get_num_threads()}, {args.workers} workers")
    print(f"# CPU {mach['cpu_model']}, {mach['cpu_count']} cores, {mach['runnable_others']} other runnable "
          f"processes at the end; best of {args.repeats} interleaved rounds after a warm-up")
    for m in MODES:
        print(f"{m:<11} epoch {best[m]:8.3f} s  {n / best[m]:9.1f} img/s  x{best[m] / best['vanilla']:.3f} of vanilla"
              f"   (all: {', '.join(f'{t:.3f}' for t in times[m])})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "best_s": best, "all_s": times, "machine": mach,
                                               "data": src, "torch": torch.__version__},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
