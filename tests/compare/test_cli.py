"""``instahide compare`` end to end on a tiny configuration: the three outputs, a value or "n/a" with
a reason for every measure of every row, the DP row's epsilon against Opacus's accounting called
directly, resume and the refusal to overwrite."""
import csv
import json

import pytest

from instahide.cli.main import main
from instahide.compare import CompareConfig, run_compare

TINY = ["--subset", "120", "--test-subset", "60", "--models", "4", "--epochs", "2", "--width", "0.25",
        "--batch-size", "16", "--gradinv-images", "1", "--gradinv-steps", "10", "--challenge-images", "6",
        "--challenge-T", "4", "--challenge-attacks", "demix", "--threads", "1"]
MEASURES = ("gradinv_ssim", "challenge_median_ssim", "mi_loss_auc", "mi_lira_auc", "mi_lira_tpr_at_1pct_fpr")


def _rows(path):
    with open(path, newline="") as fh:
        return {r["method"]: r for r in csv.DictReader(fh)}


def test_compare_writes_all_outputs_with_a_value_or_a_reason(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    opacus = pytest.importorskip("opacus")
    out = tmp_path / "cmp"
    methods = ["vanilla", "mixup-k2", "instahide-k2", "dp-eps8"]
    assert main(["compare", "--methods", *methods, *TINY, "--out", str(out)]) == 0
    for name in ("results.csv", "frontier.png", "report.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rows = _rows(out / "results.csv")
    assert list(rows) == methods
    for name, row in rows.items():
        assert 0 <= float(row["accuracy_mean"]) <= 1 and row["models"] == "4"
        for m in MEASURES:
            if row[m] == "n/a":  # says why: its note column
                note = {"gradinv_ssim": "gradinv_note", "challenge_median_ssim": "challenge_note"}.get(m, "mi_note")
                assert row[note], f"{name}: {m} is n/a without a reason"
            else:
                assert -1 <= float(row[m]) <= 1
    assert rows["vanilla"]["challenge_median_ssim"] == "n/a" and "nothing is encoded" in rows["vanilla"]["challenge_note"]
    assert rows["dp-eps8"]["challenge_median_ssim"] == "n/a" and "DP-SGD" in rows["dp-eps8"]["challenge_note"]
    for name in ("vanilla", "mixup-k2", "instahide-k2"):
        assert rows[name]["epsilon"] == "n/a" and rows[name]["epsilon_note"]
    # the DP row's epsilon is Opacus's RDP accounting of its own noise, sampling rate and steps
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant
    dp = rows["dp-eps8"]
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=float(dp["sample_rate"]), noise_multiplier=float(dp["noise_multiplier"]),
                      steps=int(dp["dp_steps"]), orders=orders)
    assert float(dp["epsilon"]) == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp,
                                                                   delta=float(dp["delta"]))[0], rel=1e-3)
    assert float(dp["epsilon"]) <= 8.0 + 1e-9
    report = (out / "report.md").read_text()
    assert "What each number means" in report and "n/a" in report and "secure" not in report.replace(
        "called secure", "")
    assert opacus.__version__ in report
    # a second run refuses to overwrite; --resume reuses every model and attack (nothing retrained)
    assert main(["compare", "--methods", *methods, *TINY, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    before = (out / "work" / "models" / "vanilla" / "0.json").stat().st_mtime_ns
    assert main(["compare", "--methods", *methods, *TINY, "--out", str(out), "--resume"]) == 0
    assert (out / "work" / "models" / "vanilla" / "0.json").stat().st_mtime_ns == before
    assert _rows(out / "results.csv")["dp-eps8"]["epsilon"] == dp["epsilon"]
    # resuming with another configuration is refused
    assert main(["compare", "--methods", *methods, *TINY, "--epochs", "3", "--out", str(out), "--resume"]) == 2


def test_lira_needs_four_models_and_says_so(tmp_path):
    cfg = CompareConfig.make(methods=("vanilla",), subset=60, test_subset=30, models=2, epochs=1, width=0.25,
                             gradinv_images=0, challenge_images=0, out=str(tmp_path / "c"))
    result = run_compare(cfg, log=lambda msg: None)
    row = result.rows[0]
    assert row["mi_lira_auc"] == "n/a" and "models >= 4" in row["mi_note"]
    assert isinstance(row["mi_loss_auc"], float)
    assert row["gradinv_ssim"] == "n/a" and "skipped" in row["gradinv_note"]
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert saved["models"] == 2


def test_a_device_that_is_not_there_is_refused_before_anything_is_written(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["compare", "--device", "cuda", "--methods", "vanilla", "--out", str(tmp_path / "c")]) == 2
    assert "CUDA" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
