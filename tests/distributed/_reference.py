"""A plain single-process reference of what W data-parallel ranks compute (imported by the tests by path)."""
from __future__ import annotations

import torch

from instahide.distributed import epoch_batches, load_encrypted, rank_slice
from instahide.train import build_model, soft_cross_entropy
from instahide.train.recipe import hash_seed


def reference_run(folders, *, epochs, batch_size, lr, momentum, weight_decay, research_seed, order_seed,
                  world_size, milestones=(0.5, 0.75), gamma=0.1):
    """One process, plain loop: for every global batch, split it in ``world_size`` slices, run each slice
    through the model separately (BatchNorm statistics per slice, as on the ranks), add the slices'
    summed losses divided by the global batch size, one SGD step. Running BatchNorm statistics are the
    ones the first slice leaves (DDP broadcasts rank 0's buffers)."""
    union = load_encrypted(folders)
    torch.manual_seed(hash_seed(research_seed, "shared-init"))
    model = build_model("mnistnet", union.num_classes, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    ms = sorted({max(1, round(m * epochs)) for m in milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=gamma)
    model.train()
    for epoch in range(epochs):
        for b in epoch_batches(union.rows_per_epoch, batch_size, epoch, order_seed, world_size):
            opt.zero_grad()
            kept = None
            for r in range(world_size):      # gradients accumulate over the slices
                x, y = union.take(epoch, rank_slice(b, r, world_size).numpy())
                (soft_cross_entropy(model(x), y, reduction="sum") / len(b)).backward()
                if r == 0:
                    kept = {k: v.clone() for k, v in model.named_buffers()}
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(kept[k])
            opt.step()
        sched.step()
    return model
