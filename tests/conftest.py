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


def _real(shared_data: Path, name: str) -> Path:
    root = shared_data / name
    if not root.is_dir():
        pytest.skip(f"{name} not present at {root}")
    return root


@pytest.fixture(scope="session")
def cifar10_root(shared_data) -> Path:
    """The real CIFAR-10 batches (``cifar-10-batches-py``); the test is skipped without them."""
    return _real(shared_data, "cifar-10-batches-py")


@pytest.fixture(scope="session")
def mnist_root(shared_data) -> Path:
    """The real MNIST idx files; the test is skipped without them."""
    return _real(shared_data, "mnist")
