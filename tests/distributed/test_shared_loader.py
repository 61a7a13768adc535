"""train-shared reading encryption folders batch by batch in DataLoader workers: the same training."""
from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from instahide.distributed import SharedConfig, load_encrypted, load_shared_checkpoint, train_shared
from instahide.train.loader import FolderBatches, batch_loader

pytestmark = pytest.mark.filterwarnings("ignore:.*derive from a seed")
reference = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("_reference.py"))))
FAST = dict(test_dataset="digits", batch_size=64, lr=0.05, progress=False)


def test_batches_read_in_workers_are_the_rows_take_reads(parties):
    union = load_encrypted(parties)
    positions = list(torch.randperm(union.rows_per_epoch, generator=torch.Generator().manual_seed(0)).split(50))
    for epoch in (0, 2):
        got = list(batch_loader(FolderBatches(union, epoch, positions), 2))
        assert len(got) == len(positions)
        for (x, y), pos in zip(got, positions):
            ref_x, ref_y = union.take(epoch, pos.numpy())
            assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_workers_train_as_plain_sgd_on_the_union(tmp_path, parties):
    cfg = SharedConfig(encrypted=parties, **FAST, epochs=3, research_seed=4, out=str(tmp_path / "w"))
    final = train_shared(cfg, workers=2)
    state = load_shared_checkpoint(tmp_path / "w" / "checkpoint.pt")
    ref = reference.reference_run(parties, epochs=3, batch_size=64, lr=0.05, momentum=0.9, weight_decay=1e-4,
                                  research_seed=4, order_seed=state["order_seed"], world_size=1)
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(state["model"][f"model.{name}"], t, rtol=1e-5, atol=1e-6, msg=name)
    assert final["workers"] == 2 and all(m["data_seconds"] >= 0 for m in final["history"])
    # and the whole-epoch path (workers=0) gives the same weights, bit for bit
    whole = train_shared(SharedConfig(encrypted=parties, **FAST, epochs=3, research_seed=4, out=str(tmp_path / "z")),
                         workers=0)
    zstate = load_shared_checkpoint(tmp_path / "z" / "checkpoint.pt")
    assert whole["workers"] == 0 and all(torch.equal(zstate["model"][k], v) for k, v in state["model"].items())
    assert json.loads((tmp_path / "w" / "final.json").read_text())["workers"] == 2


def test_cli_takes_workers(tmp_path, parties, capsys):
    from instahide.cli.main import main

    assert main(["train-shared", "--encrypted", *map(str, parties), "--test-dataset", "digits", "--epochs", "1",
                 "--batch-size", "64", "--progress", "false", "--workers", "1", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "final.json").read_text())["workers"] == 1
    with pytest.raises(SystemExit):
        main(["train-shared", "--encrypted", str(parties[0]), "--workers", "many", "--out", str(tmp_path / "d")])
    assert "--workers: must be 'auto' or an integer >= 0, got 'many'" in capsys.readouterr().err
    assert np.isfinite(json.loads((tmp_path / "c" / "final.json").read_text())["history"][0]["train_loss"])
