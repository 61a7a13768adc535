"""The module and loader twins."""
import pytest
import torch

import instahide
from instahide import InstaHide, InstaHideLoader


def test_module_encrypts_batches_with_fresh_keys():
    hide = InstaHide(k=4, num_classes=10)
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16) % 10
    a, ya = hide(x, y)
    b, _ = hide(x, y)
    assert a.shape == x.shape and ya.shape == (16, 10)
    assert not torch.equal(a, b)
    assert torch.allclose(ya.sum(1), torch.ones(16), atol=1e-6)


def test_module_with_seed_matches_encrypt_and_moves_its_pool():
    pub = torch.randn(30, 3, 8, 8)
    hide = InstaHide(k=6, public=pub, num_classes=10, seed=3)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8)
    xe, ye = hide(x, y)
    ref = instahide.encrypt(x, y, k=6, public=pub, num_classes=10, generator=instahide.KeyGenerator.from_seed(3))
    assert torch.equal(xe, ref.images) and torch.equal(ye, ref.soft_labels)
    assert "public" not in hide.state_dict()  # not persisted with the model
    hide.double()
    assert hide.public.dtype == torch.float64


def test_loader_re_encrypts_the_whole_set_every_epoch():
    x, y = torch.randn(100, 3, 8, 8), torch.arange(100) % 10
    loader = InstaHideLoader(x, y, batch_size=32, shuffle=False, k=4, seed=0)
    assert len(loader) == 4
    e1 = torch.cat([b for b, _ in loader])
    e2 = torch.cat([b for b, _ in loader])
    assert e1.shape == x.shape and loader.epoch == 2
    assert not torch.equal(e1, e2)  # one-time keys: a new encryption every epoch
    labels = torch.cat([s for _, s in loader])
    assert labels.shape == (100, 10) and torch.allclose(labels.sum(1), torch.ones(100), atol=1e-6)


def test_loader_shuffles_drops_last_and_augments():
    x, y = torch.randn(50, 1, 4, 4), torch.arange(50) % 5
    seen = []
    loader = InstaHideLoader(x, y, batch_size=16, drop_last=True, k=2, seed=1,
                             augment=lambda t: seen.append(t.shape) or t.flip(3))
    batches = list(loader)
    assert len(batches) == len(loader) == 3 and seen == [x.shape]
    assert batches[0][1].shape == (16, 5)


def test_loader_rejects_bad_input():
    with pytest.raises(ValueError, match="100 images but 99 labels"):
        InstaHideLoader(torch.randn(100, 3, 4, 4), torch.arange(99))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        InstaHideLoader(torch.randn(10, 3, 4, 4), torch.arange(10), batch_size=0)
    with pytest.raises(ValueError, match="unknown mode"):
        InstaHide(mode="x")


def test_soft_cross_entropy_matches_a_plain_computation():
    logits, t = torch.randn(5, 4), torch.softmax(torch.randn(5, 4), 1) * 0.7
    ref = sum(-(t[i] * torch.log(torch.exp(logits[i]) / torch.exp(logits[i]).sum())).sum() for i in range(5)) / 5
    assert torch.allclose(instahide.soft_cross_entropy(logits, t), ref, atol=1e-6)
    onehot = torch.nn.functional.one_hot(torch.arange(5) % 4, 4).float()
    assert torch.allclose(instahide.soft_cross_entropy(logits, onehot),
                          torch.nn.functional.cross_entropy(logits, torch.arange(5) % 4), atol=1e-6)


def test_legacy_loader_replays_legacy_encrypt():
    x, y = torch.randn(40, 3, 4, 4), torch.arange(40) % 10
    loader = InstaHideLoader(x, y, batch_size=40, shuffle=False, k=4, legacy=True, seed=11)
    xe, ye = next(iter(loader))
    ref = instahide.encrypt(x, y, k=4, legacy=True, seed=11, num_classes=10)
    assert torch.equal(xe, ref.images) and torch.equal(ye, ref.soft_labels)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(k=0), ValueError, r"k must be >= 1"),
    (dict(k=2.5), TypeError, r"k must be an integer"),
    (dict(k=4, upper=0.2), ValueError, r"infeasible bound upper=0.2"),
    (dict(k=4, upper=1.5), ValueError, r"upper \(c1\) must be <= 1"),
    (dict(k=4, num_private=2), ValueError, r"needs a public pool"),
    (dict(k=2, public=torch.randn(5, 3, 4, 4)), ValueError, r"leaves no public slot"),
    (dict(k=6, public=torch.randn(5, 3, 4, 4), dom=1.5), ValueError, r"dom \(c2\) must be in"),
    (dict(k=4, num_classes=0), ValueError, r"num_classes must be a positive integer"),
])
def test_module_and_loader_check_options_when_built(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        InstaHide(**kwargs)
    with pytest.raises(exc, match=match):
        InstaHideLoader(torch.randn(10, 3, 4, 4), torch.arange(10) % 2, **kwargs)


def test_module_label_width_is_fixed():
    for y in (torch.tensor([0, 1, 0, 1]), torch.eye(3)[[0, 1, 2, 0]]):  # batch 0 need not hold every class
        with pytest.raises(ValueError, match="InstaHide needs num_classes=... to encrypt labels"):
            InstaHide(k=2)(torch.randn(4, 3, 4, 4), y)
    hide = InstaHide(k=2, num_classes=6)
    assert hide(torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 0, 1]))[1].shape == (4, 6)
    assert hide(torch.randn(4, 3, 4, 4), torch.tensor([2, 3, 4, 5]))[1].shape == (4, 6)
    with pytest.raises(ValueError, match="labels have 5 columns but num_classes=6"):
        hide(torch.randn(4, 3, 4, 4), torch.eye(5)[:4])
    xe, none = InstaHide(k=2)(torch.randn(4, 3, 4, 4))  # no labels: no num_classes needed
    assert xe.shape == (4, 3, 4, 4) and none is None


def test_num_classes_takes_numpy_integers_as_encrypt_does_and_refuses_other_types():
    import numpy as np

    x, y = torch.randn(8, 3, 4, 4), torch.arange(8) % 3
    hide = InstaHide(k=2, num_classes=np.int64(10), seed=1)  # refused before, while encrypt took it
    assert hide.num_classes == 10 and type(hide.num_classes) is int
    assert torch.equal(hide(x, y)[1], InstaHide(k=2, num_classes=10, seed=1)(x, y)[1])
    loader = InstaHideLoader(x, y, batch_size=np.int64(4), num_classes=np.int32(5), k=2, seed=0)
    assert [tuple(b.shape) for _, b in loader] == [(4, 5), (4, 5)]
    for bad, exc in (("10", TypeError), (True, TypeError), (10.0, TypeError), (10 ** 12, ValueError)):
        with pytest.raises(exc, match="num_classes must be a positive integer"):
            InstaHide(k=2, num_classes=bad)
        with pytest.raises(exc, match="num_classes must be a positive integer"):
            InstaHideLoader(x, y, k=2, num_classes=bad)
        with pytest.raises(exc, match="num_classes must be a positive integer"):
            instahide.InstaHideDataset(x, y, k=2, num_classes=bad)


@pytest.mark.parametrize("batch_size,exc,match", [
    (True, TypeError, r"batch_size must be an integer, got True \(bool\)"),
    (4.0, TypeError, r"batch_size must be an integer, got 4.0 \(float\)"),
    ("4", TypeError, r"batch_size must be an integer"),
    (-2, ValueError, r"batch_size must be >= 1, got -2"),
])
def test_loader_refuses_a_batch_size_that_is_not_a_positive_integer(batch_size, exc, match):
    with pytest.raises(exc, match=match):  # True was taken as a batch size of 1
        InstaHideLoader(torch.randn(10, 3, 4, 4), torch.arange(10), batch_size=batch_size)


def test_loader_checks_its_labels_when_built():
    x = torch.randn(10, 3, 4, 4)
    with pytest.raises(ValueError, match=r"got a scalar \(0-d\)"):
        InstaHideLoader(x, torch.tensor(3))  # was an IndexError
    with pytest.raises(ValueError, match=r"labels go up to 1099511627776"):
        InstaHideLoader(x, torch.full((10,), 2 ** 40))  # was a 10 TB one-hot matrix per epoch
    with pytest.raises(TypeError, match=r"class-index labels must be integers"):
        InstaHideLoader(x, torch.rand(10))
