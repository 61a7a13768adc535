"""instahide.metrics.identify: rank-1 identification and the linear classifier, against plain loops
(numpy's corrcoef, scikit-image's SSIM, scikit-learn's logistic regression) and on properties (perfect
recovery, random images, answers that carry no information, brightness and contrast)."""
import numpy as np
import pytest
import torch

from instahide.data import load_dataset
from instahide.metrics import fit_linear_classifier, rank1, rank1_identification, similarity_matrix, standardise


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", split="test")
    x = ds.images.astype(np.float64) / 127.5 - 1.0
    keep = np.unique(x.reshape(len(x), -1), axis=0, return_index=True)[1]  # no exact duplicates
    return x[np.sort(keep)], ds.labels[np.sort(keep)]


def loop_similarity(a, b, kind, data_range=2.0):
    out = np.empty((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            if kind == "ncc":
                out[i, j] = np.corrcoef(a[i].ravel(), b[j].ravel())[0, 1]
            elif kind == "l2":
                out[i, j] = -np.sqrt(np.mean((a[i] - b[j]) ** 2))
            else:
                from skimage.metrics import structural_similarity
                out[i, j] = structural_similarity(a[i], b[j], data_range=data_range, channel_axis=0, win_size=7)
    return out


def loop_rank(sim, targets):
    """Non-target candidates at least as similar as the best target, one query at a time."""
    ranks = []
    for i, row in enumerate(sim):
        t = set(np.atleast_1d(targets[i]).tolist())
        best = max(row[j] for j in t)
        ranks.append(sum(1 for j in range(len(row)) if j not in t and row[j] >= best))
    return np.array(ranks)


@pytest.mark.parametrize("kind", ["ncc", "l2", "ssim"])
def test_similarity_and_rank_match_plain_loops(kind, digits):
    if kind == "ssim":
        pytest.importorskip("skimage")
    x, _ = digits
    rng = np.random.default_rng(1)
    gallery = x[:40]
    targets = rng.integers(0, 40, size=(25, 2))
    rec = np.clip(gallery[targets[:, 0]] + rng.normal(0, 0.6, (25, 1, 8, 8)), -1, 1)
    ref = loop_similarity(rec, gallery, kind)
    got = similarity_matrix(rec, gallery, similarity=kind, data_range=2.0)
    assert np.allclose(got, ref, atol=1e-9)
    res = rank1_identification(rec, gallery, targets, similarity=kind, data_range=2.0)
    assert np.array_equal(res.rank, loop_rank(ref, targets))
    assert res.rate == pytest.approx(np.mean(loop_rank(ref, targets) == 0))
    distinct = np.array([len(set(t)) for t in targets.tolist()])
    assert res.chance == pytest.approx(np.mean(distinct) / 40)
    q = np.bincount(ref.argmax(1), minlength=40) / 25  # the shuffled baseline, by its definition
    assert res.shuffled == pytest.approx(np.mean([sum(q[j] for j in set(t)) for t in targets.tolist()]))


def test_perfect_recovery_is_identified_and_random_images_are_at_chance(digits):
    x, _ = digits
    gallery = x[:300]
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 300, size=600)
    assert rank1_identification(gallery[targets], gallery, targets).rate == 1.0
    # a brighter, lower-contrast copy is the same picture: normalised correlation still identifies it
    assert rank1_identification(0.3 * gallery[targets] - 0.5, gallery, targets).rate == 1.0
    noise = rng.uniform(-1, 1, (600, 1, 8, 8))
    for kind in ("ncc", "l2"):
        res = rank1_identification(noise, gallery, targets, similarity=kind)
        assert res.rate < 0.02 and res.above_chance < 0.02  # chance is 1/300


def test_answers_that_ignore_the_query_are_at_chance_by_the_shuffled_baseline(digits):
    """Always answering candidate 0 hits every query whose targets include 0: far above 1/K, and
    exactly at the shuffled baseline."""
    x, _ = digits
    gallery = x[:100]
    targets = np.stack([np.arange(40) % 4, np.arange(40) % 7], 1)  # a small private set, 0 often
    res = rank1_identification(np.repeat(gallery[:1], 40, 0), gallery, targets)
    assert res.rate > 10 * res.chance
    assert res.shuffled == pytest.approx(res.rate) and res.above_chance == pytest.approx(0.0)


def test_ties_with_a_distractor_are_no_hit():
    scores = np.array([[1.0, 1.0, 0.0], [0.2, 0.9, 0.1]])
    res = rank1(scores, np.array([0, 1]))
    assert res.hit.tolist() == [False, True] and res.rank.tolist() == [1, 0]


def test_classifier_reads_digits_and_agrees_with_scikit_learn(digits):
    sklm = pytest.importorskip("sklearn.linear_model")
    tr = load_dataset("digits", split="train")
    xtr = tr.images.astype(np.float64) / 127.5 - 1.0
    x, y = digits
    clf = fit_linear_classifier(xtr, tr.labels, 10)
    pred = clf(x).argmax(1)
    assert np.mean(pred == y) > 0.9
    # the same objective: mean cross-entropy + 1e-2 |W|^2 == sklearn's C * sum CE + |W|^2 / 2
    ref = sklm.LogisticRegression(C=1 / (2 * 1e-2 * len(xtr)), max_iter=2000).fit(
        standardise(torch.from_numpy(xtr)).numpy(), tr.labels)
    agree = np.mean(ref.predict(standardise(torch.from_numpy(x)).numpy()) == pred)
    assert agree > 0.97
    # brightness and contrast do not change what it reads
    assert np.array_equal(clf(0.4 * x + 0.2).argmax(1), pred)


def test_bad_input_is_a_clear_error(digits):
    x, y = digits
    with pytest.raises(ValueError, match="unknown similarity"):
        similarity_matrix(x[:2], x[:5], similarity="cosine")
    with pytest.raises(ValueError, match="needs data_range"):
        similarity_matrix(x[:2], x[:5], similarity="ssim")
    with pytest.raises(ValueError, match="gallery"):
        similarity_matrix(x[:2], x[:5, :, :6], similarity="ncc")
    with pytest.raises(ValueError, match="targets must index"):
        rank1_identification(x[:2], x[:5], [0, 5])
    with pytest.raises(ValueError, match="m = 2 queries"):
        rank1_identification(x[:2], x[:5], [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        rank1_identification(np.full((2, 1, 8, 8), np.nan), x[:5], [0, 1])
    with pytest.raises(ValueError, match="labels has"):
        fit_linear_classifier(x[:10], y[:9])
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_linear_classifier(x[:10], np.zeros(10, dtype=int))
