"""The federated configuration: one typed dataclass, every field commented, passed through Flower.

:class:`FedConfig` travels as Python, as the ``instahide federated --field-name`` options, and as
Flower's ``run_config`` with kebab-case keys (:meth:`FedConfig.to_run_config` / :meth:`~FedConfig.from_run_config`;
options left at ``None`` are absent there: Flower has no null). The server sends the whole
configuration to the parties every round, so every party trains with the server's settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .._config import Config, check_types, flat_dict, from_dict
from ..scheme.config import SchemeConfig
from ..train.config import AUGMENT, validate_training

PARTITIONS = ("iid", "dirichlet")
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedmedian",
              "fedtrimmedavg", "krum")
# Keys that Flower or its strategies add to a round's ConfigRecord; not FedConfig fields.
FLOWER_KEYS = ("server-round", "proximal-mu")


@dataclass
class FedConfig(Config):
    # -- data (each party holds one partition of the training set) ---------------------------------
    dataset: str = "digits"              # instahide.data.load_dataset name; digits is built in (no download)
    root: str | None = None              # where the dataset is (not needed for digits); a node may override it
                                         # with node config data-root=PATH
    subset: int | None = None            # use N training images drawn at random (seed 0) before partitioning
    test_subset: int | None = None       # central evaluation on N clean test images (seed 0)
    augment: str = "auto"                # auto: crop+flip for 3-channel 32x32 data, none otherwise; on / off
    partition: str = "iid"               # iid | dirichlet (non-IID, per-class Dirichlet proportions)
    alpha: float = 0.5                   # Dirichlet concentration: small = skewed labels, large = near IID
    min_party_size: int = 10             # every party gets at least this many images (Dirichlet re-draws)
    partition_seed: int = 0              # seed of the partition (which party holds which images); not key material
    # -- model -------------------------------------------------------------------------------------
    model: str = "auto"                  # preact_resnet18 | fastnet | mnistnet; auto: mnistnet for 1 channel,
                                         # fastnet for 3
    width: float = 1.0                   # channel-width multiplier (scale down for CPU runs)
    sign_invariant: str = "auto"         # |x| as the model's first operation: auto = on for InstaHide, off for
                                         # vanilla / Mixup; off = the paper's training on raw encryptions
    # -- scheme (the paper's names; see instahide.encrypt and docs/scheme.md) -----------------------
    scheme: SchemeConfig = field(default_factory=SchemeConfig)  # every party loads the same public pool
    # -- local training (every party, every round) -------------------------------------------------
    local_epochs: int = 1                # passes over the party's data per round, each with fresh keys
    batch_size: int = 32                 # local SGD batch
    lr: float = 0.05                     # local SGD learning rate (constant over rounds)
    momentum: float = 0.9                # local SGD momentum (state reset every round)
    weight_decay: float = 1e-4           # local SGD weight decay
    proximal_mu: float = 0.0             # FedProx proximal term mu/2 ||w - w_global||^2 (strategy fedprox sends it)
    threads: int = 1                     # torch threads per party process (1: no oversubscription)
    # -- federation (server) -----------------------------------------------------------------------
    rounds: int = 10                     # federated rounds
    num_parties: int = 2                 # parties (partitions); each node holds one
    strategy: str = "fedavg"             # fedavg | fedprox | fedavgm | fedadagrad | fedadam | fedyogi | fedmedian
                                         # | fedtrimmedavg | krum (Flower's strategies)
    server_lr: float | None = None       # server learning rate eta of fedadagrad/fedadam/fedyogi/fedavgm
                                         # (None: Flower's default)
    fraction_train: float = 1.0          # fraction of the connected nodes asked to train each round
    min_train_nodes: int = 1             # ask at least this many nodes to train each round
    min_available_nodes: int | None = None  # wait until this many nodes are connected (None: num_parties)
    fraction_evaluate: float = 0.0       # fraction of nodes that also evaluate on their shard of the test set
                                         # (0: central evaluation only)
    timeout: float = 3600.0              # seconds to wait for the replies of one round
    pack_weights: bool = False           # send the model as ONE float32 array ("packed", the state_dict's
                                         # tensors flattened in order) instead of one array per tensor:
                                         # deployed, Flower moves every array as its own request (6 hops)
    # -- run ---------------------------------------------------------------------------------------
    research_seed: int | None = None     # REPRODUCIBLE RESEARCH ONLY: seeds the initial model, order,
                                         # augmentation AND every party's keys (anyone who knows it can
                                         # recompute them); None: each party draws keys from OS entropy
    out: str = "runs/federated"          # server folder: checkpoint.pt, rounds.jsonl, final.json
    resume: bool = False                 # continue out/checkpoint.pt from its last round
    drop: str = ""                       # SIMULATED FAILURES for tests/experiments: "round:partition,..."
                                         # makes that party raise in that round (e.g. "1:1")

    # -- checks ------------------------------------------------------------------------------------
    def validate(self) -> "FedConfig":
        """Raise a ValueError naming the first bad field (before any data is loaded)."""
        check_types(self)
        if self.partition not in PARTITIONS:
            raise ValueError(f"unknown partition {self.partition!r}; expected one of {PARTITIONS}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.augment not in AUGMENT:
            raise ValueError(f"augment must be one of {', '.join(AUGMENT)}, got {self.augment!r}")
        validate_training(self)
        for name in ("rounds", "num_parties", "local_epochs", "min_party_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_train_nodes < 0:
            raise ValueError(f"min_train_nodes must be >= 0, got {self.min_train_nodes}")
        if self.min_available_nodes is not None and self.min_available_nodes < 1:
            raise ValueError(f"min_available_nodes must be >= 1, got {self.min_available_nodes}")
        if self.min_train_nodes > self.num_parties:
            raise ValueError(f"min_train_nodes={self.min_train_nodes} exceeds num_parties={self.num_parties}: "
                             "the federation would wait for nodes that do not exist")
        if self.alpha <= 0 or self.timeout <= 0:
            raise ValueError("alpha and timeout must be > 0")
        if self.proximal_mu < 0:
            raise ValueError("proximal_mu must be >= 0")
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.fraction_train == 0 and self.min_train_nodes == 0:
            raise ValueError("fraction_train=0 and min_train_nodes=0: no party would ever train")
        self.scheme.validate()
        if self.scheme.mode != "vanilla" and self.min_party_size < self.scheme.private_slots:
            raise ValueError(f"min_party_size={self.min_party_size} is below the {self.scheme.private_slots} "
                             f"private images one encryption needs (k={self.scheme.k}): raise min_party_size")
        self.drops()
        return self

    def drops(self) -> set[tuple[int, int]]:
        """The simulated failures of :attr:`drop` as ``{(round, partition_id)}``."""
        out = set()
        for part in filter(None, (p.strip() for p in self.drop.split(","))):
            try:
                r, p = (int(v) for v in part.split(":"))
            except ValueError:
                raise ValueError(f"drop must look like 'round:partition,...' (e.g. '1:1'), got {self.drop!r}") from None
            out.add((r, p))
        return out

    # -- conversions -------------------------------------------------------------------------------
    def to_run_config(self) -> dict:
        """Flower run config: kebab-case keys, ``None`` values left out (Flower has no null)."""
        return {k.replace("_", "-"): v for k, v in flat_dict(self, drop_none=True).items()}

    @classmethod
    def from_run_config(cls, run_config, ignore=FLOWER_KEYS) -> "FedConfig":
        """Inverse of :meth:`to_run_config`; values are converted to the fields' types (TOML writes
        ``lr = 1`` as an int), keys in ``ignore`` are skipped, any other unknown key is an error."""
        return from_dict(cls, run_config, ignore=ignore, what="run-config key")
