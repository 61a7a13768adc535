"""The long CPU run: test accuracy per epoch on all 50,000 CIFAR-10 training images, four configurations
side by side (vanilla, Mixup k=4, InstaHide inside k=4 on raw encryptions, the same with |x| first).

The runs advance in turns, one epoch each (vanilla epoch 1, Mixup epoch 1, ..., vanilla epoch 2, ...),
so that whenever the job is stopped all four curves stand at (nearly) the same epoch. Each run keeps
its own resumable run folder under ``experiments/curve_state/`` (checkpoint written atomically after
every epoch; the folder is committed at the end of a session, because a new session starts from a fresh
checkout and gitignored run folders do not survive); one row per finished epoch is appended to
``experiments/results/cifar_curve.jsonl``. Rerunning the same command continues where it stopped.
``--configs`` splits the four runs over processes (one thread each on a 2-core machine). Every run plans ``--epochs`` epochs with the
reference schedule (lr 0.1, x0.1 at half and three quarters of the plan), so a stopped and resumed
run follows exactly the schedule of an uninterrupted one.

Usage (one thread per process: it runs for many hours on a 2-core machine):
  OMP_NUM_THREADS=1 nohup .venv/bin/python experiments/cifar_curve.py --threads 1 --configs 0 3 &
  OMP_NUM_THREADS=1 nohup .venv/bin/python experiments/cifar_curve.py --threads 1 --configs 1 2 &
  .venv/bin/python experiments/cifar_curve.py --report   # table + picture into docs/
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instahide.train import TrainConfig, load_train_data, train  # noqa: E402

from _common import append_jsonl, read_jsonl, slug, write_between_markers  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CONFIGS = [
    ("vanilla", dict(mode="vanilla")),
    ("Mixup k=4", dict(mode="mixup", k=4)),
    ("InstaHide inside k=4, raw", dict(mode="instahide", k=4, sign_invariant="off")),
    ("InstaHide inside k=4, |x| first", dict(mode="instahide", k=4, sign_invariant="on")),
]
BASE = dict(dataset="cifar10", root=str(SHARED / "cifar-10-batches-py"), model="fastnet", width=0.5)


class _Turn(Exception):
    """Raised after one epoch's checkpoint is written: the next configuration's turn."""


def run(args) -> None:
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    logged = {(r["config"], r["epoch"]) for r in read_jsonl(results)}
    data = None
    while True:
        advanced = False
        for label, over in [CONFIGS[i] for i in args.configs]:
            out = Path(args.runs) / slug(label) / f"seed{args.seed}"
            cfg = TrainConfig.make(**BASE, **over, epochs=args.epochs, research_seed=args.seed, out=str(out),
                                   progress=False)
            if data is None:
                data = load_train_data(cfg, "cpu")
            done = _epochs_done(out)
            if done >= args.epochs:
                continue

            def stop(epoch, metrics, label=label):
                row = {"config": label, "seed": args.seed, "epoch": epoch, "test_acc": metrics["test_acc"],
                       "train_acc": metrics["train_acc"], "train_loss": metrics["train_loss"], "lr": metrics["lr"],
                       "epoch_seconds": metrics["epoch_seconds"], "planned_epochs": args.epochs,
                       "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                if (label, epoch) not in logged:
                    append_jsonl(results, row)
                    logged.add((label, epoch))
                print(f"{label}: epoch {epoch}/{args.epochs} test acc {100 * metrics['test_acc']:.2f}% "
                      f"({metrics['epoch_seconds']:.0f} s)", flush=True)
                if epoch < args.epochs:  # after the last epoch, let train() write final.json
                    raise _Turn

            try:
                train(cfg, data=data, resume=(out / "checkpoint.pt").exists(), on_epoch_end=stop)
            except _Turn:
                pass
            advanced = True
        if not advanced:
            return


def _epochs_done(out: Path) -> int:
    if not (out / "checkpoint.pt").exists():
        return 0
    return len(read_jsonl(out / "metrics.jsonl"))


def report(args) -> None:
    rows = read_jsonl(args.results)
    if not rows:
        raise SystemExit(f"no results in {args.results}: run the curve first")
    by = {label: {} for label, _ in CONFIGS}
    for r in rows:
        by.setdefault(r["config"], {}).setdefault(r["epoch"], 100 * r["test_acc"])
    epochs = sorted({e for curve in by.values() for e in curve})
    head = "| epoch | " + " | ".join(label.replace("|", "\\|") for label in by) + " |"
    lines = [head, "| " + " | ".join(["---"] * (len(by) + 1)) + " |"]
    for e in epochs:
        lines.append(f"| {e} | " + " | ".join(f"{by[c][e]:.2f}" if e in by[c] else "-" for c in by) + " |")
    common = [e for e in epochs if all(e in by[c] for c in by)]
    if common:
        e = common[-1]
        gap = by["Mixup k=4"][e] - by["InstaHide inside k=4, |x| first"][e]
        lines.append(f"\nAt epoch {e} (the last all four have reached): InstaHide inside k=4 with |x| first is "
                     f"{gap:.2f} points behind Mixup k=4 (raw encryptions: "
                     f"{by['Mixup k=4'][e] - by['InstaHide inside k=4, raw'][e]:.2f}).")
    table = "\n".join(lines)
    write_between_markers(args.doc, "curve", table)
    try:
        from instahide._io import pyplot, save_figure
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, curve in by.items():
            es = sorted(curve)
            ax.plot(es, [curve[e] for e in es], marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("clean test accuracy (%)")
        ax.set_title("CIFAR-10, 50,000 training images, fastnet width 0.5")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, ROOT / "docs" / "img" / "cifar_curve.png")
    except ImportError as exc:
        print(f"no picture ({exc})")
    print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20, help="planned epochs per run (the schedule's length)")
    p.add_argument("--seed", type=int, default=0, help="research seed (keys, initialisation, order)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", type=int, nargs="+", default=list(range(len(CONFIGS))),
                   choices=range(len(CONFIGS)), metavar="I",
                   help="which runs this process advances, by index: " +
                        ", ".join(f"{i} {label}" for i, (label, _) in enumerate(CONFIGS)))
    p.add_argument("--runs", default=str(ROOT / "experiments" / "curve_state"), help="root of the run folders")
    p.add_argument("--results", default=str(ROOT / "experiments" / "results" / "cifar_curve.jsonl"))
    p.add_argument("--report", action="store_true", help="only write the table and picture from the results")
    p.add_argument("--doc", default=str(ROOT / "docs" / "accuracy.md"))
    args = p.parse_args()
    report(args) if args.report else run(args)


if __name__ == "__main__":
    main()
