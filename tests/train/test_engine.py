"""The training engine: the loop against a hand-written SGD step, resume and extension of a run,
configuration types, device and checkpoint errors, and one set of scheme options for every command."""
import argparse
import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sklearn")
from instahide._config import from_dict  # noqa: E402
from instahide.cli.main import build_parser, main  # noqa: E402
from instahide.scheme.config import DOM, K_CROSS, K_INSIDE, UPPER, SchemeConfig  # noqa: E402
from instahide.train import TrainConfig, load_model, load_train_data, train, train_epoch  # noqa: E402
from instahide.train.engine import RunFolder, index_batches  # noqa: E402

FAST = dict(dataset="digits", batch_size=64, lr=0.05, progress=False, research_seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_train_data(TrainConfig.make(**FAST), "cpu")


# -- the loop -------------------------------------------------------------------------------------
def test_train_epoch_is_plain_sgd_on_the_batch_mean_of_soft_cross_entropy():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    ref = torch.nn.Linear(5, 3)
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(10, 5), torch.softmax(torch.randn(10, 3), 1)
    order = torch.arange(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = train_epoch(model, opt, index_batches(x, y, order, 4))
    # by hand: batches of 4, 4, 2; loss = mean over rows of -sum_c y_c log softmax_c
    for s in range(0, 10, 4):
        xb, yb = x[s:s + 4], y[s:s + 4]
        loss = -(yb * F.log_softmax(ref(xb), 1)).sum(1).mean()
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= 0.1 * g
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert res["seen"] == 10 and 0 <= res["correct"] <= 10


def test_train_epoch_stops_on_divergence():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.tensor([[float("nan"), 1.0]])
    with pytest.raises(FloatingPointError, match="diverged"):
        train_epoch(model, opt, [(x, torch.tensor([[1.0, 0.0]]), 1.0)])


# -- resume and extension -------------------------------------------------------------------------
def _interrupt_after(epochs: int, cfg, data) -> None:
    """Run ``cfg`` and interrupt it (as Ctrl-C would) after ``epochs`` epochs."""
    def stop(epoch, metrics):
        if epoch == epochs:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data=data, on_epoch_end=stop)


def test_resume_says_where_it_starts_and_a_finished_run_does_nothing(tmp_path, digits, capsys):
    out = tmp_path / "run"
    cfg = TrainConfig.make(**FAST, epochs=4, out=str(out))
    _interrupt_after(2, cfg, digits)
    final = train(cfg, resume=True, data=digits)
    assert final["resumed_from_epoch"] == 2 and final["epochs_this_run"] == 2 and final["epochs_run"] == 4
    before = (out / "checkpoint.pt").read_bytes()
    again = train(cfg, resume=True, data=digits)
    assert again["epochs_this_run"] == 0 and again["epochs_run"] == 4
    assert (out / "checkpoint.pt").read_bytes() == before            # nothing was trained or rewritten
    args = ["train", *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in FAST.items()), []),
            "--epochs", "4", "--out", str(out), "--resume"]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "all 4 epochs were already run, nothing to do" in said


def test_extending_a_finished_run_recomputes_the_schedule(tmp_path, digits):
    short = train(TrainConfig.make(**FAST, epochs=2, out=str(tmp_path / "ext")), data=digits)
    assert [m["lr"] for m in short["history"]] == pytest.approx([0.05, 0.005])   # milestones 1, 2 of 2
    longer = TrainConfig.make(**FAST, epochs=4, out=str(tmp_path / "ext"))
    final = train(longer, resume=True, data=digits)
    assert final["extended_from_epochs"] == 2 and final["epochs_this_run"] == 2
    # epochs 3-4 use the schedule of a 4-epoch run (milestones 2 and 3): 0.05 * 0.1, then 0.05 * 0.01
    planned = train(TrainConfig.make(**FAST, epochs=4, out=str(tmp_path / "planned")), data=digits)
    assert [m["lr"] for m in final["history"][2:]] == pytest.approx([m["lr"] for m in planned["history"][2:]])
    assert json.loads((tmp_path / "ext" / "final.json").read_text())["extended_from_epochs"] == 2
    with pytest.raises(ValueError, match="already run 4"):
        train(TrainConfig.make(**FAST, epochs=3, out=str(tmp_path / "ext")), resume=True, data=digits)


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        RunFolder(tmp_path, "x").start({"epochs": 1}, resume=True)


# -- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize("d,match", [
    ({"k": "lots"}, "k: cannot read 'lots' as int"),
    ({"k": 2.7}, "k: cannot read 2.7 as int"),
    ({"epochs": True}, "epochs: cannot read True as int"),
    ({"lr": "fast"}, "lr: cannot read 'fast' as float"),
    ({"milestones": "x"}, "milestones: cannot read 'x' as float"),
    ({"amp": "perhaps"}, "amp: cannot read .perhaps. as bool"),
    ({"nope": 1}, "unknown configuration key 'nope'"),
])
def test_from_dict_converts_or_names_the_key(d, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(d)


def test_validate_checks_types_of_fields_set_directly():
    cfg = TrainConfig(epochs="3")
    with pytest.raises(ValueError, match="epochs: expected int"):
        cfg.validate()
    with pytest.raises(ValueError, match="k: expected int"):
        TrainConfig(scheme=SchemeConfig(k=2.5)).validate()


def test_flat_and_nested_forms_agree_and_round_trip():
    a = TrainConfig.make(k=6, public="builtin", epochs=3)
    b = TrainConfig(scheme=SchemeConfig(k=6, public="builtin"), epochs=3)
    assert a == b and TrainConfig.from_dict(a.to_dict()) == a
    assert from_dict(TrainConfig, {"scheme": {"k": 6, "public": "builtin"}, "epochs": 3}) == a
    assert a.to_dict()["k"] == 6 and "scheme" not in a.to_dict()       # final.json stays flat


def test_scheme_defaults_follow_the_public_pool():
    inside, cross = SchemeConfig().validate(), SchemeConfig(public="builtin").validate()
    assert (inside.k, inside.private_slots, inside.upper) == (K_INSIDE, K_INSIDE, UPPER)
    assert (cross.k, cross.num_private, cross.dom) == (K_CROSS, 2, DOM)
    with pytest.raises(ValueError, match="leaves no public slot"):
        SchemeConfig(public="builtin", k=2).validate()


def _options(parser: argparse.ArgumentParser) -> dict:
    return {a.dest: (a.default, a.help) for a in parser._actions if a.option_strings}


def _subparser(parser, *names):
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_every_command_has_the_same_scheme_options():
    parser = build_parser()
    scheme = ("mode", "k", "upper", "dom", "num_private", "public", "public_size", "public_resize", "legacy")
    commands = [("train",), ("federated",), ("encrypt",), ("show",)]
    seen = {c: _options(_subparser(parser, *c)) for c in commands}
    for name in scheme:
        first = seen[commands[0]][name]
        for c in commands[1:]:
            assert seen[c][name] == first, (c, name)
        assert "(default None)" not in (first[1] or "") and first[1].count("default:") <= 1


def test_cuda_device_without_cuda_is_a_one_line_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--device", "cuda", "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "Traceback" not in err and not (tmp_path / "r").exists()


# -- checkpoints ----------------------------------------------------------------------------------
def test_a_checkpoint_with_wrong_weights_names_the_problem(tmp_path, digits):
    train(TrainConfig.make(**FAST, epochs=1, out=str(tmp_path)), data=digits)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    name = next(iter(state["model"]))
    for change, match in [(lambda m: m.pop(name), "missing"),
                          (lambda m: m.__setitem__(name, torch.zeros(1)), "has shape"),
                          (lambda m: m.__setitem__(name, torch.full_like(m[name], float("nan"))), "NaN")]:
        broken = {**state, "model": dict(state["model"])}
        change(broken["model"])
        torch.save(broken, tmp_path / "broken.pt")
        with pytest.raises(ValueError, match=match):
            load_model(tmp_path / "broken.pt")


def test_a_checkpoint_with_a_bad_record_is_refused_naming_the_file_before_allocating(tmp_path, digits, capsys):
    train(TrainConfig.make(**FAST, epochs=1, out=str(tmp_path / "run")), data=digits)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    cases = [({k: v for k, v in state.items() if k != "config"}, "no 'config'"),
             ({**state, "config": 5}, "'config' must be a mapping"),
             ({**state, "num_classes": "10"}, "num_classes must be an integer"),
             ({**state, "num_classes": 10 ** 12}, "need num_classes >= 1 and at most"),
             ({**state, "config": {**state["config"], "width": 1e9}}, "at most 1,073,741,824"),
             ({**state, "config": {**state["config"], "width": 3000.0}}, "at most 1,073,741,824"),
             ({k: v for k, v in state.items() if k != "model_name"}, "no 'model_name'"),
             ({**state, "model": 3}, "holds no weights"),
             ({k: v for k, v in state.items() if k != "epoch"}, "records no epoch")]
    for i, (broken, match) in enumerate(cases):
        path = tmp_path / f"broken{i}.pt"
        torch.save(broken, path)
        with pytest.raises(ValueError, match=match) as err:
            load_model(path)
        assert str(path) in str(err.value)
        assert main(["evaluate", "--checkpoint", str(path), "--T", "1"]) == 2
        out = capsys.readouterr().err
        assert match.split()[0] in out and str(path) in out and "Traceback" not in out
    # --resume of a run folder whose checkpoint lost its configuration
    torch.save(cases[0][0], tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="no 'config'"):
        RunFolder(tmp_path / "run", state["format"]).start(state["config"], resume=True)


def test_load_model_checks_its_device_argument(tmp_path, digits):
    train(TrainConfig.make(**FAST, epochs=1, out=str(tmp_path)), data=digits)
    with pytest.raises(ValueError, match="unknown device: device='gpu'"):
        load_model(tmp_path / "checkpoint.pt", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' asked for, but this machine has no CUDA device"):
            load_model(tmp_path / "checkpoint.pt", device="cuda")


def test_an_unusable_out_fails_before_the_first_epoch(tmp_path, digits):
    (tmp_path / "file").write_text("not a folder")
    epochs = []
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        train(TrainConfig.make(**FAST, epochs=1, out=str(tmp_path / "file" / "run")), data=digits,
              on_epoch_end=lambda e, m: epochs.append(e))
    assert epochs == [] and (tmp_path / "file").read_text() == "not a folder"


# -- the sign-invariant stage: on for InstaHide, recorded everywhere --------------------------------
@pytest.mark.parametrize("mode,setting,expected", [("instahide", "auto", True), ("mixup", "auto", False),
                                                   ("vanilla", "auto", False), ("instahide", "off", False),
                                                   ("mixup", "on", True)])
def test_sign_invariant_choice_is_recorded_and_reloaded(tmp_path, digits, mode, setting, expected):
    from instahide import SignInvariant

    final = train(TrainConfig.make(**FAST, mode=mode, sign_invariant=setting, epochs=1, out=str(tmp_path)),
                  data=digits)
    assert final["sign_invariant"] is expected and final["config"]["sign_invariant"] == setting
    model, _, state = load_model(tmp_path / "checkpoint.pt")
    assert state["sign_invariant"] is expected and isinstance(model, SignInvariant) is expected


def test_federated_parties_and_the_shared_trainer_use_the_same_rule():
    from instahide import SignInvariant
    from instahide.federated import FedConfig, build_global_model

    assert isinstance(build_global_model(FedConfig(), 1, 10), SignInvariant)
    assert not isinstance(build_global_model(FedConfig.make(mode="mixup"), 1, 10), SignInvariant)
    with pytest.raises(ValueError, match="sign_invariant must be one of"):
        TrainConfig.make(sign_invariant="maybe").validate()


def test_short_recipe_is_a_one_cycle_with_label_smoothing_and_resumes(tmp_path, digits):
    cfg = TrainConfig.make(**{**FAST, "lr": 0.1}, recipe="short", epochs=8, out=str(tmp_path / "s"))
    _interrupt_after(3, cfg, digits)
    final = train(cfg, resume=True, data=digits)
    lrs = [m["lr"] for m in final["history"]]
    assert lrs == pytest.approx([0.05, 0.1, 0.1 * 6 / 7, 0.1 * 5 / 7, 0.1 * 4 / 7, 0.1 * 3 / 7, 0.1 * 2 / 7, 0.1 / 7])
    assert final["resumed_from_epoch"] == 3 and final["final_test_acc"] > 0.5
    with pytest.raises(ValueError, match="recipe must be one of"):
        TrainConfig.make(recipe="fast").validate()
