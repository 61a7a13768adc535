"""The fusion-and-denoising attack (instahide.attacks.fusion): input errors, invariance to the order of
the set, the per-row decryption against a plain loop, and a briefly trained network against the mean
|e| of the same groups."""
import numpy as np
import pytest
import torch

from instahide.attacks.fusion import FusionNet, fusion_attack, train_fusion_network, true_groups
from instahide.challenge import make_challenge, score
from instahide.data import load_dataset, load_public_pool


@pytest.fixture(scope="module")
def digits_challenge():
    """20 digits test images x T=10, cross k=4 (2 private + 2 public), the attacker's train images
    and its own pool (another seed)."""
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    pool = load_public_pool("builtin", n=500, size=(8, 8), channels=1, resize=40, seed=0)
    own_pool = load_public_pool("builtin", n=500, size=(8, 8), channels=1, resize=40, seed=1)
    enc, lab, truth = make_challenge(test.images[:20], test.labels[:20], pool.images, T=10, k=4,
                                     research_seed=0, num_classes=10)
    return train, own_pool, enc, lab, truth


def _net(channels=3, seed=0):
    torch.manual_seed(seed)
    return FusionNet(channels, width=4, decoder_width=4).eval()


@pytest.mark.parametrize("magnitude, coefficient, error, match", [
    (np.ones((3, 3, 8, 8), np.float32), torch.ones(3), TypeError, "magnitude must be a torch tensor"),
    (torch.ones(3, 8, 8), torch.ones(3), ValueError, "Invalid magnitude shape"),
    (torch.ones(3, 1, 8, 8), torch.ones(3), ValueError, "Invalid magnitude shape"),
    (torch.ones(3, 3, 8, 8, dtype=torch.int64), torch.ones(3), TypeError, "floating point"),
    (torch.ones(3, 3, 8, 8), torch.ones(4), ValueError, "coefficient must be"),
    (torch.ones(0, 3, 8, 8), torch.ones(0), ValueError, "empty set"),
    (torch.full((3, 3, 8, 8), float("nan")), torch.ones(3), ValueError, "NaN"),
    (torch.ones(3, 3, 8, 8), torch.tensor([1.0, float("inf"), 1.0]), ValueError, "NaN or Inf"),
])
def test_network_rejects_bad_input(magnitude, coefficient, error, match):
    with pytest.raises(error, match=match):
        _net()(magnitude, coefficient)


def test_attack_rejects_bad_input(digits_challenge):
    _, _, enc, lab, truth = digits_challenge
    net, groups = _net(1), true_groups(truth.indices, 2, truth.n)
    bad = enc.copy()
    bad[3, 0, 0, 0] = np.nan
    cases = [
        ((bad, lab, groups, net), ValueError, "encryption contains NaN"),
        ((enc[0], lab, groups, net), ValueError, "Invalid encryption shape"),
        ((enc, lab[:5], groups, net), ValueError, "label has 5 rows"),
        ((enc, lab, groups, "net"), TypeError, "network must be a FusionNet"),
        ((enc, lab, groups, _net(3)), ValueError, "for 3 channels"),
        ((enc, lab, [], net), ValueError, "groups is empty"),
        ((enc, lab, [np.array([0, len(enc)])], net), ValueError, "outside"),
        ((enc, lab, [np.array([0.0, 1.0])], net), ValueError, "integer row indices"),
        ((enc, lab, [np.array([], np.int64)], net), ValueError, "non-empty"),
        ((enc, lab, 7, net), TypeError, "list of row-index arrays"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            fusion_attack(*args)


def test_training_rejects_bad_input(digits_challenge):
    train, own_pool, *_ = digits_challenge
    kw = dict(T=10, k=4, num_private=2, steps=1)
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        train_fusion_network(train.images, train.labels, own_pool.images, **{**kw, "T": 0})
    with pytest.raises(ValueError, match="batch_images must be in"):
        train_fusion_network(train.images[:10], train.labels[:10], own_pool.images, batch_images=11, **kw)
    with pytest.raises(TypeError, match="attacker_images must be uint8"):
        train_fusion_network(train.images.astype(np.float32), train.labels, own_pool.images, **kw)
    with pytest.raises(ValueError, match="give attacker_public"):
        train_fusion_network(train.images, train.labels, None, **kw)


def test_set_order_does_not_matter():
    rng = np.random.default_rng(0)
    net = _net()
    mag = torch.from_numpy(np.abs(rng.normal(size=(9, 3, 16, 16))).astype(np.float32))
    lam = torch.from_numpy(rng.uniform(0.1, 0.6, 9).astype(np.float32))
    with torch.no_grad():
        out = net(mag, lam)
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32
        for _ in range(3):
            p = torch.from_numpy(rng.permutation(9))
            torch.testing.assert_close(net(mag[p], lam[p]), out, atol=1e-5, rtol=1e-5)
        # batched sets give what each set gives alone
        batched = net(torch.stack([mag, mag.flip(0)]), torch.stack([lam, lam.flip(0)]))
        torch.testing.assert_close(batched, torch.stack([out, out]), atol=1e-5, rtol=1e-5)
        # ...and the set's content does matter
        assert not torch.allclose(net(mag[:4], lam[:4]), out)


def test_rows_get_an_image_of_one_of_their_groups(digits_challenge):
    _, _, enc, lab, truth = digits_challenge
    groups = true_groups(truth.indices, 2, truth.n)[:12]   # rows holding only images 12..19: in no group
    res = fusion_attack(enc, lab, groups, _net(1))
    assert res.recovered.shape == (12, *enc.shape[1:]) and res.decryption.shape == enc.shape
    assert res.decryption.dtype == np.float32 and np.abs(res.decryption).max() <= 1
    for r in range(len(enc)):   # plain loop: which groups hold row r
        holding = [j for j, g in enumerate(groups) if r in set(g.tolist())] or list(range(len(groups)))
        assert res.row_group[r] in holding
        np.testing.assert_array_equal(res.decryption[r], res.recovered[res.row_group[r]])
    # each true group's class, read off the labels, is its image's class
    np.testing.assert_array_equal(res.group_class, truth.private_labels[:12])


def test_trained_network_decodes_better_than_the_mean_magnitude(digits_challenge):
    train, own_pool, enc, lab, truth = digits_challenge
    net, log = train_fusion_network(train.images, train.labels, own_pool.images, T=10, k=4, num_private=2,
                                    steps=150, seed=0)
    assert len(log) == 3 and all(np.isfinite(e["loss"]) for e in log)
    groups = true_groups(truth.indices, 2, truth.n)
    res = fusion_attack(enc, lab, groups, net)
    mean_abs = np.stack([np.abs(enc[g]).mean(0) for g in groups]).astype(np.float32)
    fused, baseline = score(res.decryption, truth).max_ssim, score(mean_abs[res.row_group], truth).max_ssim
    assert fused > baseline + 0.15, (fused, baseline)

    # it decodes the image of ITS group: closer to it than to the other images (around the mean digit)
    mu = train.images.astype(np.float64).mean(0) / 127.5 - 1

    def corr(a, b):
        a, b = (a - mu).ravel(), (b - mu).ravel()
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    c = np.array([[corr(r, p) for p in truth.private] for r in res.recovered])
    own, others = np.diag(c).mean(), c[~np.eye(len(c), dtype=bool)].mean()
    assert own > others + 0.05, (own, others)


def test_training_batches_of_dark_attacker_images_are_not_refused():
    """The attacker's own small training batches skip the centring guard that protects a user's data:
    8 dark images (every mixed value negative on [-1, 1] pixels) would fail it."""
    from instahide.challenge import make_challenge

    rng = np.random.default_rng(0)
    dark = rng.integers(0, 40, size=(40, 1, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40)
    with pytest.raises(ValueError, match="positive"):
        make_challenge(dark[:8], labels[:8], None, T=2, k=4, num_classes=10)
    enc, _, _ = make_challenge(dark[:8], labels[:8], None, T=2, k=4, num_classes=10, allow_uncentred=True)
    assert enc.shape == (16, 1, 8, 8)
    _, log = train_fusion_network(dark, labels, None, T=4, k=4, num_private=4, steps=3, batch_images=8)
    assert log[-1]["step"] == 3 and np.isfinite(log[-1]["loss"])  # every step ran
