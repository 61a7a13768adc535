"""Partitions: a partition of range(n), IID balance, Dirichlet skew measured against alpha, clear errors."""
import numpy as np
import pytest

from instahide.federated.partition import dirichlet_partition, iid_partition, label_histogram


def _assert_partition(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n          # disjoint and no duplicates
    assert set(allidx.tolist()) == set(range(n))                      # covers everything
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)        # sorted


def _labels(n=6000, classes=10, seed=1):
    return np.random.default_rng(seed).integers(0, classes, n)


def _mean_tv(labels, parts, classes=10):
    """Mean total-variation distance between each party's label distribution and the global one."""
    hist = label_histogram(labels, parts, classes).astype(float)
    glob = np.bincount(labels, minlength=classes) / len(labels)
    local = hist / hist.sum(1, keepdims=True)
    return float(np.mean(0.5 * np.abs(local - glob).sum(1)))


@pytest.mark.parametrize("n,parties", [(10, 3), (1000, 4), (7, 7), (1797, 8)])
def test_iid_is_a_partition_with_near_equal_sizes(n, parties):
    parts = iid_partition(n, parties, seed=3)
    _assert_partition(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_class_balance():
    y = _labels(8000)
    parts = iid_partition(len(y), 4, seed=0)
    # each party has 2000 images: class proportions within a few binomial standard deviations (~0.007)
    assert _mean_tv(y, parts) < 0.05


def test_iid_seed_reproducible_and_seed_dependent():
    a, b, c = iid_partition(100, 4, 0), iid_partition(100, 4, 0), iid_partition(100, 4, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("alpha", [0.1, 0.5, 5.0])
def test_dirichlet_is_a_partition_with_min_size(alpha):
    y = _labels(3000)
    parts = dirichlet_partition(y, 6, alpha=alpha, seed=2, min_size=20)
    _assert_partition(parts, len(y))
    assert min(len(p) for p in parts) >= 20


def test_dirichlet_skew_follows_alpha():
    y = _labels(6000)
    tv = {a: np.mean([_mean_tv(y, dirichlet_partition(y, 8, alpha=a, seed=s, min_size=5)) for s in range(3)])
          for a in (0.05, 0.5, 5.0, 1000.0)}
    assert tv[0.05] > tv[0.5] > tv[5.0] > tv[1000.0]
    assert tv[0.05] > 0.5          # a few dominant classes per party
    assert tv[1000.0] < 0.05       # close to IID (compare test_iid_class_balance)
    iid = np.mean([_mean_tv(y, iid_partition(len(y), 8, s)) for s in range(3)])
    assert tv[1000.0] < 2 * iid + 0.01


def test_dirichlet_accepts_torch_labels():
    torch = pytest.importorskip("torch")
    y = _labels(500)
    a = dirichlet_partition(torch.from_numpy(y), 3, alpha=1.0, seed=0, min_size=5)
    b = dirichlet_partition(y, 3, alpha=1.0, seed=0, min_size=5)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))


def test_errors_name_the_problem():
    y = _labels(100)
    with pytest.raises(ValueError, match="cannot give 20 parties at least 10"):
        dirichlet_partition(y, 20, alpha=1.0, min_size=10)
    with pytest.raises(ValueError, match="no draw in 5 attempts"):
        dirichlet_partition(y, 10, alpha=0.01, min_size=10, max_attempts=5)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(y, 2, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(y, 2, alpha=float("nan"))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        dirichlet_partition(y.reshape(10, 10), 2)
    with pytest.raises(ValueError, match="integer class"):
        dirichlet_partition(y.astype(float), 2)
    with pytest.raises(ValueError, match="num_parties"):
        iid_partition(10, 0)
    with pytest.raises(ValueError, match="cannot give 11 parties"):
        iid_partition(10, 11)
