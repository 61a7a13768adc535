"""The Flower ServerApp: a strategy (FedAvg by default), central evaluation on CLEAN test data, and a
checkpoint of the global model after every round.

:func:`run_server` drives the rounds itself with the strategy's ``configure_train`` /
``aggregate_train`` (and ``configure_evaluate`` / ``aggregate_evaluate`` when ``fraction_evaluate >
0``), which is what ``Strategy.start`` does, so that a resumed run keeps its real round numbers. After
each round it evaluates the global model on the clean test set, appends a line to ``out/rounds.jsonl``
and writes ``out/checkpoint.pt`` atomically (weights, round, configuration, history; loadable with
``torch.load(weights_only=True)``). With ``resume`` it continues from the checkpoint's round.

Failures: a node whose handler raises (or that drops out) sends an error reply; the round aggregates
the replies that arrived. Only a round with no successful reply leaves the global model unchanged
(it is recorded with ``updated: false``). ``min_train_nodes`` / ``fraction_train`` /
``min_available_nodes`` are Flower's sampling settings.

Adaptive server optimisers (fedadam, fedyogi, fedadagrad, fedavgm) keep moment estimates in the strategy
object; they are not checkpointed, so a resumed run restarts them from zero.

Example (the module-level ``app`` is what a Flower app's ``serverapp`` key points at)::

    [tool.flwr.app.components]
    serverapp = "instahide.federated.server:app"
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from .._io import atomic_open, atomic_torch_save, atomic_write_text, load_torch_checkpoint
from .config import FedConfig
from .local import build_global_model, model_name

__all__ = ["make_strategy", "run_server", "make_server_app", "app", "load_server_checkpoint",
           "load_test_data", "CHECKPOINT", "ROUNDS"]

CHECKPOINT = "checkpoint.pt"
ROUNDS = "rounds.jsonl"
_FORMAT = "instahide-federated-checkpoint/1"


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
    from ..data import load_dataset

    ds = load_dataset(cfg.dataset, root=cfg.root, split="test")
    if ds.labels is None:
        raise ValueError(f"dataset {cfg.dataset!r} has no labels")
    if cfg.test_subset is not None and cfg.test_subset < len(ds):
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:cfg.test_subset].sort().values
        ds = ds.subset(order.numpy())
    x, y = ds.to_tensor(device="cpu")
    return x, y, ds.num_classes


def _save_checkpoint(path: Path, state: dict, server_round: int, cfg: FedConfig, history: list,
                     arch: dict) -> None:
    blob = {"format": _FORMAT, "model": {k: v.detach().cpu().clone() for k, v in state.items()},
            "round": server_round, "config": cfg.to_dict(), "history": history, **arch}
    atomic_torch_save(path, blob)


def load_server_checkpoint(path) -> dict:
    """A server checkpoint, read with ``weights_only=True``."""
    return load_torch_checkpoint(path, _FORMAT, "federated checkpoint")


# Fields that may change between a run and its resumption.
_RESUMABLE = ("rounds", "resume", "out", "timeout", "drop", "threads")


def run_server(grid, cfg: FedConfig, *, log=print) -> dict:
    """Run ``cfg.rounds`` rounds of federated training over ``grid``; returns the final summary.

    Args:
        grid: a Flower ``Grid`` (from a ServerApp, the simulation engine, or
            :class:`~instahide.federated.simulation.InProcessGrid`).
        cfg: the configuration (``cfg.resume`` continues ``cfg.out/checkpoint.pt``).
        log: where progress lines go (``None``: nowhere).
    """
    from flwr.app import ArrayRecord, ConfigRecord

    log = log or (lambda *a, **k: None)
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT
    x_test, y_test, num_classes = load_test_data(cfg)
    c = x_test.shape[1]
    model = build_global_model(cfg, c, num_classes)
    arch = {"model_name": model_name(cfg, c), "num_classes": num_classes, "in_channels": c}
    history: list[dict] = []
    start = 0
    if cfg.resume:
        blob = load_server_checkpoint(ckpt)
        saved = FedConfig.from_dict(blob["config"])
        diff = {k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items()
                if k not in _RESUMABLE and getattr(cfg, k) != v}
        if diff:
            raise ValueError(f"cannot resume {ckpt}: configuration differs in {diff} (saved, given)")
        model.load_state_dict(blob["model"])
        history, start = list(blob["history"]), int(blob["round"])
        log(f"resuming {ckpt} after round {start}")
    elif ckpt.exists():
        raise FileExistsError(f"{ckpt} exists: set resume (--resume) to continue it, or use another out")
    out.mkdir(parents=True, exist_ok=True)
    strategy = make_strategy(cfg)
    arrays = ArrayRecord(model.state_dict())
    run_config = cfg.to_run_config()
    from ..train import evaluate

    t_run = time.perf_counter()
    for rnd in range(start + 1, cfg.rounds + 1):
        t0 = time.perf_counter()
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(run_config)), grid))
        replies = list(grid.send_and_receive(messages, timeout=cfg.timeout))
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
            ev_replies = list(grid.send_and_receive(
                strategy.configure_evaluate(rnd, arrays, ConfigRecord(dict(run_config)), grid), timeout=cfg.timeout))
            eval_metrics = strategy.aggregate_evaluate(rnd, ev_replies)
        state = arrays.to_torch_state_dict()
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()})
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
        _save_checkpoint(ckpt, model.state_dict(), rnd, cfg, history, arch)
        with atomic_open(out / ROUNDS, "w") as fh:
            for h in history:
                fh.write(json.dumps(h) + "\n")
        log(f"round {rnd}/{cfg.rounds}: test acc {ev['accuracy']:.4f} ({len(ok)} replies, "
            f"{rec['failures']} failures, {rec['round_seconds']:.1f} s)")
    final = {"config": cfg.to_dict(), **arch, "rounds_run": len(history),
             "final_test_acc": history[-1]["test_acc"] if history else None,
             "test_images": len(y_test), "wall_seconds_this_run": time.perf_counter() - t_run,
             "keys": "research-seed" if cfg.research_seed is not None else "os-entropy (per party)",
             "history": history,
             "versions": {"torch": torch.__version__, "python": platform.python_version(),
                          "flwr": __import__("flwr").__version__,
                          "instahide": __import__("instahide").__version__}}
    atomic_write_text(out / "final.json", json.dumps(final, indent=2) + "\n")
    return final


def make_server_app(cfg: FedConfig | None = None):
    """A ServerApp running :func:`run_server`; the configuration is ``cfg`` or else the app's run_config."""
    from flwr.serverapp import ServerApp

    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        run_server(grid, cfg if cfg is not None else FedConfig.from_run_config(context.run_config))

    return server


try:  # the module-level app for `flwr run` (flwr is an optional extra)
    app = make_server_app()
except ImportError:  # pragma: no cover
    app = None
