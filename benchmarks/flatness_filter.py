"""The fast flatness filter against SIFT on real photographs: agreement of keep/drop decisions, and speed.

For each source (ImageNet photographs, Tiny-ImageNet images, the built-in photographs) and resize
setting, cut ``--n`` random 32x32 patches (seeds other than those the threshold was chosen on), then,
on the same patches and one CPU thread each, one right after the other:
- SIFT: scikit-image keypoints per patch (instahide.data.sift_keypoint_count), kept if > 10;
- fast: batched DoG keypoints (instahide.data.flatness.dog_keypoint_count), kept if > FAST_THRESHOLD.
Prints ms per patch for both and their ratio, and precision / recall / Cohen's kappa of the fast
decision against SIFT's, per source and over all patches (plus kappa at neighbouring thresholds).
Results go to docs/bench_flatness.json with the machine and the command.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flatness_filter.py --n 1000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.data import builtin_photographs, random_patches, sift_keypoint_count  # noqa: E402
from instahide.data.flatness import FAST_THRESHOLD, SIFT_THRESHOLD, agreement, dog_keypoint_count  # noqa: E402
from instahide.data.folders import list_image_files  # noqa: E402
from instahide.data.public import PhotoFiles  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from encrypt import machine  # noqa: E402  (CPU model, cores, load)

SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="patches per source and resize setting")
    p.add_argument("--seed", type=int, default=100, help="patch seed (the threshold was chosen on seeds 11-14)")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench_flatness.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    sources = []
    folder = SHARED / "imagenet-sample"
    if folder.is_dir():
        photos = PhotoFiles(list_image_files(folder), 3)
        sources += [("ImageNet sample", photos, 40), ("ImageNet sample", photos, 64)]
    folder = SHARED / "tiny-imagenet-200-test" / "images"
    if folder.is_dir():
        photos = PhotoFiles(list_image_files(folder), 3)
        sources += [("Tiny-ImageNet", photos, None), ("Tiny-ImageNet", photos, 40)]
    sources.append(("built-in photos", builtin_photographs(3), 40))

    rows, all_fast, all_sift, t_sift, t_fast, n_all = [], [], [], 0.0, 0.0, 0
    print("| source | resize | patches | SIFT ms/patch | fast ms/patch | speed-up | SIFT keeps | fast keeps "
          "| precision | recall | kappa |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, (name, photos, resize) in enumerate(sources):
        patches = random_patches(photos, args.n, (32, 32), resize=resize, seed=args.seed + i)
        t = time.perf_counter()
        sift = np.array([sift_keypoint_count(q) for q in patches])
        ts = time.perf_counter() - t
        t = time.perf_counter()
        fast = dog_keypoint_count(patches).numpy()
        tf = time.perf_counter() - t
        a = agreement(fast > FAST_THRESHOLD, sift > SIFT_THRESHOLD)
        row = {"source": name, "resize": resize, "patches": len(patches), "sift_ms": 1e3 * ts / len(patches),
               "fast_ms": 1e3 * tf / len(patches), "speedup": ts / tf, **a}
        rows.append(row)
        all_fast.append(fast)
        all_sift.append(sift)
        t_sift, t_fast, n_all = t_sift + ts, t_fast + tf, n_all + len(patches)
        print(f"| {name} | {resize or 'none'} | {len(patches)} | {row['sift_ms']:.2f} | {row['fast_ms']:.3f} | "
              f"{row['speedup']:.0f}x | {a['reference_keep_rate']:.2f} | {a['keep_rate']:.2f} | {a['precision']:.3f} | "
              f"{a['recall']:.3f} | {a['kappa']:.3f} |", flush=True)
    fast, sift = np.concatenate(all_fast), np.concatenate(all_sift)
    total = agreement(fast > FAST_THRESHOLD, sift > SIFT_THRESHOLD)
    print(f"| all | | {n_all} | {1e3 * t_sift / n_all:.2f} | {1e3 * t_fast / n_all:.3f} | {t_sift / t_fast:.0f}x | "
          f"{total['reference_keep_rate']:.2f} | {total['keep_rate']:.2f} | {total['precision']:.3f} | "
          f"{total['recall']:.3f} | {total['kappa']:.3f} |")
    thresholds = {t: agreement(fast > t, sift > SIFT_THRESHOLD)["kappa"] for t in range(FAST_THRESHOLD - 3, FAST_THRESHOLD + 4)}
    print("kappa by fast threshold (SIFT > 10 fixed): "
          + ", ".join(f"> {t}: {k:.3f}" for t, k in thresholds.items()))
    print(f"Pearson correlation of the two keypoint counts: {np.corrcoef(fast, sift)[0, 1]:.3f}")
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flatness_filter.py " + " ".join(sys.argv[1:]),
        "machine": {**machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "note": "shared machine: other jobs ran at the same time"},
        "date": time.strftime("%Y-%m-%d"), "fast_threshold": FAST_THRESHOLD, "sift_threshold": SIFT_THRESHOLD,
        "rows": rows, "all": {**total, "sift_ms": 1e3 * t_sift / n_all, "fast_ms": 1e3 * t_fast / n_all,
                              "speedup": t_sift / t_fast},
        "kappa_by_threshold": thresholds, "count_correlation": float(np.corrcoef(fast, sift)[0, 1]),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    print(f"machine: {m['cpu_model']}, {m['cpu_count']} cores, load {m['loadavg_1min']}, torch {torch.__version__}, "
          f"one thread; wrote {args.out}")


if __name__ == "__main__":
    main()
