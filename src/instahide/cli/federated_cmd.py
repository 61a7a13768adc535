"""``instahide federated``: federated training with InstaHide, simulated on this machine with Flower."""
from __future__ import annotations

import argparse

from .._config import add_arguments, from_args
from ..federated import FedConfig
from ._common import CLIError, report_run

HELP = "federated training with Flower: N parties, each encrypting its own data with its own keys"
DESCRIPTION = """\
Simulate a federation on this machine: the training set is split among --num-parties parties (IID, or
non-IID with --partition dirichlet --alpha A); every round each party re-encrypts its own images with
fresh keys of its own (InstaHide, Mixup, or plain images with --mode vanilla), trains locally, and
sends only its model weights and scalar metrics to the server, which aggregates them with a Flower
strategy (FedAvg by default) and evaluates the global model on the clean test set. Writes
OUT/checkpoint.pt (atomically, every round), OUT/rounds.jsonl and OUT/final.json; --resume continues.

--backend ray (default) is Flower's simulation engine (flwr.simulation.run_simulation, one CPU per
party, --num-cpus in all); --backend inprocess runs the same apps sequentially in this process (no Ray).
Deployed runs (one process per party, several machines): docs/federated.md.

examples:
  instahide federated --num-parties 4 --rounds 10 --out runs/fed-ih                 # digits, k=4
  instahide federated --mode vanilla --num-parties 4 --rounds 10 --out runs/fed-vanilla
  instahide federated --partition dirichlet --alpha 0.5 --num-parties 8 --out runs/fed-noniid
  instahide federated --strategy fedprox --proximal-mu 0.01 --out runs/fed-prox
  instahide federated --dataset mnist --root data/mnist --subset 6000 --width 0.5 --out runs/fed-mnist
"""


def add_parser(sub) -> None:
    """Register ``instahide federated`` on the subparsers ``sub``."""
    p = sub.add_parser("federated", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="ray", choices=["ray", "inprocess"],
                   help="ray: Flower's simulation engine (default); inprocess: sequential, no Ray")
    p.add_argument("--num-cpus", type=int, default=None, metavar="N",
                   help="CPUs the Ray simulation may use in all (default: min(parties, cores))")
    add_arguments(p, FedConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        cfg = from_args(args, FedConfig).validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if cfg.dataset != "digits" and cfg.root is None:
        raise CLIError(f"--dataset {cfg.dataset} needs --root PATH (nothing is downloaded), or use --dataset digits")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise CLIError(f"--num-cpus must be >= 1, got {args.num_cpus}")
    try:
        from ..federated.simulation import run_federated
    except ImportError as exc:
        raise CLIError(f"federated training needs Flower: pip install 'instahide[federated]' ({exc})") from exc
    try:
        final = run_federated(cfg, backend=args.backend, num_cpus=args.num_cpus)
    except (ValueError, ImportError, OSError, FloatingPointError) as exc:
        raise CLIError(str(exc)) from exc
    report_run(f"{cfg.scheme.mode} {final['model_name']}, {cfg.num_parties} parties ({cfg.partition}), "
               f"{cfg.strategy}", final, "round", cfg)
    return 0
