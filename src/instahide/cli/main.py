"""Entry point of the ``instahide`` command."""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..data import DATASETS
from . import attack_cmd, audit_cmd, challenge_cmd, demo_cmd, encrypt_cmd, federated_cmd, shared_cmd, show_cmd, train_cmd
from ._common import CLIError
from . import compare_cmd
from . import pool_cmd

DESCRIPTION = """\
InstaHide (Huang, Song, Li, Arora, ICML 2020): encrypt training images by mixing each with k-1 others
under random coefficients and flipping the sign of every pixel value at random; train on the
encryptions. InstaHide is NOT cryptographic encryption and has published attacks: the mask hides
signs, not magnitudes. Measure what a configuration leaks before relying on it.

start here:
  instahide demo                      encrypt built-in digits, draw them, measure what the mask hides
  instahide encrypt --out runs/enc    encrypt a dataset to encryption.npy / label.npy
  instahide show --out grid.png       originals, Mixup, encryption and |encryption| side by side
  instahide train --out runs/t        train on encryptions (re-encrypted every epoch), checkpointed
  instahide evaluate --checkpoint C   clean accuracy and inference with InstaHide (accuracy vs T)
  instahide federated --out runs/fed  federated training with Flower: N parties, each with its own keys
  instahide train-shared --encrypted DIR ...  train on several parties' encryption folders (no keys);
                                      under torchrun: DistributedDataParallel
  instahide challenge make / score    the InstaHide challenge: generate one, score a decryption
  instahide attack NAME               run an attack on a challenge (demix, carlini, seed, oracle)
  instahide audit --out runs/audit    what a configuration leaks on your images: attacks + report
  instahide datasets                  the datasets it reads and where they come from
"""


def _datasets(args) -> int:
    width = max(map(len, DATASETS))
    for name, text in DATASETS.items():
        print(f"{name:<{width}}  {text}")
    return 0


class Parser(argparse.ArgumentParser):
    """Options are spelt out in full (``--fo`` is not ``--force``), and an argument a (sub)command does
    not know is reported with that command's usage. Every subcommand's parser is one of these."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_known_args(self, args=None, namespace=None):
        # argparse hands a subcommand's unknown arguments up to the top-level parser, which then
        # prints its own usage; here the parser that met them reports them
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="instahide", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"instahide {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    demo_cmd.add_parser(sub)
    encrypt_cmd.add_parser(sub)
    show_cmd.add_parser(sub)
    train_cmd.add_parsers(sub)
    shared_cmd.add_parser(sub)
    federated_cmd.add_parser(sub)
    challenge_cmd.add_parser(sub)
    attack_cmd.add_parser(sub)
    audit_cmd.add_parser(sub)
    compare_cmd.add_parser(sub)
    pool_cmd.add_parser(sub)
    p = sub.add_parser("datasets", help="list the datasets instahide reads")
    p.set_defaults(func=_datasets)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen command; user errors exit 2 with one line."""
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, OSError) as exc:  # user errors, and files that cannot be read or written
        if isinstance(exc, OSError) and exc.strerror and exc.filename:
            exc = f"{exc.strerror}: {exc.filename}"
        print(f"instahide {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
