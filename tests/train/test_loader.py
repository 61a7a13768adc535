"""Training from uint8 (memory-mapped) private sets: in-worker encryption against the in-memory reference."""
import json

import numpy as np
import pytest
import torch

from instahide.data import normalize_images
from instahide.scheme import KeyGenerator, encrypt
from instahide.train.loader import (EncryptedBatches, PixelSource, batch_loader, encrypt_rows, evaluate_source,
                                    is_memory_mapped, resolve_workers)
from instahide.train.evaluate import evaluate

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture
def nhwc_map(tmp_path):
    """A read-only (N, C, H, W) memmap VIEW of an NHWC uint8 .npy (not contiguous), and its labels."""
    path = tmp_path / "private.npy"
    rng = np.random.default_rng(0)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(40, 6, 5, 3))
    arr[:] = rng.integers(0, 256, arr.shape, dtype=np.uint8)
    arr.flush()
    del arr
    view = np.load(path, mmap_mode="r").transpose(0, 3, 1, 2)
    return view, torch.from_numpy(rng.integers(0, 10, 40))


def in_memory(view, mean=MEAN, std=STD):
    """The in-memory path's float set: ImageDataset.to_tensor's operations on a contiguous copy."""
    return normalize_images(torch.from_numpy(np.ascontiguousarray(view)).to(torch.float32).div_(255.0), mean, std)


def test_the_fixture_is_a_non_contiguous_read_only_memory_map(nhwc_map):
    view, _ = nhwc_map
    assert is_memory_mapped(view) and not view.flags.c_contiguous and not view.flags.writeable
    assert not is_memory_mapped(np.ascontiguousarray(view))


def test_gather_equals_the_in_memory_normalisation(nhwc_map):
    view, _ = nhwc_map
    rows = np.array([7, 3, 3, 39, 0])
    assert torch.equal(PixelSource(view, MEAN, STD).gather(rows), in_memory(view)[rows])
    sub = PixelSource(view, MEAN, STD, index=np.arange(10, 40))
    assert len(sub) == 30 and torch.equal(sub.gather([0, 5]), in_memory(view)[[10, 15]])
    assert torch.equal(PixelSource(torch.from_numpy(np.ascontiguousarray(view)), MEAN, STD).gather(rows),
                       in_memory(view)[rows])


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 26])
@pytest.mark.parametrize("mode", ["instahide", "mixup"])
def test_in_worker_encryption_equals_encrypt_on_the_in_memory_set(nhwc_map, fused, chunk_bytes, mode):
    view, y = nhwc_map
    rows = np.array([5, 17, 2, 33, 20, 11, 0])
    ref = encrypt(in_memory(view), y, k=4, mode=mode, num_classes=10, rows=rows,
                  generator=KeyGenerator.from_seed("loader"), return_key=True, fused=fused)
    got = encrypt_rows(PixelSource(view, MEAN, STD), y, rows, k=4, upper=0.65, mode=mode, num_classes=10,
                       generator=KeyGenerator.from_seed("loader"), fused=fused, chunk_bytes=chunk_bytes,
                       return_key=True)
    assert torch.equal(got.key.indices, ref.key.indices) and torch.equal(got.key.coefficients, ref.key.coefficients)
    assert torch.equal(got.images, ref.images)
    assert torch.equal(got.soft_labels, ref.soft_labels)


def test_cross_dataset_encryption_equals_encrypt_with_the_in_memory_pool(nhwc_map, tmp_path):
    view, y = nhwc_map
    pool = np.random.default_rng(1).integers(0, 256, (25, 3, 6, 5), dtype=np.uint8)
    pmean, pstd = (0.4, 0.4, 0.4), (0.3, 0.3, 0.3)
    rows = np.arange(0, 40, 3)
    ref = encrypt(in_memory(view), y, k=6, num_private=2, dom=0.3, public=in_memory(pool, pmean, pstd),
                  num_classes=10, rows=rows, generator=KeyGenerator.from_seed(3))
    got = encrypt_rows(PixelSource(view, MEAN, STD), y, rows, k=6, upper=0.65, num_private=2, dom=0.3,
                       public=PixelSource(pool, pmean, pstd), num_classes=10, generator=KeyGenerator.from_seed(3),
                       chunk_bytes=1)
    assert torch.equal(got.images, ref.images) and torch.equal(got.soft_labels, ref.soft_labels)


def _epoch_keys(view, y, workers, keys, batches=None):
    batches = batches or list(torch.arange(40).split(5))
    ds = EncryptedBatches(PixelSource(view, MEAN, STD), y, batches, 10, keys=keys, return_key=True,
                          scheme=dict(k=4, upper=0.65, mode="instahide"))
    return [key for _, _, key in batch_loader(ds, workers)]


def _material(keys):
    """Every row's coefficients and mask bits, as bytes."""
    return [bytes(c.numpy().tobytes()) for key in keys for c in key.coefficients] + \
           [bytes(m.numpy().tobytes()) for key in keys for m in key.mask_bits]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_workers_never_repeat_key_material(nhwc_map):
    view, y = nhwc_map
    # OS entropy: a root generator made in every worker, and a generator copied into forked workers
    runs = [_epoch_keys(view, y, 3, KeyGenerator.from_entropy) for _ in range(2)]
    runs.append(_epoch_keys(view, y, 3, KeyGenerator.from_entropy()))
    runs.append(_epoch_keys(view, y, 0, KeyGenerator.from_entropy()))
    material = [m for keys in runs for m in _material(keys)]
    assert len(material) == 4 * 2 * 40 and len(set(material)) == len(material)
    # a research seed: every batch its own stream, the same keys for any number of workers
    seeded = lambda: KeyGenerator.from_seed("epoch-root")  # noqa: E731
    one, three = _epoch_keys(view, y, 0, seeded), _epoch_keys(view, y, 3, seeded)
    assert all(torch.equal(a.mask_bits, b.mask_bits) and torch.equal(a.indices, b.indices) for a, b in zip(one, three))
    assert len(set(_material(three))) == 2 * 40
    # a seeded generator copied into forked workers is rekeyed per worker: nothing repeats either
    copied = _epoch_keys(view, y, 3, KeyGenerator.from_seed("copied"))
    assert len(set(_material(copied) + _material(three))) == 4 * 40


def test_partners_cover_the_whole_set(nhwc_map):
    view, y = nhwc_map
    batch = torch.arange(8)                                          # the batch holds rows 0..7 only
    keys = _epoch_keys(view, y, 2, KeyGenerator.from_entropy, batches=[batch] * 150)
    partners = torch.cat([key.indices[:, 1:].flatten() for key in keys])
    counts = torch.bincount(partners, minlength=40)
    assert all(torch.equal(key.indices[:, 0], batch) for key in keys)
    # 3600 draws, 90 expected per image (fewer for the batch's own rows, never their own partner)
    assert counts.min() > 40 and counts[8:].sum() > 0.75 * len(partners)


def test_epoch_batches_match_the_batches_asked_for(nhwc_map):
    view, y = nhwc_map
    batches = list(torch.randperm(40, generator=torch.Generator().manual_seed(0)).split(16))
    ds = EncryptedBatches(PixelSource(view, MEAN, STD), y, batches, 10, scheme=None)
    got = list(batch_loader(ds, 2))
    x = in_memory(view)
    assert [len(b[0]) for b in got] == [16, 16, 8]
    for (xb, yb), rows in zip(got, batches):
        assert torch.equal(xb, x[rows]) and torch.equal(yb.argmax(1), y[rows])


def test_evaluate_source_matches_evaluate(nhwc_map):
    view, y = nhwc_map
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(90, 10))
    ref = evaluate(model, in_memory(view), y, batch_size=8)
    got = evaluate_source(model, PixelSource(view, MEAN, STD), y, device="cpu", batch_size=8, chunk_rows=16)
    assert got["accuracy"] == pytest.approx(ref["accuracy"]) and got["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_bad_sources_and_workers_are_refused(nhwc_map):
    view, _ = nhwc_map
    with pytest.raises(TypeError, match="must be uint8"):
        PixelSource(np.zeros((2, 3, 4, 4), np.float32), MEAN, STD)
    with pytest.raises(ValueError, match=r"must be \(N, C, H, W\)"):
        PixelSource(np.zeros((2, 4, 4), np.uint8), MEAN, STD)
    with pytest.raises(ValueError, match="3 channel statistics for 1-channel"):
        PixelSource(np.zeros((2, 1, 4, 4), np.uint8), MEAN, STD)
    with pytest.raises(ValueError, match="workers must be 'auto' or an integer >= 0"):
        resolve_workers(-1, [view], 0)
    assert resolve_workers("auto", [view], 10) == 0                      # small: the whole-set path
    assert resolve_workers("auto", [np.ascontiguousarray(view)], 1 << 40) == 0   # in memory: whole-set path
    assert resolve_workers("auto", [view], 1 << 40) >= 1                 # large and mapped: streamed
    assert resolve_workers(2, [view], 0) == 2


# -- the recipe: instahide train with workers -------------------------------------------------------
FAST = dict(epochs=2, batch_size=64, width=0.25, research_seed=0, progress=False)


def test_streamed_training_is_reproducible_for_any_number_of_workers(tmp_path):
    from instahide.train import TrainConfig, load_checkpoint, load_stream_data, train

    cfg = lambda name: TrainConfig.make(**FAST, out=str(tmp_path / name))  # noqa: E731
    one = train(cfg("one"), workers=1)
    two = train(cfg("two"), data=load_stream_data(cfg("two")), workers=2)
    assert one["workers"] == 1 and two["workers"] == 2 and one["private_set"].startswith("streamed")
    a, b = (load_checkpoint(tmp_path / n / "checkpoint.pt")["model"] for n in ("one", "two"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["train_loss"] for m in one["history"]] == [m["train_loss"] for m in two["history"]]
    whole = train(cfg("whole"), workers=0)
    assert whole["workers"] == 0 and whole["private_set"].startswith("in memory")
    assert whole["train_images"] == one["train_images"] and whole["test_images"] == one["test_images"]


def test_train_cli_takes_workers_and_the_library_refuses_mismatches(tmp_path, capsys):
    from instahide.cli.main import main
    from instahide.train import TrainConfig, load_train_data, train

    assert main(["train", "--epochs", "1", "--width", "0.25", "--subset", "200", "--progress", "false",
                 "--workers", "1", "--out", str(tmp_path / "c")]) == 0
    final = json.loads((tmp_path / "c" / "final.json").read_text())
    assert final["workers"] == 1 and final["train_images"] == 200
    with pytest.raises(SystemExit):
        main(["train", "--workers", "-1", "--out", str(tmp_path / "d")])
    assert "--workers: must be 'auto' or an integer >= 0, got '-1'" in capsys.readouterr().err
    cfg = TrainConfig.make(**FAST, out=str(tmp_path / "e"))
    with pytest.raises(ValueError, match="a preloaded TrainData is trained in memory"):
        train(cfg, data=load_train_data(cfg, "cpu"), workers=2)
    with pytest.raises(ValueError, match="legacy keys .* cannot be drawn batch by batch"):
        train(TrainConfig.make(**FAST, legacy=True, out=str(tmp_path / "f")), workers=1)


def test_a_memory_mapped_224_set_trains_streamed_with_resnet10_224(tmp_path):
    from instahide.data import load_dataset
    from instahide.train import TrainConfig, train

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        arr = np.lib.format.open_memmap(tmp_path / f"{split}.npy", mode="w+", dtype=np.uint8, shape=(n, 224, 224, 3))
        arr[:] = rng.integers(0, 256, arr.shape, dtype=np.uint8)
        arr.flush()
        np.save(tmp_path / f"{split}.labels.npy", rng.integers(0, 10, n))
    assert is_memory_mapped(load_dataset("arrays", root=tmp_path, split="train").images)
    cfg = TrainConfig.make(dataset="arrays", root=str(tmp_path), model="resnet10_224", width=0.125, epochs=1,
                           batch_size=8, research_seed=0, progress=False, out=str(tmp_path / "run"))
    final = train(cfg, workers=1)
    assert final["workers"] == 1 and final["model"] == "resnet10_224" and final["train_images"] == 24
    assert np.isfinite(final["history"][0]["train_loss"]) and final["test_images"] == 8
    # the in-memory path takes the channels-last map too (its encryption buffer is contiguous)
    cfg.out = str(tmp_path / "whole")
    whole = train(cfg, workers=0)
    assert whole["workers"] == 0 and np.isfinite(whole["history"][0]["train_loss"])


def test_epoch_key_roots_differ_by_epoch_and_rank_and_repeat_in_any_process():
    from instahide.train import TrainConfig
    from instahide.train.recipe import _epoch_keys

    cfg = TrainConfig.make(research_seed=5)
    draw = lambda *where: bytes(_epoch_keys(cfg, *where)().spawn(0).random_bytes(32))  # noqa: E731
    roots = {draw(0, 0, 1), draw(1, 0, 1), draw(0, 0, 2), draw(0, 1, 2)}
    assert len(roots) == 4 and draw(0, 1, 2) == draw(0, 1, 2)
    assert _epoch_keys(TrainConfig.make(), 0) == KeyGenerator.from_entropy


def test_seeded_augmentation_is_the_same_in_any_worker_and_spares_the_public_pool(nhwc_map):
    from instahide.data.augment import Augment

    view, y = nhwc_map
    pool = np.random.default_rng(2).integers(0, 256, (30, 3, 6, 5), dtype=np.uint8)
    batches = list(torch.arange(40).split(10))
    scheme = dict(k=6, upper=0.65, mode="mixup", num_private=2, dom=0.3)

    def epoch(workers, augment, seed=7):
        ds = EncryptedBatches(PixelSource(view, MEAN, STD), y, batches, 10, scheme=scheme, augment=augment,
                              augment_seed=seed, keys=lambda: KeyGenerator.from_seed("aug"),
                              public=PixelSource(pool, MEAN, STD))
        return [x for x, _ in batch_loader(ds, workers)]

    crop = Augment(padding=2, flip=True)
    same = epoch(0, crop), epoch(2, crop)
    assert all(torch.equal(a, b) for a, b in zip(*same))
    assert not all(torch.equal(a, b) for a, b in zip(same[0], epoch(0, None)))
    # augmenting only the private images: an augmentation that zeroes them leaves the public part
    zero = lambda x, generator=None: torch.zeros_like(x)  # noqa: E731
    ref = encrypt(torch.zeros(40, 3, 6, 5), y, **scheme, public=in_memory(pool), num_classes=10,
                  rows=batches[1].numpy(), generator=KeyGenerator.from_seed("aug").spawn(1))
    assert torch.equal(epoch(0, zero)[1], ref.images)
