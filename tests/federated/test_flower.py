"""The Flower apps: handlers called directly, the privacy boundary of a reply, dropouts, checkpoints and
resume (in-process grid), the CLI, and one end-to-end run on Flower's Ray simulation engine."""
import argparse
import dataclasses
import json

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("sklearn")
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402

from instahide.cli._common import CLIError  # noqa: E402
from instahide.federated import FedConfig, build_global_model, run_federated  # noqa: E402
from instahide.federated.client import handle_evaluate, handle_train, make_client_app  # noqa: E402
from instahide.federated.server import load_server_checkpoint, make_strategy  # noqa: E402
from instahide.federated.simulation import InProcessGrid, _set_task_identity  # noqa: E402

TINY = dict(num_parties=2, rounds=2, subset=400, test_subset=200, width=0.5, batch_size=32, research_seed=0)


def _msg(cfg, state, kind="train", server_round=1, send_config=True):
    _set_task_identity()
    conf = dict(cfg.to_run_config()) if send_config else {}
    conf["server-round"] = server_round
    content = RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord(conf)})
    return Message(content=content, dst_node_id=1, message_type=kind)


def _ctx(pid, n=2, **node):
    return Context(run_id=1, node_id=pid + 1, node_config={"partition-id": pid, "num-partitions": n, **node},
                   state=RecordDict(), run_config={})


def assert_only_weights_and_scalars(reply: Message, model_state: dict, with_arrays: bool = True):
    """The privacy boundary: a reply carries the model's weights (same keys and shapes) and scalars only."""
    assert not reply.has_error()
    content = reply.content
    assert set(content.keys()) == ({"arrays", "metrics"} if with_arrays else {"metrics"})
    assert not content.config_records
    if with_arrays:
        assert list(content.array_records) == ["arrays"]
        arrays = content["arrays"]
        assert list(arrays.keys()) == list(model_state.keys())
        for name, arr in arrays.items():
            assert tuple(arr.shape) == tuple(model_state[name].shape), name
    else:
        assert not content.array_records
    assert list(content.metric_records) == ["metrics"]
    for name, value in content["metrics"].items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
    assert set(content["metrics"]) <= {"num-examples", "train-loss", "train-acc", "encrypt-seconds",
                                       "train-seconds", "eval-acc", "eval-loss"}


@pytest.mark.parametrize("mode", ["instahide", "mixup", "vanilla"])
def test_train_handler_reply_is_weights_and_scalars_only(mode):
    cfg = FedConfig.make(**TINY, mode=mode)
    state = build_global_model(cfg, 1, 10).state_dict()
    reply = handle_train(_msg(cfg, state), _ctx(1))
    assert_only_weights_and_scalars(reply, state)
    assert reply.content["metrics"]["num-examples"] == 200
    new = reply.content["arrays"].to_torch_state_dict()
    assert any(not torch.equal(new[k], state[k]) for k in state)


def test_evaluate_handler_and_node_overrides(tmp_path):
    cfg = FedConfig.make(**TINY)
    state = build_global_model(cfg, 1, 10).state_dict()
    reply = handle_evaluate(_msg(cfg, state, kind="evaluate"), _ctx(0))
    assert_only_weights_and_scalars(reply, state, with_arrays=False)
    assert reply.content["metrics"]["num-examples"] == 100  # IID half of the 200 test images
    # the configuration falls back to the app's run_config when the server sends none
    ctx = _ctx(0)
    ctx.run_config.update(cfg.to_run_config())
    reply = handle_train(_msg(cfg, state, send_config=False), ctx)
    assert reply.content["metrics"]["num-examples"] == 200
    with pytest.raises(ValueError, match="partition-id"):
        handle_train(_msg(cfg, state), Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                                               run_config={}))
    with pytest.raises(ValueError, match="num-partitions=5"):
        handle_train(_msg(cfg, state), _ctx(0, n=5))


def _grid(cfg):
    return InProcessGrid(make_client_app(cfg), cfg.num_parties)


def _run(cfg, grid=None):
    from instahide.federated.server import run_server

    grid = grid or _grid(cfg)
    return run_server(grid, cfg, log=None), grid


def test_dropout_does_not_stop_the_federation_and_every_reply_is_clean(tmp_path):
    cfg = FedConfig.make(**{**TINY, "rounds": 3}, drop="1:1,2:0", fraction_evaluate=1.0, out=str(tmp_path / "f"))
    init = build_global_model(cfg, 1, 10).state_dict()
    final, grid = _run(cfg)
    h = final["history"]
    assert [r["round"] for r in h] == [1, 2, 3]
    assert [(r["replies"], r["failures"]) for r in h] == [(1, 1), (1, 1), (2, 0)]
    assert all(r["updated"] for r in h)
    # round 1's global model is party 0's update alone: it moved away from the initial weights
    failed = [rep for msg, rep in grid.sent if rep.has_error()]
    assert len(failed) == 2 and "simulated dropout" in failed[0].error.reason
    ok = [rep for msg, rep in grid.sent if not rep.has_error()]
    assert len(ok) == 4 + 6                               # train replies + evaluate replies
    for rep in ok:
        assert_only_weights_and_scalars(rep, init, with_arrays="arrays" in rep.content)
    ckpt = load_server_checkpoint(tmp_path / "f" / "checkpoint.pt")
    assert any(not torch.equal(ckpt["model"][k], init[k]) for k in init)
    assert "fed_eval_acc" in h[-1]
    lines = (tmp_path / "f" / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2, 3]


def test_round_with_no_reply_keeps_the_model(tmp_path):
    cfg = FedConfig.make(**{**TINY, "rounds": 1}, drop="1:0,1:1", out=str(tmp_path / "f"))
    init = build_global_model(cfg, 1, 10).state_dict()
    final, _ = _run(cfg)
    assert final["history"][0]["updated"] is False and final["history"][0]["failures"] == 2
    ckpt = load_server_checkpoint(tmp_path / "f" / "checkpoint.pt")
    assert all(torch.equal(ckpt["model"][k].to(init[k].dtype), init[k]) for k in init)


def test_resume_continues_from_the_last_round(tmp_path):
    full, _ = _run(FedConfig.make(**{**TINY, "rounds": 3}, out=str(tmp_path / "full")))
    part, _ = _run(FedConfig.make(**TINY, out=str(tmp_path / "part")))                   # 2 rounds
    path = tmp_path / "part" / "checkpoint.pt"
    blob = torch.load(path, weights_only=True)                                        # weights_only loadable
    assert blob["round"] == 2 and len(blob["history"]) == 2
    with pytest.raises(FileExistsError, match="resume"):
        _run(FedConfig.make(**TINY, out=str(tmp_path / "part")))
    with pytest.raises(ValueError, match="differs"):
        _run(FedConfig.make(**{**TINY, "rounds": 3, "lr": 0.01}, resume=True, out=str(tmp_path / "part")))
    resumed, grid = _run(FedConfig.make(**{**TINY, "rounds": 3}, resume=True, out=str(tmp_path / "part")))
    assert resumed["rounds_run"] == 3 and len(grid.sent) == 2                         # only round 3 ran
    assert resumed["history"][:2] == part["history"]
    a = load_server_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_server_checkpoint(path)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)   # = uninterrupted run


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi",
                                  "fedmedian", "fedtrimmedavg", "krum"])
def test_strategies_by_name(name):
    s = make_strategy(FedConfig.make(strategy=name, num_parties=4, min_train_nodes=3, proximal_mu=0.1))
    assert type(s).__name__.lower() == name and s.min_train_nodes == 3 and s.min_available_nodes == 4
    if name == "fedprox":
        assert s.proximal_mu == 0.1


def test_adaptive_strategy_runs(tmp_path):
    final, _ = _run(FedConfig.make(**{**TINY, "rounds": 1}, strategy="fedadam", server_lr=0.01, out=str(tmp_path / "a")))
    assert final["history"][0]["updated"]
    with pytest.raises(ValueError, match="server_lr"):
        make_strategy(FedConfig.make(strategy="fedmedian", server_lr=0.1))


def test_cli_inprocess_and_errors(tmp_path, capsys):
    from instahide.cli import federated_cmd

    p = argparse.ArgumentParser()
    federated_cmd.add_parser(p.add_subparsers())
    args = p.parse_args(["federated", "--backend", "inprocess", "--rounds", "1", "--subset", "300",
                         "--width", "0.5", "--partition", "dirichlet", "--alpha", "1.0", "--research-seed", "1",
                         "--out", str(tmp_path / "cli")])
    assert args.func(args) == 0
    assert "clean test accuracy" in capsys.readouterr().out
    final = json.loads((tmp_path / "cli" / "final.json").read_text())
    assert final["config"]["partition"] == "dirichlet" and final["rounds_run"] == 1
    for bad, match in ((["--partition", "zipf"], "unknown partition"), (["--dataset", "mnist"], "--root"),
                       (["--k", "4", "--min-party-size", "2"], "min_party_size")):
        args = p.parse_args(["federated", "--out", str(tmp_path / "x"), *bad])
        with pytest.raises(CLIError, match=match):
            args.func(args)


@pytest.mark.slow
def test_end_to_end_ray_simulation_matches_in_process(tmp_path):
    """Flower's simulation engine (Ray): 2 parties, 2 rounds, party 1 crashing in round 1. With a
    research seed the result equals the in-process run's (same apps, same keys)."""
    pytest.importorskip("ray")
    cfg = FedConfig.make(**TINY, drop="1:1", out=str(tmp_path / "ray"))
    final = run_federated(cfg, backend="ray", num_cpus=2)
    h = final["history"]
    assert [(r["replies"], r["failures"]) for r in h] == [(1, 1), (2, 0)]
    local, _ = _run(cfg.replace(out=str(tmp_path / "local")))
    a = load_server_checkpoint(tmp_path / "ray" / "checkpoint.pt")["model"]
    b = load_server_checkpoint(tmp_path / "local" / "checkpoint.pt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert [r["test_acc"] for r in h] == pytest.approx([r["test_acc"] for r in local["history"]], abs=1e-3)


def test_instahide_fedavg_learns_on_clean_test_data(tmp_path):
    # all 1438 digits over 2 parties, k=4, 4 rounds of 2 local epochs (about 8 s on one CPU thread)
    cfg = FedConfig.make(num_parties=2, rounds=4, local_epochs=2, batch_size=32, research_seed=0,
                    out=str(tmp_path / "learn"))
    acc = [r["test_acc"] for r in _run(cfg)[0]["history"]]
    # 10 classes: chance is 0.1. Over research seeds 0-7 (AMD EPYC, `experiments/seed_spread.py federated`,
    # |x| first as by default) the best of the last two rounds was 0.74-0.87 and round 1 0.49-0.77; the old
    # bar (final > 0.35, raw encryptions) sat on a knife's edge (0.345 and 0.357 at seed 0 on two CPUs).
    assert max(acc[-2:]) > 0.5
