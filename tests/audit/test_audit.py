"""`instahide audit` and `instahide attack`: the challenge built from a configuration, the attacks run on
it, the report; checked against the ground truth of small digits challenges (no download)."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
from instahide.audit import AuditConfig, run_attack, run_audit  # noqa: E402
from instahide.challenge import load_challenge, load_truth, make_challenge  # noqa: E402
from instahide.cli.main import main  # noqa: E402
from instahide.data import load_dataset  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", split="test")
    return ds.images[:12], ds.labels[:12]


def test_audit_mixup_unit_is_recovered_and_reported(tmp_path):
    """On unmasked Mixup with non-negative pixels demixing recovers the images: the report must say so."""
    cfg = AuditConfig.make(n_private=12, T=12, mode="mixup", scaling="unit", public_size=500,
                      attacks=("demix", "seed", "oracle"), research_seed=3)
    res = run_audit(cfg, tmp_path / "a", log=lambda m: None)
    by = {o.name: o for o in res.outcomes}
    # scores recomputed here from the decryption and the truth on disk (not the runner's numbers)
    truth = load_truth(tmp_path / "a" / "challenge-truth.npz")
    dec = np.load(tmp_path / "a" / "attacks" / "demix" / "decryption.npy").transpose(0, 3, 1, 2)
    from instahide.challenge import score

    assert score(dec, truth).max_ssim == pytest.approx(by["demix"].score.max_ssim)
    assert by["demix"].score.max_ssim > 0.8
    assert by["oracle"].score.max_ssim > 0.9 and by["oracle"].uses_truth
    assert by["seed"].decryption is None and by["seed"].info["seed_found"] is None
    md = (tmp_path / "a" / "report.md").read_text()
    assert f"Max_SSIM {by['demix'].score.max_ssim:.3f}" in md
    assert "secure" not in md.lower()
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "<table>" in html
    for name in ("ssim_distribution.png", "recovered_demix.png", "challenge/encryption.npy"):
        assert (tmp_path / "a" / name).is_file()
    # what an attacker is handed holds no secret
    text = (tmp_path / "a" / "challenge" / "meta.json").read_text()
    meta = json.loads(text)
    assert "research_seed" not in text and "seed" not in json.dumps(meta.get("private_source")) and sorted(p.name for p in (tmp_path / "a" / "challenge").iterdir()) == \
        ["encryption.npy", "label.npy", "meta.json"]


def test_mask_stops_demixing_in_the_same_audit(tmp_path):
    cfg = AuditConfig.make(n_private=12, T=12, mode="instahide", scaling="pm1", public_size=500,
                      attacks=("demix",), research_seed=3)
    res = run_audit(cfg, tmp_path / "b", formats=("md",), log=lambda m: None)
    assert res.outcomes[0].score.max_ssim < 0.3


def test_resume_reuses_challenge_and_results(tmp_path):
    cfg = AuditConfig.make(n_private=10, T=5, public=None, k=4, attacks=("demix", "seed"), research_seed=1)
    run_audit(cfg, tmp_path / "r", formats=("md",), log=lambda m: None)
    cid = json.loads((tmp_path / "r" / "challenge" / "meta.json").read_text())["challenge_id"]
    before = (tmp_path / "r" / "attacks" / "demix" / "outcome.json").stat().st_mtime_ns
    lines = []
    run_audit(cfg, tmp_path / "r", resume=True, formats=("md",), log=lines.append)
    assert json.loads((tmp_path / "r" / "challenge" / "meta.json").read_text())["challenge_id"] == cid
    assert (tmp_path / "r" / "attacks" / "demix" / "outcome.json").stat().st_mtime_ns == before
    assert any("reused the result" in m for m in lines) and any("reused" in m for m in lines[:1])
    with pytest.raises(ValueError, match="another configuration"):
        run_audit(AuditConfig.make(n_private=10, T=6, public=None, k=4, attacks=("demix",), research_seed=1),
                  tmp_path / "r", resume=True, formats=("md",), log=lambda m: None)


def test_legacy_keys_fall_to_the_seed_attack(tmp_path):
    cfg = AuditConfig.make(n_private=10, T=4, public_size=300, legacy=True, research_seed=4321,
                      attacks=("seed",), seed_range=(4000, 5000))
    res = run_audit(cfg, tmp_path / "l", formats=("md",), log=lambda m: None)
    out = res.outcomes[0]
    assert out.info["seed_found"] == 4321 == res.truth.legacy_seed
    assert out.score.max_ssim > 0.95


def test_augmented_rows_are_crops_and_flips_of_the_originals(digits):
    """k=1 inside-dataset Mixup: every row IS its image after a crop (padding 2) and a flip; check each row
    against all 2 x 25 candidates computed by a plain loop."""
    x, y = digits
    enc, _, truth = make_challenge(x, y, None, T=3, k=1, upper=1.0, mode="mixup", scaling="unit", augment_padding=2,
                                   augment_seed=5)
    n = len(x)
    img = torch.from_numpy(np.asarray(x)).float() / 255.0  # (n, 1, 8, 8)
    flips = 0
    for r in range(len(enc)):
        orig = img[r % n, 0]
        pad = torch.nn.functional.pad(orig, (2, 2, 2, 2))
        candidates = []
        for dy in range(5):
            for dx in range(5):
                crop = pad[dy:dy + 8, dx:dx + 8]
                candidates += [(crop, False), (crop.flip(-1), True)]
        errs = [float((c - torch.from_numpy(enc[r, 0])).abs().max()) for c, _ in candidates]
        j = int(np.argmin(errs))
        assert errs[j] < 1e-6
        flips += candidates[j][1]
    assert 0 < flips < len(enc)  # both orientations occur
    assert truth.params["augment"]["crop_padding"] == 2 and np.allclose(truth.private[:, 0], img[:, 0].numpy())


def test_bad_input_is_a_clear_error(tmp_path, digits):
    with pytest.raises(ValueError, match="unknown attack"):
        AuditConfig.make(attacks=("nope",)).validate()
    with pytest.raises(ValueError, match="too few images"):
        run_audit(AuditConfig.make(n_private=10_000, attacks=("demix",)), tmp_path / "x", log=lambda m: None)
    assert not (tmp_path / "x").exists()                  # a failed audit leaves no empty folder behind
    x, y = digits
    enc, lab, truth = make_challenge(x, y, None, T=2, k=4, research_seed=0)
    meta = dict(truth.params)
    with pytest.raises(ValueError, match="needs the ground truth"):
        run_attack("oracle", enc, lab, meta)
    with pytest.raises(ValueError, match="not a whole number of epochs"):
        run_attack("demix", enc[:-1], lab[:-1], meta)
    with pytest.raises(ValueError, match="label must be"):
        run_attack("demix", enc, lab[:-1], meta)
    with pytest.raises(ValueError, match="seed range"):
        run_attack("seed", enc, lab, meta, seed_range=(5, 5))


def test_cli_attack_and_audit(tmp_path, capsys):
    ch = tmp_path / "ch"
    assert main(["challenge", "make", "--dataset", "digits", "--n-private", "12", "--T", "12", "--mode", "mixup",
                 "--scaling", "unit", "--public-size", "500", "--research-seed", "3", "--out", str(ch)]) == 0
    assert main(["attack", "demix", "--challenge", str(ch), "--out", str(tmp_path / "d")]) == 0
    dec = np.load(tmp_path / "d" / "decryption.npy")
    assert dec.shape == (144, 8, 8, 1)
    scores = json.loads((tmp_path / "d" / "scores.json").read_text())["scores"]
    assert scores["Max_SSIM"] > 0.8 and (tmp_path / "d" / "recovered.png").is_file()
    # the oracle needs the truth: moving it away is an error naming the problem
    (tmp_path / "ch-truth.npz").rename(tmp_path / "elsewhere.npz")
    capsys.readouterr()
    assert main(["attack", "oracle", "--challenge", str(ch), "--out", str(tmp_path / "o")]) == 2
    assert "needs the ground truth" in capsys.readouterr().err
    assert main(["attack", "oracle", "--challenge", str(ch), "--truth", str(tmp_path / "elsewhere.npz"),
                 "--out", str(tmp_path / "o")]) == 0
    assert main(["attack", "demix", "--challenge", str(ch), "--out", str(tmp_path / "d")]) == 2  # no overwrite
    assert main(["audit", "--out", str(tmp_path / "au"), "--n-private", "8", "--T", "4", "--public", "none",
                 "--attacks", "demix", "--format", "md"]) == 0
    assert (tmp_path / "au" / "report.md").is_file() and not (tmp_path / "au" / "report.html").exists()


def test_cli_seed_attack_recovers_a_legacy_challenge_and_its_public_window(tmp_path, capsys):
    """`challenge make --legacy` then `attack seed` over a range holding the seed: every private image comes
    back (the window's public images are solved for alongside), with the search's progress on stderr."""
    ch = tmp_path / "legacy"
    assert main(["challenge", "make", "--dataset", "digits", "--n-private", "10", "--T", "6", "--legacy",
                 "--public-size", "200", "--research-seed", "2000123", "--out", str(ch)]) == 0
    capsys.readouterr()
    assert main(["attack", "seed", "--challenge", str(ch), "--seed-range", "1000000:3097152",
                 "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr()
    assert "seed: search" in out.err and "Max_SSIM 1.0000" in out.out
    outcome = json.loads((tmp_path / "s" / "outcome.json").read_text())
    assert outcome["info"]["seed_found"] == 2000123


def test_audit_runs_the_carlini_pipeline_on_disjoint_attacker_data(tmp_path):
    cfg = AuditConfig.make(n_private=10, T=10, public_size=300, attacks=("carlini",), research_seed=2,
                      carlini={"preset": "tiny"})
    res = run_audit(cfg, tmp_path / "c", formats=("md",), log=lambda m: None)
    out = res.outcomes[0]
    assert out.decryption.shape == res.truth.encryption_shape
    assert out.info["attacker"]["split"] == "train" and out.info["attacker"]["dataset"] == "digits"
    assert {"pairs", "clusters", "assignment"} <= set(out.info["per_step"])
    assert (tmp_path / "c" / "attacks" / "carlini" / "decryption.npy").is_file()
    with pytest.raises(ValueError, match="disjoint"):
        enc, lab, meta = load_challenge(tmp_path / "c" / "challenge")
        run_attack("carlini", enc, lab, meta, attacker_split="test")


def test_cli_gradient_inversion_recovers_what_was_trained_on(tmp_path, capsys):
    """Batch 1 on the LeNet: the eavesdropper gets the input back; under InstaHide the input is an
    encryption, much further from the private image than from what was trained on."""
    for mode in ("vanilla", "instahide"):
        out = tmp_path / mode
        assert main(["attack", "gradient-inversion", "--mode", mode, "--n", "1", "--steps", "600",
                     "--out", str(out)]) == 0
        s = json.loads((out / "scores.json").read_text())
        rec = np.load(out / "recovered.npy")
        assert rec.shape == (1, 8, 8, 1) and s["labels"] == "recovered from the gradient"
        # the client trains as `instahide train` does: |x| first under InstaHide, so only |input| is recoverable
        assert s["sign_invariant"] == (mode == "instahide")
        assert s["ssim_vs_input"] > 0.9
        if mode == "vanilla":
            assert s["max_ssim_vs_private"] > 0.9
        else:
            assert s["max_ssim_vs_private"] < s["ssim_vs_input"] - 0.3
    assert main(["attack", "gradient-inversion", "--n", "1", "--batch-size", "2", "--out", str(tmp_path / "x")]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_attack_list_names_exactly_the_commands_attack_offers(capsys):
    import argparse

    from instahide.cli.main import build_parser
    assert main(["attack", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["attack"]
    choices = next(a.choices for a in sub._actions if a.dest == "name")
    assert listed == [c for c in choices if c != "list"] == ["demix", "carlini", "fusion", "seed", "oracle",
                                                             "gradient-inversion"]
    described = sub.description.split("attacks:")[1]
    for name in listed:  # each is described under "attacks:" in --help
        assert f"\n  {name}" in described


def test_carlini_progress_is_the_progress_display_not_raw_dicts(tmp_path, capfd):
    cfg = AuditConfig.make(n_private=10, T=6, public_size=300, attacks=("carlini",), research_seed=2,
                           carlini={"preset": "tiny"})
    run_audit(cfg, tmp_path / "c", formats=("md",), log=lambda m: None)  # the challenge
    enc, lab, meta = load_challenge(tmp_path / "c" / "challenge")
    lines = []
    capfd.readouterr()
    run_attack("carlini", enc, lab, meta, truth=load_truth(tmp_path / "c" / "challenge-truth.npz"),
               preset="tiny", log=lines.append)
    err = capfd.readouterr().err
    assert "carlini: train [" in err and "ETA" in err  # the project's progress display (train.Progress)
    assert lines and all(line.startswith("carlini: ") for line in lines)
    assert not any("{" in line or "}" in line for line in lines + err.splitlines())
    assert any(line.startswith("carlini: pairs: ") for line in lines)
