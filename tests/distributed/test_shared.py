"""The shared trainer in one process: it is plain SGD on the union, it learns, it resumes, the CLI."""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from instahide.distributed import SharedConfig, load_shared_checkpoint, load_shared_model, train_shared

pytestmark = pytest.mark.filterwarnings("ignore:.*derive from a seed")
torch.set_num_threads(1)

_spec = importlib.util.spec_from_file_location("_reference", Path(__file__).with_name("_reference.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

FAST = dict(test_dataset="digits", batch_size=64, lr=0.05, progress=False)


def test_one_process_run_is_plain_sgd_on_the_union(tmp_path, parties):
    cfg = SharedConfig(encrypted=parties, **FAST, epochs=3, research_seed=4, out=str(tmp_path / "r"))
    final, model = train_shared(cfg, return_model=True)
    state = load_shared_checkpoint(tmp_path / "r" / "checkpoint.pt")
    ref = reference.reference_run(parties, epochs=3, batch_size=64, lr=0.05, momentum=0.9, weight_decay=1e-4,
                                  research_seed=4, order_seed=state["order_seed"], world_size=1)
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(state["model"][f"model.{name}"], t, rtol=1e-5, atol=1e-6, msg=name)
    assert final["world_size"] == 1 and final["rows_per_epoch"] == 600 and final["fresh_epochs"] == 2
    assert final["reused_encryptions"] and [m["encryption_epochs"] for m in final["history"]] == [[0, 0], [1, 1], [2, 0]]
    assert final["keys"].startswith("none")
    assert final["sign_invariant"] is True and state["sign_invariant"] is True  # InstaHide folders: |x| first


def test_learns_well_above_chance_and_reloads(tmp_path, parties):
    cfg = SharedConfig(encrypted=parties, **FAST, epochs=12, research_seed=0, out=str(tmp_path))
    final = train_shared(cfg)
    # 10 classes: chance is 0.1 (359 test images); 600 training images, k=4, 12 epochs reach ~0.45
    assert final["final_test_acc"] > 0.3
    model, saved, state = load_shared_model(tmp_path / "checkpoint.pt")
    assert saved == cfg and state["epoch"] == 12
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, 13))


def test_resume_matches_an_uninterrupted_run(tmp_path, parties):
    full = SharedConfig(encrypted=parties, **FAST, epochs=3, research_seed=1, out=str(tmp_path / "full"))
    train_shared(full)

    def stop(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    cut = SharedConfig(encrypted=parties, **FAST, epochs=3, research_seed=1, out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        train_shared(cut, on_epoch_end=stop)
    with pytest.raises(FileExistsError, match="resume=True"):
        train_shared(cut)
    final = train_shared(cut, resume=True)
    assert final["epochs_run"] == 3
    a, b = (load_shared_checkpoint(tmp_path / n / "checkpoint.pt") for n in ("full", "cut"))
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    other = SharedConfig(encrypted=parties, **{**FAST, "lr": 0.1}, epochs=3, research_seed=1, out=str(tmp_path / "cut"))
    with pytest.raises(ValueError, match="differs in"):
        train_shared(other, resume=True)


def test_no_seed_still_trains_and_records_no_keys(tmp_path, parties):
    final = train_shared(SharedConfig(encrypted=parties, **FAST, epochs=1, out=str(tmp_path)))
    assert final["epochs_run"] == 1 and final["history"][0]["rows"] == 600


def test_bad_configuration_and_test_set(tmp_path, parties):
    with pytest.raises(ValueError, match="no encryption folder"):
        SharedConfig().validate()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        SharedConfig(encrypted=parties, batch_size=0).validate()
    with pytest.raises(ValueError, match="sync_bn needs DDP on CUDA"):
        train_shared(SharedConfig(encrypted=parties, **FAST, sync_bn=True, out=str(tmp_path / "s")))


def _cli(argv):
    from instahide.cli import shared_cmd

    p = argparse.ArgumentParser()
    shared_cmd.add_parser(p.add_subparsers())
    args = p.parse_args(argv)
    return args.func(args)


def test_cli_trains_and_refuses_key_folders(tmp_path, parties, capsys):
    from instahide.cli._common import CLIError
    from instahide.scheme import encrypt

    out = tmp_path / "run"
    assert _cli(["train-shared", "--encrypted", *map(str, parties), "--test-dataset", "digits", "--epochs", "2",
                 "--batch-size", "64", "--lr", "0.05", "--progress", "false", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "clean test accuracy" in printed and (out / "final.json").exists()
    import shutil

    leaky = shutil.copytree(parties[1], tmp_path / "leaky")
    encrypt(torch.randn(5, 1, 8, 8), return_key=True, seed=0).key.save(leaky / "k.npz")
    with pytest.raises(CLIError, match="refused: .*holds key material"):
        _cli(["train-shared", "--encrypted", str(parties[0]), str(leaky), "--out", str(tmp_path / "x")])
    with pytest.raises(CLIError, match="test images are"):
        _cli(["train-shared", "--encrypted", str(parties[0]), "--test-dataset", "arrays", "--test-root",
              str(_arrays(tmp_path)), "--out", str(tmp_path / "y")])


def _arrays(tmp_path):
    import numpy as np

    path = tmp_path / "rgb.npz"
    np.savez(path, images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.arange(4) % 10)
    return path


def test_evaluate_reads_a_train_shared_checkpoint(tmp_path, parties, capsys):
    import shutil

    from instahide.cli.main import main

    out = tmp_path / "run"
    final = train_shared(SharedConfig(encrypted=parties, **FAST, epochs=2, research_seed=0, out=str(out)))
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--T", "3", "--research-seed", "0",
                 "--out", str(tmp_path / "ev.json")]) == 0
    printed = capsys.readouterr().out
    ev = json.loads((tmp_path / "ev.json").read_text())
    # the same model on the same test set, scaled as the parties scaled theirs: the run's own number
    assert ev["clean"]["accuracy"] == pytest.approx(final["final_test_acc"], abs=1e-9)
    assert "train-shared" in printed and "over 2 parties" in printed
    assert ev["k"] == 4 and ev["instahide"]["T"] == [1, 2, 3] and len(ev["instahide"]["accuracy"]) == 3
    # the parties' folders are where their scaling is recorded: gone, the error names them
    moved = shutil.move(str(parties[1]), str(parties[1].parent / "moved"))
    try:
        assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--T", "1"]) != 0
        assert "bob does not exist" in capsys.readouterr().err
    finally:
        shutil.move(moved, str(parties[1]))
