"""Federated learning with InstaHide: every party encrypts its own data with its own keys, trains
locally, and sends only model weights to a Flower server that averages them.

The paper's setting (Huang et al. 2020, section 1: "private distributed learning") is several parties
that each hold private images. Here each party is a Flower ``ClientApp`` holding one partition
(:mod:`~instahide.federated.partition`: IID or Dirichlet non-IID); every local epoch it re-encrypts its
images with fresh one-time keys from its own :class:`~instahide.scheme.KeyGenerator` and trains on them
(:mod:`~instahide.federated.local`). The ``ServerApp`` (:mod:`~instahide.federated.server`) runs a Flower
strategy (FedAvg by default), evaluates the global model on clean test data, and checkpoints every
round. :mod:`~instahide.federated.simulation` runs it all on one machine (Flower's Ray engine or an
in-process grid); the same apps run deployed with ``flower-superlink`` / ``flower-supernode`` /
``flwr run`` (docs/federated.md, examples/flower_app).

What this does NOT hide: the weights each party sends are computed from its encryptions, and gradient
inversion can read training inputs off an update; InstaHide makes those inputs encryptions rather
than images, with the leakage measured in docs/audit.md.

Example::

    from instahide.federated import FedConfig, run_federated
    final = run_federated(FedConfig(mode="instahide", k=4, num_parties=4, partition="dirichlet",
                                    alpha=0.5, rounds=5, out="runs/fed"), backend="inprocess")

Needs the optional extra ``federated`` (flwr) for the apps and the simulation; the configuration,
partitions and local training functions need only torch and numpy.
"""
from .config import FedConfig, PARTITIONS, STRATEGIES
from .local import (PartyData, build_global_model, load_party, local_evaluate, local_train,
                    party_key_generator, partition_indices)
from .partition import dirichlet_partition, iid_partition, label_histogram

__all__ = [
    "FedConfig", "PARTITIONS", "STRATEGIES", "PartyData", "build_global_model", "dirichlet_partition",
    "iid_partition", "label_histogram", "load_party", "local_evaluate", "local_train", "party_key_generator",
    "partition_indices", "run_federated",
]


def run_federated(*args, **kwargs):
    """See :func:`instahide.federated.simulation.run_federated` (imports flwr)."""
    from .simulation import run_federated as _run

    return _run(*args, **kwargs)
