"""DistributedDataParallel with 2 gloo processes (torchrun, 1 thread each) on two parties' digits.

One torchrun job runs every scenario (tests/distributed/_ddp_worker.py); the tests below check what
the ranks wrote: identical weights on both ranks, equality with a single-process reference on the same
global batches, resume, a clean failure on every rank, and independent keys per rank on the fly.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from instahide.distributed import load_shared_checkpoint
from instahide.train import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*derive from a seed")]
HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"

_spec = importlib.util.spec_from_file_location("_reference", HERE / "_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


@pytest.fixture(scope="module")
def job(tmp_path_factory, parties):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(HERE / "_ddp_worker.py"), str(out), str(parties[0]), str(parties[1])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"torchrun job failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return out, ranks


def test_both_ranks_end_with_identical_weights(job):
    _, (r0, r1) = job
    assert r0["shared_final"]["world_size"] == 2 and r0["shared_final"]["backend"] == "gloo"
    for name, t in r0["shared_params"].items():
        assert torch.equal(t, r1["shared_params"][name]), name
    assert r0["shared_final"]["history"] == r1["shared_final"]["history"]  # metrics reduced over ranks


def test_two_ranks_equal_one_process_on_the_same_global_batches(job, parties):
    out, (r0, _) = job
    state = load_shared_checkpoint(out / "shared" / "checkpoint.pt")
    ref = reference.reference_run(parties, epochs=3, batch_size=64, lr=0.05, momentum=0.9, weight_decay=1e-4,
                                  research_seed=4, order_seed=state["order_seed"], world_size=2)
    for name, t in ref.state_dict().items():  # parameters and rank 0's BatchNorm statistics
        torch.testing.assert_close(state["model"][f"model.{name}"], t, rtol=1e-4, atol=1e-5, msg=name)
    # every epoch's rows are split between the ranks and all used (the last global batch has 24 >= 2 rows)
    assert [m["rows"] for m in r0["shared_final"]["history"]] == [600] * 3


def test_ddp_resume_continues_the_checkpoint(job):
    _, (r0, r1) = job
    assert r0["resumed_epochs_run"] == 3
    for name, t in r0["shared_params"].items():
        assert torch.equal(t, r0["resumed_params"][name]) and torch.equal(t, r1["resumed_params"][name]), name


def test_a_bad_party_fails_on_every_rank(job):
    _, (r0, r1) = job
    assert r0["bad"] is not None and "nowhere" in r0["bad"]
    assert r1["bad"] is not None and "nowhere" in r1["bad"]


def test_on_the_fly_ranks_draw_their_own_keys_and_a_seeded_run_is_deterministic(job):
    out, (r0, r1) = job
    for kind in ("otf_key_bytes_seeded", "otf_key_bytes_entropy"):
        assert not np.array_equal(r0[kind], r1[kind]), kind
    assert not np.array_equal(r0["otf_key_bytes_seeded"], r0["world1_key_bytes"])
    a, b = (load_checkpoint(out / f"otf{i}" / "checkpoint.pt") for i in (1, 2))
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    f = r0["otf"][0]
    assert f["world_size"] == 2 and f["train_images_per_rank"] == 719 and f["unused_train_images"] == 0
    assert f["final_test_acc"] > 0.3                     # 10 classes, chance 0.1
    assert r0["otf"][0]["history"] == r1["otf"][0]["history"]
