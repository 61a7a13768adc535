"""``python -m instahide.distributed COMMAND ...``: the distributed entry point.

Commands: ``train-shared`` (central trainer over the parties' encryption folders) and ``train``
(on-the-fly encryption; every rank encrypts its own shard with its own keys). Run it as one process,
or under torchrun::

    python -m instahide.distributed train-shared --encrypted runs/a runs/b --test-dataset digits --out runs/s
    torchrun --standalone --nproc-per-node=2 -m instahide.distributed train-shared --encrypted runs/a runs/b \\
        --test-dataset digits --out runs/s2                       # 2 CPU ranks, gloo
    torchrun --standalone --nproc-per-node=2 -m instahide.distributed train --epochs 30 --out runs/t2
    torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=HOST:29500 --rdzv-id=job1 -m instahide.distributed train-shared ...   # node 0 of 2
"""
from __future__ import annotations

import argparse
import sys

from ..cli import shared_cmd, train_cmd
from ..cli.main import run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m instahide.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    shared_cmd.add_parser(sub)
    train_cmd.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
