"""Shared by the attack tests: the private images of their small challenges."""
import numpy as np
import pytest

from instahide.data import load_dataset


@pytest.fixture
def private_images(request):
    """``private_images(name, n, seed=0)``: ``n`` random images of ``name`` as ``(uint8 (n, C, H, W),
    labels, num_classes)``: "cifar10" (test split, from the shared data; skipped without it) or a
    built-in dataset (its default split)."""
    def pick(name, n, seed=0):
        if name == "cifar10":
            ds = load_dataset("cifar10", root=request.getfixturevalue("cifar10_root"), split="test")
        else:
            ds = load_dataset(name)
        sel = np.random.default_rng(seed).choice(len(ds.images), n, replace=False)
        return ds.images[sel], ds.labels[sel], ds.num_classes
    return pick
