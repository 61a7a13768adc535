"""instahide.metrics: SSIM against scikit-image's structural_similarity, L2, the Module twins, bad input.
Images are channels-first ``(N, C, H, W)``; scikit-image is called with ``channel_axis=0``."""
import numpy as np
import pytest
import torch

from instahide.metrics import L2, SSIM, l2, ssim

skm = pytest.importorskip("skimage.metrics")


def reference(a: np.ndarray, b: np.ndarray, data_range: float, win_size: int = 7) -> np.ndarray:
    return np.array([skm.structural_similarity(a[i], b[i], data_range=data_range, channel_axis=0,
                                               win_size=win_size) for i in range(len(a))])


def noisy_pair(shape, low, high, noise, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    a = rng.uniform(low, high, shape)
    b = np.clip(a + rng.normal(0, noise * (high - low), shape), low, high)
    return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("shape,low,high,win", [
    ((6, 3, 32, 32), -1.0, 1.0, 7),     # the challenge: pm1 pixels, data range 2
    ((6, 1, 32, 32), 0.0, 1.0, 7),
    ((5, 1, 8, 8), -1.0, 1.0, 7),       # digits: valid region 2x2
    ((4, 3, 7, 7), 0.0, 255.0, 7),      # exactly one window
    ((4, 3, 17, 29), -2.0, 3.0, 5),     # non-square, other window, odd range
    ((3, 3, 16, 16), 0.0, 1.0, 3),
])
@pytest.mark.parametrize("noise", [0.05, 0.5])
def test_matches_skimage_on_random_images(shape, low, high, win, noise):
    a, b = noisy_pair(shape, low, high, noise)
    r = high - low
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=r, win_size=win, reduction="none")
    assert ours.shape == (shape[0],) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), reference(a, b, r, win), rtol=0, atol=1e-9)
    assert float(ssim(a, b, data_range=r, win_size=win)) == pytest.approx(reference(a, b, r, win).mean(), abs=1e-9)


def test_matches_skimage_on_real_images_float32():
    from instahide.data import builtin_photographs

    photo = builtin_photographs(3)[1]  # chelsea the cat, (3, 300, 451)
    rng = np.random.default_rng(1)
    tops, lefts = rng.integers(0, 300 - 32, 8), rng.integers(0, 451 - 32, 8)
    a = np.stack([photo[:, t:t + 32, s:s + 32] for t, s in zip(tops, lefts)])
    a = (a.astype(np.float32) / 127.5 - 1)
    b = a[::-1].copy()  # unrelated real patches
    c = np.clip(a + rng.normal(0, 0.1, a.shape).astype(np.float32), -1, 1)  # noisy copies
    for other in (b, c):
        ours = ssim(torch.from_numpy(a), torch.from_numpy(other), data_range=2.0, reduction="none")
        assert ours.dtype == torch.float32
        np.testing.assert_allclose(ours.numpy(), reference(a, other, 2.0), rtol=0, atol=1e-5)


def test_uint8_input_and_identical_images():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (3, 3, 12, 12), dtype=np.uint8)
    ours = ssim(a, a, data_range=255, reduction="none")
    assert ours.dtype == torch.float32 and torch.allclose(ours, torch.ones(3))
    b = rng.integers(0, 256, (3, 3, 12, 12), dtype=np.uint8)
    np.testing.assert_allclose(ssim(a, b, data_range=255, reduction="none").numpy(), reference(a, b, 255), atol=1e-6)


def test_reductions_and_module_twin():
    a, b = noisy_pair((4, 3, 10, 10), -1, 1, 0.2, dtype=np.float32)
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    per = ssim(a, b, data_range=2.0, reduction="none")
    assert torch.allclose(ssim(a, b, data_range=2.0), per.mean())
    assert torch.allclose(ssim(a, b, data_range=2.0, reduction="sum"), per.sum())
    m = SSIM(data_range=2.0, reduction="none")
    assert torch.equal(m(a, b), per) and "data_range=2.0" in repr(m)
    assert torch.allclose(L2(reduction="mean")(a, b), l2(a, b).mean())


def test_gradients_flow():
    a, b = noisy_pair((2, 3, 9, 9), -1, 1, 0.3)
    x = torch.from_numpy(a).requires_grad_()
    (1 - ssim(x, torch.from_numpy(b), data_range=2.0)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_l2_is_rmse_per_image():
    a = torch.zeros(3, 2, 4, 5)
    b = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 2, 4, 5)
    assert torch.equal(l2(a, b), torch.tensor([0.0, 1.0, 2.0]))
    x, y = noisy_pair((4, 3, 6, 6), -1, 1, 0.3)
    expected = np.sqrt(((x - y) ** 2).reshape(4, -1).mean(axis=1))
    np.testing.assert_allclose(l2(x, y).numpy(), expected, rtol=1e-12)
    assert float(l2(x, y, reduction="mean")) == pytest.approx(expected.mean())


@pytest.mark.parametrize("a,b,kw,error,message", [
    (torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8), {}, ValueError, "shape mismatch"),
    (torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), {}, ValueError, "expected (N, C, H, W) channels first"),
    (torch.zeros(2, 1, 6, 8), torch.zeros(2, 1, 6, 8), {}, ValueError, "too small for a 7x7 window"),
    (torch.zeros(2, 32, 32, 3), torch.zeros(2, 32, 32, 3), {}, ValueError, "is channels-last (N, H, W, C)"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), {"win_size": 4}, ValueError, "odd integer >= 3"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), {"data_range": 0}, ValueError, "positive finite"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), {"reduction": "max"}, ValueError, "unknown reduction"),
    ([[0.0]], torch.zeros(2, 1, 8, 8), {}, TypeError, "must be a torch.Tensor or numpy array"),
    (torch.zeros(2, 1, 8, 8, dtype=torch.int64), torch.zeros(2, 1, 8, 8), {}, TypeError, "must be float"),
])
def test_bad_inputs_are_named(a, b, kw, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        ssim(a, b, **{"data_range": 1.0, **kw})


def test_nan_and_inf_are_refused():
    a = torch.zeros(3, 1, 8, 8)
    b = a.clone()
    b[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"b contains NaN or Inf in 1 image\(s\), first rows \[1\]"):
        ssim(a, b, data_range=1.0)
    b[1, 0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        l2(b, a)
