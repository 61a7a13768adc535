"""The weight average (``TrainConfig.ema``, ``--ema``): its arithmetic, exact resume, and what the run records."""
import json

import pytest
import torch

pytest.importorskip("sklearn")
from instahide.cli.main import main  # noqa: E402
from instahide.train import TrainConfig, evaluate, load_checkpoint, load_model, load_train_data, train  # noqa: E402
from instahide.train.engine import WeightAverage  # noqa: E402

FAST = dict(dataset="digits", batch_size=64, lr=0.05, progress=False)


@pytest.fixture(scope="module")
def digits():
    return load_train_data(TrainConfig.make(**FAST), "cpu")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3))


def test_average_of_constant_weights_is_the_weights():
    net = _net()
    net.train()
    net(torch.randn(5, 1, 8, 8))  # non-trivial BN statistics and batch counter
    avg = WeightAverage(net, 0.999)
    for _ in range(50):
        avg.update()
    for name, value in net.state_dict().items():
        assert torch.equal(avg.model.state_dict()[name], value), name


def test_average_is_the_debiased_exponential_mean_of_the_steps():
    # reference: sum_i d^(t-i) w_i / sum_i d^(t-i) over the weights after steps 1..t; the init never enters
    net, d = _net(), 0.9
    avg = WeightAverage(net, d)
    seen = []
    with torch.no_grad():
        for _ in range(7):
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
            net[1].num_batches_tracked.add_(1)
            avg.update()
            seen.append({k: v.clone() for k, v in net.state_dict().items()})
    t = len(seen)
    coef = torch.tensor([d ** (t - i) for i in range(1, t + 1)], dtype=torch.float64)
    coef /= coef.sum()
    for name, value in avg.model.state_dict().items():
        if value.is_floating_point():
            ref = sum(c * s[name].double() for c, s in zip(coef, seen))
            torch.testing.assert_close(value.double(), ref, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(value, seen[-1][name]), name  # integer buffers are copied
    assert avg.steps == t
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        WeightAverage(net, 1.0)


def test_resume_gives_the_same_average_as_an_uninterrupted_run(tmp_path, digits):
    full = TrainConfig.make(**FAST, epochs=4, ema=0.99, research_seed=3, out=str(tmp_path / "full"))
    train(full, data=digits)

    def interrupt(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    cut = full.replace(out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        train(cut, data=digits, on_epoch_end=interrupt)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["ema"]["steps"] == 2 * 23  # 1438 images / 64
    train(cut, resume=True, data=digits)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("full", "cut"))
    assert a["ema"]["steps"] == b["ema"]["steps"] == 4 * 23
    for name, tensor in a["ema"]["model"].items():
        assert torch.equal(tensor, b["ema"]["model"][name]), name
    assert [m["test_acc"] for m in a["history"]] == [m["test_acc"] for m in b["history"]]


def test_the_run_records_evaluates_and_loads_the_average(tmp_path, digits):
    cfg = TrainConfig.make(**FAST, epochs=3, ema=0.99, research_seed=0, out=str(tmp_path))
    final = train(cfg, data=digits)
    saved = json.loads((tmp_path / "final.json").read_text())
    assert saved["config"]["ema"] == 0.99 and saved["evaluated_weights"].startswith("ema 0.99")
    assert all(m["test_acc_raw"] is not None for m in saved["history"])
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["config"]["ema"] == 0.99 and state["ema"]["decay"] == 0.99
    model, _, _ = load_model(tmp_path / "checkpoint.pt")  # the average: what final.json's accuracy is of
    assert evaluate(model, digits.x_test, digits.y_test, batch_size=256)["accuracy"] == final["final_test_acc"]
    raw, _, _ = load_model(tmp_path / "checkpoint.pt", raw=True)
    assert evaluate(raw, digits.x_test, digits.y_test, batch_size=256)["accuracy"] == final["final_test_acc_raw"]
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), raw.state_dict().values()))
    # without the option nothing changes: no average kept, raw weights evaluated
    plain = train(cfg.replace(ema=0.0, out=str(tmp_path / "plain")), data=digits)
    assert plain["evaluated_weights"] == "raw" and "test_acc_raw" not in plain["history"][-1]
    assert "ema" not in load_checkpoint(tmp_path / "plain" / "checkpoint.pt")
    assert plain["final_test_acc"] == final["final_test_acc_raw"]  # the average does not change training


def test_bad_decay_and_a_changed_decay_on_resume_are_refused(tmp_path, digits):
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="ema must be in"):
            TrainConfig.make(**FAST, ema=bad).validate()
    cfg = TrainConfig.make(**FAST, epochs=1, ema=0.9, research_seed=0, out=str(tmp_path))
    train(cfg, data=digits)
    with pytest.raises(ValueError, match="configuration differs"):
        train(cfg.replace(ema=0.5, epochs=2), resume=True, data=digits)


def test_cli_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--ema", "0.95", "--research-seed", "0", "--progress", "false",
                 "--out", str(out)]) == 0
    assert json.loads((out / "final.json").read_text())["config"]["ema"] == 0.95
