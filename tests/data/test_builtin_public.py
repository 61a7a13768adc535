from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from instahide.data import (
    DATASETS, DIGITS_MEAN, DIGITS_STD, IMAGENET_MEAN, IMAGENET_STD, builtin_photographs, load_dataset,
    load_digits, load_public_pool, random_patches, sift_keypoint_count,
)
from instahide.data.builtin import BUILTIN_PHOTOGRAPHS

# --- digits ------------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_disjoint():
    pytest.importorskip("sklearn")
    train, test, full = load_digits("train"), load_digits("test"), load_digits("all")
    assert (len(train), len(test), len(full)) == (1438, 359, 1797)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == np.uint8
    assert train.images.max() == 255 and train.classes == [str(d) for d in range(10)]
    # stratified: every class has round(20 %) of its images in test
    counts_full, counts_test = np.bincount(full.labels), np.bincount(test.labels)
    assert np.all(counts_test == np.round(counts_full * 0.2).astype(int))
    # disjoint and complete: the split partitions the 1,797 (all distinct) images
    rows = lambda ds: {(x.tobytes(), int(y)) for x, y in zip(ds.images, ds.labels)}  # noqa: E731
    assert len(rows(full)) == 1797
    assert not rows(train) & rows(test) and rows(train) | rows(test) == rows(full)
    # deterministic, and seed-dependent
    np.testing.assert_array_equal(load_digits("test").images, test.images)
    assert not np.array_equal(load_digits("test", seed=1).images, test.images)


def test_digits_values_and_constants():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    raw = sklearn_datasets.load_digits()
    full = load_digits("all")
    np.testing.assert_array_equal(full.images[:, 0], np.rint(raw.images * 255 / 16).astype(np.uint8))
    x = load_digits("train").images / 255.0
    assert round(float(x.mean()), 4) == DIGITS_MEAN[0]
    assert round(float(x.std()), 4) == DIGITS_STD[0]
    assert load_dataset().name == "digits"  # the default needs no root


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; known datasets: digits, cifar10"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match=r"dataset 'cifar10' needs a root: pass root= or download=True$"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match=r"dataset 'folder' needs a root"):
        load_dataset("folder")
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", root=tmp_path)  # no files, no download: never fetches
    assert set(DATASETS) >= {"digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "folder", "arrays"}


def test_core_import_needs_no_optional_dependency():
    code = (
        "import sys, instahide.data as d; "
        "bad = [m for m in ('PIL', 'sklearn', 'skimage', 'torchvision') if m in sys.modules]; "
        "print(bad)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module, call",
    [
        ("sklearn.datasets", lambda: load_digits()),
        ("PIL", lambda: builtin_photographs()),
        ("skimage.feature", lambda: sift_keypoint_count(np.zeros((32, 32), np.uint8))),
    ],
)
def test_missing_optional_dependency_says_how_to_install(monkeypatch, module, call):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r'pip install "instahide\[data\]"'):
        call()


def test_no_photograph_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r'neither of which is installed: pip install "instahide\[data\]"'):
        builtin_photographs()


# --- built-in photographs ----------------------------------------------------------------------


def test_builtin_photographs():
    pytest.importorskip("PIL")
    pytest.importorskip("skimage")
    photos = builtin_photographs()
    assert len(photos) >= 10
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[0] == 3 for p in photos)
    assert all(min(p.shape[1:]) >= 256 for p in photos)  # full size
    gray = builtin_photographs(channels=1)
    assert [g.shape[1:] for g in gray] == [p.shape[1:] for p in photos] and gray[0].shape[0] == 1
    names = " ".join(rel for _, rel in BUILTIN_PHOTOGRAPHS)
    for synthetic in ("logo", "chessboard", "text", "page", "phantom"):
        assert synthetic not in names


# --- public pools ------------------------------------------------------------------------------


def _toy_photos():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (3, 40, 50), dtype=np.uint8), rng.integers(0, 256, (3, 33, 33), dtype=np.uint8)]


def test_random_patches_are_crops_and_distinct():
    photos = _toy_photos()
    out, pos = random_patches(photos, 30, (32, 32), seed=3, return_positions=True)
    assert out.shape == (30, 3, 32, 32) and out.dtype == np.uint8
    for patch, (p, top, left) in zip(out, pos):
        np.testing.assert_array_equal(patch, photos[p][:, top:top + 32, left:left + 32])
    assert len({tuple(r) for r in pos.tolist()}) == 30
    np.testing.assert_array_equal(random_patches(photos, 30, seed=3), out)
    assert not np.array_equal(random_patches(photos, 30, seed=4), out)


def test_random_patches_whole_images_and_limits():
    photos = [np.full((1, 32, 32), i, np.uint8) for i in range(5)]
    out = random_patches(photos, 5)  # every image exactly once
    assert sorted(out[:, 0, 0, 0].tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="asked for 6 distinct 32x32 patches but the photos only have 5 crop positions"):
        random_patches(photos, 6)
    with pytest.raises(ValueError, match="no photograph is at least 64x64 pixels"):
        random_patches(photos, 1, (64, 64))


def test_random_patches_resize_short_side():
    photo = np.random.default_rng(1).integers(0, 256, (3, 400, 600), dtype=np.uint8)
    out, pos = random_patches([photo], 20, resize=40, return_positions=True)
    assert out.shape == (20, 3, 32, 32)
    assert pos[:, 1].max() <= 40 - 32 and pos[:, 2].max() <= 60 - 32


def test_sift_filter_and_give_up():
    pytest.importorskip("skimage")
    flat = [np.full((3, 64, 64), 128, np.uint8)]
    assert sift_keypoint_count(flat[0][:, :32, :32]) == 0
    with pytest.raises(RuntimeError, match=r"only 0 of 3 patches have more than 5 SIFT keypoints after 50 tries"):
        random_patches(flat, 3, min_keypoints=5, max_tries=50)
    photos = builtin_photographs()
    out = random_patches(photos, 4, resize=40, min_keypoints=10, seed=0)
    assert all(sift_keypoint_count(p) > 10 for p in out)


def test_public_pool_builtin_and_cache(tmp_path):
    pytest.importorskip("skimage")
    cache = tmp_path / "pool.npz"
    pool = load_public_pool("builtin", n=64, cache=cache)
    assert pool.images.shape == (64, 3, 32, 32) and pool.labels is None and pool.classes is None
    assert (pool.mean, pool.std, pool.name) == (IMAGENET_MEAN, IMAGENET_STD, "public-builtin")
    assert cache.is_file() and not [p for p in tmp_path.iterdir() if p.name != "pool.npz"]
    with np.load(cache) as data:
        assert json.loads(str(data["params"][0]))["n"] == 64
        data_images = data["images"]
    np.testing.assert_array_equal(data_images, pool.images)
    # a hit: tamper the cached images to prove they are read back, not rebuilt
    np.savez(cache, images=np.zeros_like(pool.images), params=np.array([json.dumps(pool.meta["params"])]))
    assert load_public_pool("builtin", n=64, cache=cache).images.max() == 0
    # other parameters: rebuilt and overwritten
    other = load_public_pool("builtin", n=64, seed=1, cache=cache)
    assert other.images.max() > 0 and not np.array_equal(other.images, pool.images)
    with np.load(cache) as data:
        assert json.loads(str(data["params"][0]))["seed"] == 1
    gray = load_public_pool("builtin", n=8, channels=1)
    assert gray.images.shape == (8, 1, 32, 32)


def test_public_pool_from_arrays_and_folder(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "pool.npy", arr)
    pool = load_public_pool(tmp_path / "pool.npy", n=10)
    assert pool.name == "public-pool"
    assert {x.tobytes() for x in pool.images} == {x.transpose(2, 0, 1).tobytes() for x in arr}
    from PIL import Image

    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48 + i, 40, 3), dtype=np.uint8)).save(tmp_path / "photos" / "sub" / f"{i}.png")
    pool = load_public_pool(tmp_path / "photos", n=12, channels=1)
    assert pool.images.shape == (12, 1, 32, 32) and pool.name == "public-photos"
    with pytest.raises(FileNotFoundError, match="neither 'builtin', a folder of images, nor a .npy/.npz file"):
        load_public_pool(tmp_path / "missing.txt")


def test_public_pool_real_tiny_imagenet(shared_data):
    pytest.importorskip("skimage")
    root = shared_data / "tiny-imagenet-200-test" / "images"
    if not root.is_dir():
        pytest.skip("no Tiny-ImageNet in the shared data")
    pool = load_public_pool(root, n=10, resize=40, min_keypoints=10, seed=0)
    assert pool.images.shape == (10, 3, 32, 32) and pool.name == "public-images"
    assert all(sift_keypoint_count(p) > 10 for p in pool.images)
