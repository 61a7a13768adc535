"""Targets of spawned processes (tests/scheme/test_fork_safety.py, tests/test_properties.py).

A spawned child imports its target by module name, and the tests are imported by path
(``--import-mode=importlib``), so the targets live here; the tests put this folder on ``sys.path``.
"""
from __future__ import annotations

import os
import sys
import threading


def draw_blocks(gen, threads: int, draws: int, size: int = 16) -> list[bytes]:
    """``threads`` threads started together, each drawing ``draws`` blocks of ``size`` bytes from ``gen``."""
    start = threading.Barrier(threads)
    out: list[list[bytes]] = [[] for _ in range(threads)]

    def work(i):
        start.wait()
        out[i] = [gen.random_bytes(size).tobytes() for _ in range(draws)]

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: races show at once
    try:
        pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    finally:
        sys.setswitchinterval(old)
    return [b for part in out for b in part]


def spawned_keystream(kind: str, rank: int, world: int, threads: int, draws: int) -> list[bytes]:
    """In a spawned process: a generator of ``kind`` made here (a generator is never pickled), as
    rank ``rank`` of ``world`` (a research seed is split per rank), then blocks drawn by threads."""
    from instahide.scheme import KeyGenerator

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank))
    if kind == "seed":
        gen = KeyGenerator.from_seed(7)
    else:
        gen = KeyGenerator(os.urandom(32), stream=kind)
    return draw_blocks(gen, threads, draws)


def rank_keys(rank: int, world: int, init_file: str, out_dir: str, seed: int) -> None:
    """One rank of ``torch.multiprocessing.spawn``: a gloo group from ``init_process_group(rank=,
    world_size=)`` with no RANK / WORLD_SIZE variables; writes the keys of ``from_seed(seed)``."""
    import json

    import torch.distributed as dist

    from instahide.scheme import KeyGenerator, sample_key

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(var, None)
    refused = ""
    os.environ["WORLD_SIZE"] = str(world)  # a world without a rank: refused before the group exists
    try:
        KeyGenerator.from_seed(seed)
    except RuntimeError as exc:
        refused = str(exc)
    del os.environ["WORLD_SIZE"]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        key = sample_key(8, 4, (3, 4, 4), generator=KeyGenerator.from_seed(seed))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump({"rank": rank, "coefficients": key.coefficients.tolist(),
                       "mask": key.mask_bits.tolist(), "refused": refused}, fh)
        dist.barrier()
    finally:
        dist.destroy_process_group()
