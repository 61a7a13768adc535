"""Carlini et al.'s attack (docs/attacks.md): each step against the ground truth of small challenges made
here (scikit-learn's digits: attack test images, train on train images; rows shuffled), plus plain
references for the pieces (AUC by counting pairs, logits pair by pair, planted clusters)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from instahide import KeyGenerator  # noqa: E402
from instahide.attacks.carlini import (CarliniConfig, PairNet, PairNetConfig, StepCache, assign_rows,  # noqa: E402
                                       carlini_attack, cluster_metrics, grow_clusters, load_pair_network,
                                       reconstruct_gd, roc_auc, save_pair_network, true_member_sets)
from instahide.attacks.carlini.attack import Solution  # noqa: E402
from instahide.attacks.carlini.reconstruct import public_mass  # noqa: E402
from instahide.attacks import oracle_decode  # noqa: E402
from instahide.challenge import make_challenge, score  # noqa: E402
from instahide.data import load_dataset, load_public_pool  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def shuffled_challenge(test, n=10, T=20, k=4, scaling="unit", pool=None, seed=0):  # noqa: N803
    enc, lab, truth = make_challenge(test.images[:n], test.labels[:n], pool, T=T, k=k, scaling=scaling,
                                     num_classes=10, generator=KeyGenerator.from_seed(seed))
    perm = np.random.default_rng(seed + 1).permutation(len(enc))
    assert not np.array_equal(perm, np.arange(len(enc)))
    truth = replace(truth, indices=truth.indices[perm], coefficients=truth.coefficients[perm])
    return enc[perm], lab[perm], truth


# -- pieces against plain references ------------------------------------------------------------------
def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=200), 1)  # ties on purpose
    y = rng.random(200) < 0.3
    pos, neg = s[y], s[~y]
    ref = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert roc_auc(s, y) == pytest.approx(ref, abs=1e-12)


def test_logit_matrix_matches_pairwise_logits():
    torch.manual_seed(0)
    net = PairNet(PairNetConfig(1, 8, 8)).eval()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        f = net.embed(x)
        mat = net.logit_matrix(f)
        loop = torch.stack([torch.stack([net(x[i:i + 1], x[j:j + 1])[0] for j in range(6)]) for i in range(6)])
    assert torch.allclose(mat, loop, atol=1e-5)
    assert torch.allclose(f.norm(dim=1), torch.ones(6), atol=1e-5)


def test_pair_network_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = PairNet(PairNetConfig(1, 8, 8, scheme={"k": 4}))
    with torch.no_grad():
        net.g[-1].weight.normal_()  # make the residual branch non-trivial
    net.eval()
    path = save_pair_network(net, tmp_path / "net.pt")
    back = load_pair_network(path)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net.logit_matrix(net.embed(x)), back.logit_matrix(back.embed(x)))
    assert back.config.scheme == {"k": 4}
    with pytest.raises(FileNotFoundError, match="no pair network"):
        load_pair_network(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an instahide Carlini pair network"):
        load_pair_network(tmp_path / "other.pt")


def test_grow_clusters_recovers_planted_clusters():
    """Planted partition: 6 groups of 12 rows, 2 classes; within-group similarity 0.8, else 0.2 noise."""
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(6), 12)
    rng.shuffle(group)
    support = np.zeros((len(group), 2), dtype=bool)
    support[np.arange(len(group)), group % 2] = True
    g = np.where(group[:, None] == group[None, :], 0.8, 0.2) + rng.normal(0, 0.05, (72, 72))
    g = (g + g.T) / 2 * (support.astype(float) @ support.T.astype(float) > 0)
    np.fill_diagonal(g, 0)
    cores, classes, _ = grow_clusters(g, support, 6, 8)
    members = np.eye(6, dtype=bool)[group]
    m = cluster_metrics(cores, members)
    assert m["purity"] == 1.0 and m["coverage"] == 1.0
    assert np.array_equal(classes, m["cluster_image"] % 2)


def test_assign_rows_uses_label_classes():
    # 4 clusters of classes 0, 0, 1, 2; row 0's label shows classes 0 and 2; row 1 only class 0 (two images)
    cls = np.array([0, 0, 1, 2])
    aff = np.array([[0.9, 0.1, 0.95, 0.3], [0.6, 0.5, 0.9, 0.9]])
    label = np.zeros((2, 3))
    label[0, [0, 2]] = [0.3, 0.2]
    label[1, 0] = 0.5
    a, c = assign_rows(aff, cls, label, 2)
    assert sorted(a[0].tolist()) == [0, 3]  # cluster 2 (class 1) is excluded despite its affinity
    assert sorted(a[1].tolist()) == [0, 1]
    assert np.allclose(c[1], [0.25, 0.25]) and np.isclose(c[0].sum(), 0.5)


def test_gd_reconstruction_matches_oracle_on_true_keys(digits):
    """Unit pixels: |e| is the mixture; with the TRUE assignment and coefficients, Carlini's gradient
    descent reaches the oracle's least-squares solution (mean SSIM within 0.05, scikit-image)."""
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    _, test = digits
    enc, lab, truth = shuffled_challenge(test, n=10, T=10, k=4, scaling="unit")
    o = oracle_decode(enc, truth.indices, truth.coefficients, 4, 10, pixel_range="unit", public_model="none")
    rec, _, _, _ = reconstruct_gd(np.abs(enc), truth.indices, truth.coefficients.astype(np.float64),
                                  public_mass(lab, 4, 4), n_clusters=10, pixel_range="unit", steps=300, lr=0.03)

    def mean_ssim(x):
        return np.mean([structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=7)
                        for a, b in zip(x, truth.private)])

    assert mean_ssim(o.recovered) > 0.9
    assert mean_ssim(rec) > mean_ssim(o.recovered) - 0.05


# -- end to end -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unit_attack(digits):
    train, test = digits
    pool = load_public_pool("builtin", n=300, size=(8, 8), channels=1, seed=0).images
    own_pool = load_public_pool("builtin", n=300, size=(8, 8), channels=1, seed=1).images
    enc, lab, truth = shuffled_challenge(test, n=10, T=20, k=4, scaling="unit", pool=pool)
    res = carlini_attack(enc, lab, n_private=10, k=4, num_private=2, attacker_images=train.images,
                         attacker_labels=train.labels, attacker_public=own_pool, scaling="unit",
                         config=CarliniConfig(train_steps=60, batch_images=48, seed=0), truth=truth)
    return enc, lab, truth, res


def test_end_to_end_unit_pixels_shuffled_rows(unit_attack):
    enc, _, truth, res = unit_attack
    m = res.metrics
    assert m["pairs"]["auc"] > 0.6  # chance is 0.5 (class-compatible pairs only)
    assert m["clusters"]["core_purity"] > 0.85 and m["clusters"]["core_coverage"] >= 0.8
    assert m["assignment_final"]["slot"] > 0.7  # share of assigned slots holding a true image
    assert res.decryption.shape == enc.shape and res.recovered.shape == (10, 1, 8, 8)
    got = score(res.decryption, truth).max_ssim
    mean_image = score(np.ascontiguousarray(np.broadcast_to(truth.private.mean(0), enc.shape)), truth).max_ssim
    magnitude = score(np.abs(enc), truth).max_ssim
    assert got > max(mean_image, magnitude) + 0.15, (got, mean_image, magnitude)


def test_reuse_network_and_reject_other_scheme(unit_attack, digits):
    train, test = digits
    enc, lab, truth, res = unit_attack
    again = carlini_attack(enc, lab, n_private=10, k=4, num_private=2, attacker_images=train.images,
                           attacker_labels=train.labels, attacker_public=train.images[:50], scaling="unit",
                           network=res.network, fit_rounds=0)
    assert again.timings["train_pair_network"] < 1.0 and again.train_log == []
    inside, lab2, _ = shuffled_challenge(test, n=10, T=4, k=4, scaling="unit")
    with pytest.raises(ValueError, match="trained for"):
        carlini_attack(inside, lab2, n_private=10, k=4, num_private=4, attacker_images=train.images,
                       attacker_labels=train.labels, scaling="unit", network=res.network)


def test_bad_inputs(digits):
    train, test = digits
    enc, lab, _ = shuffled_challenge(test, n=10, T=3, k=4, scaling="unit")
    kw = dict(n_private=10, k=4, num_private=4, attacker_images=train.images, attacker_labels=train.labels,
              scaling="unit", train_steps=1)
    with pytest.raises(ValueError, match="shape"):
        carlini_attack(enc[..., 0], lab, **kw)
    bad = enc.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        carlini_attack(bad, lab, **kw)
    with pytest.raises(ValueError, match="does not divide"):
        carlini_attack(enc[:-1], lab[:-1], **kw)
    with pytest.raises(ValueError, match="too few rows"):
        carlini_attack(enc[:10], lab[:10], **kw)
    with pytest.raises(ValueError, match="num_private"):
        carlini_attack(enc, lab, **{**kw, "num_private": 5})
    with pytest.raises(ValueError, match="no attacker images"):
        carlini_attack(enc, lab, **{**kw, "attacker_images": None})
    with pytest.raises(ValueError, match="another shape"):
        carlini_attack(enc, lab, **{**kw, "attacker_images": np.zeros((50, 1, 9, 9), np.uint8)})
    with pytest.raises(ValueError, match="too few attacker images"):
        carlini_attack(enc, lab, **{**kw, "attacker_images": train.images[:3], "attacker_labels": train.labels[:3]})
    with pytest.raises(ValueError, match="attacker_public"):
        carlini_attack(enc, lab, **{**kw, "num_private": 2})
    with pytest.raises(ValueError, match="label has"):
        carlini_attack(enc, lab[:-1], **kw)
    with pytest.raises(ValueError, match="reconstruction"):
        carlini_attack(enc, lab, **{**kw, "reconstruction": "magic"})


def test_config_presets_and_checks():
    tiny = CarliniConfig.preset("tiny", seed=3)
    assert (tiny.train_steps, tiny.width_mult, tiny.seed) == (60, 8, 3)
    assert CarliniConfig.preset("full").fit_rounds == 0 and CarliniConfig().train_steps == 600
    with pytest.raises(ValueError, match="unknown preset"):
        CarliniConfig.preset("huge")
    with pytest.raises(ValueError, match="train_steps"):
        CarliniConfig(train_steps=-1)
    with pytest.raises(ValueError, match="sign_rule"):
        CarliniConfig(sign_rule="guess")
    with pytest.raises(ValueError, match="colour_challenges"):
        CarliniConfig(colour_challenges=-1)
    cpu = CarliniConfig.preset("cpu")
    assert cpu.public_prior and cpu.fit_rounds == 0
    with pytest.raises(TypeError, match="steps_per_epoch"):
        CarliniConfig.preset("cpu", steps_per_epoch=3)


def test_truth_only_reports_and_steps_resume_from_checkpoints(unit_attack, digits, tmp_path):
    """The same attack with and without the truth makes the same decryptions (the truth only adds
    metrics); a rerun reads every step back from checkpoint_dir, and the saved steps round-trip."""
    train, _ = digits
    enc, lab, truth, res = unit_attack
    kw = dict(n_private=10, k=4, num_private=2, attacker_images=train.images, attacker_labels=train.labels,
              attacker_public=train.images[:50], scaling="unit", network=res.network, checkpoint_dir=tmp_path)
    blind = carlini_attack(enc, lab, **kw)
    assert "pairs" not in blind.metrics and "sign_rule" in blind.metrics
    assert {p.name for p in tmp_path.iterdir()} >= {"clusters.npz", "assignment.npz", "solution.npz", "summary.json"}
    saved = StepCache(tmp_path, blind.info["fingerprint"]).step("solution", Solution, lambda: 1 / 0)
    np.testing.assert_array_equal(saved.recovered, blind.recovered)
    np.testing.assert_array_equal(saved.assignment, blind.assignment)
    seen = carlini_attack(enc, lab, **kw, truth=truth)
    np.testing.assert_array_equal(seen.decryption, blind.decryption)
    assert seen.metrics["pairs"]["auc"] > 0.6 and "assignment_final" in seen.metrics
    fresh = StepCache(tmp_path, "other input").step("solution", Solution, lambda: replace(saved, info={"new": 1}))
    assert fresh.info == {"new": 1}  # another fingerprint: computed again, not read


def test_members_helper():
    idx = np.array([[0, 2, 5], [1, 1, 7]])
    m = true_member_sets(idx, 2, 3)
    assert m.tolist() == [[True, False, True], [False, True, False]]


def test_sign_prior_from_attacker_images(digits):
    """The global sign rule uses only the attacker's own images: trained on digits TRAIN images, its
    vote over 20 noisy TEST images picks +1 for them and -1 for their negatives."""
    from instahide.attacks.carlini import choose_sign, train_sign_network
    from instahide.data.scaling import scale_images

    train, test = digits
    net = train_sign_network(scale_images(torch.from_numpy(train.images), "pm1"), steps=150, seed=0)
    x = scale_images(torch.from_numpy(test.images[:20]), "pm1").numpy()
    x = x + np.random.default_rng(0).normal(0, 0.2, x.shape).astype(np.float32)
    assert choose_sign(x, net)[0] == 1
    assert choose_sign(-x, net)[0] == -1


def test_colour_correction_runs_on_attackers_own_challenge(unit_attack, digits):
    train, _ = digits
    enc, lab, truth, res = unit_attack
    own_pool = load_public_pool("builtin", n=300, size=(8, 8), channels=1, seed=1).images
    out = carlini_attack(enc, lab, n_private=10, k=4, num_private=2, attacker_images=train.images,
                         attacker_labels=train.labels, attacker_public=own_pool, scaling="unit",
                         network=res.network, colour_correction=True, colour_steps=100, colour_challenges=2,
                         truth=truth)
    assert "own_challenge" in out.metrics and out.recovered.shape == res.recovered.shape
    assert len(out.metrics["own_challenge"]) == 2  # one report per own challenge trained on
    assert out.recovered.min() >= 0.0 and out.recovered.max() <= 1.0
    assert score(out.decryption, truth).max_ssim > 0.6


def test_public_shares_have_the_coefficient_laws_squares():
    """The guessed public shares keep the label's public mass and make their squares sum to the law's
    ratio times its square (checked row by row); the ratio matches a plain rejection sampler of the
    law (|N(0, 1)| normalised, every share <= c1, the private pair >= c2)."""
    from instahide.attacks.carlini.reconstruct import estimated_keys, public_square_ratio

    rng = np.random.default_rng(0)
    z = np.abs(rng.normal(size=(400_000, 6)))
    lam = z / z.sum(1, keepdims=True)
    lam = lam[(lam.max(1) <= 0.65) & (lam[:, :2].sum(1) >= 0.3)][:, 2:]
    ref = np.mean((lam ** 2).sum(1) / lam.sum(1) ** 2)
    c = public_square_ratio(6, 2, 0.65, 0.3)
    assert c == pytest.approx(ref, abs=0.005) and 0.25 < c < 1
    label = np.array([[0.4, 0.2, 0.0], [0.0, 0.5, 0.0], [0.1, 0.0, 0.25]])
    a, coefs = np.array([[0, 1], [2, 3], [1, 0]]), np.array([[0.4, 0.2], [0.25, 0.25], [0.25, 0.1]])
    for ratio in (None, c, 0.1, 2.0):
        idx, keys = estimated_keys(a, coefs, label, 6, 2, ratio)
        want = 0.25 if ratio is None else min(max(ratio, 0.25), 1.0)
        for r in range(3):
            p = 1 - label[r].sum()
            assert keys[r, 2:].sum() == pytest.approx(p) and (keys[r, 2:] >= 0).all()
            assert np.sum(keys[r, 2:] ** 2) == pytest.approx(want * p ** 2)
            np.testing.assert_array_equal(idx[r], [*a[r], 0, 0, 0, 0])
            np.testing.assert_array_equal(keys[r, :2], coefs[r])
    assert public_square_ratio(4, 4, 0.65, 0.3) == 0.0


def test_public_sign_field_undoes_per_position_flips():
    """Per-position flips shared by the images and the public mean are undone by matching the recovered
    public mean to the attacker's OWN pool mean (a different sample of similar images)."""
    from instahide.attacks.carlini.reconstruct import public_sign_field

    rng = np.random.default_rng(0)
    pool = load_public_pool("builtin", n=400, size=(8, 8), channels=3, seed=0).images
    own = load_public_pool("builtin", n=400, size=(8, 8), channels=3, seed=1).images
    mu = (pool.astype(np.float64) / 127.5 - 1).mean(0)
    mu_att = (own.astype(np.float64) / 127.5 - 1).mean(0)
    flips = np.where(rng.random(mu.shape) < 0.5, -1.0, 1.0)
    field = public_sign_field(mu * flips, mu_att)
    assert np.mean(field * flips == 1.0) > 0.9  # the field equals the flips where the means are clear
