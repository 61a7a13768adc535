"""The training recipe: train a model on InstaHide encryptions (or Mixup, or plain images).

Sections: data, keys, training, checkpoints; the loop, the run folder and the seeding rule are the
engine's (:mod:`instahide.train.engine`). Every epoch augments the whole private set (batched, on the
device), re-encrypts all of it with fresh one-time keys, takes SGD steps on soft-label cross-entropy,
evaluates on the clean test set and checkpoints atomically. With a research seed a resumed run ends
with the same weights as an uninterrupted one. ::

    from instahide.train import TrainConfig, train
    result = train(TrainConfig.make(dataset="cifar10", root="data/cifar-10-batches-py", epochs=200))

Under ``torchrun`` (``torchrun --standalone --nproc-per-node=2 -m instahide train ...``) every rank
encrypts its own disjoint shard with its own keys and DDP averages the gradients; docs/distributed.md,
"On-the-fly encryption under DDP", has the details.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._io import load_torch_checkpoint
from ..data import load_dataset, load_public_pool
from ..scheme import KeyGenerator, encrypt
from .config import TrainConfig
from .ddp import DistInfo, all_agree, all_reduce_sum, cleanup, init_distributed, resolve_device
from .engine import (Progress, RunFolder, WeightAverage, augment_for, build_arch, checkpoint_config, derive_seed,
                     index_batches, load_weights, make_optimizer, model_for, reschedule, seeded, sign_invariant_for,
                     summary, train_epoch)
from .evaluate import evaluate

FORMAT = "instahide-checkpoint/1"


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
def pick_subset(ds, n: int | None):
    """``n`` images of ``ds`` drawn at random with seed 0 (kept in dataset order), or all of them."""
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise ValueError(f"subset must be >= 1, got {n}")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return ds.subset(order.numpy())


def load_train_data(cfg: TrainConfig, device) -> TrainData:
    """The private train/test split and the public pool of ``cfg`` (a TrainConfig, or any
    configuration with the same data fields and a ``scheme``), normalised, on ``device``."""
    scheme = cfg.scheme.validate()
    download = getattr(cfg, "download", False)
    train_ds = pick_subset(load_dataset(cfg.dataset, root=cfg.root, split="train", download=download), cfg.subset)
    test_ds = pick_subset(load_dataset(cfg.dataset, root=cfg.root, split="test", download=download), cfg.test_subset)
    if train_ds.labels is None or test_ds.labels is None:
        raise ValueError(f"dataset {cfg.dataset!r} has no labels: training needs a labelled dataset")
    x, y = train_ds.to_tensor(device=device)
    xt, yt = test_ds.to_tensor(device=device)
    public = None
    if scheme.cross:
        c, h, w = train_ds.shape
        pool = load_public_pool(scheme.public, n=scheme.public_size, size=(h, w), channels=c,
                                resize=scheme.public_resize)
        public, _ = pool.to_tensor(device=device)
    if scheme.mode != "vanilla" and len(x) < scheme.private_slots:
        raise ValueError(f"k={scheme.k} needs at least {scheme.private_slots} private images per encryption; "
                         f"the training set has {len(x)}")
    return TrainData(x, y, xt, yt, train_ds.num_classes, train_ds.mean, train_ds.std, public, train_ds.name)


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


# -- keys -----------------------------------------------------------------------------------------
def _key_generator(cfg: TrainConfig, epoch: int, rank: int = 0, world_size: int = 1) -> KeyGenerator:
    """The key generator of one epoch on one rank: OS entropy (each rank its own), or, with a research
    seed, ``from_seed("train/<seed>").spawn(epoch)``, further spawned per rank when ``world_size > 1``."""
    if cfg.research_seed is None:
        return KeyGenerator.from_entropy()
    g = KeyGenerator.from_seed(f"train/{cfg.research_seed}").spawn(epoch)
    return g if world_size == 1 else g.spawn(world_size * 1_000_003 + rank)


def _gen(cfg: TrainConfig, epoch: int, what: str, device, rank: int = 0, world_size: int = 1):
    """Per-epoch (and, under DDP, per-rank) generator for order and augmentation (not key material)."""
    parts = (epoch, what) if world_size == 1 else (epoch, what, rank, world_size)
    return seeded(cfg.research_seed, *parts, device=device)


def epoch_inputs(cfg: TrainConfig, data: TrainData, epoch: int, augment, onehot: torch.Tensor,
                 out: torch.Tensor | None = None, *, rank: int = 0,
                 world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's training inputs ``(N, C, H, W)`` and soft targets ``(N, num_classes)``: the
    private set augmented (if ``augment``), then, unless vanilla, encrypted whole with fresh keys.
    Under DDP, ``data`` is the rank's shard and ``rank``/``world_size`` select its own generators."""
    device = data.x_train.device
    x = data.x_train if augment is None else augment(
        data.x_train, generator=_gen(cfg, epoch, "augment", device, rank, world_size))
    if cfg.scheme.mode == "vanilla":
        return x, onehot
    legacy = cfg.scheme.legacy
    legacy_seed = derive_seed(cfg.research_seed, epoch) % 2 ** 32 if legacy and cfg.research_seed is not None else None
    enc = encrypt(x, data.y_train, **cfg.scheme.encrypt_kwargs(), public=data.public, num_classes=data.num_classes,
                  generator=None if legacy else _key_generator(cfg, epoch, rank, world_size), seed=legacy_seed,
                  out=out)
    return enc.images, enc.soft_labels


# -- training -------------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, resume: bool = False, data: TrainData | None = None, on_epoch_end=None) -> dict:
    """Train according to ``cfg``; returns the final summary (also written to ``final.json``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) this process joins the group and trains its shard with DDP
    (see the module docstring); otherwise it runs as a single process.

    Args:
        cfg: the configuration (validated here, before any data is loaded).
        resume: continue from ``cfg.out/checkpoint.pt`` (its configuration must match ``cfg`` but for
            where it runs; a larger ``cfg.epochs`` extends a finished run).
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


def _train(cfg: TrainConfig, info: DistInfo, resume: bool, data: TrainData | None, on_epoch_end) -> dict:
    device, W, rank = info.device, info.world_size, info.rank
    run = RunFolder(cfg.out, FORMAT, main=info.is_main)
    state = run.start_all(cfg.to_dict(), resume, info)
    if W > 1 and cfg.scheme.legacy:
        raise ValueError("legacy keys replay the reference code's single-process generator; they are not "
                         "available under DDP (run legacy replays in one process)")
    if cfg.research_seed is not None:
        torch.manual_seed(derive_seed(cfg.research_seed, "init"))
    err, full = None, data
    try:
        full = data or load_train_data(cfg, device)
        data = shard_train_data(full, rank, W)
        if W > 1 and cfg.scheme.mode != "vanilla" and len(data.x_train) < cfg.scheme.private_slots:
            raise ValueError(f"k={cfg.scheme.k} needs at least {cfg.scheme.private_slots} private images per "
                             f"rank; each of the {W} ranks has {len(data.x_train)}")
    except (ValueError, FileNotFoundError, ImportError) as exc:
        err = exc
    all_agree(info, err)
    c = data.x_train.shape[1]
    arch = {"model_name": model_for(cfg.model, c), "num_classes": data.num_classes, "in_channels": c,
            "sign_invariant": sign_invariant_for(cfg.sign_invariant, cfg.scheme.mode)}
    model = build_arch(arch, cfg.width).to(device)
    opt, sched = make_optimizer(model, cfg)
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    augment = augment_for(cfg.augment, data.x_train.shape[1:], data.mean, data.std)
    history, start = [], 0
    if state is not None:
        load_weights(model, state["model"], str(run.checkpoint))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start = state["history"], state["epoch"]
        if state["extended"] is not None:
            reschedule(opt, sched, cfg)
        if average is not None:
            if state.get("ema") is None:
                raise ValueError(f"cannot resume {run.checkpoint} with ema={cfg.ema}: it kept no weight average")
            average.load_state_dict(state["ema"], str(run.checkpoint))
    net, batch_size = model, cfg.batch_size
    if W > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        batch_size = max(1, cfg.batch_size // W)
    amp = cfg.amp and device.type == "cuda"
    onehot = F.one_hot(data.y_train, data.num_classes).float()
    short = cfg.recipe == "short"
    buffer = torch.empty_like(data.x_train) if cfg.scheme.mode != "vanilla" else None
    t_run = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        xs, ys = epoch_inputs(cfg, data, epoch, augment, onehot, out=buffer, rank=rank, world_size=W)
        if short:  # label smoothing 0.1, keeping each row's label mass (< 1 cross-dataset)
            ys = 0.9 * ys + 0.1 * ys.sum(1, keepdim=True) / data.num_classes
        t_enc = time.perf_counter() - t0
        order = torch.randperm(len(xs), generator=_gen(cfg, epoch, "order", "cpu", rank, W)).to(device)
        bar = Progress(-(-len(xs) // batch_size), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and info.is_main)
        res = train_epoch(net, opt, index_batches(xs, ys, order, batch_size), amp=amp, progress=bar,
                          average=average)
        loss_sum, correct, seen = all_reduce_sum([res["loss_sum"], res["correct"], res["seen"]], info)
        metrics = {"epoch": epoch + 1, "lr": sched.get_last_lr()[0], "train_loss": loss_sum / seen,
                   "train_acc": correct / seen, "encrypt_seconds": t_enc, "epoch_seconds": None,
                   "test_loss": None, "test_acc": None}
        sched.step()
        if info.is_main and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            test = dict(batch_size=max(256, cfg.batch_size), amp=amp, flip=short and augment is not None)
            ev = evaluate(model if average is None else average.model, data.x_test, data.y_test, **test)
            metrics.update(test_loss=ev["loss"], test_acc=ev["accuracy"])
            if average is not None:  # the raw weights too: what the average adds
                metrics["test_acc_raw"] = evaluate(model, data.x_test, data.y_test, **test)["accuracy"]
        kept = {} if average is None else {"ema": average.state_dict()}
        metrics = run.record(info, history, metrics, t0, bar, model, opt, sched, cfg.to_dict(), **arch, **kept)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    final = {"config": cfg.to_dict(), "model": arch["model_name"], "sign_invariant": arch["sign_invariant"],
             "device": str(device),
             "parameters": sum(p.numel() for p in model.parameters()),
             "train_images": len(data.x_train) * W, "test_images": len(data.x_test), "dataset": data.name,
             "augment": augment is not None, "keys": "research-seed" if cfg.research_seed is not None else "os-entropy",
             "evaluated_weights": "raw" if average is None else f"ema {cfg.ema} (weights and BN statistics, "
                                                               f"{average.steps} steps)",
             **summary(history, state, t_run)}
    if average is not None:
        final["final_test_acc_raw"] = history[-1].get("test_acc_raw") if history else None
    if W > 1:
        final.update(world_size=W, backend=info.backend, train_images_per_rank=len(data.x_train),
                     unused_train_images=len(full.x_train) - W * len(data.x_train), batch_per_rank=batch_size,
                     keys_per_rank="independent: " + ("os-entropy on each rank" if cfg.research_seed is None
                                                      else "spawned from the research seed per epoch and rank"))
    return run.finish(final)


# -- checkpoints ----------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a training checkpoint with ``weights_only=True`` (no arbitrary code from an untrusted file)."""
    return load_torch_checkpoint(path, FORMAT)


def load_model(path: str | os.PathLike, device="cpu", *, raw: bool = False):
    """``(model in eval mode, TrainConfig, checkpoint dict)`` from a training checkpoint: the weight
    average when the run kept one (``ema`` > 0, what it evaluated), unless ``raw``."""
    device = resolve_device(device)
    state = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(checkpoint_config(state, path)).validate()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its configuration: {exc}" if str(path) not in str(exc) else str(exc)) from None
    if isinstance(state.get("epoch"), bool) or not isinstance(state.get("epoch"), int):
        raise ValueError(f"{path} records no epoch (a whole number): not a checkpoint of this trainer")
    model = build_arch(state, cfg.width, str(path))
    average = None if raw else state.get("ema")
    weights = state.get("model") if average is None else (average.get("model") if isinstance(average, dict) else None)
    if not isinstance(weights, dict):
        raise ValueError(f"{path} holds no weights ('model' {'in ema ' if average is not None else ''}is not a dict)")
    load_weights(model, weights, str(path))
    return model.to(device).eval(), cfg, state
