"""What one party does, as plain functions: load its partition, train locally on fresh encryptions,
evaluate; the Flower handlers of :mod:`instahide.federated.client` only wrap these.

Every local epoch the party augments its own images, encrypts ALL of them with fresh keys from its OWN
:class:`KeyGenerator` (OS entropy; with a research seed ``from_seed(f"federated/{seed}")`` spawned per
party and round: reproducible, NOT private) and runs the engine's loop; only the model's ``state_dict``
and a few scalar metrics go back to the server. ::

    cfg = FedConfig.make(mode="instahide", k=4, num_parties=4)
    party = load_party(cfg, partition_id=0)
    model = build_global_model(cfg, party.shape[0], party.num_classes)
    state, metrics = local_train(model.state_dict(), party, cfg, server_round=1)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..scheme import KeyGenerator, encrypt
from ..train import TrainData, evaluate, load_train_data, load_weights, train_epoch
from ..train.engine import augment_for, build_arch, derive_seed, index_batches, model_for, seeded, sign_invariant_for
from .config import FedConfig
from .partition import dirichlet_partition, iid_partition

__all__ = ["PartyData", "load_party", "partition_indices", "build_global_model", "party_key_generator",
           "local_train", "local_evaluate", "clear_cache", "warm_up", "pack_state", "unpack_state",
           "state_template", "PACKED"]

PACKED = "packed"  # the one key of a packed ArrayRecord (FedConfig.pack_weights)


@dataclass
class PartyData:
    """One party's data on the CPU: its private (normalised) training images and a shard of the test set."""

    x: torch.Tensor                # (n_p, C, H, W) private images of this party
    y: torch.Tensor                # (n_p,) their labels
    x_test: torch.Tensor           # (m_p, C, H, W) this party's shard of the clean test set
    y_test: torch.Tensor           # (m_p,)
    num_classes: int
    mean: tuple
    std: tuple
    public: torch.Tensor | None    # (P, C, H, W) the public pool (cross-dataset) or None
    partition_id: int
    num_partitions: int
    name: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])


_CACHE: dict[tuple, TrainData] = {}


def clear_cache() -> None:
    """Forget the datasets loaded by :func:`load_party` in this process."""
    _CACHE.clear()


def _full_data(cfg: FedConfig) -> TrainData:
    key = (cfg.dataset, cfg.root, cfg.subset, cfg.test_subset, *cfg.scheme.to_dict().values())
    if key not in _CACHE:
        _CACHE[key] = load_train_data(cfg, "cpu")
    return _CACHE[key]


def partition_indices(cfg: FedConfig, labels: torch.Tensor) -> list:
    """The partition of the training set described by ``cfg`` (IID or Dirichlet), one index array per party."""
    if cfg.partition == "iid":
        parts = iid_partition(len(labels), cfg.num_parties, cfg.partition_seed)
        small = min(len(p) for p in parts)
        if small < cfg.min_party_size:
            raise ValueError(f"{len(labels)} images over {cfg.num_parties} parties leaves {small} per party, "
                             f"below min_party_size={cfg.min_party_size}")
        return parts
    return dirichlet_partition(labels, cfg.num_parties, cfg.alpha, cfg.partition_seed, cfg.min_party_size)


def load_party(cfg: FedConfig, partition_id: int, num_partitions: int | None = None) -> PartyData:
    """Party ``partition_id``'s share of the training set (and of the test set, IID), on the CPU.

    The dataset is loaded once per process and cached; the partition is a function of ``cfg`` only, so
    every process computes the same split. ``num_partitions`` (Flower's node config) must equal
    ``cfg.num_parties`` when given.
    """
    cfg.validate()
    if num_partitions is not None and int(num_partitions) != cfg.num_parties:
        raise ValueError(f"this node says num-partitions={num_partitions} but the run has "
                         f"num_parties={cfg.num_parties}")
    if not 0 <= int(partition_id) < cfg.num_parties:
        raise ValueError(f"partition-id {partition_id} is out of range for {cfg.num_parties} parties")
    partition_id = int(partition_id)
    data = _full_data(cfg)
    idx = torch.from_numpy(partition_indices(cfg, data.y_train)[partition_id])
    tidx = torch.from_numpy(iid_partition(len(data.y_test), cfg.num_parties, cfg.partition_seed)[partition_id])
    return PartyData(data.x_train[idx], data.y_train[idx], data.x_test[tidx], data.y_test[tidx],
                     data.num_classes, data.mean, data.std, data.public, partition_id, cfg.num_parties, data.name)


def build_global_model(cfg: FedConfig, in_channels: int, num_classes: int) -> torch.nn.Module:
    """The model every party trains (initialised from the research seed when one is set)."""
    if cfg.research_seed is not None:
        torch.manual_seed(derive_seed(cfg.research_seed, "init"))
    return build_arch(party_arch(cfg, in_channels, num_classes), cfg.width)


def party_arch(cfg: FedConfig, in_channels: int, num_classes: int) -> dict:
    """The model every party and the server build: name, classes, channels, sign-invariant stage."""
    return {"model_name": model_for(cfg.model, in_channels), "num_classes": num_classes, "in_channels": in_channels,
            "sign_invariant": sign_invariant_for(cfg.sign_invariant, cfg.scheme.mode)}


def party_key_generator(cfg: FedConfig, partition_id: int, server_round: int) -> KeyGenerator:
    """The party's key generator for one round: OS entropy, or (research seed) derived from seed,
    partition and round so that no two parties and no two rounds share keys."""
    if cfg.research_seed is None:
        return KeyGenerator.from_entropy()
    return KeyGenerator.from_seed(f"federated/{cfg.research_seed}").spawn(partition_id).spawn(server_round)


def _party_model(cfg: FedConfig, party: PartyData, state_dict: dict) -> torch.nn.Module:
    torch.set_num_threads(cfg.threads)
    model = build_arch(party_arch(cfg, party.shape[0], party.num_classes), cfg.width)
    load_weights(model, state_dict, "global weights")
    return model


def local_train(state_dict: dict, party: PartyData, cfg: FedConfig, *, server_round: int,
                proximal_mu: float | None = None) -> tuple[dict, dict]:
    """Train the global weights ``state_dict`` on the party's fresh encryptions for ``cfg.local_epochs``.

    Args:
        state_dict: the global model's weights (name -> tensor).
        party: this party's data (:func:`load_party`).
        cfg: the run's configuration (scheme, local optimisation).
        server_round: the round number (1-based); with a research seed it selects the keys.
        proximal_mu: FedProx's mu (default ``cfg.proximal_mu``); adds ``mu/2 ||w - w_global||^2``.

    Returns:
        ``(state_dict, metrics)``: the updated weights (CPU tensors, same keys and shapes) and scalars
        ``num-examples`` (private images), ``train-loss`` (cross-entropy, without the proximal term),
        ``train-acc`` (agreement with the dominant label), ``encrypt-seconds``, ``train-seconds``.
    """
    t_start = time.perf_counter()
    model = _party_model(cfg, party, state_dict)
    mu = cfg.proximal_mu if proximal_mu is None else float(proximal_mu)
    penalty = None
    if mu > 0:  # FedProx: mu/2 ||w - w_global||^2
        anchor = [p.detach().clone() for p in model.parameters()]
        penalty = lambda: 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))  # noqa: E731
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    augment = augment_for(cfg.augment, party.shape, party.mean, party.std)
    onehot = torch.nn.functional.one_hot(party.y, party.num_classes).float()
    keys = party_key_generator(cfg, party.partition_id, server_round) if cfg.scheme.mode != "vanilla" else None
    t_enc, total = 0.0, {"loss_sum": 0.0, "correct": 0, "seen": 0}
    for epoch in range(cfg.local_epochs):
        t0 = time.perf_counter()
        parts = (party.partition_id, server_round, epoch)
        x = party.x if augment is None else augment(party.x, generator=seeded(cfg.research_seed, "augment", *parts))
        if cfg.scheme.mode == "vanilla":
            xs, ys = x, onehot
        else:
            enc = encrypt(x, party.y, **cfg.scheme.encrypt_kwargs(), public=party.public,
                          num_classes=party.num_classes, generator=keys)
            xs, ys = enc.images, enc.soft_labels
        t_enc += time.perf_counter() - t0
        order = torch.randperm(len(xs), generator=seeded(cfg.research_seed, "order", *parts))
        try:
            res = train_epoch(model, opt, index_batches(xs, ys, order, cfg.batch_size), penalty=penalty)
        except FloatingPointError as exc:
            raise FloatingPointError(f"party {party.partition_id}: local {exc}") from None
        total = {k: total[k] + res[k] for k in total}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    metrics = {"num-examples": int(len(party.x)), "train-loss": total["loss_sum"] / total["seen"],
               "train-acc": total["correct"] / total["seen"], "encrypt-seconds": t_enc,
               "train-seconds": time.perf_counter() - t_start}
    return state, metrics


def local_evaluate(state_dict: dict, party: PartyData, cfg: FedConfig) -> dict:
    """Clean accuracy of the global weights on this party's test shard:
    ``{"num-examples", "eval-acc", "eval-loss"}``."""
    model = _party_model(cfg, party, state_dict)
    if len(party.x_test) == 0:
        return {"num-examples": 0, "eval-acc": 0.0, "eval-loss": 0.0}
    ev = evaluate(model, party.x_test, party.y_test)
    return {"num-examples": int(len(party.x_test)), "eval-acc": ev["accuracy"], "eval-loss": ev["loss"]}


def warm_up() -> None:
    """One tiny encryption, so that a long-running party process (``python -m instahide.federated.node``)
    compiles the encryption kernel before its first round instead of during it (about 9 s on a busy
    2-core CPU)."""
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    encrypt(x, torch.arange(8) % 2, k=4, num_classes=2, generator=KeyGenerator.from_seed("instahide/warm-up"))


def pack_state(state_dict: dict) -> torch.Tensor:
    """The tensors of ``state_dict``, in order, flattened and cast to float32 into one 1-D tensor
    ``(sum of numel,)``: the model as ONE array on the wire (:attr:`FedConfig.pack_weights`).

    Every entry must be float32 or an integer tensor below 2**24 in magnitude (BatchNorm's
    ``num_batches_tracked``), which float32 holds exactly; anything else is refused."""
    parts = []
    for name, t in state_dict.items():
        t = t.detach()
        if t.is_floating_point() and t.dtype != torch.float32:
            raise TypeError(f"pack_state: {name} is {t.dtype}; only float32 (and small integer) tensors are packed")
        if not t.is_floating_point() and t.numel() and int(t.abs().max()) >= 2 ** 24:
            raise ValueError(f"pack_state: integer tensor {name} holds values >= 2**24, which float32 rounds")
        parts.append(t.reshape(-1).to(torch.float32))
    return torch.cat(parts) if parts else torch.zeros(0)


def unpack_state(flat: torch.Tensor, template: dict) -> dict:
    """Inverse of :func:`pack_state`: ``flat`` ``(sum of numel,)`` cut into ``template``'s names, shapes
    and dtypes (integers rounded back); a length that does not match is an error naming both."""
    flat = torch.as_tensor(flat).reshape(-1)
    total = sum(t.numel() for t in template.values())
    if flat.numel() != total:
        raise ValueError(f"packed weights hold {flat.numel()} values, the model has {total}")
    out, i = {}, 0
    for name, t in template.items():
        piece = flat[i:i + t.numel()].reshape(t.shape)
        out[name] = piece.round().to(t.dtype) if not t.is_floating_point() else piece.to(t.dtype).clone()
        i += t.numel()
    return out


_TEMPLATES: dict[tuple, dict] = {}


def state_template(cfg: FedConfig, in_channels: int, num_classes: int) -> dict:
    """Names, shapes and dtypes of the model's ``state_dict`` (zero tensors), cached per architecture:
    what :func:`unpack_state` cuts packed weights into."""
    arch = party_arch(cfg, in_channels, num_classes)
    key = (*sorted(arch.items()), cfg.width)
    if key not in _TEMPLATES:
        model = build_arch(arch, cfg.width)
        _TEMPLATES[key] = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    return _TEMPLATES[key]
