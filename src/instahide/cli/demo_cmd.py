"""``instahide demo``: the README's first command, on built-in data (no download)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .._io import atomic_write_text
from ..scheme import KeyGenerator, encrypt
from .show_cmd import show

HELP = "encrypt the built-in digits several ways, draw them, and measure what the mask hides"
DESCRIPTION = """\
Runs on scikit-learn's handwritten digits and public patches cut from the photographs that ship with
scikit-image (nothing is downloaded). Encrypts the training split with Mixup, inside-dataset InstaHide
(k=4) and cross-dataset InstaHide (k=6: 2 private + 4 public), draws each, and measures how much of the
encrypted image is still visible, as the correlation between an encryption and its own private image:
corr(e, x) (what the mask scrambles) and |corr(|e|, x)| (what the mask leaves: |e| = |Mixup|).
Writes OUT/report.md, OUT/results.json and the pictures.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="report folder (default runs/demo)")
    p.add_argument("--research-seed", type=int, default=0, metavar="N",
                   help="seed for a reproducible demo (default 0; keys from it are NOT private)")
    p.set_defaults(func=run)


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of ``(N, ...)`` tensors."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def run(args) -> int:
    from ..data import load_dataset, load_public_pool

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = load_dataset("digits", split="train")
    x, y = ds.to_tensor()
    pool = load_public_pool("builtin", n=2000, size=tuple(x.shape[2:]), channels=x.shape[1], seed=0)
    px, _ = pool.to_tensor()
    gen = KeyGenerator.from_seed(args.research_seed)
    configs = [
        ("Mixup k=4", dict(k=4, mode="mixup")),
        ("InstaHide inside k=4", dict(k=4)),
        ("InstaHide cross k=6 (2+4)", dict(k=6, public=px, num_private=2)),
    ]
    results = []
    for name, kw in configs:
        enc = encrypt(x, y, num_classes=ds.num_classes, generator=gen, **kw)
        raw = _corr(enc.images, x)
        mag = _corr(enc.images.abs(), x).abs()  # |e| keeps the image up to a sign flip of the scale
        results.append({"config": name, "corr_raw_mean": raw.mean().item(), "corr_abs_mean": mag.mean().item(),
                        "share_raw_corr_above_0.5": (raw > 0.5).float().mean().item()})
    pics = []
    for label, kw in [("inside_k4", dict(k=4)), ("cross_k6", dict(k=6, num_private=2))]:
        path = out / f"grid_{label}.png"
        show(x, px if "num_private" in kw else None, ds.mean, ds.std, 10, path,
             title=f"digits, InstaHide {label.replace('_', ' ')}", upper=0.65, mode="instahide",
             legacy=False, allow_uncentred=False, seed=args.research_seed, dom=0.3, **kw)
        pics.append(path.name)
    seconds = time.perf_counter() - t0
    lines = [
        "# instahide demo",
        "",
        f"Private data: {ds.name}, {len(ds)} training images of shape {tuple(x.shape[1:])}, normalised with",
        f"mean {ds.mean} / std {ds.std}. Public pool: {len(pool)} patches of the photographs that ship with",
        f"scikit-image / scikit-learn. Keys from research seed {args.research_seed} (reproducible, not private).",
        "",
        "Correlation between each encryption and its own private image (mean over all images):",
        "",
        "| configuration | corr(e, x) | abs corr(abs(e), x) | share corr(e, x) > 0.5 |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(f"| {r['config']} | {r['corr_raw_mean']:.3f} | {r['corr_abs_mean']:.3f} | "
                     f"{r['share_raw_corr_above_0.5']:.1%} |")
    lines += [
        "",
        "Read it this way: Mixup leaves each image plainly visible in its mixture. The sign mask drives",
        "corr(e, x) to about zero, but |encryption| = |Mixup| exactly, so the magnitudes still carry the",
        "image (third column; the |encryption| row of the pictures shows it, often with inverted contrast).",
        "These correlations are a crude first look, not an attack: the published attacks recover far more.",
        "InstaHide is not encryption in the cryptographic sense; measure a configuration with attacks",
        "before relying on it.",
        "",
        *[f"![{p}]({p})" for p in pics],
        "",
        f"Run time: {seconds:.1f} s.",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "results.json", json.dumps({"results": results, "seconds": seconds,
                                                       "research_seed": args.research_seed}, indent=2) + "\n")
    print("\n".join(lines[6:6 + 4 + len(results)]))
    print(f"\nwrote {out / 'report.md'} and {', '.join(pics)} in {seconds:.1f} s")
    return 0
