"""DP-SGD rows: Opacus's epsilon as reported agrees with its accountants called directly for the
same noise multiplier, sampling rate and steps; and the eavesdropper's inversion of a DP update is,
without noise or clipping, the audit's gradient inversion itself."""
import dataclasses

import numpy as np
import pytest
import torch

from instahide.audit.gradient import gradient_inversion_audit
from instahide.compare import CompareConfig, Method, dp_gradient_inversion, member_splits, train_member_model
from instahide.data import load_dataset
from instahide.train import TrainConfig, load_train_data

opacus = pytest.importorskip("opacus")


def _rdp_epsilon(sigma, q, steps, delta):
    """Epsilon from Opacus's RDP analysis functions, called directly (not through an accountant)."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    return get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0]


@pytest.fixture(scope="module")
def pool():
    data = load_train_data(TrainConfig(dataset="digits", subset=160, test_subset=60), "cpu")
    return data, member_splits(len(data.x_train), 4, seed=0)


@pytest.mark.parametrize("method, accountant", [("dp-eps3", "rdp"), ("instahide-k2+dp-eps8", "rdp"),
                                                ("dp-eps3", "prv")])
def test_the_dp_rows_epsilon_is_opacus_accountant_for_its_noise_rate_and_steps(pool, method, accountant):
    data, member = pool
    cfg = CompareConfig.make(epochs=2, width=0.25, batch_size=16, accountant=accountant).validate()
    m = Method.parse(method)
    res = train_member_model(cfg, m, data, member[0], 0)
    n = int(member[0].sum())
    assert res["delta"] == pytest.approx(1 / n)
    assert res["sample_rate"] == pytest.approx(1 / -(-n // 16))  # one over the loader's batches
    assert res["steps"] == 2 * -(-n // 16)
    if accountant == "rdp":
        independent = _rdp_epsilon(res["noise_multiplier"], res["sample_rate"], res["steps"], res["delta"])
    else:
        from opacus.accountants import PRVAccountant
        acc = PRVAccountant()
        acc.history = [(res["noise_multiplier"], res["sample_rate"], res["steps"])]
        independent = acc.get_epsilon(delta=res["delta"])
    assert res["epsilon"] == pytest.approx(independent, rel=1e-3)
    # the noise was chosen for the target: epsilon at most the target, within the search's tolerance
    assert m.epsilon - 0.05 < res["epsilon"] <= m.epsilon + 1e-9
    assert 0 <= res["accuracy"] <= 1 and np.isfinite(res["phi"]).all() and len(res["phi"]) == len(data.x_train)


def test_less_epsilon_means_more_noise(pool):
    from instahide.compare import dp_noise
    sig = [dp_noise(eps, 1e-3, 0.1, 200) for eps in (8.0, 3.0, 1.0)]
    assert sig[0] < sig[1] < sig[2]


@pytest.mark.parametrize("mode, k", [("vanilla", 2), ("instahide", 2)])
def test_without_noise_or_clipping_the_dp_inversion_is_the_audits(mode, k):
    ds = load_dataset("digits", split="test")
    images, labels = ds.images[:30], ds.labels[:30]
    ref = gradient_inversion_audit(images, labels, mode=mode, k=k, n=2, batch_size=1, steps=30, seed=0)
    got = dp_gradient_inversion(images, labels, mode=mode, k=k, n=2, steps=30, seed=0, num_classes=10)
    np.testing.assert_allclose(got["max_ssim_vs_private"], ref["max_ssim_vs_private"], atol=1e-6)
    np.testing.assert_allclose(got["abs_max_ssim_vs_private"], ref["abs_max_ssim_vs_private"], atol=1e-6)


def test_dp_noise_spoils_the_inversion():
    ds = load_dataset("digits", split="test")
    images, labels = ds.images[:30], ds.labels[:30]
    clean = dp_gradient_inversion(images, labels, n=2, steps=200, seed=0, num_classes=10)
    noisy = dp_gradient_inversion(images, labels, n=2, steps=200, seed=0, num_classes=10, noise_multiplier=1.0,
                                  max_grad_norm=1.0)
    assert clean["summary"]["max_ssim_vs_private"] > 0.9  # a batch-1 digit comes back from its gradient
    assert noisy["summary"]["max_ssim_vs_private"] < clean["summary"]["max_ssim_vs_private"] - 0.3


def test_dp_inversion_refuses_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        dp_gradient_inversion(np.zeros((3, 1, 8, 8), np.float32), np.zeros(3), n=2)
    with pytest.raises(ValueError, match="noise_multiplier"):
        dp_gradient_inversion(np.zeros((3, 1, 8, 8), np.uint8), np.zeros(3), n=2, noise_multiplier=-1.0)


def test_train_member_model_refuses_too_few_images_for_k(pool):
    data, _ = pool
    tiny = dataclasses.replace(data)
    member = np.zeros(len(data.x_train), dtype=bool)
    member[:3] = True
    with pytest.raises(ValueError, match="too few"):
        train_member_model(CompareConfig(epochs=1).validate(), Method.parse("instahide-k4"), tiny, member, 0)
    assert torch.equal(tiny.x_train, data.x_train)
