"""``instahide pool build``: a public pool of millions of patches as one uint8 ``.npy`` (docs/pools.md)."""
from __future__ import annotations

import argparse
import os
import sys
import time

from ..data.flatness import FAST_THRESHOLD, FILTERS, SIFT_THRESHOLD
from ..data.pool import SHARD_SIZE, build_pool, pool_sidecar
from ._common import CLIError

HELP = "build a large public pool (uint8 .npy + JSON sidecar) in parallel, resumable"
DESCRIPTION = f"""\
Cuts --count distinct random patches from photographs (--source: a folder searched recursively,
'builtin' for the photographs that ship with scikit-image, or a .npy/.npz image file; repeat it to
combine sources), drops flat patches, and writes OUT (an (M, H, W, C) uint8 .npy) and OUT's sidecar
<stem>.json (source, patch size, filter, count, per-channel mean/std). Pass OUT to --public.

Filters: fast (difference-of-Gaussians keypoints > {FAST_THRESHOLD}, batched in torch; about SIFT's
decision, measured in docs/pools.md), sift (scikit-image SIFT keypoints > {SIFT_THRESHOLD}, slow), none.
Photographs are visited round-robin, each giving about the same number of patches; --resize R first
resizes every photograph to short side R (the paper: 40), which also evens out crop positions.

The work is split into shards of {SHARD_SIZE:,} candidates written to OUT.parts/ as they finish; a
killed build continues with --resume and gives the same pool. The pool depends on --research-seed
and the options, not on --workers.

  instahide pool build --source imagenet/train --out pool.npy --count 1000000 --size 32 --resize 64
"""


def add_parser(sub) -> None:
    pool = sub.add_parser("pool", help=HELP, description=HELP)
    actions = pool.add_subparsers(dest="pool_command", metavar="ACTION", parser_class=type(pool))
    p = actions.add_parser("build", help=HELP, description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", action="append", required=True, metavar="FOLDER|builtin|FILE",
                   help="photographs to cut patches from (repeat for several)")
    p.add_argument("--out", required=True, metavar="POOL.npy", help="the pool file to write")
    p.add_argument("--count", type=int, required=True, metavar="M", help="patches in the pool")
    p.add_argument("--size", type=int, default=32, metavar="S", help="patch side in pixels (default 32)")
    p.add_argument("--filter", choices=FILTERS, default="fast", help="flatness filter (default fast)")
    p.add_argument("--threshold", type=int, default=None, metavar="T",
                   help=f"keep patches with MORE than T keypoints (default {FAST_THRESHOLD} fast, {SIFT_THRESHOLD} sift)")
    p.add_argument("--resize", type=int, default=None, metavar="R",
                   help="resize photographs to short side R first (default: as they are; the paper: 40)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 = luminance, 3 = RGB (default)")
    p.add_argument("--research-seed", type=int, default=0, metavar="N", help="which patches (default 0)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="processes (default: every core)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, metavar="N",
                   help=f"candidates per shard (default {SHARD_SIZE:,}; memory per worker about N x patch bytes)")
    p.add_argument("--resume", action="store_true", help="continue a killed build from OUT.parts/")
    p.add_argument("--force", action="store_true", help="replace an existing pool")
    p.set_defaults(func=run)
    pool.set_defaults(func=lambda args: (pool.print_help(), 2)[1])


def _progress(stream):
    last = [0.0]
    tty = stream.isatty()

    def show(state: dict) -> None:
        now = time.monotonic()
        done = state["kept"] >= state["count"]
        if not done and now - last[0] < (0.5 if tty else 30):
            return
        last[0] = now
        rate = state["kept"] / state["examined"] if state["examined"] else 0
        new = state["examined"] - state["resumed_examined"]  # this run's, not a resumed run's
        speed = new / state["elapsed_s"] if state["elapsed_s"] > 0 else 0
        line = (f"pool: {min(state['kept'], state['count']):,} / {state['count']:,} patches kept "
                f"({state['examined']:,} candidates, keep rate {rate:.2f}, {state['shards']} shards, "
                f"{speed:,.0f} candidates/s, {state['elapsed_s']:.0f} s"
                + (f", {state['resumed_shards']} shards from before" if state["resumed_shards"] else "") + ")")
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=stream, flush=True)

    return show


def run(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    try:
        meta = build_pool(
            args.source, args.out, args.count, args.size, filter=args.filter, threshold=args.threshold,
            resize=args.resize, channels=args.channels, seed=args.research_seed, workers=args.workers,
            resume=args.resume, force=args.force, shard_size=args.shard_size, progress=_progress(sys.stderr),
        )
    except (ValueError, RuntimeError) as exc:
        raise CLIError(str(exc)) from exc
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"wrote {args.out} ({meta['count']:,} x {meta['patch_size'][0]}x{meta['patch_size'][1]}x{meta['channels']} "
          f"uint8, {os.path.getsize(args.out) / 1e9:.2f} GB) and {pool_sidecar(args.out)}; keep rate "
          f"{meta['filter']['keep_rate']:.3f}, mean {meta['mean']}, std {meta['std']}")
    return 0
