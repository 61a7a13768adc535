"""instahide.challenge: generating a challenge in the published format, its truth file, and scoring."""
import argparse
import json
import os
import re
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
from instahide.challenge import (ChallengeTruth, default_truth_path, load_challenge, load_truth,  # noqa: E402
                                 make_challenge, save_truth, score, write_challenge)
from instahide.challenge import make as challenge_make  # noqa: E402
from instahide.cli import challenge_cmd  # noqa: E402
from instahide.cli._common import CLIError  # noqa: E402
from instahide.data import DIGITS_MEAN, DIGITS_STD, load_dataset, load_public_pool  # noqa: E402
from instahide.report import write_score_report  # noqa: E402
from instahide.scheme import LegacyGenerator, apply_key, encrypt  # noqa: E402

N_PRIVATE, T, POOL = 20, 4, 150


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", split="test").subset(slice(0, N_PRIVATE))
    pool = load_public_pool("builtin", n=POOL, size=(8, 8), channels=1, seed=0)
    return ds, pool


@pytest.fixture(scope="module")
def challenge(digits):
    ds, pool = digits
    return make_challenge(ds.images, ds.labels, pool.images, T=T, research_seed=123)


def nchw(x):
    return torch.from_numpy(x)


def nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def test_shapes_order_and_labels(challenge, digits):
    enc, lab, truth = challenge
    ds, _ = digits
    n = N_PRIVATE
    assert enc.shape == (n * T, 1, 8, 8) and enc.dtype == np.float32
    assert lab.shape == (n * T, 10) and lab.dtype == np.float32
    assert truth.N == n * T and truth.T == T and truth.k == 6 and truth.num_private == 2
    # epoch-major: row t*n + i has private image i in slot 1, and fresh keys every epoch
    assert np.array_equal(truth.indices[:, 0], np.tile(np.arange(n), T))
    assert not np.allclose(truth.coefficients[:n], truth.coefficients[n:2 * n])
    assert (truth.indices[:, 1] < n).all() and (truth.indices[:, 2:] < POOL).all()
    # labels: lambda_1 e_{y1} + lambda_2 e_{y2}, recomputed from the truth
    expected = np.zeros_like(lab)
    rows = np.arange(len(lab))
    for j in (0, 1):
        np.add.at(expected, (rows, ds.labels[truth.indices[:, j]]), truth.coefficients[:, j])
    np.testing.assert_allclose(lab, expected, atol=1e-6)
    assert (lab.sum(1) >= 0.3 - 1e-6).all() and (truth.coefficients.max(1) <= 0.65 + 1e-6).all()
    # pm1 units, and the key in the truth recomputes every encryption exactly
    assert truth.scaling == "pm1" and truth.data_range == 2.0 and truth.legacy_seed == -1
    np.testing.assert_array_equal(truth.private, ds.images / np.float32(127.5) - 1)
    again = apply_key(nchw(truth.private), truth.key(), public=nchw(truth.public))
    np.testing.assert_array_equal(again.numpy(), enc)


def test_research_seed_reproduces_and_entropy_does_not(digits, challenge):
    ds, pool = digits
    enc, _, truth = challenge
    enc2, _, truth2 = make_challenge(ds.images, ds.labels, pool.images, T=T, research_seed=123)
    assert np.array_equal(enc, enc2) and np.array_equal(truth.mask_bits, truth2.mask_bits)
    enc3, _, truth3 = make_challenge(ds.images, ds.labels, pool.images, T=T)
    assert not np.array_equal(enc, enc3)
    assert truth3.params["key_origin"] == "os-entropy" and truth3.params["research_seed"] is None


def test_files_truth_apart_and_loadable(tmp_path, challenge):
    enc, lab, truth = challenge
    out = tmp_path / "chal"
    paths = write_challenge(out, enc, lab, truth)
    assert sorted(p.name for p in out.iterdir()) == ["encryption.npy", "label.npy", "meta.json"]
    assert paths["truth"] == tmp_path / "chal-truth.npz" == default_truth_path(out)
    assert np.array_equal(np.load(out / "encryption.npy"), nhwc(enc)) and np.array_equal(np.load(out / "label.npy"), lab)
    enc_back, lab_back, meta_back = load_challenge(out)
    assert np.array_equal(enc_back, enc) and np.array_equal(lab_back, lab) and meta_back["k"] == 6
    meta = json.loads((out / "meta.json").read_text())
    assert meta["T"] == T and meta["k"] == 6 and meta["scaling"] == "pm1" and meta["data_range"] == 2.0
    assert "research_seed" not in meta and 123 not in meta.values()
    back = load_truth(paths["truth"])
    assert isinstance(back, ChallengeTruth) and back.params == truth.params
    for name in ("private", "private_labels", "indices", "coefficients", "mask_bits", "public"):
        assert np.array_equal(getattr(back, name), getattr(truth, name)), name
    assert back.indices.dtype == np.int64 and back.coefficients.dtype == np.float32
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_challenge(out, enc, lab, truth)
    with pytest.raises(ValueError, match="inside .*handed to attackers"):
        write_challenge(tmp_path / "x", enc, lab, truth, truth_path=tmp_path / "x" / "truth.npz")


def test_bad_truth_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ground-truth file"):
        load_truth(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an instahide challenge truth file"):
        load_truth(tmp_path / "other.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read ground-truth file"):
        load_truth(tmp_path / "obj.npy")


def test_scoring_the_truth_and_noise(challenge):
    enc, _, truth = challenge
    res = score(truth.private[truth.indices[:, 0]], truth)
    assert res.max_ssim == pytest.approx(1.0, abs=1e-12) and res.best_l2 == pytest.approx(0.0, abs=1e-12)
    assert res.share_above == 1.0 and np.allclose(res.per_private_best_ssim, 1.0)
    assert res.mean_ssim < 1 and res.mean_l2 > 0  # the other image of the pair differs
    np.testing.assert_allclose(res.mean_ssim, np.mean((res.ssim1 + res.ssim2) / 2))
    slot2 = score(torch.from_numpy(truth.private[truth.indices[:, 1]]), truth)  # torch input works too
    assert slot2.max_ssim == pytest.approx(1.0, abs=1e-12)
    noise = np.random.default_rng(0).uniform(-1, 1, enc.shape).astype(np.float32)
    low = score(noise, truth)
    assert low.max_ssim < 0.2 and low.share_above == 0.0 and low.best_l2 > 0.5
    assert score(enc, truth).max_ssim < 0.5  # the encryption itself is no decryption
    assert set(res.summary()) >= {"Max_SSIM", "Mean_SSIM", "Best_L2", "Mean_L2", "share_max_ssim_above_0.8"}


def test_scoring_errors_are_named(challenge):
    enc, _, truth = challenge
    with pytest.raises(ValueError, match=r"wrong decryption shape \(80, 8, 8\).*\(80, 1, 8, 8\)"):
        score(enc[:, 0], truth)
    with pytest.raises(ValueError, match="wrong decryption shape"):
        score(nhwc(enc), truth)
    with pytest.raises(ValueError, match="mismatched ground truth: the decryption has 60 rows"):
        score(enc[:60], truth)
    bad = enc.copy()
    bad[7, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf in 1 row\(s\), first rows \[7\]"):
        score(bad, truth)
    bad[7, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        score(bad, truth)
    with pytest.raises(TypeError, match="must be float"):
        score(enc.astype(np.int32), truth)


def test_score_report_files(tmp_path, challenge, monkeypatch):
    enc, _, truth = challenge
    noise = np.random.default_rng(1).standard_normal(enc.shape, np.float32)
    dec = truth.private[truth.indices[:, 0]] + np.float32(0.2) * noise
    res = score(dec, truth)
    paths = write_score_report(res, tmp_path / "rep", dec, truth)
    lines = (tmp_path / "rep" / "rows.csv").read_text().splitlines()
    assert lines[0] == "row,p1,p2,ssim1,ssim2,max_ssim,l2_1,l2_2" and len(lines) == truth.N + 1
    row = lines[5].split(",")
    assert int(row[1]) == truth.indices[4, 0] and float(row[5]) == pytest.approx(res.row_max_ssim[4], abs=1e-6)
    report = json.loads((tmp_path / "rep" / "scores.json").read_text())
    assert report["scores"]["Max_SSIM"] == pytest.approx(res.max_ssim)
    assert len(report["per_private_best_ssim"]) == N_PRIVATE and "research_seed" not in report["challenge"]
    assert paths["picture"].stat().st_size > 1000
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(UserWarning, match="best_worst.png skipped"):
        paths = write_score_report(res, tmp_path / "rep2", dec, truth)
    assert "picture" not in paths and (tmp_path / "rep2" / "rows.csv").exists()


def test_legacy_window_and_replay(digits):
    ds, pool = digits
    enc, lab, truth = make_challenge(ds.images, ds.labels, pool.images, T=3, legacy=True, research_seed=77)
    assert truth.legacy_seed == 77 and truth.params["key_origin"] == "legacy-seed"
    assert (truth.indices[:, 2:] < N_PRIVATE).all()  # public window: the pool's first n rows only
    enc2, _, truth2 = make_challenge(ds.images, ds.labels, pool.images, T=3, legacy=True, research_seed=77)
    assert np.array_equal(enc, enc2) and np.array_equal(truth.indices, truth2.indices)
    # the reference's globals: one generator whose streams continue across epochs
    gen = LegacyGenerator(77)
    x = torch.from_numpy(ds.images).float() / 127.5 - 1
    p = torch.from_numpy(pool.images).float() / 127.5 - 1
    replay = torch.cat([encrypt(x, torch.from_numpy(ds.labels), k=6, public=p, num_classes=10, generator=gen,
                                legacy=True).images for _ in range(3)])
    np.testing.assert_array_equal(replay.numpy(), enc)
    from instahide.challenge import challenge_meta

    meta = challenge_meta(truth)
    assert meta["legacy"] and "legacy_seed" not in meta and 77 not in meta.values()


def test_scalings(digits):
    ds, pool = digits
    enc, _, truth = make_challenge(ds.images, ds.labels, pool.images, T=2, scaling="unit", research_seed=1)
    assert truth.data_range == 1.0 and truth.params["mask_hides_nothing"] and "hides NOTHING" in truth.params["warning"]
    mix = apply_key(nchw(truth.private), truth.key().unmasked(), public=nchw(truth.public))
    np.testing.assert_allclose(np.abs(enc), mix.numpy(), atol=1e-6)  # |e| is the mixture
    with pytest.raises(ValueError, match="needs the private set's mean= and std="):
        make_challenge(ds.images, ds.labels, pool.images, T=1, scaling="normalize")
    _, _, truth = make_challenge(ds.images, ds.labels, pool.images, T=1, scaling="normalize", mean=DIGITS_MEAN,
                                 std=DIGITS_STD, research_seed=1)
    assert truth.data_range == pytest.approx(1 / DIGITS_STD[0])
    np.testing.assert_allclose(truth.private[:, 0], (ds.images[:, 0] / 255 - DIGITS_MEAN[0]) / DIGITS_STD[0],
                               atol=1e-5)
    assert score(truth.private[truth.indices[:, 0]], truth).max_ssim == pytest.approx(1.0)


def test_inside_dataset_mixup_and_one_private_slot(digits):
    ds, pool = digits
    enc, _, truth = make_challenge(ds.images, ds.labels, None, T=2, k=4, mode="mixup", research_seed=2)
    assert truth.num_private == 4 and truth.mask_bits is None and truth.public is None
    assert truth.params["dom"] is None
    _, _, truth1 = make_challenge(ds.images, ds.labels, pool.images, T=2, k=3, num_private=1, research_seed=3)
    res = score(truth1.private[truth1.indices[:, 0]], truth1)
    assert np.array_equal(res.p1, res.p2) and res.mean_ssim == pytest.approx(1.0) and "num_private=1" in res.notes[0]


@pytest.mark.parametrize("change,error,message", [
    (dict(private_images=np.zeros((4, 1, 8, 8), np.float32)), TypeError, "must be uint8 pixels"),
    (dict(private_images=np.zeros((4, 8, 8), np.uint8)), ValueError, r"expected \(N, C, H, W\)"),
    (dict(private_labels=np.zeros(3, np.int64)), ValueError, "4 private images but private_labels"),
    (dict(T=0), ValueError, "T .* must be an integer >= 1"),
    (dict(scaling="minmax"), ValueError, "unknown scaling 'minmax'"),
    (dict(public=np.zeros((50, 3, 8, 8), np.uint8)), ValueError, "public images are"),
    (dict(num_classes=2), ValueError, r"labels must lie in \[0, 2\)"),
])
def test_make_errors(digits, change, error, message):
    ds, pool = digits
    kw = dict(private_images=ds.images[:4], private_labels=ds.labels[:4], public=pool.images, T=1, research_seed=0)
    kw.update(change)
    with pytest.raises(error, match=message):
        make_challenge(**kw)


# -- command line -----------------------------------------------------------------------------------------
def cli(argv):
    parser = argparse.ArgumentParser(prog="instahide")
    challenge_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_make_and_score_round_trip(tmp_path, capsys):
    out = tmp_path / "tiny"
    make = ["challenge", "make", "--dataset", "digits", "--n-private", "12", "--T", "3", "--public-size", "100",
            "--research-seed", "5", "--out", str(out)]
    assert cli(make) == 0
    assert sorted(p.name for p in out.iterdir()) == ["encryption.npy", "label.npy", "meta.json"]
    assert "ground truth" in capsys.readouterr().out
    truth = load_truth(tmp_path / "tiny-truth.npz")
    meta = json.loads((out / "meta.json").read_text())
    assert truth.N == 36 and meta["private_source"]["selection"] == "first 12" and meta["public_source"]["size"] == 100
    assert meta["challenge_id"] == truth.params["challenge_id"]
    np.save(tmp_path / "dec.npy", nhwc(truth.private[truth.indices[:, 1]]))
    assert cli(["challenge", "score", "--challenge", str(out), "--decryption", str(tmp_path / "dec.npy"),
                "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    assert "Max_SSIM 1.0000" in text and (tmp_path / "rep" / "scores.json").exists()
    assert cli(["challenge", "score", "--truth", str(tmp_path / "tiny-truth.npz"), "--decryption",
                str(tmp_path / "dec.npy")]) == 0
    with pytest.raises(CLIError, match="refusing to overwrite"):
        cli(make)
    with pytest.raises(CLIError, match="refusing to overwrite"):
        cli(["challenge", "score", "--challenge", str(out), "--decryption", str(tmp_path / "dec.npy"),
             "--out", str(tmp_path / "rep")])
    # a truth file from another challenge is refused
    other = tmp_path / "other"
    assert cli(make[:-1] + [str(other)]) == 0
    with pytest.raises(CLIError, match="mismatched ground truth: .* belongs to challenge"):
        cli(["challenge", "score", "--challenge", str(out), "--truth", str(tmp_path / "other-truth.npz"),
             "--decryption", str(tmp_path / "dec.npy")])


def test_cli_errors(tmp_path):
    with pytest.raises(CLIError, match="--dataset cifar10 needs --root PATH"):
        cli(["challenge", "make", "--out", str(tmp_path / "c")])
    with pytest.raises(CLIError, match="--n-private 5000 is more than the 359 images"):
        cli(["challenge", "make", "--dataset", "digits", "--n-private", "5000", "--out", str(tmp_path / "c")])
    with pytest.raises(CLIError, match="give --challenge DIR .* or --truth FILE"):
        cli(["challenge", "score", "--decryption", "x.npy"])
    with pytest.raises(CLIError, match="no ground-truth file"):
        cli(["challenge", "score", "--challenge", str(tmp_path / "none"), "--decryption", "x.npy"])
    assert cli(["challenge", "make", "--dataset", "digits", "--n-private", "10", "--T", "2", "--public", "none",
                "--k", "4", "--legacy", "--out", str(tmp_path / "c")]) == 0
    truth = load_truth(tmp_path / "c-truth.npz")
    assert 0 <= truth.legacy_seed < 2 ** 32 and truth.num_private == 4
    with pytest.raises(CLIError, match="no decryption at"):
        cli(["challenge", "score", "--challenge", str(tmp_path / "c"), "--decryption", str(tmp_path / "x.npy")])
    np.save(tmp_path / "short.npy", np.zeros((5, 8, 8, 1), np.float32))
    with pytest.raises(CLIError, match="mismatched ground truth: the decryption has 5 rows"):
        cli(["challenge", "score", "--challenge", str(tmp_path / "c"), "--decryption", str(tmp_path / "short.npy")])


@pytest.mark.parametrize("change,message", [
    ({"T": T + 1}, r"'n_private' x 'T' = 20 x 5 = 100 rows, but encryption.npy has 80"),
    ({"rows": 81}, "'rows' is 81 but encryption.npy has 80 rows"),
    ({"k": "six"}, "'k' must be a whole number >= 1, got 'six'"),
    ({"T": 2.5}, "'T' must be a whole number"),
    ({"n_private": True}, "'n_private' must be a whole number"),
    ({"n_private": 0}, "'n_private' must be a whole number >= 1, got 0"),
    ({"n_private": 30, "T": None}, "encryption.npy's 80 rows are not a whole number of epochs of 'n_private' = 30"),
    ({"num_private": 7}, r"'num_private' \(7\) is more than 'k' \(6\)"),
    ({"num_classes": 3}, "'num_classes' is 3 but label.npy has 10 columns"),
    ({"mode": "secret"}, "'mode' must be one of"),
    ({"upper": "high"}, "'upper' must be a finite number"),
    ({"image_shape_hwc": [9, 9, 1]}, "'image_shape_hwc' is"),
])
def test_a_meta_json_that_contradicts_itself_or_the_arrays_names_the_file_and_field(tmp_path, capsys, challenge, change,
                                                                                    message):
    from instahide.cli.main import main

    enc, lab, truth = challenge
    out = tmp_path / "chal"
    write_challenge(out, enc, lab, truth)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(ValueError, match=f"chal/meta.json: {message}"):  # was accepted, and the attacks ran on it
        load_challenge(out)
    assert main(["attack", "demix", "--challenge", str(out), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert re.search(f"chal/meta.json: {message}", err) and "Traceback" not in err and not (tmp_path / "d").exists()


def test_meta_json_whole_floats_are_read_as_counts_and_other_shapes_are_refused(tmp_path, challenge):
    enc, lab, truth = challenge
    out = tmp_path / "chal"
    write_challenge(out, enc, lab, truth)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "T": float(T)}))
    assert load_challenge(out)[2]["T"] == T and isinstance(load_challenge(out)[2]["T"], int)
    (out / "meta.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="meta.json: expected a JSON object"):
        load_challenge(out)
    (out / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="cannot read .*meta.json"):
        load_challenge(out)
    (out / "meta.json").write_text(json.dumps(meta))
    np.save(out / "label.npy", lab[:-1])
    with pytest.raises(ValueError, match=r"label.npy has shape \(79, 10\), expected \(80, classes\)"):
        load_challenge(out)


def test_save_truth_round_trip_without_optional_fields(tmp_path, digits):
    ds, _ = digits
    _, _, truth = make_challenge(ds.images, ds.labels, None, T=1, k=2, mode="mixup", research_seed=4)
    save_truth(tmp_path / "t.npz", truth)
    back = load_truth(tmp_path / "t.npz")
    assert back.mask_bits is None and back.public is None and back.num_private == 2


# -- reliability: what is handed out, file modes, bad paths ------------------------------------------------
def test_truth_is_owner_only_and_meta_names_no_local_path(tmp_path, digits):
    """Data read through a symlinked folder: meta.json (handed to attackers) names neither that folder,
    its resolved target nor the machine; the truth file keeps the source and is readable by its owner only."""
    ds, pool = digits
    real = tmp_path / "real"
    real.mkdir()
    np.savez(real / "priv.npz", images=ds.images, labels=ds.labels)
    np.save(real / "pool.npy", pool.images[:60])
    (tmp_path / "link").symlink_to(real)
    link = tmp_path / "link"
    assert cli(["challenge", "make", "--dataset", "arrays", "--root", str(link / "priv.npz"), "--n-private", "10",
                "--T", "2", "--public", str(link / "pool.npy"), "--public-size", "50", "--out", str(link / "c")]) == 0
    assert (real / "c-truth.npz").stat().st_mode & 0o777 == 0o600
    text = (real / "c" / "meta.json").read_text()
    for local in (str(tmp_path), os.path.realpath(tmp_path), os.uname().nodename):
        assert local not in text
    meta = json.loads(text)  # what an attacker legitimately knows stays
    assert (meta["k"], meta["T"], meta["mode"], meta["scaling"], meta["image_shape_hwc"]) == (6, 2, "instahide", "pm1",
                                                                                              [8, 8, 1])
    assert meta["public_source"]["source"] == "local files" and "root" not in meta["private_source"]
    assert load_truth(real / "c-truth.npz").params["private_source"]["root"] == str(link / "priv.npz")


def test_cli_bad_truth_and_out_are_one_line_errors(tmp_path, challenge):
    np.save(tmp_path / "t.npy", np.zeros((3, 3), np.float32))
    with pytest.raises(CLIError, match=r"t\.npy is a single array") as err:
        cli(["challenge", "score", "--truth", str(tmp_path / "t.npy"), "--decryption", "x.npy"])
    assert "\n" not in str(err.value)
    (tmp_path / "file").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    make = ["challenge", "make", "--dataset", "digits", "--n-private", "4", "--T", "1", "--public", "none", "--k", "2"]
    for out in (tmp_path / "file", tmp_path / "file" / "c"):
        with pytest.raises(CLIError) as err:
            cli(make + ["--out", str(out)])
        assert "\n" not in str(err.value) and "file" in str(err.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind


def test_failed_rewrite_leaves_the_old_challenge(tmp_path, challenge, monkeypatch):
    enc, lab, truth = challenge
    out = tmp_path / "c"
    write_challenge(out, enc, lab, truth)
    old = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(challenge_make, "save_truth", boom)
    with pytest.raises(OSError, match="disk full"):
        write_challenge(out, -enc, lab, truth, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "c-truth.npz"]  # no temporary folder left


def _legacy_structure(indices: np.ndarray, n: int, T: int, num_private: int):  # noqa: N803
    """The reference code's structure, checked with plain loops: in every epoch every slot after the
    first is a permutation of range(n) (private partners index the private set, public partners the
    pool's first n rows, the window); returns the per-image public counts and the self-mixed rows."""
    counts, self_mixed = {}, 0
    for t in range(T):
        rows = indices[t * n:(t + 1) * n]
        assert list(rows[:, 0]) == list(range(n))  # epoch-major: row t*n + i encrypts image i
        for j in range(1, indices.shape[1]):
            assert sorted(rows[:, j].tolist()) == list(range(n)), (t, j)  # one torch.randperm(n) per slot
        for i in range(n):
            self_mixed += int(any(rows[i, j] == i for j in range(1, num_private)))
            for j in range(num_private, indices.shape[1]):
                counts[int(rows[i, j])] = counts.get(int(rows[i, j]), 0) + 1
    return counts, self_mixed


def test_legacy_recurrence_matches_the_reference_structure(digits):
    ds, pool = digits
    t_epochs = 12
    _, _, truth = make_challenge(ds.images, ds.labels, pool.images, T=t_epochs, legacy=True, research_seed=5)
    counts, self_mixed = _legacy_structure(truth.indices, N_PRIVATE, t_epochs, 2)
    # the window: only the pool's first n rows, each in exactly (k - 2) slots per epoch
    assert sorted(counts) == list(range(N_PRIVATE)) and set(counts.values()) == {4 * t_epochs}
    assert self_mixed > 0  # defect 2: a permutation has fixed points (an image mixed with itself)
    # the fixed default draws from the whole pool instead: many more distinct public images
    _, _, fixed = make_challenge(ds.images, ds.labels, pool.images, T=t_epochs, research_seed=5)
    assert len(np.unique(fixed.indices[:, 2:])) > 3 * N_PRIVATE


def test_legacy_cli_at_the_published_size(tmp_path):
    """`challenge make --legacy` at the published 100 x 50 (digits: no download): 5,000 rows whose
    public partners are 100 recurring pool images, each in exactly 4 * 50 = 200 rows."""
    assert cli(["challenge", "make", "--dataset", "digits", "--legacy", "--public-size", "400",
                "--out", str(tmp_path / "c")]) == 0
    truth = load_truth(tmp_path / "c-truth.npz")
    assert truth.N == 5000 and truth.T == 50 and truth.k == 6 and truth.num_private == 2
    counts, _ = _legacy_structure(truth.indices, 100, 50, 2)
    assert sorted(counts) == list(range(100)) and set(counts.values()) == {200}
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["legacy"] and "first 100 rows" in meta["public_window"]


# -- second round (issue 22) -----------------------------------------------------------------------
def test_cli_make_hands_out_no_folder_or_class_names(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    root = tmp_path / "Jane Doe 1970-01-01"
    for i in range(12):
        folder = root / ("tumour" if i % 2 else "healthy")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    make = ["challenge", "make", "--dataset", "folder", "--root", str(root), "--split", "train", "--n-private", "12",
            "--T", "2", "--public", "none", "--k", "2", "--research-seed", "3"]
    assert cli(make + ["--out", str(tmp_path / "c")]) == 0
    text = (tmp_path / "c" / "meta.json").read_text()
    for private in ("Jane", "tumour", "healthy"):   # was "dataset": "folder-Jane Doe ...", "classes": [...]
        assert private not in text, private
    source = json.loads(text)["private_source"]
    assert source["dataset"] == "folder" and source["classes"] == ["class-0", "class-1"]
    assert cli(make + ["--out", str(tmp_path / "p"), "--publish-class-names"]) == 0
    source = json.loads((tmp_path / "p" / "meta.json").read_text())["private_source"]
    assert source["classes"] == ["healthy", "tumour"] and "Jane" not in json.dumps(source)


@pytest.mark.parametrize("argv,message", [
    (["--mode", "instahyde"], "unknown mode 'instahyde'"),
    (["--k", "1", "--public", "none"], "--k 1 mixes each image with nothing"),
    (["--legacy", "--research-seed", "4294967296"], "--research-seed 4294967296 is out of range for --legacy"),
    (["--research-seed", "-3"], "--research-seed must be >= 0"),
    (["--T", "0"], "--T must be >= 1"),
])
def test_cli_make_checks_arguments_before_the_output(tmp_path, argv, message):
    make = ["challenge", "make", "--dataset", "digits", "--n-private", "10", "--T", "2", "--public-size", "100",
            "--out", str(tmp_path / "c")]
    assert cli(make) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    with pytest.raises(CLIError, match=re.escape(message)):   # was "refusing to overwrite" for a bad --mode
        cli(make + argv)
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before


@pytest.mark.parametrize("fault", ["folder-swap", "truth-rename"])
def test_a_failure_after_the_truth_is_written_keeps_the_old_pair(tmp_path, challenge, monkeypatch, fault):
    from instahide import _io

    enc, lab, truth = challenge
    out = tmp_path / "c"
    write_challenge(out, enc, lab, truth)
    old, old_truth = {p.name: p.read_bytes() for p in out.iterdir()}, (tmp_path / "c-truth.npz").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("injected")

    if fault == "folder-swap":
        monkeypatch.setattr(_io, "_exchange", boom)
    else:
        real = os.replace
        monkeypatch.setattr(_io.os, "replace",
                            lambda a, b, **kw: boom() if str(b).endswith("c-truth.npz") else real(a, b, **kw))
    other = ChallengeTruth(**{**truth.__dict__, "params": {**truth.params, "challenge_id": "new"}})
    with pytest.raises(OSError, match="injected"):
        write_challenge(out, -enc, lab, other, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old          # was: the new truth, the old folder
    assert (tmp_path / "c-truth.npz").read_bytes() == old_truth
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "c-truth.npz"]
