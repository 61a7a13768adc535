"""The audit reports the strongest attack: Luo et al.'s fusion on Carlini et al.'s clusters, the best
recovery of every private image over all the attacks that used no secret (checked against SSIMs computed
here, independently, with the metrics module), headline numbers that are the JSON's, the oracle named
as the least-squares bound with the true keys, a short Carlini section, and --attacker-public reaching
the attacks. Small digits challenges (no download), seconds each."""
import csv
import json
import re

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")
from instahide.audit import AuditConfig, attacks as audit_attacks, run_attack, run_audit  # noqa: E402
from instahide.audit.attacks import _fusion_steps  # noqa: E402
from instahide.challenge import load_challenge, load_truth  # noqa: E402
from instahide.cli.main import main  # noqa: E402
from instahide.data import load_public_pool  # noqa: E402
from instahide.metrics import ssim  # noqa: E402

ATTACKS = ("fusion", "demix", "carlini", "oracle")  # fusion first on purpose: the audit runs it after carlini


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("best") / "a"
    cfg = AuditConfig.make(n_private=10, T=8, public_size=300, attacks=ATTACKS, research_seed=7, distractors=100,
                           carlini={"preset": "tiny"}, fusion={"steps": 60, "time_s": None})
    return run_audit(cfg, out, log=lambda m: None), out


def _independent_per_image(out, truth, name) -> np.ndarray:
    """Each private image's best SSIM over the rows holding it in slot 1 or 2, from decryption.npy on disk
    and the truth, with instahide.metrics.ssim and a plain loop (not the scorer)."""
    dec = np.load(out / "attacks" / name / "decryption.npy").transpose(0, 3, 1, 2).astype(np.float64)
    best = np.full(truth.n, np.nan)
    for slot in (0, 1):
        p = truth.pairs[:, slot]
        s = ssim(dec, truth.private[p].astype(np.float64), data_range=truth.data_range, reduction="none").numpy()
        for r in range(len(dec)):
            if np.isnan(best[p[r]]) or s[r] > best[p[r]]:
                best[p[r]] = s[r]
    return best


def test_fusion_runs_on_carlinis_clusters(audit):
    res, out = audit
    names = [o.name for o in res.outcomes]
    assert set(names) == set(ATTACKS) and names.index("fusion") > names.index("carlini")
    by = {o.name: o for o in res.outcomes}
    fusion, carlini = by["fusion"], by["carlini"]
    assert fusion.decryption.shape == res.truth.encryption_shape and not fusion.uses_truth
    # the groups it decoded are the clusters carlini saved next to its result
    from instahide.audit import load_groups
    saved = load_groups(out / "attacks" / "carlini")
    assert [g.tolist() for g in saved] == [g.tolist() for g in carlini.groups] == [g.tolist() for g in fusion.groups]
    assert fusion.info["groups"] == len(saved) and fusion.info["train"]["steps"] == 60
    # each row's decryption is the image of a group holding it (fusion_attack's rule), or any group's
    rec = fusion.recovered
    for r in range(0, len(fusion.decryption), 7):
        holding = [j for j, g in enumerate(saved) if r in set(g.tolist())] or range(len(saved))
        assert any(np.array_equal(fusion.decryption[r], rec[j]) for j in holding)


def test_best_over_attacks_is_the_elementwise_max_of_independent_per_image_scores(audit):
    res, out = audit
    truth = load_truth(out / "challenge-truth.npz")
    records = {n: json.loads((out / "attacks" / n / "outcome.json").read_text()) for n in ATTACKS}
    free = [n for n in ATTACKS if not records[n]["uses_truth"] and records[n]["decryption"]]
    assert sorted(free) == ["carlini", "demix", "fusion"]  # the oracle used the true keys: not an attack
    per = {n: _independent_per_image(out, truth, n) for n in free}
    expected = np.nanmax(np.stack([per[n] for n in free]), 0)
    best = json.loads((out / "summary.json").read_text())["best_over_attacks"]
    assert sorted(best["attacks"]) == sorted(free)
    got = np.array(best["per_image"]["ssim"], dtype=np.float64)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    for i, name in enumerate(best["per_image"]["attack"]):  # the attack named gave that score, at that row
        assert per[name][i] == pytest.approx(expected[i], abs=1e-6)
        row = best["per_image"]["row"][i]
        assert i in truth.pairs[row]
    # the spread is the spread of those values
    im = best["images"]
    assert im["median"] == pytest.approx(np.median(expected))
    assert (im["p10"], im["p90"]) == pytest.approx((np.percentile(expected, 10), np.percentile(expected, 90)))
    assert im["above"]["0.5"] == pytest.approx(np.mean(expected > 0.5))
    assert im["above"]["0.8"] == pytest.approx(np.mean(expected > 0.8))
    assert sum(best["wins"].values()) == truth.n
    # per row: each row's best attack, averaged; the per-row figure is never the per-image one
    rows = np.max([res_o.score.row_max_ssim for res_o in res.outcomes if res_o.name in free], 0)
    assert best["per_row"]["max_ssim"] == pytest.approx(rows.mean())
    # the CSV holds the same
    with open(out / "best_per_image.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["best_ssim"]) for r in table] == pytest.approx(expected.tolist(), abs=1e-5)
    assert [r["attack"] for r in table] == best["per_image"]["attack"]


def test_headline_numbers_are_the_jsons_and_say_per_image_and_per_row(audit):
    res, out = audit
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best_over_attacks"]
    md = (out / "report.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("**Best recovery of each private image**"))
    assert head == best["text"]
    im, n = best["images"], res.truth.n
    assert f"median SSIM {im['median']:.3f}" in head
    assert f"10th-90th percentile {im['p10']:.3f}-{im['p90']:.3f}" in head
    assert f"{round(im['above']['0.5'] * n)} ({im['above']['0.5']:.0%}) of the {n} images above 0.5" in head
    assert f"{round(im['above']['0.8'] * n)} ({im['above']['0.8']:.0%}) above 0.8" in head
    assert "**Per row**" in head and f"{best['per_row']['max_ssim']:.3f}" in head
    top = max(best["per_attack"], key=lambda a: best["per_attack"][a]["rows"]["max_ssim"])
    assert f"{top}, has Max_SSIM {summary['attacks'][top]['score']['Max_SSIM']:.3f}" in head
    # the control (knows nothing) is beside it, from the JSON
    control = summary["controls"]["attacker's mean image"]
    assert f"median image SSIM of {control['images']['median']:.3f}" in head
    # ... and how many images the best recovery beats it on, recomputed here: the control is one picture
    # (the mean of the attacker's digits train images in [-1, 1]) for every row
    from instahide.data import load_dataset
    truth = load_truth(out / "challenge-truth.npz")
    mean = (load_dataset("digits", split="train").images[:5000].astype(np.float64) / 127.5 - 1).mean(0)
    control_per_image = ssim(np.repeat(mean[None], n, 0), truth.private.astype(np.float64),
                             data_range=truth.data_range, reduction="none").numpy()
    assert control["images"]["median"] == pytest.approx(np.median(control_per_image), abs=1e-5)
    above = int(np.sum(np.array(best["per_image"]["ssim"], dtype=np.float64) > control_per_image))
    assert best["above_control"]["attacker's mean image"] == above
    assert f"beats it on {above} of the {n} images" in head
    # the per-image table's "best of all" row carries the same numbers
    row = next(line for line in md.splitlines() if line.startswith("| best of all 3 attacks"))
    assert row.split(" | ")[1:4] == [f"{im['median']:.3f}", f"{im['p10']:.3f}", f"{im['p90']:.3f}"]
    # the per-row table labels its columns as per row
    assert "| Max_SSIM (per row, mean) |" in md and "## Per private image" in md
    assert "secure" not in md.lower() and "secure" not in json.dumps(summary).lower()


def test_the_oracle_is_the_least_squares_bound_not_an_upper_bound_on_every_attack(audit, capsys):
    res, out = audit
    md = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert "bound of that family of reconstructions" in md and "not an upper bound on every attack" in md
    assert "upper bound for" not in md and "(upper bound)" not in md
    scores = summary["attacks"]
    for b in summary["oracle"]["exceeded_by"]:  # every "exceeds" claim is true in the JSON
        assert b["attack_value"] > b["oracle_value"]
        if b["measure"] == "Max_SSIM":
            assert scores[b["attack"]]["score"]["Max_SSIM"] == b["attack_value"] > scores["oracle"]["score"]["Max_SSIM"]
        assert b["text"] in md
    free = [o for o in res.outcomes if not o.uses_truth and o.score is not None]
    oracle = next(o for o in res.outcomes if o.name == "oracle")
    claimed = {(b["attack"], b["measure"]) for b in summary["oracle"]["exceeded_by"]}
    for o in free:  # and none is missed on Max_SSIM
        assert ((o.name, "Max_SSIM") in claimed) == (o.score.max_ssim > oracle.score.max_ssim)
    assert main(["attack", "list"]) == 0
    listed = capsys.readouterr().out
    oracle_line = next(line for line in listed.splitlines() if line.startswith("oracle"))
    assert "upper bound" not in oracle_line and "TRUE keys" in oracle_line


def test_carlini_section_holds_the_few_facts_and_the_json_the_rest(audit):
    res, out = audit
    md = (out / "report.md").read_text()
    section = md.split("### carlini (")[1].split("\n### ")[0]
    facts = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fact")]
    names = [line.split(" | ")[0][2:] for line in facts]
    assert len(facts) <= 7, facts
    assert {"Max_SSIM (per row, mean)", "clusters found", "assignment accuracy", "time"} <= set(names)
    info = json.loads((out / "summary.json").read_text())["attacks"]["carlini"]["info"]
    per = info["per_step"]
    assert "auc" in per["pairs"] and "oracle_fit_loss" in per  # the rest: in the JSON, not the table
    assert "auc" not in section and "oracle_fit_loss" not in section
    cl = next(f for f in facts if f.startswith("| clusters found"))
    assert f"{per['clusters']['clusters']} for {res.truth.n} private images" in cl
    asg = next(f for f in facts if f.startswith("| assignment accuracy"))
    assert f"{per['assignment_final']['exact']:.1%} of rows assigned exactly" in asg
    carlini = next(o for o in res.outcomes if o.name == "carlini")
    assert f"| Max_SSIM (per row, mean) | {carlini.score.max_ssim:.3f} |" in section


def test_resume_keeps_the_groups_and_the_best(audit, tmp_path):
    res, out = audit
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = json.loads((copy / "summary.json").read_text())["best_over_attacks"]
    lines = []
    again = run_audit(res.config, copy, resume=True, formats=("md",), log=lines.append)
    assert sum("reused the result" in m for m in lines) == len(ATTACKS)
    assert json.loads((copy / "summary.json").read_text())["best_over_attacks"]["per_image"] == before["per_image"]
    assert next(o for o in again.outcomes if o.name == "carlini").groups is not None


def test_fusion_without_carlini_is_a_note_and_no_fusion_skips_it(tmp_path):
    res = run_audit(AuditConfig.make(n_private=8, T=4, public_size=300, attacks=("demix", "fusion"), research_seed=1,
                                     distractors=50), tmp_path / "a", formats=("md",), log=lambda m: None)
    assert [o.name for o in res.outcomes] == ["demix"]
    md = (tmp_path / "a" / "report.md").read_text()
    assert "fusion not run" in md and "carlini was not run" in md
    assert main(["audit", "--out", str(tmp_path / "b"), "--n-private", "8", "--T", "4", "--public-size", "300",
                 "--attacks", "demix,fusion", "--no-fusion", "--distractors", "50", "--format", "md"]) == 0
    assert "fusion" not in (tmp_path / "b" / "report.md").read_text().split("## Configuration")[0]


def test_fusion_training_fits_its_time_budget():
    calls = []

    def train(steps, progress=None):
        calls.append(steps)
        import time
        time.sleep(0.01 * steps)

    steps, per_step = _fusion_steps(train, 800, 1.5)
    assert calls == [4, 8] and 0.009 < per_step < 0.05  # a warm-up, then the timed probe
    assert 50 <= steps <= 138  # (1.5 s - the probes' 0.12 s) / ~0.01 s a step, at least 50
    assert _fusion_steps(train, 800, None) == (800, None) and calls == [4, 8]
    assert _fusion_steps(train, 60, 100.0)[0] == 60  # never more than asked


# -- --attacker-public -------------------------------------------------------------------------------
class Captured(Exception):
    pass


def _capture(monkeypatch, name="carlini_attack"):
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs, args=args)
        raise Captured()

    monkeypatch.setattr(audit_attacks, name, fake)
    return seen


def _pool_file(tmp_path, n=400) -> tuple:
    """An .npy of n distinct 8x8 grey images (each used whole as a patch)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    path = tmp_path / "pool.npy"
    np.save(path, images)
    return path, {img.tobytes() for img in images}


def _from(pool, images: set) -> bool:
    return all(np.asarray(p)[0].tobytes() in images for p in pool)


def test_attacker_public_reaches_carlini_attack_from_the_attack_command(tmp_path, monkeypatch):
    path, images = _pool_file(tmp_path)
    ch = tmp_path / "ch"
    assert main(["challenge", "make", "--dataset", "digits", "--n-private", "8", "--T", "4", "--public-size", "300",
                 "--research-seed", "1", "--out", str(ch)]) == 0
    seen = _capture(monkeypatch)
    with pytest.raises(Captured):
        main(["attack", "carlini", "--challenge", str(ch), "--attacker-public", str(path), "--preset", "tiny",
              "--out", str(tmp_path / "c")])
    pool = seen["attacker_public"]
    assert pool.shape == (300, 1, 8, 8) and pool.dtype == np.uint8 and _from(pool, images)
    # default: as before this option, the built-in photographs cut at seed 1, as many as the challenge's pool
    seen.clear()
    with pytest.raises(Captured):
        main(["attack", "carlini", "--challenge", str(ch), "--preset", "tiny", "--out", str(tmp_path / "c")])
    builtin = load_public_pool("builtin", n=300, size=(8, 8), channels=1, seed=1).images
    np.testing.assert_array_equal(seen["attacker_public"], builtin)
    # a source that does not exist is a clear error, not a traceback
    assert main(["attack", "carlini", "--challenge", str(ch), "--attacker-public", str(tmp_path / "nope.npy"),
                 "--preset", "tiny", "--out", str(tmp_path / "c")]) == 2


def test_attacker_public_in_the_audit_defaults_to_the_challenges_source(tmp_path, monkeypatch):
    path, images = _pool_file(tmp_path)
    seen = _capture(monkeypatch)
    common = ["--n-private", "8", "--T", "4", "--public-size", "300", "--attacks", "carlini", "--distractors", "20",
              "--preset", "tiny", "--format", "md"]
    with pytest.raises(Captured):  # the challenge's pool from the .npy: the attacker assumes that dataset
        main(["audit", "--out", str(tmp_path / "a"), "--public", str(path), *common])
    assert seen["attacker_public"].shape == (300, 1, 8, 8) and _from(seen["attacker_public"], images)
    challenge_pool = load_public_pool(str(path), n=300, size=(8, 8), channels=1, seed=0).images
    assert not np.array_equal(seen["attacker_public"], challenge_pool)  # its own patches, not the challenge's
    seen.clear()
    with pytest.raises(Captured):  # told otherwise: the built-in photographs
        main(["audit", "--out", str(tmp_path / "b"), "--public", str(path), "--attacker-public", "builtin", *common])
    np.testing.assert_array_equal(seen["attacker_public"],
                                  load_public_pool("builtin", n=300, size=(8, 8), channels=1, seed=1).images)


def test_attacker_public_reaches_the_fusion_network(tmp_path, monkeypatch):
    path, images = _pool_file(tmp_path)
    assert main(["challenge", "make", "--dataset", "digits", "--n-private", "8", "--T", "4", "--public-size", "300",
                 "--research-seed", "1", "--out", str(tmp_path / "ch")]) == 0
    enc, lab, meta = load_challenge(tmp_path / "ch")
    seen = _capture(monkeypatch, "train_fusion_network")
    with pytest.raises(Captured):
        run_attack("fusion", enc, lab, meta, groups=[np.arange(4), np.arange(4, 8)], attacker_public=str(path),
                   time_s=None)
    pool = seen["args"][2]
    assert pool.shape == (300, 1, 8, 8) and _from(pool, images)
    assert seen["T"] == 4 and seen["k"] == 6 and seen["num_private"] == 2
    with pytest.raises(ValueError, match="run carlini first"):
        run_attack("fusion", enc, lab, meta)


def test_cli_fusion_decodes_the_groups_of_a_carlini_run(tmp_path, capsys):
    ch = tmp_path / "ch"
    assert main(["challenge", "make", "--dataset", "digits", "--n-private", "8", "--T", "6", "--public-size", "300",
                 "--research-seed", "1", "--out", str(ch)]) == 0
    assert main(["attack", "fusion", "--challenge", str(ch), "--out", str(tmp_path / "f")]) == 2
    assert "run `instahide attack carlini" in capsys.readouterr().err
    assert main(["attack", "carlini", "--challenge", str(ch), "--preset", "tiny", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "groups.npz").is_file()
    assert main(["attack", "fusion", "--challenge", str(ch), "--groups", str(tmp_path / "c"), "--fusion-steps", "20",
                 "--fusion-time", "0", "--out", str(tmp_path / "f")]) == 0
    outcome = json.loads((tmp_path / "f" / "outcome.json").read_text())
    assert outcome["info"]["train"]["steps"] == 20 and outcome["info"]["train"]["budget_s"] is None
    from instahide.audit import load_groups
    assert [g.tolist() for g in load_groups(tmp_path / "f")] == [g.tolist() for g in load_groups(tmp_path / "c")]
    dec = np.load(tmp_path / "f" / "decryption.npy")
    assert dec.shape == (48, 8, 8, 1) and (tmp_path / "f" / "scores.json").is_file()
    # groups found on another challenge are refused
    other = tmp_path / "other"
    assert main(["challenge", "make", "--dataset", "digits", "--n-private", "8", "--T", "6", "--public-size", "300",
                 "--research-seed", "2", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["attack", "fusion", "--challenge", str(other), "--groups", str(tmp_path / "c"),
                 "--out", str(tmp_path / "g")]) == 2
    assert "another challenge" in capsys.readouterr().err


def test_a_refused_training_batch_of_the_fusion_network_is_named_as_the_attackers(tmp_path, monkeypatch):
    """The fusion network encrypts 8 of the attacker's own images per step; when the scheme's centring
    check refuses such a batch, the error says whose images they were (not the audited ones)."""
    from instahide.scheme import UncentredInputError
    assert main(["challenge", "make", "--dataset", "digits", "--n-private", "8", "--T", "4", "--public-size", "300",
                 "--research-seed", "1", "--out", str(tmp_path / "ch")]) == 0
    enc, lab, meta = load_challenge(tmp_path / "ch")

    def refuse(*args, **kwargs):
        raise UncentredInputError("images are not centred: only 6.95% of mixed values are positive (k=6). Centre them")

    monkeypatch.setattr(audit_attacks, "train_fusion_network", refuse)
    with pytest.raises(ValueError, match="ATTACKER's own training images .images are not centred") as info:
        run_attack("fusion", enc, lab, meta, groups=[np.arange(4)], time_s=None)
    assert "allow-uncentred" not in str(info.value) and "not at fault" in str(info.value)
