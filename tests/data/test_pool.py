from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from instahide.cli.main import main
from instahide.data import dog_keypoint_count, load_arrays, sift_keypoint_count
from instahide.data.pool import _permute, build_pool, load_pool, pool_sidecar

N_PHOTOS, PH, PW, SIZE = 6, 20, 24, 16  # each photo has 5 x 9 = 45 crop positions of 16x16


@pytest.fixture
def photos(tmp_path):
    """Six random blocky 'photographs' (N, H, W, C) uint8 in a .npy file (no Pillow needed)."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(30, 226, (N_PHOTOS, PH // 4, PW // 4, 3)).repeat(4, axis=1).repeat(4, axis=2)
    x = (blocks + rng.integers(-20, 21, blocks.shape)).astype(np.uint8)  # edges and corners: not flat
    path = tmp_path / "photos.npy"
    np.save(path, x)
    return path, x


def _crops(x: np.ndarray) -> dict:
    """Every 16x16 crop of every photo: bytes -> (photo, top, left)."""
    out = {}
    for p in range(len(x)):
        for top in range(PH - SIZE + 1):
            for left in range(PW - SIZE + 1):
                out[x[p, top:top + SIZE, left:left + SIZE].tobytes()] = (p, top, left)
    return out


def _build(src, out, count=60, **kw):
    kw = {"filter": "none", "workers": 1, "shard_size": 16, **kw}
    return build_pool(src, out, count, SIZE, **kw)


def test_pool_is_distinct_crops_spread_over_every_photo(photos, tmp_path):
    src, x = photos
    meta = _build(src, tmp_path / "pool.npy", count=60)
    images, side = load_pool(tmp_path / "pool.npy")
    assert isinstance(images, np.memmap) and images.shape == (60, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert side == meta == json.loads(pool_sidecar(tmp_path / "pool.npy").read_text())
    crops = _crops(x)
    where = [crops[p.tobytes()] for p in images]  # every patch is a crop of a photo
    assert len(set(where)) == 60  # no crop position twice
    # round-robin over the photos: the first 60 candidates visit each of the 6 photos 10 times
    assert np.bincount([p for p, _, _ in where], minlength=N_PHOTOS).tolist() == [10] * N_PHOTOS
    # the sidecar's statistics are the pool's, in [0, 1] units
    pixels = np.asarray(images, dtype=np.float64).reshape(-1, 3) / 255
    np.testing.assert_allclose(meta["mean"], pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(meta["std"], pixels.std(0), atol=1e-6)
    assert (meta["count"], meta["patch_size"], meta["version"], meta["layout"]) == (60, [SIZE, SIZE], 1, "NHWC")
    assert meta["filter"] == {**meta["filter"], "name": "none", "threshold": None}
    assert not (tmp_path / "pool.npy.parts").exists()
    # the encrypt command's loader reads the same file and the statistics beside it
    ds = load_arrays(tmp_path / "pool.npy", labels_key=None)
    assert ds.images.shape == (60, 3, SIZE, SIZE) and ds.mean == pytest.approx(tuple(meta["mean"]))


def test_filters_keep_only_passing_patches(photos, tmp_path):
    src, _ = photos
    _build(src, tmp_path / "fast.npy", count=40, filter="fast", threshold=3)
    fast = np.ascontiguousarray(load_pool(tmp_path / "fast.npy")[0].transpose(0, 3, 1, 2))
    assert (dog_keypoint_count(fast) > 3).all()
    pytest.importorskip("skimage")
    meta = _build(src, tmp_path / "sift.npy", count=12, filter="sift", threshold=2)
    assert meta["filter"]["name"] == "sift" and meta["filter"]["threshold"] == 2
    sift = load_pool(tmp_path / "sift.npy")[0].transpose(0, 3, 1, 2)
    assert all(sift_keypoint_count(p) > 2 for p in sift)


def test_every_position_once_when_the_pool_takes_them_all(photos, tmp_path):
    src, x = photos
    _build(src, tmp_path / "all.npy", count=N_PHOTOS * 45, shard_size=50)
    images, _ = load_pool(tmp_path / "all.npy")
    assert {p.tobytes() for p in images} == set(_crops(x))
    with pytest.raises(ValueError, match=r"asked for 271 distinct 16x16 patches but the 6 photos only have 270 crop positions"):
        _build(src, tmp_path / "more.npy", count=271)


def test_seed_and_parameters_choose_the_pool(photos, tmp_path):
    src, _ = photos
    a = load_pool(_build(src, tmp_path / "a.npy") and tmp_path / "a.npy")[0]
    b = load_pool(_build(src, tmp_path / "b.npy", shard_size=7) and tmp_path / "b.npy")[0]
    c = load_pool(_build(src, tmp_path / "c.npy", seed=1) and tmp_path / "c.npy")[0]
    np.testing.assert_array_equal(a, load_pool(_build(src, tmp_path / "a2.npy") and tmp_path / "a2.npy")[0])
    assert {p.tobytes() for p in a} == {p.tobytes() for p in b}  # same candidates, other shard boundaries
    assert not np.array_equal(a, c)


def test_interrupted_build_resumes_to_the_same_pool(photos, tmp_path):
    src, _ = photos
    _build(src, tmp_path / "ref.npy", filter="fast", threshold=2)
    reference = (tmp_path / "ref.npy").read_bytes(), {**json.loads(pool_sidecar(tmp_path / "ref.npy").read_text()), "name": "?"}
    calls = []

    def stop_after_two(state):
        calls.append(state["shards"])
        if len(calls) == 2:
            raise KeyboardInterrupt

    out = tmp_path / "pool.npy"
    with pytest.raises(KeyboardInterrupt):
        _build(src, out, filter="fast", threshold=2, progress=stop_after_two)
    parts = tmp_path / "pool.npy.parts"
    assert not out.exists() and len(list(parts.glob("shard-*.npz"))) == 2
    with pytest.raises(FileExistsError, match="holds a partial build: pass resume=True"):
        _build(src, out, filter="fast", threshold=2)
    with pytest.raises(ValueError, match=r"started with other parameters \(seed: 0 then, 3 now\)"):
        _build(src, out, filter="fast", threshold=2, seed=3, resume=True)
    states = []
    _build(src, out, filter="fast", threshold=2, resume=True, progress=states.append)
    assert states[0]["resumed_shards"] == 2 and states[0]["shards"] == 3  # the two finished shards reused
    assert (out.read_bytes(), {**json.loads(pool_sidecar(out).read_text()), "name": "?"}) == reference
    assert not parts.exists()


def test_killed_build_resumes_to_the_same_pool(photos, tmp_path):
    """A process killed (SIGKILL) after its third shard: the build resumed gives the reference pool."""
    src, _ = photos
    _build(src, tmp_path / "ref.npy", count=80)
    out = tmp_path / "pool.npy"
    code = (
        "import os, signal, sys\n"
        "from instahide.data.pool import build_pool\n"
        "def kill(state):\n"
        "    if state['shards'] == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"build_pool({str(src)!r}, {str(out)!r}, 80, {SIZE}, filter='none', workers=1, shard_size=16, progress=kill)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == -9, run.stderr
    assert not out.exists() and len(list((tmp_path / "pool.npy.parts").glob("shard-*.npz"))) == 3
    _build(src, out, count=80, resume=True)
    assert out.read_bytes() == (tmp_path / "ref.npy").read_bytes()


def test_damaged_shard_and_pool_are_refused_clearly(photos, tmp_path):
    src, _ = photos
    out = tmp_path / "pool.npy"

    def stop(state):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(src, out, progress=stop)
    shard = tmp_path / "pool.npy.parts" / "shard-000000.npz"
    shard.write_bytes(shard.read_bytes()[:-40])  # truncated
    with pytest.raises(ValueError, match=r"cannot read pool shard .*shard-000000.npz.*delete .*shard-000000.npz and run the build again with --resume"):
        _build(src, out, resume=True)
    shard.unlink()
    _build(src, out, resume=True)  # recomputed
    good = out.read_bytes()
    out.write_bytes(good[:-100])
    with pytest.raises(ValueError, match=r"truncated .*its header says uint8 \(60, 16, 16, 3\)"):
        load_pool(out)
    np.save(out, np.zeros((60, SIZE, SIZE, 3), np.float32))
    with pytest.raises(ValueError, match=r"a pool is \(M, H, W, C\) uint8 with C = 1 or 3, got \(60, 16, 16, 3\) float32"):
        load_pool(out)
    np.save(out, np.zeros((59, SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match=r"holds \(59, 16, 16, 3\) but its sidecar pool.json says \(60, 16, 16, 3\)"):
        load_pool(out)
    pool_sidecar(out).unlink()
    with pytest.raises(FileNotFoundError, match="no sidecar .*pool.json next to pool"):
        load_pool(out)


def test_build_refuses_bad_requests(photos, tmp_path):
    src, _ = photos
    _build(src, tmp_path / "pool.npy")
    with pytest.raises(FileExistsError, match="exists; pass force=True"):
        _build(src, tmp_path / "pool.npy")
    _build(src, tmp_path / "pool.npy", seed=2, force=True)
    with pytest.raises(RuntimeError, match=r"only \d+ of 60 patches pass the fast filter \(threshold 1000\)"):
        _build(src, tmp_path / "strict.npy", filter="fast", threshold=1000)
    with pytest.raises(ValueError, match="unknown filter 'blur'"):
        _build(src, tmp_path / "x.npy", filter="blur")
    with pytest.raises(ValueError, match="must end in .npy"):
        _build(src, tmp_path / "x.npz")
    with pytest.raises(ValueError, match="resize=12 is smaller than the patch size"):
        _build(src, tmp_path / "x.npy", resize=12)
    with pytest.raises(FileNotFoundError, match="neither 'builtin', a folder of images, nor a .npy/.npz file"):
        _build(tmp_path / "nothing", tmp_path / "x.npy")


def test_permutation_is_a_bijection_per_domain():
    for n in (1, 2, 3, 7, 64, 1000, 4099):
        for key in (0, 12345):
            y = _permute(np.arange(n), n, key)
            assert sorted(y.tolist()) == list(range(n))
    # vectorised over elements with their own domains and keys = one call per element
    n = np.array([5, 17, 17, 1000, 3])
    keys = np.array([1, 2, 3, 4, 5], dtype=np.uint64)
    x = np.array([4, 0, 16, 999, 1])
    expected = [int(_permute(np.array([v]), m, k)[0]) for v, m, k in zip(x, n, keys)]
    assert _permute(x, n, keys).tolist() == expected


@pytest.mark.slow
def test_workers_do_not_change_the_pool(photos, tmp_path):
    src, _ = photos
    _build(src, tmp_path / "one.npy", filter="fast", threshold=2, count=100)
    _build(src, tmp_path / "two.npy", filter="fast", threshold=2, count=100, workers=2)
    assert (tmp_path / "one.npy").read_bytes() == (tmp_path / "two.npy").read_bytes()


def test_command_line(photos, tmp_path, capsys):
    src, _ = photos
    out = tmp_path / "pool.npy"
    args = ["pool", "build", "--source", str(src), "--out", str(out), "--count", "30", "--size", str(SIZE),
            "--filter", "none", "--workers", "1", "--shard-size", "16"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "pool: 30 / 30 patches kept" in captured.err
    images, meta = load_pool(out)
    assert images.shape == (30, SIZE, SIZE, 3) and meta["source"]["sources"] == [str(src.resolve())]
    assert main(args) == 2
    assert "exists; pass force=True (--force)" in capsys.readouterr().err
    assert main(args + ["--force", "--research-seed", "4"]) == 0
    capsys.readouterr()
    for wrong in (["--forc"], ["--bogus"]):  # options exact; the error shows this command's usage
        with pytest.raises(SystemExit) as e:
            main(args + wrong)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("usage: instahide pool build ") and "unrecognized arguments" in err
