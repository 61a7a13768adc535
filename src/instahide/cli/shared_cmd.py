"""``instahide train-shared``: train on encryptions that several parties handed over (one process or DDP)."""
from __future__ import annotations

import argparse
import os

from .._config import add_arguments, from_args
from ..distributed import KeyMaterialError, SharedConfig, train_shared
from ._common import CLIError, report_run
from .train_cmd import add_workers_argument

HELP = "train on the union of several parties' encryption folders (no keys), one process or torchrun/DDP"
DESCRIPTION = """\
Central training on encryptions handed over by several parties. Each party runs
  instahide encrypt --out DIR --epochs T ...        (keys stay with the party: no --key-out into DIR)
and hands over DIR (encryption.npy, label.npy, meta.json). This command reads the folders
(memory-mapped, validated; a folder holding a key file is refused), trains with the reference recipe,
evaluates on a clean test set of its own (--test-dataset) and writes OUT/checkpoint.pt (atomically,
every epoch), OUT/metrics.jsonl, OUT/final.json. In training epoch e, party p contributes the rows of
its encryption epoch (e mod T_p): past T_p epochs its encryptions are reused. --resume continues.

examples:
  instahide train-shared --encrypted runs/alice runs/bob --test-dataset digits --epochs 20 \\
      --batch-size 64 --lr 0.05 --out runs/shared
  torchrun --standalone --nproc-per-node=2 -m instahide train-shared \\
      --encrypted runs/alice runs/bob --test-dataset digits --out runs/shared-ddp      # 2 CPU ranks (gloo)
  torchrun --standalone --nproc-per-node=8 -m instahide train-shared \\
      --encrypted /data/a /data/b --test-dataset cifar10 --test-root data/cifar-10-batches-py \\
      --model preact_resnet18 --epochs 200 --out runs/c10                                # 8 GPUs (nccl)
--batch-size is the global batch over all ranks. See docs/distributed.md (multi-node: --nnodes,
--rdzv-endpoint).

Folders larger than memory (--workers): with --workers N >= 1 the rows are read batch by batch from the
memory-mapped folders by N DataLoader worker processes (memory bounded by a few batches; the same
batches, so the same training); 0 reads each epoch's rows at once. auto (the default) streams when an
epoch's rows would take more than 1 GiB as float32. See docs/outofcore_training.md.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train-shared", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encrypted", nargs="+", required=True, metavar="DIR",
                   help="encryption folders written by `instahide encrypt`, one per party")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    add_arguments(p, SharedConfig, skip=("encrypted",))
    add_workers_argument(p, "read the rows batch by batch in N DataLoader worker processes (memory bounded by "
                            "a few batches); 0: each epoch's rows at once; auto (default): N = min(4, CPUs - 1) "
                            "when an epoch's rows exceed 1 GiB as float32, else 0")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        cfg = from_args(args, SharedConfig, skip=("encrypted",))
        cfg.encrypted = tuple(args.encrypted)
        cfg.validate()
        final = train_shared(cfg, resume=args.resume, workers=args.workers)
    except KeyMaterialError as exc:
        raise CLIError(f"refused: {exc}") from exc
    except (ValueError, ImportError, OSError, FloatingPointError) as exc:
        raise CLIError(str(exc)) from exc
    if os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 speaks for the job
    parties = ", ".join(f"{d['folder']} ({d['num_images']} x {d['epochs']})" for d in final["parties"])
    report_run(f"{final['model']} on {parties}, {final['world_size']} rank(s)", final, "epoch", cfg)
    if final["reused_encryptions"]:
        print(f"note: {cfg.epochs} epochs > {final['fresh_epochs']} encryption epochs of some party: "
              "its encryptions were reused (ask for more --epochs T at encryption time)")
    return 0
