"""Reading the parties' folders: the union's rows are the files' rows; bad folders are clear errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from instahide.distributed import KeyMaterialError, load_encrypted
from instahide.distributed.encrypted import write_meta

pytestmark = pytest.mark.filterwarnings("ignore:.*derive from a seed")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_union_rows_are_the_parties_rows_of_epoch_e_mod_T(parties):
    a, b = parties
    u = load_encrypted([a, b])
    assert u.rows_per_epoch == 600 and u.image_shape == (1, 8, 8) and u.num_classes == 10
    assert u.fresh_epochs == 2 and u.normalized
    ea, la = np.load(a / "encryption.npy"), np.load(a / "label.npy")
    eb, lb = np.load(b / "encryption.npy"), np.load(b / "label.npy")
    rng = np.random.default_rng(0)
    for epoch in range(5):
        pos = rng.permutation(600)[:97]
        x, y = u.take(epoch, pos)
        assert x.shape == (97, 1, 8, 8) and y.shape == (97, 10) and x.dtype == torch.float32
        for i, p in enumerate(pos):  # plain loop over the files: party, then epoch (e mod T) block
            if p < 300:
                row = (epoch % 3) * 300 + p
                ref_x, ref_y = ea[row], la[row]
            else:
                row = (epoch % 2) * 300 + (p - 300)
                ref_x, ref_y = eb[row], lb[row]
            assert np.array_equal(x[i].permute(1, 2, 0).numpy(), ref_x)
            assert np.array_equal(y[i].numpy(), ref_y)


def test_arrays_are_memory_mapped_and_described(parties):
    u = load_encrypted(parties)
    assert all(isinstance(p.encryption, np.memmap) and isinstance(p.labels, np.memmap) for p in u.parties)
    d = u.describe()
    assert [x["num_images"] for x in d] == [300, 300] and [x["epochs"] for x in d] == [3, 2]


def test_seeded_keys_warn(parties):
    with pytest.warns(UserWarning, match="derive from a seed"):
        load_encrypted(parties[0])


@pytest.mark.parametrize("kind", ["instahide-key", "named-key"])
def test_a_key_file_in_the_folder_is_refused(tmp_path, parties, digits_train, kind):
    from instahide.scheme import encrypt

    d = _copy(parties[0], tmp_path / "alice")
    if kind == "instahide-key":
        x, y, *_ = digits_train
        enc = encrypt(x[:10], y[:10], return_key=True, seed=0)
        enc.key.save(d / "backup.npz")       # a real key under an innocent name
        culprit = "backup.npz"
    else:
        (d / "sub").mkdir()
        (d / "sub" / "keys.npz").write_bytes(b"anything")
        culprit = "keys.npz"
    with pytest.raises(KeyMaterialError, match=f"holds key material.*{culprit}"):
        load_encrypted([d, parties[1]])


def test_mismatched_parties_name_the_folder(tmp_path, parties, digits_train, party_writer):
    write_party = party_writer

    x, y, mean, std = digits_train
    odd = write_party(tmp_path / "carol", x[:50], y[:50] % 5, 1, seed=3, mean=mean, std=std, num_classes=5)
    with pytest.raises(ValueError, match="carol: number of classes is 5, but .*alice has 10"):
        load_encrypted([parties[0], odd])
    other = write_party(tmp_path / "dave", x[:50], y[:50], 1, seed=4, mean=(0.5,), std=std)
    with pytest.raises(ValueError, match="dave: normalisation mean"):
        load_encrypted([parties[0], other])
    big = tmp_path / "erin"
    big.mkdir()
    np.save(big / "encryption.npy", np.zeros((4, 16, 16, 1), np.float32))
    np.save(big / "label.npy", np.zeros((4, 10), np.float32))
    write_meta(big, {"num_images": 4, "epochs": 1, "normalized": True, "mean": list(mean), "std": list(std)})
    with pytest.raises(ValueError, match=r"erin: image shape .* is \(16, 16, 1\), but .*alice has \(8, 8, 1\)"):
        load_encrypted([parties[0], big])


def test_truncated_and_inconsistent_files(tmp_path, parties):
    d = _copy(parties[0], tmp_path / "cut")
    raw = (d / "encryption.npy").read_bytes()
    (d / "encryption.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="encryption.npy"):
        load_encrypted(d)
    d2 = _copy(parties[0], tmp_path / "rows")
    np.save(d2 / "label.npy", np.load(d2 / "label.npy")[:-1])
    with pytest.raises(ValueError, match="900 rows but label.npy has 899"):
        load_encrypted(d2)
    d3 = _copy(parties[0], tmp_path / "meta")
    meta = json.loads((d3 / "meta.json").read_text())
    meta["epochs"] = 2
    (d3 / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="300 images x 2 epochs = 600 rows"):
        load_encrypted(d3)
    d4 = _copy(parties[0], tmp_path / "nometa")
    (d4 / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        load_encrypted(d4)
    d5 = _copy(parties[0], tmp_path / "ints")
    np.save(d5 / "label.npy", np.zeros((900, 10), np.int64))
    with pytest.raises(ValueError, match="floating-point"):
        load_encrypted(d5)
    with pytest.raises(ValueError, match="given twice"):
        load_encrypted([parties[0], parties[0]])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encrypted(tmp_path / "nowhere")


def test_pickled_arrays_are_refused(tmp_path, parties):
    d = _copy(parties[0], tmp_path / "pickled")
    np.save(d / "label.npy", np.array([{"a": 1}] * 900, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="label.npy"):
        load_encrypted(d)


def test_nan_rows_are_reported_when_read(tmp_path, parties):
    d = _copy(parties[0], tmp_path / "nan")
    e = np.load(d / "encryption.npy")
    e[305, 2, 3, 0] = np.nan                      # epoch 1, image 5
    np.save(d / "encryption.npy", e)
    write_meta(d, json.loads((d / "meta.json").read_text()))  # a party that encrypted a NaN
    u = load_encrypted(d)
    u.take(0, np.arange(300))                     # epoch 0 is clean
    with pytest.raises(ValueError, match=r"rows \[305\] hold NaN"):
        u.take(1, np.arange(300))


def test_arrays_must_be_the_ones_meta_records(tmp_path, parties, digits_train, party_writer):
    x, y, mean, std = digits_train
    other = party_writer(tmp_path / "other", x[:300], y[:300], 3, seed=99, mean=mean, std=std)
    mixed = _copy(parties[0], tmp_path / "mixed")   # a folder mixing two runs: same shapes, other bytes
    shutil.copy(other / "label.npy", mixed / "label.npy")
    with pytest.raises(ValueError, match="label.npy is not the file meta.json records"):
        load_encrypted(mixed)
    flipped = _copy(parties[0], tmp_path / "flipped")
    raw = bytearray((flipped / "encryption.npy").read_bytes())
    raw[-1] ^= 1                                   # one bit of the last value
    (flipped / "encryption.npy").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="encryption.npy is not the file meta.json records"):
        load_encrypted(flipped)
    bare = _copy(parties[0], tmp_path / "bare")
    meta = json.loads((bare / "meta.json").read_text())
    del meta["files"]
    (bare / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="records no checksum of encryption.npy"):
        load_encrypted(bare)
    load_encrypted([parties[0], other])            # both complete: accepted


def test_unlabelled_encryptions_are_refused_clearly(tmp_path, parties):
    d = _copy(parties[0], tmp_path / "unlabelled")
    (d / "label.npy").unlink()
    meta = json.loads((d / "meta.json").read_text())
    write_meta(d, dict(meta, labelled=False, num_classes=None))
    with pytest.raises(ValueError, match="unlabelled images .*nothing to train on"):
        load_encrypted(d)
