"""Coefficients (docs/scheme.md, "The scheme", step 1) against the reference facts of docs/scheme.md,
"Reference defaults"."""
import math
import numpy as np
import pytest
import torch

from instahide.scheme import KeyGenerator, check_bounds, legacy_coefficients, sample_coefficients

# setting -> (k, dom, first-draw acceptance, mean max lambda, mean lambda_1 + lambda_2)  [docs/scheme.md table]
REFERENCE_TABLE = {
    "inside k=2": (2, None, 0.373, 0.574, 1.0),
    "inside k=4": (4, None, 0.928, 0.450, 0.500),
    "inside k=6": (6, None, 0.996, 0.351, 0.334),
    "cross k=6": (6, 0.3, 0.565, 0.342, 0.435),
    "cross k=4": (4, 0.3, 0.803, 0.441, 0.543),
}


@pytest.mark.parametrize("k,dom", [(1, None), (2, None), (4, None), (6, None), (6, 0.3), (4, 0.3), (8, 0.5)])
def test_rows_sum_to_one_and_respect_bounds(k, dom):
    lam = sample_coefficients(20000, k, upper=0.65, dom=dom, seed=1, dtype=torch.float64)
    assert lam.shape == (20000, k)
    assert torch.allclose(lam.sum(1), torch.ones(20000, dtype=torch.float64), atol=1e-12)
    assert (lam > 0).all()
    if k > 1:
        assert lam.max() <= 0.65
    if dom is not None:
        assert (lam[:, :2].sum(1) >= dom).all()


@pytest.mark.parametrize("name", list(REFERENCE_TABLE))
def test_moments_match_reference_table(name):
    k, dom, acc, mean_max, mean_12 = REFERENCE_TABLE[name]
    n = 100_000
    lam = sample_coefficients(n, k, dom=dom, seed=2, dtype=torch.float64)
    mx, s12 = lam.max(1).values, lam[:, :2].sum(1)
    # 5 standard errors of the Monte-Carlo mean (plus the table's 3-decimal rounding)
    assert abs(mx.mean().item() - mean_max) < 5 * mx.std().item() / math.sqrt(n) + 5e-4
    assert abs(s12.mean().item() - mean_12) < 5 * s12.std().item() / math.sqrt(n) + 5e-4
    z = np.abs(np.random.default_rng(3).standard_normal((200_000, k)))  # one first draw per row
    first = z / z.sum(1, keepdims=True)
    rate = ((first.max(1) <= 0.65) & (first[:, :2].sum(1) >= (dom or 0))).mean()
    assert abs(rate - acc) < 5 * math.sqrt(acc * (1 - acc) / 200_000) + 5e-4


@pytest.mark.parametrize("name", ["inside k=4", "cross k=6"])
def test_legacy_sampler_matches_reference_table(name):
    k, dom, acc, mean_max, mean_12 = REFERENCE_TABLE[name]
    n = 20_000
    rs = np.random.RandomState(0)
    lam = legacy_coefficients(n, k, 0.65, dom, rs)
    assert np.allclose(lam.sum(1), 1)
    assert lam.max() <= 0.65
    mx, s12 = lam.max(1), lam[:, :2].sum(1)
    assert abs(mx.mean() - mean_max) < 5 * mx.std() / math.sqrt(n) + 5e-4
    assert abs(s12.mean() - mean_12) < 5 * s12.std() / math.sqrt(n) + 5e-4


def test_vectorised_and_legacy_samplers_have_the_same_distribution():
    """Two-sample Kolmogorov-Smirnov on the largest coefficient (cross k=6)."""
    a = sample_coefficients(20000, 6, dom=0.3, seed=4, dtype=torch.float64).max(1).values.numpy()
    b = legacy_coefficients(20000, 6, 0.65, 0.3, np.random.RandomState(4)).max(1)
    grid = np.sort(np.concatenate([a, b]))
    ks = np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                - np.searchsorted(np.sort(b), grid, "right") / len(b)).max()
    assert ks < 1.95 * math.sqrt(2 / 20000)  # 0.1% level


def test_k1_is_all_ones_and_ignores_upper():
    lam = sample_coefficients(10, 1, upper=0.65, seed=0)
    assert torch.equal(lam, torch.ones(10, 1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=4, upper=0.2), r"upper=0.2 for k=4.*1/k = 0.25"),
    (dict(k=4, upper=0.25), r"upper=0.25 for k=4"),
    (dict(k=6, upper=0.65, dom=1.0, num_private=2), r"infeasible bound dom=1.0"),
    (dict(k=6, upper=0.4, dom=0.85, num_private=2), r"dom=0.85.*less than 0.8"),
    (dict(k=0, upper=0.65), r"k must be >= 1"),
    (dict(k=4, upper=float("nan")), r"upper \(c1\) must be a finite number"),
    (dict(k=4, upper=0.65, dom=1.5), r"dom \(c2\) must be in \[0, 1\]"),
    (dict(k=4, upper=1.5), r"upper \(c1\) must be <= 1, got upper=1.5"),
])
def test_infeasible_bounds_raise_before_sampling(kwargs, match):
    k = kwargs.pop("k")
    gen = KeyGenerator.from_seed(0)
    with pytest.raises(ValueError, match=match):
        sample_coefficients(10, k, generator=gen, **kwargs)
    assert gen._counter == 0  # raised up front: not a single random byte was drawn


def test_nearly_infeasible_bounds_stop_with_error_instead_of_hanging():
    # feasible (upper > 1/k) but a draw is accepted with probability ~0
    with pytest.raises(ValueError, match="accept only"):
        sample_coefficients(10, 4, upper=0.2500001)


def test_check_bounds_accepts_reference_defaults():
    check_bounds(4, 0.65)
    check_bounds(6, 0.65, 0.3, 2)
    check_bounds(2, 0.65)


def test_same_seed_same_coefficients_no_seed_different():
    assert torch.equal(sample_coefficients(50, 4, seed=7), sample_coefficients(50, 4, seed=7))
    assert not torch.equal(sample_coefficients(50, 4), sample_coefficients(50, 4))


def test_own_min_floors_the_first_coefficient_and_checks_feasibility():
    lam = sample_coefficients(5000, 4, own_min=0.5, seed=0, dtype=torch.float64)
    assert (lam[:, 0] >= 0.5).all() and lam.max() <= 0.65
    assert torch.allclose(lam.sum(1), torch.ones(5000, dtype=torch.float64))
    with pytest.raises(ValueError, match="infeasible bound own_min=0.7"):
        sample_coefficients(10, 4, own_min=0.7)


@pytest.mark.parametrize("n,dtype,exc,match", [
    (3, torch.int64, TypeError, r"dtype must be a floating-point torch dtype.*torch.int64"),
    (3, torch.bool, TypeError, r"dtype must be a floating-point"),
    (3, "float32", TypeError, r"dtype must be a floating-point"),
    (2.7, torch.float32, TypeError, r"n must be an integer, got float 2.7"),
    (True, torch.float32, TypeError, r"n must be an integer, got bool"),
    (-1, torch.float32, ValueError, r"n must be >= 0"),
])
def test_bad_n_and_dtype_are_refused_not_truncated(n, dtype, exc, match):
    with pytest.raises(exc, match=match):
        sample_coefficients(n, 4, seed=0, dtype=dtype)


def test_upper_one_means_no_bound():
    lam = sample_coefficients(2000, 2, upper=1.0, seed=0, dtype=torch.float64)
    assert lam.max() > 0.9 and torch.allclose(lam.sum(1), torch.ones(2000, dtype=torch.float64))
    assert sample_coefficients(np.int64(3), 2, seed=0).shape == (3, 2)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    return float(np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                        - np.searchsorted(np.sort(b), grid, "right") / len(b)).max())


@pytest.mark.parametrize("name", list(REFERENCE_TABLE))
def test_entropy_keys_compiled_sampler_has_the_reference_law(name):
    """OS-entropy keys take the compiled polar-method sampler where numba is installed (the numpy one
    otherwise): the same bounds, the reference table's moments, and the seeded numpy sampler's law."""
    k, dom, _, mean_max, mean_12 = REFERENCE_TABLE[name]
    n = 100_000
    lam = sample_coefficients(n, k, dom=dom, generator=KeyGenerator.from_entropy(), dtype=torch.float64)
    assert torch.allclose(lam.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-12)
    assert (lam > 0).all() and lam.max() <= 0.65
    if dom is not None:
        assert (lam[:, :2].sum(1) >= dom).all()
    mx, s12 = lam.max(1).values, lam[:, :2].sum(1)
    assert abs(mx.mean().item() - mean_max) < 5 * mx.std().item() / math.sqrt(n) + 5e-4
    assert abs(s12.mean().item() - mean_12) < 5 * s12.std().item() / math.sqrt(n) + 5e-4
    ref = sample_coefficients(n, k, dom=dom, seed=5, dtype=torch.float64)
    for j in (0, k - 1):  # each slot's marginal, two-sample Kolmogorov-Smirnov at the 0.1% level
        assert _ks(lam[:, j].numpy(), ref[:, j].numpy()) < 1.95 * math.sqrt(2 / n)
    assert _ks(mx.numpy(), ref.max(1).values.numpy()) < 1.95 * math.sqrt(2 / n)


def test_entropy_keys_respect_own_min_and_odd_k():
    lam = sample_coefficients(20000, 5, own_min=0.4, generator=KeyGenerator.from_entropy(), dtype=torch.float64)
    assert (lam[:, 0] >= 0.4).all() and lam.max() <= 0.65
    assert torch.allclose(lam.sum(1), torch.ones(20000, dtype=torch.float64), atol=1e-12)
    ref = sample_coefficients(20000, 5, own_min=0.4, seed=6, dtype=torch.float64)
    assert _ks(lam[:, 1].numpy(), ref[:, 1].numpy()) < 1.95 * math.sqrt(2 / 20000)
