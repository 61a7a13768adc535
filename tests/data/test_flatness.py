from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instahide.data import convert_channels, flatness
from instahide.data.flatness import FAST_THRESHOLD, agreement, dog_keypoint_count, fast_keep, keep_mask, sift_keep


def _textured(n: int, seed: int = 0) -> np.ndarray:
    """Blobs and edges at several scales: (n, 3, 32, 32) uint8."""
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.normal(size=(n, 3, 11, 11)), dtype=torch.float32)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False)
    x = x + 0.3 * torch.tensor(rng.normal(size=(n, 3, 32, 32)), dtype=torch.float32)
    return (128 + 40 * x).round().clamp(0, 255).to(torch.uint8).numpy()


def _flat(n: int, seed: int = 0) -> np.ndarray:
    """Constant patches and smooth ramps (sky, walls): (n, 3, 32, 32) uint8."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 32)[None, None, :] * rng.uniform(0, 60, (n, 1, 1))
    base = rng.integers(20, 200, (n, 3, 1, 1))
    return (base + ramp[:, None]).round().clip(0, 255).astype(np.uint8).repeat(32, axis=2)[:, :, :32]


def test_keeps_textured_and_drops_flat():
    textured, flat = _textured(8), _flat(8)
    assert fast_keep(textured).all()
    assert not fast_keep(flat).any()
    assert (dog_keypoint_count(flat) == 0).all()
    both = np.concatenate([textured, flat])
    np.testing.assert_array_equal(keep_mask(both, "fast"), [True] * 8 + [False] * 8)
    assert keep_mask(both, "none").all()


def test_batches_and_input_types_give_the_same_counts():
    x = np.concatenate([_textured(5, 1), _flat(2, 1)])
    whole = dog_keypoint_count(x)
    one_by_one = torch.cat([dog_keypoint_count(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(whole, one_by_one)
    torch.testing.assert_close(dog_keypoint_count(torch.from_numpy(x), batch=3), whole)
    torch.testing.assert_close(dog_keypoint_count(convert_channels(x, 1)), whole)  # luminance as the SIFT path


def test_bad_input_is_refused_clearly():
    with pytest.raises(TypeError, match=r"patches must be \(N, C, H, W\) uint8, got \(2, 3, 32, 32\) torch.float32"):
        dog_keypoint_count(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"1, 3 or 4 channels \(N, C, H, W\), got C=32"):
        dog_keypoint_count(np.zeros((2, 32, 32, 3), np.uint8))  # channels-last
    with pytest.raises(ValueError, match="at least 8x8 pixels"):
        dog_keypoint_count(np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="unknown filter 'harris'; choose one of fast, sift, none"):
        keep_mask(_flat(1), "harris")
    with pytest.raises(ValueError, match="non-empty"):
        agreement([True], [True, False])


def test_scale_space_matches_scikit_image_sift():
    """The composed matrices give SIFT's own Gaussian scale space (upsampling, blurs, subsampling)."""
    feature = pytest.importorskip("skimage.feature")
    patch = _textured(1, 3)[0]
    gray = flatness._luminance(torch.from_numpy(patch[None]))[0, 0].double()
    sift = feature.SIFT()
    sift._set_number_of_octaves(gray.shape)
    reference = sift._create_scalespace(gray.numpy())  # per octave (h, w, scales)
    ops = flatness._axis_operators(32)
    assert len(ops) == len(reference) == 3
    for rows, ref in zip(ops, reference):
        ours = torch.einsum("shk,kl,swl->hws", rows.double(), gray, rows.double())
        np.testing.assert_allclose(ours.numpy(), ref, atol=2e-5)


def test_agreement_matches_its_definition():
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.6, rng.random(200) < 0.5
    got = agreement(a, b)
    tp, fp, fn, tn = (a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()
    po = (tp + tn) / 200
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / 200 ** 2
    assert math.isclose(got["kappa"], (po - pe) / (1 - pe))
    assert math.isclose(got["precision"], tp / (tp + fp)) and math.isclose(got["recall"], tp / (tp + fn))
    metrics = pytest.importorskip("sklearn.metrics")
    assert math.isclose(got["kappa"], metrics.cohen_kappa_score(a, b))
    assert agreement(a, a)["kappa"] == 1.0


def test_agrees_with_sift_on_real_photographs(shared_data):
    """On 300 random patches of ImageNet photographs and Tiny-ImageNet images the fast filter's keep/drop
    decisions agree with SIFT's (> 10 keypoints) with Cohen's kappa above 0.6 (measured 0.83 over 5,000
    patches, 0.77-0.87 by source: docs/pools.md)."""
    pytest.importorskip("skimage")
    from instahide.data import random_patches
    from instahide.data.folders import list_image_files
    from instahide.data.public import PhotoFiles

    patches = []
    for folder, resize, files in (("imagenet-sample", 40, None), ("tiny-imagenet-200-test/images", None, 300)):
        root = shared_data / folder
        if not root.is_dir():
            pytest.skip(f"{folder} not in the shared data")
        photos = PhotoFiles(list_image_files(root)[:files], 3)
        patches.append(random_patches(photos, 150, resize=resize, seed=5))
    patches = np.concatenate(patches)
    got = agreement(fast_keep(patches), sift_keep(patches))
    assert got["kappa"] > 0.6, got
    assert got["precision"] > 0.8 and got["recall"] > 0.8, got
    assert FAST_THRESHOLD == 9  # the calibrated value the docs report
