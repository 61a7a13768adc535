"""Gradient inversion (docs/attacks.md) on tiny models and tiny batches: observed gradients against plain
autograd, one SGD step inverted exactly, label recovery, recovery of the true inputs, matching
against scikit-image's SSIM and brute-force permutations, and clear errors on bad input."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instahide.attacks.gradinv import (
    gradient_distance,
    gradient_from_update,
    invert_gradients,
    observed_gradient,
    recover_label_from_gradient,
)
from instahide.metrics import match_batches

torch.set_num_threads(1)


def tiny_net(act=nn.Sigmoid, bias_head=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), act(), nn.Conv2d(8, 8, 3, padding=1, stride=2), act(),
                         nn.Flatten(), nn.Linear(8 * 16, 10, bias=bias_head))


def bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 64, 10))


def smooth_images(b, seed=0):
    """Smooth images in [-1, 1] (8x8): blurred noise, like small natural images."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 12, 12, generator=g)
    x = F.avg_pool2d(x, 5, stride=1)  # (b, 1, 8, 8)
    return (x / x.abs().amax(dim=(1, 2, 3), keepdim=True)).clamp(-1, 1)


def onehot(labels, classes=10):
    return F.one_hot(torch.as_tensor(labels), classes).float()


# -- observed_gradient / gradient_from_update ------------------------------------------------------
def test_observed_gradient_equals_plain_autograd():
    model = bn_net()
    model.train()
    x = smooth_images(3)
    y = torch.tensor([[0.5, 0.5] + [0.0] * 8, [0.0, 1.0] + [0.0] * 8, [0.2] * 5 + [0.0] * 5])
    got = observed_gradient(model, x, y)
    # reference: the loss written out by hand, backward into .grad
    ref_model = bn_net()
    ref_model.load_state_dict(model.state_dict())
    ref_model.train()
    logits = ref_model(x)
    loss = sum(-(y[i] * torch.log_softmax(logits[i], 0)).sum() for i in range(3)) / 3
    loss.backward()
    ref = [p.grad for p in ref_model.parameters()]
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # no .grad written, BatchNorm running statistics untouched by the observation
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model[1].running_mean, torch.zeros(6))


def test_gradient_from_update_inverts_one_sgd_step():
    model = bn_net()
    model.train()
    x, y = smooth_images(4), onehot([1, 2, 3, 4])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = observed_gradient(model, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3)
    opt.zero_grad()
    F.cross_entropy(model(x), torch.tensor([1, 2, 3, 4])).backward()
    opt.step()
    after = model.state_dict()
    got = gradient_from_update(before, after, 0.05, model=model, weight_decay=1e-3)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # Flower's convention: lists of numpy arrays in state_dict order
    got_list = gradient_from_update([v.numpy() for v in before.values()], [v.numpy() for v in after.values()],
                                    0.05, model=model, weight_decay=1e-3)
    for a, b in zip(got_list, got):
        torch.testing.assert_close(a, b)
    # without the model: BatchNorm buffers are left out, parameters kept in order
    got_plain = gradient_from_update(before, after, 0.05, weight_decay=1e-3)
    assert [t.shape for t in got_plain] == [p.shape for p in model.parameters()]


def test_gradient_from_update_errors():
    model = tiny_net()
    s = model.state_dict()
    with pytest.raises(ValueError, match="lr must be"):
        gradient_from_update(s, s, 0.0)
    with pytest.raises(ValueError, match="pass model="):
        gradient_from_update(list(s.values()), list(s.values()), 0.1)
    bad = dict(s)
    bad["5.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        gradient_from_update(s, bad, 0.1)
    nan = dict(s)
    nan["0.bias"] = torch.full_like(s["0.bias"], float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        gradient_from_update(s, nan, 0.1)


# -- label recovery --------------------------------------------------------------------------------
@pytest.mark.parametrize("bias_head", [True, False])
def test_label_from_last_layer_is_exact_for_batch_one(bias_head):
    model = tiny_net(act=nn.ReLU, bias_head=bias_head)
    x = smooth_images(10, seed=3)
    for c in range(10):
        g = observed_gradient(model, x[c:c + 1], onehot([c]))
        assert recover_label_from_gradient(model, g) == c
        res = invert_gradients(model, g, batch_size=1, input_shape=(1, 8, 8), steps=1)
        assert res.label_source == ("bias" if bias_head else "weight-rows")
        torch.testing.assert_close(res.labels, onehot([c]))


# -- the inversion ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_inversion_recovers_the_inputs(batch):
    model = tiny_net()
    x = smooth_images(batch, seed=1)
    y = onehot([3, 7][:batch])
    g = observed_gradient(model, x, y)
    res = invert_gradients(model, g, batch_size=batch, input_shape=(1, 8, 8), labels=y, steps=400, lr=0.1,
                           tv_weight=1e-3, restarts=2, seed=0)
    m = match_batches(res.images, x, data_range=2.0, win_size=3)
    start = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    m0 = match_batches(start, x, data_range=2.0, win_size=3)
    assert m.mean_ssim > 0.9 > 0.2 > m0.mean_ssim
    assert m.mse.max() < 0.05 * x.pow(2).mean().item()  # error under 5% of the signal's power
    assert res.gradient_distance < 1e-2
    assert len(res.loss_history) == 400 and len(res.restart_losses) == 2
    assert res.best_restart == int(np.argmin(res.restart_losses))
    assert res.loss_history[-1] < 0.05 * res.loss_history[0]


def test_inversion_recovers_labels_jointly():
    model = tiny_net()
    x = smooth_images(1, seed=2)
    y = torch.zeros(1, 10)
    y[0, 2], y[0, 6] = 0.7, 0.3  # a Mixup/InstaHide-style soft label
    g = observed_gradient(model, x, y)
    res = invert_gradients(model, g, batch_size=1, input_shape=(1, 8, 8), labels="joint", steps=500,
                           tv_weight=1e-3, seed=0)
    assert res.label_source == "joint"
    # labels=None sees two negative entries in the bias gradient (not one-hot): the label is tied to
    # the input, t = s * p(x') - dL/db, which is exact once the input is
    auto = invert_gradients(model, g, batch_size=1, input_shape=(1, 8, 8), steps=500, tv_weight=1e-3, seed=0)
    assert auto.label_source == "bias-implied"
    torch.testing.assert_close(auto.labels, y, atol=1e-3, rtol=0)
    assert match_batches(auto.images, x, data_range=2.0, win_size=3).mean_ssim > 0.9
    with pytest.raises(ValueError, match="bias-implied"):
        invert_gradients(model, g, batch_size=2, input_shape=(1, 8, 8), labels="bias-implied", steps=1)
    assert res.labels.argmax().item() == 2
    torch.testing.assert_close(res.labels, y, atol=0.1, rtol=0)
    assert match_batches(res.images, x, data_range=2.0, win_size=3).mean_ssim > 0.8


def test_inversion_with_batchnorm_in_train_mode_restores_buffers():
    model = bn_net()
    model.train()
    x = smooth_images(1, seed=4)
    g = observed_gradient(model, x, onehot([5]))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    res = invert_gradients(model, g, batch_size=1, input_shape=(1, 8, 8), steps=30, bounds=(-1, 1))
    assert res.images.shape == (1, 1, 8, 8) and res.images.abs().max() <= 1
    assert res.labels.argmax().item() == 5
    for k, v in model.named_buffers():
        torch.testing.assert_close(v, buffers[k])


def test_inversion_errors():
    model = tiny_net()
    x = smooth_images(1)
    g = observed_gradient(model, x, onehot([1]))
    kw = dict(batch_size=1, input_shape=(1, 8, 8), steps=2)
    with pytest.raises(ValueError, match="gradient tensors but the model has"):
        invert_gradients(model, g[:-1], **kw)
    with pytest.raises(ValueError, match="has shape"):
        invert_gradients(model, [g[0].flatten()] + g[1:], **kw)
    with pytest.raises(ValueError, match="NaN"):
        invert_gradients(model, [torch.full_like(g[0], float("nan"))] + g[1:], **kw)
    with pytest.raises(ValueError, match="zero everywhere"):
        invert_gradients(model, [torch.zeros_like(t) for t in g], **kw)
    with pytest.raises(ValueError, match="input_shape"):
        invert_gradients(model, g, batch_size=1, input_shape=(8, 8), steps=2)
    with pytest.raises(ValueError, match="labels shape"):
        invert_gradients(model, g, labels=torch.zeros(2, 10), **kw)
    with pytest.raises(ValueError, match="batch_size"):
        invert_gradients(model, g, batch_size=0, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="bounds"):
        invert_gradients(model, g, bounds=(1, -1), **kw)
    with pytest.raises(ValueError, match="expected 10 classes|10 outputs"):
        invert_gradients(model, g, num_classes=7, **kw)
    with pytest.raises(ValueError, match=r"Invalid inputs shape"):
        observed_gradient(model, x[0], onehot([1]))
    with pytest.raises(ValueError, match="NaN"):
        observed_gradient(model, x * float("nan"), onehot([1]))
    with pytest.raises(ValueError, match="soft_labels shape"):
        observed_gradient(model, x, onehot([1, 2]))


def test_gradient_distance_cosine_properties():
    g = [torch.randn(3, 4), torch.randn(5)]
    assert float(gradient_distance(g, g)) == pytest.approx(0.0, abs=1e-6)
    assert float(gradient_distance([2 * t for t in g], g)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert float(gradient_distance([-t for t in g], g)) == pytest.approx(4.0, abs=1e-5)  # 2 tensors x 2
    assert float(gradient_distance(g, g, "l2")) == 0.0
    with pytest.raises(ValueError, match="unknown distance"):
        gradient_distance(g, g, "nope")


# -- scoring ---------------------------------------------------------------------------------------
def test_match_batches_against_skimage_and_brute_force():
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 3, 16, 16, generator=g)
    perm = [2, 0, 3, 1]
    rec = (truth[perm] + 0.15 * torch.randn(4, 3, 16, 16, generator=g)).clamp(0, 1)
    m = match_batches(rec, truth, data_range=1.0)
    assert m.order.tolist() == perm
    for i in range(4):
        ref = skm.structural_similarity(rec[i].numpy(), truth[perm[i]].numpy(), data_range=1.0, channel_axis=0)
        assert m.ssim[i] == pytest.approx(ref, abs=1e-5)
    # the Hungarian assignment is the best over all permutations; greedy is never better
    sim = np.array([[skm.structural_similarity(rec[i].numpy(), truth[j].numpy(), data_range=1.0, channel_axis=0)
                     for j in range(4)] for i in range(4)])
    best = max(sum(sim[i, p[i]] for i in range(4)) for p in itertools.permutations(range(4)))
    assert m.ssim.sum() == pytest.approx(best, abs=1e-5)
    greedy = match_batches(rec, truth, data_range=1.0, method="greedy")
    assert greedy.method == "greedy" and greedy.ssim.sum() <= best + 1e-9
    with pytest.raises(ValueError, match="differ in shape"):
        match_batches(rec[:2], truth, data_range=1.0)
