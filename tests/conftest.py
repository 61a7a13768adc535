"""Fixtures for the whole suite: where the real datasets are (``../shared/data`` next to the checkout)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets (CIFAR-10, MNIST, photographs); the test is skipped without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cifar10_root(shared_data) -> Path:
    """The real CIFAR-10 batches (``cifar-10-batches-py``); the test is skipped without them."""
    root = shared_data / "cifar-10-batches-py"
    if not root.is_dir():
        pytest.skip(f"CIFAR-10 not present at {root}")
    return root
