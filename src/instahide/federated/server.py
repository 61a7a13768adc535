"""The Flower ServerApp: a strategy (FedAvg by default), central evaluation on CLEAN test data, and the
engine's run folder with rounds for epochs (``checkpoint.pt`` every round, ``rounds.jsonl``, ``final.json``).

:func:`run_server` drives the rounds itself with the strategy's ``configure_*`` / ``aggregate_*`` (what
``Strategy.start`` does), so a resumed run keeps its round numbers. A node that fails sends an error
reply and the round aggregates the others; a round with no reply leaves the model unchanged
(``updated: false``). Adaptive server optimisers' moment estimates are not checkpointed: a resumed run
restarts them from zero. A Flower app points at the module-level ``app``
(``serverapp = "instahide.federated.server:app"``); docs/federated.md.
"""
from __future__ import annotations

import time

import torch

from .._io import load_torch_checkpoint
from ..data import load_dataset
from ..train import evaluate, load_weights, pick_subset
from ..train.engine import CHECKPOINT, RunFolder, summary
from .config import FedConfig
from .local import PACKED, build_global_model, pack_state, party_arch, unpack_state
from .node import poll_from_env, shorten_object_pull_backoff

__all__ = ["make_strategy", "run_server", "make_server_app", "app", "load_server_checkpoint",
           "load_test_data", "send_and_receive", "CHECKPOINT", "ROUNDS", "FORMAT", "POLL_INTERVAL"]

ROUNDS = "rounds.jsonl"
FORMAT = "instahide-federated-checkpoint/2"
POLL_INTERVAL = 0.2  # seconds between the server's polls for replies (Flower's deployed grid waits 3 s);
                     # INSTAHIDE_FLOWER_POLL sets it in a deployed ServerApp


def make_strategy(cfg: FedConfig):
    """The Flower strategy named by ``cfg.strategy`` with the run's sampling settings."""
    from flwr.serverapp import strategy as S

    classes = {"fedavg": S.FedAvg, "fedprox": S.FedProx, "fedavgm": S.FedAvgM, "fedadagrad": S.FedAdagrad,
               "fedadam": S.FedAdam, "fedyogi": S.FedYogi, "fedmedian": S.FedMedian,
               "fedtrimmedavg": S.FedTrimmedAvg, "krum": S.Krum}
    if cfg.strategy not in classes:
        raise ValueError(f"unknown strategy {cfg.strategy!r}; expected one of {sorted(classes)}")
    available = cfg.min_available_nodes if cfg.min_available_nodes is not None else cfg.num_parties
    kw = dict(fraction_train=cfg.fraction_train, fraction_evaluate=cfg.fraction_evaluate,
              min_train_nodes=cfg.min_train_nodes, min_evaluate_nodes=min(cfg.min_train_nodes, available),
              min_available_nodes=available)
    if cfg.strategy == "fedprox":
        kw["proximal_mu"] = cfg.proximal_mu
    if cfg.server_lr is not None:
        if cfg.strategy in ("fedadagrad", "fedadam", "fedyogi"):
            kw["eta"] = cfg.server_lr
        elif cfg.strategy == "fedavgm":
            kw["server_learning_rate"] = cfg.server_lr
        else:
            raise ValueError(f"server_lr applies to fedadagrad, fedadam, fedyogi and fedavgm, not {cfg.strategy}")
    return classes[cfg.strategy](**kw)


def load_test_data(cfg: FedConfig):
    """The clean test set ``(x (M, C, H, W) normalised, y (M,), num_classes)`` for central evaluation."""
    ds = pick_subset(load_dataset(cfg.dataset, root=cfg.root, split="test"), cfg.test_subset)
    if ds.labels is None:
        raise ValueError(f"dataset {cfg.dataset!r} has no labels")
    x, y = ds.to_tensor(device="cpu")
    return x, y, ds.num_classes


def load_server_checkpoint(path) -> dict:
    """A server checkpoint, read with ``weights_only=True``."""
    return load_torch_checkpoint(path, FORMAT, "federated checkpoint")


def send_and_receive(grid, messages, *, timeout: float | None, poll_interval: float = POLL_INTERVAL) -> list:
    """``grid.send_and_receive`` with a shorter wait between polls: push ``messages``, then pull until
    every one has a reply or ``timeout`` seconds have passed (the replies that came, in arrival order).

    Flower 1.42's deployed grid (``HttpGrid``) sleeps 3 s between polls, which alone costs up to 3 s a
    round; a poll is one small request to the SuperLink on the ServerApp's own machine."""
    messages = list(messages)
    if not messages:
        return []
    pending = {i for i in grid.push_messages(messages) if i is not None}  # None: not pushed (a failure)
    end = None if timeout is None else time.monotonic() + timeout
    replies: list = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(r.metadata.reply_to_message_id for r in got)
        if not pending or (end is not None and time.monotonic() >= end):
            break
        time.sleep(poll_interval if end is None else max(0.0, min(poll_interval, end - time.monotonic())))
    return replies


def run_server(grid, cfg: FedConfig, *, log=print, poll_interval: float = POLL_INTERVAL) -> dict:
    """Run ``cfg.rounds`` rounds of federated training over ``grid``; returns the final summary.

    Args:
        grid: a Flower ``Grid`` (from a ServerApp, the simulation engine, or
            :class:`~instahide.federated.simulation.InProcessGrid`).
        cfg: the configuration (``cfg.resume`` continues ``cfg.out/checkpoint.pt``; a larger ``rounds``
            extends a finished run).
        log: where progress lines go (``None``: nowhere).
        poll_interval: seconds between polls for a round's replies (:func:`send_and_receive`).
    """
    import flwr
    from flwr.app import ArrayRecord, ConfigRecord

    log = log or (lambda *a, **k: None)
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    run = RunFolder(cfg.out, FORMAT, length="rounds", metrics="rounds")
    state = run.start(cfg.to_dict(), cfg.resume)
    x_test, y_test, num_classes = load_test_data(cfg)
    c = x_test.shape[1]
    model = build_global_model(cfg, c, num_classes)
    arch = party_arch(cfg, c, num_classes)
    history, start = [], 0
    if state is not None:
        load_weights(model, state["model"], str(run.checkpoint))
        history, start = list(state["history"]), int(state["round"])
        log(f"resuming {run.checkpoint} after round {start} of {cfg.rounds}")
    strategy = make_strategy(cfg)
    template = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def to_record(state: dict):  # one array per tensor, or all in one (cfg.pack_weights)
        return ArrayRecord({PACKED: pack_state(state)}) if cfg.pack_weights else ArrayRecord(state)

    def from_record(record) -> dict:
        state = record.to_torch_state_dict()
        return unpack_state(state[PACKED], template) if list(state) == [PACKED] else state

    arrays = to_record(model.state_dict())
    run_config = cfg.to_run_config()
    t_run = time.perf_counter()
    for rnd in range(start + 1, cfg.rounds + 1):
        t0 = time.perf_counter()
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(run_config)), grid))
        replies = send_and_receive(grid, messages, timeout=cfg.timeout, poll_interval=poll_interval)
        ok = [r for r in replies if not r.has_error()]
        failed = [r for r in replies if r.has_error()]
        for r in failed:
            log(f"round {rnd}: node {r.metadata.src_node_id} failed: {(r.error.reason.strip().splitlines() or [''])[-1]}")
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        updated = new_arrays is not None
        if updated:
            arrays = new_arrays
        t_train = time.perf_counter() - t0
        eval_metrics = None
        if cfg.fraction_evaluate > 0:
            ev_messages = strategy.configure_evaluate(rnd, arrays, ConfigRecord(dict(run_config)), grid)
            ev_replies = send_and_receive(grid, ev_messages, timeout=cfg.timeout, poll_interval=poll_interval)
            eval_metrics = strategy.aggregate_evaluate(rnd, ev_replies)
        load_weights(model, from_record(arrays), f"aggregated weights of round {rnd}")
        ev = evaluate(model, x_test, y_test)
        rec = {"round": rnd, "test_acc": ev["accuracy"], "test_loss": ev["loss"], "updated": updated,
               "replies": len(ok), "failures": len(failed) + max(0, len(messages) - len(replies)),
               "round_seconds": time.perf_counter() - t0, "train_phase_seconds": t_train}
        if train_metrics is not None:
            for key in ("train-loss", "train-acc", "encrypt-seconds", "train-seconds"):
                if key in train_metrics:
                    rec[key.replace("-", "_")] = float(train_metrics[key])
            rec["client_seconds_max"] = max(float(r.content["metrics"]["train-seconds"]) for r in ok)
            rec["client_encrypt_seconds_max"] = max(float(r.content["metrics"]["encrypt-seconds"]) for r in ok)
        if eval_metrics is not None:
            rec.update({f"fed_{k.replace('-', '_')}": float(v) for k, v in eval_metrics.items()
                        if k != "num-examples"})
        history.append(rec)
        run.save(rnd, model, None, None, cfg.to_dict(), history, **arch)
        log(f"round {rnd}/{cfg.rounds}: test acc {ev['accuracy']:.4f} ({len(ok)} replies, "
            f"{rec['failures']} failures, {rec['round_seconds']:.1f} s)")
    final = {"config": cfg.to_dict(), **arch, "test_images": len(y_test),
             "keys": "research-seed" if cfg.research_seed is not None else "os-entropy (per party)",
             **summary(history, state, t_run, unit="round")}
    final["versions"]["flwr"] = flwr.__version__
    return run.finish(final)


def make_server_app(cfg: FedConfig | None = None):
    """A ServerApp running :func:`run_server`; the configuration is ``cfg`` or else the app's run_config."""
    from flwr.serverapp import ServerApp

    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        poll = poll_from_env()  # deployed with INSTAHIDE_FLOWER_POLL: poll replies, and retry arrays, quickly
        if poll is not None:
            shorten_object_pull_backoff(poll)
        run_server(grid, cfg if cfg is not None else FedConfig.from_run_config(context.run_config),
                   poll_interval=poll or POLL_INTERVAL)

    return server


try:  # the module-level app for `flwr run` (flwr is an optional extra)
    app = make_server_app()
except ImportError:  # pragma: no cover
    app = None
