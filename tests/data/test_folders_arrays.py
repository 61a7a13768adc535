from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from instahide.data import (
    IMAGENET_MEAN, ImageDataset, convert_channels, load_arrays, load_dataset, load_image_folder, read_image,
    to_nchw_uint8,
)

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


def test_folder_dataset_name_does_not_carry_the_folder_name(tmp_path):
    root = tmp_path / "Jane Doe scans"
    _save(root / "tumour" / "0.png", np.zeros((4, 4, 3), dtype=np.uint8))
    ds = load_image_folder(root)
    assert ds.name == "folder" and "Jane" not in ds.name       # was "folder-Jane Doe scans"
    assert load_dataset("folder", root=root).name == "folder"
    assert ds.meta["source"] == str(root)                         # the path stays on this machine
    assert load_image_folder(root, name="mine").name == "mine"


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


# --- odd inputs -------------------------------------------------------------------------------

_X3 = np.zeros((3, 5, 5), np.uint8)

@pytest.mark.parametrize(
    "arrays, layout, message",
    [
        ({"images": np.zeros((5, 0, 4, 4), np.uint8)}, "nchw", r"\(5, 0, 4, 4\) have no channels or no pixels"),
        ({"images": np.zeros((5, 3, 0, 4), np.uint8)}, "nchw", r"\(5, 3, 0, 4\) have no channels or no pixels"),
        ({"images": np.zeros((5, 3, 4, 0), np.uint8)}, "nchw", r"\(5, 3, 4, 0\) have no channels or no pixels"),
        ({"images": np.zeros((0, 3, 4, 4), np.uint8)}, "nchw", r"'images' holds no images"),
        ({}, "auto", r"has no array 'images' \(arrays: none: an empty archive\)"),
        ({"images": _X3, "labels": np.int64(1)}, "auto", r"'labels' must be \(3,\) integers in .*, got \(\) int64"),
        ({"images": _X3, "labels": np.zeros(2, int)}, "auto", r"'labels' must be \(3,\) integers in .*, got \(2,\) int64"),
        ({"images": _X3, "labels": np.array([0, -1, 2])}, "auto", r"integers in \[0, 1048576\), got -1\.\.2"),
        ({"images": _X3, "labels": np.array([0, 1, 2**63], np.uint64)}, "auto", r"got 0\.\.9223372036854775808"),
    ],
)
def test_empty_and_mismatched_arrays_name_the_file(tmp_path, arrays, layout, message):
    np.savez(tmp_path / "odd.npz", **arrays)
    with pytest.raises(ValueError, match=r"odd\.npz.*" + message):
        load_arrays(tmp_path / "odd.npz", layout=layout)


@pytest.mark.parametrize("content", ["random", "truncated", "empty"])
def test_corrupt_npz_is_reported_as_such(tmp_path, content):
    np.savez(tmp_path / "ok.npz", images=np.zeros((20, 3, 8, 8), np.uint8))
    blob = (tmp_path / "ok.npz").read_bytes()
    bad = {"random": np.random.default_rng(0).bytes(400), "truncated": blob[: len(blob) // 2], "empty": b""}[content]
    (tmp_path / "x.npz").write_bytes(bad)
    with pytest.raises(ValueError, match=r"not a valid \.npz archive: .*x\.npz") as info:
        load_arrays(tmp_path / "x.npz")
    assert "pickled" not in str(info.value)


def test_bool_arrays_are_binary_images_like_pillow_mode_1(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    mask = np.random.default_rng(6).random((2, 6, 7)) < 0.5
    np.save(tmp_path / "m.npy", mask)
    expected = [np.asarray(Image.fromarray(m).convert("L")) for m in mask]  # mode "1" -> 0 / 255
    np.testing.assert_array_equal(load_arrays(tmp_path / "m.npy").images[:, 0], expected)


def test_bad_dataset_statistics_and_conversion_inputs():
    x = np.zeros((1, 1, 2, 2), np.uint8)
    nan, inf = float("nan"), float("inf")
    for mean, std in (((nan,), (1.0,)), ((0.0,), (nan,)), ((0.0,), (inf,)), ((0.0,), (0.0,))):
        with pytest.raises(ValueError, match="mean must be finite and std finite and > 0"):
            ImageDataset(x, None, None, "x", mean, std)
    with pytest.raises(ValueError, match=r"C, H, W >= 1; got \(1, 0, 2, 2\)"):
        ImageDataset(np.zeros((1, 0, 2, 2), np.uint8), None, None, "x", (), ())
    with pytest.raises(TypeError, match=r"images must be \(N, C, H, W\) or \(C, H, W\) uint8, got \(4,\)"):
        convert_channels(np.zeros(4, np.uint8), 3)
    with pytest.raises(TypeError, match="float32"):
        convert_channels(np.zeros((1, 3, 2, 2), np.float32), 1)


def _png16(path, pixels: np.ndarray) -> None:
    """A 16-bit grayscale (H, W) or RGB (H, W, 3) PNG written by hand (Pillow cannot write 16-bit RGB)."""
    h, w = pixels.shape[:2]
    big = np.ascontiguousarray(pixels, dtype=">u2")
    raw = b"".join(b"\x00" + big[r].tobytes() for r in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_16bit_pngs_match_scikit_image(tmp_path):
    pytest.importorskip("PIL")
    img_as_ubyte = pytest.importorskip("skimage.util").img_as_ubyte
    rng = np.random.default_rng(7)
    gray = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    rgb = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    _png16(tmp_path / "g.png", gray)
    _png16(tmp_path / "c.png", rgb)
    g = read_image(tmp_path / "g.png", channels=1)
    np.testing.assert_array_equal(g[0], img_as_ubyte(gray))
    assert (g == 255).mean() < 0.05  # was 99.6 % saturated
    np.testing.assert_array_equal(read_image(tmp_path / "g.png", channels=3), np.repeat(g, 3, axis=0))
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), img_as_ubyte(rgb).transpose(2, 0, 1))
    ds = load_image_folder(tmp_path, channels=1)  # the folder loader goes through the same path
    np.testing.assert_array_equal(ds.images[1, 0], img_as_ubyte(gray))


def test_palette_alpha_and_float_images(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(8)
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3].transpose(2, 0, 1))  # alpha dropped
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png", 1)[0], rgba[..., 0])
    pal = Image.fromarray(rgba[..., :3]).quantize(16)
    pal.save(tmp_path / "p.png")
    lut = np.array(pal.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), lut[np.asarray(pal)].transpose(2, 0, 1))
    f = rng.random((4, 6)).astype(np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif", 1)[0], np.rint(f * 255).astype(np.uint8))
    Image.fromarray(f * 2).save(tmp_path / "f2.tif")
    with pytest.raises(ValueError, match=r"cannot read image .*f2\.tif: .*float images must lie in \[0, 1\]"):
        read_image(tmp_path / "f2.tif", 1)
    for size in ((0, 4), (-1, 4), 32):
        with pytest.raises(ValueError, match="size must be \\(H, W\\) with positive integers"):
            read_image(tmp_path / "a.png", size=size)
