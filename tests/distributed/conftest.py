"""Two "parties" of real digits (scikit-learn), encrypted with the library into `instahide encrypt`
folders: alice has train images 0..299 (T=3 encryption epochs), bob 300..599 (T=2)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")


def write_party(folder: Path, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, *, mean, std,
                num_classes: int = 10, classes=None) -> Path:
    """Encrypt ``x`` ``(N, C, H, W)`` ``epochs`` times and write the folder `instahide encrypt` writes
    (the arrays, then meta.json with their checksums, by the library's :func:`write_meta`)."""
    from instahide.distributed.encrypted import write_meta
    from instahide.scheme import KeyGenerator, encrypt

    folder.mkdir(parents=True, exist_ok=True)
    gen = KeyGenerator.from_seed(seed)
    enc, lab = [], []
    for _ in range(epochs):
        e = encrypt(x, y, k=4, num_classes=num_classes, generator=gen)
        enc.append(e.images.permute(0, 2, 3, 1).numpy().astype(np.float32))
        lab.append(e.soft_labels.numpy().astype(np.float32))
    np.save(folder / "encryption.npy", np.concatenate(enc))
    np.save(folder / "label.npy", np.concatenate(lab))
    n, (c, h, w) = len(x), x.shape[1:]
    meta = {"dataset": "digits", "num_images": n, "epochs": epochs, "rows": n * epochs,
            "row_order": "epoch-major: row = epoch * N + i", "image_shape_hwc": [h, w, c],
            "labelled": True, "num_classes": num_classes, "classes": classes or [str(i) for i in range(num_classes)],
            "normalized": True, "mean": list(mean), "std": list(std),
            "scheme": {"k": 4, "mode": "instahide"}, "keys": {"origin": "research-seed"}}
    write_meta(folder, meta)
    return folder


@pytest.fixture(scope="session")
def digits_train():
    from instahide.data import load_dataset

    ds = load_dataset("digits", split="train")
    x, y = ds.to_tensor()
    return x, y, ds.mean, ds.std


@pytest.fixture(scope="session")
def parties(tmp_path_factory, digits_train):
    x, y, mean, std = digits_train
    root = tmp_path_factory.mktemp("parties")
    a = write_party(root / "alice", x[:300], y[:300], 3, seed=11, mean=mean, std=std)
    b = write_party(root / "bob", x[300:600], y[300:600], 2, seed=12, mean=mean, std=std)
    return a, b


@pytest.fixture(scope="session")
def party_writer():
    return write_party
