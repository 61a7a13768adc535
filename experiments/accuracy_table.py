"""The paper-style accuracy table: dataset x mode x k, mean and spread over seeds.

Rows: vanilla; Mixup k=4; InstaHide inside-dataset k=1, 2, 4, 6; InstaHide cross-dataset k=4 and k=6
(2 private + the rest public), on raw encryptions (the paper's training) and, for k >= 2, with |x| as
the model's first operation (``sign_invariant="on"``), side by side on the same seeds. Every run re-encrypts the whole training set at every epoch with fresh
keys (derived from the run's research seed, so the table is reproducible).

Scales (``--scale``):
  cpu   what one CPU core allows in about 1.5 hours for the whole table (24 runs per dataset): MNIST full
        (60,000 / 10,000) with mnistnet at width 0.5 for 1 epoch; CIFAR-10 on a 5,000-image training
        subset and 2,000 test images with fastnet at width 0.5 for 8 epochs.
  full  the reference recipe: CIFAR-10 full, preact_resnet18, 200 epochs (needs a GPU); MNIST full,
        mnistnet, 50 epochs.

Usage (results are appended to a JSONL file as each run ends; rerunning skips finished runs):
  .venv/bin/python experiments/accuracy_table.py --scale cpu --datasets mnist cifar10 --seeds 3
  .venv/bin/python experiments/accuracy_table.py --report          # writes docs/accuracy.md from the JSONL
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.train import TrainConfig, load_train_data, train  # noqa: E402

from _common import append_jsonl, done_keys, read_jsonl, slug, write_between_markers  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RAW = dict(sign_invariant="off")  # the paper's training on raw encryptions (the rows measured first)
ABS = dict(sign_invariant="on")   # |x| as the model's first operation (docs/accuracy.md, "Why |e| first")
CONFIGS = [  # (row label, TrainConfig overrides)
    ("vanilla", dict(mode="vanilla")),
    ("Mixup k=4", dict(mode="mixup", k=4)),
    ("InstaHide inside k=1", dict(mode="instahide", k=1, **RAW)),
    ("InstaHide inside k=2", dict(mode="instahide", k=2, **RAW)),
    ("InstaHide inside k=4", dict(mode="instahide", k=4, **RAW)),
    ("InstaHide inside k=6", dict(mode="instahide", k=6, **RAW)),
    ("InstaHide cross k=4 (2+2)", dict(mode="instahide", k=4, public="POOL", **RAW)),
    ("InstaHide cross k=6 (2+4)", dict(mode="instahide", k=6, public="POOL", **RAW)),
    ("InstaHide inside k=2, |x| first", dict(mode="instahide", k=2, **ABS)),
    ("InstaHide inside k=4, |x| first", dict(mode="instahide", k=4, **ABS)),
    ("InstaHide inside k=6, |x| first", dict(mode="instahide", k=6, **ABS)),
    ("InstaHide cross k=4 (2+2), |x| first", dict(mode="instahide", k=4, public="POOL", **ABS)),
    ("InstaHide cross k=6 (2+4), |x| first", dict(mode="instahide", k=6, public="POOL", **ABS)),
    ("Mixup k=4, short recipe", dict(mode="mixup", k=4, recipe="short")),
    ("InstaHide inside k=4, |x| first, short recipe", dict(mode="instahide", k=4, recipe="short", **ABS)),
    ("InstaHide cross k=6 (2+4), |x| first, short recipe",
     dict(mode="instahide", k=6, public="POOL", recipe="short", **ABS)),
]
SCALES = {
    "cpu": {
        "mnist": dict(dataset="mnist", root=str(SHARED / "mnist"), model="mnistnet", width=0.5, epochs=1,
                      public_size=10_000),
        "cifar10": dict(dataset="cifar10", root=str(SHARED / "cifar-10-batches-py"), model="fastnet", width=0.5,
                        subset=5000, test_subset=2000, epochs=8, public_size=10_000),
    },
    "full": {
        "mnist": dict(dataset="mnist", root=str(SHARED / "mnist"), model="mnistnet", epochs=50, public_size=10_000),
        "cifar10": dict(dataset="cifar10", root=str(SHARED / "cifar-10-batches-py"), model="preact_resnet18",
                        epochs=200, public_size=10_000),
    },
}
PUBLIC = str(SHARED / "tiny-imagenet-200-test" / "images") if (SHARED / "tiny-imagenet-200-test").exists() else "builtin"


def run(args) -> None:
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(results, ("scale", "dataset", "config", "seed"))
    torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        base = SCALES[args.scale][dataset]
        data_cache = {}
        for label, over in (CONFIGS[::-1] if args.reverse else CONFIGS):
            if args.configs and label not in args.configs:
                continue
            for seed in range(args.seeds):
                if (args.scale, dataset, label, seed) in done:
                    continue
                over2 = {**over, "public": args.public if over.get("public") else None}
                out = ROOT / "experiments" / "runs" / args.scale / dataset / slug(label) / f"seed{seed}"
                cfg = TrainConfig.make(**base, **over2, research_seed=seed, out=str(out), progress=False)
                pool_key = over2["public"]
                if pool_key not in data_cache:
                    data_cache[pool_key] = load_train_data(cfg, cfg.device if cfg.device != "auto" else
                                                           ("cuda" if torch.cuda.is_available() else "cpu"))
                t0 = time.perf_counter()
                final = train(cfg, data=data_cache[pool_key], resume=(out / "checkpoint.pt").exists())
                row = {"scale": args.scale, "dataset": dataset, "config": label, "seed": seed,
                       "test_acc": final["final_test_acc"], "best_test_acc": final["best_test_acc"],
                       "epochs": cfg.epochs, "model": final["model"], "width": cfg.width,
                       "train_images": final["train_images"], "test_images": final["test_images"],
                       "public": pool_key, "wall_seconds": time.perf_counter() - t0, "device": final["device"],
                       "threads": torch.get_num_threads(), "config_full": final["config"]}
                append_jsonl(results, row)
                print(f"{args.scale} {dataset} {label} seed {seed}: {100 * row['test_acc']:.2f}% "
                      f"({row['wall_seconds']:.0f} s)", flush=True)


def report(args) -> None:
    rows, seen = [], set()
    if not Path(args.results).exists():
        raise SystemExit(f"no results file {args.results}: run the table first")
    for r in read_jsonl(args.results):
        key = (r["scale"], r["dataset"], r["config"], r["seed"])
        if key not in seen:  # two processes may have run the same cell: keep the first result
            seen.add(key)
            rows.append(r)
    lines = ["| scale | dataset | configuration | test accuracy (mean +- std) | seeds | per seed | wall s / run |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    keys = []
    for r in rows:
        key = (r["scale"], r["dataset"], r["config"])
        if key not in keys:
            keys.append(key)
    order = {label: i for i, (label, _) in enumerate(CONFIGS)}
    keys.sort(key=lambda k: (k[0], k[1], order.get(k[2], 99)))
    for key in keys:
        rs = [r for r in rows if (r["scale"], r["dataset"], r["config"]) == key]
        accs = [100 * r["test_acc"] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        wall = statistics.mean(r["wall_seconds"] for r in rs)
        label = key[2].replace("|", "\\|")  # "|x|" in a Markdown cell
        lines.append(f"| {key[0]} | {key[1]} | {label} | {statistics.mean(accs):.2f} +- {std:.2f} | {len(accs)} | "
                     f"{', '.join(f'{a:.2f}' for a in accs)} | {wall:.0f} |")
    table = "\n".join(lines)
    write_between_markers(args.doc, "table", table)
    print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=list(SCALES), default="cpu")
    p.add_argument("--datasets", nargs="+", default=["cifar10", "mnist"], choices=["mnist", "cifar10"])
    p.add_argument("--configs", nargs="*", default=None, help="only these row labels")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reverse", action="store_true", help="run the rows in reverse order (a second worker)")
    p.add_argument("--public", default=PUBLIC, help=f"public pool for the cross rows (default {PUBLIC})")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--results", default=str(ROOT / "experiments" / "results" / "accuracy.jsonl"))
    p.add_argument("--report", action="store_true", help="only write the table to --doc from the results")
    p.add_argument("--doc", default=str(ROOT / "docs" / "accuracy.md"))
    args = p.parse_args()
    report(args) if args.report else run(args)


if __name__ == "__main__":
    main()
