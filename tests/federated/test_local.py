"""Configuration round trips, and one party's local training on real digits (no Flower needed)."""
import pytest
import torch

pytest.importorskip("sklearn")
from instahide._config import flat_dict  # noqa: E402
from instahide.federated import FedConfig, build_global_model, load_party, local_evaluate, local_train  # noqa: E402
from instahide.federated import local as local_mod  # noqa: E402
from instahide.federated.local import party_key_generator  # noqa: E402

BASE = dict(num_parties=3, subset=600, width=0.5, batch_size=64, research_seed=0)


def test_run_config_round_trip_and_types():
    cfg = FedConfig.make(mode="mixup", k=3, partition="dirichlet", alpha=0.3, root="/data", num_parties=5, lr=0.02)
    rc = cfg.to_run_config()
    assert all("_" not in key for key in rc)                           # kebab-case
    assert "num-private" not in rc and "research-seed" not in rc       # None values are left out
    assert FedConfig.from_run_config(rc) == cfg
    # TOML-ish values: ints for floats, strings for bools, Flower's own keys ignored
    got = FedConfig.from_run_config({"lr": 1, "resume": "true", "server-round": 3, "proximal-mu": 0.1,
                                     "research-seed": "none"})
    assert got.lr == 1.0 and isinstance(got.lr, float) and got.resume is True and got.research_seed is None
    every = flat_dict(FedConfig())                                      # every option, groups spread
    assert set(FedConfig().to_run_config()) == {n.replace("_", "-") for n, v in every.items() if v is not None}


@pytest.mark.parametrize("bad,match", [
    ({"nope": 1}, "unknown run-config key 'nope'"),
    ({"k": 2.5}, "cannot read 2.5 as int"),
    ({"resume": "maybe"}, "cannot read 'maybe' as bool"),
])
def test_run_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        FedConfig.from_run_config(bad)


@pytest.mark.parametrize("kw,match", [
    ({"mode": "secure"}, "unknown mode"), ({"partition": "zipf"}, "unknown partition"),
    ({"strategy": "fedfoo"}, "unknown strategy"), ({"num_parties": 0}, "num_parties must be >= 1"),
    ({"min_train_nodes": 3, "num_parties": 2}, "exceeds num_parties"), ({"alpha": 0}, "alpha"),
    ({"fraction_train": 1.5}, "fraction_train"), ({"k": 4, "min_party_size": 3}, "min_party_size=3"),
    ({"drop": "x"}, "round:partition"), ({"upper": 0.1, "k": 4}, "upper"),
    ({"mode": "vanilla", "public": "builtin"}, "vanilla"),
])
def test_validate_names_the_problem(kw, match):
    with pytest.raises(ValueError, match=match):
        FedConfig.make(**kw).validate()


@pytest.fixture(scope="module")
def parties():
    cfg = FedConfig.make(**BASE)
    return cfg, [load_party(cfg, i) for i in range(3)]


def test_parties_hold_disjoint_shares(parties):
    cfg, ps = parties
    assert sum(len(p.x) for p in ps) == 600
    flat = torch.cat([p.x.flatten(1) for p in ps])
    assert len(torch.unique(flat, dim=0)) >= 590         # (digits has a few duplicate images)
    with pytest.raises(ValueError, match="out of range"):
        load_party(cfg, 3)
    with pytest.raises(ValueError, match="num-partitions=4"):
        load_party(cfg, 0, num_partitions=4)


def test_local_train_updates_same_keys_and_learns(parties):
    cfg, ps = parties
    cfg = cfg.replace(local_epochs=3, mode="vanilla", batch_size=32)  # instahide: see test_flower
    model = build_global_model(cfg, 1, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ev0 = local_evaluate(before, ps[0], cfg)
    state, metrics = local_train(before, ps[0], cfg, server_round=1)
    assert state.keys() == before.keys()
    assert all(state[k].shape == before[k].shape and state[k].dtype == before[k].dtype for k in state)
    assert any(not torch.equal(state[k], before[k]) for k in state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())    # input not modified
    assert metrics["num-examples"] == len(ps[0].x)
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    ev1 = local_evaluate(state, ps[0], cfg)
    assert ev1["eval-acc"] > ev0["eval-acc"] and ev1["num-examples"] == len(ps[0].x_test)


def test_research_seed_reproducible_entropy_not(parties):
    cfg, ps = parties
    init = build_global_model(cfg, 1, 10).state_dict()
    a, _ = local_train(init, ps[0], cfg, server_round=2)
    b, _ = local_train(init, ps[0], cfg, server_round=2)
    c, _ = local_train(init, ps[0], cfg, server_round=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    free = cfg.replace(research_seed=None)
    d, _ = local_train(init, ps[0], free, server_round=2)
    e, _ = local_train(init, ps[0], free, server_round=2)
    assert any(not torch.equal(d[k], e[k]) for k in d)
    # every party and every round has its own keys
    draws = {(p, r): party_key_generator(cfg, p, r).random_bytes(16).tobytes() for p in range(3) for r in (1, 2)}
    assert len(set(draws.values())) == 6


def test_partners_come_from_the_party_only(parties, monkeypatch):
    cfg, ps = parties
    seen = []
    real = local_mod.encrypt

    def spy(images, labels=None, **kw):
        seen.append((images, kw))
        return real(images, labels, **kw)

    monkeypatch.setattr(local_mod, "encrypt", spy)
    cfg2 = cfg.replace(local_epochs=2)
    local_train(build_global_model(cfg2, 1, 10).state_dict(), ps[1], cfg2, server_round=1)
    assert len(seen) == 2                                   # fresh encryption every local epoch
    for images, kw in seen:
        assert torch.equal(images, ps[1].x)                  # the private pool IS the party's own data
        assert kw["public"] is None and kw["k"] == cfg.scheme.k
        assert kw["generator"].origin == "research-seed"


def test_fedprox_term_keeps_weights_near_the_global_model(parties):
    cfg, ps = parties
    init = build_global_model(cfg, 1, 10).state_dict()

    def dist(mu):
        s, _ = local_train(init, ps[0], cfg.replace(local_epochs=2, weight_decay=0.0), server_round=1,
                           proximal_mu=mu)
        return sum(((s[k].float() - init[k].float()) ** 2).sum() for k in s if init[k].is_floating_point()
                   and "running" not in k).sqrt().item()

    assert dist(50.0) < 0.5 * dist(0.0)


def test_bad_global_weights_are_refused(parties):
    cfg, ps = parties
    init = build_global_model(cfg, 1, 10).state_dict()
    broken = dict(init)
    broken.pop(next(iter(broken)))
    with pytest.raises(ValueError, match="missing"):
        local_train(broken, ps[0], cfg, server_round=1)
    name = next(k for k, v in init.items() if v.is_floating_point())
    with pytest.raises(ValueError, match="NaN"):
        local_train({**init, name: torch.full_like(init[name], float("nan"))}, ps[0], cfg, server_round=1)
    with pytest.raises(ValueError, match="shape"):
        local_train({**init, name: torch.zeros(3)}, ps[0], cfg, server_round=1)
