"""torch.distributed plumbing shared by the trainers (``instahide train`` under torchrun, the shared trainer): join the process group, agree, reduce, broadcast.

A process launched by ``torchrun`` finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address in its environment; :func:`init_distributed` joins the group with the backend that fits the
device (``nccl`` on CUDA, ``gloo`` on CPU). Without those variables (or with ``WORLD_SIZE=1``) it
returns a world of one and touches nothing, so every trainer also runs as a plain process.

Every collective here is called by all ranks in the same order. A rank that fails during set-up must
not leave the others waiting in a collective: :func:`all_agree` turns one rank's exception into an
exception on every rank.

Example::

    info = init_distributed("auto")           # world of one without torchrun
    try:
        total = all_reduce_sum([loss_sum, seen], info)
    finally:
        cleanup(info)
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process stands: its rank in a world of ``world_size`` and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None      # "gloo" | "nccl" | None (world of one, no process group)
    owns_group: bool = False        # True when init_distributed created the group (cleanup destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device, *, option: str = "device") -> torch.device:
    """The torch device that ``device`` names, checked before any work: ``"auto"`` (CUDA if there is
    one, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.

    Every command and function that takes a device checks it here, so that asking for CUDA on a
    machine without it is one clear ``ValueError`` instead of torch's ``AssertionError`` deep in the
    work (or a silent run on the CPU). ``option`` is how the caller names it in the message:
    ``"device"`` for the Python API (the default), ``"--device"`` on the command line.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")
    Traceback (most recent call last):
    ...
    ValueError: unknown device: device='gpu'; expected 'auto', 'cpu', 'cuda' or 'cuda:N'
    """
    cli = option.startswith("-")
    shown = f"{option} {device}" if cli else f"{option}={str(device)!r}"
    choices = "auto, cpu, cuda or cuda:N" if cli else "'auto', 'cpu', 'cuda' or 'cuda:N'"
    if isinstance(device, torch.device):
        dev = device
    elif not isinstance(device, str):
        raise TypeError(f"{option} must be a string such as 'cpu' or 'cuda' (or a torch.device), got "
                        f"{type(device).__name__}")
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown device: {shown}; expected {choices}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{shown} is not supported: expected {choices}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        use = f"{option} cpu or auto" if cli else f"{option}='cpu' or 'auto'"
        raise ValueError(f"{shown} asked for, but this machine has no CUDA device (torch "
                         f"{torch.__version__}); use {use}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{shown} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


_pick_device = resolve_device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group (if any) and pick this rank's device.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            Under torchrun on CUDA each rank takes ``cuda:LOCAL_RANK``.

    Returns a :class:`DistInfo`. If a process group already exists (e.g. made by a test with
    ``torch.multiprocessing.spawn``), it is used as is and not destroyed by :func:`cleanup`.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        backend = dist.get_backend()
        dev = _pick_device(device)
        if dev.type == "cuda" and backend == "nccl":
            dev = torch.device("cuda", local)
        return DistInfo(rank, world, local, dev, backend, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=_pick_device(device))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev, backend, owns_group=True)


def cleanup(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` created it (after a barrier)."""
    if info.owns_group and dist.is_initialized():
        gc.collect()  # free DDP reducers (reference cycles) while the group they use still exists
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def all_agree(info: DistInfo, error: BaseException | None) -> None:
    """Raise on every rank if any rank had ``error`` (call on all ranks, with None when fine).

    The rank that failed re-raises its own exception; the others raise a RuntimeError naming it.
    """
    if not info.distributed:
        if error is not None:
            raise error
        return
    msg = None if error is None else f"{type(error).__name__}: {error}"
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, msg)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(gathered) if m is not None]
    if failed:
        r, m = failed[0]
        raise RuntimeError(f"rank {r} failed: {m}")


def broadcast_object(info: DistInfo, obj=None, src: int = 0):
    """``obj`` from rank ``src`` on every rank (pickled over the group; only for small objects
    and state you already trust, e.g. a checkpoint rank 0 read with ``weights_only=True``)."""
    if not info.distributed:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=info.device if info.backend == "nccl" else None)
    return box[0]


def all_reduce_sum(values, info: DistInfo) -> list[float]:
    """Element-wise sum of a list of numbers over the ranks (float64)."""
    if not info.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()

