"""What to put after |x|: candidate input stages of the sign-invariant model, side by side.

Every candidate is ``model(stage(|x|))`` (or, for ``wide``, the model with its first layer twice as wide
on |x|); all are bit-identical for e, -e and any re-masking. Settings (seed 0, one thread):

  mnist   MNIST full, mnistnet, 5 epochs, SGD lr 0.05 momentum 0.9, batch 128, no lr drops, inside k=4
  digits  the demo's InstaHide inside k=4 (digits, mnistnet, 60 epochs, lr 0.05, batch 64)
  cifar   the accuracy table's cpu scale, cross-dataset k=6 (2+4): CIFAR-10 5,000 / 2,000, fastnet 0.5,
          8 epochs, public pool of 10,000 Tiny-ImageNet patches

  .venv/bin/python experiments/stem_probe.py mnist abs_bn [--seeds 0 1]

Each run's final.json goes to experiments/results/stem/SETTING_STAGE_seedN.json; docs/accuracy.md,
"Beyond |x|", has the numbers.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import instahide.train.recipe as recipe  # noqa: E402
from instahide.train import TrainConfig, train  # noqa: E402
from instahide.train.engine import build_arch  # noqa: E402
from instahide.train.models import SignInvariant  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
POOL = SHARED / "tiny-imagenet-200-test" / "images"
SETTINGS = {
    "mnist": dict(dataset="mnist", root=str(SHARED / "mnist"), model="mnistnet", epochs=5, batch_size=128, lr=0.05,
                  momentum=0.9, gamma=1.0, mode="instahide", k=4),
    "digits": dict(dataset="digits", epochs=60, batch_size=64, lr=0.05, mode="instahide", k=4),
    "cifar": dict(dataset="cifar10", root=str(SHARED / "cifar-10-batches-py"), model="fastnet", width=0.5,
                  subset=5000, test_subset=2000, epochs=8, mode="instahide", k=6,
                  public=str(POOL) if POOL.exists() else "builtin", public_size=10_000),
}


def _widen_first_layer(model: nn.Module, factor: int) -> nn.Module:
    """mnistnet / fastnet with the first convolution (and what reads it) ``factor`` times as wide."""
    if hasattr(model, "features"):                                     # MnistNet
        f = model.features
        conv, bn, nxt = f[0], f[1], f[3]
        w = conv.out_channels * factor
        f[0], f[1] = nn.Conv2d(conv.in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        f[3] = nn.Conv2d(w, nxt.out_channels, 3, padding=1, bias=False)
    else:                                                              # FastNet
        conv, g = model.stem[0], model.groups[0]
        w = conv.out_channels * factor
        model.stem[0], model.stem[1] = nn.Conv2d(conv.in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        g.conv1 = nn.Conv2d(w, g.conv1.out_channels, 3, padding=1, bias=False)
    return model


class Probe(nn.Module):
    """``model(stage(|x|))`` for the candidates that are not in the library."""

    def __init__(self, model: nn.Module, stage: nn.Module):
        super().__init__()
        self.stage, self.model = stage, model

    def forward(self, x):
        return self.model(self.stage(x.abs()))


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _instance_std(x):  # per image and channel: (|x| - mean) / std
    return (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-5)


def pixel_mlp(c: int, hidden: int = 16) -> nn.Module:
    """A learnt element-wise function of |x| (the same per pixel): 1x1 conv - BN - ReLU - 1x1 conv."""
    return nn.Sequential(nn.Conv2d(c, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.Conv2d(hidden, c, 1))


CANDIDATES = {
    "abs": lambda m, c: SignInvariant(m),
    "abs_bn": lambda m, c: Probe(m, nn.BatchNorm2d(c)),
    "log1p": lambda m, c: Probe(m, Fn(torch.log1p)),
    "instance_std": lambda m, c: Probe(m, Fn(_instance_std)),
    "pixel_mlp": lambda m, c: Probe(m, pixel_mlp(c)),
    "wide": lambda m, c: SignInvariant(_widen_first_layer(m, 2)),
    "wide_bn": lambda m, c: Probe(_widen_first_layer(m, 2), nn.BatchNorm2d(c)),
}


def run_one(setting: str, stage: str, seed: int) -> dict:
    out = ROOT / "experiments" / "runs" / "stem" / setting / stage / f"seed{seed}"
    if out.exists():
        shutil.rmtree(out)

    def build(arch, width):
        plain = build_arch({**arch, "sign_invariant": False}, width)
        return CANDIDATES[stage](plain, arch["in_channels"]) if arch["sign_invariant"] else plain

    recipe.build_arch = build  # the recipe builds its model through this name
    cfg = TrainConfig.make(**SETTINGS[setting], sign_invariant="on", research_seed=seed, out=str(out), progress=False)
    t0 = time.perf_counter()
    final = train(cfg)
    wall = time.perf_counter() - t0
    dest = ROOT / "experiments" / "results" / "stem"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "final.json", dest / f"{setting}_{stage}_seed{seed}.json")
    accs = [round(100 * m["test_acc"], 2) for m in final["history"] if m["test_acc"] is not None]
    print(f"{setting} {stage} seed {seed}: final {100 * final['final_test_acc']:.2f}  per epoch {accs}  "
          f"params {final['parameters']}  wall {wall:.0f} s", flush=True)
    return final


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", choices=sorted(SETTINGS))
    p.add_argument("stages", nargs="+", choices=sorted(CANDIDATES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    torch.set_num_threads(1)
    for stage in args.stages:
        for seed in args.seeds:
            run_one(args.setting, stage, seed)


if __name__ == "__main__":
    main()
