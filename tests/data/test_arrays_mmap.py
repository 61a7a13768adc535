"""uint8 ``.npy`` files are memory-mapped, never copied: the dataset's images are a read-only view of
the map (what training and out-of-core encryption read rows from)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from instahide.data import load_arrays, load_dataset


def _base_is_memmap(a: np.ndarray) -> bool:
    while a is not None:
        if isinstance(a, np.memmap) and a.base is not None and isinstance(a.base, __import__("mmap").mmap):
            return True
        a = a.base if isinstance(a.base, np.ndarray) else None
    return False


@pytest.mark.parametrize("layout_shape", [(5, 6, 7, 3), (5, 3, 6, 7), (5, 6, 7)])
def test_uint8_npy_is_a_read_only_view_of_the_map(tmp_path, layout_shape):
    x = np.random.default_rng(0).integers(0, 256, layout_shape, dtype=np.uint8)
    np.save(tmp_path / "p.npy", x)
    ds = load_arrays(tmp_path / "p.npy")
    ref = x.transpose(0, 3, 1, 2) if x.ndim == 4 and x.shape[-1] == 3 else (x[:, None] if x.ndim == 3 else x)
    assert ds.images.dtype == np.uint8 and ds.images.shape == ref.shape
    np.testing.assert_array_equal(ds.images, ref)
    assert isinstance(ds.images, np.memmap) and _base_is_memmap(ds.images)   # a view of the map, no copy
    assert not ds.images.flags.writeable
    assert not np.shares_memory(ds.images, x)
    assert ds.meta["memory_mapped"] is True
    # the loader of --dataset arrays gives the same view
    assert isinstance(load_dataset("arrays", root=tmp_path / "p.npy").images, np.memmap)


def test_channels_last_file_maps_to_channels_first_values(tmp_path):
    x = np.arange(2 * 6 * 5 * 3, dtype=np.uint8).reshape(2, 6, 5, 3)
    np.save(tmp_path / "c.npy", x)
    im = load_arrays(tmp_path / "c.npy").images
    for n, c, h, w in [(0, 0, 0, 0), (1, 2, 5, 4), (1, 1, 2, 0)]:
        assert im[n, c, h, w] == x[n, h, w, c]


def test_sidecar_labels_and_stats(tmp_path):
    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.save(tmp_path / "s.npy", x)
    np.save(tmp_path / "s.labels.npy", np.array([0, 2, 1, 2]))
    (tmp_path / "s.json").write_text(json.dumps({"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5],
                                                 "classes": ["a", "b", "c"], "other": 1}))
    ds = load_arrays(tmp_path / "s.npy")
    assert ds.labels.tolist() == [0, 2, 1, 2] and ds.classes == ["a", "b", "c"]
    assert ds.mean == (0.1, 0.2, 0.3) and ds.std == (0.5, 0.5, 0.5)


def test_truncated_npy_is_refused_with_its_sizes(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((50, 8, 8, 3), np.uint8))
    blob = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(blob[:-100])
    with pytest.raises(ValueError, match=r"t\.npy: truncated or corrupt array file \(its header says uint8 "
                                         r"\(50, 8, 8, 3\), 9,728 bytes, but the file holds 9,628\)"):
        load_arrays(tmp_path / "t.npy")
    (tmp_path / "h.npy").write_bytes(blob[:20])
    with pytest.raises(ValueError, match=r"h\.npy: truncated or corrupt array file"):
        load_arrays(tmp_path / "h.npy")


def test_large_non_uint8_is_refused_not_loaded(tmp_path, monkeypatch):
    from instahide.data import arrays

    monkeypatch.setattr(arrays, "MAX_CONVERTED_BYTES", 1000)
    np.save(tmp_path / "f.npy", np.zeros((10, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"f\.npy holds float32 images \(10, 8, 8, 3\).*only uint8 .npy files are "
                                         r"memory-mapped"):
        load_arrays(tmp_path / "f.npy")
    np.save(tmp_path / "small.npy", np.zeros((1, 4, 4), np.float32))     # small ones are still converted
    assert load_arrays(tmp_path / "small.npy").images.shape == (1, 1, 4, 4)


# -- the uint8 cache -------------------------------------------------------------------------------
def test_cache_of_a_dataset_round_trips_memory_mapped(tmp_path):
    from instahide.data import write_uint8_cache

    pytest.importorskip("sklearn")
    ds = load_dataset("digits")
    path = write_uint8_cache(ds, tmp_path / "digits.npy")
    back = load_arrays(path)
    assert isinstance(back.images, np.memmap) and np.load(path, mmap_mode="r").shape == (len(ds), 8, 8, 1)
    np.testing.assert_array_equal(back.images, ds.images)
    np.testing.assert_array_equal(back.labels, ds.labels)
    assert (back.mean, back.std, back.classes, back.name) == (ds.mean, ds.std, ds.classes, ds.name)


def test_cache_of_an_image_folder_streams_and_matches_the_folder_loader(tmp_path):
    from PIL import Image

    from instahide.data import load_image_folder, write_uint8_cache

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)).save(tmp_path / "photos" / cls / f"{i}.png")
    path = write_uint8_cache(tmp_path / "photos", tmp_path / "c" / "photos.npy", size=(8, 8))
    ref, back = load_image_folder(tmp_path / "photos", size=(8, 8)), load_arrays(path)
    np.testing.assert_array_equal(back.images, ref.images)
    assert back.labels.tolist() == ref.labels.tolist() and back.classes == ["cats", "dogs"]
    with pytest.raises(ValueError, match="pass size=\\(H, W\\)"):
        write_uint8_cache(tmp_path / "photos", tmp_path / "d.npy")


def test_cached_dataset_is_reused_only_for_the_same_source(tmp_path, monkeypatch):
    from instahide.data import cache

    pytest.importorskip("sklearn")
    calls = []
    real = cache.load_dataset
    monkeypatch.setattr(cache, "load_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = cache.cached_dataset("digits", None, tmp_path / "d.npy")
    again = cache.cached_dataset("digits", None, tmp_path / "d.npy")
    assert len(calls) == 1 and isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(first.images, again.images)
    test = cache.cached_dataset("digits", None, tmp_path / "d.npy", split="test")    # another split: rebuilt
    assert len(calls) == 2 and len(test) != len(first)
