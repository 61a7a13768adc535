"""Generator-seed recovery (docs/attacks.md): exact against legacy keys, nothing to find against the default.

Challenges: epoch-major rows, each epoch one encrypt(..., legacy=True, generator=g) call on a shared
LegacyGenerator g (the reference's global streams continue across epochs). Pixels in [-1, 1];
scored with scikit-image's structural_similarity (data_range=2; images channels-first, channel_axis=0).
"""
import numpy as np
import pytest
import torch

import instahide
from instahide.attacks import mt19937_outputs, recover_seed, seed_candidates, seed_rate
from instahide.attacks.seed import _legacy_normals, scan_seeds

skimage_metrics = pytest.importorskip("skimage.metrics")


def challenge(private_images, dataset="digits", n=30, epochs=10, k=6, num_private=2, pool=200, legacy_seed=None,
              seed=0):
    """Epoch-major [-1, 1] challenge from instahide.challenge.make_challenge: legacy keys from
    ``legacy_seed`` (one LegacyGenerator across the epochs, as the reference's global streams), or
    default keys from OS entropy."""
    from instahide.challenge import make_challenge
    from instahide.data import load_public_pool

    imgs, labels, classes = private_images(dataset, n, seed)
    public = load_public_pool("builtin", pool, imgs.shape[2:], imgs.shape[1]).images if num_private < k else None
    legacy = legacy_seed is not None
    gen = instahide.LegacyGenerator(legacy_seed) if legacy else instahide.KeyGenerator.from_entropy()
    enc, label, truth = make_challenge(imgs, labels, public, T=epochs, k=k, num_private=num_private,
                                       num_classes=classes, legacy=legacy, generator=gen)
    return {"encryption": enc, "label": label, "private": truth.private, "key": truth.key(), "n": n, "k": k,
            "num_private": truth.num_private}


def max_ssim(decryption, ch):
    ssim = skimage_metrics.structural_similarity
    x, idx = ch["private"], ch["key"].indices.numpy()
    return float(np.mean([max(ssim(d, x[idx[r, 0]], data_range=2.0, channel_axis=0),
                              ssim(d, x[idx[r, 1]], data_range=2.0, channel_axis=0))
                          for r, d in enumerate(decryption)]))


def attack(ch, **kw):
    return recover_seed(ch["encryption"], ch["label"], n_private=ch["n"], k=ch["k"], num_private=ch["num_private"],
                        **kw)


# -- the vectorised generator equals numpy's -----------------------------------------------------
def test_mt19937_outputs_match_randomstate():
    seeds = np.array([0, 1, 7, 3001, 2 ** 31 + 5, 2 ** 32 - 1])
    words = mt19937_outputs(seeds, 227)
    for j, s in enumerate(seeds):
        ref = np.random.RandomState(s).randint(0, 2 ** 32, size=227, dtype=np.uint64).astype(np.uint32)
        np.testing.assert_array_equal(words[:, j], ref)


def test_legacy_normals_match_randomstate():
    seeds = np.arange(50) * 7919
    z = _legacy_normals(mt19937_outputs(seeds, 227), 60)
    for j, s in enumerate(seeds):
        np.testing.assert_allclose(z[j], np.random.RandomState(s).normal(size=60), rtol=0, atol=1e-12)


# -- the attack ------------------------------------------------------------------------------------
def test_legacy_cross_dataset_digits_recovered_exactly(private_images):
    ch = challenge(private_images, legacy_seed=2741)
    found = attack(ch, seed_range=(0, 2 ** 12))
    assert found is not None and found.seed == 2741
    assert found.seeds_checked == 2742
    assert found.residual < 1e-5
    assert found.public.shape == (30, 1, 8, 8)  # the public window: pool rows 0..n-1
    assert torch.equal(found.key.indices, ch["key"].indices)
    assert torch.equal(found.key.mask_bits, ch["key"].mask_bits)
    np.testing.assert_allclose(found.recovered, ch["private"], atol=1e-4)
    assert max_ssim(found.decryption, ch) > 0.95


def test_legacy_inside_dataset_cifar_recovered_exactly(private_images):
    ch = challenge(private_images, "cifar10", n=20, epochs=5, k=4, num_private=4, legacy_seed=4000)
    found = attack(ch, seed_range=(0, 2 ** 12))
    assert found is not None and found.seed == 4000 and found.public is None
    assert max_ssim(found.decryption, ch) > 0.95


def test_default_keys_give_no_seed(private_images):
    """KeyGenerator keys come from SHAKE-256 under 256 bits of OS entropy: no seed reproduces them."""
    ch = challenge(private_images)
    assert attack(ch, seed_range=(0, 2 ** 12)) is None


def test_wrong_range_gives_no_seed(private_images):
    ch = challenge(private_images, legacy_seed=2741)
    assert attack(ch, seed_range=(3000, 4096)) is None


def test_filter_keeps_the_seed_and_little_else(private_images):
    ch = challenge(private_images, legacy_seed=1234)
    kept = seed_candidates(np.arange(4096), ch["label"], k=6, num_private=2, upper=0.65, dom=0.3)
    np.testing.assert_array_equal(kept, [1234])


def test_seed_rate_is_measured():
    assert seed_rate(batch=2048, repeats=1) > 1000


def test_bad_inputs(private_images):
    ch = challenge(private_images, n=10, epochs=2, legacy_seed=5)
    e, lab = ch["encryption"], ch["label"]
    with pytest.raises(ValueError, match="whole number of epochs"):
        recover_seed(e, lab, n_private=7, k=6, num_private=2)
    with pytest.raises(ValueError, match="seed_range"):
        recover_seed(e, lab, n_private=10, k=6, num_private=2, seed_range=(5, 2 ** 33))
    with pytest.raises(ValueError, match="k=1"):
        recover_seed(e, lab, n_private=10, k=1, num_private=1)
    with pytest.raises(ValueError, match="label has 19 rows"):
        recover_seed(e, lab[:-1], n_private=10, k=6, num_private=2)
    with pytest.raises(ValueError, match="expected \\(N, C, H, W\\)"):
        recover_seed(e[..., 0], lab, n_private=10, k=6, num_private=2)
    with pytest.raises(ValueError, match="count must be"):
        mt19937_outputs(np.arange(3), 300)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(batch=-1), ValueError, "batch must be an integer >= 1, got -1"),  # searched nothing, returned None
    (dict(batch=0), ValueError, "batch must be an integer >= 1"),
    (dict(batch=2.5), ValueError, "batch must be an integer"),
    (dict(seed_range=(0.5, 10.7)), TypeError, "seed_range must be two integers, got float 0.5"),  # was cut to (0, 10)
    (dict(seed_range=(0, 100, 2)), ValueError, r"seed_range must be \(start, stop\), two integers"),  # step ignored
    (dict(seed_range=(5,)), ValueError, r"seed_range must be \(start, stop\)"),
    (dict(seed_range=(True, 10)), TypeError, "seed_range must be two integers"),
    (dict(seed_range=(-1, 10)), ValueError, r"0 <= start < stop <= 2\*\*32"),
    (dict(seed_range=(10, 10)), ValueError, r"0 <= start < stop"),
    (dict(threads=0), ValueError, "threads must be an integer >= 1"),
    (dict(check_rows=0), ValueError, "check_rows must be an integer >= 1"),
    (dict(k=6.0), ValueError, "k must be an integer"),
])
def test_recover_seed_refuses_bad_search_arguments(private_images, kwargs, error, match):
    ch = challenge(private_images, n=10, epochs=2, legacy_seed=5)
    with pytest.raises(error, match=match):
        recover_seed(ch["encryption"], ch["label"], n_private=10, **{"k": 6, "num_private": 2, **kwargs})


@pytest.mark.parametrize("start,stop", [(-5, 10), (0, 2 ** 32 + 1), (2 ** 32, 2 ** 32 + 10), (10, 5), (0.0, 10)])
def test_scan_seeds_refuses_ranges_outside_the_seed_space(private_images, start, stop):
    ch = challenge(private_images, n=10, epochs=2, legacy_seed=5)
    kw = dict(k=6, num_private=2, upper=0.65, dom=0.3)
    with pytest.raises((ValueError, TypeError), match="start, stop must"):  # the compiled filter returned []
        scan_seeds(start, stop, ch["label"], **kw)
    assert scan_seeds(7, 7, ch["label"], **kw).tolist() == []
    for bad in (dict(batch=-1), dict(threads=0), dict(check_rows=0)):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            scan_seeds(0, 10, ch["label"], **kw, **bad)
    with pytest.raises(TypeError, match="seeds must be integers"):
        seed_candidates(np.array([0.5, 3.7]), ch["label"], **kw)
    with pytest.raises(ValueError, match=r"seeds must be in \[0, 2\*\*32\)"):
        seed_candidates(np.array([-1, 3]), ch["label"], **kw)
