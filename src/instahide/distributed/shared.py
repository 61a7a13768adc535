"""A central trainer over encryptions that several parties handed over, in one process or with DDP.

The parties encrypt their own data (``instahide encrypt --epochs T``) and hand over only the folder;
:func:`train_shared` reads the union (:func:`~instahide.distributed.load_encrypted`), trains on it with
the engine and the reference recipe and evaluates on a clean test set of its own. It never sees a key.
Under ``torchrun`` every rank takes one slice of each global batch and scales its summed loss so that
DDP's gradient average is the global batch's mean (docs/distributed.md, "The trainer"). ::

    cfg = SharedConfig(encrypted=("runs/alice", "runs/bob"), test_dataset="digits", epochs=20, out="runs/s")
    final = train_shared(cfg)

Folders larger than memory are read batch by batch (``workers >= 1``, chosen automatically when one
epoch's rows would take more than 1 GiB as float32): each batch's rows are read from the memory maps
by a ``DataLoader`` worker, so memory is bounded by a few batches; the batches, and so the training,
are the same as reading the whole epoch at once (docs/outofcore_training.md).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from .._config import Config, check_types
from .._io import load_torch_checkpoint
from ..data import load_dataset, normalize_images
from ..train.ddp import DistInfo, all_agree, all_reduce_sum, broadcast_object, cleanup, init_distributed
from ..train.config import validate_training
from ..train.engine import (Progress, RunFolder, build_arch, derive_seed, load_weights, make_optimizer, model_for,
                            reschedule, sign_invariant_for, summary, train_epoch)
from ..train.evaluate import evaluate
from ..train.loader import FolderBatches, Waited, batch_loader, resolve_workers
from ..train.recipe import pick_subset
from .encrypted import EncryptedUnion, load_encrypted

FORMAT = "instahide-shared-checkpoint/1"


@dataclass
class SharedConfig(Config):
    # -- data --------------------------------------------------------------------------------------
    encrypted: tuple[str, ...] = ()      # encryption folders, one per party (written by instahide encrypt)
    test_dataset: str | None = None      # clean test set (an instahide.data.load_dataset name); None: no evaluation
    test_root: str | None = None         # where the test dataset is (not needed for digits)
    test_split: str = "test"             # which split of test_dataset to evaluate on
    test_subset: int | None = None       # evaluate on N test images (seed 0)
    # -- model -------------------------------------------------------------------------------------
    model: str = "auto"                  # preact_resnet18 | fastnet | mnistnet; auto: mnistnet for 1 channel,
                                         # fastnet for 3
    width: float = 1.0                   # channel-width multiplier (scale down for CPU runs)
    sign_invariant: str = "auto"         # |x| as the model's first operation: auto = on when a party's folder
                                         # holds InstaHide encryptions, off for Mixup; off = the paper's training
    sync_bn: bool = False                # CUDA + DDP only: BatchNorm statistics over the global batch
    # -- optimisation (the reference recipe: docs/scheme.md, "Reference defaults") ------------------
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
        check_types(self)
        if not self.encrypted:
            raise ValueError("no encryption folder given (encrypted=...)")
        validate_training(self)
        for name in ("epochs", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.test_subset is not None and self.test_subset < 1:
            raise ValueError(f"test_subset must be >= 1, got {self.test_subset}")
        return self


# -- data -----------------------------------------------------------------------------------------
def load_test_set(cfg: SharedConfig, union: EncryptedUnion, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The clean test set ``(M, C, H, W)``, ``(M,)``, scaled the way the parties scaled their images
    (their mean/std from ``meta.json``, or [0, 1] if they did not normalise); None if no test set."""
    if cfg.test_dataset is None:
        return None
    ds = pick_subset(load_dataset(cfg.test_dataset, root=cfg.test_root, split=cfg.test_split), cfg.test_subset)
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
    g = torch.Generator().manual_seed(derive_seed(order_seed, epoch, "shared-order"))
    perm = torch.randperm(num_rows, generator=g)
    batches = list(torch.split(perm, batch_size))
    if world_size > 1 and batches and len(batches[-1]) < world_size:
        batches.pop()
    return batches


def rank_slice(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s slice of a global batch (``torch.tensor_split`` into ``world_size`` parts)."""
    return torch.tensor_split(batch, world_size)[rank]


# -- training -------------------------------------------------------------------------------------
def train_shared(cfg: SharedConfig, *, resume: bool = False, on_epoch_end=None, return_model: bool = False,
                 workers: int | str | None = "auto"):
    """Train on the union of the parties' encryptions; returns the final summary (``final.json``).

    Runs as one process, or as one rank of a ``torchrun`` job (joins the process group itself).

    Args:
        cfg: the configuration (validated first).
        resume: continue from ``cfg.out/checkpoint.pt`` (its configuration must match; a larger
            ``epochs`` extends a finished run).
        on_epoch_end: optional ``f(epoch, metrics)`` called on every rank after each epoch.
        return_model: return ``(final, model)`` (this rank's unwrapped model) instead of ``final``.
        workers: 0 reads each epoch's rows (this rank's slices) at once, into memory; N >= 1 reads
            them batch by batch in N ``DataLoader`` worker processes (memory bounded by a few batches;
            the same batches, so the same training). ``"auto"`` (or None): N =
            :func:`~instahide.train.loader.auto_workers` when an epoch's rows would take more than
            1 GiB as float32, else 0. Not part of the configuration (final.json records it).
    """
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        final, model = _train(cfg, info, resume, on_epoch_end, workers)
        return (final, model) if return_model else final
    finally:
        cleanup(info)


def _setup(cfg: SharedConfig, info: DistInfo, run: RunFolder, resume: bool, workers="auto"):
    """Rank 0 reads/validates the checkpoint; every rank maps the encryptions, reads the test set and
    decides how many workers read the rows."""
    state = run.start_all(cfg.to_dict(), resume, info)
    if cfg.sync_bn and not (info.distributed and info.device.type == "cuda"):
        raise ValueError("sync_bn needs DDP on CUDA (SyncBatchNorm has no CPU implementation)")
    err, union, test, use = None, None, None, 0
    try:
        union = load_encrypted(cfg.encrypted)
        test = load_test_set(cfg, union, info.device)
        if union.rows_per_epoch < info.world_size:
            raise ValueError(f"{union.rows_per_epoch} rows per epoch cannot feed {info.world_size} ranks")
        row_bytes = 4 * union.image_shape[0] * union.image_shape[1] * union.image_shape[2]
        use = resolve_workers(workers, [p.encryption for p in union.parties],
                              union.rows_per_epoch // info.world_size * row_bytes)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        err = exc
    all_agree(info, err)
    return state, union, test, use


def _train(cfg: SharedConfig, info: DistInfo, resume: bool, on_epoch_end, workers="auto") -> dict:
    device, W, rank = info.device, info.world_size, info.rank
    run = RunFolder(cfg.out, FORMAT, main=info.is_main)
    state, union, test, use = _setup(cfg, info, run, resume, workers)
    c = union.image_shape[0]
    modes = [(d.get("scheme") or {}).get("mode", "instahide") for d in union.describe()]
    arch = {"model_name": model_for(cfg.model, c), "num_classes": union.num_classes, "in_channels": c,
            "sign_invariant": sign_invariant_for(cfg.sign_invariant, modes)}
    if cfg.research_seed is not None:
        torch.manual_seed(derive_seed(cfg.research_seed, "shared-init"))
    model = build_arch(arch, cfg.width).to(device)
    opt, sched = make_optimizer(model, cfg)
    history, start = [], 0
    if state is not None:
        load_weights(model, state["model"], str(run.checkpoint))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start, order_seed = state["history"], state["epoch"], state["order_seed"]
        if state["extended"] is not None:
            reschedule(opt, sched, cfg)
    elif cfg.research_seed is not None:
        order_seed = derive_seed(cfg.research_seed, "shared-order-seed")
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
    rows = union.rows_per_epoch
    t_run = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        batches = epoch_batches(rows, cfg.batch_size, epoch, order_seed, W)
        mine = [rank_slice(b, rank, W) for b in batches]
        if use:  # batch by batch, read in workers
            feed = Waited(batch_loader(FolderBatches(union, epoch, mine), use, pin_memory=device.type == "cuda"))
            steps = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True), W / len(g))
                     for (x, y), g in zip(feed, batches))
        else:
            xs, ys = union.take(epoch, torch.cat(mine).numpy())
            xs, ys = xs.to(device, non_blocking=True), ys.to(device, non_blocking=True)
            t_data = time.perf_counter() - t0
            bounds = torch.tensor([0] + [len(m) for m in mine]).cumsum(0).tolist()
            # DDP averages over W ranks: W * sum(local) / |global batch| averages to the global mean
            steps = ((xs[a:b], ys[a:b], W / len(g)) for a, b, g in zip(bounds, bounds[1:], batches))
        bar = Progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and info.is_main)
        res = train_epoch(net, opt, steps, amp=amp, progress=bar)
        if use:
            t_data = feed.seconds  # the time the loop waited for batches
        loss_sum, correct, seen = all_reduce_sum([res["loss_sum"], res["correct"], res["seen"]], info)
        metrics = {"epoch": epoch + 1, "lr": sched.get_last_lr()[0], "train_loss": loss_sum / seen,
                   "train_acc": correct / seen, "rows": int(seen),
                   "encryption_epochs": [epoch % p.epochs for p in union.parties],
                   "data_seconds": t_data, "epoch_seconds": None, "test_loss": None, "test_acc": None}
        sched.step()
        if info.is_main and test is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            ev = evaluate(model, test[0], test[1], batch_size=max(256, cfg.batch_size), amp=amp)
            metrics.update(test_loss=ev["loss"], test_acc=ev["accuracy"])
        metrics = run.record(info, history, metrics, t0, bar, model, opt, sched, cfg.to_dict(), order_seed=int(order_seed), **arch)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    final = {"config": cfg.to_dict(), "model": arch["model_name"], "sign_invariant": arch["sign_invariant"],
             "device": str(device), "world_size": W,
             "backend": info.backend, "parameters": sum(p.numel() for p in model.parameters()),
             "parties": union.describe(), "rows_per_epoch": rows, "fresh_epochs": union.fresh_epochs,
             "reused_encryptions": cfg.epochs > union.fresh_epochs,
             "test_images": None if test is None else len(test[1]),
             "keys": "none: the trainer sees encryptions and mixed labels only", "workers": use,
             **summary(history, state, t_run)}
    return run.finish(final), model


# -- checkpoints ----------------------------------------------------------------------------------
def load_shared_checkpoint(path) -> dict:
    """Load a shared-trainer checkpoint with ``weights_only=True``."""
    return load_torch_checkpoint(path, FORMAT, "shared-trainer checkpoint")


def load_shared_model(path, device="cpu"):
    """``(model in eval mode, SharedConfig, checkpoint dict)`` from a shared-trainer checkpoint."""
    state = load_shared_checkpoint(path)
    cfg = SharedConfig.from_dict(state["config"])
    model = build_arch(state, cfg.width)
    load_weights(model, state["model"], str(path))
    return model.to(device).eval(), cfg, state
