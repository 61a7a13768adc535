"""Fixtures for the data-layer tests: writers for the official on-disk formats, and the real data."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python-2 ``str`` (SHORT_BINSTRING / BINSTRING),
    exactly as the official CIFAR files store their keys, file names and array payloads."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy >= 2 names its core module numpy._core; the official files say numpy.core.
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


@pytest.fixture
def py2_pickle():
    return py2_pickle_dumps


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(folder: Path, rows: int = 20, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``folder/cifar-10-batches-py/`` in the official layout; returns file -> (data, labels)."""
    rng = np.random.default_rng(seed)
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, rows)]
        batch = {
            b"batch_label": f"training batch {i + 1} of 5".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(rows)],
        }
        (d / name).write_bytes(py2_pickle_dumps(batch))
        written[name] = (data, np.array(labels))
    meta = {b"num_cases_per_batch": rows, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    (d / "batches.meta").write_bytes(py2_pickle_dumps(meta))
    return written


def write_cifar100(folder: Path, rows: int = 30, seed: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Write ``folder/cifar-100-python/{train,test,meta}``; returns file -> (data, fine, coarse)."""
    rng = np.random.default_rng(seed)
    d = folder / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, rows)]
        coarse = [f // 5 for f in fine]
        batch = {
            b"filenames": [f"f{j}.png".encode() for j in range(rows)],
            b"batch_label": name.encode(),
            b"fine_labels": fine,
            b"coarse_labels": coarse,
            b"data": data,
        }
        (d / name).write_bytes(py2_pickle_dumps(batch))
        written[name] = (data, np.array(fine), np.array(coarse))
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    (d / "meta").write_bytes(py2_pickle_dumps(meta))
    return written


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.fixture
def cifar10_writer():
    return write_cifar10


@pytest.fixture
def cifar100_writer():
    return write_cifar100


@pytest.fixture
def idx_writer():
    return write_idx




@pytest.fixture
def repickle():
    """``f(blob, protocol, str_keys=False)``: a Python-2 CIFAR pickle re-pickled by Python 3."""
    def dumps(blob: bytes, protocol: int, str_keys: bool = False) -> bytes:
        obj = pickle.loads(blob, encoding="bytes")
        if str_keys:
            obj = {k.decode(): v for k, v in obj.items()}
        return pickle.dumps(obj, protocol=protocol)

    return dumps
