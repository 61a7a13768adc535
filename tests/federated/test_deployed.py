"""Federated deployment as a tested path: a real SuperLink and two SuperNodes on loopback (free ports, a
temporary FLWR_HOME), ``flwr run`` on the example app for 2 rounds on the built-in digits, and the run
folder the ServerApp wrote checked against a recomputation from its checkpoint. Also the packed wire
format the example app uses (``pack-weights``: the model as one array), against the unpacked one.

Every process is started by :class:`instahide.federated.deploy.LocalFederation` in its own process
group and killed when the ``with`` block ends, whatever happened; every wait has a deadline, so a
broken deployment fails the test instead of hanging it."""
import json
import re
import time

import pytest

flwr = pytest.importorskip("flwr", reason="needs the federated extra (flwr): pip install 'instahide[federated]'")
pytest.importorskip("sklearn", reason="the built-in digits dataset needs scikit-learn")

import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402

from instahide.federated import FedConfig, build_global_model, run_federated  # noqa: E402
from instahide.federated.client import handle_train  # noqa: E402
from instahide.federated.deploy import EXAMPLE_APP, LocalFederation, toml_value  # noqa: E402
from instahide.federated.local import PACKED, pack_state, unpack_state  # noqa: E402
from instahide.federated.server import load_server_checkpoint, load_test_data  # noqa: E402
from instahide.federated.simulation import _set_task_identity  # noqa: E402
from instahide.train import evaluate, load_weights  # noqa: E402

BUDGET_S = 240  # hard limit for the whole test, start-up included: a failure instead of a hang (it took
                # 66-71 s on a 2-core CPU shared with jobs that kept the load average at 13-17)


def _rows(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
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
    assert cfg.pack_weights  # the example app sends the model as one array
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


@pytest.mark.slow
def test_stop_kills_every_process_even_when_the_run_fails(tmp_path):
    """A run refused by the SuperLink (a key the app does not have) raises, and nothing survives stop()
    (a stock flower-supernode here: its flower-superexec child must go too)."""
    fed = LocalFederation(1, tmp_path / "home", warm=False, start_timeout=30)
    with pytest.raises(RuntimeError, match="flwr run exited"):
        with fed:
            pids = [p.pid for _, p, _ in fed.procs]
            end = time.monotonic() + 30  # the SuperLink's and the node's flower-superexec, in sessions of their own
            while len(below := [d for d in fed.descendants() if "superexec" in _cmdline(d[0])]) < 2:
                assert time.monotonic() < end, f"no flower-superexec below {pids}"
                time.sleep(0.2)
            fed.run(EXAMPLE_APP, {"no-such-key": 1, "out": str(tmp_path / "run")}, timeout=60)
    assert fed.procs == []
    assert _live_members(set(pids)) == []
    assert [pid for pid, _ in below if _cmdline(pid)] == []   # gone (or a zombie: no command line)
    assert not (tmp_path / "run").exists()


def _cmdline(pid) -> str:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


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


def test_bad_settings_are_refused(tmp_path, monkeypatch):
    from instahide.federated.node import POLL_ENV, poll_from_env

    monkeypatch.delenv(POLL_ENV, raising=False)
    assert poll_from_env() is None
    monkeypatch.setenv(POLL_ENV, "0.1")
    assert poll_from_env() == 0.1
    for bad in ("fast", "0", "-1", "100"):
        monkeypatch.setenv(POLL_ENV, bad)
        with pytest.raises(ValueError, match=POLL_ENV):
            poll_from_env()
    with pytest.raises(ValueError, match="num_nodes"):
        LocalFederation(0, tmp_path)
    with pytest.raises(ValueError, match="poll_interval"):
        LocalFederation(1, tmp_path, poll_interval=0)
    with pytest.raises(RuntimeError, match="start"):
        LocalFederation(1, tmp_path).run(EXAMPLE_APP)


def test_toml_values():
    assert [toml_value(v) for v in (True, 3, 0.5, 'a "b"')] == ["true", "3", "0.5", '"a \\"b\\""']
    with pytest.raises(TypeError, match="None"):
        toml_value(None)


TINY = dict(num_parties=2, subset=400, test_subset=200, width=0.5, batch_size=32, research_seed=0)


def test_pack_unpack_round_trip_and_errors():
    model = build_global_model(FedConfig.make(**TINY), 1, 10)
    model(torch.randn(4, 1, 8, 8))  # BatchNorm statistics and num_batches_tracked move off their defaults
    state = model.state_dict()
    flat = pack_state(state)
    assert flat.shape == (sum(v.numel() for v in state.values()),) and flat.dtype == torch.float32
    back = unpack_state(flat, state)
    assert list(back) == list(state)
    assert all(back[k].dtype == state[k].dtype and torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="hold 3 values, the model has"):
        unpack_state(torch.zeros(3), state)
    with pytest.raises(TypeError, match="float64"):
        pack_state({"w": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="2\\*\\*24"):
        pack_state({"n": torch.tensor(2 ** 25)})


def test_packed_reply_is_one_array_and_scalars():
    cfg = FedConfig.make(**TINY, pack_weights=True)
    state = build_global_model(cfg, 1, 10).state_dict()
    _set_task_identity()
    conf = dict(cfg.to_run_config(), **{"server-round": 1})
    msg = Message(content=RecordDict({"arrays": ArrayRecord({PACKED: pack_state(state)}),
                                      "config": ConfigRecord(conf)}), dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                  run_config={})
    reply = handle_train(msg, ctx)
    assert not reply.has_error() and set(reply.content.keys()) == {"arrays", "metrics"}
    assert not reply.content.config_records and list(reply.content.array_records) == ["arrays"]
    arrays = reply.content["arrays"]
    assert list(arrays.keys()) == [PACKED] and tuple(arrays[PACKED].shape) == (len(pack_state(state)),)
    new = unpack_state(arrays.to_torch_state_dict()[PACKED], state)
    assert any(not torch.equal(new[k], state[k]) for k in state)
    assert set(reply.content["metrics"]) <= {"num-examples", "train-loss", "train-acc", "encrypt-seconds",
                                             "train-seconds"}


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian"])
def test_packed_weights_train_the_same_federation(tmp_path, strategy):
    """Same research seed, same keys: packing the model into one array changes only how it travels."""
    runs = {}
    for pack in (False, True):
        cfg = FedConfig.make(**TINY, rounds=2, strategy=strategy, pack_weights=pack, out=str(tmp_path / f"{pack}"))
        runs[pack] = run_federated(cfg, backend="inprocess", log=None)
    a = load_server_checkpoint(tmp_path / "False" / "checkpoint.pt")["model"]
    b = load_server_checkpoint(tmp_path / "True" / "checkpoint.pt")["model"]
    assert list(a) == list(b)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert [r["test_acc"] for r in runs[True]["history"]] == pytest.approx(
        [r["test_acc"] for r in runs[False]["history"]], abs=1e-6)
