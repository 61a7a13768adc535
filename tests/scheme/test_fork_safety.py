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

import instahide
from instahide import InstaHide, KeyGenerator, encrypt
from instahide.scheme.encrypt import check_centred

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


def test_from_seed_takes_the_rank_from_an_initialised_process_group(monkeypatch):
    """torch.multiprocessing.spawn + init_process_group(rank=, world_size=) sets no RANK/WORLD_SIZE:
    the rank must come from the group (before the fix every rank drew the parent's stream)."""
    import torch.distributed as dist

    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    single = KeyGenerator.from_seed(3).random_bytes(32)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    draws = {}
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda *a, _r=rank, **k: _r)
        draws[rank] = KeyGenerator.from_seed(3).random_bytes(32)
    assert not np.array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], single) and not np.array_equal(draws[1], single)
    monkeypatch.setenv("WORLD_SIZE", "2")  # the same bytes as torchrun's variables give that rank
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    assert np.array_equal(KeyGenerator.from_seed(3).random_bytes(32), draws[1])


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": ""},
                                 {"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two", "RANK": "0"}])
def test_from_seed_refuses_a_world_whose_rank_is_unknown(monkeypatch, env):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        KeyGenerator.from_seed(3)
    KeyGenerator.from_entropy().random_bytes(8)  # private keys need no rank
    check_centred(torch.randn(8, 1, 4, 4), 4)  # nor does the centring check


def test_the_centring_verdict_is_the_same_on_every_rank(monkeypatch):
    x = torch.randn(40, 3, 4, 4) + 0.6
    shares = []
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        shares.append(check_centred(x, 4))
    monkeypatch.delenv("WORLD_SIZE")
    assert shares[0] == shares[1] == check_centred(x, 4)


@pytest.mark.slow
def test_spawned_ranks_of_a_process_group_with_one_research_seed_draw_different_keys(tmp_path, monkeypatch):
    """2 gloo ranks from torch.multiprocessing.spawn, init_process_group(rank=, world_size=), no
    RANK/WORLD_SIZE variables (before the fix both ranks drew the same masks)."""
    import torch.multiprocessing as mp

    monkeypatch.syspath_prepend(str(HERE))  # the spawned ranks import their target from here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    import _spawn_workers

    mp.spawn(_spawn_workers.rank_keys, args=(2, str(tmp_path / "init"), str(tmp_path), 7), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["coefficients"] != r1["coefficients"] and r0["mask"] != r1["mask"]
    assert "rank is unknown" in r0["refused"] and "rank is unknown" in r1["refused"]
    single = instahide.scheme.sample_key(8, 4, (3, 4, 4), generator=KeyGenerator.from_seed(7))
    assert single.coefficients.tolist() not in (r0["coefficients"], r1["coefficients"])


def test_the_legacy_module_refuses_to_draw_in_forked_dataloader_workers():
    """The reference's Mersenne-Twister streams cannot be split: before the fix every worker replayed
    the same keys (batch 1 = batch 0 gave identical encryptions)."""
    x = torch.randn(4, 3, 4, 4).repeat(2, 1, 1, 1)
    hide = InstaHide(k=2, num_classes=2, legacy=True, seed=5)
    dl = DataLoader(TensorDataset(x, torch.arange(8) % 2), batch_size=4, num_workers=2,
                    multiprocessing_context="fork",
                    collate_fn=lambda b: hide(torch.stack([t[0] for t in b]), torch.stack([t[1] for t in b])))
    with pytest.raises(RuntimeError, match=r"legacy=True.*copied into process .*DataLoader worker"):
        list(dl)
    e0, _ = hide(x[:4], torch.arange(4) % 2)  # in the process that built it, it still replays the reference
    ref = encrypt(x[:4], torch.arange(4) % 2, k=2, legacy=True, seed=5, num_classes=2)
    assert torch.equal(e0, ref.images)


def test_a_legacy_generator_refuses_a_plain_fork():
    gen = instahide.LegacyGenerator(3)
    pid = os.fork()
    if pid == 0:
        try:
            encrypt(torch.randn(4, 1, 2, 2), k=2, legacy=True, generator=gen)
            os._exit(1)
        except RuntimeError as exc:
            os._exit(3 if "copied into process" in str(exc) else 2)
        except BaseException:
            os._exit(4)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3
    encrypt(torch.randn(4, 1, 2, 2), k=2, legacy=True, generator=gen)  # the parent keeps its streams
