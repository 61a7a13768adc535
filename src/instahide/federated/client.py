"""The Flower ClientApp: one party, holding one partition, training on its own fresh encryptions.

Each node (SuperNode) runs this app with node config ``partition-id`` and ``num-partitions`` (set by the
simulation engine, or ``flower-supernode --node-config "partition-id=0 num-partitions=4"``). The train
handler reads the global weights and the run's configuration from the message, calls
:func:`~instahide.federated.local.local_train` and replies with exactly two records:

- ``"arrays"``: an ``ArrayRecord`` of the model's ``state_dict`` (same keys and shapes), and
- ``"metrics"``: a ``MetricRecord`` of scalars (``num-examples``, losses, accuracies, seconds).

Nothing else leaves the party: no images, encryptions, labels, coefficients, partner indices or mask
bits (``tests/federated`` checks this on real replies).

Example (the module-level ``app`` is what a Flower app's ``clientapp`` key points at)::

    [tool.flwr.app.components]
    clientapp = "instahide.federated.client:app"
"""
from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .config import FedConfig
from .local import PACKED, load_party, local_evaluate, local_train, pack_state, state_template, unpack_state

__all__ = ["make_client_app", "app", "config_from_message", "handle_train", "handle_evaluate"]


def config_from_message(msg: Message, context: Context, default: FedConfig | None = None) -> FedConfig:
    """The run's configuration: from the round's ``ConfigRecord`` (the server sends all of it), else
    ``default``, else the app's ``run_config``; a node's ``data-root`` overrides ``root``."""
    record = msg.content.config_records.get("config")
    fields = {k: v for k, v in (record or {}).items()}
    if any(k not in ("server-round", "proximal-mu") for k in fields):
        cfg = FedConfig.from_run_config(fields)
    elif default is not None:
        cfg = FedConfig(**default.to_dict())
    else:
        cfg = FedConfig.from_run_config(context.run_config)
    root = context.node_config.get("data-root")
    if root:
        cfg.root = str(root)
    return cfg.validate()


def _party(msg: Message, context: Context, default: FedConfig | None):
    cfg = config_from_message(msg, context, default)
    if "partition-id" not in context.node_config:
        raise ValueError("this node has no partition-id in its node config; start it with "
                         "--node-config \"partition-id=0 num-partitions=N\"")
    pid = int(context.node_config["partition-id"])
    nparts = context.node_config.get("num-partitions")
    return cfg, load_party(cfg, pid, None if nparts is None else int(nparts))


def handle_train(msg: Message, context: Context, default: FedConfig | None = None) -> Message:
    """The train handler's logic: global weights in, updated weights and scalar metrics out."""
    cfg, party = _party(msg, context, default)
    conf = msg.content.config_records.get("config") or {}
    server_round = int(conf.get("server-round", 1))
    if (server_round, party.partition_id) in cfg.drops():
        raise RuntimeError(f"simulated dropout of partition {party.partition_id} in round {server_round} "
                           f"(drop={cfg.drop!r})")
    state, packed = _weights(msg, cfg, party)
    new_state, metrics = local_train(state, party, cfg, server_round=server_round,
                                     proximal_mu=conf.get("proximal-mu"))
    arrays = ArrayRecord({PACKED: pack_state(new_state)}) if packed else ArrayRecord(new_state)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def _weights(msg: Message, cfg: FedConfig, party) -> tuple[dict, bool]:
    """The global weights of ``msg`` as a state_dict, and whether they came packed (one array named
    ``"packed"``: FedConfig.pack_weights), in which case the reply goes back packed too."""
    state = msg.content["arrays"].to_torch_state_dict()
    if list(state) != [PACKED]:
        return state, False
    return unpack_state(state[PACKED], state_template(cfg, party.shape[0], party.num_classes)), True


def handle_evaluate(msg: Message, context: Context, default: FedConfig | None = None) -> Message:
    """The evaluate handler's logic: clean accuracy of the global weights on the party's test shard."""
    cfg, party = _party(msg, context, default)
    metrics = local_evaluate(_weights(msg, cfg, party)[0], party, cfg)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def make_client_app(cfg: FedConfig | None = None) -> ClientApp:
    """A ClientApp whose handlers wrap :func:`handle_train` / :func:`handle_evaluate`.

    ``cfg`` is only a fallback: the server's per-round ``ConfigRecord`` takes precedence, then the
    app's ``run_config``.
    """
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, cfg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, cfg)

    return client


app = make_client_app()
