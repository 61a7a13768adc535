"""A plain single-process reference of what W data-parallel ranks compute (imported by the tests by path)."""
from __future__ import annotations

import hashlib

import torch

from instahide.distributed import load_encrypted
from instahide.train import build_model, soft_cross_entropy


def _seed(*parts) -> int:
    """The documented seeding rule (docs/distributed.md): SHA-256 of repr(parts), 63 bits."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _global_batches(rows, batch_size, epoch, order_seed, world_size):
    """The documented order: one permutation per epoch cut into global batches; with W > 1 ranks a
    last batch of fewer than W rows is dropped."""
    perm = torch.randperm(rows, generator=torch.Generator().manual_seed(_seed(order_seed, epoch, "shared-order")))
    batches = [perm[s:s + batch_size] for s in range(0, rows, batch_size)]
    return batches[:-1] if world_size > 1 and len(batches[-1]) < world_size else batches


def _slice(batch, r, world_size):
    """Rank r's near-equal contiguous slice (the first len % W slices one row longer)."""
    base, extra = divmod(len(batch), world_size)
    start = r * base + min(r, extra)
    return batch[start:start + base + (1 if r < extra else 0)]


def reference_run(folders, *, epochs, batch_size, lr, momentum, weight_decay, research_seed, order_seed,
                  world_size, milestones=(0.5, 0.75), gamma=0.1, abs_first=True):
    """One process, plain loop: for every global batch, split it in ``world_size`` slices, run each slice
    through the model separately (BatchNorm statistics per slice, as on the ranks), add the slices'
    summed losses divided by the global batch size, one SGD step. Running BatchNorm statistics are the
    ones the first slice leaves (DDP broadcasts rank 0's buffers). ``abs_first``: the network sees
    ``|x|`` (the sign-invariant stage the trainer puts first for InstaHide encryptions)."""
    union = load_encrypted(folders)
    torch.manual_seed(_seed(research_seed, "shared-init"))
    model = build_model("mnistnet", union.num_classes, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    ms = sorted({max(1, round(m * epochs)) for m in milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=gamma)
    model.train()
    for epoch in range(epochs):
        for b in _global_batches(union.rows_per_epoch, batch_size, epoch, order_seed, world_size):
            opt.zero_grad()
            kept = None
            for r in range(world_size):      # gradients accumulate over the slices
                x, y = union.take(epoch, _slice(b, r, world_size).numpy())
                (soft_cross_entropy(model(x.abs() if abs_first else x), y, reduction="sum") / len(b)).backward()
                if r == 0:
                    kept = {k: v.clone() for k, v in model.named_buffers()}
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(kept[k])
            opt.step()
        sched.step()
    return model
