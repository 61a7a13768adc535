"""``instahide compare``: InstaHide beside vanilla training, Mixup and DP-SGD (Opacus) on one chart."""
from __future__ import annotations

import argparse

from .._config import add_arguments, from_args
from ..compare import CompareConfig, run_compare
from ._common import CLIError

HELP = "InstaHide beside vanilla, Mixup and DP-SGD (Opacus): accuracy and what three threat models' attacks get"
DESCRIPTION = """\
Train every method with the same network, budget and halves of the pool, and run the attacks of every
threat model that applies to it:
  (a) a federated eavesdropper inverting one client's update (gradient inversion, batch 1);
  (b) the challenge attacks on the data handed over (Mixup and InstaHide rows: demixing, Carlini
      et al., Luo et al.'s fusion; the best recovery of each image over them);
  (c) membership inference against the final model (loss threshold; LiRA with the method's other
      models as reference models), as AUC and TPR at 1% FPR.
Methods: vanilla, mixup-kK, instahide-kK, instahide-cross-kK, dp-epsE (DP-SGD through Opacus, the
optional extra: pip install "instahide[dp]"), and instahide-kK+dp-epsE.
Writes OUT/results.csv (one line per method; "n/a" and the reason where a measure does not apply),
OUT/frontier.png (accuracy against each attack measure), OUT/report.md (what each number means), and
OUT/work/ (every trained model's scores and every attack's result as it finishes: --resume reuses them).

The numbers are those of the attacks run here at this scale; none of them shows that a configuration
hides anything from other attacks.

examples:
  instahide compare --threads 1 --out runs/compare      # built-in digits (docs/compare.md: 4 min on a quiet
                                                        # 2-core machine, 23.5 min on one shared with other jobs)
  instahide compare --methods vanilla instahide-k4 dp-eps3 --models 4 --epochs 5 --out runs/quick
  instahide compare --dataset cifar10 --root data/cifar-10-batches-py --subset 10000 --test-subset 2000 \\
      --width 0.5 --epochs 8 --batch-size 128 --lr 0.1 --gradinv-images 4 --challenge-T 50 \\
      --fusion-time 300 --threads 1 --out runs/compare-c10   # CPU scale, hours (docs/compare.md)
"""


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", action="store_true", help="continue OUT: reuse the models and attacks already done")
    p.add_argument("--force", action="store_true", help="start OUT again (its work/ folder is deleted)")
    add_arguments(p, CompareConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.resume and args.force:
        raise CLIError("--resume and --force exclude each other")
    try:
        cfg = from_args(args, CompareConfig).validate()
        result = run_compare(cfg, resume=args.resume, force=args.force, log=lambda msg: print(msg, flush=True))
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
        raise CLIError(str(exc)) from exc
    print("results: " + ", ".join(str(p) for p in result.paths.values()))
    return 0
