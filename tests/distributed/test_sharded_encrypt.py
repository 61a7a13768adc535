"""``torchrun --nproc-per-node=2 -m instahide encrypt`` (gloo on CPU): each rank its share of the
images under its own keys, partners drawn from the whole set, one folder per rank and a manifest that
``load_encrypted`` (so ``train-shared``) reads as one set."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from instahide.data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset
from instahide.distributed import load_encrypted
from instahide.scheme import Key, apply_key

SRC = str(Path(__file__).resolve().parents[2] / "src")
N = 240


def _torchrun(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "instahide",
           "encrypt", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    u = np.random.default_rng(0).integers(0, 256, (N, 8, 6, 3), dtype=np.uint8)
    np.save(tmp / "private.npy", u)
    np.save(tmp / "private.labels.npy", np.arange(N) % 5)
    out, key = tmp / "enc", tmp / "secret" / "k.npz"
    proc = _torchrun("--dataset", "arrays", "--root", str(tmp / "private.npy"), "--out", str(out), "--epochs", "2",
                     "--key-out", str(key), "--research-seed", "3", "--progress", "false")
    if proc.returncode:
        pytest.fail(f"torchrun encrypt failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return tmp, u, out, key


def _float(u):
    return ImageDataset(np.ascontiguousarray(u.transpose(0, 3, 1, 2)), None, None, "x", IMAGENET_MEAN,
                        IMAGENET_STD).to_tensor()[0]


@pytest.mark.slow
def test_one_folder_per_rank_and_a_manifest(sharded):
    tmp, u, out, key = sharded
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rank-00000", "rank-00001"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["first"], s["stop"]) for s in manifest["shards"]] == [(0, 120), (120, 240)]
    x = _float(u)
    keys = [Key.load(key.with_name(f"k.rank{r:05d}.npz")) for r in range(2)]
    for r, k in enumerate(keys):
        folder = out / f"rank-{r:05d}"
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["num_images"] == 120 and meta["shard"] == {"rank": r, "world_size": 2, "first": 120 * r,
                                                              "stop": 120 * (r + 1), "of": N}
        assert k.indices[:120, 0].tolist() == list(range(120 * r, 120 * (r + 1)))   # its own images, epoch 0
        own = (k.indices[:, 1:] >= 120 * r) & (k.indices[:, 1:] < 120 * (r + 1))
        assert 0.3 < float(own.float().mean()) < 0.7           # partners from the whole set, not the shard
        enc = np.load(folder / "encryption.npy")
        again = torch.cat([apply_key(x, k[e * 120:(e + 1) * 120]) for e in range(2)])
        assert np.array_equal(again.permute(0, 2, 3, 1).numpy(), enc)
    assert not torch.equal(keys[0].coefficients, keys[1].coefficients)   # each rank its own keys
    assert not torch.equal(keys[0].mask_bits, keys[1].mask_bits)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*derive from a seed")
def test_load_encrypted_reads_the_shards_as_one_set(sharded, tmp_path):
    tmp, u, out, _ = sharded
    union = load_encrypted(out)
    assert union.rows_per_epoch == N and [p.path.name for p in union.parties] == ["rank-00000", "rank-00001"]
    xs, ys = union.take(epoch=1, positions=np.arange(N))
    assert xs.shape == (N, 3, 8, 6) and torch.allclose(ys.sum(1), torch.ones(N))
    second = np.load(out / "rank-00001" / "encryption.npy")[120:]                  # epoch 1 of rank 1
    assert np.array_equal(xs[120:].permute(0, 2, 3, 1).numpy(), second)
    # a shard swapped for another run's is refused
    copy = tmp_path / "enc"
    shutil.copytree(out, copy)
    meta = json.loads((copy / "rank-00001" / "meta.json").read_text())
    (copy / "rank-00001" / "meta.json").write_text(json.dumps({**meta, "seconds": 0.0}))
    with pytest.raises(ValueError, match="is not the one .*manifest.json records: the shards come from different runs"):
        load_encrypted(copy)
    shutil.rmtree(copy / "rank-00001")
    with pytest.raises(FileNotFoundError, match="lists shard 'rank-00001', which is not a folder"):
        load_encrypted(copy)


def test_legacy_keys_are_refused_under_torchrun(tmp_path, monkeypatch, capsys):
    """--legacy draws one Mersenne-Twister stream from the seed: every rank would repeat it."""
    from instahide.cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["encrypt", "--out", str(tmp_path / "enc"), "--legacy", "--subset", "20"]) == 2
    assert "--legacy keys (one Mersenne-Twister stream from the seed) would repeat on every rank" in capsys.readouterr().err
    assert not (tmp_path / "enc").exists()


@pytest.mark.slow
def test_a_second_run_without_force_is_refused_and_changes_nothing(sharded):
    tmp, _, out, _ = sharded
    before = (out / "manifest.json").read_bytes()
    proc = _torchrun("--dataset", "arrays", "--root", str(tmp / "private.npy"), "--out", str(out), "--progress", "false")
    assert proc.returncode != 0 and "refusing to overwrite" in proc.stderr
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rank-00000", "rank-00001"]
