"""``instahide encrypt`` streams uint8 ``.npy`` files: ``--dataset arrays --root private.npy`` and
``--public pool.npy`` are memory-mapped, encrypted in chunks of rows, and give the bits the in-memory
float path gives under the same keys; truncated or wrong-dtype files are refused with one clear line."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from instahide.cli import encrypt_cmd
from instahide.cli.main import main
from instahide.data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset
from instahide.scheme import Key, apply_key


def _save(path, n, shape=(8, 6, 3), seed=0):
    u = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    np.save(path, u)
    return u


def _float(u_nhwc):
    ds = ImageDataset(np.ascontiguousarray(u_nhwc.transpose(0, 3, 1, 2)), None, None, "x", IMAGENET_MEAN, IMAGENET_STD)
    return ds.to_tensor()[0]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("instahide encrypt: error: ") and "Traceback" not in err, err
    return lines[0]


def test_arrays_npy_in_chunks_equals_the_in_memory_path(tmp_path, monkeypatch):
    monkeypatch.setattr(encrypt_cmd, "CHUNK_BYTES", 64 * 4 * 8 * 6 * 3)   # 64 rows per chunk: 5 chunks of 300
    u = _save(tmp_path / "private.npy", 300)
    np.save(tmp_path / "private.labels.npy", np.arange(300) % 4)
    out, key_path = tmp_path / "enc", tmp_path / "secret" / "k.npz"
    assert main(["encrypt", "--dataset", "arrays", "--root", str(tmp_path / "private.npy"), "--out", str(out),
                 "--epochs", "2", "--key-out", str(key_path), "--research-seed", "4", "--progress", "false"]) == 0
    enc, lab = np.load(out / "encryption.npy"), np.load(out / "label.npy")
    key = Key.load(key_path)
    assert enc.shape == (600, 8, 6, 3) and lab.shape == (600, 4) and len(key) == 600
    x = _float(u)
    again = torch.cat([apply_key(x, key[e * 300:(e + 1) * 300]) for e in range(2)])
    assert np.array_equal(again.permute(0, 2, 3, 1).numpy().view(np.uint32), enc.view(np.uint32))
    first = key.indices[:64, 1:]
    assert int(first.max()) >= 64          # the first chunk's partners come from the whole set
    assert not np.array_equal(enc[:300], enc[300:])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_images"] == 300 and meta["labelled"] and meta["mean"] == list(IMAGENET_MEAN)


def test_public_pool_npy_is_used_whole_and_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(encrypt_cmd, "CHUNK_BYTES", 64 * 4 * 8 * 6 * 3)
    u = _save(tmp_path / "private.npy", 150)
    pool = _save(tmp_path / "pool.npy", 6000, seed=1)
    out, key_path = tmp_path / "enc", tmp_path / "secret" / "k.npz"
    assert main(["encrypt", "--dataset", "arrays", "--root", str(tmp_path / "private.npy"), "--public",
                 str(tmp_path / "pool.npy"), "--out", str(out), "--key-out", str(key_path),
                 "--progress", "false"]) == 0
    key = Key.load(key_path)
    assert int(key.indices[:, 2:].max()) >= 4000            # beyond the default --public-size: the whole pool
    assert json.loads((out / "meta.json").read_text())["public"]["size"] == 6000
    ref = apply_key(_float(u), key, public=_float(pool))
    assert np.array_equal(ref.permute(0, 2, 3, 1).numpy(), np.load(out / "encryption.npy"))


def _truncated(path):
    blob = path.read_bytes()
    path.write_bytes(blob[:-500])


@pytest.mark.parametrize("which", ["root", "public"])
@pytest.mark.parametrize("case, message", [
    ("truncated", r"truncated or corrupt array file \(its header says uint8 \("),
    ("float-255", r"float images must lie in \[0, 1\]"),
    ("complex", "unsupported image dtype complex64"),
    ("object", r"holds pickled \(object\) data; refusing to load it"),
])
def test_truncated_or_wrong_dtype_npy_is_refused(tmp_path, capsys, which, case, message):
    good = tmp_path / "good.npy"
    _save(good, 40)
    bad = tmp_path / "bad.npy"
    if case == "truncated":
        _save(bad, 40)
        _truncated(bad)
    elif case == "float-255":
        np.save(bad, np.full((40, 8, 6, 3), 200.0, np.float32))
    elif case == "complex":
        np.save(bad, np.zeros((40, 8, 6, 3), np.complex64))
    else:
        np.save(bad, np.array([None] * 3, dtype=object), allow_pickle=True)
    root, public = (bad, good) if which == "root" else (good, bad)
    out = tmp_path / "enc"
    assert main(["encrypt", "--dataset", "arrays", "--root", str(root), "--public", str(public), "--out", str(out),
                 "--progress", "false"]) == 2
    line = _one_line_error(capsys)
    assert "bad.npy" in line and re.search(message, line), line
    assert not out.exists()
