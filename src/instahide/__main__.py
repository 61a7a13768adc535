"""``python -m instahide COMMAND ...``: the command line, also under torchrun::

    torchrun --standalone --nproc-per-node=2 -m instahide train-shared --encrypted runs/a runs/b --out runs/s
    torchrun --standalone --nproc-per-node=2 -m instahide train --epochs 30 --out runs/t2
"""
import sys

from .cli.main import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
