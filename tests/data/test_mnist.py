from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest

from instahide.data import FASHION_MNIST_MEAN, MNIST_MEAN, MNIST_STD, load_dataset, load_mnist
from instahide.data.mnist import read_idx


def _write_split(folder, idx_writer, split, n, compress, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    idx_writer(folder / f"{prefix}-images-idx3-ubyte", images, compress)
    idx_writer(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_roundtrip(tmp_path, idx_writer, compress):
    x, y = _write_split(tmp_path, idx_writer, "train", 12, compress)
    xt, yt = _write_split(tmp_path, idx_writer, "test", 5, compress, seed=1)
    ds = load_mnist(tmp_path)
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[:, 0], x)
    np.testing.assert_array_equal(ds.labels, y)
    assert (ds.mean, ds.std, ds.classes[5]) == (MNIST_MEAN, MNIST_STD, "5")
    test = load_mnist(tmp_path, "test")
    np.testing.assert_array_equal(test.images[:, 0], xt)
    np.testing.assert_array_equal(test.labels, yt)


def test_fashion_mnist_in_its_subfolder(tmp_path, idx_writer):
    (tmp_path / "fashion-mnist").mkdir()
    _write_split(tmp_path / "fashion-mnist", idx_writer, "test", 4, True)
    ds = load_dataset("fashion-mnist", root=tmp_path, split="test")
    assert ds.name == "fashion-mnist" and ds.classes[9] == "Ankle boot" and ds.mean == FASHION_MNIST_MEAN


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_file_names_file_and_byte_counts(tmp_path, idx_writer, compress):
    _write_split(tmp_path, idx_writer, "train", 10, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    blob = path.read_bytes()
    if compress:
        path.unlink()
        path = tmp_path / "train-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(blob[: len(blob) // 2]))
    else:
        path.write_bytes(blob[: len(blob) // 2])
    half = len(blob) // 2 - 16
    with pytest.raises(
        ValueError,
        match=rf"train-images-idx3-ubyte.*truncated idx file: header says shape \(10, 28, 28\) = 7840 bytes of data, found {half} bytes",
    ):
        load_mnist(tmp_path)


def test_truncated_gzip_stream(tmp_path, idx_writer):
    _write_split(tmp_path, idx_writer, "train", 10, compress=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: truncated or corrupt gzip file"):
        load_mnist(tmp_path)


def test_wrong_magic_and_count_mismatch(tmp_path, idx_writer):
    x, y = _write_split(tmp_path, idx_writer, "train", 6, compress=False)
    # labels file holding a 3-d array: magic 0x00000803 where 0x00000801 is expected
    idx_writer(tmp_path / "train-labels-idx1-ubyte", x, compress=False)
    with pytest.raises(ValueError, match=r"magic number 0x00000803 means 3 dimensions, expected 0x00000801"):
        load_mnist(tmp_path)
    idx_writer(tmp_path / "train-labels-idx1-ubyte", y[:5], compress=False)
    with pytest.raises(ValueError, match="has 6 images but .* has 5 labels"):
        load_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not a uint8 idx file"):
        read_idx(tmp_path / "train-labels-idx1-ubyte")


def test_missing_files(tmp_path, idx_writer):
    with pytest.raises(FileNotFoundError, match=r"no train-images-idx3-ubyte\[\.gz\] in"):
        load_mnist(tmp_path)
    idx_writer(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), False)
    with pytest.raises(FileNotFoundError, match=r"train-labels-idx1-ubyte\[\.gz\] is missing"):
        load_mnist(tmp_path)


def test_real_mnist(mnist_root):
    train = load_mnist(mnist_root)
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.labels[0] == 5
    assert np.bincount(train.labels).sum() == 60000 and len(np.bincount(train.labels)) == 10
    np.testing.assert_allclose(train.images.mean() / 255, MNIST_MEAN[0], atol=1e-3)
    np.testing.assert_allclose(train.images.std() / 255, MNIST_STD[0], atol=1e-3)
    test = load_dataset("mnist", root=mnist_root.parent, split="test")
    assert test.images.shape == (10000, 1, 28, 28) and test.labels[0] == 7


def _header(dims, code=0x08):
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    "blob, message",
    [
        # sizes whose product wraps a 64-bit integer (to 0 here, equal to the 0 bytes present)
        (_header([65536] * 4), r"header says shape \(65536, 65536, 65536, 65536\) = 18446744073709551616 bytes"),
        (_header([2**32 - 1] * 3), r"= 79228162458924105385300197375 bytes, more than"),
        (_header([4_000_000_000, 28, 28]) + bytes(100), r"= 3136000000000 bytes, more than"),
        (_header([10, 28, 28]) + bytes(100), r"truncated idx file: .* = 7840 bytes of data, found 100 bytes"),
        (_header([10, 28, 28])[:9], r"truncated idx header \(9 of 16 bytes\)"),
        (_header([10, 28, 28], code=0x0D), r"not a uint8 idx file \(magic number 0x00000d03\)"),
        (b"\x00\x00", r"2 bytes, too short for an idx header"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_bad_headers_name_the_file(tmp_path, blob, message, compress):
    path = tmp_path / ("odd-idx3-ubyte.gz" if compress else "odd-idx3-ubyte")
    path.write_bytes(gzip.compress(blob) if compress else blob)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": .*" + message):
        read_idx(path)


def test_gzip_with_trailing_data_is_read_only_as_far_as_the_header(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_header([3]) + bytes(3) + bytes(20_000_000)))
    with pytest.raises(ValueError, match=r"x-idx1-ubyte\.gz: trailing bytes in idx file: .* = 3 bytes"):
        read_idx(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_idx(tmp_path)


def test_zero_images_is_an_error(tmp_path, idx_writer):
    _write_split(tmp_path, idx_writer, "train", 0, compress=False)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte holds no images"):
        load_mnist(tmp_path)
