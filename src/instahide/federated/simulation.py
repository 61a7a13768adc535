"""Running a federation on one machine: Flower's simulation engine (Ray), or an in-process grid.

- ``backend="ray"``: :func:`flwr.simulation.run_simulation` with ``num_parties`` virtual SuperNodes, each
  ClientApp in a Ray actor with one CPU (``num_cpus`` caps the whole simulation). This is Flower's
  engine, with its scheduling, message store and failure handling. Starting Ray takes 10-20 s.
- ``backend="inprocess"``: :class:`InProcessGrid`, a minimal ``Grid`` that calls the same ClientApp
  sequentially in this process, turning a handler's exception into an error reply exactly as a node
  would. No Ray; deterministic; what the tests and the CPU experiments use.

Both run the same ServerApp logic (:func:`~instahide.federated.server.run_server`) and ClientApp
(:func:`~instahide.federated.client.make_client_app`).

Example::

    from instahide.federated import FedConfig, run_federated
    final = run_federated(FedConfig(mode="instahide", num_parties=4, rounds=5, out="runs/fed"))
    print(final["final_test_acc"])
"""
from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from .config import FedConfig

__all__ = ["InProcessGrid", "run_federated", "BACKENDS"]

BACKENDS = ("ray", "inprocess")


class InProcessGrid(Grid):
    """A Flower ``Grid`` whose nodes are ClientApp calls in this process (one per party).

    Node ``i`` (id ``i + 1``) has node config ``{"partition-id": i, "num-partitions": num_nodes}`` and a
    persistent ``Context``. A handler that raises produces a reply carrying an ``Error`` (code
    ``ClientAppException``) instead of stopping the federation. Nodes in ``offline`` are not listed
    (a party that never connected).
    """

    def __init__(self, client_app, num_nodes: int, offline=()):
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self.client_app = client_app
        self.num_nodes = num_nodes
        self.offline = set(offline)
        self.contexts = {i + 1: Context(run_id=1, node_id=i + 1, node_config={"partition-id": i,
                                                                              "num-partitions": num_nodes},
                                        state=RecordDict(), run_config={}) for i in range(num_nodes)}
        self._run = None
        self._pending: dict = {}
        self._count = 0
        _set_task_identity()
        self.sent: list = []        # every (message, reply) pair, for inspection

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id,
                       ttl=ttl)

    def get_node_ids(self):
        return [n for n in self.contexts if n - 1 not in self.offline]

    def push_messages(self, messages):
        """Queue ``messages``; each gets a message id (what a reply's ``reply_to_message_id`` names)."""
        ids = []
        for msg in messages:
            self._count += 1
            msg.metadata.__dict__["_message_id"] = f"inprocess-{self._count}"  # as Flower's grids set it
            self._pending[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        """Deliver the queued messages named in ``message_ids`` (each once) and return their replies."""
        return [self._deliver(self._pending.pop(i)) for i in list(message_ids) if i in self._pending]

    def _deliver(self, msg):
        try:
            reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # a crashing party: an error reply, as Flower's node runtime sends
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            reason = f"{type(exc).__name__}: {exc} ({Path(frame.filename).name}:{frame.lineno})"
            reply = Message(Error(code=1, reason=reason), reply_to=msg)
        self.sent.append((msg, reply))
        return reply

    def send_and_receive(self, messages, *, timeout=None):
        return [self._deliver(m) for m in messages]


def _set_task_identity() -> None:
    """Messages take their run, node and task ids from flwr's process-wide TaskIdentity, which Flower's
    runtimes set; in-process, give it placeholders (only where unset)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("run_id", 1), ("node_id", 0), ("task_id", 1)):
        try:
            getattr(TaskIdentity, name)
        except RuntimeError:
            setattr(TaskIdentity, name, value)


def run_federated(cfg: FedConfig, *, backend: str = "ray", num_cpus: int | None = None, log=print) -> dict:
    """Run the federation described by ``cfg`` on this machine; returns the server's final summary.

    Args:
        cfg: the configuration (parties, rounds, scheme, strategy, out folder, resume).
        backend: ``"ray"`` (Flower's simulation engine) or ``"inprocess"`` (:class:`InProcessGrid`).
        num_cpus: CPUs Ray may use in all (default: ``min(num_parties, os.cpu_count())``); each party
            gets one.
        log: progress lines (in-process backend; Ray logs through Flower's logger).
    """
    cfg.validate()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    from .client import make_client_app
    from .server import make_server_app, run_server

    if backend == "inprocess":
        return run_server(InProcessGrid(make_client_app(cfg), cfg.num_parties), cfg, log=log)
    from flwr.simulation import run_simulation

    cpus = num_cpus or max(1, min(cfg.num_parties, os.cpu_count() or 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                      "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False}}
    run_simulation(server_app=make_server_app(cfg), client_app=make_client_app(cfg),
                   num_supernodes=cfg.num_parties, backend_config=backend_config)
    final = Path(cfg.out) / "final.json"
    if not final.exists():
        raise RuntimeError(f"the simulation ended without writing {final}; see Flower's log above")
    return json.loads(final.read_text())
