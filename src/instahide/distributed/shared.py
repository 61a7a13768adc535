"""A central trainer over encryptions that several parties handed over, in one process or with DDP.

The parties encrypt their own data (``instahide encrypt --epochs T``) and hand over only the folder;
the trainer (:func:`train_shared`) reads the union (:func:`~instahide.distributed.load_encrypted`),
trains on the encryptions and mixed labels with the reference recipe (SGD, momentum, weight decay,
step schedule, soft-label cross-entropy) and evaluates on a clean test set of its own. It never sees
a key.

Data parallelism (``torchrun``; gloo on CPU, nccl on CUDA): every training epoch, one permutation of
the epoch's rows (the same on every rank) is cut into global batches of ``batch_size``; rank ``r``
takes the ``r``-th of ``W`` near-equal slices of each global batch, so the ranks' shards of every
epoch are disjoint and together they cover it. Rank ``r`` scales its summed loss by
``W / len(global batch)``; DDP averages the gradients over the ranks, so each step follows the
gradient of the global batch's mean loss exactly as one process would, except for BatchNorm, whose
batch statistics are per rank (``len(global batch) / W`` images; ``sync_bn=True`` on CUDA makes them
global). A last global batch smaller than ``W`` is dropped (at most ``W - 1`` rows per epoch).
Rank 0 evaluates, writes ``checkpoint.pt`` atomically every epoch, ``metrics.jsonl`` and
``final.json``; ``resume=True`` continues (rank 0 reads the checkpoint and broadcasts it, so only
rank 0's machine needs the run folder; every machine needs the encryption folders).

Example::

    from instahide.distributed import SharedConfig, train_shared
    cfg = SharedConfig(encrypted=("runs/alice", "runs/bob"), test_dataset="digits", epochs=20,
                       batch_size=64, lr=0.05, out="runs/shared")
    final = train_shared(cfg)          # or under: torchrun --nproc-per-node=2 -m instahide.distributed ...
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_torch_save, atomic_write_text, load_torch_checkpoint
from ..train.config import config_from_dict, make_optimizer
from ..train.evaluate import evaluate
from ..train.loss import soft_cross_entropy
from ..train.models import MODELS, build_model
from .dist import DistInfo, all_agree, all_reduce_sum, broadcast_object, cleanup, init_distributed
from .encrypted import EncryptedUnion, load_encrypted

CHECKPOINT = "checkpoint.pt"
FORMAT = "instahide-shared-checkpoint/1"


@dataclass
class SharedConfig:
    # -- data --------------------------------------------------------------------------------------
    encrypted: tuple = ()                # encryption folders, one per party (written by instahide encrypt)
    test_dataset: str | None = None      # clean test set (an instahide.data.load_dataset name); None: no evaluation
    test_root: str | None = None         # where the test dataset is (not needed for digits)
    test_split: str = "test"             # which split of test_dataset to evaluate on
    test_subset: int | None = None       # evaluate on N test images (seed 0)
    # -- model -------------------------------------------------------------------------------------
    model: str = "auto"                  # preact_resnet18 | fastnet | mnistnet; auto: mnistnet for 1 channel,
                                         # fastnet for 3
    width: float = 1.0                   # channel-width multiplier (scale down for CPU runs)
    sync_bn: bool = False                # CUDA + DDP only: BatchNorm statistics over the global batch
    # -- optimisation (the reference recipe: SPEC section 2) ----------------------------------------
    epochs: int = 10                     # training epochs; party p's rows come from encryption epoch e mod T_p
    batch_size: int = 128                # GLOBAL batch over all ranks (reference: 128)
    lr: float = 0.1                      # SGD learning rate, reference 0.1
    momentum: float = 0.9                # SGD momentum, reference 0.9
    weight_decay: float = 1e-4           # reference 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # lr x gamma at these fractions of the epochs
    gamma: float = 0.1                   # lr factor at each milestone
    # -- run ---------------------------------------------------------------------------------------
    research_seed: int | None = None     # seeds the initial weights and the row order (there are no keys
                                         # here); None: random
    device: str = "auto"                 # auto: cuda if available (cuda:LOCAL_RANK under torchrun), else cpu
    amp: bool = True                     # bfloat16 autocast on CUDA (ignored on CPU)
    out: str = "runs/shared"             # run folder: checkpoint, metrics, final.json
    eval_every: int = 1                  # evaluate on the clean test set every N epochs (and the last)
    progress: bool = True                # progress line on stderr (rank 0)

    def validate(self) -> "SharedConfig":
        """Raise a ValueError naming the first bad field (before any data is read)."""
        if isinstance(self.encrypted, (str, os.PathLike)):
            self.encrypted = (str(self.encrypted),)
        self.encrypted = tuple(str(p) for p in self.encrypted)
        if not self.encrypted:
            raise ValueError("no encryption folder given (encrypted=...)")
        if self.model != "auto" and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: auto, {', '.join(MODELS)}")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.width <= 0:
            raise ValueError("lr and width must be > 0")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the epochs in (0, 1), got {self.milestones}")
        if self.test_subset is not None and self.test_subset < 1:
            raise ValueError(f"test_subset must be >= 1, got {self.test_subset}")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["encrypted"] = list(d["encrypted"])
        d["milestones"] = list(d["milestones"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SharedConfig":
        return config_from_dict(cls, d, tuples=("encrypted", "milestones"))


# -- data -----------------------------------------------------------------------------------------
def load_test_set(cfg: SharedConfig, union: EncryptedUnion, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The clean test set ``(M, C, H, W)``, ``(M,)``, scaled the way the parties scaled their images
    (their mean/std from ``meta.json``, or [0, 1] if they did not normalise); None if no test set."""
    if cfg.test_dataset is None:
        return None
    from ..data import load_dataset, normalize_images

    ds = load_dataset(cfg.test_dataset, root=cfg.test_root, split=cfg.test_split)
    if cfg.test_subset is not None and cfg.test_subset < len(ds):
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:cfg.test_subset].sort().values
        ds = ds.subset(order.numpy())
    if ds.labels is None:
        raise ValueError(f"test dataset {cfg.test_dataset!r} has no labels")
    if tuple(ds.shape) != tuple(union.image_shape):
        raise ValueError(f"test images are {tuple(ds.shape)} (C, H, W) but the encryptions are {union.image_shape}")
    if ds.num_classes != union.num_classes:
        raise ValueError(f"test dataset has {ds.num_classes} classes, the encryptions' labels {union.num_classes}")
    x, y = ds.to_tensor(normalize=False)
    if union.normalized:
        x = normalize_images(x, union.mean, union.std)
    return x.to(device), y.to(device)


def epoch_batches(num_rows: int, batch_size: int, epoch: int, order_seed: int, world_size: int = 1) -> list[torch.Tensor]:
    """The global batches of one epoch: a permutation of ``num_rows`` rows (from ``order_seed`` and
    ``epoch``, the same on every rank) cut into batches of ``batch_size``; with ``world_size > 1`` a
    last batch smaller than ``world_size`` is dropped."""
    from ..train.recipe import hash_seed

    g = torch.Generator().manual_seed(hash_seed(order_seed, epoch, "shared-order"))
    perm = torch.randperm(num_rows, generator=g)
    batches = list(torch.split(perm, batch_size))
    if world_size > 1 and batches and len(batches[-1]) < world_size:
        batches.pop()
    return batches


def rank_slice(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s slice of a global batch (``torch.tensor_split`` into ``world_size`` parts)."""
    return torch.tensor_split(batch, world_size)[rank]


# -- training -------------------------------------------------------------------------------------
def train_shared(cfg: SharedConfig, *, resume: bool = False, on_epoch_end=None, return_model: bool = False):
    """Train on the union of the parties' encryptions; returns the final summary (``final.json``).

    Runs as one process, or as one rank of a ``torchrun`` job (joins the process group itself).

    Args:
        cfg: the configuration (validated first).
        resume: continue from ``cfg.out/checkpoint.pt`` (its configuration must match).
        on_epoch_end: optional ``f(epoch, metrics)`` called on every rank after each epoch.
        return_model: return ``(final, model)`` (this rank's unwrapped model) instead of ``final``.
    """
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        final, model = _train(cfg, info, resume, on_epoch_end)
        return (final, model) if return_model else final
    finally:
        cleanup(info)


def _setup(cfg: SharedConfig, info: DistInfo, resume: bool):
    """Rank 0 reads/validates the checkpoint; every rank reads the encryptions and test set."""
    state, err = None, None
    if info.is_main:
        try:
            state = _read_resume_state(cfg, resume)
        except (ValueError, FileExistsError, FileNotFoundError) as exc:
            err = exc
    all_agree(info, err)
    if cfg.sync_bn and not (info.distributed and info.device.type == "cuda"):
        raise ValueError("sync_bn needs DDP on CUDA (SyncBatchNorm has no CPU implementation)")
    err, union, test = None, None, None
    try:
        union = load_encrypted(cfg.encrypted)
        test = load_test_set(cfg, union, info.device)
        if union.rows_per_epoch < info.world_size:
            raise ValueError(f"{union.rows_per_epoch} rows per epoch cannot feed {info.world_size} ranks")
    except (ValueError, FileNotFoundError, ImportError) as exc:
        err = exc
    all_agree(info, err)
    state = broadcast_object(info, state)
    return state, union, test


def _read_resume_state(cfg: SharedConfig, resume: bool):
    ckpt = Path(cfg.out) / CHECKPOINT
    if not resume:
        if ckpt.exists():
            raise FileExistsError(f"{ckpt} exists: pass resume=True (--resume) to continue it, or use another out")
        return None
    state = load_shared_checkpoint(ckpt)
    saved = SharedConfig.from_dict(state["config"]).validate()
    diff = {k: (v, getattr(cfg, k)) for k, v in dataclasses.asdict(saved).items()
            if k not in ("out", "device", "progress", "amp") and getattr(cfg, k) != v}
    if diff:
        raise ValueError(f"cannot resume {ckpt}: configuration differs in {diff} (saved, given)")
    return state


def _train(cfg: SharedConfig, info: DistInfo, resume: bool, on_epoch_end) -> dict:
    from ..train.recipe import _Bar, _plot, _write_metrics, hash_seed

    device = info.device
    state, union, test = _setup(cfg, info, resume)
    out = Path(cfg.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    c = union.image_shape[0]
    model_name = cfg.model if cfg.model != "auto" else ("mnistnet" if c == 1 else "fastnet")
    if cfg.research_seed is not None:
        torch.manual_seed(hash_seed(cfg.research_seed, "shared-init"))
    model = build_model(model_name, union.num_classes, c, width=cfg.width).to(device)
    opt, sched = make_optimizer(model, cfg)
    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start_epoch, order_seed = state["history"], state["epoch"], state["order_seed"]
    elif cfg.research_seed is not None:
        order_seed = hash_seed(cfg.research_seed, "shared-order-seed")
    else:
        order_seed = broadcast_object(info, int.from_bytes(os.urandom(8), "little") >> 1)
    net = model
    if info.distributed:
        if cfg.sync_bn:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
        model = net.module
    amp = cfg.amp and device.type == "cuda"
    W, rank = info.world_size, info.rank
    rows = union.rows_per_epoch
    t_run = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        batches = epoch_batches(rows, cfg.batch_size, epoch, order_seed, W)
        mine = [rank_slice(b, rank, W) for b in batches]
        xs, ys = union.take(epoch, torch.cat(mine).numpy())
        xs, ys = xs.to(device, non_blocking=True), ys.to(device, non_blocking=True)
        t_data = time.perf_counter() - t0
        net.train()
        bar = _Bar(len(batches), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and info.is_main)
        loss_sum, correct, seen, pos = 0.0, 0, 0, 0
        for b, m in zip(batches, mine):
            xb, yb = xs[pos:pos + len(m)], ys[pos:pos + len(m)]
            pos += len(m)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = net(xb)
            per_row = soft_cross_entropy(logits.float(), yb, reduction="none")
            # DDP averages over W ranks: W * sum(local) / |global batch| averages to the global mean
            loss = per_row.sum() * (W / len(b))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total = per_row.detach().sum().item()
            if not math.isfinite(total):
                raise FloatingPointError(f"training diverged: loss {total}; lower the learning rate")
            loss_sum += total
            correct += (logits.argmax(1) == yb.argmax(1)).sum().item()
            seen += len(m)
            bar.update(f"loss {loss_sum / max(seen, 1):.3f}")
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], info)
        lr_used = sched.get_last_lr()[0]
        sched.step()
        metrics = {"epoch": epoch + 1, "lr": lr_used, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                   "rows": int(seen), "encryption_epochs": [epoch % p.epochs for p in union.parties],
                   "data_seconds": t_data, "epoch_seconds": None, "test_loss": None, "test_acc": None}
        if info.is_main:
            if test is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                ev = evaluate(model, test[0], test[1], batch_size=max(256, cfg.batch_size), amp=amp)
                metrics.update(test_loss=ev["loss"], test_acc=ev["accuracy"])
            metrics["epoch_seconds"] = time.perf_counter() - t0
            history.append(metrics)
            bar.close(f"loss {metrics['train_loss']:.3f} train acc {metrics['train_acc']:.3f}"
                      + (f" test acc {metrics['test_acc']:.4f}" if metrics["test_acc"] is not None else "")
                      + f" ({metrics['epoch_seconds']:.1f} s, {W} rank{'s' if W > 1 else ''})")
            save_shared_checkpoint(out / CHECKPOINT, model, opt, sched, epoch + 1, cfg, history, order_seed,
                                   {"name": model_name, "num_classes": union.num_classes, "in_channels": c})
            _write_metrics(out, history)
        metrics = broadcast_object(info, metrics)
        if not info.is_main:
            history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    tested = [m["test_acc"] for m in history if m["test_acc"] is not None]
    final = {
        "config": cfg.to_dict(), "model": model_name, "device": str(device), "world_size": W,
        "backend": info.backend, "parameters": sum(p.numel() for p in model.parameters()),
        "parties": union.describe(), "rows_per_epoch": rows, "fresh_epochs": union.fresh_epochs,
        "reused_encryptions": cfg.epochs > union.fresh_epochs,
        "test_images": None if test is None else len(test[1]),
        "final_test_acc": history[-1]["test_acc"] if history else None,
        "best_test_acc": max(tested) if tested else None,
        "epochs_run": len(history), "wall_seconds_this_run": time.perf_counter() - t_run,
        "history": history, "keys": "none: the trainer sees encryptions and mixed labels only",
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "instahide": __import__("instahide").__version__},
    }
    if info.is_main:
        atomic_write_text(out / "final.json", json.dumps(final, indent=2) + "\n")
        if history:
            _plot(out, history)
    return final, model


# -- checkpoints ----------------------------------------------------------------------------------
def save_shared_checkpoint(path: Path, model, opt, sched, epoch: int, cfg: SharedConfig, history, order_seed: int,
                           arch: dict) -> None:
    """Everything needed to resume (weights, optimiser, schedule, row-order seed), written atomically."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "config": cfg.to_dict(), "history": history, "order_seed": int(order_seed),
             "model_name": arch["name"], "num_classes": arch["num_classes"], "in_channels": arch["in_channels"],
             "format": FORMAT}
    atomic_torch_save(path, state)


def load_shared_checkpoint(path) -> dict:
    """Load a shared-trainer checkpoint with ``weights_only=True``."""
    return load_torch_checkpoint(path, FORMAT, "shared-trainer checkpoint")


def load_shared_model(path, device="cpu"):
    """``(model in eval mode, SharedConfig, checkpoint dict)`` from a shared-trainer checkpoint."""
    state = load_shared_checkpoint(path)
    cfg = SharedConfig.from_dict(state["config"])
    model = build_model(state["model_name"], state["num_classes"], state["in_channels"], width=cfg.width)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state
