"""Federated accuracy and cost: vanilla FedAvg vs InstaHide FedAvg, N parties, IID and non-IID.

Grid: mode in {vanilla, InstaHide inside-dataset k=4, InstaHide cross-dataset k=6 (2 private + 4
public patches from the built-in photographs), each InstaHide row on raw encryptions and with |x| as
the model's first operation} x parties N in {2, 4, 8} x partition in {IID,
Dirichlet alpha=0.5} x seeds. Every party re-encrypts its own images with fresh keys (derived from the
run's research seed, party and round, so the table is reproducible) at every local epoch.

Scale ``cpu`` (the default, what was run): scikit-learn's digits (1,438 train / 359 test images, 8x8,
no download), mnistnet width 1, 10 rounds of 2 local epochs, batch 32, lr 0.05, momentum 0.9, FedAvg,
every party trains every round, in-process grid (the same ClientApp / ServerApp code as the Ray
simulation, without Ray's start-up and scheduling noise), one torch thread.

Per run one JSON line in ``experiments/results/federated.jsonl`` (appended as each run ends; a rerun
skips finished runs): the configuration, clean test accuracy after every round, per-round wall time,
and the mean per-client local-training and encryption seconds.

Usage:
  OMP_NUM_THREADS=1 .venv/bin/python experiments/federated.py --seeds 2
  .venv/bin/python experiments/federated.py --report         # prints the markdown tables for docs
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.federated import FedConfig  # noqa: E402
from instahide.federated.local import build_global_model, clear_cache  # noqa: E402
from instahide.federated.server import load_server_checkpoint, load_test_data  # noqa: E402
from instahide.scheme import KeyGenerator  # noqa: E402
from instahide.train import derive_seed, evaluate_instahide, load_train_data, load_weights  # noqa: E402

from _common import append_jsonl, done_keys, read_jsonl  # noqa: E402

MODES = {  # label -> FedConfig overrides ("raw": the paper's training on raw encryptions)
    "vanilla": dict(mode="vanilla"),
    "InstaHide inside k=4": dict(mode="instahide", k=4, sign_invariant="off"),
    "InstaHide cross k=6": dict(mode="instahide", k=6, public="builtin", public_size=2000, sign_invariant="off"),
    "InstaHide inside k=4, |x| first": dict(mode="instahide", k=4, sign_invariant="on"),
    "InstaHide cross k=6, |x| first": dict(mode="instahide", k=6, public="builtin", public_size=2000,
                                           sign_invariant="on"),
}
PARTITIONS = {"IID": dict(partition="iid"), "Dirichlet a=0.5": dict(partition="dirichlet", alpha=0.5)}
SCALES = {"cpu": dict(dataset="digits", model="mnistnet", width=1.0, rounds=10, local_epochs=2, batch_size=32,
                      lr=0.05, min_party_size=10)}
OUT = ROOT / "experiments" / "results" / "federated.jsonl"
INFER_T = 8  # encryptions per test image for inference with InstaHide (as the demo)


def inference_accuracy(cfg: FedConfig, run_dir: Path, seed: int) -> dict:
    """The final global model queried with InstaHide (T encryptions per clean test image, own
    coefficient >= 0.5, averaged probabilities; as the demo), on the central clean test set."""
    state = load_server_checkpoint(run_dir / "checkpoint.pt")
    x_test, y_test, classes = load_test_data(cfg)
    model = build_global_model(cfg, x_test.shape[1], classes)
    load_weights(model, state["model"], "the final global model")
    s = cfg.scheme
    public = load_train_data(cfg, "cpu").public if s.cross else None
    res = evaluate_instahide(model, x_test, y_test, T=INFER_T, k=s.k or (6 if s.cross else 4), upper=s.upper,
                             dom=s.dom, public=public, num_private=s.num_private if s.cross else None,
                             own_min=0.5, generator=KeyGenerator.from_seed(derive_seed(seed, "federated-inference")))
    return {"T": INFER_T, "own_min": 0.5, "accuracy": res["accuracy"][-1]}


def run_one(scale: str, mode: str, parties: int, partition: str, seed: int, inference: bool = False,
            local_epochs: int | None = None) -> dict:
    from instahide.federated.simulation import run_federated

    with tempfile.TemporaryDirectory() as tmp:
        scale_cfg = {**SCALES[scale], **({"local_epochs": local_epochs} if local_epochs else {})}
        cfg = FedConfig.make(**scale_cfg, **MODES[mode], **PARTITIONS[partition], num_parties=parties,
                             research_seed=seed, partition_seed=seed, out=tmp)
        t0 = time.perf_counter()
        final = run_federated(cfg, backend="inprocess", log=None)
        wall = time.perf_counter() - t0
        infer = (inference_accuracy(cfg, Path(tmp), seed)
                 if inference and cfg.scheme.mode == "instahide" else None)
    h = final["history"]
    return {"scale": scale, "mode": mode, "parties": parties, "partition": partition, "seed": seed,
            "local_epochs": cfg.local_epochs,
            **({"inference": infer} if infer else {}),
            "final_test_acc": h[-1]["test_acc"], "acc_per_round": [r["test_acc"] for r in h],
            "round_seconds_mean": statistics.mean(r["round_seconds"] for r in h),
            "client_train_seconds_mean": statistics.mean(r["train_seconds"] for r in h),
            "client_encrypt_seconds_mean": statistics.mean(r["encrypt_seconds"] for r in h),
            "wall_seconds": wall, "config": final["config"], "model": final["model_name"],
            "threads": torch.get_num_threads(), "note": "CPU shared with other jobs: timings are noisy"}


def report(path: Path) -> None:
    rows = read_jsonl(path)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["mode"], r["partition"], r["parties"]), []).append(r)

    def ms(values, fmt="{:.3f}"):
        if len(values) == 1:
            return fmt.format(values[0])
        return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"

    print("| mode | partition | N | seeds | accuracy after R rounds | with inference with InstaHide (T=8, own >= 0.5) "
          "| round s | client train s | client encrypt s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (mode, part, n), rs in sorted(groups.items(), key=lambda kv: (list(MODES).index(kv[0][0]), kv[0][1], kv[0][2])):
        inferred = [r["inference"]["accuracy"] for r in rs if "inference" in r]
        print(f"| {mode} | {part} | {n} | {len(rs)} | {ms([r['final_test_acc'] for r in rs])} | "
              f"{ms(inferred) if inferred else '-'} | "
              f"{ms([r['round_seconds_mean'] for r in rs], '{:.2f}')} | "
              f"{ms([r['client_train_seconds_mean'] for r in rs], '{:.2f}')} | "
              f"{ms([r['client_encrypt_seconds_mean'] for r in rs], '{:.4f}')} |")
    print()
    print("Per-client time relative to vanilla (same N and partition, mean over seeds):")
    print()
    print("| mode | partition | N | client train s / vanilla |")
    print("|---|---|---|---|")
    for (mode, part, n), rs in sorted(groups.items()):
        base = groups.get(("vanilla", part, n))
        if mode == "vanilla" or not base:
            continue
        ratio = statistics.mean(r["client_train_seconds_mean"] for r in rs) / \
            statistics.mean(r["client_train_seconds_mean"] for r in base)
        print(f"| {mode} | {part} | {n} | {ratio:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="cpu", choices=list(SCALES))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--parties", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    ap.add_argument("--local-epochs", type=int, default=None,
                    help="local epochs per round instead of the scale's (use with its own --out)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--inference", action="store_true",
                    help="also query each InstaHide run's final model with InstaHide (use with its own --out)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.report:
        report(out)
        return
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out, ("scale", "mode", "parties", "partition", "seed"))
    for seed in range(args.seeds):
        for mode in args.modes:
            for partition in args.partitions:
                for n in args.parties:
                    key = (args.scale, mode, n, partition, seed)
                    if key in done:
                        continue
                    r = run_one(args.scale, mode, n, partition, seed, args.inference, args.local_epochs)
                    clear_cache()
                    append_jsonl(out, r)
                    print(f"{mode:22s} {partition:16s} N={n} seed={seed}: acc {r['final_test_acc']:.3f} "
                          f"round {r['round_seconds_mean']:.2f} s, client {r['client_train_seconds_mean']:.2f} s "
                          f"(encrypt {r['client_encrypt_seconds_mean']:.4f} s), wall {r['wall_seconds']:.0f} s",
                          flush=True)


if __name__ == "__main__":
    main()
