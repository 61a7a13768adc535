"""Encryption of chosen rows (``rows=``) and in DataLoader workers (InstaHideDataset): partners from
the whole private set, every worker its own keys, a seeded run reproducible for a fixed num_workers."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from instahide import KeyGenerator, encrypt
from instahide.modules import InstaHideDataset


def centred(n, shape=(3, 4, 4), seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_rows_encrypt_those_images_with_partners_from_the_whole_set():
    n, k, rows = 60, 4, [5, 17, 17, 59]
    x = centred(n)
    seen = np.zeros(n)
    for trial in range(150):
        enc = encrypt(x, torch.arange(n) % 3, k=k, rows=rows, return_key=True, seed=trial)
        lam, idx, signs = enc.key.coefficients, enc.key.indices, enc.key.signs()
        assert enc.images.shape == (len(rows), 3, 4, 4) and enc.soft_labels.shape == (len(rows), 3)
        for i, r in enumerate(rows):  # a plain loop over the key as the reference
            assert idx[i, 0] == r and len(set(idx[i].tolist())) == k
            mix = sum(float(lam[i, j]) * x[int(idx[i, j])] for j in range(k))
            assert torch.allclose(enc.images[i], signs[i] * mix, atol=1e-5)
            label = sum(float(lam[i, j]) * torch.eye(3)[int(idx[i, j]) % 3] for j in range(k))
            assert torch.allclose(enc.soft_labels[i], label, atol=1e-6)
        np.add.at(seen, idx[:, 1:].flatten().numpy(), 1)
    # 1,800 partner draws, each uniform over the other 59 images: every image of the set is drawn
    # (not only the batch's), none far from the mean of ~30.5 (Poisson tails; a batch-only sampler
    # would leave 56 images at 0)
    assert seen.min() >= 8 and seen.max() <= 70


@pytest.mark.parametrize("rows, match", [
    ([[0, 1]], "1-D"), ([0.5, 1.0], "integer"), ([], "empty"), ([0, 60], r"\[0, 60\)"), ([-1], r"\[0, 60\)"),
])
def test_bad_rows_are_refused(rows, match):
    with pytest.raises(ValueError, match=match):
        encrypt(centred(60), k=4, rows=rows)


def test_rows_are_not_part_of_legacy_replay():
    with pytest.raises(ValueError, match="legacy"):
        encrypt(centred(20), k=4, rows=[0, 1], legacy=True, seed=1)


def test_dataset_batches_match_encrypt_of_those_rows_and_the_loader_covers_every_image():
    x, y = centred(50), torch.arange(50) % 5
    ds = InstaHideDataset(x, y, k=4, seed=2)
    loader = ds.loader(batch_size=16, num_workers=0)
    order = list(loader.sampler)
    assert [len(b) for b in order] == [16, 16, 16, 2] and sorted(sum(order, [])) == list(range(50))
    gen = KeyGenerator.from_seed(2)
    gen.random_bytes(8)  # the draw that seeds the shuffling order
    xb, yb = next(iter(ds.loader(batch_size=16, shuffle=False)))
    ref = encrypt(x, y, k=4, rows=list(range(16)), generator=gen, num_classes=5)
    assert torch.equal(xb, ref.images) and torch.equal(yb, ref.soft_labels)
    with pytest.raises(TypeError, match="batch of indices"):
        ds[3]
    with pytest.raises(ValueError, match="batch_size"):
        ds.loader(batch_size=0)


def fork_loader(ds, batches, epochs=1, num_workers=2):
    """Every batch of ``batches`` (index lists), read by ``num_workers`` forked workers."""
    from torch.utils.data import DataLoader
    dl = DataLoader(ds, batch_size=None, sampler=batches, num_workers=num_workers, multiprocessing_context="fork")
    return [xb for _ in range(epochs) for xb, _ in dl]


@pytest.mark.skipif(sys.platform == "win32", reason="needs the fork start method")
@pytest.mark.parametrize("seed", [None, 4])
def test_workers_never_share_keys_and_a_seeded_run_reproduces(seed):
    x, y = centred(40, (3, 8, 8)), torch.arange(40) % 4
    same = [[0, 1, 2, 3]] * 6  # the same rows in every batch: a shared key gives equal encryptions
    a = fork_loader(InstaHideDataset(x, y, k=4, seed=seed), same, epochs=2)
    assert len(a) == 12
    for i in range(len(a)):
        for j in range(i):
            assert not torch.equal(a[i], a[j]), (i, j)
            agree = float((torch.sign(a[i]) == torch.sign(a[j])).float().mean())
            assert abs(agree - 0.5) < 0.1, (i, j, agree)  # independent masks: half the signs agree (5 sd)
    b = fork_loader(InstaHideDataset(x, y, k=4, seed=seed), same, epochs=2)
    assert all(torch.equal(u, v) for u, v in zip(a, b)) == (seed is not None)
