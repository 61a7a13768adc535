from __future__ import annotations

import tarfile

import numpy as np
import pytest

from instahide.data import (
    CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, UntrustedPickleError, load_cifar10, load_cifar100,
    load_dataset,
)


def _expected(written, names):
    data = np.concatenate([written[n][0] for n in names]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([written[n][1] for n in names])
    return data, labels


def _tar(folder, inner, archive):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / inner, arcname=inner)
    return archive


@pytest.mark.parametrize("which", ["folder", "parent", "archive", "folder-with-archive"])
def test_cifar10_reads_every_root_form(tmp_path, cifar10_writer, which):
    written = cifar10_writer(tmp_path / "src", rows=20)
    if which == "folder":
        root = tmp_path / "src" / "cifar-10-batches-py"
    elif which == "parent":
        root = tmp_path / "src"
    else:
        (tmp_path / "dl").mkdir()
        root = _tar(tmp_path / "src", "cifar-10-batches-py", tmp_path / "dl" / "cifar-10-python.tar.gz")
        if which == "folder-with-archive":
            root = root.parent
    train = load_cifar10(root)
    x, y = _expected(written, [f"data_batch_{i}" for i in range(1, 6)])
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images, x)
    np.testing.assert_array_equal(train.labels, y)
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    assert (train.mean, train.std, train.name) == (CIFAR10_MEAN, CIFAR10_STD, "cifar10")
    test = load_cifar10(root, split="test")
    np.testing.assert_array_equal(test.images, written["test_batch"][0].reshape(-1, 3, 32, 32))


def test_channel_planes_are_rgb(tmp_path, cifar10_writer):
    written = cifar10_writer(tmp_path, rows=3)
    row = written["test_batch"][0][1]
    img = load_cifar10(tmp_path, "test").images[1]
    np.testing.assert_array_equal(img[0].ravel(), row[:1024])  # R plane first
    np.testing.assert_array_equal(img[2].ravel(), row[2048:])  # B plane last


def test_cifar100_fine_and_coarse(tmp_path, cifar100_writer):
    written = cifar100_writer(tmp_path)
    fine = load_cifar100(tmp_path)
    np.testing.assert_array_equal(fine.images, written["train"][0].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(fine.labels, written["train"][1])
    assert len(fine.classes) == 100 and fine.mean == CIFAR100_MEAN
    coarse = load_cifar100(_tar(tmp_path, "cifar-100-python", tmp_path / "c100.tar.gz"), "test", "coarse")
    np.testing.assert_array_equal(coarse.labels, written["test"][2])
    assert len(coarse.classes) == 20
    with pytest.raises(ValueError, match="label_mode must be 'fine' or 'coarse'"):
        load_cifar100(tmp_path, label_mode="medium")


def test_missing_batch_file_is_named(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3 is missing"):
        load_cifar10(tmp_path)


def test_missing_member_in_archive_is_named(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path / "src")
    (tmp_path / "src" / "cifar-10-batches-py" / "test_batch").unlink()
    archive = _tar(tmp_path / "src", "cifar-10-batches-py", tmp_path / "c.tar.gz")
    with pytest.raises(FileNotFoundError, match="has no member cifar-10-batches-py/test_batch"):
        load_cifar10(archive, "test")


def test_no_cifar_anywhere(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cifar10 files in"):
        load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nope")


def test_truncated_batch_names_the_file(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="data_batch_2: truncated or corrupt pickle"):
        load_cifar10(tmp_path)


def test_truncated_archive_is_a_clear_error(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path / "src", rows=200)
    archive = _tar(tmp_path / "src", "cifar-10-batches-py", tmp_path / "c.tar.gz")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"c\.tar\.gz.*(truncated or corrupt)"):
        load_cifar10(archive)


def test_malicious_batch_is_refused(tmp_path, cifar10_writer):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    cifar10_writer(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(UntrustedPickleError, match="system' is not allowed in a CIFAR batch file"):
        load_cifar10(tmp_path, "test")
    assert not (tmp_path / "pwned").exists()


def test_validation_errors(tmp_path, cifar10_writer, py2_pickle):
    cifar10_writer(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}
    path.write_bytes(py2_pickle(bad))
    with pytest.raises(ValueError, match=r"test_batch: 4 images but labels of shape \(3,\)"):
        load_cifar10(tmp_path, "test")
    bad = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}
    path.write_bytes(py2_pickle(bad))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), found 0\.\.10"):
        load_cifar10(tmp_path, "test")
    bad = {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}
    path.write_bytes(py2_pickle(bad))
    with pytest.raises(ValueError, match=r"'data' must be a \(N, 3072\) uint8 array"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_cifar10(tmp_path, "val")


def test_real_cifar10(cifar10_root):
    root = cifar10_root
    train = load_cifar10(root.parent)
    assert train.images.shape == (50000, 3, 32, 32)
    assert train.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert np.bincount(train.labels).tolist() == [5000] * 10
    # Close to the reference normalisation constants (the published std is famously not the pixel std).
    np.testing.assert_allclose(train.images.mean(axis=(0, 2, 3)) / 255, CIFAR10_MEAN, atol=2e-3)
    test = load_dataset("cifar10", root=root, split="test")
    assert test.images.shape == (10000, 3, 32, 32)
    assert np.bincount(test.labels).tolist() == [1000] * 10


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_repickled_batches_load(tmp_path, cifar10_writer, repickle, protocol):
    written = cifar10_writer(tmp_path, rows=4)
    folder = tmp_path / "cifar-10-batches-py"
    for i, name in enumerate(["test_batch", "batches.meta"]):
        (folder / name).write_bytes(repickle((folder / name).read_bytes(), protocol, str_keys=i == 0))
    ds = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(ds.images, written["test_batch"][0].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.labels, written["test_batch"][1])
    assert ds.classes[9] == "truck"


_ROWS2 = np.zeros((2, 3072), np.uint8)


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("test_batch", {b"data": _ROWS2[:0], b"labels": []}, r"'data' must be a \(N, 3072\) uint8 array, N >= 1"),
        ("test_batch", {b"data": _ROWS2, b"labels": 3}, r"2 images but labels of shape \(\)"),
        ("test_batch", {b"data": _ROWS2, b"labels": [[0], [1, 2]]}, r"2 images but labels of shape \(2,\) \(object\)"),
        ("batches.meta", {b"label_names": 5}, r"meta file's 'label_names' must be a non-empty list, got 5"),
        ("batches.meta", {b"label_names": []}, r"meta file's 'label_names' must be a non-empty list"),
    ],
)
def test_odd_batches_are_named_errors(tmp_path, cifar10_writer, py2_pickle, file, content, message):
    cifar10_writer(tmp_path, rows=2)
    (tmp_path / "cifar-10-batches-py" / file).write_bytes(py2_pickle(content))
    with pytest.raises(ValueError, match=r"cifar-10-batches-py.*" + message):
        load_cifar10(tmp_path, "test")


def test_self_referencing_or_deep_batch_is_a_value_error_naming_the_file(tmp_path, cifar10_writer, py2_pickle):
    cifar10_writer(tmp_path, rows=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = {b"data": _ROWS2, b"labels": [0, 1]}
    batch[b"batch_label"] = batch
    path.write_bytes(py2_pickle(batch))
    with pytest.raises(ValueError, match=r"batches-py/test_batch: the pickle holds a dict that contains itself"):
        load_cifar10(tmp_path, "test")  # was a RecursionError
    deep = b"\x80\x02" + (b"}" + b"X\x01\x00\x00\x00a") * 50_000 + b"}" + b"s" * 50_000 + b"."
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(deep)
    _tar(tmp_path, "cifar-10-batches-py", tmp_path / "c.tar.gz")
    with pytest.raises(ValueError, match=r"c.tar.gz:cifar-10-batches-py/(test_batch|batches.meta): the pickle"):
        load_cifar10(tmp_path / "c.tar.gz", "test")


def test_batches_with_keys_of_mixed_types_are_named_errors(tmp_path, cifar10_writer, py2_pickle):
    cifar10_writer(tmp_path, rows=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(py2_pickle({1: 2, b"x": 3}))
    with pytest.raises(ValueError, match=r"test_batch: expected keys 'data' and 'labels', found 'x', 1"):
        load_cifar10(tmp_path, "test")  # was a TypeError from sorting the keys


def test_not_found_advises_download_for_api_and_cli(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pass download=True to fetch it$"):
        load_dataset("cifar10", root=tmp_path)
