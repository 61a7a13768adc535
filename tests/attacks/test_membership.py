"""Membership inference: the ROC measures against scikit-learn, the statistics against plain loops,
LiRA's calibration on synthetic statistics, and both attacks on real models: about 0.5 on a model
that never saw its members, clearly above 0.5 on an overfitted one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instahide.attacks.membership import (lira_scores, logit_confidence, loss_scores, membership_attack, roc,
                                          roc_auc, tpr_at_fpr)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# -- the ROC measures ------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_and_curve_match_scikit_learn(ties):
    rng = np.random.default_rng(0)
    member = rng.random(300) < 0.4
    scores = rng.normal(size=300) + member * 0.8
    if ties:
        scores = np.round(scores, 1)
    assert roc_auc(member, scores) == pytest.approx(sklearn_metrics.roc_auc_score(member, scores), abs=1e-12)
    fpr, tpr = roc(member, scores)
    ref_fpr, ref_tpr, _ = sklearn_metrics.roc_curve(member, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-12)


def test_tpr_at_fpr_is_the_best_tpr_within_the_fpr():
    rng = np.random.default_rng(1)
    member = rng.random(500) < 0.5
    scores = rng.normal(size=500) + member
    ref_fpr, ref_tpr, _ = sklearn_metrics.roc_curve(member, scores, drop_intermediate=False)
    for target in (0.0, 0.01, 0.1, 0.5, 1.0):
        assert tpr_at_fpr(member, scores, target) == pytest.approx(ref_tpr[ref_fpr <= target + 1e-12].max())


def test_perfect_and_reversed_scores():
    member = np.array([True, True, False, False])
    assert roc_auc(member, [4, 3, 2, 1]) == 1.0 and tpr_at_fpr(member, [4, 3, 2, 1]) == 1.0
    assert roc_auc(member, [1, 2, 3, 4]) == 0.0 and tpr_at_fpr(member, [1, 2, 3, 4]) == 0.0
    assert roc_auc(member, [1, 1, 1, 1]) == 0.5


@pytest.mark.parametrize("member, scores, message", [
    ([True, True], [1.0, 2.0], "both members and non-members"),
    ([True, False], [1.0, float("nan")], "NaN"),
    ([True, False, True], [1.0, 2.0], "differ in length"),
    ([2, 0], [1.0, 2.0], "booleans"),
])
def test_bad_scores_are_refused(member, scores, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(member, scores)


# -- the statistics ---------------------------------------------------------------------------------
def test_logit_confidence_and_loss_match_a_plain_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x, y = torch.randn(20, 3, 2, 2), torch.randint(0, 5, (20,))
    phi, loss = logit_confidence(model, x, y, batch_size=7), loss_scores(model, x, y, batch_size=7)
    for i in range(20):
        p = torch.softmax(model(x[i:i + 1]).detach().double(), 1)[0]
        assert float(phi[i]) == pytest.approx(float(torch.log(p[y[i]]) - torch.log(1 - p[y[i]])), rel=1e-6, abs=1e-9)
        ce = F.cross_entropy(model(x[i:i + 1]).detach().double(), y[i:i + 1])
        assert float(loss[i]) == pytest.approx(-float(ce), rel=1e-6)


def test_statistics_refuse_bad_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        loss_scores(model, torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):
        logit_confidence(model, torch.randn(5, 1, 2, 2), torch.full((5,), 7))
    with pytest.raises(ValueError, match="NaN"):
        logit_confidence(model, torch.full((5, 1, 2, 2), float("nan")), torch.zeros(5, dtype=torch.long))


# -- LiRA on synthetic statistics -------------------------------------------------------------------
def _balanced(models, n, rng):
    member = np.zeros((models, n), dtype=bool)
    for i in range(n):
        member[rng.permutation(models)[:models // 2], i] = True
    return member


def _synthetic(effect, rng, models=4, n=2000):
    member = _balanced(models, n, rng)
    phi = rng.normal(size=n)[None] * 2 + rng.normal(size=(models, 1)) * 0.3 + rng.normal(size=(models, n))
    return member, phi + effect * member


def test_lira_is_calibrated_when_membership_changes_nothing():
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(10):
        member, phi = _synthetic(0.0, rng)
        for t in range(4):
            refs = [r for r in range(4) if r != t]
            scores, variant = lira_scores(phi[t], phi[refs], member[refs])
            assert variant == "online"
            aucs.append(roc_auc(member[t], scores.numpy()))
    assert abs(np.mean(aucs) - 0.5) < 0.02


def test_lira_finds_members_that_shift_the_statistic_and_beats_the_global_threshold_at_low_fpr():
    rng = np.random.default_rng(1)
    member, phi = _synthetic(1.5, rng)
    scores, _ = lira_scores(phi[0], phi[1:], member[1:])
    assert roc_auc(member[0], scores.numpy()) > 0.65
    # calibrating per example removes its own difficulty: more members found at 1% FPR than by one threshold
    assert tpr_at_fpr(member[0], scores.numpy()) > 1.5 * tpr_at_fpr(member[0], phi[0])


def test_lira_offline_without_in_references():
    rng = np.random.default_rng(2)
    member, phi = _synthetic(1.5, rng)
    refs_out = np.zeros((3, phi.shape[1]), dtype=bool)  # references that trained on none of the candidates
    scores, variant = lira_scores(phi[0], phi[1:] - 1.5 * member[1:], refs_out)
    assert variant == "offline"
    assert roc_auc(member[0], scores.numpy()) > 0.75


def test_lira_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r"\(R, N\)"):
        lira_scores(np.zeros(5), np.zeros((3, 4)), np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="OUT"):
        lira_scores(np.zeros(4), np.zeros((3, 4)), np.ones((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="finite"):
        lira_scores(np.full(4, np.nan), np.zeros((3, 4)), np.zeros((3, 4), dtype=bool))


# -- on real models ---------------------------------------------------------------------------------
def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return x, torch.tensor(d.target)


def _fit(x, y, seed, steps=300):
    """A small MLP trained to near-zero loss (full batch, no regularisation): it overfits."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_attacks_on_real_models_overfitted_and_never_trained_on_the_candidates():
    x, y = _digits()
    rng = np.random.default_rng(0)
    order = torch.as_tensor(rng.permutation(len(x)))
    pool, outside = order[:240], order[240:600]
    member = _balanced(4, len(pool), rng)
    xp, yp = x[pool], y[pool]
    models = [_fit(xp[torch.as_tensor(member[m])][:60], yp[torch.as_tensor(member[m])][:60], m) for m in range(4)]
    train_sets = [np.flatnonzero(member[m])[:60] for m in range(4)]
    seen = np.zeros_like(member)
    for m, idx in enumerate(train_sets):
        seen[m, idx] = True
    phi = np.stack([logit_confidence(m, xp, yp).numpy() for m in models])
    # overfitted: each target against its own members (60 seen) and non-members
    res = membership_attack(seen[0], loss_scores(models[0], xp, yp).numpy(),
                            lira_scores(phi[0], phi[1:], seen[1:])[0].numpy())
    assert res["loss"]["auc"] > 0.65 and res["lira"]["auc"] > 0.65
    # never saw them: a model trained on other images; the same "members" labels tell nothing
    stranger = _fit(x[outside[:60]], y[outside[:60]], 9)
    phi_s = logit_confidence(stranger, xp, yp).numpy()
    res = membership_attack(seen[0], loss_scores(stranger, xp, yp).numpy(),
                            lira_scores(phi_s, phi[1:], seen[1:])[0].numpy())
    assert abs(res["loss"]["auc"] - 0.5) < 0.12
    assert abs(res["lira"]["auc"] - 0.5) < 0.12
