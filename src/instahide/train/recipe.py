"""The training recipe: train a model on InstaHide encryptions (or Mixup, or plain images).

Sections, in order: data, model, training, evaluation. One call::

    from instahide.train import TrainConfig, train
    result = train(TrainConfig(dataset="cifar10", root="data/cifar-10-batches-py", epochs=200))

Every epoch: augment the whole private set (batched, on the device), re-encrypt all of it with fresh
one-time keys, shuffle, take SGD steps on soft-label cross-entropy, evaluate on the clean test set,
append the metrics to ``metrics.jsonl`` / ``metrics.csv``, and write ``checkpoint.pt`` atomically.
``resume=True`` continues from the checkpoint; with a research seed the resumed run ends with the
same weights as an uninterrupted one (per-epoch generators are derived from the seed and epoch).

Under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on CUDA)::

    torchrun --standalone --nproc-per-node=2 -m instahide.distributed train --epochs 30 --out runs/ddp

every rank takes a disjoint shard of the private set (a fixed permutation, equal shares; the
``N mod W`` left over are not used), augments and encrypts ITS shard every epoch with ITS OWN keys
(``KeyGenerator.from_entropy()`` on each rank, or, with a research seed, a child generator spawned
per epoch and rank, so no two ranks share a keystream), so the inside-dataset partners of an image
come from its rank's shard. Each rank takes batches of ``batch_size // W`` rows (the global batch is
``W * (batch_size // W)``); DDP all-reduces the gradients; rank 0 evaluates and writes the checkpoint
and metrics. With a research seed, a run with a given world size is deterministic (but differs from
the one-process run: other shards, other keys). World size 1 runs exactly as without torchrun.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import sys
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .._io import atomic_open, atomic_torch_save, atomic_write_text, load_torch_checkpoint
from ..distributed.dist import DistInfo, all_agree, all_reduce_sum, broadcast_object, cleanup, init_distributed
from ..scheme import KeyGenerator, encrypt
from ..data.augment import Augment
from .config import TrainConfig, make_optimizer
from .evaluate import evaluate
from .loss import soft_cross_entropy
from .models import build_model

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainData:
    """Tensors on the training device: normalised private train/test images, labels, public pool."""

    x_train: torch.Tensor          # (N, C, H, W)
    y_train: torch.Tensor          # (N,)
    x_test: torch.Tensor           # (M, C, H, W)
    y_test: torch.Tensor           # (M,)
    num_classes: int
    mean: tuple
    std: tuple
    public: torch.Tensor | None    # (P, C, H, W) or None
    name: str


# -- data -----------------------------------------------------------------------------------------
def load_train_data(cfg: TrainConfig, device) -> TrainData:
    from ..data import load_dataset, load_public_pool

    def pick(ds, n):
        if n is None or n >= len(ds):
            return ds
        if n < 1:
            raise ValueError(f"subset must be >= 1, got {n}")
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].sort().values
        return ds.subset(order.numpy())

    train_ds = pick(load_dataset(cfg.dataset, root=cfg.root, split="train"), cfg.subset)
    test_ds = pick(load_dataset(cfg.dataset, root=cfg.root, split="test"), cfg.test_subset)
    if train_ds.labels is None or test_ds.labels is None:
        raise ValueError(f"dataset {cfg.dataset!r} has no labels: training needs a labelled dataset")
    x, y = train_ds.to_tensor(device=device)
    xt, yt = test_ds.to_tensor(device=device)
    public = None
    if cfg.public is not None:
        c, h, w = train_ds.shape
        pool = load_public_pool(cfg.public, n=cfg.public_size, size=(h, w), channels=c, resize=cfg.public_resize)
        public, _ = pool.to_tensor(device=device)
    if cfg.mode != "vanilla":
        cross = cfg.public is not None
        need = (cfg.num_private or 2) if cross else cfg.k
        if len(x) < need:
            raise ValueError(f"k={cfg.k} needs at least {need} private images per encryption; the training set "
                             f"has {len(x)}")
    return TrainData(x, y, xt, yt, train_ds.num_classes, train_ds.mean, train_ds.std, public, train_ds.name)


def _epoch_generator(cfg: TrainConfig, epoch: int, what: str, device, rank: int = 0,
                     world_size: int = 1) -> torch.Generator | None:
    """Per-epoch (and, under DDP, per-rank) torch generator for ordering/augmentation (not key material)."""
    if cfg.research_seed is None:
        return None
    g = torch.Generator(device=device)
    parts = (cfg.research_seed, epoch, what) if world_size == 1 else (cfg.research_seed, epoch, what, rank, world_size)
    g.manual_seed(hash_seed(*parts))
    return g


def hash_seed(*parts) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _key_generator(cfg: TrainConfig, epoch: int, rank: int = 0, world_size: int = 1) -> KeyGenerator:
    """The key generator of one epoch on one rank: OS entropy (each rank its own), or, with a research
    seed, ``from_seed("train/<seed>").spawn(epoch)``, further spawned per rank when ``world_size > 1``."""
    if cfg.research_seed is None:
        return KeyGenerator.from_entropy()
    g = KeyGenerator.from_seed(f"train/{cfg.research_seed}").spawn(epoch)
    return g if world_size == 1 else g.spawn(world_size * 1_000_003 + rank)


def shard_train_data(data: TrainData, rank: int, world_size: int) -> TrainData:
    """Rank ``rank``'s disjoint share of the private training set: a fixed permutation (seed 0, the
    same on every rank) cut into ``world_size`` equal parts (``N mod world_size`` images unused).
    The test set is kept whole (rank 0 evaluates)."""
    if world_size == 1:
        return data
    n = len(data.x_train)
    share = n // world_size
    if share < 1:
        raise ValueError(f"{n} training images cannot be shared among {world_size} ranks")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    idx = perm[rank * share:(rank + 1) * share].sort().values.to(data.x_train.device)
    return dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])


# -- training -------------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, resume: bool = False, data: TrainData | None = None, on_epoch_end=None) -> dict:
    """Train according to ``cfg``; returns the final summary (also written to ``final.json``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) this process joins the group and trains its shard with DDP
    (see the module docstring); otherwise it runs as a single process.

    Args:
        cfg: the configuration (validated here, before any data is loaded).
        resume: continue from ``cfg.out/checkpoint.pt`` (its configuration must match ``cfg``).
        data: preloaded :class:`TrainData` (to share one load across runs); loaded from ``cfg`` if None.
            Under DDP, pass the whole set: each rank takes its shard.
        on_epoch_end: optional ``f(epoch, metrics)`` called after each checkpoint is written.
    """
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, resume, data, on_epoch_end)
    finally:
        cleanup(info)


def _resume_state(cfg: TrainConfig, ckpt_path: Path, resume: bool):
    if not resume:
        if ckpt_path.exists():
            raise FileExistsError(f"{ckpt_path} exists: pass resume=True (--resume) to continue it, or use another out")
        return None
    state = load_checkpoint(ckpt_path)
    saved = TrainConfig.from_dict(state["config"])
    diff = {k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items()
            if k not in ("out", "device", "progress", "amp") and getattr(cfg, k) != v}
    if diff:
        raise ValueError(f"cannot resume {ckpt_path}: configuration differs in {diff} (saved, given)")
    return state


def _train(cfg: TrainConfig, info: DistInfo, resume: bool, data: TrainData | None, on_epoch_end) -> dict:
    device = info.device
    W, rank = info.world_size, info.rank
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    state, err = None, None
    if info.is_main:
        try:
            state = _resume_state(cfg, ckpt_path, resume)
        except (ValueError, FileExistsError, FileNotFoundError) as exc:
            err = exc
    all_agree(info, err)
    if W > 1 and cfg.legacy:
        raise ValueError("legacy keys replay the reference code's single-process generator; they are not "
                         "available under DDP (run legacy replays in one process)")
    state = broadcast_object(info, state)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.research_seed is not None:
        torch.manual_seed(hash_seed(cfg.research_seed, "init"))
    err, full = None, data
    try:
        full = data or load_train_data(cfg, device)
        data = shard_train_data(full, rank, W)
        if W > 1 and cfg.mode != "vanilla":
            need = (cfg.num_private or 2) if cfg.public is not None else cfg.k
            if len(data.x_train) < need:
                raise ValueError(f"k={cfg.k} needs at least {need} private images per rank; each of the {W} "
                                 f"ranks has {len(data.x_train)}")
    except (ValueError, FileNotFoundError, ImportError) as exc:
        err = exc
    all_agree(info, err)
    c, h, w = data.x_train.shape[1:]
    model_name = cfg.model if cfg.model != "auto" else ("mnistnet" if c == 1 else "fastnet")
    model = build_model(model_name, data.num_classes, c, width=cfg.width).to(device)
    opt, sched = make_optimizer(model, cfg)
    use_aug = cfg.augment == "on" or (cfg.augment == "auto" and c == 3 and h == 32 and w == 32)
    fill = tuple(-m / s for m, s in zip(data.mean, data.std))  # black, in normalised units
    augment = Augment(padding=4, flip=True, fill=fill) if use_aug else None
    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = state["history"]
        start_epoch = state["epoch"]
    net, batch_size = model, cfg.batch_size
    if W > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        batch_size = max(1, cfg.batch_size // W)
    amp = cfg.amp and device.type == "cuda"
    onehot = F.one_hot(data.y_train, data.num_classes).float()
    buffer = None
    t_run = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        if cfg.mode != "vanilla" and buffer is None:
            buffer = torch.empty_like(data.x_train)
        xs, ys = epoch_inputs(cfg, data, epoch, augment, onehot, out=buffer, rank=rank, world_size=W)
        t_enc = time.perf_counter() - t0
        order = torch.randperm(len(xs), generator=_epoch_generator(cfg, epoch, "order", "cpu", rank, W)).to(device)
        bar = _Bar(math.ceil(len(xs) / batch_size), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and info.is_main)
        loss_sum, correct, seen = train_steps(net, opt, xs, ys, order, batch_size, amp, bar)
        if W > 1:
            loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], info)
            correct, seen = int(correct), int(seen)
        lr_used = sched.get_last_lr()[0]
        sched.step()
        metrics = {"epoch": epoch + 1, "lr": lr_used,
                   "train_loss": loss_sum / seen, "train_acc": correct / seen,
                   "encrypt_seconds": t_enc, "epoch_seconds": None, "test_loss": None, "test_acc": None}
        if info.is_main:
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                ev = evaluate(model, data.x_test, data.y_test, batch_size=max(256, cfg.batch_size), amp=amp)
                metrics.update(test_loss=ev["loss"], test_acc=ev["accuracy"])
            metrics["epoch_seconds"] = time.perf_counter() - t0
            history.append(metrics)
            bar.close(f"loss {metrics['train_loss']:.3f} train acc {metrics['train_acc']:.3f}"
                      + (f" test acc {metrics['test_acc']:.4f}" if metrics["test_acc"] is not None else "")
                      + f" ({metrics['epoch_seconds']:.1f} s)")
            save_checkpoint(ckpt_path, model, opt, sched, epoch + 1, cfg, history,
                            {"name": model_name, "num_classes": data.num_classes, "in_channels": c})
            _write_metrics(out, history)
        if W > 1:
            metrics = broadcast_object(info, metrics)
            if not info.is_main:
                history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    final = {
        "config": cfg.to_dict(), "model": model_name, "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images": len(data.x_train) * W, "test_images": len(data.x_test), "dataset": data.name,
        "augment": use_aug, "final_test_acc": history[-1]["test_acc"], "final_test_loss": history[-1]["test_loss"],
        "best_test_acc": max((m["test_acc"] for m in history if m["test_acc"] is not None), default=None),
        "epochs_run": len(history), "wall_seconds_this_run": time.perf_counter() - t_run,
        "history": history, "keys": "research-seed" if cfg.research_seed is not None else "os-entropy",
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "instahide": __import__("instahide").__version__},
    }
    if W > 1:
        final.update(world_size=W, backend=info.backend, train_images_per_rank=len(data.x_train),
                     unused_train_images=len(full.x_train) - W * len(data.x_train), batch_per_rank=batch_size,
                     keys_per_rank="independent: " + ("os-entropy on each rank" if cfg.research_seed is None
                                                      else "spawned from the research seed per epoch and rank"))
    if info.is_main:
        atomic_write_text(out / "final.json", json.dumps(final, indent=2) + "\n")
        _plot(out, history)
    return final


def epoch_inputs(cfg: TrainConfig, data: TrainData, epoch: int, augment, onehot: torch.Tensor,
                 out: torch.Tensor | None = None, *, rank: int = 0,
                 world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's training inputs ``(N, C, H, W)`` and soft targets ``(N, num_classes)``: the
    private set augmented (if ``augment``), then, unless vanilla, encrypted whole with fresh keys.
    Under DDP, ``data`` is the rank's shard and ``rank``/``world_size`` select its own generators."""
    device = data.x_train.device
    x = data.x_train if augment is None else augment(
        data.x_train, generator=_epoch_generator(cfg, epoch, "augment", device, rank, world_size))
    if cfg.mode == "vanilla":
        return x, onehot
    legacy_seed = hash_seed(cfg.research_seed, epoch) % 2 ** 32 if cfg.legacy and cfg.research_seed is not None else None
    enc = encrypt(
        x, data.y_train, k=cfg.k, upper=cfg.upper, mode=cfg.mode, public=data.public,
        num_private=cfg.num_private, dom=cfg.dom, num_classes=data.num_classes,
        generator=None if cfg.legacy else _key_generator(cfg, epoch, rank, world_size), legacy=cfg.legacy, seed=legacy_seed, out=out,
    )
    return enc.images, enc.soft_labels


def train_steps(model, opt, xs: torch.Tensor, ys: torch.Tensor, order: torch.Tensor, batch_size: int,
                amp: bool = False, bar=None) -> tuple[float, int, int]:
    """SGD steps over ``xs[order]`` in batches on soft-label cross-entropy.

    Returns ``(sum of batch losses x batch sizes, predictions agreeing with the dominant label, images)``.
    """
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for s in range(0, len(xs), batch_size):
        b = order[s:s + batch_size]
        xb, yb = xs[b], ys[b]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(xb)
        loss = soft_cross_entropy(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged: loss {value}; lower the learning rate")
        loss_sum += value * len(b)
        correct += (logits.argmax(1) == yb.argmax(1)).sum().item()
        seen += len(b)
        if bar is not None:
            bar.update(f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
    return loss_sum, correct, seen


# -- checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(path: Path, model, opt, sched, epoch: int, cfg: TrainConfig, history, arch: dict) -> None:
    """Everything needed to resume, written atomically (a killed run never leaves a torn file).
    No key material is stored: keys are regenerated (research seed) or fresh (OS entropy)."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "config": cfg.to_dict(), "history": history, "model_name": arch["name"],
             "num_classes": arch["num_classes"], "in_channels": arch["in_channels"],
             "format": "instahide-checkpoint/1"}
    atomic_torch_save(path, state)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from an untrusted file)."""
    return load_torch_checkpoint(path, "instahide-checkpoint/1")


def load_model(path: str | os.PathLike, device="cpu"):
    """``(model in eval mode, TrainConfig, checkpoint dict)`` from a training checkpoint."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"])
    model = build_model(state["model_name"], state["num_classes"], state["in_channels"], width=cfg.width)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state


# -- outputs --------------------------------------------------------------------------------------
def _write_metrics(out: Path, history: list[dict]) -> None:
    with atomic_open(out / "metrics.jsonl", "w") as fh:
        for m in history:
            fh.write(json.dumps(m) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out / "metrics.csv", buf.getvalue())


def _plot(out: Path, history: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ep = [m["epoch"] for m in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.plot(ep, [m["train_loss"] for m in history], label="train (encrypted)")
    tl = [(m["epoch"], m["test_loss"]) for m in history if m["test_loss"] is not None]
    if tl:
        a1.plot(*zip(*tl), label="test (clean)")
    a1.set_xlabel("epoch"); a1.set_ylabel("loss"); a1.legend()
    a2.plot(ep, [m["train_acc"] for m in history], label="train (dominant label)")
    ta = [(m["epoch"], m["test_acc"]) for m in history if m["test_acc"] is not None]
    if ta:
        a2.plot(*zip(*ta), label="test (clean)")
    a2.set_xlabel("epoch"); a2.set_ylabel("accuracy"); a2.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


class _Bar:
    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.n = total, label, 0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def update(self, info: str) -> None:
        self.n += 1
        if self.enabled and self.tty:
            width = 24
            fill = int(width * self.n / self.total)
            print(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {self.n}/{self.total} {info}",
                  end="", file=sys.stderr, flush=True)

    def close(self, info: str) -> None:
        if self.enabled:
            print(("\r" if self.tty else "") + f"{self.label}: {info}" + " " * 10, file=sys.stderr, flush=True)
