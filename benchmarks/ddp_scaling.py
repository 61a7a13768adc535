"""The shared trainer with 1 process vs W gloo/nccl ranks (torchrun), side by side, on two parties.

Makes two parties from disjoint halves of a dataset subset (each encrypted --epochs T times with
OS-entropy keys, written as `instahide encrypt` folders), then runs the same ``train-shared`` job as
one process and under ``torchrun --nproc-per-node=W``, and prints wall time, training time (from
final.json), clean test accuracy and the speed ratio. Every process runs with one thread
(OMP_NUM_THREADS=1), so on CPU W ranks use W cores.

  .venv/bin/python benchmarks/ddp_scaling.py                                   # CIFAR-10 2 x 1000, fastnet 0.5, CPU
  .venv/bin/python benchmarks/ddp_scaling.py --dataset digits --subset 1400 --epochs 10
  .venv/bin/python benchmarks/ddp_scaling.py --subset 50000 --model preact_resnet18 --width 1 --ranks 8  # GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_party(folder: Path, x, y, epochs: int, num_classes: int, mean, std, k: int) -> None:
    import numpy as np

    from instahide.scheme import KeyGenerator, encrypt

    folder.mkdir(parents=True, exist_ok=True)
    gen = KeyGenerator.from_entropy()
    enc, lab = [], []
    for _ in range(epochs):
        e = encrypt(x, y, k=k, num_classes=num_classes, generator=gen)
        enc.append(e.images.permute(0, 2, 3, 1).numpy().astype(np.float32))
        lab.append(e.soft_labels.numpy().astype(np.float32))
    np.save(folder / "encryption.npy", np.concatenate(enc))
    np.save(folder / "label.npy", np.concatenate(lab))
    n, (c, h, w) = len(x), x.shape[1:]
    meta = {"num_images": n, "epochs": epochs, "row_order": "epoch-major: row = epoch * N + i",
            "image_shape_hwc": [h, w, c], "num_classes": num_classes, "normalized": True,
            "mean": list(mean), "std": list(std), "scheme": {"k": k, "mode": "instahide"},
            "keys": {"origin": "os-entropy", "written_to": None}}
    (folder / "meta.json").write_text(json.dumps(meta))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar-10-batches-py"))
    p.add_argument("--subset", type=int, default=2000, help="private images, split between the 2 parties")
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3, help="training epochs = encryption epochs T per party")
    p.add_argument("--model", default="auto")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    import torch

    from instahide.data import load_dataset

    ds = load_dataset(args.dataset, root=args.root, split="train")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:args.subset].sort().values
    ds = ds.subset(order.numpy())
    x, y = ds.to_tensor()
    half = len(x) // 2
    work = Path(tempfile.mkdtemp(prefix="ddp_scaling_"))
    t0 = time.perf_counter()
    make_party(work / "alice", x[:half], y[:half], args.epochs, ds.num_classes, ds.mean, ds.std, args.k)
    make_party(work / "bob", x[half:], y[half:], args.epochs, ds.num_classes, ds.mean, ds.std, args.k)
    print(f"parties: 2 x {half} {ds.name} images x {args.epochs} encryption epochs in "
          f"{time.perf_counter() - t0:.1f} s ({work})")
    common = ["train-shared", "--encrypted", str(work / "alice"), str(work / "bob"),
              "--test-dataset", args.dataset, "--test-root", args.root, "--test-subset", str(args.test_subset),
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
              "--model", args.model, "--width", str(args.width), "--research-seed", "0", "--progress", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    runs = {}
    for name, launcher in (("1 process", [sys.executable, "-m", "instahide"]),
                           (f"{args.ranks} ranks", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc-per-node={args.ranks}", "-m", "instahide"])):
        out = work / name.replace(" ", "_")
        t = time.perf_counter()
        proc = subprocess.run(launcher + common + ["--out", str(out)], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
        final = json.loads((out / "final.json").read_text())
        runs[name] = {"wall_seconds": wall, "train_seconds": final["wall_seconds_this_run"],
                      "test_acc": final["final_test_acc"], "world_size": final["world_size"],
                      "epoch_seconds": [m["epoch_seconds"] for m in final["history"]]}
        print(f"{name:>10}: wall {wall:6.1f} s (training {final['wall_seconds_this_run']:6.1f} s), "
              f"clean test accuracy {final['final_test_acc']:.4f}")
    a, b = runs["1 process"], runs[f"{args.ranks} ranks"]
    ratio = a["train_seconds"] / b["train_seconds"]
    print(f"speed-up of the training loop, {args.ranks} ranks vs 1 process: {ratio:.2f}x "
          f"(wall time incl. start-up: {a['wall_seconds'] / b['wall_seconds']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "runs": runs, "train_speedup": ratio, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
