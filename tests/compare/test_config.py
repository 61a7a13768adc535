"""The comparison's methods and configuration: names parsed, bad options refused before any data."""
import numpy as np
import pytest
import torch
from torch import nn

from instahide.compare import CompareConfig, Method, dominance, group_norm, member_splits
from instahide.compare.training import build_network


@pytest.mark.parametrize("name, mode, k, cross, epsilon", [
    ("vanilla", "vanilla", 1, False, None),
    ("mixup-k4", "mixup", 4, False, None),
    ("instahide-k6", "instahide", 6, False, None),
    ("instahide-cross-k6", "instahide", 6, True, None),
    ("dp-eps3", "vanilla", 1, False, 3.0),
    ("dp-eps0.5", "vanilla", 1, False, 0.5),
    ("instahide-k4+dp-eps8", "instahide", 4, False, 8.0),
])
def test_method_names(name, mode, k, cross, epsilon):
    m = Method.parse(name)
    assert (m.mode, m.k, m.cross, m.epsilon) == (mode, k, cross, epsilon)
    assert m.dp == (epsilon is not None)
    assert m.encodes == (mode != "vanilla")


def test_the_encoding_of_a_dp_row():
    assert Method.parse("instahide-k4+dp-eps3").encoding == "instahide-k4"
    assert Method.parse("dp-eps3").encoding == "vanilla"
    assert Method.parse("mixup-k4").encoding == "mixup-k4"


@pytest.mark.parametrize("name", ["instahide", "dp", "dp-eps0", "instahide-k4+dp", "k4", "mixup-cross-k4"])
def test_bad_method_names(name):
    with pytest.raises(ValueError, match="method|epsilon"):
        Method.parse(name)


@pytest.mark.parametrize("options, message", [
    ({"methods": ("vanilla", "vanilla")}, "each method once"),
    ({"methods": ("instahide-cross-k2",)}, "public slot"),
    ({"models": 1}, "models"),
    ({"norm": "batch"}, "BatchNorm"),
    ({"norm": "layer"}, "norm"),
    ({"accountant": "gdp"}, "accountant"),
    ({"delta": 1.5}, "delta"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"challenge_images": 1}, "challenge_images"),
    ({"dataset": "cifar10"}, "root"),
    ({"model": "resnet"}, "unknown model"),
])
def test_bad_configurations_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig.make(**options).validate()


def test_norm_batch_is_allowed_without_dp_rows():
    CompareConfig.make(norm="batch", methods=("vanilla", "instahide-k4")).validate()


@pytest.mark.parametrize("models", [2, 4, 5, 8])
def test_every_image_is_in_half_of_the_models(models):
    member = member_splits(301, models, seed=3)
    counts = member.sum(0)
    assert set(counts.tolist()) <= {models // 2, (models + 1) // 2}
    assert (member.sum(1) > 301 * 0.35).all() and (member.sum(1) < 301 * 0.65).all()
    assert np.array_equal(member, member_splits(301, models, seed=3))  # the same halves for every method


def test_group_norm_replaces_every_batch_norm_and_in_place_activation():
    net = nn.Sequential(nn.Conv2d(1, 24, 3), nn.BatchNorm2d(24), nn.ReLU(inplace=True),
                        nn.Sequential(nn.Conv2d(24, 64, 3), nn.BatchNorm2d(64)))
    group_norm(net)
    norms = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert all(isinstance(m, nn.GroupNorm) for m in norms) and len(norms) == 2
    assert [m.num_groups for m in norms] == [8, 32]  # gcd(32, C): a group count that divides C
    assert not net[2].inplace
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 64, 4, 4)


def test_every_row_gets_the_same_network_but_for_the_sign_stage():
    cfg = CompareConfig().validate()
    plain = build_network(cfg, Method.parse("vanilla"), 10, 1)
    ih = build_network(cfg, Method.parse("instahide-k4"), 10, 1)
    assert [n for n, _ in ih.named_parameters()] == ["model." + n for n, _ in plain.named_parameters()]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


def test_dominance_compares_on_shared_measures_only():
    na = "n/a"
    rows = [{"method": "a", "accuracy_mean": 0.9, "gradinv_ssim": 0.2, "challenge_median_ssim": na,
             "mi_lira_auc": 0.55, "mi_lira_tpr_at_1pct_fpr": 0.02, "mi_loss_auc": 0.52},
            {"method": "b", "accuracy_mean": 0.8, "gradinv_ssim": 0.3, "challenge_median_ssim": 0.4,
             "mi_lira_auc": 0.56, "mi_lira_tpr_at_1pct_fpr": 0.02, "mi_loss_auc": 0.53},
            {"method": "c", "accuracy_mean": 0.95, "gradinv_ssim": 1.0, "challenge_median_ssim": na,
             "mi_lira_auc": 0.6, "mi_lira_tpr_at_1pct_fpr": 0.05, "mi_loss_auc": 0.6}]
    assert dominance(rows) == {"a": [], "b": ["a"], "c": []}
