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

A private set larger than memory (a memory-mapped uint8 ``.npy``) is streamed instead (``workers >= 1``,
chosen automatically for large memory-mapped sets): the set stays uint8 where it is and every batch is
encrypted in a ``DataLoader`` worker, partners still drawn from the whole set (or the rank's shard),
memory bounded by a few batches (:mod:`instahide.train.loader`, docs/outofcore_training.md). ::

    result = train(TrainConfig.make(dataset="arrays", root="scans/", model="resnet10_224"), workers=4)
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass

import numpy as np
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
from .loader import (EncryptedBatches, PixelSource, Waited, auto_workers, batch_loader, check_centred_sample,
                     evaluate_source, resolve_workers)

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


@dataclass
class StreamData:
    """The private set left as uint8 where it is (read batch by batch), for ``workers >= 1``."""

    private: PixelSource           # (N, C, H, W) uint8, normalised as it is read
    y_train: torch.Tensor          # (N,) int64
    test: PixelSource              # (M, C, H, W) uint8
    y_test: torch.Tensor           # (M,)
    num_classes: int
    mean: tuple
    std: tuple
    public: PixelSource | None     # (P, C, H, W) uint8 or None
    name: str


# -- data -----------------------------------------------------------------------------------------
def subset_rows(size: int, n: int | None) -> np.ndarray | None:
    """The rows :func:`pick_subset` keeps of a set of ``size`` images (sorted), or None for all."""
    if n is None or n >= size:
        return None
    if n < 1:
        raise ValueError(f"subset must be >= 1, got {n}")
    return torch.randperm(size, generator=torch.Generator().manual_seed(0))[:n].sort().values.numpy()


def pick_subset(ds, n: int | None):
    """``n`` images of ``ds`` drawn at random with seed 0 (kept in dataset order), or all of them."""
    rows = subset_rows(len(ds), n)
    return ds if rows is None else ds.subset(rows)


def _datasets(cfg):
    """The train and test splits of ``cfg`` as loaded (uint8; memory-mapped where the loader maps)."""
    download = getattr(cfg, "download", False)
    train_ds = load_dataset(cfg.dataset, root=cfg.root, split="train", download=download)
    test_ds = load_dataset(cfg.dataset, root=cfg.root, split="test", download=download)
    if train_ds.labels is None or test_ds.labels is None:
        raise ValueError(f"dataset {cfg.dataset!r} has no labels: training needs a labelled dataset")
    return train_ds, test_ds


def _public_pool(scheme, shape):
    """The public pool (uint8 ImageDataset) of a cross-dataset scheme, None inside-dataset."""
    if not scheme.cross:
        return None
    c, h, w = shape
    return load_public_pool(scheme.public, n=scheme.public_size, size=(h, w), channels=c, resize=scheme.public_resize)


def _check_slots(scheme, n: int) -> None:
    if scheme.mode != "vanilla" and n < scheme.private_slots:
        raise ValueError(f"k={scheme.k} needs at least {scheme.private_slots} private images per encryption; "
                         f"the training set has {n}")


def load_train_data(cfg: TrainConfig, device) -> TrainData:
    """The private train/test split and the public pool of ``cfg`` (a TrainConfig, or any
    configuration with the same data fields and a ``scheme``), normalised, on ``device``."""
    scheme = cfg.scheme.validate()
    train_ds, test_ds = _datasets(cfg)
    return _in_memory(scheme, pick_subset(train_ds, cfg.subset), pick_subset(test_ds, cfg.test_subset), device)


def _in_memory(scheme, train_ds, test_ds, device) -> TrainData:
    # contiguous (a no-op for arrays in memory): a memory-mapped NHWC view gives channels-last strides
    x, y = train_ds.to_tensor(device=device)
    x = x.contiguous()
    xt, yt = test_ds.to_tensor(device=device)
    xt = xt.contiguous()
    pool = _public_pool(scheme, train_ds.shape)
    public = None if pool is None else pool.to_tensor(device=device)[0]
    _check_slots(scheme, len(x))
    return TrainData(x, y, xt, yt, train_ds.num_classes, train_ds.mean, train_ds.std, public, train_ds.name)


def load_stream_data(cfg: TrainConfig) -> StreamData:
    """What :func:`load_train_data` loads, left uint8 where it is: the images are read (and
    normalised) batch by batch, a subset is a list of rows, never a copy. The centring test of
    InstaHide runs once, on up to 4,096 images of the set (and of the pool)."""
    scheme = cfg.scheme.validate()
    return _streamed(scheme, *_datasets(cfg), cfg.subset, cfg.test_subset)


def _streamed(scheme, train_ds, test_ds, subset, test_subset) -> StreamData:
    rows, test_rows = subset_rows(len(train_ds), subset), subset_rows(len(test_ds), test_subset)
    private = PixelSource(train_ds.images, train_ds.mean, train_ds.std, rows, "private images")
    test = PixelSource(test_ds.images, test_ds.mean, test_ds.std, test_rows, "test images")
    labels = train_ds.labels if rows is None else train_ds.labels[rows]
    test_labels = test_ds.labels if test_rows is None else test_ds.labels[test_rows]
    pool = _public_pool(scheme, train_ds.shape)
    public = None if pool is None else PixelSource(pool.images, pool.mean, pool.std, name="public pool")
    _check_slots(scheme, len(private))
    if scheme.mode == "instahide":
        check_centred_sample(private, scheme.k, "images")
        if public is not None:
            check_centred_sample(public, scheme.k, "public")
    return StreamData(private, torch.from_numpy(np.asarray(labels, dtype=np.int64)), test,
                      torch.from_numpy(np.asarray(test_labels, dtype=np.int64)), train_ds.num_classes,
                      train_ds.mean, train_ds.std, public, train_ds.name)


def _load(cfg: TrainConfig, device, workers) -> tuple[TrainData | StreamData, int]:
    """The data of ``cfg`` and the workers to read it with (0: all of it in memory, as TrainData)."""
    scheme = cfg.scheme.validate()
    train_ds, test_ds = _datasets(cfg)
    n = len(train_ds) if cfg.subset is None else min(cfg.subset, len(train_ds))
    use = resolve_workers(workers, [train_ds.images], n * int(np.prod(train_ds.shape)) * 4)
    if use == 0:
        return _in_memory(scheme, pick_subset(train_ds, cfg.subset), pick_subset(test_ds, cfg.test_subset),
                          device), 0
    return _streamed(scheme, train_ds, test_ds, cfg.subset, cfg.test_subset), use


def shard_train_data(data: TrainData, rank: int, world_size: int) -> TrainData:
    """Rank ``rank``'s disjoint share of the private training set: a fixed permutation (seed 0, the
    same on every rank) cut into ``world_size`` equal parts (``N mod world_size`` images unused).
    The test set is kept whole (rank 0 evaluates)."""
    if world_size == 1:
        return data
    stream = isinstance(data, StreamData)
    n = len(data.private) if stream else len(data.x_train)
    share = n // world_size
    if share < 1:
        raise ValueError(f"{n} training images cannot be shared among {world_size} ranks")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    idx = perm[rank * share:(rank + 1) * share].sort().values
    if stream:
        return dataclasses.replace(data, private=data.private.subset(idx.numpy()), y_train=data.y_train[idx])
    idx = idx.to(data.x_train.device)
    return dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])


# -- keys -----------------------------------------------------------------------------------------
def _key_generator(cfg: TrainConfig, epoch: int, rank: int = 0, world_size: int = 1) -> KeyGenerator:
    """The key generator of one epoch on one rank: OS entropy (each rank its own), or, with a research
    seed, ``from_seed("train/<seed>").spawn(epoch)``, further spawned per rank when ``world_size > 1``."""
    if cfg.research_seed is None:
        return KeyGenerator.from_entropy()
    g = KeyGenerator.from_seed(f"train/{cfg.research_seed}").spawn(epoch)
    return g if world_size == 1 else g.spawn(world_size * 1_000_003 + rank)


def _epoch_keys(cfg: TrainConfig, epoch: int, rank: int = 0, world_size: int = 1):
    """The streamed path's factory of an epoch's root key generator, called in every process that
    encrypts: OS entropy (each worker its own), or the epoch's research-seeded generator
    (:func:`_key_generator`; the same in every process, batch ``b`` drawing from ``root.spawn(b)``)."""
    if cfg.research_seed is None:
        return KeyGenerator.from_entropy
    return functools.partial(_key_generator, cfg, epoch, rank, world_size)


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
def train(cfg: TrainConfig, *, resume: bool = False, data: TrainData | StreamData | None = None, on_epoch_end=None,
          workers: int | str | None = "auto") -> dict:
    """Train according to ``cfg``; returns the final summary (also written to ``final.json``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) this process joins the group and trains its shard with DDP
    (see the module docstring); otherwise it runs as a single process.

    Args:
        cfg: the configuration (validated here, before any data is loaded).
        resume: continue from ``cfg.out/checkpoint.pt`` (its configuration must match ``cfg`` but for
            where it runs; a larger ``cfg.epochs`` extends a finished run).
        data: preloaded :class:`TrainData` (to share one load across runs) or :class:`StreamData`
            (:func:`load_stream_data`); loaded from ``cfg`` if None. Under DDP, pass the whole set: each
            rank takes its shard.
        on_epoch_end: optional ``f(epoch, metrics)`` called after each checkpoint is written.
        workers: how the private set is read. 0: whole, as float32 on the device, re-encrypted at
            once every epoch (:class:`TrainData`). N >= 1: left uint8 where it is (a memory map) and
            encrypted batch by batch in N ``DataLoader`` worker processes (:mod:`.loader`; memory bounded
            by a few batches; with a research seed the keys differ from the whole-set path's but not
            with N). ``"auto"`` (or None): N = :func:`~instahide.train.loader.auto_workers` for a
            memory-mapped set whose float32 copy would exceed 1 GiB, else 0. Not part of the
            configuration: a run may resume with other workers (final.json records them).
    """
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, resume, data, on_epoch_end, workers)
    finally:
        cleanup(info)


def _train(cfg: TrainConfig, info: DistInfo, resume: bool, data, on_epoch_end, workers) -> dict:
    device, W, rank = info.device, info.world_size, info.rank
    run = RunFolder(cfg.out, FORMAT, main=info.is_main)
    state = run.start_all(cfg.to_dict(), resume, info)
    if W > 1 and cfg.scheme.legacy:
        raise ValueError("legacy keys replay the reference code's single-process generator; they are not "
                         "available under DDP (run legacy replays in one process)")
    if cfg.research_seed is not None:
        torch.manual_seed(derive_seed(cfg.research_seed, "init"))
    err, full, use = None, data, 0
    try:
        if data is None:
            full, use = _load(cfg, device, workers)
        elif isinstance(data, StreamData):
            use = auto_workers() if workers in (None, "auto") else resolve_workers(workers, [], 0)
            if use == 0:
                raise ValueError("StreamData is read by DataLoader workers: pass workers >= 1 (or 'auto')")
        elif resolve_workers(workers, [], 0) != 0:
            raise ValueError("a preloaded TrainData is trained in memory: pass workers=0, or StreamData "
                             "(load_stream_data) to read it in workers")
        if use and cfg.scheme.legacy:
            raise ValueError("legacy keys replay the reference code's single sequential generator: they cannot "
                             "be drawn batch by batch in workers (use workers=0, the in-memory path)")
        data = shard_train_data(full, rank, W)
        if W > 1 and cfg.scheme.mode != "vanilla" and _rows(data) < cfg.scheme.private_slots:
            raise ValueError(f"k={cfg.scheme.k} needs at least {cfg.scheme.private_slots} private images per "
                             f"rank; each of the {W} ranks has {_rows(data)}")
    except (ValueError, FileNotFoundError, ImportError) as exc:
        err = exc
    all_agree(info, err)
    stream = isinstance(data, StreamData)
    shape = data.private.shape if stream else tuple(data.x_train.shape[1:])
    c = shape[0]
    arch = {"model_name": model_for(cfg.model, c), "num_classes": data.num_classes, "in_channels": c,
            "sign_invariant": sign_invariant_for(cfg.sign_invariant, cfg.scheme.mode)}
    model = build_arch(arch, cfg.width).to(device)
    opt, sched = make_optimizer(model, cfg)
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    augment = augment_for(cfg.augment, shape, data.mean, data.std)
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
    short = cfg.recipe == "short"
    smooth = (lambda ys: 0.9 * ys + 0.1 * ys.sum(1, keepdim=True) / data.num_classes) if short else (lambda ys: ys)
    if not stream:
        onehot = F.one_hot(data.y_train, data.num_classes).float()
        buffer = torch.empty_like(data.x_train, memory_format=torch.contiguous_format) \
            if cfg.scheme.mode != "vanilla" else None
    t_run = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        if stream:
            order = torch.randperm(len(data.private), generator=_gen(cfg, epoch, "order", "cpu", rank, W))
            batches = _stream_epoch(cfg, data, epoch, order.split(batch_size), augment, use, device, rank, W)
            steps = ((xb.to(device, non_blocking=True), smooth(yb.to(device, non_blocking=True)), 1.0 / len(xb))
                     for xb, yb in batches)
            bar = Progress(len(batches.iterable), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and info.is_main)
        else:
            xs, ys = epoch_inputs(cfg, data, epoch, augment, onehot, out=buffer, rank=rank, world_size=W)
            ys = smooth(ys)  # short: label smoothing 0.1, keeping each row's label mass (< 1 cross-dataset)
            t_enc = time.perf_counter() - t0
            order = torch.randperm(len(xs), generator=_gen(cfg, epoch, "order", "cpu", rank, W)).to(device)
            bar = Progress(-(-len(xs) // batch_size), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and info.is_main)
            steps = index_batches(xs, ys, order, batch_size)
        res = train_epoch(net, opt, steps, amp=amp, progress=bar, average=average)
        if stream:
            t_enc = batches.seconds  # the time the loop waited for encrypted batches
        loss_sum, correct, seen = all_reduce_sum([res["loss_sum"], res["correct"], res["seen"]], info)
        metrics = {"epoch": epoch + 1, "lr": sched.get_last_lr()[0], "train_loss": loss_sum / seen,
                   "train_acc": correct / seen, "encrypt_seconds": t_enc, "epoch_seconds": None,
                   "test_loss": None, "test_acc": None}
        sched.step()
        if info.is_main and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            test = dict(batch_size=max(256, cfg.batch_size), amp=amp, flip=short and augment is not None)
            ev = _evaluate(model if average is None else average.model, data, device, test)
            metrics.update(test_loss=ev["loss"], test_acc=ev["accuracy"])
            if average is not None:  # the raw weights too: what the average adds
                metrics["test_acc_raw"] = _evaluate(model, data, device, test)["accuracy"]
        kept = {} if average is None else {"ema": average.state_dict()}
        metrics = run.record(info, history, metrics, t0, bar, model, opt, sched, cfg.to_dict(), **arch, **kept)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    final = {"config": cfg.to_dict(), "model": arch["model_name"], "sign_invariant": arch["sign_invariant"],
             "device": str(device),
             "parameters": sum(p.numel() for p in model.parameters()),
             "train_images": _rows(data) * W, "test_images": len(data.y_test), "dataset": data.name,
             "augment": augment is not None, "keys": "research-seed" if cfg.research_seed is not None else "os-entropy",
             "evaluated_weights": "raw" if average is None else f"ema {cfg.ema} (weights and BN statistics, "
                                                               f"{average.steps} steps)",
             "workers": use, "private_set": "streamed (uint8, encrypted in DataLoader workers)" if stream else
             "in memory (float32 on the device, re-encrypted whole every epoch)",
             **summary(history, state, t_run)}
    if average is not None:
        final["final_test_acc_raw"] = history[-1].get("test_acc_raw") if history else None
    if W > 1:
        final.update(world_size=W, backend=info.backend, train_images_per_rank=_rows(data),
                     unused_train_images=_rows(full) - W * _rows(data), batch_per_rank=batch_size,
                     keys_per_rank="independent: " + ("os-entropy on each rank" if cfg.research_seed is None
                                                      else "spawned from the research seed per epoch and rank"))
    return run.finish(final)


def _rows(data) -> int:
    return len(data.private) if isinstance(data, StreamData) else len(data.x_train)


def _stream_epoch(cfg: TrainConfig, data: StreamData, epoch: int, batches, augment, workers: int, device,
                  rank: int, world_size: int) -> Waited:
    """One epoch's ``(inputs, soft labels)`` batches of a streamed set, made in ``workers`` processes."""
    seed = cfg.research_seed
    ds = EncryptedBatches(data.private, data.y_train, batches, data.num_classes,
                          scheme=None if cfg.scheme.mode == "vanilla" else cfg.scheme.encrypt_kwargs(),
                          keys=_epoch_keys(cfg, epoch, rank, world_size), public=data.public, augment=augment,
                          augment_seed=None if seed is None else derive_seed(seed, epoch, "augment", rank, world_size))
    feed = Waited(batch_loader(ds, workers, pin_memory=device.type == "cuda"))
    return feed


def _evaluate(model, data, device, options: dict) -> dict:
    if isinstance(data, StreamData):
        return evaluate_source(model, data.test, data.y_test, device=device, **options)
    return evaluate(model, data.x_test, data.y_test, **options)


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
