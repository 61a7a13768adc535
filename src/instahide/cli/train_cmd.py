"""``instahide train`` and ``instahide evaluate``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .._config import add_arguments, from_args
from .._io import atomic_write_text
from ..distributed import load_encrypted, load_shared_model, load_test_set
from ..scheme import KeyGenerator
from ..scheme.defaults import DOM, UPPER
from ..train import TrainConfig, evaluate, evaluate_instahide, load_model, load_train_data, train
from ..train.ddp import resolve_device
from ..train.loader import parse_workers
from ._common import CLIError, cli_message, refuse_k1, report_run

TRAIN_HELP = "train a model on InstaHide encryptions (re-encrypted every epoch), Mixup or plain images"
TRAIN_DESCRIPTION = """\
Train on encryptions with the reference recipe (SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch
128, lr / 10 at 50% and 75% of the epochs). Every epoch re-encrypts the whole private set with fresh
one-time keys, after augmentation. Writes OUT/checkpoint.pt (atomically, every epoch),
OUT/metrics.jsonl, OUT/metrics.csv, OUT/final.json (metrics + the complete configuration) and
OUT/curves.png. An interrupted run continues with --resume (it says from which epoch); --resume with a
larger --epochs extends a finished run (the schedule is recomputed for the new length, and final.json
records the extension).

examples:
  instahide train --epochs 30 --out runs/digits-ih                         # digits, InstaHide k=4
  instahide train --mode vanilla --epochs 30 --out runs/digits-vanilla
  instahide train --dataset cifar10 --root data/cifar-10-batches-py --model preact_resnet18 \\
      --epochs 200 --out runs/c10-ih                                       # the paper's recipe (GPU)
  instahide train --dataset cifar10 --root data/cifar-10-batches-py --subset 5000 --width 0.5 \\
      --epochs 10 --out runs/c10-small                                     # a CPU-sized run
  instahide train --dataset cifar10 --root ... --public builtin --k 6 --out runs/c10-cross
  instahide train --dataset arrays --root scans/ --model resnet10_224 --workers 4 --out runs/scans
                                                                  # 224 x 224 uint8 .npy, streamed

Data larger than memory (--workers): by default the private set is held whole as float32 on the
device and re-encrypted at once every epoch (--workers 0). With --workers N >= 1 it stays uint8 where
it is (a memory-mapped .npy) and every batch is encrypted in one of N DataLoader worker processes,
partners still drawn from the whole set: memory is bounded by a few batches, not by the set's size
(docs/outofcore_training.md). --workers auto (the default) streams memory-mapped sets whose float32
copy would exceed 1 GiB with min(4, CPUs - 1) workers and keeps every other set in memory. With a
research seed, streamed keys differ from the in-memory path's but not with N; --workers is not part of
the configuration (a run may resume with another N; final.json records it).
"""
EVAL_HELP = "test accuracy of a checkpoint, clean and with inference-time InstaHide (accuracy vs T)"
EVAL_DESCRIPTION = """\
Clean test accuracy of a checkpoint, and inference with InstaHide: encrypt every test image T times
with fresh keys (partners from the test set, or a public pool), average the model's outputs, and report
the accuracy after each t = 1..T encryptions.

examples:
  instahide evaluate --checkpoint runs/digits-ih/checkpoint.pt --T 16
  instahide evaluate --checkpoint runs/digits-ih/checkpoint.pt --T 16 --own-min 0.5
  instahide evaluate --checkpoint runs/shared/checkpoint.pt          # a train-shared checkpoint

A train-shared checkpoint is evaluated on its clean test set (--test-dataset of the run), scaled as
the parties' encryption folders say (they must still be where the run read them); inference with
InstaHide then mixes test images with each other under the parties' k and c1 (inside-dataset), and
is skipped for parties that mixed in public images (their pool is not in the folders).
"""


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help=TRAIN_HELP, description=TRAIN_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    add_arguments(p, TrainConfig)
    add_workers_argument(p, "encrypt batches of the private set in N DataLoader worker processes, reading it "
                            "as uint8 (memory bounded by a few batches); 0: the whole set in memory as float32, "
                            "re-encrypted at once every epoch; auto (default): N = min(4, CPUs - 1) for a "
                            "memory-mapped set over 1 GiB as float32, else 0")
    p.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help=EVAL_HELP, description=EVAL_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by instahide train or train-shared")
    e.add_argument("--T", type=int, default=16, help="encryptions per test image (default 16)")
    e.add_argument("--k", type=int, default=None, help="images per test encryption (default: the training k)")
    e.add_argument("--own-min", type=float, default=None,
                   help="force each test image's own coefficient >= this (the authors: > 0.5 helps)")
    e.add_argument("--public-only", action="store_true",
                   help="cross-dataset checkpoints: mix each test image with public images only")
    e.add_argument("--root", default=None, help="dataset root, if it moved since training")
    e.add_argument("--test-subset", type=int, default=None, help="evaluate on N test images")
    e.add_argument("--out", default=None, help="write the results as JSON here")
    e.add_argument("--research-seed", type=int, default=None,
                   help="REPRODUCIBLE RESEARCH ONLY: derive the test keys from this seed")
    e.set_defaults(func=run_evaluate)


def add_workers_argument(p, help: str) -> None:
    """``--workers auto|N`` (``instahide train`` and ``train-shared``)."""
    p.add_argument("--workers", type=_workers, default="auto", metavar="N", help=help)


def _workers(text: str):
    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--workers ")) from None


def run_train(args) -> int:
    try:
        cfg = from_args(args, TrainConfig).validate()
        refuse_k1(cfg.scheme)
        resolve_device(cfg.device, option="--device")
        final = train(cfg, resume=args.resume, workers=args.workers)
    except (ValueError, ImportError, RuntimeError, OSError, FloatingPointError) as exc:
        raise CLIError(cli_message(str(exc))) from exc  # the library's resume=True is --resume here
    report_run(f"{cfg.scheme.mode} {final['model']} on {final['dataset']} ({final['train_images']} images)",
               final, "epoch", cfg)
    return 0


def _train_checkpoint(args) -> dict:
    """What :func:`run_evaluate` needs from an ``instahide train`` checkpoint."""
    model, cfg, state = load_model(args.checkpoint)
    if args.root is not None:
        cfg.root = args.root
    cfg.test_subset = args.test_subset if args.test_subset is not None else cfg.test_subset
    data = load_train_data(cfg, "cpu")
    cross = data.public is not None
    return {"model": model, "x": data.x_test, "y": data.y_test, "name": data.name, "epoch": state["epoch"],
            "what": f"{cfg.scheme.mode} {state['model_name']}", "k": cfg.scheme.k, "upper": cfg.scheme.upper,
            "mode": cfg.scheme.mode, "public": data.public, "num_private": cfg.scheme.private_slots if cross else None,
            "dom": cfg.scheme.dom, "skip": None}


def _shared_checkpoint(args) -> dict:
    """What :func:`run_evaluate` needs from an ``instahide train-shared`` checkpoint: the test set as
    the parties scaled their images, and their scheme for inference with InstaHide."""
    model, cfg, state = load_shared_model(args.checkpoint)
    if args.root is not None:
        cfg.test_root = args.root
    cfg.test_subset = args.test_subset if args.test_subset is not None else cfg.test_subset
    if cfg.test_dataset is None:
        raise ValueError(f"{args.checkpoint} was trained without --test-dataset: there is no test set to evaluate on")
    union = load_encrypted(cfg.encrypted)
    x, y = load_test_set(cfg, union, "cpu")
    schemes = {(s.get("k"), s.get("upper", UPPER), s.get("mode", "instahide"), s.get("num_private", s.get("k")))
               for s in (d["scheme"] or {} for d in union.describe())}
    k, upper, mode, num_private = sorted(schemes, key=str)[0]
    skip = None
    if len(schemes) > 1:
        skip = f"the parties used different schemes (k, c1, mode, private slots) {sorted(schemes, key=str)}: pass --k"
    elif k is None:
        skip = "the encryption folders do not record their scheme: pass --k"
    elif num_private < k:
        skip = "the parties mixed in public images, and their pool is not recorded in the folders: pass --k"
    return {"model": model, "x": x, "y": y, "name": cfg.test_dataset, "epoch": state["epoch"],
            "what": f"train-shared {state['model_name']} over {len(union.parties)} part{'y' if len(union.parties) == 1 else 'ies'}",
            "k": k, "upper": upper, "mode": mode, "public": None, "num_private": None, "dom": DOM, "skip": skip}


def run_evaluate(args) -> int:
    try:
        try:
            ev = _train_checkpoint(args)
        except ValueError as exc:
            if "instahide-shared-checkpoint" not in _format_of(args.checkpoint):
                raise
            ev = _shared_checkpoint(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise CLIError(str(exc)) from exc
    if args.T < 1:
        raise CLIError("--T must be >= 1")
    model = ev["model"]
    clean = evaluate(model, ev["x"], ev["y"])
    k = args.k if args.k is not None else ev["k"]
    cross = ev["public"] is not None
    gen = KeyGenerator.from_seed(args.research_seed) if args.research_seed is not None else None
    ih = None
    if ev["skip"] is None or args.k is not None:
        try:
            ih = evaluate_instahide(
                model, ev["x"], ev["y"], T=args.T, k=k, upper=ev["upper"],
                mode="mixup" if ev["mode"] == "mixup" else "instahide", public=ev["public"],
                num_private=(1 if args.public_only else ev["num_private"]) if cross else None,
                dom=ev["dom"] if not args.public_only else 0.0, own_min=args.own_min, generator=gen)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
    print(f"checkpoint {args.checkpoint}: {ev['what']} on {ev['name']}, epoch {ev['epoch']}")
    print(f"clean test accuracy: {clean['accuracy']:.4f} ({len(ev['x'])} images)")
    if ih is None:
        print(f"inference with InstaHide: skipped ({ev['skip']})")
    else:
        print(f"inference with InstaHide (k={k}{', own coefficient >= ' + str(args.own_min) if args.own_min else ''}):")
        for t, a in zip(ih["T"], ih["accuracy"]):
            if t in (1, 2, 4, 8, 16, 32, 64) or t == args.T:
                print(f"  T={t:<3d} accuracy {a:.4f}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"clean": clean, "instahide": ih, "k": k, "own_min": args.own_min,
                                                      "checkpoint": str(args.checkpoint)}, indent=2) + "\n")
    return 0


def _format_of(path) -> str:
    """The ``format`` field of a checkpoint file ('' if it has none or cannot be read)."""
    try:
        return str(torch.load(path, map_location="cpu", weights_only=True).get("format", ""))
    except Exception:
        return ""
