"""The training configuration: one typed dataclass, every field commented; the scheme is a
:class:`~instahide.scheme.SchemeConfig` (the same options as every other command)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .._config import Config, check_types
from ..scheme.config import SchemeConfig
from .engine import SIGN_INVARIANT
from .models import MODELS

AUGMENT = ("auto", "on", "off")
RECIPES = ("reference", "short")


@dataclass
class TrainConfig(Config):
    # -- data --------------------------------------------------------------------------------------
    dataset: str = "digits"              # instahide.data.load_dataset name; digits ships with scikit-learn
    root: str | None = None              # where the dataset is (not needed for digits)
    download: bool = False               # download the official files (checksum-verified) if not under root
    subset: int | None = None            # train on N images drawn at random (seed 0) instead of the split
    test_subset: int | None = None       # evaluate on N test images (seed 0)
    augment: str = "auto"                # auto: crop 32 (padding 4) + flip for 3-channel 32x32 data, none
                                         # otherwise (the reference's CIFAR augmentation); on / off force it
    # -- model -------------------------------------------------------------------------------------
    model: str = "auto"                  # preact_resnet18 | fastnet | mnistnet; auto: mnistnet for 1 channel,
                                         # fastnet for 3 (the paper's model is preact_resnet18)
    width: float = 1.0                   # channel-width multiplier (scale down for CPU runs)
    sign_invariant: str = "auto"         # |x| as the model's first operation: auto = on when training on
                                         # InstaHide encryptions (the mask's signs carry nothing), off for
                                         # vanilla / Mixup; off = the paper's training on raw encryptions
    # -- scheme (the paper's names; see instahide.encrypt and docs/scheme.md) -----------------------
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    # -- optimisation (the reference recipe: docs/scheme.md, "Reference defaults") ------------------
    epochs: int = 200                    # reference: 200; a larger value on --resume extends a finished run
    batch_size: int = 128                # reference: 128
    lr: float = 0.1                      # SGD learning rate, reference 0.1
    momentum: float = 0.9                # SGD momentum, reference 0.9
    weight_decay: float = 1e-4           # reference 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # lr x gamma at these fractions of the epochs (100, 150 of 200)
    gamma: float = 0.1                   # lr factor at each milestone (reference: divide by 10)
    recipe: str = "reference"            # reference: the paper's SGD + step schedule (full-scale runs); short:
                                         # for small budgets, a one-cycle schedule (rising to lr over the first
                                         # quarter of the epochs, then falling to 0; milestones unused), Nesterov
                                         # momentum, label smoothing 0.1, test-time flipping when augment is on
    ema: float = 0.0                     # decay per SGD step of an exponential moving average of the weights
                                         # (and BN running statistics), debiased so the init does not enter;
                                         # evaluation, final.json and load_model use the average (test_acc_raw:
                                         # the raw weights); 0 = off; e.g. 0.999 (about the last 1,000 steps)
    # -- run ---------------------------------------------------------------------------------------
    research_seed: int | None = None     # REPRODUCIBLE RESEARCH ONLY: seeds init, order, augmentation AND the
                                         # keys (anyone who knows it can recompute them); None: keys from OS
                                         # entropy and a random init
    device: str = "auto"                 # auto: cuda if available, else cpu
    amp: bool = True                     # bfloat16 autocast on CUDA (ignored on CPU)
    out: str = "runs/train"              # run folder: checkpoint, metrics, final.json, curves.png
    eval_every: int = 1                  # evaluate on the clean test set every N epochs (and the last)
    progress: bool = True                # progress bar on stderr

    def validate(self) -> "TrainConfig":
        """Raise a ValueError naming the first bad field (before any data is loaded)."""
        check_types(self)
        validate_training(self)
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.augment not in AUGMENT:
            raise ValueError(f"augment must be one of {', '.join(AUGMENT)}, got {self.augment!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0 = off), got {self.ema}")
        for name in ("epochs", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.scheme.validate()
        return self


def validate_training(cfg) -> None:
    """The checks every trainer's configuration shares: model, width, batch, optimiser, schedule."""
    if cfg.sign_invariant not in SIGN_INVARIANT:
        raise ValueError(f"sign_invariant must be one of {', '.join(SIGN_INVARIANT)}, got {cfg.sign_invariant!r}")
    if cfg.model != "auto" and cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; known models: auto, {', '.join(MODELS)}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.lr <= 0 or cfg.width <= 0:
        raise ValueError(f"lr and width must be > 0, got lr={cfg.lr}, width={cfg.width}")
    if cfg.momentum < 0 or cfg.weight_decay < 0:
        raise ValueError(f"momentum and weight_decay must be >= 0, got {cfg.momentum}, {cfg.weight_decay}")
    if any(not 0 < m < 1 for m in getattr(cfg, "milestones", (0.5,))):
        raise ValueError(f"milestones are fractions of the epochs in (0, 1), got {cfg.milestones}")
