"""Multi-party and multi-process training on encryptions.

- :func:`load_encrypted`: the union of several parties' ``instahide encrypt`` folders (memory-mapped,
  validated; a folder holding a key is refused).
- :func:`train_shared` / :class:`SharedConfig`: a central trainer over that union, one process or
  DistributedDataParallel under ``torchrun`` (gloo on CPU, nccl on CUDA).
- the process-group helpers live in :mod:`instahide.train.ddp` (``instahide train`` uses them too:
  on-the-fly encryption under DDP, every rank encrypting its own shard with its own keys).

Entry point: ``instahide train-shared ...`` (or ``train``), also under
``torchrun --nproc-per-node=N -m instahide train-shared ...``. See docs/distributed.md.
"""
from ..train.ddp import DistInfo, cleanup, init_distributed
from .encrypted import EncryptedUnion, KeyMaterialError, Party, find_key_files, load_encrypted
from .shared import (SharedConfig, epoch_batches, load_shared_checkpoint, load_shared_model, load_test_set,
                     rank_slice, train_shared)

__all__ = [
    "DistInfo", "EncryptedUnion", "KeyMaterialError", "Party", "SharedConfig", "cleanup", "epoch_batches",
    "find_key_files", "init_distributed", "load_encrypted", "load_shared_checkpoint", "load_shared_model",
    "load_test_set", "rank_slice", "train_shared",
]
