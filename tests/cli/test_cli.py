"""The `instahide` command, end to end on the built-in digits (no download)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
from instahide.cli.main import main  # noqa: E402
from instahide.data import load_dataset  # noqa: E402
from instahide.scheme import Key, apply_key  # noqa: E402


def test_encrypt_default_writes_files_and_no_key(tmp_path, capsys):
    out = tmp_path / "enc"
    assert main(["encrypt", "--out", str(out)]) == 0
    enc, lab = np.load(out / "encryption.npy"), np.load(out / "label.npy")
    n = len(load_dataset("digits"))
    assert enc.shape == (n, 8, 8, 1) and enc.dtype == np.float32
    assert lab.shape == (n, 10) and np.allclose(lab.sum(1), 1, atol=1e-5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scheme"]["k"] == 4 and meta["keys"]["origin"] == "os-entropy" and meta["keys"]["written"] is False
    assert sorted(p.name for p in out.iterdir()) == ["encryption.npy", "label.npy", "meta.json"]
    assert "no key written" in capsys.readouterr().out


def test_handed_out_meta_names_no_local_path(tmp_path):
    photos, keys = tmp_path / "my photos", tmp_path / "secret" / "k.npz"
    photos.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(photos / f"{i}.png")
    out = tmp_path / "enc"
    assert main(["encrypt", "--public", str(photos), "--public-size", "50", "--key-out", str(keys),
                 "--out", str(out)]) == 0
    text = (out / "meta.json").read_text()
    for private in (str(tmp_path), "my photos", "secret", os.uname().nodename):
        assert private not in text, private
    assert json.loads(text)["keys"]["written"] is True


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "enc"
    assert main(["encrypt", "--out", str(out), "--subset", "50"]) == 0
    before = (out / "encryption.npy").read_bytes()
    assert main(["encrypt", "--out", str(out), "--subset", "50"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out / "encryption.npy").read_bytes() == before
    assert main(["encrypt", "--out", str(out), "--subset", "50", "--force"]) == 0
    assert (out / "encryption.npy").read_bytes() != before  # fresh keys


def test_epochs_and_key_file_reproduce_the_encryptions(tmp_path):
    out, key_path = tmp_path / "enc", tmp_path / "secret" / "keys.npz"
    assert main(["encrypt", "--out", str(out), "--subset", "60", "--epochs", "3", "--key-out", str(key_path)]) == 0
    enc = np.load(out / "encryption.npy")
    assert enc.shape == (180, 8, 8, 1)
    assert not np.allclose(enc[:60], enc[60:120])  # a fresh key per epoch
    key = Key.load(key_path)
    assert len(key) == 180 and key.meta["epochs"] == 3
    ds = load_dataset("digits")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:60].sort().values.numpy()
    x, _ = ds.subset(order).to_tensor()
    again = torch.cat([apply_key(x, key[e * 60:(e + 1) * 60]) for e in range(3)])
    assert np.array_equal(again.permute(0, 2, 3, 1).numpy(), enc)


def test_research_seed_reproduces_and_is_flagged(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["encrypt", "--out", str(out), "--subset", "40", "--research-seed", "7"]) == 0
    assert (a / "encryption.npy").read_bytes() == (b / "encryption.npy").read_bytes()
    assert "anyone who knows it can undo the mask" in capsys.readouterr().err
    assert json.loads((a / "meta.json").read_text())["keys"]["origin"] == "research-seed"


def test_cross_dataset_with_builtin_public_pool(tmp_path):
    out = tmp_path / "cross"
    assert main(["encrypt", "--out", str(out), "--subset", "100", "--public", "builtin", "--public-size", "300"]) == 0
    lab = np.load(out / "label.npy")
    assert lab.shape == (100, 10) and (lab.sum(1) < 1).all() and (lab.sum(1) >= 0.3 - 1e-5).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scheme"]["k"] == 6 and meta["scheme"]["num_private"] == 2 and meta["public"]["size"] == 300


def test_legacy_and_mixup_modes(tmp_path):
    assert main(["encrypt", "--out", str(tmp_path / "l"), "--subset", "30", "--legacy", "--research-seed", "3"]) == 0
    assert json.loads((tmp_path / "l" / "meta.json").read_text())["keys"]["origin"] == "legacy-seed"
    assert main(["encrypt", "--out", str(tmp_path / "m"), "--subset", "30", "--mode", "mixup"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["--no-normalize"], "not centred"),
    (["--upper", "0.2"], "infeasible bound upper=0.2 for k=4"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'; known datasets: digits"),
    (["--dataset", "cifar10"], "needs a root"),
    (["--subset", "0"], "--subset 0 is out of range"),
    (["--k", "5", "--subset", "3"], "too few images: 3 private image"),
    (["--num-private", "2"], "--num-private needs a public pool"),
    (["--epochs", "0"], "--epochs must be >= 1"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, argv, message):
    assert main(["encrypt", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_uncentred_pixels_need_the_explicit_override(tmp_path):
    assert main(["encrypt", "--out", str(tmp_path / "u"), "--subset", "30", "--no-normalize",
                 "--allow-uncentred"]) == 0


def test_show_writes_a_picture(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "grid.png"
    assert main(["show", "--out", str(png), "--n", "4", "--subset", "50"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_writes_a_report(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "2", "--seeds", "1"]) == 0
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    by = {r["config"]: r for r in res["leakage"]}
    # what the demo claims, checked: Mixup shows the image, the mask scrambles signs not magnitudes
    assert by["Mixup k=4"]["corr_raw_mean"] > 0.5
    assert abs(by["InstaHide inside k=4"]["corr_raw_mean"]) < 0.05
    assert by["InstaHide inside k=4"]["corr_abs_mean"] > 0.2
    assert [r["config"] for r in res["accuracy"]] == ["vanilla", "Mixup k=4", "InstaHide inside k=4",
                                                      "InstaHide cross k=6 (2+4)"]
    assert all(0 <= r["mean"] <= 1 for r in res["accuracy"])
    # inference with InstaHide is reported for the InstaHide rows only, one accuracy per seed
    assert [("inference" in r) for r in res["accuracy"]] == [False, False, True, True]
    assert all(len(r["inference"]["accuracies"]) == 1 and 0 <= r["inference"]["mean"] <= 1
               for r in res["accuracy"][2:])
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "not encryption" in report and (tmp_path / "demo" / "curves.png").exists()


def test_help_and_datasets_and_entry_point(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "NOT cryptographic encryption" in capsys.readouterr().out
    for cmd, text in (("encrypt", "examples:"), ("show", "examples:"), ("demo", "Writes OUT/report.md")):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and out.startswith(f"usage: instahide {cmd} ") and text in out, cmd
    assert main(["datasets"]) == 0 and "cifar10" in capsys.readouterr().out
    import os
    from pathlib import Path

    import instahide

    src = str(Path(instahide.__file__).resolve().parents[1])  # works installed or from a checkout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "instahide.cli.main", "datasets"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0 and "digits" in r.stdout


def test_written_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from instahide._io import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("argv", [["attack", "carlini", "--challenge", "{tmp}/no-challenge"],
                                  ["attack", "gradient-inversion"],
                                  ["audit"]])
def test_device_is_checked_before_any_work(tmp_path, capsys, argv):
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "out")]
    assert main(argv + ["--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown device: --device gpu" in err and "Traceback" not in err
    if not torch.cuda.is_available():  # was an AssertionError (the audit's after building its challenge) or a CPU run
        assert main(argv + ["--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "--device cuda asked for, but this machine has no CUDA device" in err and "Traceback" not in err
    elif argv[1] == "gradient-inversion":
        assert main(argv + ["--device", "cuda"]) == 2
        assert "runs on the CPU only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_refuses_k1_and_names_the_device_option(tmp_path, capsys):
    """``train --k 1`` is refused as ``encrypt --k 1`` is; a device it cannot have is named as the
    option, before any epoch."""
    out = tmp_path / "run"
    assert main(["train", "--mode", "instahide", "--k", "1", "--epochs", "1", "--out", str(out)]) == 2
    assert "--k 1 mixes each image with nothing" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "--epochs", "1", "--device", "cuda", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--device cuda asked for" in err and "device='cuda'" not in err
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_carlini_attack_from_python_refuses_cuda_it_has_not():
    from instahide.attacks.carlini import carlini_attack

    enc = np.zeros((8, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="device='cuda' asked for"):
        carlini_attack(enc, np.zeros((8, 10), np.float32), n_private=2, k=4, num_private=4,
                       attacker_images=np.zeros((4, 1, 8, 8), np.uint8), attacker_labels=np.zeros(4, np.int64),
                       device="cuda")
