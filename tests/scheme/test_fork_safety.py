"""A KeyGenerator never emits the same stream in two processes: forked DataLoader workers, os.fork,
and the ranks of a torchrun job (research seeds included)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from instahide import InstaHide, KeyGenerator, encrypt

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs the fork start method")
HERE = Path(__file__).resolve().parent


def worker_batches(gen, epochs=1):
    """Keys drawn inside a collate_fn by 2 forked workers, for 4 batches of 4 images (per epoch)."""
    x = torch.randn(16, 3, 4, 4)

    def collate(items):
        e = encrypt(torch.stack([t[0] for t in items]), k=2, generator=gen, return_key=True)
        return e.key.coefficients, e.key.mask_bits

    dl = DataLoader(TensorDataset(x), batch_size=4, num_workers=2, multiprocessing_context="fork",
                    collate_fn=collate)
    return [b for _ in range(epochs) for b in dl]


def all_distinct(batches):
    for i in range(len(batches)):
        for j in range(i):
            assert not torch.equal(batches[i][0], batches[j][0]), (i, j)  # coefficients
            assert not torch.equal(batches[i][1], batches[j][1]), (i, j)  # masks


def test_forked_workers_with_entropy_keys_draw_different_keys():
    gen = KeyGenerator.from_entropy()
    batches = worker_batches(gen, epochs=2)
    all_distinct(batches)
    parent = gen.random_bytes(64)  # the parent's own stream continues, unlike any worker's
    assert len(batches) == 8 and parent.shape == (64,)


def test_forked_workers_with_a_research_seed_differ_per_batch_and_epoch_and_reproduce():
    a = worker_batches(KeyGenerator.from_seed(5), epochs=2)  # workers are forked again each epoch
    b = worker_batches(KeyGenerator.from_seed(5), epochs=2)
    all_distinct(a)
    for (ca, ma), (cb, mb) in zip(a, b):
        assert torch.equal(ca, cb) and torch.equal(ma, mb)
    c = worker_batches(KeyGenerator.from_seed(6))
    assert not torch.equal(a[0][1], c[0][1])


def test_the_module_in_a_collate_fn_encrypts_repeated_batches_differently():
    x = torch.randn(4, 3, 4, 4).repeat(2, 1, 1, 1)  # batch 1 = batch 0
    for hide in (InstaHide(k=2, num_classes=2), InstaHide(k=2, num_classes=2, seed=0)):
        dl = DataLoader(TensorDataset(x, torch.arange(8) % 2), batch_size=4, num_workers=2,
                        multiprocessing_context="fork",
                        collate_fn=lambda b: hide(torch.stack([t[0] for t in b]), torch.stack([t[1] for t in b])))
        (e0, _), (e1, _) = list(dl)
        assert not torch.equal(e0, e1)  # under one mask, e0 * e1 would cancel it


def test_a_research_seeded_generator_refuses_a_plain_fork():
    gen = KeyGenerator.from_seed(1)
    gen.random_bytes(8)
    pid = os.fork()
    if pid == 0:  # child: must refuse rather than repeat the parent's stream
        try:
            gen.random_bytes(8)
            os._exit(1)
        except RuntimeError as exc:
            os._exit(3 if "forked process" in str(exc) else 2)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3


def test_an_entropy_generator_rekeys_after_a_plain_fork():
    gen = KeyGenerator.from_entropy()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, gen.random_bytes(32).tobytes() + gen.spawn(0).random_bytes(32).tobytes())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64)
    assert child[:32] != gen.random_bytes(32).tobytes() and child[32:] != gen.spawn(0).random_bytes(32).tobytes()


def test_from_seed_folds_in_the_rank_of_a_distributed_job(monkeypatch):
    single = KeyGenerator.from_seed(3).random_bytes(32)
    draws = []
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        draws.append(KeyGenerator.from_seed(3).random_bytes(32))
        assert np.array_equal(draws[-1], KeyGenerator.from_seed(3).random_bytes(32))  # still reproducible
    assert not np.array_equal(draws[0], draws[1])
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert np.array_equal(KeyGenerator.from_seed(3).random_bytes(32), single)


@pytest.mark.slow
def test_torchrun_ranks_with_one_research_seed_draw_different_keys(tmp_path):
    src = HERE.parents[1] / "src"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "keys.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(HERE / "_torchrun_keys.py"), str(out), "7"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = json.loads(out.read_text())
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["coefficients"] != r1["coefficients"] and r0["mask"] != r1["mask"]
