"""Spreads over research seeds behind the test thresholds and the side-by-side numbers in the docs.

Each section prints one line per configuration with the value at every seed, so a threshold can be
set with a margin (docs/reliability.md, "Machine-independent tests") and a table rerun on another
machine (docs/accuracy.md, "Why |e| first"; docs/scheme.md, "Pixel scaling"). One torch thread.

  OMP_NUM_THREADS=1 .venv/bin/python experiments/seed_spread.py federated        # FedAvg test, seeds 0-7
  OMP_NUM_THREADS=1 .venv/bin/python experiments/seed_spread.py recipe           # training tests' bars
  OMP_NUM_THREADS=1 .venv/bin/python experiments/seed_spread.py sign-invariant   # digits, raw vs |x|
  .venv/bin/python experiments/seed_spread.py centring                           # shares of negative mixed values
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.scheme.encrypt import check_centred  # noqa: E402
from instahide.train import TrainConfig, load_train_data, train  # noqa: E402

FAST = dict(dataset="digits", batch_size=64, lr=0.05, progress=False)  # the training tests' settings
CIFAR = ROOT.parent / "shared" / "data" / "cifar-10-batches-py"


def _accs(data, seeds, **options) -> list[float]:
    out = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig.make(**{**FAST, **options}, research_seed=seed, out=tmp)
            out.append(round(train(cfg, data=data)["final_test_acc"], 3))
    return out


def federated() -> None:
    from instahide.federated import FedConfig
    from instahide.federated.simulation import run_federated

    for seed in range(8):  # tests/federated/test_flower.py::test_instahide_fedavg_learns_on_clean_test_data
        with tempfile.TemporaryDirectory() as tmp:
            cfg = FedConfig.make(num_parties=2, rounds=4, local_epochs=2, batch_size=32, research_seed=seed, out=tmp)
            acc = [round(r["test_acc"], 4) for r in run_federated(cfg, backend="inprocess", log=None)["history"]]
        print(f"federated digits, 2 parties, k=4, 4 rounds x 2 local epochs, seed {seed}: {acc}", flush=True)


def recipe() -> None:
    data = load_train_data(TrainConfig.make(**FAST), "cpu")
    for mode in ("instahide", "mixup", "vanilla"):  # test_short_run_learns_well_above_chance
        print(f"digits {mode}, 8 epochs, seeds 0-5: {_accs(data, range(6), mode=mode, epochs=8)}", flush=True)
    cross = [_accs(None, [s], k=6, public="builtin", public_size=500, epochs=20)[0] for s in range(4)]
    print(f"digits cross k=6, 20 epochs, seeds 0-3: {cross}", flush=True)  # test_cross_dataset_run_learns


def sign_invariant() -> None:
    data = load_train_data(TrainConfig.make(**FAST), "cpu")
    for epochs in (4, 8):
        for setting in ("off", "on"):
            accs = _accs(data, range(4), epochs=epochs, sign_invariant=setting)
            print(f"digits inside k=4, {epochs} epochs, sign_invariant={setting}, seeds 0-3: {accs}", flush=True)


def centring() -> None:
    from instahide.data import load_dataset

    x, _ = load_dataset("cifar10", root=str(CIFAR), split="test").to_tensor()   # normalised
    unit, _ = load_dataset("cifar10", root=str(CIFAR), split="test").to_tensor(normalize=False)
    x, unit = x[:2048], unit[:2048]
    slightly = unit.clone()
    slightly[torch.rand(unit.shape, generator=torch.Generator().manual_seed(2)) < 0.02] = -0.01
    cases = {"normalised CIFAR-10": x, "3/4 normalised, last quarter in [0, 1]": torch.cat([x[:1536], unit[1536:]]),
             "half [0, 1], then half normalised": torch.cat([unit[:1024], x[1024:]]),
             "[0, 1] with 2% of values at -0.01": slightly,
             "CIFAR-10 minus half its mean": unit - 0.5 * unit.mean(dim=(0, 2, 3), keepdim=True)}
    for name, images in cases.items():
        try:
            share = check_centred(images, 4)
        except ValueError as exc:  # UncentredInputError: refused
            share = float(str(exc).split("only ")[1].split("%")[0]) / 100
        print(f"{name}: share of negative mixed values (k=4) {share:.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=["federated", "recipe", "sign-invariant", "centring"])
    torch.set_num_threads(1)
    {"federated": federated, "recipe": recipe, "sign-invariant": sign_invariant,
     "centring": centring}[p.parse_args().section]()


if __name__ == "__main__":
    main()
