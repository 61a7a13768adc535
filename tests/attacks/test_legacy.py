"""The recurring public images of small synthetic legacy challenges (instahide.attacks.legacy)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instahide.attacks.legacy import legacy_decode, public_slots, solve_recurring_public
from instahide.challenge import make_challenge

linear_sum_assignment = pytest.importorskip("scipy.optimize").linear_sum_assignment


def smooth_images(n, seed, shape=(3, 8, 8)):
    """``n`` uint8 images of blurred noise (natural-image-like local correlation)."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(n, shape[0], shape[1] + 2, shape[2] + 2, generator=g), 3, stride=1)
    x = (x - x.amin((1, 2, 3), keepdim=True)) / (x.amax((1, 2, 3), keepdim=True) - x.amin((1, 2, 3), keepdim=True))
    return (255 * x).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def legacy_small():
    """A legacy challenge: 8 private images x T = 30, k = 6 (2 private + 4 public); the reference
    code's window: only the pool's first 8 images are ever used, each in 4 T = 120 rows."""
    n = 8
    priv, pool = smooth_images(n, 0), smooth_images(40, 1)
    enc, lab, truth = make_challenge(priv, np.arange(n) % 4, pool, T=30, k=6, num_private=2, scaling="pm1",
                                     num_classes=4, legacy=True, research_seed=3)
    assert np.unique(truth.indices[:, 2:]).tolist() == list(range(n))  # the window
    return enc, lab, truth


def matched_corr(found, true):
    """Mean |correlation| of the recovered public images with the true ones, matched one to one."""
    f, t = found.reshape(len(found), -1), true.reshape(len(true), -1)
    c = np.abs(np.corrcoef(np.vstack([f, t]))[:len(f), len(f):])
    r, cc = linear_sum_assignment(-c)
    return c[r, cc].mean(), dict(zip(r, cc))


def test_recovers_the_recurring_public_images_from_magnitudes(legacy_small):
    """With the TRUE private part, the fit finds the public images (matched |corr| near 1) and each
    row's public images; a random start (what the fit begins from) is far from them."""
    enc, lab, truth = legacy_small
    n = truth.n
    true_pub = truth.public[:n].astype(np.float64)
    fit = solve_recurring_public(enc, truth.indices[:, :2], truth.coefficients[:, :2], truth.private,
                                 1 - lab.sum(1), n_public=n, steps=1500, seed=0)
    corr, mapping = matched_corr(fit.public, true_pub)
    start = np.random.default_rng(0).standard_normal(fit.public.shape)
    assert corr > 0.9, corr
    assert matched_corr(start, true_pub)[0] < 0.5
    top, val = public_slots(fit.membership, 4)
    est = np.vectorize(mapping.get)(top)
    recall = np.mean([len(set(est[i]) & set(truth.indices[i, 2:])) / len(set(truth.indices[i, 2:]))
                      for i in range(len(enc))])
    assert recall > 0.8, recall  # chance: 4 of 8 -> about 0.5
    np.testing.assert_allclose(fit.membership.sum(1), 1 - lab.sum(1), rtol=1e-5)


def test_legacy_decode_hands_the_found_slots_to_the_oracle(legacy_small):
    """legacy_decode reuses a given fit, solves one image per private cluster and per public component,
    decrypts every row with its slot-1 image and keeps the global sign of the start. (At 8 x 8 pixels
    the oracle's phase retrieval itself is too weak to compare SSIMs: that is measured at 32 x 32 by
    experiments/legacy_attack.py.)"""
    enc, lab, truth = legacy_small
    n, mass = truth.n, 1 - lab.sum(1)
    fit = solve_recurring_public(enc, truth.indices[:, :2], truth.coefficients[:, :2], truth.private, mass,
                                 n_public=n, steps=300)
    o, same = legacy_decode(enc, truth.indices[:, :2], truth.coefficients[:, :2], truth.private, mass, n_public=n,
                            slots=4, fit=fit)
    assert same is fit
    assert o.recovered.shape == truth.private.shape and o.public_images.shape == (n, *enc.shape[1:])
    np.testing.assert_array_equal(o.decryption, o.recovered[truth.indices[:, 0]])
    assert float(np.sum(o.recovered * truth.private)) >= 0


def test_public_slots_keep_the_largest_and_the_mass():
    b = np.array([[0.1, 0.5, 0.0, 0.2], [0.3, 0.0, 0.3, 0.0]])
    top, val = public_slots(b, 2, public_mass=[0.6, 0.3])
    assert top[0].tolist() == [1, 3] and set(top[1].tolist()) == {0, 2}
    np.testing.assert_allclose(val.sum(1), [0.6, 0.3])
    np.testing.assert_allclose(val[0], [0.6 * 5 / 7, 0.6 * 2 / 7])
    with pytest.raises(ValueError, match="slots"):
        public_slots(b, 5)


def test_bad_inputs_get_clear_errors(legacy_small):
    enc, lab, truth = legacy_small
    a, c, mass = truth.indices[:, :2], truth.coefficients[:, :2], 1 - lab.sum(1)
    with pytest.raises(ValueError, match="private_init"):
        solve_recurring_public(enc, a, c, truth.private[:3], mass, n_public=8, steps=1)
    with pytest.raises(ValueError, match="public_mass"):
        solve_recurring_public(enc, a, c, truth.private, mass[:5], n_public=8, steps=1)
    with pytest.raises(ValueError, match="assignment"):
        solve_recurring_public(enc, a[:5], c, truth.private, mass, n_public=8, steps=1)
    with pytest.raises(ValueError, match="trim"):
        solve_recurring_public(enc, a, c, truth.private, mass, n_public=8, steps=1, trim=0)
