from __future__ import annotations

import numpy as np
import pytest

from instahide.data import IMAGENET_MEAN, convert_channels, load_arrays, load_dataset, load_image_folder, to_nchw_uint8

# --- arrays ------------------------------------------------------------------------------------


def test_npz_channels_last_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 9, 3), dtype=np.uint8)
    y = np.arange(6) % 3
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    ds = load_arrays(tmp_path / "d.npz")
    np.testing.assert_array_equal(ds.images, x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.labels, y)
    assert ds.classes == ["0", "1", "2"] and ds.mean == IMAGENET_MEAN and ds.name == "d"


def test_npy_channels_first_grayscale_and_floats(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    np.testing.assert_array_equal(load_arrays(tmp_path / "a.npy").images, x)
    g = np.random.default_rng(2).random((3, 7, 7))
    np.save(tmp_path / "g.npy", g)
    ds = load_arrays(tmp_path / "g.npy")
    assert ds.images.shape == (3, 1, 7, 7) and ds.labels is None and len(ds.mean) == 1
    np.testing.assert_array_equal(ds.images[:, 0], np.rint(g * 255).astype(np.uint8))


def test_layout_override_and_ambiguity(tmp_path):
    x = np.zeros((2, 3, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"cannot tell the channel axis of shape \(2, 3, 4, 3\); pass layout="):
        to_nchw_uint8(x)
    assert to_nchw_uint8(x, layout="nhwc").shape == (2, 3, 3, 4)
    assert to_nchw_uint8(x, layout="nchw").shape == (2, 3, 4, 3)
    np.savez(tmp_path / "amb.npz", images=x)
    assert load_arrays(tmp_path / "amb.npz", layout="nchw").images.shape == (2, 3, 4, 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((1, 4, 4), 1.5), r"float images must lie in \[0, 1\], found 1\.5\.\.1\.5"),
        (np.full((1, 4, 4), -0.1), r"must lie in \[0, 1\]"),
        (np.full((1, 4, 4), np.nan), "float images contain NaN"),
        (np.full((1, 4, 4), 300, dtype=np.int32), r"integer images must lie in \[0, 255\]"),
        (np.zeros((4, 4)), r"images must be \(N, H, W\)"),
    ],
)
def test_bad_values(tmp_path, bad, message):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=message):
        load_arrays(tmp_path / "bad.npy")


def test_object_arrays_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy holds pickled \(object\) data; refusing to load it"):
        load_arrays(tmp_path / "obj.npy")
    np.savez(tmp_path / "obj.npz", images=np.array([None], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz holds pickled \(object\) data"):
        load_arrays(tmp_path / "obj.npz")


def test_missing_key_bad_labels_truncated(tmp_path):
    np.savez(tmp_path / "k.npz", pictures=np.zeros((2, 4, 4), np.uint8), labels=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"has no array 'images' \(arrays: pictures, labels\)"):
        load_arrays(tmp_path / "k.npz")
    with pytest.raises(ValueError, match=r"'labels' must be \(2,\) integers"):
        load_arrays(tmp_path / "k.npz", images_key="pictures")
    blob = (tmp_path / "k.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"t\.npz: truncated or corrupt array file"):
        load_arrays(tmp_path / "t.npz")
    np.save(tmp_path / "t.npy", np.zeros((50, 8, 8), np.uint8))
    blob = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"t\.npy: truncated or corrupt array file"):
        load_arrays(tmp_path / "t.npy")


def test_registry_arrays_split_files(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((3, 2, 2), np.uint8), labels=np.array([0, 1, 1]))
    np.savez(tmp_path / "test.npz", images=np.zeros((2, 2, 2), np.uint8), labels=np.array([1, 0]))
    assert len(load_dataset("arrays", root=tmp_path, split="test")) == 2
    assert len(load_dataset("arrays", root=tmp_path / "train.npz")) == 3


def test_convert_channels_matches_pillow():
    Image = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(3).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb.transpose(1, 2, 0)).convert("L"))
    np.testing.assert_array_equal(convert_channels(rgb, 1)[0], expected)
    assert convert_channels(rgb[:1], 3).shape == (3, 16, 16)


# --- folders -----------------------------------------------------------------------------------


def _save(path, arr):
    Image = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_class_folders(tmp_path):
    rng = np.random.default_rng(4)
    imgs = {}
    for cls in ("dog", "cat"):
        for i in range(2):
            arr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            _save(tmp_path / cls / f"{i}.png", arr)
            imgs[(cls, i)] = arr
    ds = load_image_folder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images.shape == (4, 3, 6, 5)
    np.testing.assert_array_equal(ds.images[2], imgs[("dog", 0)].transpose(2, 0, 1))
    gray = load_image_folder(tmp_path, channels=1)
    assert gray.images.shape == (4, 1, 6, 5) and len(gray.mean) == 1


def test_flat_folder_resize_and_mismatch(tmp_path):
    _save(tmp_path / "a.png", np.zeros((10, 12, 3), np.uint8))
    _save(tmp_path / "b.jpg", np.full((20, 20, 3), 200, np.uint8))
    with pytest.raises(ValueError, match=r"b\.jpg is 20x20 \(WxH\) but .*a\.png is 12x10; pass size=\(H, W\)"):
        load_image_folder(tmp_path)
    ds = load_image_folder(tmp_path, size=(8, 8))
    assert ds.images.shape == (2, 3, 8, 8) and ds.labels is None and ds.classes is None
    assert abs(int(ds.images[1].mean()) - 200) <= 2


def test_corrupt_image_is_named(tmp_path):
    pytest.importorskip("PIL")
    _save(tmp_path / "ok.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_image_folder(tmp_path)


def test_truncated_jpeg_is_named(tmp_path):
    pytest.importorskip("PIL")
    _save(tmp_path / "x.jpg", np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    blob = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "x.jpg").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cannot read image .*x\.jpg"):
        load_image_folder(tmp_path)


def test_empty_and_mixed_folders(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(ValueError, match="no images in"):
        load_image_folder(tmp_path)
    _save(tmp_path / "cls" / "a.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "loose.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"mixes class sub-folders \(cls, \.\.\.\) with loose images \(loose\.png\)"):
        load_image_folder(tmp_path)


def test_registry_folder_uses_split_subfolder(tmp_path):
    pytest.importorskip("PIL")
    for split, n in (("train", 3), ("test", 1)):
        for i in range(n):
            _save(tmp_path / split / "k" / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    assert len(load_dataset("folder", root=tmp_path)) == 3
    assert len(load_dataset("folder", root=tmp_path, split="test")) == 1


def test_real_tiny_imagenet_folder(shared_data):
    pytest.importorskip("PIL")
    root = shared_data / "tiny-imagenet-200-test" / "images"
    if not root.is_dir():
        pytest.skip("no Tiny-ImageNet in the shared data")
    ds = load_image_folder(root, size=(32, 32))
    assert ds.images.shape == (10000, 3, 32, 32) and ds.labels is None
