"""Federated deployment as a tested path: a real SuperLink and two SuperNodes on loopback (free ports, a
temporary FLWR_HOME), ``flwr run`` on the example app for 2 rounds on the built-in digits, and the run
folder the ServerApp wrote checked against a recomputation from its checkpoint.

Every process is started by :class:`instahide.federated.deploy.LocalFederation` in its own process
group and killed when the ``with`` block ends, whatever happened; every wait has a deadline, so a
broken deployment fails the test instead of hanging it."""
import json
import re
import time

import pytest

pytestmark = pytest.mark.slow
flwr = pytest.importorskip("flwr", reason="needs the federated extra (flwr): pip install 'instahide[federated]'")
pytest.importorskip("sklearn", reason="the built-in digits dataset needs scikit-learn")

from instahide.federated import FedConfig, build_global_model  # noqa: E402
from instahide.federated.deploy import EXAMPLE_APP, LocalFederation, toml_value  # noqa: E402
from instahide.federated.server import load_server_checkpoint, load_test_data  # noqa: E402
from instahide.train import evaluate, load_weights  # noqa: E402

BUDGET_S = 240  # hard limit for the whole test, start-up included: a failure instead of a hang (it took 71 s
                # on a 2-core CPU shared with jobs that kept the load average at 13)


def _rows(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]


def test_flwr_run_with_a_superlink_and_two_warm_supernodes(tmp_path):
    t0 = time.monotonic()
    out = tmp_path / "run"
    with LocalFederation(2, tmp_path / "home", warm=True, start_timeout=30) as fed:
        fed.run(EXAMPLE_APP, {"rounds": 2, "out": str(out)}, timeout=max(5.0, BUDGET_S - (time.monotonic() - t0)))
        logs = {i: (fed.logs / f"node{i}.log").read_text(errors="replace") for i in range(2)}

    rows = _rows(out)
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:  # both parties trained in both rounds and the global model moved
        assert (r["replies"], r["failures"], r["updated"]) == (2, 0, True), r
        assert 0.0 <= r["test_acc"] <= 1.0 and r["round_seconds"] > 0
        assert r["client_encrypt_seconds_max"] > 0            # InstaHide mode: the parties encrypted
    final = json.loads((out / "final.json").read_text())
    assert final["rounds_run"] == 2 and final["history"] == rows
    assert final["versions"]["flwr"] == flwr.__version__
    cfg = FedConfig.from_dict(final["config"])
    assert (cfg.dataset, cfg.num_parties, cfg.scheme.mode, cfg.scheme.k) == ("digits", 2, "instahide", 4)
    assert cfg.research_seed is None and final["keys"] == "os-entropy (per party)"

    # the reported accuracy is the checkpoint's global model on the clean test set, recomputed here
    ckpt = load_server_checkpoint(out / "checkpoint.pt")
    assert ckpt["round"] == 2
    x, y, num_classes = load_test_data(cfg)
    model = build_global_model(cfg, x.shape[1], num_classes)
    load_weights(model, ckpt["model"], "checkpoint")
    assert evaluate(model, x, y)["accuracy"] == pytest.approx(final["final_test_acc"], abs=1e-6)

    # each node served both of its messages from ONE long-running ClientApp process
    for i, text in logs.items():
        served = re.findall(r"task (\d+) of worker pid (\d+): replied", text)
        assert [n for n, _ in served] == ["1", "2"], f"node {i}:\n{text[-3000:]}"
        assert len({pid for _, pid in served}) == 1


def test_stop_kills_every_process_even_when_the_run_fails(tmp_path):
    """A run refused by the SuperLink (a key the app does not have) raises, and nothing survives stop()
    (a stock flower-supernode here: its flower-superexec child must go too)."""
    fed = LocalFederation(1, tmp_path / "home", warm=False, start_timeout=30)
    with pytest.raises(RuntimeError, match="flwr run exited"):
        with fed:
            pids = [p.pid for _, p, _ in fed.procs]
            fed.run(EXAMPLE_APP, {"no-such-key": 1, "out": str(tmp_path / "run")}, timeout=60)
    assert fed.procs == []
    assert _live_members(set(pids)) == []
    assert not (tmp_path / "run").exists()


def _live_members(groups: set) -> list:
    """Processes (not zombies) whose process group is one of ``groups``, from /proc."""
    from pathlib import Path

    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp in groups and state != "Z":
            live.append((stat.parent.name, state, pgrp))
    return live


def test_toml_values():
    assert [toml_value(v) for v in (True, 3, 0.5, 'a "b"')] == ["true", "3", "0.5", '"a \\"b\\""']
    with pytest.raises(TypeError, match="None"):
        toml_value(None)
