"""The comparison's configuration (:class:`CompareConfig`) and its methods (:class:`Method`, parsed from
names such as ``instahide-k4``, ``instahide-cross-k6``, ``mixup-k4``, ``dp-eps3``, ``instahide-k4+dp-eps3``).

>>> Method.parse("instahide-cross-k6").scheme()
SchemeConfig(mode='instahide', k=6, upper=0.65, dom=0.3, num_private=2, public='builtin', public_size=4000, public_resize=None, legacy=False)
>>> Method.parse("instahide-k4+dp-eps3").epsilon
3.0
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .._config import Config, check_types
from ..scheme.config import SchemeConfig
from ..train import MODELS

__all__ = ["CompareConfig", "Method", "DEFAULT_METHODS", "ACCOUNTANTS"]

DEFAULT_METHODS = ("vanilla", "mixup-k4", "instahide-k2", "instahide-k4", "instahide-k6", "instahide-cross-k6",
                   "dp-eps1", "dp-eps3", "dp-eps8", "instahide-k4+dp-eps3")
ACCOUNTANTS = ("rdp", "prv")
_NAME = re.compile(r"^(?:(?P<scheme>vanilla|mixup-k(?P<mk>\d+)|instahide-(?P<cross>cross-)?k(?P<ik>\d+))"
                   r"(?:\+dp-eps(?P<eps1>[0-9.]+))?|dp-eps(?P<eps2>[0-9.]+))$")


@dataclass(frozen=True)
class Method:
    """One row of the comparison: how the private images are turned into training rows (``mode``,
    ``k``, a public pool for cross-dataset InstaHide) and whether DP-SGD trains on them (``epsilon``:
    the target budget, None without DP-SGD)."""

    name: str
    mode: str                       # vanilla | mixup | instahide
    k: int                          # images per training row (1 for vanilla)
    cross: bool = False             # cross-dataset InstaHide (public pool in the other slots)
    epsilon: float | None = None    # DP-SGD's target epsilon (None: no DP-SGD)

    @classmethod
    def parse(cls, name: str) -> "Method":
        m = _NAME.match(str(name).strip())
        if m is None:
            raise ValueError(f"unknown method {name!r}; expected vanilla, mixup-kK, instahide-kK, instahide-cross-kK, "
                             f"dp-epsE, or one of the first four with +dp-epsE (e.g. instahide-k4+dp-eps3)")
        eps = m["eps1"] or m["eps2"]
        epsilon = float(eps) if eps is not None else None
        if epsilon is not None and not epsilon > 0:
            raise ValueError(f"{name}: epsilon must be > 0")
        if m["eps2"] is not None or m["scheme"] == "vanilla":
            return cls(str(name).strip(), "vanilla", 1, False, epsilon)
        if m["mk"] is not None:
            return cls(str(name).strip(), "mixup", int(m["mk"]), False, epsilon)
        return cls(str(name).strip(), "instahide", int(m["ik"]), bool(m["cross"]), epsilon)

    @property
    def dp(self) -> bool:
        return self.epsilon is not None

    @property
    def encodes(self) -> bool:
        """Whether the data is handed over encoded (Mixup or InstaHide), so the challenge attacks apply."""
        return self.mode != "vanilla"

    def scheme(self, public: str = "builtin") -> SchemeConfig:
        """The :class:`SchemeConfig` of this method (``public``: the cross-dataset pool's source)."""
        if self.mode == "vanilla":
            return SchemeConfig(mode="vanilla").validate()
        return SchemeConfig(mode=self.mode, k=self.k, public=public if self.cross else None).validate()

    @property
    def encoding(self) -> str:
        """The name of the encoding without DP (``instahide-k4`` for ``instahide-k4+dp-eps3``)."""
        return self.name.split("+")[0] if "+" in self.name else ("vanilla" if self.dp else self.name)


@dataclass
class CompareConfig(Config):
    """What to compare and how (every method trains the same model with the same budget and splits)."""

    # -- data ----------------------------------------------------------------------------------------
    dataset: str = "digits"              # instahide.data.load_dataset name; digits ships with scikit-learn
    root: str | None = None              # where the dataset is (not for digits)
    subset: int | None = None            # the pool: N train-split images (seed 0) instead of the whole split;
                                         # each model trains on half of it, the other half are its non-members
    test_subset: int | None = None       # accuracy on N test images (seed 0)
    public: str = "builtin"              # the public pool of the cross-dataset rows (instahide-cross-kK)
    # -- methods ---------------------------------------------------------------------------------------
    methods: tuple[str, ...] = DEFAULT_METHODS  # rows: vanilla, mixup-kK, instahide-kK, instahide-cross-kK,
                                         # dp-epsE, instahide-kK+dp-epsE
    models: int = 4                      # models per method, each on its own half of the pool (the same halves for
                                         # every method; every image in exactly half of them): the accuracy's
                                         # spread, and each model in turn the membership target, the others its
                                         # LiRA reference models (>= 4 for LiRA's online test)
    # -- training (the same for every method) ----------------------------------------------------------
    model: str = "auto"                  # a train.MODELS name; auto: mnistnet (1 channel), fastnet (3 channels)
    width: float = 0.5                   # channel-width multiplier (0.5: DP-SGD's per-sample gradients of the
                                         # digits net cost about 1.3x a plain step instead of about 4x at 1.0)
    norm: str = "group"                  # group: BatchNorm replaced by GroupNorm in EVERY row (DP-SGD's per-sample
                                         # gradients exclude BatchNorm; the same network for all); batch: keep
                                         # BatchNorm (only without DP rows)
    augment: str = "auto"                # auto: crop + flip on 3-channel 32x32 data, none otherwise
    epochs: int = 20                     # epochs of every model (the same budget for every method)
    batch_size: int = 64                 # batch size; DP-SGD's expected (Poisson) batch size
    lr: float = 0.05                     # SGD learning rate (the one-cycle "short" recipe of instahide train)
    momentum: float = 0.9                # SGD momentum
    weight_decay: float = 5e-4           # weight decay
    recipe: str = "short"                # short (one-cycle, label smoothing 0.1) or reference (step schedule)
    # -- DP-SGD (Opacus) --------------------------------------------------------------------------------
    max_grad_norm: float = 1.0           # per-sample clipping norm C
    delta: float | None = None           # DP delta; None: 1 / (training images of a model)
    accountant: str = "rdp"              # Opacus's accountant that sets the noise and reports epsilon: rdp | prv
    dp_lr: float | None = None           # learning rate of the DP rows (None: lr)
    # -- threat (a): gradient inversion of one client's update ------------------------------------------
    gradinv_images: int = 3              # private images whose batch-1 gradient is inverted (0: skip)
    gradinv_steps: int = 400             # inversion steps per image (docs/gradient_inversion.md)
    # -- threat (b): the challenge attacks on what is handed over ----------------------------------------
    challenge_images: int = 20           # private images of the challenge (0: skip)
    challenge_T: int = 10                # encryptions of each image (epochs of training data handed over)
    challenge_attacks: tuple[str, ...] = ("demix", "carlini", "fusion")  # audit attacks run (those that apply)
    fusion_time: float = 20.0            # seconds of fusion training at most
    carlini_preset: str = "cpu"          # Carlini et al.'s budget: tiny | cpu | full
    # -- run ------------------------------------------------------------------------------------------
    seed: int = 0                        # research seed: splits, initialisation, order, keys (reproducible)
    threads: int | None = None           # torch threads (None: torch's default)
    device: str = "auto"                 # where the models train: auto (cuda if available, else cpu), cpu, cuda
                                         # (the gradient inversion runs on the CPU; Carlini's attack on this device)
    out: str = "runs/compare"            # output folder: results.csv, frontier.png, report.md, work/

    def method_list(self) -> list[Method]:
        return [Method.parse(m) for m in self.methods]

    def validate(self) -> "CompareConfig":
        """Raise a ValueError naming the first bad option (before any data is read)."""
        check_types(self)
        if self.model != "auto" and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: auto, {', '.join(MODELS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and self.width > 0):
            raise ValueError(f"lr and width must be > 0, got lr={self.lr}, width={self.width}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {self.momentum}, {self.weight_decay}")
        if not self.methods:
            raise ValueError("methods: give at least one method")
        ms = self.method_list()
        names = [m.name for m in ms]
        if len(set(names)) != len(names):
            raise ValueError(f"methods: each method once, got {names}")
        for m in ms:
            if m.mode != "vanilla":
                m.scheme(self.public)  # the scheme's own checks (k range)
        if self.models < 2:
            raise ValueError(f"models must be >= 2 (a member half and a non-member half), got {self.models}")
        if self.norm not in ("group", "batch"):
            raise ValueError(f"norm must be group or batch, got {self.norm!r}")
        if self.norm == "batch" and any(m.dp for m in ms):
            raise ValueError("norm batch: DP-SGD computes per-sample gradients, which BatchNorm does not have; "
                             "use norm group (every row then uses the same GroupNorm network)")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.dp_lr is not None and not self.dp_lr > 0:
            raise ValueError(f"dp_lr must be > 0, got {self.dp_lr}")
        if self.recipe not in ("short", "reference"):
            raise ValueError(f"recipe must be short or reference, got {self.recipe!r}")
        if self.augment not in ("auto", "on", "off"):
            raise ValueError(f"augment must be auto, on or off, got {self.augment!r}")
        for name in ("epochs",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gradinv_images", "challenge_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.challenge_images == 1:
            raise ValueError("challenge_images must be 0 (skip) or >= 2")
        if self.gradinv_steps < 1 or self.challenge_T < 1:
            raise ValueError(f"gradinv_steps and challenge_T must be >= 1, got {self.gradinv_steps}, {self.challenge_T}")
        if self.fusion_time < 0:
            raise ValueError(f"fusion_time must be >= 0 (0: no limit), got {self.fusion_time}")
        if self.carlini_preset not in ("tiny", "cpu", "full"):
            raise ValueError(f"carlini_preset must be tiny, cpu or full, got {self.carlini_preset!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        for name in ("subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        if self.dataset != "digits" and self.root is None:
            raise ValueError(f"dataset {self.dataset!r} needs a root (a folder or file); digits is built in")
        return self

