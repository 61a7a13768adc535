"""Batched crop and flip against per-image loop references."""
import pytest
import torch
import torch.nn.functional as F

from instahide.data.augment import Augment, random_crop, random_flip


def crop_loop(x, offsets, padding, fill):
    """Per-image reference: pad one image with its per-channel fill, slice at its offset."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        for ch in range(c):
            padded = F.pad(x[i, ch], (padding,) * 4, value=float(fill[ch]))
            dy, dx = offsets[i].tolist()
            out[i, ch] = padded[dy:dy + h, dx:dx + w]
    return out


def test_crop_matches_per_image_loop_with_per_channel_fill():
    x = torch.randn(16, 3, 10, 12)
    fill = (-2.4, -2.0, -1.7)  # -mean / std of black for CIFAR-10
    out, offsets = random_crop(x, padding=3, fill=fill, generator=torch.Generator().manual_seed(0),
                               return_offsets=True)
    assert out.shape == x.shape and offsets.shape == (16, 2) and offsets.dtype == torch.long
    assert offsets.min() >= 0 and offsets.max() <= 6
    assert torch.equal(out, crop_loop(x, offsets, 3, fill))


def test_crop_scalar_fill_and_centre_offset_is_identity():
    x = torch.randn(200, 2, 5, 5)
    out, offsets = random_crop(x, padding=2, fill=0.5, generator=torch.Generator().manual_seed(1),
                               return_offsets=True)
    assert torch.equal(out, crop_loop(x, offsets, 2, [0.5, 0.5]))
    centre = (offsets == 2).all(1)
    assert centre.any() and torch.equal(out[centre], x[centre])


def test_each_image_gets_independent_uniform_offsets():
    x = torch.zeros(4000, 1, 4, 4)
    _, offsets = random_crop(x, padding=4, generator=torch.Generator().manual_seed(2), return_offsets=True)
    assert len({tuple(o) for o in offsets.tolist()}) > 70  # of the 81 (dy, dx) pairs
    for axis in range(2):
        counts = torch.bincount(offsets[:, axis], minlength=9)
        assert counts.numel() == 9 and counts.min() > 350  # about 444 each
    assert abs(torch.corrcoef(offsets.T.float())[0, 1]) < 0.1  # dy and dx independent


def test_flip_matches_per_image_loop():
    x = torch.randn(32, 3, 6, 7)
    out, flipped = random_flip(x, generator=torch.Generator().manual_seed(3), return_mask=True)
    assert flipped.dtype == torch.bool and 0 < flipped.sum() < 32
    ref = torch.stack([img.flip(-1) if f else img for img, f in zip(x, flipped.tolist())])
    assert torch.equal(out, ref)
    assert random_flip(x, p=1.0).equal(x.flip(-1))


def test_disabled_augmentations_are_identities():
    x = torch.randn(8, 3, 8, 8)
    assert random_crop(x, padding=0) is x
    assert random_flip(x, p=0.0) is x
    assert Augment(padding=0, flip=False)(x) is x
    crop_only = Augment(padding=2, flip=False, generator=torch.Generator().manual_seed(4))
    assert torch.equal(crop_only(x), random_crop(x, 2, generator=torch.Generator().manual_seed(4)))
    flip_only = Augment(padding=0, flip=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(flip_only(x), random_flip(x, generator=torch.Generator().manual_seed(5)))


def test_augment_is_crop_then_flip_and_reproducible():
    x = torch.randn(64, 3, 8, 8)
    fill = torch.tensor([-1.0, 0.0, 1.0])
    g = torch.Generator().manual_seed(6)
    ref = random_flip(random_crop(x, 4, fill, generator=g), generator=g)
    aug = Augment(padding=4, fill=fill)
    assert torch.equal(aug(x, generator=torch.Generator().manual_seed(6)), ref)
    seeded = Augment(padding=4, fill=fill, generator=torch.Generator().manual_seed(6))
    assert torch.equal(seeded(x), ref)
    assert not torch.equal(seeded(x), ref)  # the generator advances: fresh draws next call
    assert not torch.equal(aug(x, generator=torch.Generator().manual_seed(7)), ref)
    assert "padding=4" in repr(aug)


def test_float16_and_integer_images():
    x = torch.randn(8, 3, 8, 8).half()
    out, offsets = random_crop(x, 2, fill=(-1.5, 0.25, 2.0), generator=torch.Generator().manual_seed(8),
                               return_offsets=True)
    assert out.dtype == torch.float16
    assert torch.equal(out, crop_loop(x, offsets, 2, (-1.5, 0.25, 2.0)))
    assert Augment()(x).dtype == torch.float16
    u8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out, offsets = random_crop(u8, 4, generator=torch.Generator().manual_seed(9), return_offsets=True)
    assert out.dtype == torch.uint8 and torch.equal(out, crop_loop(u8, offsets, 4, (0, 0, 0)))


def test_gradients_flow_through_crop_and_flip():
    x = torch.randn(4, 2, 6, 6, requires_grad=True)
    Augment(padding=2)(x).sum().backward()
    assert x.grad is not None and x.grad.sum() > 0


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"Invalid x shape, we expect \(N, C, H, W\). Got: \(3, 8, 8\)"):
        random_crop(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="Invalid x shape"):
        random_flip(torch.randn(8))
    with pytest.raises(ValueError, match="Invalid x shape"):
        Augment()(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="fill has 2 values for 3 channels"):
        random_crop(torch.randn(1, 3, 8, 8), fill=(0.0, 1.0))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        random_crop(torch.randn(1, 3, 8, 8), padding=-1)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        Augment(padding=-2)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        random_flip(torch.randn(1, 3, 8, 8), p=1.5)
