"""Generator-seed recovery on legacy challenges over the WHOLE 32-bit seed space (issue 12, section 1).

The challenge is the one of docs/carlini.md, "Legacy challenges": the first ``--n`` CIFAR-10 test
images, ``--T`` encryptions each, cross-dataset k = 6 (2 private + 4 public slots), c1 = 0.65,
c2 = 0.3, pixels in [-1, 1], a pool of 4,000 built-in photograph patches (seed 0) of which the
reference code's window uses the first ``n``, keys from the reference's Mersenne-Twister replay
(``make_challenge(..., legacy=True)``), rows shuffled (``--shuffle-seed``). The legacy seed is drawn
from OS entropy (``legacy_seed()``, uniform in [0, 2^32)) unless ``--legacy-seed`` names one (e.g.
2^32 - 1: the last seed searched, the worst case). The attack gets the encryptions and labels only
and searches [0, 2^32) on every core (``recover_seed``, rows in any order), then solves for the
private images AND the ``n`` recurring public images by least squares on the unmasked mixtures.

    .venv/bin/python experiments/legacy_seed.py --n 20 --T 50 --tag cpu-size
    .venv/bin/python experiments/legacy_seed.py --n 20 --T 50 --legacy-seed 4294967295 --tag worst-case
    .venv/bin/python experiments/legacy_seed.py --n 100 --T 50 --tag published-size

Each run appends one JSON line to ``experiments/results/legacy/legacy_seed.jsonl`` (the seed, the
seconds, the scores, the public images' SSIM to the truth) and draws originals, recovered images,
the true window images and the recovered public images to ``docs/img/legacy_seed_n{n}.png``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))

from _common import append_jsonl  # noqa: E402

from instahide.attacks import recover_seed  # noqa: E402
from instahide.challenge import make_challenge, score  # noqa: E402
from instahide.data import load_dataset, load_public_pool  # noqa: E402
from instahide.metrics import ssim  # noqa: E402
from instahide.scheme.legacy import legacy_seed  # noqa: E402


def public_ssim(recovered: np.ndarray, window: np.ndarray) -> np.ndarray:
    """SSIM (data range 2) of each recovered public unknown to the true window image of the same index:
    the replayed keys name the window rows, so no matching is needed."""
    return ssim(np.asarray(recovered, np.float32), np.asarray(window, np.float32), data_range=2.0,
                reduction="none").numpy()


def picture(path, originals, recovered, window, public, title) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = min(10, len(originals))
    rows = [("private originals", originals), ("recovered", recovered), ("public window (truth)", window),
            ("public, recovered", public)]
    fig, axes = plt.subplots(4, m, figsize=(1.2 * m, 5.2))
    for r, (name, imgs) in enumerate(rows):
        for c in range(m):
            ax = axes[r, c]
            ax.imshow(np.clip((np.transpose(imgs[c], (1, 2, 0)) + 1) / 2, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--pool", type=int, default=4000)
    p.add_argument("--legacy-seed", type=int, default=None, help="default: drawn from OS entropy")
    p.add_argument("--shuffle-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="filter threads (default: torch's thread count)")
    p.add_argument("--tag", default="run")
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar-10-batches-py"))
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "legacy" / "legacy_seed.jsonl"))
    args = p.parse_args()

    test = load_dataset("cifar10", root=args.root, split="test")
    pool = load_public_pool("builtin", n=args.pool, size=(32, 32), channels=3, seed=0).images
    seed = legacy_seed() if args.legacy_seed is None else int(args.legacy_seed)
    enc, lab, truth = make_challenge(test.images[:args.n], test.labels[:args.n], pool, T=args.T, k=6,
                                     legacy=True, research_seed=seed, num_classes=10)
    perm = np.random.default_rng(args.shuffle_seed).permutation(len(enc))
    enc, lab = enc[perm], lab[perm]
    truth = replace(truth, indices=truth.indices[perm], coefficients=truth.coefficients[perm])

    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 30 or done == total:
            last[0] = time.perf_counter()
            print(f"  searched {done / 2 ** 32:.1%} of the seed space ({done:,} seeds)", flush=True)

    print(f"legacy challenge {args.n} x {args.T}, rows shuffled; searching [0, 2^32) for its seed", flush=True)
    t0 = time.perf_counter()
    found = recover_seed(enc, lab, n_private=args.n, k=6, num_private=2, seed_range=(0, 2 ** 32),
                         threads=args.threads, progress=progress)
    seconds = time.perf_counter() - t0
    row = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "tag": args.tag, "n": args.n, "T": args.T,
           "rows": len(enc), "pool": args.pool, "k": 6, "num_private": 2, "scaling": "pm1",
           "shuffle_seed": args.shuffle_seed, "legacy_seed": seed, "seconds": round(seconds, 1)}
    if found is None:
        row["found"] = None
        print(f"no seed found in {seconds:.0f} s")
    else:
        res = score(found.decryption, truth)
        window = truth.public[:args.n]
        pub = public_ssim(found.public, window)
        row.update({"found": found.seed, "seeds_checked": found.seeds_checked, "residual": found.residual,
                    "Max_SSIM": res.max_ssim, "Mean_SSIM": res.mean_ssim, "share_above_0.8": res.share_above,
                    "public_ssim_min": float(pub.min()), "public_ssim_mean": float(pub.mean()),
                    "public_recovered_above_0.9": int((pub > 0.9).sum()), **found.info})
        print(f"seed {found.seed} (true {seed}) in {seconds:.0f} s: Max_SSIM {res.max_ssim:.4f}, "
              f"public images SSIM {pub.min():.4f}-{pub.max():.4f} ({int((pub > 0.9).sum())}/{args.n} > 0.9)")
        try:
            img = ROOT / "docs" / "img" / f"legacy_seed_n{args.n}.png"
            order = truth.indices[:, 0]
            first = [int(np.flatnonzero(order == i)[0]) for i in range(min(10, args.n))]
            picture(img, truth.private[:10], found.decryption[first], window[:10], found.public[:10],
                    f"legacy {args.n} x {args.T}: seed found in {seconds:.0f} s, Max_SSIM {res.max_ssim:.3f}")
            row["picture"] = str(img.relative_to(ROOT))
        except ImportError:
            pass
    row["rows"] = args.n * args.T  # found.info's "rows" (the matched row of each replayed row) is not kept
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(args.out, {k: v for k, v in row.items() if not isinstance(v, list)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
