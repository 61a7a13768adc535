"""How the paper's SIFT filter behaves on 32x32 public patches (docs/scheme.md, "Public pools: the SIFT filter").

For each photograph source and resize setting: cut ``--n`` random 32x32 patches (no filter), count
scikit-image SIFT keypoints on each (instahide.data.sift_keypoint_count, SIFT_PARAMS), and print the
time per patch, the median count and the share of patches with MORE than 10 / 20 / 40 keypoints (the
paper keeps patches with more than 40).

  .venv/bin/python benchmarks/sift_filter.py --n 1000
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.data import builtin_photographs, random_patches, sift_keypoint_count  # noqa: E402
from instahide.data.folders import list_image_files  # noqa: E402
from instahide.data.public import PhotoFiles  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args()
    sources = {"built-in photos": builtin_photographs(3)}
    for name, folder in (("Tiny-ImageNet", SHARED / "tiny-imagenet-200-test" / "images"),
                         ("ImageNet sample", SHARED / "imagenet-sample")):
        if folder.is_dir():
            sources[name] = PhotoFiles(list_image_files(folder), 3)
    print("| source | resize | ms/patch | median keypoints | > 10 | > 20 | > 40 |")
    print("|---|---|---|---|---|---|---|")
    for name, photos in sources.items():
        for resize in (40, None):
            patches = random_patches(photos, args.n, (32, 32), resize=resize, seed=0)
            t = time.perf_counter()
            counts = np.array([sift_keypoint_count(q) for q in patches])
            ms = 1000 * (time.perf_counter() - t) / len(patches)
            share = [float((counts > th).mean()) for th in (10, 20, 40)]
            print(f"| {name} | {resize or 'none'} | {ms:.1f} | {np.median(counts):.0f} | "
                  + " | ".join(f"{s:.3f}" for s in share) + " |", flush=True)


if __name__ == "__main__":
    main()
